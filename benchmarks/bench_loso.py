"""Leave-one-set-out of skyfix's cross-date training on the pair sets -> JSON.

    python benchmarks/bench_loso.py --pairs ../shared/data/multidate_pairs/*/ \
        [--config configs/train.yaml] [--data other-sets|recipe] [--steps N] \
        [--views 10] [--seed 0] [--out out/bench/loso.json] [--work out/bench/loso]
                                                                    (make bench-loso: both)

For each pair set in turn (the held-out set): train the recipe of `--config` on data
without the held-out set, export the weights, and run the cross-date benchmark (`skyfix
bench crossdate`, same views and seed) on the held-out set with XFeat as published and
with those weights. Which data (`--data`):

    other-sets  the other sets' pairs alone, in place of the recipe's own data (the
                shipped recipe trains on the NAIP series, itself one of the sets)
    recipe      the recipe's own data less every source of the held-out set's ground:
                inside its folder, or imagery whose footprint meets one of its images'
                (georeferenced images; the recipe's NAIP validation series is the NAIP
                set's quarter-quad). A fold that leaves out nothing trains the recipe as it
                is, so the shipped weights are its weights when their manifest says they
                are a finished run of it (make train reproduces them), and the folds that
                share it are trained once.

Give each `--data` its own `--work`: a fold's checkpoint of the other's settings is
refused.

Per fold: placed, accepted, wrong among accepted and reachable for both; their global
retrieval on the held-out set (`skyfix bench retrieval`: Recall@1/@5 of XFeat's VLAD and
of the trained weights' VLAD + embedding); and whether the trained weights placed more
views and had fewer wrong among accepted (none accepted counts as none wrong; issue
target: both, on every held-out set). Training resumes from each fold's checkpoint when
rerun (`--work` keeps them), and a fold whose weights are a finished run of its settings
is not trained again (its `train_wall_s` is then 0 and `trained_now` null).
With `other-sets` the research-only sets train the folds: the weights are for this
measurement, never shipped. Needs the training extras (`make train-deps`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rasterio.errors import RasterioError
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds

from skyfix.models.manifest import load_manifest
from skyfix.models.pair_sets import image_grid, read_pair_set
from skyfix.models.train import ONNX_NAME, TrainConfig, load_config, train
from skyfix.models.train_data import Source, source_images
from skyfix.models.xfeat import XD_MODEL
from skyfix.runtime.apps.bench_crossdate import bench_crossdate
from skyfix.runtime.apps.bench_retrieval import bench_retrieval
from skyfix.runtime.core.errors import SkyfixError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train.yaml"
KEYS = ("placed_pct", "accepted_pct", "wrong_among_accepted_pct", "reachable_pct", "views")
DATA = ("other-sets", "recipe")
Box = tuple[float, float, float, float]  # west, south, east, north (degrees)


@dataclass(frozen=True)
class Fold:
    held_out: Path  # the pair set evaluated
    config: TrainConfig  # the recipe as this fold trains it (--data)


def folds(pair_dirs: list[Path], recipe: TrainConfig, work: Path, data: str = "other-sets"
          ) -> list[Fold]:
    """One fold per set of `pair_dirs`, trained on `data` (module docstring): the other
    sets' pairs (their meta.json licences) or the recipe's own sources off the held-out
    set's ground; written under `work`/<set>/train (the unchanged recipe: `work`/recipe)."""
    sets = [Path(d).resolve() for d in pair_dirs]
    if len(sets) < 2:
        raise SkyfixError("leave-one-set-out needs at least two pair sets")
    if len({d.name for d in sets}) < len(sets):
        raise SkyfixError("two pair sets share a folder name: a fold would not say which")
    if data not in DATA:
        raise SkyfixError(f"unknown --data {data!r} (choose from {', '.join(DATA)})")
    out = []
    if data == "other-sets":
        licences = {d: read_pair_set(d)[0].licence or "not stated" for d in sets}
        for held in sets:
            mine = tuple(Source("pairs", d, licences[d]) for d in sets if d != held)
            out.append(Fold(held, replace(recipe, model_id=f"loso-{held.name}", data=mine,
                                          output=work / held.name / "train")))
        return out
    for held in sets:
        ground = _footprints(source_images(Source("pairs", held, "")))
        mine = tuple(s for s in recipe.data if not _same_ground(s, held, ground))
        if not any(s.split == "train" for s in mine):
            raise SkyfixError(f"held out {held.name}: none of the recipe's training data is "
                              "off its ground")
        if mine == recipe.data:
            out.append(Fold(held, replace(recipe, output=work / "recipe" / "train")))
        else:
            out.append(Fold(held, replace(recipe, model_id=f"loso-{held.name}", data=mine,
                                          output=work / held.name / "train")))
    return out


def _footprints(images: list[Path]) -> list[Box]:
    """The lon/lat boxes of those of `images` that carry a georeference."""
    return [box for path in images for box in _footprint(path)]


@functools.cache
def _footprint(path: Path) -> tuple[Box, ...]:
    """The lon/lat box of one image, () without a georeference (read once a run: each fold
    asks of every recipe source)."""
    try:
        g = image_grid(path)
    except RasterioError as exc:
        raise SkyfixError(f"{path}: {exc}") from None
    if g.crs is None:
        return ()
    box = array_bounds(g.height, g.width, g.transform)
    return (transform_bounds(g.crs, "EPSG:4326", *box),)


def _same_ground(source: Source, held: Path, ground: list[Box]) -> bool:
    """`source` lies in the held-out set's folder `held`, or one of its images' footprints
    meets one of `ground` (the held-out set's)."""
    path = source.path.resolve()
    if path == held or held in path.parents:
        return True
    if not ground:
        return False
    return any(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
               for a in _footprints(source_images(source)) for b in ground)


def _trained_to(cfg: TrainConfig, shipped: Path = XD_MODEL) -> Path | None:
    """The fold's weights when some are a finished run of `cfg` (their manifest names the
    settings' fingerprint and all the steps): its own export, else the `shipped` ones."""
    for onnx in (cfg.output / ONNX_NAME, shipped):
        if not onnx.is_file():
            continue
        try:
            source = load_manifest(onnx, verify=False).source
        except SkyfixError:
            continue
        if (source.get("config_sha256") == cfg.fingerprint()
                and source.get("steps") == f"{cfg.steps} of {cfg.steps}"):
            return onnx
    return None


def run_fold(fold: Fold, views: int, seed: int, work: Path) -> dict:
    """Train (unless done) and judge one fold; its benchmark JSON under `work`/<set>."""
    t0 = time.perf_counter()
    onnx = _trained_to(fold.config)
    trained = None
    if onnx is None:
        result = train(fold.config)
        onnx, trained = result.onnx, {"steps": result.steps, "loss": result.loss}
    train_s = time.perf_counter() - t0
    packs, results = work / "packs", work / fold.held_out.name
    report = bench_crossdate([fold.held_out], results / "crossdate.json",
                             views, seed, ["xfeat", "xfeat-xd"], packs, trained_model=onnx)
    name = fold.held_out.name
    xfeat = report["methods"]["xfeat"]["sets"][name]
    mine = report["methods"]["xfeat-xd"]["sets"][name]
    found = bench_retrieval([fold.held_out], results / "retrieval.json",
                            views, seed, ["xfeat", "xfeat-xd"], packs / "retrieval",
                            trained_model=onnx)["methods"]
    return {
        "trained_on": [f"{s.name} ({s.split})" for s in fold.config.data],
        "weights": str(onnx), "train_wall_s": round(train_s, 1),
        "trained_now": trained,
        "xfeat": {k: xfeat[k] for k in KEYS}, "trained": {k: mine[k] for k in KEYS},
        "more_placed": mine["placed_pct"] > xfeat["placed_pct"],
        "fewer_wrong": _wrong(mine) < _wrong(xfeat),
        "retrieval": {"xfeat": _recalls(found["xfeat"]["sets"][name]),
                      "trained": _recalls(found["xfeat-xd"]["sets"][name])},
    }


def _recalls(summary: dict) -> dict:
    return {k: summary["descriptor"][k] for k in ("recall@1", "recall@5")}


def _wrong(summary: dict) -> float:
    """Wrong among accepted, %; none accepted: none wrong."""
    return summary["wrong_among_accepted_pct"] or 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=Path, nargs="+", required=True, metavar="DIR")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="the training recipe")
    p.add_argument("--data", choices=DATA, default="other-sets",
                   help="what each fold trains on (module docstring)")
    p.add_argument("--steps", type=int, help="training steps per fold (default: the recipe's)")
    p.add_argument("--views", type=int, default=10, help="views per pair")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out/bench/loso.json"))
    p.add_argument("--work", type=Path, default=Path("out/bench/loso"))
    a = p.parse_args()
    try:
        recipe = load_config(a.config)
        if a.steps is not None:
            if a.steps < 1:
                raise SkyfixError(f"--steps must be at least 1, got {a.steps}")
            recipe = replace(recipe, steps=a.steps)
        todo = folds(a.pairs, recipe, a.work.resolve(), a.data)
    except SkyfixError as exc:
        raise SystemExit(f"bench_loso: {exc}") from None
    report = {"benchmark": "loso", "recipe": str(a.config), "data": a.data,
              "steps": recipe.steps, "batch": recipe.batch, "views_per_pair": a.views,
              "seed": a.seed, "loadavg_1m_start": os.getloadavg()[0], "folds": {}}
    for fold in todo:
        print(f"== held out: {fold.held_out.name}", flush=True)
        try:
            row = run_fold(fold, a.views, a.seed, a.work.resolve())
        except SkyfixError as exc:
            raise SystemExit(f"bench_loso: {fold.held_out.name}: {exc}") from None
        report["folds"][fold.held_out.name] = row
        print(json.dumps({k: row[k] for k in ("xfeat", "trained", "more_placed",
                                              "fewer_wrong")}), flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2))  # each fold kept as it ends
    rows = report["folds"].values()
    report["every_set_more_placed"] = all(r["more_placed"] for r in rows)
    report["every_set_fewer_wrong"] = all(r["fewer_wrong"] for r in rows)
    report["loadavg_1m_end"] = os.getloadavg()[0]
    a.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
