"""The benchmark baseline (benchmarks/baseline.py: SIFT + brute force over the prior
window) finds the right tile and position on frames rendered from the bundled ortho,
and refuses a frame of somewhere the map does not cover."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from conftest import benchmark_script
from rasterio.windows import Window

from skyfix.maps.build import build_pack
from skyfix.maps.pack import MapPack
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.types import Fix, Frame, Telemetry
from skyfix.runtime.nav.retrieve import NO_PRIOR, window_prior
from skyfix.sim.flight import FlightSpec, PoseRenderer

SPEC = FlightSpec(agl_m=100.0, photometric=False, noise_sigma=0.0)
CROP = (300, 200, 640)  # col, row, size (px at 0.30 m) of the bundled ortho


@pytest.fixture(scope="module")
def baseline_module():
    yield from benchmark_script("baseline")


@pytest.fixture(scope="module")
def crop(ortho_path, tmp_path_factory) -> Path:
    col, row, size = CROP
    dst = tmp_path_factory.mktemp("crop") / "crop.tif"
    with rasterio.open(ortho_path) as src:
        win = Window(col, row, size, size)
        data = src.read(window=win)
        profile = dict(driver="GTiff", width=size, height=size, count=src.count,
                       dtype=src.dtypes[0], crs=src.crs, transform=src.window_transform(win))
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


@pytest.fixture(scope="module")
def localizer(baseline_module, crop, tmp_path_factory):
    pack = MapPack.open(build_pack([crop], tmp_path_factory.mktemp("pack") / "pack",
                                   gsds_m=[0.3], tile_px=256, progress=False))
    return baseline_module.BaselineLocalizer(pack, SPEC.camera, Config())


def frame_at(ortho: Path, en: np.ndarray, yaw_rad: float) -> tuple[Frame, Telemetry]:
    """A frame rendered at map point `en`, SPEC.agl_m over flat ground, slightly tilted."""
    rpy = np.array([0.02, -0.015, yaw_rad])
    with PoseRenderer(ortho, SPEC) as r:
        image = r.render(en, SPEC.agl_m, rpy)
    return Frame(0, 1, image), Telemetry(1, *rpy, SPEC.agl_m, SPEC.agl_m)


def test_every_tile_has_sift_features(localizer):
    assert len(localizer.tiles) == localizer.pack.n_tiles
    counts = [len(t.descriptors) for t in localizer.tiles.values()]
    assert min(counts) > 0 and np.median(counts) > 300, counts


@pytest.mark.parametrize("with_prior", [False, True])
def test_finds_the_tile_and_position_of_a_frame(localizer, crop, with_prior):
    with rasterio.open(crop) as src:
        w, s, e, n = src.bounds
    truth = np.array([w + 0.45 * (e - w), s + 0.55 * (n - s)])
    frame, tel = frame_at(crop, truth, yaw_rad=0.6)
    look = localizer.look(frame, tel)
    prior = (window_prior(truth + [15.0, -10.0], 20.0**2 * np.eye(2), "gnss", Config().retrieve)
             if with_prior else NO_PRIOR)
    tiles = localizer.window_tiles(look.level, prior)
    before = localizer.tiles_matched
    fix = localizer.locate(look, prior)
    assert localizer.tiles_matched - before == len(tiles)  # brute force: every tile in the window
    if with_prior:
        assert len(tiles) < localizer.pack.n_tiles
    assert isinstance(fix, Fix), fix
    err = np.hypot(fix.east_m - truth[0], fix.north_m - truth[1])
    assert err < 2.0  # attitude is exact here; SIFT + homography on a 0.3 m map
    # the winning tile is one the camera sees: its centre lies in the true footprint
    footprint = (look.view.footprint_m + truth).astype(np.float32)
    centre = tuple(float(v) for v in localizer.pack.tile_center_en[fix.tile_id])
    assert cv2.pointPolygonTest(footprint, centre, False) > 0
    assert abs(fix.agl_m - SPEC.agl_m) < 0.05 * SPEC.agl_m
    assert fix.inliers >= Config().match.min_inliers


def test_refuses_a_frame_the_map_does_not_show(localizer, ortho_path, crop):
    with rasterio.open(crop) as c, rasterio.open(ortho_path) as full:
        outside = np.array([c.bounds.left - 60.0, full.bounds.bottom + 60.0])
        assert outside[1] < c.bounds.bottom
    frame, tel = frame_at(ortho_path, outside, yaw_rad=0.0)
    fix = localizer.locate(localizer.look(frame, tel), NO_PRIOR)
    assert not isinstance(fix, Fix), fix
