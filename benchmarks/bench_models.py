"""Local-feature extraction latency on CPU: XFeat (ONNX Runtime) vs RootSIFT.

    python benchmarks/bench_models.py --out out/bench_models.json [--runs 20] [--threads 2]

Frames are crops of the bundled Vienna orthophoto (gray) at 480x480, 640x480 and
1024x768. Each encoder runs in its own child process so that its peak RSS is its
own; per size: warm-up runs, then `--runs` timed `extract` calls (p50/p95 ms).
For XFeat the network-only time (runner.infer) is reported too. The load
average is recorded because other processes on a small machine skew results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

SIZES = [(480, 480), (640, 480), (1024, 768)]  # (width, height)
ENCODERS = ("xfeat-onnx", "rootsift")


def _frames() -> dict[str, np.ndarray]:
    import rasterio

    from skyfix.sim.sample import sample_ortho

    with rasterio.open(sample_ortho()) as src:
        rgb = np.moveaxis(src.read(), 0, -1)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return {f"{w}x{h}": np.ascontiguousarray(gray[100:100 + h, 200:200 + w]) for w, h in SIZES}


def _timed(fn, runs: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    arr = np.array(times)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p95_ms": round(float(np.percentile(arr, 95)), 2),
            "min_ms": round(float(arr.min()), 2)}


def bench_one(name: str, runs: int, warmup: int, threads: int | None) -> dict:
    """Benchmark one encoder in this process."""
    frames = _frames()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result: dict = {"encoder": name, "sizes": {}}
    if name == "xfeat-onnx":
        from skyfix.models.xfeat import XFeatEncoder

        opts = {"intra_op_threads": threads} if threads else {}
        encoder = XFeatEncoder(max_features=2048, backend_opts=opts)
        result.update(provider=encoder.provider, intra_op_threads=encoder.runner.intra_op_threads,
                      max_features=encoder.max_features)
    else:
        from skyfix.models.features import RootSiftEncoder

        if threads:
            cv2.setNumThreads(threads)
        encoder = RootSiftEncoder()
        result.update(max_features=encoder.max_features, opencv_threads=cv2.getNumThreads())
    for key, gray in frames.items():
        entry = _timed(lambda g=gray: encoder.extract(g), runs, warmup)
        entry["keypoints"] = len(encoder.extract(gray))
        if name == "xfeat-onnx":
            x = (gray.astype(np.float32) / 255)[None, None]
            entry["network"] = _timed(lambda x=x: encoder.runner.infer({"image": x}), runs,
                                      warmup)
        result["sizes"][key] = entry
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["peak_rss_mb"] = round(peak / 1024, 1)  # ru_maxrss is KiB on Linux
    result["rss_before_models_mb"] = round(rss_before / 1024, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result path")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="ORT intra-op / OpenCV threads (default: skyfix's choice)")
    parser.add_argument("--only", choices=ENCODERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.only:  # child process
        args.out.write_text(json.dumps(bench_one(args.only, args.runs, args.warmup,
                                                 args.threads)))
        return 0

    import onnxruntime

    report: dict = {
        "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                    "opencv": cv2.__version__,
                    "loadavg_start": [round(v, 2) for v in os.getloadavg()]},
        "runs": args.runs, "warmup": args.warmup, "encoders": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in ENCODERS:
        child_out = args.out.with_suffix(f".{name}.tmp.json")
        cmd = [sys.executable, __file__, "--out", str(child_out), "--only", name,
               "--runs", str(args.runs), "--warmup", str(args.warmup)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        subprocess.run(cmd, check=True)
        report["encoders"][name] = json.loads(child_out.read_text())
        child_out.unlink()
    report["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, res in report["encoders"].items():
        for size, entry in res["sizes"].items():
            net = entry.get("network", {}).get("p50_ms")
            extra = f"  (network {net} ms)" if net is not None else ""
            print(f"{name:11s} {size:9s} p50 {entry['p50_ms']:7.2f} ms  p95 {entry['p95_ms']:7.2f}"
                  f" ms  {entry['keypoints']:5d} kp{extra}")
        print(f"{name:11s} peak RSS {res['peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
