"""Region scale: Ray map-build throughput by worker count, in-flight memory of a sharded pack.

    python benchmarks/bench_scale.py --out out/bench/scale.json [--tiles 10000000]
        [--workers 1,2] [--ortho PATH] [--work DIR]

Parts:
- build: `build_pack` of the ortho (default: the bundled Vienna crop, one level at native
  GSD, 256 px tiles) on this machine without Ray, then `build_pack_ray` on a local Ray
  cluster of each worker count. Tile throughput is taken over the tile-extraction phase
  (first to last progress report), the phase Ray distributes; whole-build wall time too.
- memory: a synthetic region of `--tiles` tiles (skyfix.maps.shards.synthetic_region, 32
  values per descriptor) written in chunks as a sharded pack; then, in a fresh child
  process, the pack is opened with a memory budget and flown over: window searches along
  a straight track across the region plus global searches. The child reports its RSS
  after import, its peak RSS (VmHWM) and the shard cache's resident bytes.
The machine's load average is recorded: other processes on a 2-core machine skew timings.
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
from skyfix.maps.distributed import build_pack_ray
from skyfix.maps.shard_write import synthetic_region, write_shards
from skyfix.maps.shards import ShardedPack
from skyfix.sim.sample import sample_ortho

DIM = 32
CELL_M = 2000.0
TILE_M = 10.0
BUDGET_MB = 256
SEARCHES = 400


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def bench_build(ortho: Path, workers: list[int], work: Path) -> dict:
    kwargs = dict(tile_px=256, gsds_m=None, progress=False, index_min_tiles=0)
    with __import__("rasterio").open(ortho) as ds:
        kwargs["gsds_m"] = [abs(ds.res[0])]
    runs = []
    for w in [0, *workers]:
        stamps: list[tuple[float, int]] = []
        out = work / f"pack_{w}"

        def note(p, stamps=stamps) -> None:
            stamps.append((time.perf_counter(), p.done))

        t0 = time.perf_counter()
        if w == 0:
            build_pack([ortho], out, on_progress=note, **kwargs)
        else:
            build_pack_ray([ortho], out, workers=w, on_progress=note, **kwargs)
        wall = time.perf_counter() - t0
        tiles = stamps[-1][1] - stamps[0][1]
        phase = stamps[-1][0] - stamps[0][0]
        runs.append({"workers": w or "no ray", "tiles": tiles, "extract_s": round(phase, 2),
                     "tiles_per_s": round(tiles / phase, 2), "build_wall_s": round(wall, 2)})
        print(runs[-1], flush=True)
    return {"ortho": str(ortho), "tile_px": 256, "runs": runs}


def write_region(n_tiles: int, path: Path) -> dict:
    manifest, blocks = synthetic_region(n_tiles, dim=DIM, tile_m=TILE_M, seed=0)
    t0 = time.perf_counter()
    write_shards(blocks, path, manifest, np.zeros((1, DIM), np.float32), CELL_M)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    side_km = (manifest.bounds_en[2] - manifest.bounds_en[0]) / 1000
    return {"tiles": int(manifest.tile_count[0]), "area_km2": round(side_km**2, 1),
            "cell_m": CELL_M, "descriptor_values": DIM, "disk_mb": round(size / 2**20, 1),
            "write_s": round(time.perf_counter() - t0, 1)}


def fly(path: Path, budget_mb: int) -> dict:
    """In a fresh process: open the sharded pack and search along a track; RSS figures."""
    rss0 = _status_kb("VmRSS")
    pack = ShardedPack.open(path, budget_bytes=budget_mb << 20, verify=False)
    b = pack.region.bounds_en
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    lat = []
    for k in range(SEARCHES):
        f = k / SEARCHES
        centre = np.array([b[0] + f * (b[2] - b[0]), b[1] + f * (b[3] - b[1])])
        q = rng.normal(size=DIM).astype(np.float32)
        s = time.perf_counter()
        pack.search(q, 0, 5, window=(centre, np.eye(2) * 300.0**2))
        if k % 20 == 0:
            pack.search(q, 0, 5, probe=8)
        lat.append(time.perf_counter() - s)
    return {"budget_mb": budget_mb, "rss_after_import_mb": round(rss0 / 1024, 1),
            "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
            "rss_end_mb": round(_status_kb("VmRSS") / 1024, 1),
            "cache_resident_mb": round(pack.resident_bytes / 2**20, 1),
            "shard_loads": pack.loads, "searches": SEARCHES + SEARCHES // 20,
            "search_p50_ms": round(1e3 * float(np.percentile(lat, 50)), 2),
            "search_p95_ms": round(1e3 * float(np.percentile(lat, 95)), 2),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/bench/scale.json"))
    ap.add_argument("--tiles", type=int, default=10_000_000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--ortho", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--fly", type=Path, help=argparse.SUPPRESS)  # child mode
    a = ap.parse_args()
    if a.fly:
        print(json.dumps(fly(a.fly, BUDGET_MB)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=a.work))
    result: dict = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    try:
        if not a.skip_build:
            result["build"] = bench_build(a.ortho or sample_ortho(),
                                          [int(w) for w in a.workers.split(",")], work)
        result["region"] = write_region(a.tiles, work / "region")
        print(result["region"], flush=True)
        child = subprocess.run([sys.executable, __file__, "--fly", str(work / "region")],
                               capture_output=True, text=True, check=True)
        result["in_flight_memory"] = json.loads(child.stdout.strip().splitlines()[-1])
        print(result["in_flight_memory"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    from skyfix.runtime.apps.boundary import run_guarded

    sys.exit(run_guarded(main, sys.argv, prog="bench_scale"))
