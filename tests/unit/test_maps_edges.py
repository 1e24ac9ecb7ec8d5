"""Drone-made and small orthos: maps smaller than a tile, ragged no-data edges, and Web
Mercator inputs reprojected so that pack metres are ground metres."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from skyfix.maps.build import build_pack
from skyfix.maps.pack import MapPack
from skyfix.models.features import RootSiftEncoder


def _crop(src_path, dst, win: Window, holes: np.ndarray | None = None):
    with rasterio.open(src_path) as src:
        data = src.read(window=win)
        profile = dict(driver="GTiff", width=int(win.width), height=int(win.height),
                       count=3, dtype="uint8", crs=src.crs,
                       transform=src.window_transform(win))
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        if holes is not None:
            out.write_mask(np.where(holes, 0, 255).astype(np.uint8))
    return dst


def test_a_map_smaller_than_a_tile_is_one_tile(tmp_path, ortho_path):
    crop = _crop(ortho_path, tmp_path / "small.tif", Window(600, 600, 300, 260))
    pack = build_pack([crop], tmp_path / "pack", RootSiftEncoder(), tile_px=512,
                      gsds_m=[0.3], progress=False)
    m = MapPack.open(pack).manifest
    assert m.tile_count == (1,)
    assert m.build["tile_usage"]["tiles_skipped"] == [0]


def test_ragged_edge_tiles_move_inwards_and_the_rest_is_counted(tmp_path, ortho_path):
    size = 900
    yy, xx = np.mgrid[0:size, 0:size]
    # a drone ortho's ragged border: no imagery beyond a wavy line, 150..330 px from the edge
    edge = 150 + 90 * (1 + np.sin(yy / 37.0))
    holes = (xx < edge) | (yy < 150)
    crop = _crop(ortho_path, tmp_path / "ragged.tif", Window(300, 300, size, size), holes)
    pack = build_pack([crop], tmp_path / "pack", RootSiftEncoder(), tile_px=256,
                      overlap=0.0, gsds_m=[0.3], progress=False)
    usage = MapPack.open(pack).manifest.build["tile_usage"]
    strict = build_pack([crop], tmp_path / "strict", RootSiftEncoder(), tile_px=256,
                        overlap=0.0, gsds_m=[0.3], progress=False, min_valid_fraction=0.95)
    usage_strict = MapPack.open(strict).manifest.build["tile_usage"]
    assert usage["tiles_shifted"] > 0
    assert usage_strict["tiles_skipped"][0] > usage["tiles_skipped"][0]
    assert usage_strict["skipped_imagery_m2"][0] > 0
    tiles = np.load(pack / "tiles.npy")
    assert (tiles["valid_fraction"] >= 0.5).all()


def test_web_mercator_input_is_reprojected_to_ground_metres(tmp_path, ortho_path):
    crop = _crop(ortho_path, tmp_path / "crop.tif", Window(400, 400, 600, 600))
    merc = tmp_path / "merc.tif"
    with rasterio.open(crop) as src:
        lat = 48.186
        res = 0.3 / math.cos(math.radians(lat))  # 0.3 m on the ground
        with WarpedVRT(src, crs="EPSG:3857", resampling=Resampling.bilinear,
                       resolution=res) as vrt:
            profile = dict(driver="GTiff", width=vrt.width, height=vrt.height, count=3,
                           dtype="uint8", crs=vrt.crs, transform=vrt.transform)
            with rasterio.open(merc, "w", **profile) as out:
                out.write(vrt.read([1, 2, 3]))
    native = build_pack([crop], tmp_path / "native", RootSiftEncoder(), tile_px=256,
                        progress=False)
    pack = build_pack([merc], tmp_path / "pack", RootSiftEncoder(), tile_px=256,
                      progress=False)
    m, n = MapPack.open(pack).manifest, MapPack.open(native).manifest
    assert m.crs_epsg == 32633 and n.crs_epsg == 31256
    assert m.gsds_m[0] == pytest.approx(0.3, rel=0.02)
    width = lambda b: b[2] - b[0]  # noqa: E731
    assert width(m.bounds_en) == pytest.approx(width(n.bounds_en), rel=0.02)
    credit = json.loads((pack / "manifest.json").read_text())["build"]["credits"][0]
    assert credit["crs"] == "EPSG:3857"
