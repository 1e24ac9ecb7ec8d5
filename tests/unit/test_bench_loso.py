"""benchmarks/bench_loso.py's folds: each set held out once, trained on the others alone
(with their licences), the recipe's other settings kept; bad sets refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import benchmark_script

from skyfix.models.train import TrainConfig
from skyfix.models.train_data import Source
from skyfix.runtime.core.errors import SkyfixError


@pytest.fixture(scope="module")
def loso():
    yield from benchmark_script("bench_loso")


def _pair_set(root: Path, licence: str) -> Path:
    (root / "A").mkdir(parents=True)
    (root / "B").mkdir()
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    cv2.imwrite(str(root / "A" / "p.png"), image)
    cv2.imwrite(str(root / "B" / "p.png"), image)
    (root / "pairs.csv").write_text("id,a,b\np,A/p.png,B/p.png\n")
    (root / "meta.json").write_text(json.dumps({"gsd_m": 0.5, "rgb_bands": [1, 2, 3],
                                                "registered": True, "licence": licence}))
    return root


def test_each_set_held_out_once_and_never_trained_on(loso, tmp_path):
    sets = [_pair_set(tmp_path / n, f"licence of {n}") for n in ("one", "two", "three")]
    recipe = TrainConfig("shipped", tmp_path / "out", (Source("ortho", tmp_path / "o.tif",
                                                              "CC BY 4.0"),), steps=7, lr=0.01)
    folds = loso.folds(sets, recipe, tmp_path / "work")
    assert [f.held_out for f in folds] == sets
    for fold in folds:
        cfg = fold.config
        trained = [s.path for s in cfg.data]
        assert fold.held_out not in trained and sorted(trained) == sorted(
            s for s in sets if s != fold.held_out)  # the recipe's own data is left out
        assert all(s.kind == "pairs" and s.split == "train"
                   and s.licence == f"licence of {s.path.name}" for s in cfg.data)
        assert cfg.model_id == f"loso-{fold.held_out.name}"
        assert cfg.output == tmp_path / "work" / fold.held_out.name / "train"
        assert (cfg.steps, cfg.lr, cfg.batch) == (7, 0.01, recipe.batch)


def test_bad_sets_are_one_line(loso, tmp_path):
    one = _pair_set(tmp_path / "a" / "same", "x")
    recipe = TrainConfig("r", tmp_path / "out", ())
    with pytest.raises(SkyfixError, match="at least two"):
        loso.folds([one], recipe, tmp_path / "w")
    with pytest.raises(SkyfixError, match="share a folder name"):
        loso.folds([one, _pair_set(tmp_path / "b" / "same", "y")], recipe, tmp_path / "w")


def test_a_fold_is_trained_again_unless_its_weights_are_a_finished_run_of_it(loso, tmp_path):
    from skyfix.models.manifest import manifest_path
    from skyfix.models.xfeat import XD_MODEL

    cfg = TrainConfig("loso-x", tmp_path / "train", (), steps=7)
    assert loso._trained_to(cfg) is None  # nothing yet
    cfg.output.mkdir()
    onnx = cfg.output / "xfeat-xd.onnx"
    onnx.write_bytes(XD_MODEL.read_bytes())
    raw = json.loads(manifest_path(XD_MODEL).read_text())

    def exported(steps: str, fingerprint: str) -> None:
        raw["source"].update(steps=steps, config_sha256=fingerprint)
        manifest_path(onnx).write_text(json.dumps(raw))

    exported("7 of 7", cfg.fingerprint())
    assert loso._trained_to(cfg) == onnx
    exported("5 of 7", cfg.fingerprint())  # stopped early
    assert loso._trained_to(cfg) is None
    exported("7 of 7", TrainConfig("loso-x", tmp_path, (), steps=7, lr=0.5).fingerprint())
    assert loso._trained_to(cfg) is None  # another recipe
