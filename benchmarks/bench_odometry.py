"""Drift of the filter on visual odometry alone: how far the estimate wanders over a
stretch with no map fixes.

    python benchmarks/bench_odometry.py --out out/bench/odometry.json [--flights 3]
        [--duration 30] [--fps 2] [--agl 120]

For each sim flight over the bundled Vienna orthophoto (seeds 1..N, 640x480 camera,
the simulator's default sensor errors): the filter starts at the true position and
velocity of the first frame (1-sigma 0.1 m, 0.1 m/s), then receives only the
velocities of runtime/nav/odometry.py from consecutive rectified frames (RootSIFT at
0.3 m/px) for `--duration` seconds. Reported per flight and over all: horizontal
error at the end and its maximum (metres), the filter's own 1-sigma at the end, the
share of frame pairs that gave a velocity, and velocity error RMS (m/s).

Beside it, the displacements themselves chained from the true first position, as the IMU
filter takes them (each frame's position = its reference view's + the displacement): with
the frame before as the reference (`chain_frames`) and with keyframes
(`chain_keyframes`, odometry.keyframe_fraction): error at the end and its maximum, and
how many views served as references.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from skyfix.models.features import RootSiftEncoder
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.geo import grid_convergence_deg
from skyfix.runtime.io.sources import RecordedFlight
from skyfix.runtime.io.telemetry import TelemetryLog
from skyfix.runtime.nav.filter import PositionFilter
from skyfix.runtime.nav.odometry import VelocityObservation, VisualOdometry
from skyfix.runtime.nav.rectify import rectify
from skyfix.sim.flight import FlightSpec, simulate_flight
from skyfix.sim.sample import sample_ortho

GSD_M = 0.3


def drift_one(flight: RecordedFlight, cfg: Config) -> dict:
    log = TelemetryLog.from_tlog(flight.telemetry_path)
    enc, vo, pf = RootSiftEncoder(), VisualOdometry(cfg.odometry), PositionFilter(cfg.filter)
    key_vo = VisualOdometry(cfg.odometry)  # the same views, against keyframes
    chains = {"chain_frames": _Chain(), "chain_keyframes": _Chain()}
    t0 = int(flight.frame_times_ns[0])
    truth = flight.truth
    grid = grid_convergence_deg(truth.crs, *truth.en[0])  # views north-up in the map grid
    p0, p1 = truth.at(np.array([t0, t0 + 100_000_000]))
    pf.initialize(t0, p0[::-1], 0.01 * np.eye(2), (p1 - p0)[::-1] / 0.1, 0.01 * np.eye(2))
    errors, vel_err, pairs, used = [], [], 0, 0
    for frame in tqdm(flight.frames(), total=len(flight.frame_files), desc="odometry",
                      unit="frame", leave=False):
        tel = log.at(frame.t_ns)
        view = None if tel is None else rectify(frame, tel, flight.camera, GSD_M, cfg.rectify,
                                                grid)
        if view is None:
            vo.reset()
            key_vo.reset()
            continue
        feats = enc.extract(view.image, view.mask)
        true_ne = truth.at(np.array([frame.t_ns]))[0][::-1]
        obs = vo.update(view, feats)
        chains["chain_frames"].add(view.t_ns, obs, true_ne)
        chains["chain_keyframes"].add(view.t_ns, key_vo.update(view, feats, keyframes=True),
                                      true_ne)
        pairs += frame.index > 0
        if obs is not None:
            used += 1
            half = obs.dt_s * 0.5e9
            a, b = truth.at(np.array([obs.t_ns - half, obs.t_ns + half]))
            vel_err.append((obs.v_en_mps - (b - a) / obs.dt_s)[::-1])  # (north, east)
            # the filter here runs in the map grid's (north, east): the grid is the frame
            pf.update_velocity(obs.t_ns, obs.v_en_mps[::-1], obs.cov_en_m2s2[::-1, ::-1])
        x, P = pf.state_at(frame.t_ns)
        errors.append((float(np.hypot(*(x[:2] - true_ne))),
                       float(np.sqrt(np.linalg.eigvalsh(P[:2, :2]).max()))))
    err = np.array(errors)
    ve = np.array(vel_err).reshape(-1, 2)
    return {
        "seconds": round((int(flight.frame_times_ns[-1]) - t0) * 1e-9, 2),
        "end_error_m": round(float(err[-1, 0]), 2),
        "max_error_m": round(float(err[:, 0].max()), 2),
        "end_sigma_m": round(float(err[-1, 1]), 2),
        "pairs_with_velocity": f"{used}/{pairs}",
        "velocity_rms_mps": round(float(np.sqrt((ve**2).sum(1).mean())), 3) if len(ve) else None,
        **{name: chain.summary() for name, chain in chains.items()},
    }


class _Chain:
    """Displacements chained from the first view's true position: each view's position is
    its reference view's plus the measured displacement (a view without one restarts the
    chain from the truth, counted)."""

    def __init__(self) -> None:
        self.pos: dict[int, np.ndarray] = {}  # (north, east) of the views, by time
        self.errors: list[float] = []
        self.refs: set[int] = set()
        self.restarts = -1  # the first view starts it

    def add(self, t_ns: int, obs: VelocityObservation | None, true_ne: np.ndarray) -> None:
        """The view at `t_ns` with its odometry `obs` (None: none), truth `true_ne`."""
        if obs is None or obs.t0_ns not in self.pos:
            self.pos = {t_ns: true_ne}
            self.restarts += 1
        else:
            self.pos[t_ns] = self.pos[obs.t0_ns] + obs.d_en_m[::-1]
            self.refs.add(obs.t0_ns)
        self.errors.append(float(np.hypot(*(self.pos[t_ns] - true_ne))))

    def summary(self) -> dict:
        return {"end_error_m": round(self.errors[-1], 2),
                "max_error_m": round(max(self.errors), 2),
                "reference_views": len(self.refs), "restarts": self.restarts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/bench/odometry.json"))
    ap.add_argument("--flights", type=int, default=3)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds without fixes")
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--agl", type=float, default=120.0)
    a = ap.parse_args()
    cfg = Config()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_odometry.") as tmp:
        for seed in range(1, a.flights + 1):
            out = Path(tmp) / f"flight{seed}"
            spec = FlightSpec(agl_m=a.agl, duration_s=a.duration, fps=a.fps, seed=seed)
            simulate_flight(sample_ortho(), out, spec, progress=False)
            runs.append({"seed": seed, **drift_one(RecordedFlight.open(out), cfg)})
            print(json.dumps(runs[-1]))
    ends = np.array([r["end_error_m"] for r in runs])
    chain_ends = {name: round(float(np.mean([r[name]["end_error_m"] for r in runs])), 2)
                  for name in ("chain_frames", "chain_keyframes")}
    result = {
        "benchmark": "odometry drift without fixes",
        "settings": {"duration_s": a.duration, "fps": a.fps, "agl_m": a.agl, "gsd_m": GSD_M,
                     "camera": "640x480, 70 deg hfov", "map": "bundled Vienna 0.3 m ortho"},
        "end_error_m_mean": round(float(ends.mean()), 2),
        "end_error_m_max": round(float(ends.max()), 2),
        "chain_end_error_m_mean": chain_ends,
        "flights": runs,
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"mean drift after {a.duration:g} s: {result['end_error_m_mean']} m "
          f"(max {result['end_error_m_max']} m); displacements chained: {chain_ends} "
          f"-> {a.out}")


if __name__ == "__main__":
    from skyfix.runtime.apps.boundary import run_guarded

    sys.exit(run_guarded(main, sys.argv, prog="bench_odometry"))
