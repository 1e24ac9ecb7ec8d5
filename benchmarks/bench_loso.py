"""Leave-one-set-out of skyfix's cross-date training on the pair sets -> JSON.

    python benchmarks/bench_loso.py --pairs ../shared/data/multidate_pairs/*/ \
        [--config configs/train.yaml] [--steps N] [--views 10] [--seed 0] \
        [--out out/bench/loso.json] [--work out/bench/loso]          (= make bench-loso)

For each pair set in turn (the held-out set): train the recipe of `--config` (every
setting but its data) on the other sets' pairs alone, export the weights, and run the
cross-date benchmark (`skyfix bench crossdate`, same views and seed) on the held-out set
with XFeat as published and with those weights. The held-out set never enters its
fold's training, nor does any source of the recipe's own data (the shipped recipe trains
on the NAIP series, itself one of the sets).

Per fold: placed, accepted, wrong among accepted and reachable for both; their global
retrieval on the held-out set (`skyfix bench retrieval`: Recall@1/@5 of XFeat's VLAD and
of the trained weights' VLAD + embedding); and whether the trained weights placed more
views and had fewer wrong among accepted (none accepted counts as none wrong; issue
target: both, on every held-out set). Training resumes from each fold's checkpoint when
rerun (`--work` keeps them), and a fold whose weights are a finished run of its settings
is not trained again (its `train_wall_s` is then 0 and `trained_now` null).
The research-only sets train the folds: the weights are for this measurement, never
shipped. Needs the training extras (`make train-deps`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from skyfix.models.manifest import load_manifest
from skyfix.models.pair_sets import read_pair_set
from skyfix.models.train import ONNX_NAME, TrainConfig, load_config, train
from skyfix.models.train_data import Source
from skyfix.runtime.apps.bench_crossdate import bench_crossdate
from skyfix.runtime.apps.bench_retrieval import bench_retrieval
from skyfix.runtime.core.errors import SkyfixError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train.yaml"
KEYS = ("placed_pct", "accepted_pct", "wrong_among_accepted_pct", "reachable_pct", "views")


@dataclass(frozen=True)
class Fold:
    held_out: Path  # the pair set evaluated
    config: TrainConfig  # the recipe trained on the other sets


def folds(pair_dirs: list[Path], recipe: TrainConfig, work: Path) -> list[Fold]:
    """One fold per set of `pair_dirs`: `recipe` trained on the other sets' pairs (their
    meta.json licences), written under `work`/<set>/train."""
    sets = [Path(d).resolve() for d in pair_dirs]
    if len(sets) < 2:
        raise SkyfixError("leave-one-set-out needs at least two pair sets")
    if len({d.name for d in sets}) < len(sets):
        raise SkyfixError("two pair sets share a folder name: a fold would not say which")
    licences = {d: read_pair_set(d)[0].licence or "not stated" for d in sets}
    out = []
    for held in sets:
        data = tuple(Source("pairs", d, licences[d]) for d in sets if d != held)
        out.append(Fold(held, replace(recipe, model_id=f"loso-{held.name}", data=data,
                                      output=work / held.name / "train")))
    return out


def _trained_to(cfg: TrainConfig) -> Path | None:
    """The fold's exported weights when they are a finished run of `cfg` (its manifest
    names the settings' fingerprint and all the steps)."""
    onnx = cfg.output / ONNX_NAME
    if not onnx.is_file():
        return None
    try:
        source = load_manifest(onnx, verify=False).source
    except SkyfixError:
        return None
    done = (source.get("config_sha256") == cfg.fingerprint()
            and source.get("steps") == f"{cfg.steps} of {cfg.steps}")
    return onnx if done else None


def run_fold(fold: Fold, views: int, seed: int, packs: Path) -> dict:
    t0 = time.perf_counter()
    onnx = _trained_to(fold.config)
    trained = None
    if onnx is None:
        result = train(fold.config)
        onnx, trained = result.onnx, {"steps": result.steps, "loss": result.loss}
    train_s = time.perf_counter() - t0
    report = bench_crossdate([fold.held_out], fold.config.output.parent / "crossdate.json",
                             views, seed, ["xfeat", "xfeat-xd"], packs, trained_model=onnx)
    name = fold.held_out.name
    xfeat = report["methods"]["xfeat"]["sets"][name]
    mine = report["methods"]["xfeat-xd"]["sets"][name]
    found = bench_retrieval([fold.held_out], fold.config.output.parent / "retrieval.json",
                            views, seed, ["xfeat", "xfeat-xd"], packs / "retrieval",
                            trained_model=onnx)["methods"]
    return {
        "trained_on": [s.path.name for s in fold.config.data],
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
                   help="the training recipe (its data: entries are replaced per fold)")
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
        todo = folds(a.pairs, recipe, a.work.resolve())
    except SkyfixError as exc:
        raise SystemExit(f"bench_loso: {exc}") from None
    report = {"benchmark": "loso", "recipe": str(a.config), "steps": recipe.steps,
              "batch": recipe.batch, "views_per_pair": a.views, "seed": a.seed,
              "loadavg_1m_start": os.getloadavg()[0], "folds": {}}
    for fold in todo:
        print(f"== held out: {fold.held_out.name}", flush=True)
        try:
            row = run_fold(fold, a.views, a.seed, a.work / "packs")
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
