"""Survey-built map (teach and repeat) on the real ZR10 survey: leave lines out.

    python benchmarks/bench_survey.py --out out/bench/survey.json [--map-lines even]
        [--data ../shared/data/zr10_px4_survey_2026-01-13] [--gsd 0.25]

The survey's photos are split into flight lines by the GNSS track's heading
(skyfix.maps.survey_lines); the map pack is built from --map-lines (SfM with the GNSS as
position priors, a plane through the sparse points as ground, feathered mosaic); the
photos of the other lines are replayed against it with the GNSS withheld (the flight
chain of `skyfix replay`, the survey's camera intrinsics, mount and clock offset: each photo
registered against the survey's 3-D points first, runtime/nav/register3d.py), and their
fixes are scored against the GPS track (itself a few metres off). The camera clock's offset
from the GNSS comes from SfM of all lines first (--clock all; see survey_eval), or from the
map lines alone (--clock map: all flown one way, so it cannot be measured there).
Targets (issue 17): availability >= 80 %, fix CEP50 <= 3 m, no fix more than 30 m off.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from skyfix.runtime.apps.survey_eval import leave_lines_out, summary

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / \
    "zr10_px4_survey_2026-01-13"
TARGETS = {"availability_min": 0.80, "fix_cep50_max_m": 3.0, "gross_errors_max": 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--data", type=Path, default=DATA, help="the ZR10 survey folder")
    ap.add_argument("--map-lines", default="even", help="lines the map is built from")
    ap.add_argument("--gsd", type=float, help="mosaic resolution, m/px (default: the CLI's)")
    ap.add_argument("--work", type=Path, help="work folder (default: beside --out)")
    ap.add_argument("--clock", choices=("all", "map"), default="all",
                    help="camera clock offset from SfM of all lines (default) or of the map "
                         "lines alone")
    a = ap.parse_args(argv)
    if not (a.data / "images").is_dir():
        print(f"bench_survey: {a.data} not found (the shared ZR10 survey)", file=sys.stderr)
        return 2
    work = a.work or a.out.parent / "survey_work"
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    r = leave_lines_out(a.data / "images", a.data / "gps_utc_from_ulog.csv", work,
                        a.map_lines, gsd_m=a.gsd, clock=a.clock)
    wall = time.perf_counter() - t0
    s = summary(r)
    met = {"availability": s["availability"] >= TARGETS["availability_min"],
           "fix_cep50": s["fix_cep50_m"] is not None
           and s["fix_cep50_m"] <= TARGETS["fix_cep50_max_m"],
           "gross_errors": s["gross_errors_over_30m"] <= TARGETS["gross_errors_max"]}
    result = {"benchmark": "survey leave-lines-out (ZR10)", "data": str(a.data),
              **s, "targets": TARGETS, "targets_met": met, "wall_total_s": round(wall, 1),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "loadavg_before": [round(v, 2) for v in load_before],
                          "loadavg_after": [round(v, 2) for v in os.getloadavg()]}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
