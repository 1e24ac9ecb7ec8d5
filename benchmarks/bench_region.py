"""Region packs in flight: frame latency over a plain map pack vs the same pack sharded, and
the flying process's resident memory against the shard budget.

    python benchmarks/bench_region.py --out out/bench/region.json [--ortho PATH]
        [--flight-s 30] [--cell-m 100] [--tight-share 0.5] [--repeats 3] [--work DIR]

A sim flight (sim.flight, 120 m AGL, 2 fps) is rendered from the ortho (default: the
bundled Vienna crop), a map pack is built from it (maps.build defaults) and cut into cells
of `--cell-m` (maps.shard_write.shard_pack). Each configuration then flies the flight in
a fresh child process, through the daemon's chain (flight.assembly.build_chain; frames
with their telemetry, no GNSS prior):
- plain: the map pack;
- sharded: the sharded pack at the default budget (daemon.map_budget_mb), every shard it
  needs stays loaded;
- sharded_tight: a budget of `--tight-share` of all shards' resident bytes (at least the
  largest shard), so that shards are dropped and loaded again in flight (the
  region-larger-than-memory case; a budget below what one frame reaches thrashes).
Configurations run interleaved, `--repeats` times each. Per run: vision-step latency per
frame (Chain.on_frame wall time) p50/p95/mean and its CPU time (process_time, all threads:
less swayed by other processes than wall time), fixes, shard loads, and RSS: after the
chain is built, at the end, and the peak (VmHWM). The machine's load average is recorded
(other processes on a 2-core machine skew timings).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from skyfix.maps.build import build_pack
from skyfix.maps.shard_write import shard_pack
from skyfix.sim.flight import FlightSpec, simulate_flight
from skyfix.sim.sample import sample_ortho

CONFIGS = ("plain", "sharded", "sharded_tight")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def fly(flight: Path, pack_path: Path, budget_mb: float | None) -> dict:
    """In a fresh process: the daemon's chain over the pack (a ShardedPack at `budget_mb`
    when given), every frame of the flight through its vision step."""
    from skyfix.maps.shards import ShardedPack
    from skyfix.runtime.core.config import Config
    from skyfix.runtime.core.types import Fix, Frame
    from skyfix.runtime.flight.assembly import build_chain
    from skyfix.runtime.io.sources import open_inputs

    cfg = Config()
    inputs = open_inputs(flight)
    pack = (ShardedPack.open(pack_path, budget_bytes=int(budget_mb * 2**20))
            if budget_mb is not None else pack_path)
    chain = build_chain(cfg, pack, inputs.camera)
    rss_built = _status_mb("VmRSS")
    lat, cpu, fixes = [], [], 0
    for item in inputs.frames.frames():
        if not isinstance(item, Frame):
            continue
        tel = inputs.telemetry.at(item.t_ns)
        t0, c0 = time.perf_counter(), time.process_time()
        step = chain.on_frame(item, item.t_ns, tel, None)
        lat.append(1e3 * (time.perf_counter() - t0))
        cpu.append(1e3 * (time.process_time() - c0))
        fixes += isinstance(step.result.result, Fix)
    lat_a, cpu_a = np.array(lat[1:]), np.array(cpu[1:])  # the first frame: one-off costs
    out = {"frames": len(lat), "fixes": fixes,
           "latency_p50_ms": round(float(np.percentile(lat_a, 50)), 1),
           "latency_p95_ms": round(float(np.percentile(lat_a, 95)), 1),
           "latency_mean_ms": round(float(lat_a.mean()), 1),
           "cpu_p50_ms": round(float(np.percentile(cpu_a, 50)), 1),
           "cpu_mean_ms": round(float(cpu_a.mean()), 1),
           "first_frame_ms": round(lat[0], 1),
           "rss_built_mb": rss_built, "rss_end_mb": _status_mb("VmRSS"),
           "rss_peak_mb": _status_mb("VmHWM")}
    if budget_mb is not None:
        out |= {"budget_mb": round(budget_mb, 3), "shards": len(pack.manifest.shards),
                "shard_loads": pack.loads,
                "cache_resident_mb": round(pack.resident_bytes / 2**20, 2)}
    return out


def _summary(runs: dict[str, list[dict]]) -> dict:
    med = {c: {k: round(float(np.median([r[k] for r in runs[c]])), 2)
               for k in ("latency_p50_ms", "latency_p95_ms", "latency_mean_ms", "cpu_mean_ms",
                         "rss_peak_mb")}
           for c in CONFIGS}
    base = med["plain"]
    out = {}
    for c in CONFIGS[1:]:
        out[c] = {"latency_p50_vs_plain": round(med[c]["latency_p50_ms"]
                                                / base["latency_p50_ms"] - 1, 3),
                  "latency_mean_vs_plain": round(med[c]["latency_mean_ms"]
                                                 / base["latency_mean_ms"] - 1, 3),
                  "cpu_mean_vs_plain": round(med[c]["cpu_mean_ms"] / base["cpu_mean_ms"] - 1, 3),
                  "rss_peak_mb": med[c]["rss_peak_mb"],
                  "rss_peak_minus_budget_mb": round(med[c]["rss_peak_mb"]
                                                    - runs[c][0]["budget_mb"], 1)}
    out["plain_rss_peak_mb"] = base["rss_peak_mb"]
    return out


def main() -> None:
    from skyfix.maps.shards import ShardedPack
    from skyfix.runtime.core.config import Config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/bench/region.json"))
    ap.add_argument("--ortho", type=Path, default=None)
    ap.add_argument("--flight-s", type=float, default=30.0)
    ap.add_argument("--cell-m", type=float, default=100.0)
    ap.add_argument("--tight-share", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")
    ap.add_argument("--fly", nargs=3, help=argparse.SUPPRESS)  # child: FLIGHT PACK BUDGET
    a = ap.parse_args()
    if a.fly:
        flight, pack, budget = a.fly
        print(json.dumps(fly(Path(flight), Path(pack), None if budget == "-" else float(budget))))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_region_", dir=a.work))
    ortho = a.ortho or sample_ortho()
    result: dict = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "ortho": str(ortho), "flight_s": a.flight_s, "cell_m": a.cell_m}
    try:
        simulate_flight(ortho, work / "flight", FlightSpec(duration_s=a.flight_s, seed=7),
                        progress=False)
        build_pack([ortho], work / "pack", progress=False)
        shard_pack(work / "pack", work / "sharded", a.cell_m, progress=False)
        result["pack_mb"] = round(sum(p.stat().st_size for p in (work / "pack").iterdir())
                                  / 2**20, 1)
        shards = ShardedPack.open(work / "sharded").manifest.shards
        tight_mb = max(max(s.resident_bytes for s in shards),
                       a.tight_share * sum(s.resident_bytes for s in shards)) / 2**20
        result["shards_resident_mb"] = round(sum(s.resident_bytes for s in shards) / 2**20, 3)
        args = {"plain": (work / "pack", "-"),
                "sharded": (work / "sharded", str(Config().daemon.map_budget_mb)),
                "sharded_tight": (work / "sharded", f"{tight_mb:.6f}")}
        runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
        for _ in range(a.repeats):
            for c in CONFIGS:
                pack, budget = args[c]
                child = subprocess.run([sys.executable, __file__, "--fly", str(work / "flight"),
                                        str(pack), budget], capture_output=True, text=True,
                                       check=True)
                runs[c].append(json.loads(child.stdout.strip().splitlines()[-1]))
                print(c, runs[c][-1], flush=True)
        result["runs"] = runs
        result["summary"] = _summary(runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    from skyfix.runtime.apps.boundary import run_guarded

    sys.exit(run_guarded(main, sys.argv, prog="bench_region"))
