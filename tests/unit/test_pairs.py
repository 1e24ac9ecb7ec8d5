"""The pair-set reader (models/pair_sets.py) and the cross-date view protocol (sim/pairs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from skyfix.models.pair_sets import DEFAULT_GSD_M, read_bgr, read_pair, read_pair_set
from skyfix.runtime.core.errors import SkyfixError
from skyfix.sim.pairs import make_views, view_side


def make_set(root: Path, meta: dict | None = None, rows: str | None = None,
             sizes: dict[str, int] | None = None) -> Path:
    """A pair set in `root`: images A/x.png, B/x.png (400 px unless `sizes` says)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, size in (sizes or {"A/p1.png": 400, "B/p1.png": 400}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img = cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3)).astype(np.uint8), (0, 0), 2)
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)
        cv2.imwrite(str(root / name), img)
    meta = {"gsd_m": 0.3, "rgb_bands": [1, 2, 3], "registered": True, "licence": "test"} \
        if meta is None else meta
    (root / "meta.json").write_text(json.dumps(meta))
    (root / "pairs.csv").write_text(rows if rows is not None else "id,a,b\np1,A/p1.png,B/p1.png\n")
    return root


def test_a_good_set(tmp_path):
    pset, problems = read_pair_set(make_set(tmp_path / "s"))
    assert problems == [] and pset.name == "s" and pset.gsd_m == 0.3 and not pset.gsd_assumed
    assert pset.registered and pset.rgb_bands == (1, 2, 3) and pset.licence == "test"
    (p,) = pset.pairs
    assert p.id == "p1" and (p.width, p.height) == (400, 400) and p.a.is_file()


def test_unknown_gsd_is_assumed_and_flagged_unregistered_is_kept(tmp_path):
    meta = {"gsd_m": None, "rgb_bands": [1, 2, 3], "registered": False, "licence": "x"}
    pset, _ = read_pair_set(make_set(tmp_path / "s", meta))
    assert pset.gsd_m == DEFAULT_GSD_M and pset.gsd_assumed and not pset.registered


def test_missing_file_and_size_mismatch_name_the_pair_and_the_rest_goes_on(tmp_path):
    rows = ("id,a,b\np1,A/p1.png,B/p1.png\ngone,A/p1.png,B/nothere.png\n"
            "small,A/p1.png,B/small.png\n")
    sizes = {"A/p1.png": 400, "B/p1.png": 400, "B/small.png": 300}
    pset, problems = read_pair_set(make_set(tmp_path / "s", rows=rows, sizes=sizes))
    assert [p.id for p in pset.pairs] == ["p1"]
    assert len(problems) == 2
    assert problems[0].startswith("s/gone:") and "nothere.png is missing" in problems[0]
    assert problems[1].startswith("s/small:") and "400x400 vs 300x300" in problems[1]
    assert all("\n" not in p for p in problems)


def _geotiff(path: Path, image: np.ndarray, west: float, north: float, gsd: float) -> None:
    import rasterio
    from affine import Affine

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = image.shape[:2]
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(gsd, 0, west, 0, -gsd, north)) as ds:
        ds.write(image[:, :, ::-1].transpose(2, 0, 1))


def test_georeferenced_images_are_paired_by_their_georeference(tmp_path):
    """What NAIP's yearly tiles of one quarter-quad do: b's grid starts 2 m east and 1 m
    south of a's (5 m pixels) and is a row shorter. The pair is a's pixels that b covers
    wholly, b resampled onto them: the same ground at the same pixel, to the interpolation."""
    rng = np.random.default_rng(2)
    fine = cv2.GaussianBlur(rng.integers(0, 255, (1200, 1200, 3)).astype(np.uint8), (0, 0), 8)
    fine = cv2.normalize(fine, None, 0, 255, cv2.NORM_MINMAX)

    def at(west_m: float, north_m: float, h: int) -> np.ndarray:  # 5 m pixels of 1 m ground
        x0, y0 = int(west_m), int(-north_m)
        return cv2.resize(fine[y0:y0 + 5 * h, x0:x0 + 5 * 200], (200, h),
                          interpolation=cv2.INTER_AREA)

    root = tmp_path / "geo"
    _geotiff(root / "A" / "p1.tif", at(0, 0, 200), 0, 0, 5.0)
    _geotiff(root / "B" / "p1.tif", at(2, -1, 199), 2, -1, 5.0)
    make_set(root, sizes={}, rows="id,a,b\np1,A/p1.tif,B/p1.tif\n")
    pset, problems = read_pair_set(root)
    assert problems == []
    (p,) = pset.pairs
    assert (p.col, p.row, p.width, p.height) == (1, 1, 199, 198)
    a, b = read_pair(p, pset.rgb_bands)
    assert a.shape == b.shape == (198, 199, 3)
    diff = np.abs(a.astype(float) - b.astype(float))[2:-2, 2:-2].mean()
    unpaired = np.abs(read_bgr(p.a, (1, 2, 3))[:198, :199].astype(float)
                      - read_bgr(p.b, (1, 2, 3))[:198, :199].astype(float))[2:-2, 2:-2].mean()
    assert diff < 0.5 * unpaired and diff < 2.0


def test_unreadable_image_is_a_pair_problem(tmp_path):
    root = make_set(tmp_path / "s")
    (root / "B/p1.png").write_bytes(b"not a png")
    pset, problems = read_pair_set(root)
    assert pset.pairs == () and "s/p1: unreadable image" in problems[0]


@pytest.mark.parametrize(("setup", "match"), [
    (lambda r: (r / "meta.json").unlink(), "no meta.json"),
    (lambda r: (r / "meta.json").write_text("{oops"), "meta.json is unparsable"),
    (lambda r: (r / "meta.json").write_text("[1]"), "not a JSON object"),
    (lambda r: (r / "meta.json").write_text('{"gsd_m": -1}'), "gsd_m must be a positive"),
    (lambda r: (r / "meta.json").write_text('{"gsd_m": "0.5"}'), "gsd_m must be a positive"),
    (lambda r: (r / "meta.json").write_text('{"rgb_bands": [0, 1, 2]}'), "rgb_bands"),
    (lambda r: (r / "pairs.csv").unlink(), "no pairs.csv"),
    (lambda r: (r / "pairs.csv").write_text("x,y\n1,2\n"), "header id,a,b"),
    (lambda r: (r / "pairs.csv").write_text("id,a,b\n"), "at least one row"),
    (lambda r: (r / "pairs.csv").write_bytes(b"id,a,b\n\xff\xfe,\x00\n"), "pairs.csv"),
])
def test_bad_sets_are_one_line_errors(tmp_path, setup, match):
    root = make_set(tmp_path / "s")
    setup(root)
    with pytest.raises(SkyfixError, match=match) as e:
        read_pair_set(root)
    assert "\n" not in str(e.value) and "s" in str(e.value)


def test_not_a_folder(tmp_path):
    with pytest.raises(SkyfixError, match="no such folder"):
        read_pair_set(tmp_path / "nothing")


def test_views_follow_the_protocol_and_are_seeded(tmp_path):
    root = make_set(tmp_path / "s", sizes={"A/p1.png": 500, "B/p1.png": 500})
    pset, _ = read_pair_set(root)
    b = read_bgr(pset.pairs[0].b, pset.rgb_bands)
    views = make_views(pset.pairs[0], b, 6, np.random.default_rng(3))
    again = make_views(pset.pairs[0], b, 6, np.random.default_rng(3))
    s = view_side(500, 500)
    assert s == 300 and len(views) == 6
    for v, w in zip(views, again, strict=True):
        assert v.image.shape == (s, s, 3) and np.array_equal(v.image, w.image)
        assert abs(v.heading_deg) <= 5 and 0.97 <= v.scale <= 1.03
        off = np.hypot(v.prior_px[0] - v.truth_px[0], v.prior_px[1] - v.truth_px[1])
        assert off <= s / 4 and v.prior_half_px == s
        # the view's centre shows image b at the truth: its centre patch, searched for in
        # b within 30 px of the truth, is found there
        c, r = (s - 1) / 2, 20
        tmpl = cv2.getRectSubPix(v.image, (2 * r + 1, 2 * r + 1), (c, c))
        x, y = v.truth_px
        area = cv2.getRectSubPix(b, (2 * (r + 30) + 1, 2 * (r + 30) + 1), (x, y))
        score = cv2.matchTemplate(area, tmpl, cv2.TM_CCOEFF_NORMED)
        dy, dx = np.unravel_index(np.argmax(score), score.shape)
        assert np.hypot(dx - 30, dy - 30) <= 1.5 and score.max() > 0.7
