"""Horizontal position/velocity Kalman filter in the local NED frame.

State x = [north_m, east_m, vn_mps, ve_mps], covariance P [4, 4].

Constant-velocity model driven by white acceleration of spectral density
q = accel_sigma_mps2^2 (m^2/s^3), discretised exactly over dt:

    F = [[I, dt I],            Q = q [[dt^3/3 I, dt^2/2 I],
         [0,    I]]                   [dt^2/2 I,      dt I]]

    predict:  x- = F x,  P- = F P F^T + Q

Position fixes (H = [I 0]) and velocity measurements (H = [0 I]):

    y = z - H x-                  innovation          [2]
    S = H P- H^T + R              innovation cov      [2, 2]
    NIS = y^T S^-1 y              ~ chi-square(2) when the filter is consistent
    K = P- H^T S^-1
    x+ = x- + K y
    P+ = (I - K H) P- (I - K H)^T + K R K^T     (Joseph form: stays symmetric PSD)

A measurement with NIS > cfg.nis_gate is not applied (`accepted` False).

Late measurements: a fix is stamped with its capture time, which may be older
than the filter's state (the state was predicted further, or a later fix got
through first). The filter keeps a short history of its states and of the
measurements it applied; a late measurement rewinds to the last state at or
before its time, is applied there, and the later measurements are re-applied
on top (re-predicting between them), then the state is predicted back to where
it was. Because F and Q above compose exactly (F(a+b) = F(b) F(a),
Q(a+b) = F(b) Q(a) F(b)^T + Q(b)), the result equals in-order processing.
Re-applied measurements keep the decision they were given when they arrived
(the caller has already acted on it); they are not gated a second time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np

from skyfix.runtime.core.config import FilterConfig
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Estimate

_H_POS = np.hstack([np.eye(2), np.zeros((2, 2))])  # [2, 4] picks (north, east)
_H_VEL = np.hstack([np.zeros((2, 2)), np.eye(2)])  # [2, 4] picks (vn, ve)
Kind = Literal["pos", "vel"]


@dataclass(frozen=True)
class Innovation:
    """What one measurement did: `y` [2] innovation, `S` [2, 2] its covariance, `nis`."""

    t_ns: int
    y: np.ndarray
    S: np.ndarray
    nis: float
    accepted: bool


@dataclass(frozen=True)
class _Snapshot:
    t_ns: int
    x: np.ndarray  # [4]
    P: np.ndarray  # [4, 4]


@dataclass(frozen=True)
class _Measurement:
    t_ns: int
    kind: Kind
    z: np.ndarray  # [2]
    R: np.ndarray  # [2, 2]


def transition(dt_s: float, accel_sigma_mps2: float) -> tuple[np.ndarray, np.ndarray]:
    """(F [4, 4], Q [4, 4]) of the constant-velocity model over `dt_s` seconds."""
    I2 = np.eye(2)
    q = accel_sigma_mps2**2
    F = np.block([[I2, dt_s * I2], [np.zeros((2, 2)), I2]])
    Q = q * np.block([[dt_s**3 / 3 * I2, dt_s**2 / 2 * I2], [dt_s**2 / 2 * I2, dt_s * I2]])
    return F, Q


def _vec2(a: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(a, dtype=np.float64).reshape(-1)
    if v.shape != (2,) or not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be 2 finite numbers, got {a!r}")
    return v


def _cov2(a: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(a, dtype=np.float64)
    if m.shape != (2, 2) or not np.all(np.isfinite(m)):
        raise ValueError(f"{name} must be a finite [2, 2] covariance, got shape {m.shape}")
    m = 0.5 * (m + m.T)
    if np.linalg.eigvalsh(m).min() < 0:
        raise ValueError(f"{name} is not positive semi-definite")
    return m


class PositionFilter:
    """Kalman filter of horizontal position and velocity; see the module docstring."""

    def __init__(self, cfg: FilterConfig, history_s: float = 5.0) -> None:
        self.cfg = cfg
        self.history_ns = int(history_s * 1e9)
        self.reset()

    def reset(self) -> None:
        """Forget everything; `initialize` must be called again."""
        self.x: np.ndarray | None = None  # [4]
        self.P: np.ndarray | None = None  # [4, 4]
        self.t_ns: int | None = None
        self._states: list[_Snapshot] = []  # after each step, oldest first
        self._applied: list[_Measurement] = []  # accepted measurements, oldest first

    @property
    def initialized(self) -> bool:
        return self.x is not None

    def initialize(self, t_ns: int, pos_ne: np.ndarray, cov_ne: np.ndarray,
                   vel_ne: np.ndarray | None = None, vel_cov: np.ndarray | None = None) -> None:
        """Start at `pos_ne` [2] with `cov_ne` [2, 2]; velocity zero with
        cfg.init_vel_sigma_mps unless given. Clears the history."""
        self.reset()
        v = np.zeros(2) if vel_ne is None else _vec2(vel_ne, "vel_ne")
        if vel_cov is None:
            vel_cov = self.cfg.init_vel_sigma_mps**2 * np.eye(2)
        self.x = np.concatenate([_vec2(pos_ne, "pos_ne"), v])
        self.P = np.zeros((4, 4))
        self.P[:2, :2] = _cov2(cov_ne, "cov_ne")
        self.P[2:, 2:] = _cov2(vel_cov, "vel_cov")
        self.t_ns = int(t_ns)
        self._record()

    # -- propagation ----------------------------------------------------------------------

    def _propagate(self, x: np.ndarray, P: np.ndarray, dt_ns: int) -> tuple[np.ndarray, np.ndarray]:
        # x- = F x ; P- = F P F^T + Q
        F, Q = transition(dt_ns * 1e-9, self.cfg.accel_sigma_mps2)
        P = F @ P @ F.T + Q
        return F @ x, 0.5 * (P + P.T)

    def predict(self, t_ns: int) -> None:
        """Propagate the state to `t_ns`; a time at or before the state's is a no-op."""
        self._require()
        if t_ns <= self.t_ns:
            return
        self.x, self.P = self._propagate(self.x, self.P, t_ns - self.t_ns)
        self.t_ns = int(t_ns)
        self._record()

    def state_at(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """(x [4], P [4, 4]) at `t_ns`, leaving the filter unchanged.

        Later than the state: predicted forward. Earlier: predicted from the last stored
        state at or before `t_ns` (the filtered estimate as it was then), or the oldest
        stored state when `t_ns` is older than the history.
        """
        self._require()
        base = _Snapshot(self.t_ns, self.x, self.P)
        if t_ns < self.t_ns:
            older = [s for s in self._states if s.t_ns <= t_ns]
            base = older[-1] if older else self._states[0]
        if t_ns <= base.t_ns:
            return base.x.copy(), base.P.copy()
        return self._propagate(base.x, base.P, t_ns - base.t_ns)

    def horizontal_at(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """(x [4] (north, east, vn, ve), P [4, 4]) at `t_ns`: `state_at`, under the name
        the Navigator uses for either filter."""
        return self.state_at(t_ns)

    def snapshot(self) -> PositionFilter:
        """This filter at its current state, without its history: what another thread
        predicts forward from (`horizontal_at`) while this one goes on. Cheap to make."""
        self._require()
        snap = copy.copy(self)
        snap._states = [_Snapshot(self.t_ns, self.x.copy(), self.P.copy())]
        snap._applied = []
        return snap

    # -- measurements ---------------------------------------------------------------------

    def update_position(self, t_ns: int, z_ne: np.ndarray, R: np.ndarray) -> Innovation:
        """Fuse a position fix `z_ne` [2] (north, east m) with covariance `R` [2, 2] m^2,
        captured at `t_ns` (which may be older than the state time)."""
        return self._measure(_Measurement(int(t_ns), "pos", _vec2(z_ne, "z_ne"), _cov2(R, "R")))

    def update_velocity(self, t_ns: int, v_ne: np.ndarray, R: np.ndarray) -> Innovation:
        """Fuse a velocity `v_ne` [2] (vn, ve m/s) with covariance `R` [2, 2] m^2/s^2."""
        return self._measure(_Measurement(int(t_ns), "vel", _vec2(v_ne, "v_ne"), _cov2(R, "R")))

    def _measure(self, m: _Measurement) -> Innovation:
        self._require()
        if m.t_ns >= self.t_ns:
            self.predict(m.t_ns)
            innovation = self._apply(m, gate=True)
            self._record()
            return innovation
        return self._measure_late(m)

    def _measure_late(self, m: _Measurement) -> Innovation:
        """Apply `m` at its own time by rewinding, then replay what came after it."""
        older = [s for s in self._states if s.t_ns <= m.t_ns]
        if not older or m.t_ns < self.t_ns - self.history_ns:
            nan2 = np.full(2, np.nan)
            return Innovation(m.t_ns, nan2, np.full((2, 2), np.nan), float("inf"), False)
        t_end = self.t_ns
        base = older[-1]
        later = [a for a in self._applied if a.t_ns > base.t_ns]
        self._states = [s for s in self._states if s.t_ns <= base.t_ns]
        self._applied = [a for a in self._applied if a.t_ns <= base.t_ns]
        self.x, self.P, self.t_ns = base.x.copy(), base.P.copy(), base.t_ns
        # Measurements at base.t_ns are inside `base`, so everything replayed is newer than
        # it; the stable sort keeps arrival order among equal capture times.
        replay = sorted([*later, m], key=lambda a: a.t_ns)
        innovation = None
        for a in replay:
            self.predict(a.t_ns)
            if a is m:
                innovation = self._apply(a, gate=True)
            else:
                self._apply(a, gate=False)
            self._record()
        self.predict(t_end)
        return innovation

    def _apply(self, m: _Measurement, gate: bool) -> Innovation:
        H = _H_POS if m.kind == "pos" else _H_VEL
        y = m.z - H @ self.x  # y = z - H x-
        S = H @ self.P @ H.T + m.R  # S = H P- H^T + R
        S = 0.5 * (S + S.T)
        try:
            S_inv = np.linalg.inv(S)
        except np.linalg.LinAlgError:
            return Innovation(m.t_ns, y, S, float("inf"), False)
        nis = float(y @ S_inv @ y)  # NIS = y^T S^-1 y
        if gate and not nis <= self.cfg.nis_gate:
            return Innovation(m.t_ns, y, S, nis, False)
        K = self.P @ H.T @ S_inv  # K = P- H^T S^-1
        self.x = self.x + K @ y  # x+ = x- + K y
        A = np.eye(4) - K @ H
        P = A @ self.P @ A.T + K @ m.R @ K.T  # Joseph form
        self.P = 0.5 * (P + P.T)
        self._applied.append(m)
        return Innovation(m.t_ns, y, S, nis, True)

    # -- bookkeeping ----------------------------------------------------------------------

    def _record(self) -> None:
        """Store the current state and drop history older than the window (keeping the
        newest state at or before the window's start, so rewinds there still work)."""
        self._states.append(_Snapshot(self.t_ns, self.x.copy(), self.P.copy()))
        cutoff = self.t_ns - self.history_ns
        keep_from = 0
        for i, s in enumerate(self._states):
            if s.t_ns <= cutoff:
                keep_from = i
        self._states = self._states[keep_from:]
        oldest = self._states[0].t_ns
        self._applied = [a for a in self._applied if a.t_ns > oldest]

    def _require(self) -> None:
        if self.x is None:
            raise RuntimeError("PositionFilter used before initialize()")


def fix_noise(cov: np.ndarray, shared: np.ndarray, dt_s: float | None,
              tau_s: float) -> np.ndarray:
    """[2, 2] the covariance a filter takes a fix with: the fix's covariance `cov` less
    the part of its `shared` error (the attitude's and the map's: Fix.shared_cov_en_m2)
    that the last fused fix, `dt_s` seconds before (None: there was none), already had.

    That error is a Gauss-Markov process of correlation time `tau_s`: b_k = rho b_(k-1)
    + v_k with rho = exp(-dt / tau_s) and v_k ~ N(0, (1 - rho^2) shared). The estimate
    carries rho b_(k-1) already, and claims `shared` on top (estimate_at), so it is not
    fed again; v_k is new to the filter and is fed as each fix's own. Fed as a constant
    bias instead (no v_k), the fix-to-fix change of a tilt-driven error looks like an
    outlier to a filter that weighs each fix by its own noise alone, and is gated."""
    rho = 0.0 if dt_s is None else float(np.exp(-max(dt_s, 0.0) / tau_s))
    return cov - rho**2 * shared


def estimate_at(filt, t_ns: int, frame: LocalFrame, alt_amsl_m: float,
                last_fix_t_ns: int | None, map_sigma_m: float = 0.0,
                shared_ne_m2: np.ndarray | None = None) -> Estimate:
    """The estimate of `filt` (any filter with `horizontal_at`: this module's or the IMU
    filter) predicted to `t_ns` (e.g. the send time) as an `Estimate`.

    `valid` is False when the state or covariance is not finite; `last_fix_age_s` is
    the time since the last accepted fix (inf when there was none, never negative).
    `map_sigma_m`: the map's own 1-sigma error against the world (its manifest's
    georef_sigma_m). The fixes are positions in the map, so that error is one bias shared
    by all of them, which no number of fixes averages away: it is added to the position
    covariance the estimate claims, cov = P_ne + map_sigma^2 I, never to a fix's.
    `shared_ne_m2`: [2, 2] (north, east) the part of the last fused fix's covariance that
    consecutive fixes share (Fix.shared_cov_en_m2), which fusing them does not shrink
    either (the filter takes fixes without it): added to the claim the same way.
    """
    x, P = filt.horizontal_at(t_ns)
    valid = bool(np.all(np.isfinite(x)) and np.all(np.isfinite(P)))
    lat = lon = float("nan")
    if valid:
        lat_a, lon_a = frame.ned_to_lla(x[0], x[1])
        lat, lon = float(lat_a[0]), float(lon_a[0])
        valid = bool(np.isfinite(lat) and np.isfinite(lon))
    age = float("inf") if last_fix_t_ns is None else max(0.0, (t_ns - last_fix_t_ns) * 1e-9)
    return Estimate(
        t_ns=int(t_ns), north_m=float(x[0]), east_m=float(x[1]),
        vn_mps=float(x[2]), ve_mps=float(x[3]),
        cov_ne_m2=P[:2, :2] + map_sigma_m**2 * np.eye(2)
        + (0.0 if shared_ne_m2 is None else shared_ne_m2),
        vel_cov_ne_m2s2=P[2:, 2:].copy(),
        lat_deg=lat, lon_deg=lon, alt_amsl_m=float(alt_amsl_m),
        valid=valid, last_fix_age_s=age,
    )
