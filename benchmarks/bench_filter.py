"""The IMU-aided filter against the constant-velocity one, Monte-Carlo over seeded flights.

    python benchmarks/bench_filter.py --out out/bench/filter.json [--runs 200] [--workers 2]

Each run is a seeded lawn-mower flight at 12 m/s and 120 m over a 250 x 250 m area (rows
83 m apart: 14 s straight, then 11 s in a U-turn of radius 42 m; sim/trajectory.py),
with the sensors of the simulator, measurement by measurement (no images):

- IMU at --imu-hz (100): truth + noise, power-on bias and bias drift (sim/imu.py ImuSpec);
- the autopilot's attitude at 25 Hz: truth + Gauss-Markov error (roll/pitch 0.3 deg,
  5 s; yaw 1 deg, 20 s; as sim/trajectory.write_tlog; --tilt-deg and --yaw-deg set the
  sigmas, e.g. 0 to see what the autopilot's attitude error alone costs), interpolated
  to each IMU sample as the daemon does (runtime/io/telemetry.attitude_at);
- frames at 10 Hz; for the first --fix-s seconds each frame gives a fix (truth + white
  0.5 m per axis, claimed as such) that arrives 200 ms after its capture, and with it the
  heading error the image measures (truth + a constant 0.15 deg, the camera mount's yaw
  error left after calibration, + white 0.1 deg; claimed as match.heading_floor_deg),
  fused by the IMU filter when filter.fuse_heading (--no-heading: not);
- visual odometry on every frame: the displacement from its reference view as a camera
  sees it when the views are rectified with the autopilot's attitude (the change of the
  roll/pitch error times the height, the displacement turned by the reference view's
  heading error: the autopilot's yaw error plus the mount's, as a fix measures it) plus fit
  noise, 0.05 m per axis between consecutive frames, growing as 1/sqrt(overlap) of the
  views (footprint: the sim's 640 x 480, 70 deg camera at 120 m); a new draw for every
  measurement; with the covariance runtime/nav/odometry.py gives it; arrives 100 ms
  after the frame; fused only on frames without a fix (as the Navigator). The reference
  is the frame before for the CV filter, a keyframe for the IMU filter, kept and renewed
  as runtime/nav/odometry.py does (keeps_reference), and marked as the Navigator does;
- the autopilot's altitude with every frame (truth + 0.3 m), for the IMU filter;
- the filters start from two fixes and are reset after filter.divergence_after_gated
  gated fixes in a row, as the Navigator does (counted as "resets").

Variants after the last fix: imu_odo (IMU filter, IMU + odometry), imu (IMU filter,
IMU only), cv (today's constant-velocity filter with odometry), odo_dr (odometry alone:
the constant-velocity filter's position at the last fix plus the summed displacements).
Reported: horizontal drift 10, 30 and 60 s after the last fix (mean, p50, p95, max);
the estimate at the 10 Hz send instants in turns vs the fix error there; NEES of the
horizontal position and velocity (4 dof) at the last fix and 10/30/60 s after it,
averaged over the runs, against the two-sided 95 % band; NIS of fixes and odometry;
CPU time (thread time) per IMU sample and per fix (late: includes the replay).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist

import numpy as np

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config
from skyfix.runtime.io.telemetry import attitude_at
from skyfix.runtime.nav.eskf import ImuFilter
from skyfix.runtime.nav.filter import PositionFilter
from skyfix.runtime.nav.odometry import keeps_reference
from skyfix.sim.imu import ImuSensor, ImuSpec
from skyfix.sim.trajectory import Trajectory, TrajectoryState, Wobble, gauss_markov, plan_lawnmower

SPEED_MPS, AGL_M, FPS = 12.0, 120.0, 10.0
FIX_SIGMA_M, FIX_LATENCY_S, ODO_LATENCY_S, ODO_FIT_M = 0.5, 0.2, 0.1, 0.05
HEADING_BIAS_DEG, HEADING_WHITE_DEG = 0.15, 0.1  # a fix's heading: mount bias, image noise
TILT_TAU_S, YAW_TAU_S = 5.0, 20.0  # the attitude error's sigmas are --tilt-deg, --yaw-deg
DRIFT_S = (10.0, 30.0, 60.0)
VARIANTS = ("imu_odo", "imu", "cv", "odo_dr")
NS = 1_000_000_000
_CAM = CameraModel.from_fov(640, 480, 70.0)  # the sim's camera (sim/flight.py)
FOOTPRINT_M = float(np.sqrt(_CAM.width * _CAM.height)) * AGL_M / _CAM.fx  # view extent


def rotations(rpy: np.ndarray) -> np.ndarray:
    """[N, 3, 3] body -> NED of [N, 3] roll, pitch, yaw."""
    z = np.zeros((len(rpy), 3))
    return TrajectoryState(z[:, 0], z[:, :2], z[:, 0], z, z, rpy, z).R_ned_body()


def make_flight(seed: int, fix_s: float, gap_s: float, imu_hz: float,
                att_deg: tuple[float, float] = (0.3, 1.0)) -> dict:
    """Truth and every measurement of one run, with arrival times (ns)."""
    rng = np.random.default_rng(seed)
    total = fix_s + gap_s + 1.0
    plan = plan_lawnmower((0.0, 0.0, 250.0, 250.0), 0.0, 100.0, SPEED_MPS,
                          SPEED_MPS * total + 10.0, rng)
    traj = Trajectory(plan, Wobble.random(3.0, rng), SPEED_MPS, AGL_M)
    t_imu = np.arange(1, int(total * imu_hz)) / imu_hz
    st = traj.sample(t_imu)
    acc, gyro = ImuSensor(ImuSpec(rate_hz=imu_hz), rng).measure(
        t_imu, st.specific_force_body_mps2(), st.body_rates_radps())
    t_att = np.arange(int(total * 25) + 2) / 25
    err = np.concatenate([gauss_markov(rng, len(t_att), 0.04, TILT_TAU_S, 1.0, 2),
                          gauss_markov(rng, len(t_att), 0.04, YAW_TAU_S, 1.0, 1)], 1)
    att = np.column_stack([t_att * NS, traj.sample(t_att).rpy_rad
                           + err * np.radians([att_deg[0], att_deg[0], att_deg[1]])])
    R_ap = rotations(attitude_at(att, t_imu * NS))

    t_f = np.arange(1, int(total * FPS)) / FPS
    sf = traj.sample(t_f)
    p_ne = sf.en_m[:, ::-1]
    # attitude error in NED axes: R_true = Exp(e) R_ap (first order)
    E = np.einsum("nij,nkj->nik", sf.R_ned_body(), rotations(attitude_at(att, t_f * NS)))
    e = 0.5 * np.stack([E[:, 2, 1] - E[:, 1, 2], E[:, 0, 2] - E[:, 2, 0],
                        E[:, 1, 0] - E[:, 0, 1]], 1)
    offset = AGL_M * np.column_stack([-e[:, 1], e[:, 0]])  # where the nadir appears
    D = np.diff(p_ne, axis=0)
    fit = rng.normal(0.0, ODO_FIT_M, D.shape)
    fixes = p_ne + rng.normal(0.0, FIX_SIGMA_M, p_ne.shape)
    # a view's heading error: the autopilot's and the camera mount's (what a fix measures)
    view_yaw = e[:, 2] + np.radians(rng.normal(0.0, HEADING_BIAS_DEG))
    heading = view_yaw + np.radians(rng.normal(0.0, HEADING_WHITE_DEG, len(t_f)))
    D_m = seen(D, view_yaw[:-1], offset[:-1], offset[1:]) + fit
    return {"traj": traj, "t_imu": t_imu, "acc": acc, "gyro": gyro, "R_ap": R_ap, "t_f": t_f,
            "heading": heading, "p_ne": p_ne, "v_ne": sf.vel_ned_mps[:, :2], "fixes": fixes,
            "D_m": D_m, "D": D, "view_yaw": view_yaw, "offset": offset,
            "alt": sf.alt_amsl_m + rng.normal(0.0, 0.3, len(t_f))}


def seen(D: np.ndarray, ez: np.ndarray, offset_r: np.ndarray, offset_i: np.ndarray
         ) -> np.ndarray:
    """[..., 2] the true displacements `D` (north, east) from views r to views i as the
    views show them, without fit noise: read in view r's axes, turned by its heading error
    `ez` (rad), and moved by where each view's nadir appears (`offset_*`, the roll/pitch
    errors times the height)."""
    turned = np.stack([D[..., 0] + ez * D[..., 1], D[..., 1] - ez * D[..., 0]], -1)
    return turned + offset_r - offset_i


def displacement(fl: dict, r: int, i: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, float]:
    """(measured displacement [2] (north, east) from frame r to frame i, its fit's 1-sigma
    per axis): as make_flight's D_m for consecutive frames, for any reference frame r."""
    D = fl["p_ne"][i] - fl["p_ne"][r]
    overlap = max(1.0 - float(np.hypot(*D)) / FOOTPRINT_M, 0.05)
    sigma = ODO_FIT_M / np.sqrt(overlap)
    d = seen(D, fl["view_yaw"][r], fl["offset"][r], fl["offset"][i]) + rng.normal(0.0, sigma, 2)
    return d, sigma


def odometry_cov(D_m: np.ndarray, cfg: Config) -> np.ndarray:
    """[2, 2] (north, east) m^2/s^2: the covariance runtime/nav/odometry.py gives."""
    oc, dt = cfg.odometry, 1.0 / FPS
    step = AGL_M * np.tan(np.radians(oc.attitude_step_sigma_deg))
    across = np.array([-D_m[1], D_m[0]])
    cov = (4.0 * ODO_FIT_M**2 + 2 * step**2) * np.eye(2)
    cov += np.radians(oc.yaw_sigma_deg) ** 2 * np.outer(across, across)
    return cov / dt**2 + oc.sigma_floor_mps**2 * np.eye(2)


def events(fl: dict, use_imu: bool, fix_s: float) -> tuple[list, list]:
    """(events, check times s): (arrival ns, order, kind, index) in arrival order."""
    t_f, n_fix = fl["t_f"], int(np.sum(fl["t_f"] < fix_s))
    ev: list[tuple[int, int, str, int]] = []
    if use_imu:
        ev += [(int(round(t * NS)), 0, "imu", i) for i, t in enumerate(fl["t_imu"])]
    for k, t in enumerate(t_f):
        tn = int(round(t * NS))
        latency = FIX_LATENCY_S if k < n_fix else ODO_LATENCY_S
        ev.append((tn + int(latency * NS), 1, "frame", k))
        if use_imu:
            ev.append((tn + 1, 1, "alt", k))
        ev.append((tn + NS // 20, 2, "out", k))  # send instants between frames
    t_last = t_f[n_fix - 1]
    checks = [t_last] + [t_last + d for d in DRIFT_S]
    ev += [(int(round(t * NS)), 3, "check", j) for j, t in enumerate(checks)]
    return sorted(ev), checks


class Run:
    """One filter fed events in arrival order, collecting errors, NEES, NIS, CPU time."""

    def __init__(self, fl: dict, filt, cfg: Config, checks: list[float],
                 rng: np.random.Generator | None = None) -> None:
        self.fl, self.filt, self.cfg, self.checks = fl, filt, cfg, checks
        self.rng = rng  # the IMU filter's odometry fit noise
        self.ref: int | None = None  # the odometry's reference frame (IMU filter)
        self.first: tuple | None = None
        self.gated = 0  # gated fixes in a row
        self.out = {"out_err": [], "out_turn": [], "nis_fix": [], "nis_odo": [], "imu_s": [],
                    "fix_s": [], "check_err": [np.nan] * len(checks),
                    "nees": [np.nan] * len(checks), "x_last": None, "resets": 0}

    def feed(self, ev: list, odometry: bool = True) -> None:
        fl, filt, cfg, out = self.fl, self.filt, self.cfg, self.out
        t_f, imu = fl["t_f"], isinstance(self.filt, ImuFilter)
        for t_ns, _, kind, i in ev:
            if kind == "imu":
                c = time.thread_time()
                filt.on_imu(t_ns, fl["acc"][i], fl["gyro"][i], fl["R_ap"][i])
                out["imu_s"].append(time.thread_time() - c)
            elif kind == "frame":
                self._frame(i, imu, odometry)
            elif not filt.initialized:
                continue
            elif kind == "alt":
                filt.update_altitude(t_ns - 1, -fl["alt"][i], cfg.filter.alt_sigma_m**2)
            elif kind == "out" and 5.0 < t_f[i] < self.checks[0]:
                x, _ = filt.horizontal_at(t_ns)
                truth = fl["traj"].sample(np.array([t_ns * 1e-9]))
                out["out_err"].append(float(np.linalg.norm(x[:2] - truth.en_m[0, ::-1])))
                curv = fl["traj"].path.sample(np.array([SPEED_MPS * t_ns * 1e-9]))[3][0]
                out["out_turn"].append(bool(abs(curv) > 0))
            elif kind == "check":
                x, P = filt.horizontal_at(t_ns)
                truth = fl["traj"].sample(np.array([t_ns * 1e-9]))
                d = x - np.r_[truth.en_m[0, ::-1], truth.vel_ned_mps[0, :2]]
                out["check_err"][i] = float(np.linalg.norm(d[:2]))
                out["nees"][i] = float(d @ np.linalg.solve(P, d))
                if i == 0:
                    out["x_last"] = x[:2].copy()

    def _frame(self, i: int, imu: bool, odometry: bool) -> None:
        """Frame i as the Navigator takes it: a fix while fixes come, else odometry (the
        displacement from the reference frame to the IMU filter, with the fit's covariance,
        the attitude errors being in its model; the velocity runtime/nav/odometry.py makes
        of the step from frame i-1 to the CV filter); the reference renewed and marked."""
        fl, filt, t = self.fl, self.filt, (lambda j: int(round(self.fl["t_f"][j] * NS)))
        obs = None
        if imu and self.ref is not None:
            obs = displacement(fl, self.ref, i, self.rng)
        if fl["t_f"][i] <= self.checks[0]:
            self._fix(t(i), i, imu)
        elif filt.initialized and odometry:
            if imu:
                span = (t(i) - t(self.ref)) * 1e-9
                R = (obs[1] ** 2 + (self.cfg.odometry.sigma_floor_mps * span) ** 2) * np.eye(2)
                inn = filt.update_displacement(t(self.ref), t(i), obs[0], R, AGL_M)
            else:
                d = fl["D_m"][i - 1]
                inn = filt.update_velocity((t(i - 1) + t(i)) // 2, d * FPS,
                                           odometry_cov(d, self.cfg))
            self.out["nis_odo"].append(inn.nis)
        if not imu:
            return
        if obs is None or not keeps_reference(t(self.ref), t(i - 1), t(i), obs[0],
                                              FOOTPRINT_M, self.cfg.odometry):
            self.ref = i
        if filt.initialized and filt.clone_t_ns != t(self.ref):
            self.ref = i
            filt.mark(t(i))

    def _fix(self, tc: int, i: int, imu: bool) -> None:
        filt, z, R = self.filt, self.fl["fixes"][i], FIX_SIGMA_M**2 * np.eye(2)
        if not filt.initialized:
            if self.first is not None:  # two fixes: start as the Navigator does
                dt = (tc - self.first[0]) * 1e-9
                vel = (z - self.first[1]) / dt
                vcov = 2 * R / dt**2 + self.cfg.filter.accel_sigma_mps2**2 * dt * np.eye(2)
                kw = {"down_m": -self.fl["alt"][i], "down_var_m2": 1.0} if imu else {}
                filt.initialize(tc, z, R, vel, vcov, **kw)
            self.first = (tc, z)
            return
        c = time.thread_time()
        inn = filt.update_position(tc, z, R)
        if imu and inn.accepted and self.cfg.filter.fuse_heading:  # as the Navigator
            filt.update_heading(tc, self.fl["heading"][i],
                                np.radians(self.cfg.match.heading_floor_deg) ** 2)
        self.out["fix_s"].append(time.thread_time() - c)
        self.out["nis_fix"].append(inn.nis)
        self.gated = 0 if inn.accepted else self.gated + 1
        if self.gated >= self.cfg.filter.divergence_after_gated:  # as the Navigator: reset
            filt.reset()
            self.first, self.gated = None, 0
            self.out["resets"] += 1


def dead_reckoning(fl: dict, x_last: np.ndarray, fix_s: float) -> list[float]:
    """odo_dr: the CV filter's position at the last fix plus the odometry displacements."""
    t_f = fl["t_f"]
    k0 = int(np.sum(t_f < fix_s)) - 1
    errs = [float(np.linalg.norm(x_last - fl["p_ne"][k0]))]
    for d in DRIFT_S:
        k = k0 + int(round(d * FPS))
        pos = x_last + fl["D_m"][k0:k].sum(0)
        errs.append(float(np.linalg.norm(pos - fl["p_ne"][k])))
    return errs


def one_run(args: tuple[int, float, float, float, tuple[float, float], bool]) -> dict:
    """All variants on one seeded flight; imu and imu_odo share everything before the gap."""
    seed, fix_s, gap_s, imu_hz, att_deg, heading = args
    cfg = Config()
    cfg = replace(cfg, filter=replace(cfg.filter, fuse_heading=heading))
    fl = make_flight(seed, fix_s, gap_s, imu_hz, att_deg)
    ev, checks = events(fl, True, fix_s)
    split = max(j for j, e in enumerate(ev) if e[2] == "frame" and fl["t_f"][e[3]] <= checks[0])
    split += 1
    imu_odo = Run(fl, ImuFilter(cfg.filter), cfg, checks, np.random.default_rng(seed + 10**6))
    imu_odo.feed(ev[:split])
    imu_only = copy.deepcopy(imu_odo)
    imu_odo.feed(ev[split:])
    imu_only.feed(ev[split:], odometry=False)
    ev_cv, _ = events(fl, False, fix_s)
    cv = Run(fl, PositionFilter(cfg.filter), cfg, checks)
    cv.feed(ev_cv)
    res = {"imu_odo": imu_odo.out, "imu": imu_only.out, "cv": cv.out,
           "odo_dr": {"check_err": dead_reckoning(fl, cv.out["x_last"], fix_s)}}
    k = np.arange(int(np.sum(fl["t_f"] < fix_s)))
    curv = fl["traj"].path.sample(SPEED_MPS * fl["t_f"][k])[3]
    in_turn = (np.abs(curv) > 0) & (fl["t_f"][k] > 5.0)
    res["fix_err_turn"] = np.linalg.norm(fl["fixes"][k] - fl["p_ne"][k], axis=1)[in_turn].tolist()
    return res


def chi2_band(dof: int, p_lo: float = 0.025, p_hi: float = 0.975) -> tuple[float, float]:
    """Quantiles of chi-square(dof): exact for 2 dof, Wilson-Hilferty otherwise."""
    if dof == 2:
        return -2 * np.log(1 - p_lo), -2 * np.log(1 - p_hi)
    out = []
    for p in (p_lo, p_hi):
        z = NormalDist().inv_cdf(p)
        out.append(dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3)
    return out[0], out[1]


def _stats(v) -> dict:
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0}
    return {"mean": round(float(v.mean()), 3), "p50": round(float(np.percentile(v, 50)), 3),
            "p95": round(float(np.percentile(v, 95)), 3), "max": round(float(v.max()), 3),
            "n": int(len(v))}


def summarise(runs: list[dict]) -> dict:
    n = len(runs)
    rep: dict = {"drift_m": {}, "nees_4dof": {}, "turns": {}, "nis": {}, "cpu_ms": {}}
    labels = ["at_last_fix"] + [f"after_{int(d)}s" for d in DRIFT_S]
    for v in VARIANTS:
        errs = np.array([r[v]["check_err"] for r in runs])
        rep["drift_m"][v] = {lab: _stats(errs[:, j]) for j, lab in enumerate(labels)}
    lo, hi = chi2_band(4 * n)
    for v in VARIANTS[:3]:
        nees = np.array([r[v]["nees"] for r in runs])
        rep["nees_4dof"][v] = {lab: {"mean": round(float(np.mean(nees[:, j])), 3),
                                     "in_band": bool(lo / n <= np.mean(nees[:, j]) <= hi / n)}
                               for j, lab in enumerate(labels)}
    rep["nees_4dof"]["band_95"] = [round(lo / n, 3), round(hi / n, 3)]
    fix_turn = np.concatenate([r["fix_err_turn"] for r in runs])
    rep["turns"]["fix_err_m"] = _stats(fix_turn)
    for v in ("imu_odo", "cv"):
        e = np.concatenate([np.array(r[v]["out_err"])[np.array(r[v]["out_turn"], bool)]
                            for r in runs])
        rep["turns"][f"{v}_estimate_err_m"] = _stats(e)
    for kind in ("nis_fix", "nis_odo"):
        nis = np.concatenate([r["imu_odo"][kind] for r in runs])
        nis = nis[np.isfinite(nis)]
        b_lo, b_hi = chi2_band(2)
        m_lo, m_hi = chi2_band(2 * len(nis))
        rep["nis"][kind] = {"mean": round(float(nis.mean()), 3),
                            "band_95_of_mean": [round(m_lo / len(nis), 3),
                                                round(m_hi / len(nis), 3)],
                            "share_outside_95": round(float(np.mean((nis < b_lo) | (nis > b_hi))),
                                                      4),
                            "n": int(len(nis))}
    imu_s = np.concatenate([r["imu_odo"]["imu_s"] for r in runs]) * 1e3
    fix_imu = np.concatenate([r["imu_odo"]["fix_s"] for r in runs]) * 1e3
    fix_cv = np.concatenate([r["cv"]["fix_s"] for r in runs]) * 1e3
    rep["resets"] = {v: int(sum(r[v]["resets"] for r in runs)) for v in VARIANTS[:3]}
    rep["cpu_ms"] = {"imu_sample": _stats(imu_s), "imu_filter_fix_200ms_late": _stats(fix_imu),
                     "cv_filter_fix_200ms_late": _stats(fix_cv)}
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fix-s", type=float, default=30.0, help="seconds with fixes")
    ap.add_argument("--gap-s", type=float, default=62.0, help="seconds without (> 61)")
    ap.add_argument("--seed0", type=int, default=1)
    ap.add_argument("--imu-hz", type=float, default=100.0, help="IMU rate (>= 50)")
    ap.add_argument("--tilt-deg", type=float, default=0.3,
                    help="1-sigma roll/pitch error of the autopilot's attitude (tau 5 s)")
    ap.add_argument("--yaw-deg", type=float, default=1.0,
                    help="1-sigma heading error of the autopilot's attitude (tau 20 s)")
    ap.add_argument("--no-heading", action="store_true",
                    help="the IMU filter does not fuse the fixes' headings")
    a = ap.parse_args()
    if a.gap_s < max(DRIFT_S) + 1 or a.fix_s < 10 or a.runs < 2 or a.imu_hz < 50:
        ap.error("need --gap-s >= 61, --fix-s >= 10, --runs >= 2 and --imu-hz >= 50")
    load0 = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    jobs = [(a.seed0 + i, a.fix_s, a.gap_s, a.imu_hz, (a.tilt_deg, a.yaw_deg),
             not a.no_heading) for i in range(a.runs)]
    with ProcessPoolExecutor(max_workers=a.workers) as pool:
        runs = list(pool.map(one_run, jobs, chunksize=4))
    rep = summarise(runs)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    rep["setup"] = {"runs": a.runs, "seeds": [a.seed0, a.seed0 + a.runs - 1], "fix_s": a.fix_s,
                    "gap_s": a.gap_s, "speed_mps": SPEED_MPS, "agl_m": AGL_M, "fps": FPS,
                    "imu_hz": a.imu_hz, "fix_sigma_m": FIX_SIGMA_M,
                    "attitude_error_deg": {"tilt": a.tilt_deg, "yaw": a.yaw_deg},
                    "fix_latency_s": FIX_LATENCY_S, "odo_latency_s": ODO_LATENCY_S,
                    "heading": {"fused": not a.no_heading, "bias_deg": HEADING_BIAS_DEG,
                                "white_deg": HEADING_WHITE_DEG,
                                "claimed_deg": Config().match.heading_floor_deg},
                    "filter": {k: v for k, v in vars(replace(Config().filter)).items()}}
    rep["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "loadavg_start": load0, "loadavg_end": [round(x, 2)
                                                              for x in os.getloadavg()],
                      "wall_s": round(time.perf_counter() - start, 1), "commit": commit,
                      "workers": a.workers}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(rep, indent=2) + "\n")
    print(json.dumps({k: rep[k] for k in ("drift_m", "turns", "nees_4dof", "nis", "resets",
                                          "cpu_ms")},
                     indent=1))


if __name__ == "__main__":
    main()
