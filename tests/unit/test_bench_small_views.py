"""benchmarks/bench_small_views.py: pair sets cut into small pairs that keep the pixels of
both dates in register and the set's meta.json; bad arguments refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import benchmark_script

from skyfix.models.pair_sets import read_pair, read_pair_set


@pytest.fixture(scope="module")
def small():
    yield from benchmark_script("bench_small_views")


def _pair_set(root: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    (root / "A").mkdir(parents=True)
    (root / "B").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for name, (h, w) in sizes.items():
        a = rng.integers(0, 255, (h, w, 3), np.uint8)
        cv2.imwrite(str(root / "A" / f"{name}.png"), a)
        cv2.imwrite(str(root / "B" / f"{name}.png"), 255 - a)
        rows.append(f"{name},A/{name}.png,B/{name}.png")
    (root / "pairs.csv").write_text("id,a,b\n" + "\n".join(rows) + "\n")
    (root / "meta.json").write_text(json.dumps({"gsd_m": 1.5, "rgb_bands": [1, 2, 3],
                                                "registered": True, "licence": "test"}))
    return root


def test_pairs_are_cut_into_tiles_that_keep_both_dates_in_register(small, tmp_path):
    src = _pair_set(tmp_path / "set", {"big": (600, 520), "small": (200, 180)})
    dst = tmp_path / "cut"
    assert small.cut_set(src, dst, 256, 3, seed=0) == 3 + 1  # big: 4 whole tiles, 3 drawn
    cut, problems = read_pair_set(dst)
    assert not problems and cut.gsd_m == 1.5 and cut.registered
    assert json.loads((dst / "meta.json").read_text())["licence"] == "test"
    original = {p.id: read_pair(p, (1, 2, 3)) for p in read_pair_set(src)[0].pairs}
    for pair in cut.pairs:
        a, b = read_pair(pair, cut.rgb_bands)
        source, y, x = pair.id.rsplit("_", 2)
        oa, ob = original[source]
        h, w = a.shape[:2]
        assert (h, w) == ((256, 256) if source == "big" else (200, 180))  # small: kept whole
        assert np.array_equal(a, oa[int(y):int(y) + h, int(x):int(x) + w])
        assert np.array_equal(b, ob[int(y):int(y) + h, int(x):int(x) + w])
    # the same seed draws the same tiles
    assert small.cut_set(src, tmp_path / "again", 256, 3, seed=0) == 4
    assert (tmp_path / "again" / "pairs.csv").read_text() == (dst / "pairs.csv").read_text()


def test_bad_arguments_are_one_line(small, tmp_path, capsys):
    assert small.main(["--pairs", str(tmp_path / "none"), "--out", str(tmp_path / "o.json")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    src = _pair_set(tmp_path / "set", {"p": (300, 300)})
    assert small.main(["--pairs", str(src), "--out", str(tmp_path / "o.json"),
                       "--tile", "32"]) == 2
    assert "--tile" in capsys.readouterr().err
