"""Retrieval modes on a pack of the bundled real orthophoto: tracking, window, global."""

from __future__ import annotations

import numpy as np
import pytest

from skyfix.maps.build import build_pack
from skyfix.maps.pack import MapPack
from skyfix.runtime.core.config import RetrieveConfig
from skyfix.runtime.nav.retrieve import NO_PRIOR, retrieve, window_prior

CFG = RetrieveConfig(top_k=4, tracking_k=2, window_sigma=3.0, window_margin_m=10.0)


@pytest.fixture(scope="module")
def pack(ortho_path, tmp_path_factory) -> MapPack:
    out = tmp_path_factory.mktemp("retrieve") / "pack"
    return MapPack.open(build_pack([ortho_path], out, gsds_m=(0.6,), tile_px=256,
                                   progress=False))


def _query(pack: MapPack, tile_id: int) -> np.ndarray:
    _, desc = pack.tile_features(tile_id)
    return pack.global_descriptor(desc)


def test_tight_prior_takes_the_nearest_tiles(pack):
    target = int(np.argmin(np.linalg.norm(pack.tile_center_en
                                          - pack.tile_center_en.mean(0), axis=1)))
    centre = pack.tile_center_en[target] + np.array([4.0, -3.0])
    prior = window_prior(centre, np.eye(2) * 4.0, "filter", CFG)  # 3 sigma = 6 m + 10 m
    hits = retrieve(pack, np.zeros(pack.descriptors.shape[1]), 0, prior, CFG)
    assert [h.tile_id for h in hits][0] == target  # no appearance needed
    assert len(hits) == CFG.tracking_k
    dist = [np.linalg.norm(pack.tile_center_en[h.tile_id] - centre) for h in hits]
    assert dist == sorted(dist)


def test_wide_prior_searches_by_appearance_inside_the_window(pack):
    target = 3
    far = pack.tile_center_en[target] + np.array([60.0, 0.0])
    prior = window_prior(far, np.eye(2) * 30.0**2, "gnss", CFG)  # 90 m + 10 m window
    hits = retrieve(pack, _query(pack, target), 0, prior, CFG)
    assert hits[0].tile_id == target
    assert len(hits) == CFG.top_k
    d = np.linalg.norm(pack.tile_center_en[[h.tile_id for h in hits]] - far, axis=1)
    bounds = pack.tile_bounds_en[[h.tile_id for h in hits]]
    assert np.all((d <= 100.0) | ((bounds[:, 0] <= far[0]) & (far[0] <= bounds[:, 2])))


def test_no_prior_searches_the_whole_level(pack):
    n = int((pack.tile_level == 0).sum())
    assert n > 10
    for target in (0, n // 2, n - 1):
        hits = retrieve(pack, _query(pack, target), 0, NO_PRIOR, CFG)
        assert hits[0].tile_id == target
