"""Cross-date matching on small views: the two-date pair sets cut into small pairs.

    python benchmarks/bench_small_views.py --pairs DIR [DIR ...] --out FILE.json
        [--tile 256] [--tiles-per-pair 4] [--views 4] [--seed 0] [--method xfeat ...]
        [--trained-model ONNX] [--work DIR]

Each pair of each set is cut into tile x tile pairs (whole tiles only, at most
--tiles-per-pair of them, drawn with the seed; a pair no larger than a tile is kept
whole). Each set's tiles are written as a pair set of their own (same meta.json: GSD,
bands, licence, registration), and `skyfix bench crossdate` runs on them: the product's
own code, with the protocol's views of side 0.6 x tile (153 px for 256). That is the short
side of what a 640 x 480, 70 deg camera sees from about 70 m up over a 0.5 m map, and
what many change-detection sets ship (256 px crops): a view with a few hundred features
and a coarse view of 76 channel pixels. The full-size benchmark's views are 384 px.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from skyfix.models.pair_sets import read_pair, read_pair_set
from skyfix.runtime.apps.bench_crossdate import bench_crossdate
from skyfix.runtime.core.errors import SkyfixError


def cut_set(src: Path, dst: Path, tile: int, per_pair: int, seed: int) -> int:
    """Write `src`'s pairs cut into tiles as a pair set at `dst`; the number of pairs. A pair
    `src` cannot give is named on stderr, as the cross-date benchmark names its own."""
    pset, problems = read_pair_set(src)
    for line in problems:
        print(f"skyfix: skipped pair {line}", file=sys.stderr, flush=True)
    rng = np.random.default_rng([seed, sum(map(ord, pset.name))])
    shutil.rmtree(dst, ignore_errors=True)
    (dst / "a").mkdir(parents=True)
    (dst / "b").mkdir()
    rows = []
    for pair in pset.pairs:
        a, b = read_pair(pair, pset.rgb_bands)
        h, w = a.shape[:2]
        corners = [(x, y) for y in range(0, max(h - tile, 0) + 1, tile)
                   for x in range(0, max(w - tile, 0) + 1, tile)]
        for k in sorted(rng.permutation(len(corners))[:per_pair]):
            x, y = corners[k]
            name = f"{pair.id}_{y}_{x}"
            for side, image in (("a", a), ("b", b)):
                cv2.imwrite(str(dst / side / f"{name}.png"), image[y:y + tile, x:x + tile])
            rows.append(f"{name},a/{name}.png,b/{name}.png")
    meta = json.loads((src / "meta.json").read_text())
    meta.update(gsd_m=None if pset.gsd_assumed else pset.gsd_m, rgb_bands=[1, 2, 3],
                cut_from=str(src), tile_px=tile)
    (dst / "meta.json").write_text(json.dumps(meta, indent=1))
    (dst / "pairs.csv").write_text("id,a,b\n" + "\n".join(rows) + "\n")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", nargs="+", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--tiles-per-pair", type=int, default=4)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", action="append")
    ap.add_argument("--trained-model", type=Path, metavar="ONNX",
                    help="weights of your own for method xfeat-xd (default: the shipped ones)")
    ap.add_argument("--work", type=Path)
    a = ap.parse_args(argv)
    work = a.work or a.out.parent / "small-views-work"
    try:
        if a.tile < 64 or a.tiles_per_pair < 1:
            raise SkyfixError("--tile must be at least 64 and --tiles-per-pair at least 1")
        sets = []
        for src in a.pairs:
            dst = work / "sets" / src.resolve().name
            n = cut_set(src, dst, a.tile, a.tiles_per_pair, a.seed)
            print(f"{src.name}: {n} pairs of {a.tile} px", flush=True)
            sets.append(dst)
        bench_crossdate(sets, a.out, a.views, a.seed, a.method, work / "packs",
                        a.trained_model, {"tile_px": a.tile, "tiles_per_pair": a.tiles_per_pair})
    except SkyfixError as e:
        print(f"bench_small_views: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
