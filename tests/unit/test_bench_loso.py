"""benchmarks/bench_loso.py's folds: each set held out once, trained on the others alone
(with their licences), the recipe's other settings kept, or on the recipe's own data less
what images the held-out set's ground; bad sets refused in one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from affine import Affine
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


def _geotiff(path: Path, east: float, north: float) -> Path:
    """A 64 px GeoTIFF at 1 m/px, UTM 33N, its top left corner at (east, north)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(1.0, 0.0, east, 0.0, -1.0, north)) as ds:
        ds.write(np.zeros((3, 64, 64), np.uint8))
    return path


def _geo_pair_set(root: Path, east: float) -> Path:
    _geotiff(root / "A" / "p.tif", east, 5_300_000.0)
    _geotiff(root / "B" / "p.tif", east, 5_300_000.0)
    (root / "pairs.csv").write_text("id,a,b\np,A/p.tif,B/p.tif\n")
    (root / "meta.json").write_text(json.dumps({"gsd_m": 1.0, "rgb_bands": [1, 2, 3],
                                                "registered": True, "licence": "x"}))
    return root


def test_recipe_folds_leave_out_what_images_the_held_out_ground(loso, tmp_path):
    here = _geo_pair_set(tmp_path / "here", 500_000.0)
    inside = _geo_pair_set(tmp_path / "inside", 600_000.0)
    plain = _pair_set(tmp_path / "plain", "y")  # no georeference: only its folder counts
    for year in (2009, 2014):  # another download of `here`'s ground, 30 m over
        _geotiff(tmp_path / "series" / f"{year}.tif", 500_030.0, 5_300_030.0)
    _geotiff(tmp_path / "far.tif", 700_000.0, 5_300_000.0)
    recipe = TrainConfig("shipped", tmp_path / "out", (
        Source("series", tmp_path / "series", "public domain"),
        Source("pairs", inside, "x"),
        Source("ortho", tmp_path / "far.tif", "CC BY 4.0"),
        Source("series", tmp_path / "series", "public domain", split="val")), steps=7)
    work = tmp_path / "work"
    got = {f.held_out.name: f.config for f in loso.folds([here, inside, plain], recipe, work,
                                                          "recipe")}
    assert [s.path.name for s in got["here"].data] == ["inside", "far.tif"]
    assert [s.path.name for s in got["inside"].data] == ["series", "far.tif", "series"]
    assert got["here"].model_id == "loso-here" and got["inside"].model_id == "loso-inside"
    assert got["here"].output == work / "here" / "train"
    # nothing of the recipe's data on its ground: the recipe itself, trained once for all
    assert got["plain"] == replace(recipe, output=work / "recipe" / "train")
    assert got["plain"].fingerprint() == recipe.fingerprint()
    only_here = replace(recipe, data=recipe.data[:1])
    with pytest.raises(SkyfixError, match="held out here: none of the recipe's training"):
        loso.folds([here, plain], only_here, work, "recipe")
    with pytest.raises(SkyfixError, match="unknown --data"):
        loso.folds([here, plain], recipe, work, "all")


def test_a_fold_of_the_unchanged_recipe_takes_the_shipped_weights_that_are_its_run(
        loso, tmp_path):
    from skyfix.models.manifest import manifest_path
    from skyfix.models.xfeat import XD_MODEL

    cfg = TrainConfig("shipped", tmp_path / "train", (), steps=7)
    shipped = tmp_path / "weights" / "xfeat-xd.onnx"
    shipped.parent.mkdir()
    shipped.write_bytes(XD_MODEL.read_bytes())
    raw = json.loads(manifest_path(XD_MODEL).read_text())
    raw["source"].update(steps="7 of 7", config_sha256=cfg.fingerprint())
    manifest_path(shipped).write_text(json.dumps(raw))
    assert loso._trained_to(cfg, shipped) == shipped
    other = replace(cfg, lr=0.5)  # another recipe: not its run
    assert loso._trained_to(other, shipped) is None
