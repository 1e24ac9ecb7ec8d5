"""Both filters on the whole chain: sim flights over the bundled Vienna orthophoto,
replayed from the pixels with filter.kind cv and imu (the flight's tlog carries the
simulated 100 Hz IMU), imu without the fixes' headings (filter.fuse_heading false), and,
to show what the fixes' NIS is made of, imu with the smallest 1-sigma a fix may claim
(match.sigma_floor_m, 0.5 m) cut to 5 cm: the frames are rendered from the map itself, so
their fixes are right to centimetres, which no real map and camera give.

    python benchmarks/bench_filter_vienna.py --out out/bench/filter_vienna.json
        [--flights 2] [--duration 20] [--fps 2]

Per kind: the replay report's fix and estimate CEP50/95 (metres), and the NIS of every
fix the filter was offered (mean, the 95 % band of that mean for 2 dof, the share outside
the per-fix 95 % band [0.051, 7.38]).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_filter import chi2_band  # noqa: I001  (this folder)

from skyfix.maps.build import build_pack
from skyfix.runtime.apps.replay import replay
from skyfix.runtime.core.config import Config
from skyfix.sim.flight import FlightSpec, simulate_flight
from skyfix.sim.sample import sample_ortho

# each variant: {config section: settings}
KINDS = {"cv": {"filter": {"kind": "cv"}}, "imu": {"filter": {"kind": "imu"}},
         "imu_no_heading": {"filter": {"kind": "imu", "fuse_heading": False}},
         "imu_floor_5cm": {"filter": {"kind": "imu"}, "match": {"sigma_floor_m": 0.05}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--flights", type=int, default=2)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--fps", type=float, default=2.0)
    a = ap.parse_args()
    load0 = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    ortho = sample_ortho()
    per: dict[str, dict] = {k: {"reports": [], "nis": []} for k in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pack = build_pack([ortho], root / "pack", progress=False)
        for seed in range(1, a.flights + 1):
            spec = FlightSpec(agl_m=120.0, duration_s=a.duration, fps=a.fps, seed=seed)
            simulate_flight(ortho, root / f"flight{seed}", spec, progress=False)
            for kind in KINDS:
                cfg = Config()
                cfg = replace(cfg, **{sec: replace(getattr(cfg, sec), **kw)
                                      for sec, kw in KINDS[kind].items()})
                res = replay(root / f"flight{seed}", pack, root / f"out_{kind}{seed}", cfg, 0.0,
                             progress=False)
                r = res.report
                per[kind]["reports"].append({k: getattr(r, k) for k in (
                    "frames", "fixes", "fix_cep50_m", "fix_cep95_m", "est_cep50_m",
                    "est_cep95_m", "max_err_m", "gross_errors", "integrity_violations")})
                per[kind]["nis"] += [f.innovation.nis for f in res.frames
                                     if f.innovation is not None and f.innovation.y.shape == (2,)]
    out: dict = {"kinds": {}}
    b_lo, b_hi = chi2_band(2)
    for kind in KINDS:
        nis = np.array(per[kind]["nis"], np.float64)
        nis = nis[np.isfinite(nis)]
        m_lo, m_hi = chi2_band(2 * max(len(nis), 1))
        out["kinds"][kind] = {
            "flights": per[kind]["reports"],
            "nis_fix": {"mean": round(float(nis.mean()), 3) if len(nis) else None,
                        "band_95_of_mean": [round(m_lo / max(len(nis), 1), 3),
                                            round(m_hi / max(len(nis), 1), 3)],
                        "share_outside_95": round(float(np.mean((nis < b_lo) | (nis > b_hi))), 4)
                        if len(nis) else None, "n": int(len(nis))}}
    out["setup"] = {"flights": a.flights, "duration_s": a.duration, "fps": a.fps,
                    "agl_m": 120.0, "ortho": str(ortho)}
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                      "loadavg_start": load0,
                      "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                      "wall_s": round(time.perf_counter() - start, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["kinds"], indent=1))


if __name__ == "__main__":
    main()
