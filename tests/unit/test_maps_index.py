"""Tile retrieval on a pack built from a crop of the bundled real Vienna orthophoto."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
from rasterio.windows import from_bounds as window_from_bounds

from skyfix.maps.build import build_pack
from skyfix.maps.index import in_window, ivf_lists, search, window_ids
from skyfix.maps.pack import MapPack, verify_pack
from skyfix.models.features import RootSiftEncoder
from skyfix.runtime.core.errors import SkyfixError

ENC = RootSiftEncoder()


@pytest.fixture(scope="module")
def crop(ortho_path, tmp_path_factory) -> Path:
    """A 700 x 700 px (210 m) georeferenced window of the bundled orthophoto."""
    dst = tmp_path_factory.mktemp("crop") / "crop.tif"
    with rasterio.open(ortho_path) as src:
        win = Window(900, 300, 700, 700)
        data = src.read(window=win)
        profile = dict(driver="GTiff", width=700, height=700, count=3, dtype="uint8",
                       crs=src.crs, transform=src.window_transform(win))
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


@pytest.fixture(scope="module")
def pack(crop, tmp_path_factory) -> MapPack:
    path = tmp_path_factory.mktemp("pack") / "pack"
    return MapPack.open(build_pack([crop], path, ENC, tile_px=256, progress=False))


def query_at(pack: MapPack, crop: Path, bounds, shift_m=(0.0, 0.0), size: int = 256):
    """Global descriptor of the crop over map `bounds` moved by `shift_m` (E, N)."""
    b = np.asarray(bounds, np.float64) + np.array([*shift_m, *shift_m])
    with rasterio.open(crop) as src:
        win = window_from_bounds(*b, transform=src.transform)
        rgb = src.read(window=win, out_shape=(3, size, size), resampling=Resampling.average,
                       boundless=True)
    gray = cv2.cvtColor(np.ascontiguousarray(rgb.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)
    return pack.global_descriptor(ENC.extract(gray).descriptors)


def test_global_search_finds_the_tile_of_the_spot(pack, crop):
    level0 = np.flatnonzero(pack.tile_level == 0)
    for tile in level0[::3]:
        hits = search(pack, query_at(pack, crop, pack.tile_bounds_en[tile]), 0, 5)
        assert hits[0].tile_id == tile and hits[0].level == 0
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert all(pack.tile_level[h.tile_id] == 0 for h in hits) and len(hits) == 5
    tile = int(np.flatnonzero(pack.tile_level == 1)[1])
    hits = search(pack, query_at(pack, crop, pack.tile_bounds_en[tile]), 1, 10)
    assert hits[0].tile_id == tile and len(hits) == 4  # level 1 has 2 x 2 tiles


def test_shifted_view_still_finds_its_tile(pack, crop):
    tile = 12  # centre tile of level 0
    hits = search(pack, query_at(pack, crop, pack.tile_bounds_en[tile], (8.0, -6.0)), 0, 3)
    assert hits[0].tile_id == tile and -1.0 <= hits[-1].score <= hits[0].score <= 1.0


def test_windowed_search(pack, crop):
    tile = 6
    q = query_at(pack, crop, pack.tile_bounds_en[tile])
    centre = pack.tile_center_en[tile] + np.array([5.0, -5.0])
    cov = np.diag([45.0**2, 30.0**2])
    hits = search(pack, q, 0, 50, (centre, cov))
    assert hits[0].tile_id == tile
    ids = np.array([h.tile_id for h in hits])
    d = pack.tile_center_en[ids] - centre
    b = pack.tile_bounds_en[ids]
    in_ellipse = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) <= 1
    covers = (b[:, 0] <= centre[0]) & (centre[0] <= b[:, 2]) \
        & (b[:, 1] <= centre[1]) & (centre[1] <= b[:, 3])
    assert np.all(in_ellipse | covers)
    # every level-0 tile that satisfies the rule is returned, the far ones are not
    everything = search(pack, q, 0, 1000)
    assert len(hits) < len(everything) == 25
    far = np.linalg.norm(pack.tile_center_en - centre, axis=1) > 80
    assert not far[ids].any() and far[pack.tile_level == 0].any()


def test_window_edge_cases(pack, crop):
    q = query_at(pack, crop, pack.tile_bounds_en[0])
    # a window far outside the map: nothing
    outside = pack.tile_center_en.mean(0) + np.array([5000.0, 0.0])
    assert search(pack, q, 0, 5, (outside, np.eye(2) * 100.0)) == []
    # a point window (zero covariance): only the tiles that contain the point
    point = pack.tile_bounds_en[0, :2] + 1.0  # near the south-west corner of tile 0
    inside = in_window(pack, point, np.zeros((2, 2)))
    b = pack.tile_bounds_en
    expect = (b[:, 0] <= point[0]) & (point[0] <= b[:, 2]) & (b[:, 1] <= point[1]) \
        & (point[1] <= b[:, 3])
    assert np.array_equal(inside, expect) and inside[0]
    hits = search(pack, q, 0, 5, (point, np.zeros((2, 2))))
    assert {h.tile_id for h in hits} == set(np.flatnonzero(expect & (pack.tile_level == 0)))
    assert search(pack, q, 0, 0) == []


def test_bad_arguments(pack):
    q = np.zeros(pack.descriptors.shape[1], np.float32)
    with pytest.raises(SkyfixError, match="levels 0..1"):
        search(pack, q, 2, 5)
    with pytest.raises(SkyfixError, match="query descriptor has 10 values"):
        search(pack, q[:10], 0, 5)
    hits = search(pack, q, 0, 3)  # a zero query scores every tile 0, ties by id
    assert [h.tile_id for h in hits] == [0, 1, 2] and all(h.score == 0 for h in hits)


@pytest.fixture(scope="module")
def indexed(crop, tmp_path_factory) -> MapPack:
    """The same pack as `pack`, with a FAISS index forced onto every level."""
    path = tmp_path_factory.mktemp("indexed") / "pack"
    return MapPack.open(build_pack([crop], path, ENC, tile_px=256, index_min_tiles=0,
                                   progress=False))


def test_faiss_index_returns_the_exact_top1(pack, indexed, crop):
    m = indexed.manifest
    assert m.index_levels == (0, 1) and set(indexed.indexes) == {0, 1} and not pack.indexes
    assert {"index_l0.faiss", "index_l1.faiss"} <= set(m.files)
    assert m.index_nprobe == ivf_lists(25)[1]
    assert np.array_equal(indexed.descriptors, pack.descriptors)  # deterministic build
    for level in (0, 1):
        for i, tile in enumerate(np.flatnonzero(pack.tile_level == level)[::2]):
            q = query_at(pack, crop, pack.tile_bounds_en[tile], (9.0 * (i % 2), -7.0 * (i % 2)))
            exact, approx = search(pack, q, level, 3), search(indexed, q, level, 3)
            assert approx[0].tile_id == exact[0].tile_id
            assert approx[0].score == pytest.approx(exact[0].score, abs=1e-5)
    # a windowed search never uses the index: same hits with and without it
    q = query_at(pack, crop, pack.tile_bounds_en[6])
    window = (pack.tile_center_en[6], np.diag([60.0**2, 60.0**2]))
    assert search(indexed, q, 0, 50, window) == search(pack, q, 0, 50, window)


def test_flipped_byte_in_the_index_is_caught(indexed, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(indexed.path, bad)
    data = bytearray((bad / "index_l0.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "index_l0.faiss").write_bytes(bytes(data))
    assert verify_pack(bad) == ["index_l0.faiss does not match its manifest (sha256 mismatch)"]
    with pytest.raises(SkyfixError, match="index_l0.faiss does not match"):
        MapPack.open(bad)


def test_window_ids_match_the_full_window_test(pack):
    rng = np.random.default_rng(3)
    lo, hi = pack.tile_bounds_en[:, :2].min(0) - 50, pack.tile_bounds_en[:, 2:].max(0) + 50
    for _ in range(200):
        centre = rng.uniform(lo, hi)
        a = rng.normal(size=(2, 2)) * rng.uniform(0, 80)
        cov = a @ a.T if rng.random() < 0.8 else np.zeros((2, 2))
        assert np.array_equal(window_ids(pack, centre, cov),
                              np.flatnonzero(in_window(pack, centre, cov)))
    assert len(window_ids(pack, np.array([np.nan, 0.0]), np.eye(2))) == 0
