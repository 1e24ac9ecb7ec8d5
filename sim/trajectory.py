"""Synthetic flight paths and their autopilot log: a lawn-mower (boustrophedon) pattern
flown at constant speed with rounded turns, heading along the track, a smooth random
roll/pitch wobble, and the MAVLink telemetry (.tlog) an ArduPilot copter flying it
would record, with realistic sensor errors.

Horizontal positions are map-grid metres (easting, northing). Headings are clockwise
from grid north, which the simulator treats as NED north (see sim/flight.py). The path
is a chain of straight lines and circular arcs joined with a continuous tangent, so
the velocity never jumps; the turn radius is at least speed / max yaw rate.
Everything is analytic, so any instant can be sampled exactly and deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mav2

from skyfix.runtime.io.tlog import TlogWriter
from skyfix.sim.imu import G_MPS2, ImuSensor, ImuSpec, scaled_imu

MAX_YAW_RATE_RADPS = np.radians(20.0)
ROW_OVERLAP = 0.7  # row spacing as a fraction of the footprint's cross-track width


@dataclass(frozen=True)
class PathPlan:
    """Horizontal path as segments laid end to end; arrays are [S] float64.

    Segment k starts at (start_e_m[k], start_n_m[k]) with track `heading_rad[k]`,
    runs `length_m[k]` metres with curvature `curvature_1pm[k]` (0: straight line,
    > 0: turning right / clockwise, < 0: left).
    """

    start_e_m: np.ndarray
    start_n_m: np.ndarray
    heading_rad: np.ndarray
    length_m: np.ndarray
    curvature_1pm: np.ndarray

    def sample(self, s_m: np.ndarray) -> tuple[np.ndarray, ...]:
        """(east_m, north_m, heading_rad, curvature_1pm), each [N], at path lengths `s_m`."""
        starts = np.concatenate([[0.0], np.cumsum(self.length_m)[:-1]])
        k = np.clip(np.searchsorted(starts, s_m, side="right") - 1, 0, len(starts) - 1)
        u = s_m - starts[k]
        h0, c = self.heading_rad[k], self.curvature_1pm[k]
        h = h0 + c * u
        straight = np.abs(c) < 1e-12
        c_safe = np.where(straight, 1.0, c)
        # d(east)/ds = sin(heading), d(north)/ds = cos(heading), heading = h0 + c * u
        de = np.where(straight, u * np.sin(h0), (np.cos(h0) - np.cos(h)) / c_safe)
        dn = np.where(straight, u * np.cos(h0), (np.sin(h) - np.sin(h0)) / c_safe)
        return self.start_e_m[k] + de, self.start_n_m[k] + dn, h, c

    @property
    def total_length_m(self) -> float:
        return float(np.sum(self.length_m))


def plan_lawnmower(bounds_en: tuple[float, float, float, float], margin_m: float,
                   footprint_cross_m: float, speed_mps: float, length_m: float,
                   rng: np.random.Generator) -> PathPlan:
    """A boustrophedon of `length_m` or more inside `bounds_en` (min E, min N, max E, max N)
    shrunk by `margin_m`; rows `ROW_OVERLAP * footprint_cross_m` apart (at least two turn
    radii), joined by semicircular U-turns that stay inside the shrunk area. An area too
    small for that gets a small racetrack about its centre. After the last row the pattern
    runs back over the rows in reverse order, so any length fits.
    """
    r_min = speed_mps / MAX_YAW_RATE_RADPS
    centre = np.array([(bounds_en[0] + bounds_en[2]) / 2, (bounds_en[1] + bounds_en[3]) / 2])
    half = np.maximum(np.array([bounds_en[2] - bounds_en[0], bounds_en[3] - bounds_en[1]]) / 2
                      - margin_m, 0.0)
    # Rows along the longer side of the area; a coin flip when it is square.
    along = 0 if half[0] > half[1] or (half[0] == half[1] and rng.random() < 0.5) else 1
    width = 2 * half[1 - along]
    if width < 2 * r_min:
        n_rows, spacing = 2, 2 * r_min
    else:
        n_rows = max(2, int(np.ceil(width / max(ROW_OVERLAP * footprint_cross_m, 1e-6))) + 1)
        spacing = width / (n_rows - 1)
        if spacing < 2 * r_min:
            n_rows = int(np.floor(width / (2 * r_min))) + 1
            spacing = width / (n_rows - 1)
    radius = spacing / 2
    run_half = max(half[along] - radius, radius)  # straight part spans [-run_half, run_half]
    rows_w = (np.arange(n_rows) - (n_rows - 1) / 2) * spacing
    if rng.random() < 0.5:
        rows_w = rows_w[::-1]
    direction = 1.0 if rng.random() < 0.5 else -1.0  # along +axis or -axis on the first row

    def point(u: float, w: float) -> np.ndarray:
        p = np.empty(2)
        p[along], p[1 - along] = u, w
        return centre + p

    order = list(range(n_rows)) + list(range(n_rows - 2, 0, -1))  # ping-pong over the rows
    segs: list[tuple[float, float, float, float, float]] = []
    total, leg = 0.0, 0
    while total < length_m:
        row = order[leg % len(order)]
        nxt = order[(leg + 1) % len(order)]
        a = point(-direction * run_half, rows_w[row])
        b = point(direction * run_half, rows_w[row])
        heading = float(np.arctan2(b[0] - a[0], b[1] - a[1]))
        segs.append((a[0], a[1], heading, 2 * run_half, 0.0))
        # U-turn to the next row: right turn when that row lies to the right of the track.
        to_next = point(direction * run_half, rows_w[nxt]) - b
        right = np.array([np.cos(heading), -np.sin(heading)])
        sign = 1.0 if float(to_next @ right) > 0 else -1.0
        segs.append((b[0], b[1], heading, np.pi * radius, sign / radius))
        total += 2 * run_half + np.pi * radius
        direction, leg = -direction, leg + 1
    arr = np.array(segs, np.float64)
    return PathPlan(*(arr[:, k].copy() for k in range(5)))


@dataclass(frozen=True)
class Wobble:
    """Roll and pitch as sums of sinusoids. `amp_rad`, `freq_hz`, `phase_rad`: [2, K]
    (row 0 roll, row 1 pitch); the amplitudes of a row add up to the peak excursion."""

    amp_rad: np.ndarray
    freq_hz: np.ndarray
    phase_rad: np.ndarray

    @classmethod
    def random(cls, peak_deg: float, rng: np.random.Generator, k: int = 3) -> Wobble:
        w = rng.uniform(0.3, 1.0, (2, k))
        amp = np.radians(peak_deg) * w / w.sum(axis=1, keepdims=True)
        return cls(amp, rng.uniform(0.03, 0.4, (2, k)), rng.uniform(0, 2 * np.pi, (2, k)))

    def sample(self, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([2, N] angles rad, [2, N] their time derivatives rad/s) at times `t_s` [N]."""
        arg = 2 * np.pi * self.freq_hz[:, :, None] * t_s[None, None, :] + self.phase_rad[..., None]
        ang = (self.amp_rad[..., None] * np.sin(arg)).sum(axis=1)
        rate = (self.amp_rad[..., None] * 2 * np.pi * self.freq_hz[..., None]
                * np.cos(arg)).sum(axis=1)
        return ang, rate


@dataclass(frozen=True)
class TrajectoryState:
    """True state at N instants. `t_s`: [N] seconds since the start; `en_m`: [N, 2] map
    (easting, northing); `alt_amsl_m`: [N]; `vel_ned_mps`, `acc_ned_mps2`: [N, 3];
    `rpy_rad`: [N, 3] roll, pitch, yaw (yaw wrapped to [-pi, pi)); `rpy_rate_radps`: [N, 3]
    their time derivatives."""

    t_s: np.ndarray
    en_m: np.ndarray
    alt_amsl_m: np.ndarray
    vel_ned_mps: np.ndarray
    acc_ned_mps2: np.ndarray
    rpy_rad: np.ndarray
    rpy_rate_radps: np.ndarray

    def R_ned_body(self) -> np.ndarray:
        """[N, 3, 3] body-to-NED rotations (Z-Y-X, as skyfix.runtime.core.geo.R_ned_body)."""
        r, p, y = self.rpy_rad.T
        cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
        return np.stack([
            np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1),
            np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1),
            np.stack([-sp, cp * sr, cp * cr], -1),
        ], 1)

    def body_rates_radps(self) -> np.ndarray:
        """[N, 3] angular velocity (p, q, r) in body axes from the Euler angles and rates."""
        r, p, _ = self.rpy_rad.T
        dr, dp, dy = self.rpy_rate_radps.T
        return np.stack([dr - dy * np.sin(p),
                         dp * np.cos(r) + dy * np.cos(p) * np.sin(r),
                         -dp * np.sin(r) + dy * np.cos(p) * np.cos(r)], -1)

    def in_true_north(self, convergence_rad: float) -> TrajectoryState:
        """This state with its yaw and NED vectors turned from the map grid, in which the
        simulator plans and renders, to true north, as an autopilot reports them: grid north
        lies `convergence_rad` east of true north (runtime/core/geo.grid_convergence_deg).
        `en_m` stays in the map grid."""
        c, s = np.cos(convergence_rad), np.sin(convergence_rad)

        def turn(v: np.ndarray) -> np.ndarray:
            return np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1], v[:, 2]], -1)

        rpy = self.rpy_rad.copy()
        rpy[:, 2] = (rpy[:, 2] + convergence_rad + np.pi) % (2 * np.pi) - np.pi
        return replace(self, vel_ned_mps=turn(self.vel_ned_mps),
                       acc_ned_mps2=turn(self.acc_ned_mps2), rpy_rad=rpy)

    def specific_force_body_mps2(self) -> np.ndarray:
        """[N, 3] what an accelerometer reads: body-axes (acceleration - gravity);
        (0, 0, -g) when level and unaccelerated."""
        f_ned = self.acc_ned_mps2 - np.array([0.0, 0.0, G_MPS2])
        return np.einsum("nji,nj->ni", self.R_ned_body(), f_ned)


@dataclass(frozen=True)
class Trajectory:
    """Constant speed along `path`, constant altitude AMSL, heading = track direction."""

    path: PathPlan
    wobble: Wobble
    speed_mps: float
    alt_amsl_m: float

    def sample(self, t_s: np.ndarray) -> TrajectoryState:
        t = np.asarray(t_s, np.float64)
        e, n, heading, curv = self.path.sample(self.speed_mps * t)
        v = self.speed_mps
        yaw_rate = curv * v
        zeros = np.zeros_like(t)
        vel = np.stack([v * np.cos(heading), v * np.sin(heading), zeros], -1)
        # d/dt of v * (cos h, sin h) with dh/dt = curvature * v
        acc = np.stack([-v * yaw_rate * np.sin(heading), v * yaw_rate * np.cos(heading), zeros], -1)
        ang, rate = self.wobble.sample(t)
        yaw = (heading + np.pi) % (2 * np.pi) - np.pi
        return TrajectoryState(
            t, np.stack([e, n], -1), np.full_like(t, self.alt_amsl_m), vel, acc,
            np.stack([ang[0], ang[1], yaw], -1), np.stack([rate[0], rate[1], yaw_rate], -1),
        )


def gauss_markov(rng: np.random.Generator, n: int, dt_s: float, tau_s: float,
                 sigma: float, dims: int = 1) -> np.ndarray:
    """[n, dims] first-order Gauss-Markov (AR(1)) noise: stationary standard deviation
    `sigma`, correlation time `tau_s`, sampled every `dt_s`, started in steady state."""
    a = np.exp(-dt_s / tau_s)
    w = rng.normal(0.0, sigma * np.sqrt(1 - a * a), (n, dims))
    out = np.empty((n, dims))
    x = rng.normal(0.0, sigma, dims)
    for i in range(n):
        x = a * x + w[i]
        out[i] = x
    return out


_ARMED_AUTO = (mav2.MAV_MODE_FLAG_SAFETY_ARMED | mav2.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED
               | mav2.MAV_MODE_FLAG_STABILIZE_ENABLED | mav2.MAV_MODE_FLAG_GUIDED_ENABLED
               | mav2.MAV_MODE_FLAG_AUTO_ENABLED)
_COPTER_AUTO = 3  # ArduCopter custom_mode AUTO


def write_tlog(path: Path, traj: Trajectory, start_ns: int, duration_s: float,
               to_lla: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
               home_alt_amsl_m: float, attitude_sigma_deg: float, yaw_sigma_deg: float,
               gnss_sigma_m: float, rng: np.random.Generator,
               imu: ImuSpec | None = None, alt_bias_m: float = 0.0,
               convergence_rad: float = 0.0) -> None:
    """Write the telemetry of `traj` from `start_ns` (boot time) for `duration_s`, in time
    order, as system 1 / component 1: HEARTBEAT and SYSTEM_TIME 1 Hz, ATTITUDE 25 Hz,
    SCALED_IMU at imu.rate_hz (sim/imu.py: noise, bias, bias drift), GLOBAL_POSITION_INT
    10 Hz (truth; its altitudes `alt_bias_m` off, as a barometer's offset makes them),
    GPS_RAW_INT 5 Hz (truth + error). Attitudes, velocities and headings are about true
    north (`traj`'s grid states turned by `convergence_rad`, TrajectoryState.in_true_north).

    Reported attitude = truth + Gauss-Markov error (1-sigma `attitude_sigma_deg` roll/pitch,
    `yaw_sigma_deg` yaw, correlation 5 s / 20 s); GNSS = truth + Gauss-Markov error
    (`gnss_sigma_m` per horizontal axis, 1.5x vertical, correlation 30 s). `to_lla` maps
    [N, 2] map (E, N) to ([N] lat_deg, [N] lon_deg); relative_alt is above `home_alt_amsl_m`.
    """
    start_us = start_ns // 1000

    def times_us(rate_hz: float) -> np.ndarray:
        k = np.arange(int(np.floor(duration_s * rate_hz + 1e-9)) + 1)
        return np.round(k * 1e6 / rate_hz).astype(np.int64)

    def cdeg(yaw: np.ndarray) -> np.ndarray:
        return np.round(np.degrees(yaw) % 360.0 * 100).astype(np.int64) % 36000

    records: list[tuple[int, int, mav2.MAVLink_message]] = []
    with TlogWriter(path, 1, 1) as w:
        mav = w.mav
        for t in times_us(1.0).tolist():
            records.append((t, 0, mav.heartbeat_encode(
                mav2.MAV_TYPE_QUADROTOR, mav2.MAV_AUTOPILOT_ARDUPILOTMEGA, _ARMED_AUTO,
                _COPTER_AUTO, mav2.MAV_STATE_ACTIVE)))
            records.append((t, 1, mav.system_time_encode(start_us + t, t // 1000)))

        t = times_us(25.0)
        st = traj.sample(t * 1e-6).in_true_north(convergence_rad)
        sig = np.radians([attitude_sigma_deg, attitude_sigma_deg, yaw_sigma_deg])
        err = np.concatenate([gauss_markov(rng, len(t), 0.04, 5.0, 1.0, 2),
                              gauss_markov(rng, len(t), 0.04, 20.0, 1.0, 1)], 1) * sig
        rpy = st.rpy_rad + err
        rpy[:, 2] = (rpy[:, 2] + np.pi) % (2 * np.pi) - np.pi
        gyro = st.body_rates_radps() + rng.normal(0.0, 0.003, (len(t), 3))
        for i, ti in enumerate(t.tolist()):
            records.append((ti, 2, mav.attitude_encode(ti // 1000, *map(float, rpy[i]),
                                                       *map(float, gyro[i]))))

        t = times_us(10.0)
        st = traj.sample(t * 1e-6).in_true_north(convergence_rad)
        lat, lon = to_lla(st.en_m)
        vel_cms = np.round(st.vel_ned_mps * 100).astype(np.int64)
        hdg = cdeg(st.rpy_rad[:, 2])
        for i, ti in enumerate(t.tolist()):
            records.append((ti, 4, mav.global_position_int_encode(
                ti // 1000, int(round(lat[i] * 1e7)), int(round(lon[i] * 1e7)),
                int(round((st.alt_amsl_m[i] + alt_bias_m) * 1000)),
                int(round((st.alt_amsl_m[i] + alt_bias_m - home_alt_amsl_m) * 1000)),
                *vel_cms[i].tolist(), int(hdg[i]))))

        t = times_us(5.0)
        st = traj.sample(t * 1e-6).in_true_north(convergence_rad)
        pos_err = gauss_markov(rng, len(t), 0.2, 30.0, gnss_sigma_m, 3) * [1.0, 1.0, 1.5]
        lat, lon = to_lla(st.en_m + pos_err[:, :2])
        vel = st.vel_ned_mps[:, :2] + rng.normal(0, 0.1, (len(t), 2))
        speed = np.hypot(vel[:, 0], vel[:, 1])
        cog = cdeg(np.arctan2(vel[:, 1], vel[:, 0]))
        h_acc = max(1, round(gnss_sigma_m * 1000))
        for i, ti in enumerate(t.tolist()):  # alt_ellipsoid = alt: no geoid in the sim
            alt_mm = int(round((st.alt_amsl_m[i] + pos_err[i, 2]) * 1000))
            records.append((ti, 5, mav.gps_raw_int_encode(
                start_us + ti, 3, int(round(lat[i] * 1e7)), int(round(lon[i] * 1e7)), alt_mm,
                80, 120, int(round(speed[i] * 100)), int(cog[i]), 14, alt_mm, h_acc,
                round(1.5 * h_acc), 150, 0, 0)))

        imu = imu or ImuSpec()
        t = times_us(imu.rate_hz)
        st = traj.sample(t * 1e-6).in_true_north(convergence_rad)
        sensor = ImuSensor(imu, np.random.default_rng(rng.integers(2**63)))
        acc, gyro = sensor.measure(t * 1e-6, st.specific_force_body_mps2(),
                                   st.body_rates_radps())
        R = st.R_ned_body()
        for i, ti in enumerate(t.tolist()):
            records.append((ti, 3, scaled_imu(mav, ti // 1000, acc[i], gyro[i], R[i])))

        records.sort(key=lambda r: (r[0], r[1]))
        for ti, _, msg in records:
            w.write(msg, (start_us + ti) * 1000)
