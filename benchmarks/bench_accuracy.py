"""Localisation accuracy on simulated flights over real imagery -> JSON.

    python benchmarks/bench_accuracy.py --out out/bench/accuracy.json [--data ../shared/data]
                                        [--only vienna-120m,...] [--encoder rootsift|xfeat]

Scenarios (each: sim flight -> map pack (cached per map) -> replay with GNSS off from
the first frame, so every fix comes from a search of the pack):

    vienna-{60,120,250}m     Vienna 0.30 m orthophoto (the shared 500 x 500 m one, or
                             the bundled crop), frames rendered from the same image with
                             photometric change, noise and Gauss-Markov attitude error
    naip-2020-on-2009-1500m  NAIP 5 m: map from the 2009 image, frames from 2020,
    naip-2014-on-2009-1500m  and from 2014 (real cross-date change), 1500 m AGL
    naip-YYYY-on-2009-{1000,1200}m  frames from the other NAIP years of the series in
                             multidate_pairs/naip_series_opengeos (2010 ... 2019), when present
    naip-2009-on-2009-1500m  control: frames from the map's own image

Each scenario records the replay's report.json keys (see README) plus wall time.

Global retrieval, GTA-UAV style: every frame of a scenario's flight, rectified as the
runtime does it, is a query against all tiles of its pack (both scales); a tile is a
positive when its footprint's IoU with the frame's true ground footprint exceeds
0.39. Reported with Game4Loc's metrics (R@1, R@5, AP, SDM@3, Dis@1; models/metrics.py).

The load average is recorded: on a shared machine it skews the latency figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from skyfix.maps.build import DEFAULT_ENCODER_NAME, build_pack
from skyfix.models.metrics import retrieval_metrics
from skyfix.models.registry import make_encoder
from skyfix.runtime.apps.replay import replay
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.geo import R_BODY_CAM_NADIR, R_ned_body
from skyfix.runtime.core.types import Frame
from skyfix.runtime.flight.assembly import open_map
from skyfix.runtime.io.sources import RecordedFlight
from skyfix.runtime.io.telemetry import TelemetryLog
from skyfix.runtime.nav.rectify import ground_footprint, rectify
from skyfix.sim.flight import FlightSpec, simulate_flight
from skyfix.sim.sample import sample_ortho

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VIENNA = "vienna_ortho_2023_30cm/44_2_op_2023_30cm.tif"
NAIP = "naip_nd_timeseries_5m/m_4709963_se_14_1_{year}.tif"
NAIP_DATES = {"2009": "20090818", "2014": "20140720", "2020": "20200831"}
NAIP_SERIES = "multidate_pairs/naip_series_opengeos/series/m_4709963_se_14_1_{date}.tif"
NAIP_SERIES_DATES = {"2010": "20100629", "2012": "20120731", "2015": "20150926",
                     "2016": "20160816", "2017": "20170827", "2018": "20180716",
                     "2019": "20190904"}
# Realistic sensor errors: the autopilot's roll/pitch 0.5 deg, heading 2 deg (1-sigma).
POSITIVE_IOU = 0.39  # GTA-UAV's positive threshold
SENSORS = FlightSpec(attitude_noise_deg=0.5, yaw_noise_deg=2.0, photometric=True,
                     noise_sigma=3.0, blur_px=0.5)


@dataclass(frozen=True)
class Scenario:
    name: str
    map_key: str  # which map pack (built once per key)
    spec: FlightSpec
    render_from: str | None = None  # frames from another image than the map


def scenarios(data: Path) -> tuple[list[Scenario], dict[str, Path], list[str]]:
    """The scenarios runnable with `data`, their map images, and notes on what is skipped."""
    vienna = data / VIENNA
    maps = {"vienna": vienna if vienna.is_file() else sample_ortho()}
    notes = [] if vienna.is_file() else [f"{vienna} absent: Vienna scenarios use the bundled crop"]
    out = [Scenario(f"vienna-{agl}m", "vienna",
                    replace(SENSORS, agl_m=float(agl), duration_s=60.0, speed_mps=8.0, seed=agl))
           for agl in (60, 120, 250)]
    naip = {y: data / NAIP.format(year=d) for y, d in NAIP_DATES.items()}
    if all(p.is_file() for p in naip.values()):
        maps["naip-2009"] = naip["2009"]
        fixed_wing = replace(SENSORS, agl_m=1500.0, duration_s=90.0, speed_mps=25.0, fps=1.0)
        for year in ("2020", "2014", "2009"):  # 2009 on 2009: same-date control
            out.append(Scenario(f"naip-{year}-on-2009-1500m", "naip-2009",
                                replace(fixed_wing, seed=int(year)),
                                None if year == "2009" else str(naip[year])))
        series = {y: data / NAIP_SERIES.format(date=d) for y, d in NAIP_SERIES_DATES.items()}
        for i, (year, path) in enumerate(sorted(series.items())):
            agl = (1000, 1200)[i % 2]
            if path.is_file():
                out.append(Scenario(f"naip-{year}-on-2009-{agl}m", "naip-2009",
                                    replace(fixed_wing, agl_m=float(agl), seed=int(year)),
                                    str(path)))
            else:
                notes.append(f"{path} absent: naip-{year} skipped")
    else:
        notes.append(f"NAIP images absent under {data}: cross-date scenarios skipped")
    return out, maps, notes


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two convex polygons [N, 2] (metres)."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    inter, _ = cv2.intersectConvexConvex(a32, b32)
    union = cv2.contourArea(a32) + cv2.contourArea(b32) - inter
    return float(inter / union) if union > 0 else 0.0


def retrieval(flight_dir: Path, pack_path: Path) -> dict:
    """Game4Loc metrics of global retrieval for every frame of a flight against a pack."""
    flight = RecordedFlight.open(flight_dir)
    telemetry = TelemetryLog.from_tlog(flight.telemetry_path)
    cfg = Config()
    pack, encoder, _ = open_map(pack_path, cfg)  # as the flight opens it
    truth = np.genfromtxt(flight_dir / "truth.csv", delimiter=",", names=True)
    b = pack.tile_bounds_en
    tiles = [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) for x0, y0, x1, y1 in b]
    queries, positives, locs = [], [], []
    for i, frame in enumerate(flight.frames()):
        tel = telemetry.at(frame.t_ns) if isinstance(frame, Frame) else None
        if tel is None:
            continue
        level = pack.level_for_gsd(tel.agl_m / flight.camera.fx)
        view = rectify(frame, tel, flight.camera, pack.levels[level], cfg.rectify,
                       pack.convergence_deg)
        if view is None:
            continue
        t = truth[i]
        R_true = R_ned_body(*np.radians([t["roll_deg"], t["pitch_deg"], t["yaw_deg"]]))
        centre = np.array([t["east_m"], t["north_m"]])
        foot = ground_footprint(flight.camera, R_true @ R_BODY_CAM_NADIR, t["agl_m"]) + centre
        queries.append(pack.global_descriptor(encoder.extract(view.image, view.mask).descriptors))
        positives.append([k for k, tile in enumerate(tiles) if _iou(foot, tile) > POSITIVE_IOU])
        locs.append(centre)
    # As in GTA-UAV, every query has a positive: frames whose footprint is too small for
    # any tile to reach the IoU threshold (low flights, large tiles) are left out.
    has = [i for i, p in enumerate(positives) if p]
    if not has:
        return {"queries": len(positives), "queries_with_positives": 0,
                "summary": f"no tile reaches IoU {POSITIVE_IOU} with any frame's footprint"}
    scores = np.asarray(queries, np.float32)[has] @ np.asarray(pack.descriptors, np.float32).T
    m = retrieval_metrics(scores, [positives[i] for i in has], np.asarray(locs)[has],
                          pack.tile_center_en, recall_ks=(1, 5), sdm_ks=(3,), dis_ks=(1,))
    return {"queries": len(positives), "gallery": m.gallery, "queries_with_positives": len(has),
            "R@1": m.recall_at(1), "R@5": m.recall_at(5), "AP": m.ap,
            "SDM@3": m.sdm_at(3), "Dis@1_m": m.dis_at_m(1), "summary": m.summary()}


def naip_summary(results: dict) -> dict | None:
    """NAIP flights whose frames come from another year than the map, together: frames,
    fixes, availability (fixes / frames), accepted fixes more than 30 m off and integrity
    violations (share of fixes)."""
    cross = {k: v for k, v in results.items()
             if k.startswith("naip-") and not k.startswith("naip-2009-")}
    if not cross:
        return None
    frames = sum(v["frames"] for v in cross.values())
    fixes = sum(v["fixes"] for v in cross.values())
    violations = sum(v["integrity_violations"] for v in cross.values())
    return {"scenarios": sorted(cross), "frames": frames, "fixes": fixes,
            "availability": fixes / frames if frames else None,
            "gross_errors": sum(v["gross_errors"] for v in cross.values()),
            "integrity_violations": violations,
            "integrity_violation_share": violations / fixes if fixes else None}


def run(args: argparse.Namespace) -> dict:
    todo, maps, notes = scenarios(Path(args.data))
    if args.only:
        wanted = set(args.only.split(","))
        todo = [s for s in todo if s.name in wanted]
    work = Path(args.work)
    packs: dict[str, Path] = {}
    results = {}
    for sc in todo:
        print(f"== {sc.name}", flush=True)
        if sc.map_key not in packs:
            packs[sc.map_key] = build_pack([maps[sc.map_key]], work / f"pack-{sc.map_key}",
                                           encoder=make_encoder(args.encoder), force=True)
        flight = work / sc.name / "flight"
        if flight.exists():
            shutil.rmtree(flight)
        t0 = time.perf_counter()
        simulate_flight(maps[sc.map_key], flight, sc.spec,
                        render_from=None if sc.render_from is None else Path(sc.render_from))
        result = replay(flight, packs[sc.map_key], work / sc.name / "replay", Config())
        results[sc.name] = {
            **vars(result.report),
            "agl_m": sc.spec.agl_m, "map": str(maps[sc.map_key]),
            "frames_from": sc.render_from or str(maps[sc.map_key]),
            "wall_s": round(time.perf_counter() - t0, 1),
            "global_retrieval": retrieval(flight, packs[sc.map_key]),
        }
        print(json.dumps({k: results[sc.name][k] for k in (
            "frames", "availability", "fix_cep50_m", "fix_cep95_m", "est_cep95_m",
            "gross_errors", "integrity_violations")}), flush=True)
        print(results[sc.name]["global_retrieval"]["summary"], flush=True)
    return {
        "benchmark": "accuracy", "encoder": args.encoder,
        "naip_cross_date": naip_summary(results),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "loadavg_1m": os.getloadavg()[0]},
        "notes": notes, "scenarios": results,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/bench/accuracy.json"))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    p.add_argument("--work", type=Path, default=Path("out/bench/accuracy"))
    p.add_argument("--only", help="comma-separated scenario names")
    p.add_argument("--encoder", default=DEFAULT_ENCODER_NAME, choices=("rootsift", "xfeat"))
    args = p.parse_args()
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from skyfix.runtime.apps.boundary import run_guarded

    sys.exit(run_guarded(main, sys.argv, prog="bench_accuracy"))
