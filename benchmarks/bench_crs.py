"""A map in Web Mercator against the same map in its own CRS: fix accuracy in ground metres.

    python benchmarks/bench_crs.py --out out/bench/crs.json [--seeds 3-10]
        [--encoders rootsift,xfeat] [--work DIR]

The bundled Vienna orthophoto (EPSG:31256, 0.30 m) and a Web-Mercator copy of it at the same
ground resolution (skyfix.sim.webmercator: what a tile download gives) are each built into a
pack per encoder (`maps build` reprojects the copy to UTM). Sim flights at 120 m, 60 s, one
per seed, rendered from the original, are replayed over both packs with the GNSS off from
the first frame. Reported per encoder: fix CEP50/CEP95 of all flights' fixes pooled (one
flight's 120 fixes put its CEP95 on a few of them) and per flight, the mean east/north error
(a CRS mistake shows as an offset or a scale), availability, gross errors.
Target (issue 17): pooled fix CEP95 on the Web-Mercator pack within 10 % of the native one.
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

from skyfix.maps.build import build_pack
from skyfix.models.registry import ENCODER_NAMES, make_encoder
from skyfix.runtime.apps.replay import replay
from skyfix.runtime.apps.report import trajectory_columns
from skyfix.runtime.core.config import Config
from skyfix.sim.flight import FlightSpec, simulate_flight
from skyfix.sim.sample import sample_ortho
from skyfix.sim.webmercator import web_mercator_copy

CEP95_RATIO_MAX = 1.10
MAPS = ("native", "web_mercator")


def _seeds(spec: str) -> list[int]:
    if "-" in spec:
        a, b = spec.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in spec.split(",")]


def _fix_errors(trajectory: Path) -> np.ndarray:
    """[K, 2] east/north error of every fix in a replay's trajectory.csv."""
    c = trajectory_columns(trajectory, "fix_e", "fix_n", "truth_e", "truth_n")
    return c[:, :2] - c[:, 2:]


def _stats(err: np.ndarray) -> dict:
    d = np.hypot(err[:, 0], err[:, 1])
    if not len(d):
        return {"fixes": 0}
    return {"fixes": len(d), "cep50_m": round(float(np.percentile(d, 50)), 4),
            "cep95_m": round(float(np.percentile(d, 95)), 4),
            "max_m": round(float(d.max()), 4),
            "mean_east_m": round(float(err[:, 0].mean()), 4),
            "mean_north_m": round(float(err[:, 1].mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--seeds", default="3-10", help="flight seeds: A-B or A,B,C")
    ap.add_argument("--encoders", default="rootsift,xfeat",
                    help=f"comma-separated, of {', '.join(ENCODER_NAMES)}")
    ap.add_argument("--work", type=Path, help="work folder (default: beside --out)")
    a = ap.parse_args(argv)
    encoders = a.encoders.split(",")
    if unknown := [e for e in encoders if e not in ENCODER_NAMES]:
        print(f"bench_crs: unknown encoder {unknown[0]!r}", file=sys.stderr)
        return 2
    work = a.work or a.out.parent / "crs_work"
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    ortho = sample_ortho()
    sources = {"native": ortho, "web_mercator": web_mercator_copy(ortho, work / "merc.tif")}
    seeds = _seeds(a.seeds)
    for seed in seeds:
        print(f"flight seed {seed}", flush=True)
        simulate_flight(ortho, work / f"flight_{seed}",
                        FlightSpec(agl_m=120.0, duration_s=60.0, fps=2.0, seed=seed),
                        progress=False)
    result: dict = {"benchmark": "Web-Mercator map vs native CRS", "map": str(ortho),
                    "flights": {"seeds": seeds, "agl_m": 120.0, "duration_s": 60.0,
                                "fps": 2.0}, "encoders": {}}
    for enc in encoders:
        per: dict = {m: {"flights": {}} for m in MAPS}
        for m in MAPS:
            pack = work / f"pack_{enc}_{m}"
            build_pack([sources[m]], pack, make_encoder(enc), force=True, progress=False)
            errs, avail, gross = [], [], 0
            for seed in seeds:
                out = work / f"replay_{enc}_{m}_{seed}"
                rep = replay(work / f"flight_{seed}", pack, out, Config(), 0.0,
                             progress=False).report
                e = _fix_errors(out / "trajectory.csv")
                errs.append(e)
                avail.append(rep.availability)
                gross += rep.gross_errors
                per[m]["flights"][seed] = {"availability": rep.availability, **_stats(e)}
                print(f"{enc} {m} seed {seed}: CEP95 {rep.fix_cep95_m} m", flush=True)
            per[m].update(pooled=_stats(np.concatenate(errs)),
                          availability_mean=round(float(np.mean(avail)), 4),
                          gross_errors=gross)
        ratio = per["web_mercator"]["pooled"]["cep95_m"] / per["native"]["pooled"]["cep95_m"]
        result["encoders"][enc] = {**per, "cep95_ratio": round(ratio, 3),
                                   "target_met": ratio <= CEP95_RATIO_MAX
                                   and per["web_mercator"]["gross_errors"] == 0}
    result.update(target={"cep95_ratio_max": CEP95_RATIO_MAX},
                  wall_s=round(time.perf_counter() - t0, 1),
                  machine={"platform": platform.platform(), "cpus": os.cpu_count(),
                           "load_before": [round(x, 2) for x in load_before],
                           "load_after": [round(x, 2) for x in os.getloadavg()]})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    for enc, r in result["encoders"].items():
        print(f"{enc}: pooled fix CEP95 native {r['native']['pooled']['cep95_m']} m, "
              f"Web Mercator {r['web_mercator']['pooled']['cep95_m']} m "
              f"(x{r['cep95_ratio']}; target <= x{CEP95_RATIO_MAX})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
