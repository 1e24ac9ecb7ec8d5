"""IMU-aided error-state Kalman filter in 3-D (local NED).

Full attitude error and IMU biases; the attitude is the autopilot's (which skyfix also
rectifies frames with) times a correction e, R = Exp(e) R_ap, carried by the gyro. The
same e turns the specific force and the views, so odometry is modelled with it. State:

    p, v [3] NED position (m, down = -altitude AMSL), velocity; e [3] correction (rad, NED)
    b, g [3] accelerometer, gyro bias (body); u [3] the autopilot's attitude error (Gauss-
    Markov, cfg.tilt/yaw_sigma_deg and _tau_s). Its roll/pitch part is the vehicle's own
    (an AHRS levels against its accelerometer: a bias b gives a tilt error b / g in body
    axes), so in NED it turns with the heading: after a U-turn it has changed sign.

error state dx = [dp, dv, de, db, dg, du], P [18, 18]. Every 0.1 s the tie e = -u
(R_ap = Exp(u) R_true) is applied (h = e + u, z = 0, 1e-8 rad^2): the gyro gives the
short-term changes, and the heading cannot drift beyond the autopilot's own accuracy.

Propagation, IMU sample k -> k+1 (dt), specific force f_m and rate w_m (body) at each:

    R_k = Exp(e) R_ap,k,  R_k+1 = R_k Exp(((w_m,k + w_m,k+1) / 2 - g) dt),
    e+ = Log(R_k+1 R_ap,k+1^T)          (the autopilot's own steps do not move R)
    a_k = R_k (f_m,k - b) + G,  G = (0, 0, 9.80665),  v+ = v + (a_k + a_k+1) dt / 2
    p+ = p + v dt + (2 a_k + a_k+1) dt^2 / 6      (exact for a linear in time)

    u+ = diag(d) Rz(dpsi) u, d = exp(-dt / tau), dpsi = (R_k w)_z dt the heading's step
        (w = (w_m,k + w_m,k+1) / 2 - g; Rz: a rotation about down);
    errors (f_n = R (f_m - b)): dp' = dv,
    dv' = -[f_n]x de - R db - R n_a, de' = -R dg - R n_w, db' = w_b, dg' = w_g (walks)
    Phi = I + A dt: Phi_pv = I dt, Phi_ve = -[f_n]x dt, Phi_vb = -R dt, Phi_eg = -R dt,
          Phi_pe = Phi_ve dt/2, Phi_pb = Phi_vb dt/2, Phi_uu = diag(d) Rz(dpsi)
    Q: accel noise (density s_a): Q_pp = s_a^2 dt^3/3, Q_pv = s_a^2 dt^2/2, Q_vv = s_a^2 dt;
       gyro noise Q_ee = s_w^2 dt; bias random walks Q_bb = s_b^2 dt, Q_gg = s_g^2 dt;
       Q_uu = diag(sigma_u^2 (1 - d^2))
    P+ = Phi P Phi^T + Q
    A step longer than cfg.imu_gap_s (no sample in between, or a prediction past the last
    one) is bridged at constant velocity: p+ = p + v dt, v, e, b, g kept (Phi = I but
    Phi_pv, Phi_uu = diag(d)), Q also gets cfg.accel_sigma_mps2; one sample's specific
    force and rate held for seconds would be extrapolated instead (PX4's HIGHRES_IMU
    sample is one ~5 ms average picked at 50 Hz: in SIH 1 m/s^2 of noise, up to 5, beside
    manoeuvres).

Measurements at time t_m, between IMU samples t_k <= t_m < t_k+1 (tau_m = t_m - t_k):

    position (north, east) fix:  h = p_ne + v_ne tau_m           H: dp_ne, tau_m dv_ne
    altitude (barometer / autopilot, or rangefinder over known ground): h = p_d
    heading error a fix's image measures (the pose's yaw against the reported one, which
        rotates the reported attitude like e does): h = e_z              H: de_z
    odometry displacement, frame t0 -> t1: `mark` at the reference frame t0 clones
        c = (p_n, p_e, e_x, e_y, e_z) into the state (constant in propagation; later
        displacements from the same reference share it). A view rectified with R_ap sees the
        point below the camera shifted by agl o(e), o(e) = (-e_y, e_x), and the displacement
        is read in the reference view's axes, turned by its yaw error:
        h = M D - agl (o(e) - o(c_e)),  D = p_ne + v_ne tau_m - c_p,
        M = [[1, c_ez], [-c_ez, 1]]; H: M on dp_ne, tau_m M on dv_ne, (agl, -agl) on
        (de_y, de_x), -M on dc_p, (-agl, agl) on (dc_e_y, dc_e_x), (D_e, -D_n) on dc_ez.
        The roll/pitch errors of both frames are modelled, so they cancel along the chain.

    y = z - h, S = H P H^T + R, NIS = y^T S^-1 y, K = P H^T S^-1, dx = K y (injected),
    P+ = (I - K H) P (I - K H)^T + K R K^T

Gates (NIS, 99.9 % chi-square): cfg.nis_gate (fixes, displacements), cfg.alt_nis_gate
(altitudes, headings).
A late measurement is fused at its own time: the filter keeps, for cfg.history_s, each
IMU sample with the state after it and the measurements applied; it rewinds to the last
sample at or before the measurement, applies it, and replays samples and measurements
(which keep the decision they got on arrival) forward.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from skyfix.runtime.core.config import FilterConfig
from skyfix.runtime.core.geo import skew, so3_exp, so3_log
from skyfix.runtime.nav.filter import Innovation

G_MPS2 = 9.80665
_GRAVITY = np.array([0.0, 0.0, G_MPS2])
_N = 18  # error-state size, without the clone of `mark` (5 more when there is one)
_P, _V, _E, _B, _W, _U = (slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12), slice(12, 15),
                          slice(15, 18))
_TIE_NS = 100_000_000  # e = -u is enforced this often
_TIE_VAR = 1e-8  # rad^2: the tie's noise (only for numerical stability)
_I3 = np.eye(3)
_HORIZONTAL = [0, 1, 3, 4]  # north, east, vn, ve


@dataclass(frozen=True)
class _Step:  # one IMU sample and the state right after it (before measurements)
    t_ns: int
    sample: tuple  # (f_b [3] specific force, w_b [3] rate, R_ap [3, 3] autopilot attitude)
    x: np.ndarray  # [18] nominal state (+ [5] clone)
    P: np.ndarray  # [18, 18] (or [23, 23])
    clone_t_ns: int | None  # time of the clone, None without one


@dataclass(frozen=True)
class _Meas:
    t_ns: int
    kind: str  # "pos" | "alt" | "hdg" | "disp" | "mark"
    z: np.ndarray
    R: np.ndarray
    seq: int  # arrival order, to keep it among equal capture times
    t0_ns: int = 0  # "disp": the frame the displacement starts from
    agl_m: float = 0.0  # "disp": height above ground


def _finite(*arrays: np.ndarray) -> bool:
    """Every element of `arrays` finite: one sum of squares each (a NaN or an infinity
    makes it non-finite; so does an overflow, a diverged state's as much as any)."""
    return all(math.isfinite(np.vdot(a, a)) for a in arrays)


def _refused(m: _Meas) -> Innovation:
    d = len(m.z)
    return Innovation(m.t_ns, np.full(d, np.nan), np.full((d, d), np.nan), float("inf"), False)


class ImuFilter:
    """The error-state filter of the module docstring; `horizontal_at`, the
    `update_*` methods and `initialize` / `reset` are what the Navigator uses."""

    def __init__(self, cfg: FilterConfig) -> None:
        self.cfg = cfg
        self.history_ns = int(cfg.history_s * 1e9)
        self.gap_ns = int(cfg.imu_gap_s * 1e9)
        self._sig_e = np.radians([cfg.tilt_sigma_deg, cfg.tilt_sigma_deg, cfg.yaw_sigma_deg])
        self._tau_s = np.array([cfg.tilt_tau_s, cfg.tilt_tau_s, cfg.yaw_tau_s])
        self._gates = {"pos": cfg.nis_gate, "disp": cfg.nis_gate, "alt": cfg.alt_nis_gate,
                       "hdg": cfg.alt_nis_gate}
        self._seq = 0
        self._step_cache: dict[tuple[int, int], tuple] = {}
        self._imu: deque[tuple[int, tuple]] = deque()  # (t_ns, sample), kept before a start
        self.reset()

    def reset(self) -> None:
        """Forget the state (the IMU samples stay); `initialize` must be called again."""
        self.x: np.ndarray | None = None  # [18] (+ [5] clone)
        self.P: np.ndarray | None = None
        self.t_ns: int | None = None  # time of the state: the last IMU sample's
        self.clone_t_ns: int | None = None  # time of the last `mark`
        self._steps: deque[_Step] = deque()
        self._applied: list[_Meas] = []
        self._last = (-_GRAVITY, np.zeros(3), _I3)  # last sample: level, unaccelerated
        self._carry: tuple | None = None  # (x, R, a) of the last step: see _propagate

    @property
    def initialized(self) -> bool:
        return self.x is not None

    def initialize(self, t_ns: int, pos_ne: np.ndarray, cov_ne: np.ndarray,
                   vel_ne: np.ndarray | None = None, vel_cov: np.ndarray | None = None,
                   down_m: float = 0.0, down_var_m2: float = 1e4) -> None:
        """Start at horizontal `pos_ne` [2] (`cov_ne` [2, 2]) and velocity `vel_ne` [2] at
        `t_ns`, height `down_m`; the IMU samples received after `t_ns` are replayed."""
        self.reset()
        c = self.cfg
        x, P = np.zeros(_N), np.zeros((_N, _N))
        x[:2], x[2], x[3:5] = pos_ne, down_m, 0.0 if vel_ne is None else vel_ne
        P[:2, :2], P[2, 2], P[5, 5] = cov_ne, down_var_m2, c.init_vel_sigma_mps**2
        P[3:5, 3:5] = c.init_vel_sigma_mps**2 * _I3[:2, :2] if vel_cov is None else vel_cov
        P[_E, _E] = P[_U, _U] = np.diag(self._sig_e**2)
        P[_E, _U] = P[_U, _E] = -P[_E, _E]  # e = -u
        P[_B, _B] = c.accel_bias_sigma_mps2**2 * _I3
        P[_W, _W] = c.gyro_bias_sigma_radps**2 * _I3
        before = [s for s in self._imu if s[0] <= t_ns]
        t0 = int(t_ns)
        if before:  # anchor on the last sample at or before t_ns (p moved back along v)
            t0, self._last = before[-1]
            x[:2] -= x[3:5] * (t_ns - t0) * 1e-9
        self.x, self.P, self.t_ns = x, P, t0
        self._steps.append(_Step(t0, self._last, x.copy(), P.copy(), None))
        for t, sample in [s for s in self._imu if s[0] > t0]:
            self._step(t, sample)

    # -- propagation ----------------------------------------------------------------------

    def on_imu(self, t_ns: int, accel_b_mps2: np.ndarray, gyro_b_radps: np.ndarray,
               R_ap: np.ndarray) -> None:
        """One IMU sample: specific force `accel_b_mps2` [3] (body FRD, m/s^2) and rate
        `gyro_b_radps` [3] at `t_ns`, with the autopilot's attitude `R_ap` [3, 3] (body ->
        NED) at that time. Samples not newer than the last one, or not finite, are dropped."""
        sample = (np.asarray(accel_b_mps2, np.float64), np.asarray(gyro_b_radps, np.float64),
                  np.asarray(R_ap, np.float64))
        if not _finite(*sample):
            return
        if self._imu and t_ns <= self._imu[-1][0]:
            return
        self._imu.append((int(t_ns), sample))
        while self._imu[0][0] < t_ns - self.history_ns:
            self._imu.popleft()
        if self.x is not None and t_ns > self.t_ns:
            self._step(int(t_ns), sample)
            if not _finite(self.x, self.P):
                self.reset()  # diverged numerically: the Navigator restarts from fixes

    def _step(self, t_ns: int, sample: tuple) -> None:
        tie = t_ns // _TIE_NS != self.t_ns // _TIE_NS
        self.x, self.P, end = self._propagate(self.x, self.P, t_ns - self.t_ns, self._last,
                                              sample, self._carry)
        self._carry = (self.x, *end) if end else None
        self.t_ns, self._last = t_ns, sample
        if tie:
            self._tie()
        self._steps.append(_Step(t_ns, sample, self.x, self.P, self.clone_t_ns))
        while len(self._steps) > 1 and self._steps[1].t_ns <= t_ns - self.history_ns:
            self._steps.popleft()
        oldest = self._steps[0].t_ns
        if self._applied and self._applied[0].t_ns < oldest:
            self._applied = [m for m in self._applied if m.t_ns >= oldest]

    def _propagate(self, x: np.ndarray, P: np.ndarray, dt_ns: int, s0: tuple, s1: tuple,
                   carried: tuple | None = None) -> tuple[np.ndarray, np.ndarray, tuple]:
        """(x, P, (R_k+1, a_k+1)) one step of `dt_ns` on, from sample `s0` to `s1` (the
        pair is () across a gap), in new arrays: the filter never changes a state's arrays
        in place, its steps keep them. `carried` is (x', R, a) of the step that returned
        x': while x is x', R_k = Exp(e) R_ap,k and a_k are that R and a (Exp(Log(R
        R_ap^T)) R_ap = R), not computed again; a measurement or the tie makes a new x.
        P+ = Phi P Phi^T + Q (a clone's rows of Phi are the identity's, of Q zero: the
        clone stays, P_ac = Phi P_ac); made symmetric again by measurements and the tie."""
        dt = dt_ns * 1e-9
        Phi, Q, decay, pv = self._constants(dt_ns, len(x))
        if dt_ns > self.gap_ns:  # bridged at constant velocity (Phi: I, Phi_pv, Phi_uu)
            x = x.copy()
            x[_U] *= decay
            x[_P] += x[_V] * dt
            return x, Phi @ P @ Phi.T + Q, ()
        (f0, w0, Rap0), (f1, w1, Rap1) = s0, s1
        if carried is not None and carried[0] is x:
            R0, a0 = carried[1:]
        else:
            R0 = so3_exp(x[_E]) @ Rap0
            a0 = R0 @ (f0 - x[_B]) + _GRAVITY
        w = 0.5 * (w0 + w1) - x[_W]
        R1 = R0 @ so3_exp(w * dt)
        a1 = R1 @ (f1 - x[_B]) + _GRAVITY
        x = x.copy()
        x[:6] += (pv @ np.array((x[_V], a0, a1))).ravel()  # p, v
        x[_E] = so3_log(R1 @ Rap1.T)
        dpsi = float(R0[2] @ w) * dt  # the heading's step
        c, s = math.cos(dpsi), math.sin(dpsi)
        d, _, dz = decay.tolist()
        uu = np.array(((d * c, -d * s, 0.0), (d * s, d * c, 0.0), (0.0, 0.0, dz)))  # Phi_uu
        x[_U] = uu @ x[_U]  # diag(d) Rz(dpsi) u (written out: a third of so3_exp and a product)
        Phi = Phi.copy()
        vevb = np.concatenate((skew(a0 - _GRAVITY), R0), axis=1) * -dt  # [Phi_ve, Phi_vb]
        Phi[_V, 6:12] = vevb
        Phi[_P, 6:12] = vevb * (dt / 2)  # [Phi_pe, Phi_pb]
        Phi[_E, _W] = vevb[:, 3:]
        Phi[_U, _U] = uu
        return x, Phi @ P @ Phi.T + Q, (R1, a1)

    def _tie(self) -> None:
        """Apply e + u = 0 (see the module docstring), ungated; H picks e and u, so
        P H^T = P_:e + P_:u, and P+ = P - K (P H^T)^T (K optimal, R tiny: no Joseph form
        needed, the symmetric part kept)."""
        PH = self.P[:, _E] + self.P[:, _U]  # P H^T
        K = PH @ np.linalg.inv(PH[_E] + PH[_U] + _TIE_VAR * _I3)  # S = H P H^T + R
        self.x = self.x - K @ (self.x[_E] + self.x[_U])
        P = self.P - K @ PH.T
        self.P = 0.5 * (P + P.T)

    def _constants(self, dt_ns: int, n: int) -> tuple[np.ndarray, ...]:
        """(Phi's constant part [n, n]: I, Phi_pv, Phi_uu; Q [n, n]; d [3]; the p, v step
        [2, 3] on (v, a_k, a_k+1)) over `dt_ns` for a state of `n` (18, or 23 with a
        clone: its rows are the identity's and zero); the last few are cached (the IMU
        comes at a steady rate, so the same step recurs)."""
        hit = self._step_cache.get((dt_ns, n))
        if hit is not None:
            return hit
        c, dt = self.cfg, dt_ns * 1e-9
        q = c.accel_noise_mps2_rthz**2
        if dt_ns > self.gap_ns:
            q += c.accel_sigma_mps2**2  # no IMU in between: constant-velocity noise
        decay = np.exp(-dt / self._tau_s)
        Phi = np.eye(n)
        Phi[_P, _V] = dt * _I3
        Phi[_U, _U] = np.diag(decay)
        Q = np.zeros((n, n))
        Q[_P, _P] = q * dt**3 / 3 * _I3
        Q[_P, _V] = Q[_V, _P] = q * dt**2 / 2 * _I3
        Q[_V, _V] = q * dt * _I3
        Q[6:_N, 6:_N] = np.diag(np.concatenate([  # e, b, g, u
            np.full(3, c.gyro_noise_radps_rthz**2 * dt),
            np.full(3, c.accel_bias_rw_mps2_rths**2 * dt),
            np.full(3, c.gyro_bias_rw_radps_rths**2 * dt),
            self._sig_e**2 * (1 - decay**2)]))
        pv = np.array(((dt, dt * dt / 3, dt * dt / 6), (0.0, dt / 2, dt / 2)))
        if len(self._step_cache) >= 16:
            self._step_cache.clear()
        for a in (Phi, Q, decay, pv):  # shared by every step of this length: read-only
            a.flags.writeable = False
        self._step_cache[dt_ns, n] = (Phi, Q, decay, pv)
        return Phi, Q, decay, pv

    def noise_density(self) -> tuple[float, float]:
        """(accelerometer m/s^2/rtHz, gyro rad/s/rtHz) white-noise densities measured on the
        buffered IMU samples, the noisiest axis: each sample against the mean of its two
        neighbours, d = n_k - (n_k-1 + n_k+1) / 2, var d = 1.5 sigma^2 for white noise
        (the motion barely bends over two IMU intervals), sigma from the median absolute d
        (robust to manoeuvres), density = sigma sqrt(median interval). NaN with fewer than
        10 samples."""
        if len(self._imu) < 10:
            return float("nan"), float("nan")
        t = np.array([s[0] for s in self._imu], np.float64)
        fw = np.array([np.r_[s[1][0], s[1][1]] for s in self._imu])  # [K, 6]
        d = fw[1:-1] - 0.5 * (fw[:-2] + fw[2:])
        sigma = 1.4826 * np.median(np.abs(d), axis=0) / np.sqrt(1.5)
        density = sigma * np.sqrt(np.median(np.diff(t)) * 1e-9)
        return float(density[:3].max()), float(density[3:].max())

    # -- measurements ---------------------------------------------------------------------

    def update_position(self, t_ns: int, z_ne: np.ndarray, R: np.ndarray) -> Innovation:
        """Fuse a (north, east) fix `z_ne` [2] m with covariance `R` [2, 2] m^2 at `t_ns`."""
        return self._measure("pos", t_ns, z_ne, R)

    def update_altitude(self, t_ns: int, down_m: float, var_m2: float) -> Innovation:
        """Fuse a height as NED down (-altitude AMSL), variance `var_m2`, at `t_ns`."""
        return self._measure("alt", t_ns, [down_m], [[var_m2]])

    def update_heading(self, t_ns: int, err_rad: float, var_rad2: float) -> Innovation:
        """Fuse a measured heading error `err_rad` (true minus the autopilot's heading,
        rad, about down), variance `var_rad2`, at `t_ns`."""
        return self._measure("hdg", t_ns, [err_rad], [[var_rad2]])

    def mark(self, t_ns: int) -> None:
        """Clone position and roll/pitch error at frame time `t_ns` (replacing the last
        clone), for the displacement that starts at this frame."""
        self._measure("mark", t_ns, np.zeros(0), np.zeros((0, 0)))

    def update_displacement(self, t0_ns: int, t1_ns: int, d_ne: np.ndarray, R: np.ndarray,
                            agl_m: float) -> Innovation:
        """Fuse a visual-odometry displacement `d_ne` [2] m from frame `t0_ns` (which must
        be the last `mark`) to `t1_ns`, covariance `R` [2, 2] m^2 of the image fit alone
        (the attitude errors are modelled), at height above ground `agl_m`."""
        return self._measure("disp", t1_ns, d_ne, R, int(t0_ns), float(agl_m))

    def _measure(self, kind: str, t_ns: int, z, R, t0_ns: int = 0,
                 agl_m: float = 0.0) -> Innovation:
        z = np.asarray(z, np.float64).reshape(-1)
        R = np.asarray(R, np.float64).reshape(len(z), len(z))
        if not (np.all(np.isfinite(z)) and np.all(np.isfinite(R))):
            raise ValueError(f"{kind} measurement is not finite")
        self._require()
        self._seq += 1
        m = _Meas(int(t_ns), kind, z, 0.5 * (R + R.T), self._seq, t0_ns, agl_m)
        if m.t_ns > self.t_ns + self.gap_ns:  # no IMU up to it: constant velocity
            self._step(m.t_ns, self._last)
        if m.t_ns >= self.t_ns:
            return self._apply(m, gate=True)
        return self._measure_late(m)

    def _measure_late(self, m: _Meas) -> Innovation:
        before = [i for i, s in enumerate(self._steps) if s.t_ns <= m.t_ns]
        if not before:  # older than the history: cannot be placed
            return _refused(m)
        k = before[-1]
        steps = list(self._steps)
        base = steps[k]
        todo = sorted([a for a in self._applied if a.t_ns >= base.t_ns] + [m],
                      key=lambda a: (a.t_ns, a.seq))
        self._applied = [a for a in self._applied if a.t_ns < base.t_ns]
        self._steps = deque(steps[:k + 1])
        self.x, self.P, self.t_ns = base.x.copy(), base.P.copy(), base.t_ns
        self._last, self.clone_t_ns = base.sample, base.clone_t_ns
        innovation = None
        for s in [*steps[k + 1:], None]:
            while todo and (s is None or todo[0].t_ns < s.t_ns):
                a = todo.pop(0)
                out = self._apply(a, gate=a is m)
                innovation = out if a is m else innovation
            if s is not None:
                self._step(s.t_ns, s.sample)
        return innovation

    def _model(self, m: _Meas) -> tuple[np.ndarray, np.ndarray]:
        """(h(x) [d], H [d, n]) of measurement `m` at its time."""
        x, tau, n = self.x, (m.t_ns - self.t_ns) * 1e-9, len(self.x)
        if m.kind == "disp":
            e, c = x[_E], x[_N:]
            D = x[0:2] + x[3:5] * tau - c[0:2]
            M = np.array([[1.0, c[4]], [-c[4], 1.0]])
            a = m.agl_m
            H = np.zeros((2, n))
            H[:, 0:2], H[:, 3:5], H[:, _N + 4] = M, tau * M, (D[1], -D[0])
            H[0, 7], H[1, 6] = a, -a
            H[:, _N:_N + 2] = -M
            H[0, _N + 3], H[1, _N + 2] = -a, a
            o_e, o_c = np.array([-e[1], e[0]]), np.array([-c[3], c[2]])
            return M @ D - a * (o_e - o_c), H
        if m.kind == "pos":
            H = np.zeros((2, n))
            H[:, 0:2], H[:, 3:5] = np.eye(2), tau * np.eye(2)
            return x[0:2] + x[3:5] * tau, H
        H = np.zeros((1, n))
        if m.kind == "hdg":
            H[0, 8] = 1.0
            return x[8:9].copy(), H
        H[0, 2], H[0, 5] = 1.0, tau
        return np.array([x[2] + x[5] * tau]), H

    def _clone(self, m: _Meas) -> Innovation:
        """x <- [x_18, p_n, p_e, e_x, e_y, e_z] (predicted to the mark's time),
        P <- J P J^T."""
        tau = (m.t_ns - self.t_ns) * 1e-9
        J = np.zeros((_N + 5, _N))
        J[:_N] = np.eye(_N)
        J[_N:_N + 2, 0:2], J[_N:_N + 2, 3:5] = np.eye(2), tau * np.eye(2)
        J[_N + 2:_N + 5, _E] = _I3
        x = self.x[:_N]
        self.x = np.concatenate([x, x[0:2] + x[3:5] * tau, x[_E]])
        self.P = J @ self.P[:_N, :_N] @ J.T
        self.clone_t_ns = m.t_ns
        self._applied.append(m)
        return Innovation(m.t_ns, np.zeros(0), np.zeros((0, 0)), 0.0, True)

    def _apply(self, m: _Meas, gate: bool) -> Innovation:
        if m.kind == "mark":
            return self._clone(m)
        if m.kind == "disp" and self.clone_t_ns != m.t0_ns:  # no clone at its start
            return _refused(m)
        h, H = self._model(m)
        y = m.z - h  # y = z - h(x)
        S = H @ self.P @ H.T + m.R  # S = H P H^T + R
        S = 0.5 * (S + S.T)
        try:
            S_inv = np.linalg.inv(S)
        except np.linalg.LinAlgError:
            return Innovation(m.t_ns, y, S, float("inf"), False)
        nis = float(y @ S_inv @ y)  # NIS = y^T S^-1 y
        if gate and not nis <= self._gates[m.kind]:
            return Innovation(m.t_ns, y, S, nis, False)
        K = self.P @ H.T @ S_inv  # K = P H^T S^-1
        self.x = self.x + K @ y  # dx = K y, injected
        A = np.eye(len(self.x)) - K @ H
        P = A @ self.P @ A.T + K @ m.R @ K.T  # Joseph form
        self.P = 0.5 * (P + P.T)
        self._applied.append(m)
        return Innovation(m.t_ns, y, S, nis, True)

    # -- output ---------------------------------------------------------------------------

    def full_state_at(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """(x [18], P [18, 18]) at `t_ns`, the filter unchanged: predicted forward from the
        state with its last sample held, at constant velocity past an IMU gap; earlier, from
        the last stored step at or before `t_ns` (or the oldest one)."""
        self._require()
        x, P, t0, s = self.x, self.P, self.t_ns, self._last
        if t_ns < self.t_ns:
            st = ([st for st in self._steps if st.t_ns <= t_ns] or [self._steps[0]])[-1]
            x, P, t0, s = st.x, st.P, st.t_ns, st.sample
        if t_ns <= t0:
            return x.copy(), P.copy()
        return self._propagate(x, P, t_ns - t0, s, s)[:2]

    def horizontal_at(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """(x [4] (north, east, vn, ve), P [4, 4]) at `t_ns`: the Navigator's view."""
        x, P = self.full_state_at(t_ns)
        return x[_HORIZONTAL], P[np.ix_(_HORIZONTAL, _HORIZONTAL)]

    def snapshot(self) -> ImuFilter:
        """This filter at its current state, without its history (IMU steps, measurements,
        samples waiting for a start): what another thread predicts forward from
        (`horizontal_at`) while this one goes on. Cheap to make."""
        self._require()
        snap = copy.copy(self)
        snap._steps = deque([_Step(self.t_ns, self._last, self.x.copy(), self.P.copy(),
                                   self.clone_t_ns)])
        snap._applied, snap._imu, snap._step_cache = [], deque(), {}
        return snap

    def _require(self) -> None:
        if self.x is None:
            raise RuntimeError("ImuFilter used before initialize()")
