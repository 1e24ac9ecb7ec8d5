"""`skyfix maps fetch` throughput and resume, against a local tile server (no internet).

    tile server (own process): the bundled Vienna ortho repeated without end, zoom 19 JPEG
    1. fetch AREA km2 at 0.3 m (`skyfix maps fetch`, own process): wall time, tiles/s
    2. the same into an empty cache, killed with SIGKILL at about half the tiles; every
       cached tile checked to decode; rerun: requests the server saw during the rerun vs
       tiles missing from the cache after the kill (target: equal, nothing fetched twice)

Writes JSON (with the load average: this machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ORTHO = ROOT / "sim" / "data" / "vienna_schoenbrunn_2023_30cm.tif"
CENTRE = (48.1859, 16.3132)  # lat, lon


def _stats(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/stats", timeout=5) as r:
        return json.loads(r.read())


def _fetch_cmd(url: str, cache: Path, out: Path, radius_m: float, args) -> list[str]:
    return [str(Path(sys.executable).with_name("skyfix")), "maps", "fetch",
            "--point", f"{CENTRE[0]},{CENTRE[1]}", "--radius", f"{radius_m:.1f}",
            "--url", url, "--attribution", "Stadt Wien (repeated, benchmark)",
            "--gsd", "0.3", "--workers", str(args.workers), "--rate", str(args.rate),
            "--cache", str(cache), "--out", str(out)]


def _tiles(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".tmp")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/bench/fetch.json"))
    p.add_argument("--area-km2", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s (local server)")
    args = p.parse_args()
    radius = math.sqrt(args.area_km2 * 1e6) / 2
    report = {"area_km2": args.area_km2, "gsd_m": 0.3, "workers": args.workers,
              "rate_per_s": args.rate, "cpus": os.cpu_count(),
              "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    server = subprocess.Popen([sys.executable, "-m", "skyfix.sim.tile_server", str(ORTHO),
                               "--max-zoom", "19", "--wrap"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        base = url.split("/{z}")[0]
        with tempfile.TemporaryDirectory(prefix="bench_fetch.") as tmp:
            tmp = Path(tmp)
            t0 = time.monotonic()
            subprocess.run(_fetch_cmd(url, tmp / "c1", tmp / "a.tif", radius, args),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.monotonic() - t0
            rec = json.loads((tmp / "a.fetch.json").read_text())
            n = rec["tiles"]["total"]
            report["fetch"] = {"wall_s": round(wall, 1), "tiles": n,
                               "download_s": round(rec["tiles"]["seconds"], 1),
                               "tiles_per_s": round(n / rec["tiles"]["seconds"], 1),
                               "mb": round(rec["tiles"]["bytes"] / 1e6, 1),
                               "output_mb": round((tmp / "a.tif").stat().st_size / 1e6, 1),
                               "target_s": 120, "met": wall <= 120}
            proc = subprocess.Popen(_fetch_cmd(url, tmp / "c2", tmp / "b.tif", radius, args),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while len(_tiles(tmp / "c2")) < n // 2 and proc.poll() is None:
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            cached = _tiles(tmp / "c2")
            leftover = len(list((tmp / "c2").rglob("*.tmp")))
            broken = 0
            for f in cached:
                try:
                    with Image.open(f) as im:
                        im.load()
                except OSError:
                    broken += 1
            before = _stats(base)["requests"]
            subprocess.run(_fetch_cmd(url, tmp / "c2", tmp / "b.tif", radius, args),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            asked = _stats(base)["requests"] - before
            report["resume"] = {"tiles": n, "cached_at_kill": len(cached),
                                "broken_cached_tiles": broken,
                                "tmp_files_at_kill": leftover,
                                "requests_on_rerun": asked,
                                "missing_at_kill": n - len(cached),
                                "met": broken == 0 and asked == n - len(cached)}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
