"""Soak: the daemon in the closed loop for a long time at 10 fps; does it leak, slow down
or stall?

    python benchmarks/soak.py --out out/bench/soak.json [--minutes 30] [--fps 10]

The closed loop of sim/closed_loop.py (daemon + MAVLink autopilot emulator over UDP +
camera frames rendered from the bundled Vienna orthophoto at the true pose), GNSS cut
after 5 s, the camera never blanked. Once a second: the process's resident memory
(VmRSS) and the frame processing times the daemon recorded since the last look.
Reported (and checked against issue 8's limits):

    rss_growth: median RSS over the last `window` minus over the first `window` after
        the warm-up, relative (limit 5 %); the warm-up (the first tenth of the run, at
        most 60 s) fills caches and is left out
    latency creep: frame processing time p50 / p95 over the first and the last `window`
        (5 minutes, or a third of shorter runs); creep = last p50 / first p50 (limit 1.2)
    output gaps: the largest interval between GPS_INPUT arrivals at the autopilot after
        GNSS loss and how many exceed 215 ms (ArduPilot's health limit; limit 0)

The JSON is rewritten every minute while the run goes on ("finished": false), so a run
cut short still leaves its figures. RSS includes the emulator's record of every message
it received (about 16 a second, RECORD_BYTES each as measured with tracemalloc), so
`rss_growth_less_records` takes their estimated growth between the two windows out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from skyfix.maps.build import build_pack
from skyfix.runtime.core.config import Config
from skyfix.runtime.flight.daemon import Daemon
from skyfix.sim.closed_loop import ClosedLoopSpec, run_closed_loop
from skyfix.sim.sample import sample_ortho

MAX_RSS_GROWTH = 0.05
MAX_LATENCY_CREEP = 1.2
MAX_GAP_MS = 215.0
RECORD_BYTES = 258  # one emulator ReceivedMessage (~76 B of MAVLink) + its list slot


def growth_less_records(figs: dict, records: int) -> float:
    """RSS growth between the windows of `figs` less the emulator's `records` (received
    at an even rate over the run) added in between."""
    rate = records / figs["run_s"]
    between_s = figs["run_s"] - figs["warmup_s"] - figs["window_s"]
    r0, r1 = figs["rss_first_mb"] * 2**20, figs["rss_last_mb"] * 2**20
    return round((r1 - rate * between_s * RECORD_BYTES - r0) / r0, 4)


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


class Sampler:
    """The closed loop's observer: RSS and new frame latencies, once a second."""

    def __init__(self, out: Path, minutes: float, fps: float) -> None:
        self.out, self.minutes, self.fps = out, minutes, fps
        self.t0 = time.monotonic()
        self.rss: list[tuple[float, int]] = []  # (s since start, bytes)
        self.latency: list[tuple[float, float]] = []  # (s since start, ms)
        self._seen = 0
        self._written = 0.0
        self._lock = threading.Lock()

    def __call__(self, daemon: Daemon) -> None:
        t = time.monotonic() - self.t0
        with self._lock:
            self.rss.append((t, rss_bytes()))
            processed = daemon.stats.frames - daemon.stats.bad_frames - daemon.stats.frame_errors
            recent = daemon.frame_latencies_ms()
            new = min(processed - self._seen, len(recent))
            self.latency.extend((t, v) for v in recent[len(recent) - new:] if new > 0)
            self._seen = processed
        if t - self._written >= 60.0:
            self._written = t
            self.write(None, finished=False)

    def figures(self) -> dict:
        rss = np.array(self.rss, np.float64).reshape(-1, 2)
        lat = np.array(self.latency, np.float64).reshape(-1, 2)
        run_s = float(rss[-1, 0]) if len(rss) else 0.0
        warm_s = min(60.0, run_s / 10)
        window_s = min(300.0, (run_s - warm_s) / 3)
        first = (rss[:, 0] >= warm_s) & (rss[:, 0] < warm_s + window_s)
        last = rss[:, 0] >= run_s - window_s
        figs: dict = {"run_s": round(run_s, 1), "warmup_s": round(warm_s, 1),
                      "window_s": round(window_s, 1)}
        if first.any() and last.any():
            r0, r1 = float(np.median(rss[first, 1])), float(np.median(rss[last, 1]))
            figs.update(rss_first_mb=round(r0 / 2**20, 1), rss_last_mb=round(r1 / 2**20, 1),
                        rss_max_mb=round(float(rss[:, 1].max()) / 2**20, 1),
                        rss_growth=round(r1 / r0 - 1, 4))
        lf = lat[(lat[:, 0] >= warm_s) & (lat[:, 0] < warm_s + window_s), 1]
        ll = lat[lat[:, 0] >= run_s - window_s, 1]
        if len(lf) and len(ll):
            figs.update(frames_first=len(lf), frames_last=len(ll),
                        frame_ms_first_p50=round(float(np.median(lf)), 1),
                        frame_ms_first_p95=round(float(np.percentile(lf, 95)), 1),
                        frame_ms_last_p50=round(float(np.median(ll)), 1),
                        frame_ms_last_p95=round(float(np.percentile(ll, 95)), 1),
                        latency_creep=round(float(np.median(ll) / np.median(lf)), 3))
        return figs

    def write(self, loop: dict | None, finished: bool) -> dict:
        with self._lock:
            figs = self.figures()
        result = {"benchmark": "soak", "finished": finished, "minutes": self.minutes,
                  "fps": self.fps, "machine": {"platform": platform.platform(),
                                               "python": platform.python_version()},
                  **figs}
        if loop is not None:
            d = loop["daemon"]
            result.update(
                gps_input_total=loop["gps_input_total"],
                gps_input_max_interval_ms=loop["gps_input_max_interval_ms_after_gnss_loss"],
                gps_input_intervals_over_215ms=loop["gps_input_intervals_over_215ms"],
                daemon_max_send_gap_ms=round(d["max_send_gap_ms"], 1),
                frames=d["frames"], frames_dropped=d["dropped_frames"], fixes=d["fixes"],
                frame_errors=d["frame_errors"], bad_frames=d["bad_frames"],
                frames_rendered=loop["frames_rendered"],
                error_max_claimed_m=loop["error_max_any_claimed_fix_after_gnss_loss_m"],
                confident_wrong_fixes=loop["confident_wrong_fixes"],
                emulator_records=loop["emulator_records"])
            if "rss_growth" in result:
                result["rss_growth_less_records"] = growth_less_records(
                    result, loop["emulator_records"])
            result["passed"] = {
                "rss_growth": result.get("rss_growth", 1.0) < MAX_RSS_GROWTH,
                "latency_creep": result.get("latency_creep", 9.0) < MAX_LATENCY_CREEP,
                "output_gaps": result["gps_input_intervals_over_215ms"] == 0,
            }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(result, indent=2) + "\n")
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="JSON result file")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--fps", type=float, default=10.0, help="camera frames per second")
    a = ap.parse_args()
    duration_s = a.minutes * 60.0
    spec = ClosedLoopSpec(duration_s=duration_s, gnss_off_at_s=5.0, blank_at_s=duration_s,
                          fps=a.fps)
    with tempfile.TemporaryDirectory(prefix="skyfix-soak-") as tmp:
        ortho = sample_ortho()
        pack = build_pack([ortho], Path(tmp) / "pack", progress=True)
        sampler = Sampler(a.out, a.minutes, a.fps)
        loop = run_closed_loop(ortho, Path(tmp) / "loop", spec, Config(), pack,
                               progress=False, observer=sampler)
    result = sampler.write(loop, finished=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    from skyfix.runtime.apps.boundary import run_guarded

    sys.exit(run_guarded(main, sys.argv, prog="soak"))
