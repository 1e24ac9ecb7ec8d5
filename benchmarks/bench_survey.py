"""Survey-built map (teach and repeat) on the real ZR10 survey: leave lines out, both ways.

    python benchmarks/bench_survey.py --out out/bench/survey.json [--map-lines even
        --map-lines odd] [--data ../shared/data/zr10_px4_survey_2026-01-13] [--gsd 0.25]

The survey's photos are split into flight lines by the GNSS track's heading
(skyfix.maps.survey_lines). Each fold builds the map pack from --map-lines (SfM with the
GNSS as position priors, a plane through the sparse points as ground, feathered mosaic) and
replays the photos of the other lines against it with the GNSS withheld (the flight chain of
`skyfix replay`, the survey's camera intrinsics, mount and clock offset: each photo
registered against the survey's 3-D points first, runtime/nav/register3d.py); their fixes
are scored against the GPS track (itself a few metres off). By default two folds, the map
from the even lines and from the odd ones, so that every line is replayed once; the
figures are given per fold and pooled over both (fixes over photos; CEP over every fix).
The camera clock's offset from the GNSS comes from SfM of all lines first, once for every
fold (--clock all; see survey_eval), or from the map lines alone (--clock map: all flown
one way, so it cannot be measured there).
Targets (issue 17): availability >= 80 %, fix CEP50 <= 3 m, no fix more than 30 m off.
Beside the availability over all replayed photos: how many photos have at least half their
footprint on the map's mosaic (GNSS position, telemetry attitude) and the availability among
them (`test_frames_on_map`, `availability_on_map`); the targets are on all photos.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from skyfix.runtime.apps.report import trajectory_columns
from skyfix.runtime.apps.survey_eval import (
    ON_MAP_SHARE,
    calibrate_clock,
    leave_lines_out,
    summary,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / \
    "zr10_px4_survey_2026-01-13"
TARGETS = {"availability_min": 0.80, "fix_cep50_max_m": 3.0, "gross_errors_max": 0}


def _met(availability: float, cep50: float | None, gross: int) -> dict[str, bool]:
    return {"availability": availability >= TARGETS["availability_min"],
            "fix_cep50": cep50 is not None and cep50 <= TARGETS["fix_cep50_max_m"],
            "gross_errors": gross <= TARGETS["gross_errors_max"]}


def _pooled(folds: list, replays: list[Path]) -> dict:
    """The folds' figures over all their replayed photos and fixes."""
    e = np.concatenate([trajectory_columns(t, "fix_err_m")[:, 0] for t in replays])
    photos = sum(r.test_frames for r in folds)
    fixes = sum(r.report.fixes for r in folds)
    on = np.concatenate([np.asarray(r.on_map) >= ON_MAP_SHARE for r in folds])
    fixed = np.concatenate([np.asarray(r.fixed) for r in folds])

    def pct(q: float) -> float | None:
        return round(float(np.percentile(e, q)), 3) if len(e) else None

    return {"test_frames": photos, "fixes": fixes, "availability": round(fixes / photos, 4),
            "fix_cep50_m": pct(50), "fix_cep95_m": pct(95),
            "max_err_m": round(float(e.max()), 3) if len(e) else None,
            "gross_errors_over_30m": sum(r.report.gross_errors for r in folds),
            "test_frames_on_map": int(on.sum()),
            "availability_on_map": round(float(fixed[on].mean()), 4) if on.any() else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--data", type=Path, default=DATA, help="the ZR10 survey folder")
    ap.add_argument("--map-lines", action="append",
                    help="lines one fold's map is built from (repeat for more folds; "
                         "default: even, then odd)")
    ap.add_argument("--gsd", type=float, help="mosaic resolution, m/px (default: the CLI's)")
    ap.add_argument("--work", type=Path, help="work folder (default: beside --out)")
    ap.add_argument("--clock", choices=("all", "map"), default="all",
                    help="camera clock offset from SfM of all lines (default) or of the map "
                         "lines alone")
    a = ap.parse_args(argv)
    if not (a.data / "images").is_dir():
        print(f"bench_survey: {a.data} not found (the shared ZR10 survey)", file=sys.stderr)
        return 2
    images, telemetry = a.data / "images", a.data / "gps_utc_from_ulog.csv"
    work = a.work or a.out.parent / "survey_work"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    clock = (calibrate_clock(images, telemetry, work / "clock_sfm") if a.clock == "all"
             else "map")
    folds, replays = [], []
    for lines in a.map_lines or ["even", "odd"]:
        folds.append(leave_lines_out(images, telemetry, work / lines.replace(",", "_"), lines,
                                     gsd_m=a.gsd, clock=clock))
        replays.append(work / lines.replace(",", "_") / "replay" / "trajectory.csv")
    wall = time.perf_counter() - t0
    per_fold = []
    for r in folds:
        s = summary(r)
        per_fold.append({**s, "targets_met": _met(s["availability"], s["fix_cep50_m"],
                                                  s["gross_errors_over_30m"])})
    pooled = _pooled(folds, replays)
    result = {"benchmark": "survey leave-lines-out (ZR10)", "data": str(a.data),
              "pooled": pooled, "targets": TARGETS,
              "targets_met": _met(pooled["availability"], pooled["fix_cep50_m"],
                                  pooled["gross_errors_over_30m"]),
              "folds": per_fold, "wall_total_s": round(wall, 1),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "loadavg_before": [round(v, 2) for v in load_before],
                          "loadavg_after": [round(v, 2) for v in os.getloadavg()]}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
