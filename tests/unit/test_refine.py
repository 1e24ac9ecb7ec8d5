"""Refinement of matched pairs on the map's own pixels (runtime/nav/refine.py), and what it
does to fixes made with XFeat, whose keypoints are placed to about a pixel."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import rasterio
from conftest import small_pack
from test_localize import CAM, render  # the test module next door

from skyfix.maps.pack import MapPack
from skyfix.maps.pixels import ORTHO_FILE, MapImage, read_map_image
from skyfix.models.features import RootSiftEncoder
from skyfix.models.xfeat import XFeatEncoder
from skyfix.runtime.core.config import MatchConfig, RectifyConfig
from skyfix.runtime.core.types import Fix, Telemetry, View
from skyfix.runtime.nav.match import Candidate, locate
from skyfix.runtime.nav.rectify import rectify
from skyfix.runtime.nav.refine import refine_pairs

GSD = 0.3


def pixels_of(gray: np.ndarray, left: float, top: float, valid: np.ndarray | None = None):
    """MapPixels over a [H, W] gray map whose top-left corner is at map (left, top)."""
    valid = np.ones(gray.shape, bool) if valid is None else valid

    def pixels(gsd_m: float, box: tuple[float, float, float, float]) -> MapImage | None:
        assert gsd_m == GSD
        c0, r0 = max(0, int((box[0] - left) / GSD)), max(0, int((top - box[3]) / GSD))
        c1, r1 = int(np.ceil((box[2] - left) / GSD)), int(np.ceil((top - box[1]) / GSD))
        return MapImage(gray[r0:r1, c0:c1], valid[r0:r1, c0:c1], left + c0 * GSD,
                        top - r0 * GSD, GSD)
    return pixels


@pytest.fixture(scope="module")
def map_gray(ortho) -> np.ndarray:
    return cv2.cvtColor(ortho[0], cv2.COLOR_BGR2GRAY)


def view_of(gray: np.ndarray, c0: int, r0: int, size: int = 400) -> View:
    """A north-up view cut out of the map at pixel (c0, r0), nadir at its centre."""
    img = np.ascontiguousarray(gray[r0:r0 + size, c0:c0 + size])
    o = size / 2
    return View(0, img, np.ones(img.shape, bool), GSD, (o, o), np.zeros((4, 2)), 100.0, 0.0,
                np.eye(3))


def pairs_in(view: View, n: int, noise_px: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """[n, 2] view offsets at pixel centres and their true map offsets (the view's nadir is
    map (0, 0) here) displaced by Gaussian noise of `noise_px`."""
    px = rng.integers(20, view.image.shape[0] - 20, (n, 2)).astype(np.float64)
    src = np.column_stack([(px[:, 0] - view.origin_px[0]) * GSD,
                           (view.origin_px[1] - px[:, 1]) * GSD])
    return src, src + rng.normal(0, noise_px * GSD, src.shape)


IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])


def test_pairs_a_pixel_off_are_moved_onto_the_map_within_a_tenth_of_a_pixel(map_gray):
    # the view is the map moved by a fraction of a pixel (0.37 px east, 0.21 px south), so
    # its pixel (u, v) shows the map 0.37 px west and 0.21 px north of where it would be
    rng = np.random.default_rng(0)
    moved_by = np.float32([[1, 0, 0.37], [0, 1, -0.21]])
    shifted = cv2.warpAffine(map_gray, moved_by, map_gray.shape[::-1], flags=cv2.INTER_CUBIC)
    view = view_of(shifted, 600, 600)
    # the view's nadir (pixel 200, 200) is map offset (0, 0): the map's top-left corner
    # lies 200.5 px west and north of it (pixel centres at + 0.5)
    pixels = pixels_of(map_gray, -(600 + 200 + 0.5) * GSD, (600 + 200 + 0.5) * GSD)
    src, dst = pairs_in(view, 200, 1.0, rng)
    truth = np.array([-0.37, -0.21])  # map point minus view offset, in pixels
    new_src, new_dst, moved = refine_pairs(view, src, dst, np.zeros(2), IDENTITY, pixels)
    was = np.median(np.linalg.norm((dst - src) / GSD - truth, axis=1))
    changed = ~np.all(new_dst == dst, axis=1)
    left = np.median((new_dst - new_src)[changed] / GSD, axis=0) - truth
    assert moved == changed.sum() >= 0.8 * len(src)
    assert was > 0.8
    assert np.all(np.abs(left) < 0.1), left
    # the view side sits on pixel centres: refinement never moves it off its pixel
    assert np.abs(new_src - src).max() <= 0.5 * GSD + 1e-9


def test_pairs_are_refined_through_the_fitted_rotation_and_offset(map_gray):
    # the view is the map turned by 4 deg about the nadir and the map's origin is elsewhere:
    # refinement must go through the fit's similarity, not assume an identity
    rng = np.random.default_rng(1)
    size, t = 400, np.radians(4.0)
    centre = (800.0, 800.0)  # map pixel under the nadir (a textured part of the map)
    M = cv2.getRotationMatrix2D(centre, np.degrees(t), 1.0)  # view px -> map px rotation
    M[:, 2] += np.array([size / 2, size / 2]) - centre
    img = cv2.warpAffine(map_gray, M, (size, size), flags=cv2.INTER_CUBIC)
    mask = cv2.warpAffine(np.ones_like(map_gray), M, (size, size), flags=cv2.INTER_NEAREST) > 0
    view = View(0, img, mask, GSD, (size / 2, size / 2),
                np.zeros((4, 2)), 100.0, 0.0, np.eye(3))
    # map E/N of map pixel centres: left/top so that the nadir is at (500, 2000) m
    left, top = 500.0 - (centre[0] + 0.5) * GSD, 2000.0 + (centre[1] + 0.5) * GSD
    origin = np.array([480.0, 2010.0])
    # view offset o -> map point R(t') o + nadir, t' the turn in E/N (y axis flipped)
    c, s = np.cos(-t), np.sin(-t)
    params = np.array([c, s, 500.0 - origin[0], 2000.0 - origin[1]])
    src, _ = pairs_in(view, 150, 0.0, rng)
    truth = src @ np.array([[c, -s], [s, c]]).T + params[2:]
    dst = truth + rng.normal(0, GSD, truth.shape)
    new_src, new_dst, moved = refine_pairs(view, src, dst, origin, params,
                                           pixels_of(map_gray, left, top))
    new_truth = new_src @ np.array([[c, -s], [s, c]]).T + params[2:]
    assert moved >= 0.7 * len(src)
    assert np.median(np.linalg.norm(dst - truth, axis=1)) > 0.8 * GSD
    assert np.median(np.linalg.norm(new_dst - new_truth, axis=1)) < 0.15 * GSD


def test_pairs_keep_their_keypoints_where_the_map_shows_something_else(map_gray):
    rng = np.random.default_rng(2)
    view = view_of(map_gray, 600, 600)
    other = np.ascontiguousarray(map_gray[::-1, ::-1])  # the same kind of scene, elsewhere
    src, dst = pairs_in(view, 200, 1.0, rng)
    new_src, new_dst, moved = refine_pairs(
        view, src, dst, np.zeros(2), IDENTITY,
        pixels_of(other, -(600 + 200 + 0.5) * GSD, (600 + 200 + 0.5) * GSD))
    assert moved < 0.05 * len(src)
    unmoved = np.all(new_dst == dst, axis=1)
    assert np.array_equal(new_src[unmoved], src[unmoved])


def test_thousands_of_pairs_are_refined_in_one_go(map_gray):
    # more pairs than one OpenCV remap takes (32767 rows of 17-px patches: 1927 pairs)
    rng = np.random.default_rng(5)
    view = view_of(map_gray, 300, 300, size=1000)
    pixels = pixels_of(map_gray, -(300 + 500 + 0.5) * GSD, (300 + 500 + 0.5) * GSD)
    src, dst = pairs_in(view, 3000, 1.0, rng)
    new_src, new_dst, moved = refine_pairs(view, src, dst, np.zeros(2), IDENTITY, pixels)
    changed = ~np.all(new_dst == dst, axis=1)
    assert moved == changed.sum() >= 0.6 * len(src)
    assert np.median(np.linalg.norm(new_dst - new_src, axis=1)[changed]) < 0.05 * GSD


def test_no_pixels_or_no_imagery_under_the_patch_leaves_the_pairs_alone(map_gray):
    rng = np.random.default_rng(3)
    view = view_of(map_gray, 600, 600)
    src, dst = pairs_in(view, 50, 1.0, rng)
    out = refine_pairs(view, src, dst, np.zeros(2), IDENTITY, lambda g, box: None)
    assert out[2] == 0 and out[0] is src and out[1] is dst
    nodata = np.zeros(map_gray.shape, bool)
    _, new_dst, moved = refine_pairs(
        view, src, dst, np.zeros(2), IDENTITY,
        pixels_of(map_gray, -(600 + 200 + 0.5) * GSD, (600 + 200 + 0.5) * GSD, nodata))
    assert moved == 0 and np.array_equal(new_dst, dst)


@pytest.fixture(scope="module")
def xfeat() -> XFeatEncoder:
    return XFeatEncoder()


def test_xfeat_fixes_are_several_times_closer_with_the_map_pixels(ortho, map_gray, xfeat):
    """Frames rendered from the map at known poses, matched with XFeat against the map's
    own features: the pose through refined pairs lands several times closer to the
    truth than through XFeat's keypoints alone (0.09 against 0.31 m median)."""
    img, T = ortho
    rng = np.random.default_rng(4)
    pixels = pixels_of(map_gray, T.c, T.f)
    feats = xfeat.extract(map_gray[300:1300, 300:1300])
    en = np.column_stack([T.c + (feats.keypoints[:, 0] + 300.5) * T.a,
                          T.f + (feats.keypoints[:, 1] + 300.5) * T.e])
    tiles = [Candidate(0, 0, en, feats.descriptors, None)]
    errs = {False: [], True: []}
    for _ in range(6):
        pos = np.array([T.c + rng.uniform(650, 950) * T.a, T.f + rng.uniform(650, 950) * T.e])
        roll, pitch, yaw = rng.uniform(-0.05, 0.05, 2).tolist() + [rng.uniform(-0.5, 0.5)]
        frame, tel = render(ortho, pos, 120.0, roll, pitch, yaw)
        view = rectify(frame, Telemetry(0, roll, pitch, yaw, 120.0, 120.0), CAM, GSD,
                       RectifyConfig())
        assert view is not None
        vf = xfeat.extract(view.image, view.mask)
        for refined in (False, True):
            fix = locate(view, vf, tiles, MatchConfig(), pixels if refined else None)
            assert isinstance(fix, Fix), fix
            # `render` puts a map pixel's corner where the map's keypoints put its centre
            errs[refined].append(np.hypot(fix.east_m - pos[0] - 0.5 * T.a,
                                          fix.north_m - pos[1] - 0.5 * T.e))
    plain, sharp = np.median(errs[False]), np.median(errs[True])
    assert sharp < 0.15, errs  # metres, on 0.3 m pixels (XFeat alone: about 0.3)
    assert sharp < plain / 2.5, errs


def test_a_pack_reads_back_the_pixels_its_keypoints_came_from(tmp_path):
    """The pixels `map_image` reads at a level are those the tile's features were computed
    on, at the same map coordinates: the pack's encoder (SIFT: its keypoints are where the
    pixels put them to a few hundredths of a pixel) run on them again finds the tile's
    keypoints where the pack stored them, at the native level and at the level of 2 x 2
    ortho pixels (a half-pixel slip in either convention would show; so did GDAL's
    decimated reads through overviews: 0.15 px)."""
    ortho_pack = small_pack(tmp_path, 900)
    pack = MapPack.open(ortho_pack)
    for level in (0, 1):
        ids = np.flatnonzero(pack.tile_level == level)
        tid = int(ids[len(ids) // 2])
        en, _ = pack.tile_features(tid)
        g, b = pack.levels[level], pack.tile_bounds_en[tid]
        image = pack.map_image(g, tuple(b))
        assert image is not None and image.valid.all()
        again = RootSiftEncoder().extract(image.gray)
        found = np.column_stack([image.left_e_m + (again.keypoints[:, 0] + 0.5) * g,
                                 image.top_n_m - (again.keypoints[:, 1] + 0.5) * g])
        gap = np.linalg.norm(en[:200, None] - found[None], axis=2).min(1) / g
        assert np.median(gap) < 0.05, level  # SIFT on another crop of the same pixels: ~0.03 px
    # a box inside the last one read is cut from it: the same pixels as reading it afresh
    inner = (b[0] + 10.3, b[1] + 20.1, b[2] - 30.7, b[3] - 5.2)
    cut = pack.map_image(g, inner)
    with rasterio.open(ortho_pack / ORTHO_FILE) as ds:
        fresh = read_map_image(ds, g, inner)
    assert cut is not None and fresh is not None
    assert (cut.left_e_m, cut.top_n_m) == pytest.approx((fresh.left_e_m, fresh.top_n_m))
    assert np.array_equal(cut.gray, fresh.gray) and np.array_equal(cut.valid, fresh.valid)
    assert pack.map_image(g, (b[2] + 1e4, b[3] + 1e4, b[2] + 2e4, b[3] + 2e4)) is None


def test_a_damaged_ortho_leaves_matching_without_its_pixels_and_says_so(tmp_path, caplog):
    pack_dir = small_pack(tmp_path, 300)
    pack = MapPack.open(pack_dir)
    ortho = pack_dir / ORTHO_FILE
    ortho.write_bytes(ortho.read_bytes()[:600])  # spoiled after the pack was opened
    b = pack.tile_bounds_en[0]
    with caplog.at_level(logging.WARNING):
        assert pack.map_image(pack.levels[0], tuple(b)) is None
    assert any(ORTHO_FILE in r.getMessage() for r in caplog.records)
