"""Views of a low aircraft (a landing): frames rendered from the real Vienna orthophoto,
below the height where the view at the pack's finest level (0.3 m) holds enough features.

Measured on the ArduCopter SITL flights' descents (XFeat pack, 640 x 480, 70 deg): the
level's view is 162 x 122 px at 34.5 m, 190 features, 25-40 inliers; below that every frame
was refused (few_inliers), and the aircraft landed on dead reckoning. Matched again at the
level's GSD / 2, 4 or 8 (with no finer detail than the level's: the map has none) against
the map's own pixels read there, replays of two of those flights fix on to 12.8 and 13.5 m
(0.35 m from the truth at most); these renders to 18 m."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

import skyfix.runtime.nav.navigator as navigator
from skyfix.runtime.core.config import Config, RectifyConfig
from skyfix.runtime.core.types import Fix, Frame, Rejection, Telemetry
from skyfix.runtime.flight.assembly import build_chain
from skyfix.runtime.nav.navigator import Look
from skyfix.runtime.nav.rectify import rectify, with_detail_of
from skyfix.runtime.nav.retrieve import window_prior
from skyfix.sim.flight import FlightSpec, PoseRenderer

T0 = 1_767_225_600 * 1_000_000_000
ATT = (0.02, -0.01)
POS = (7.0, -5.0)  # the frames' place, metres from the map's centre


def _frame(ortho_path, agl: float, yaw: float = 0.3, at: tuple[float, float] = POS
           ) -> tuple[Frame, Telemetry, np.ndarray, FlightSpec]:
    """A frame `agl` metres over `at` (metres from the map's centre), heading `yaw` (grid),
    its telemetry and true position."""
    spec = FlightSpec(agl_m=agl, seed=3)
    with PoseRenderer(ortho_path, spec) as r:
        w, s, e, n = r.bounds_en
        pos = np.array([0.5 * (w + e) + at[0], 0.5 * (s + n) + at[1]])
        yaw = yaw + r.convergence_rad
        image = r.render(pos, agl, np.array([*ATT, yaw]), 0)
    return Frame(0, T0, image), Telemetry(T0, *ATT, yaw, agl, agl), pos, spec


def _locate(ortho_path, ortho_pack, agl: float, yaw: float = 0.3,
            at: tuple[float, float] = POS) -> tuple[Look, Fix | Rejection, np.ndarray]:
    frame, tel, pos, spec = _frame(ortho_path, agl, yaw, at)
    cfg = Config()
    localizer = build_chain(cfg, ortho_pack, spec.camera).navigator.localizer
    look = localizer.look(frame, tel)
    assert isinstance(look, Look)
    prior = window_prior(pos + [1.5, -1.0], 4.0 * np.eye(2), "filter", cfg.retrieve)
    return look, localizer.locate(look, prior), pos


@pytest.mark.parametrize("agl, yaw, at", [(25.0, 0.3, POS), (18.0, 0.0, (40.0, 30.0))])
def test_a_low_view_is_matched_finer_and_fixes(ortho_path, ortho_pack, agl, yaw, at):
    """Below 18 m these views are refused (16 m: 23 inliers, or inliers covering 0.27 of
    the view; 12 m: 17 features, or no place found by the coarse stage): 45 x 60 map
    pixels hold too little to be sure of."""
    look, result, pos = _locate(ortho_path, ortho_pack, agl, yaw, at)
    assert min(look.view.image.shape) < navigator.FINE_VIEW_MIN_PX
    assert look.fine is not None and look.fine.gsd_m <= look.view.gsd_m / 2
    assert look.fine.gsd_m >= 0.9 * agl / FlightSpec().camera.fx  # never finer than the frame
    assert isinstance(result, Fix), result
    assert np.hypot(result.east_m - pos[0], result.north_m - pos[1]) < 0.5


def test_without_the_finer_view_a_low_view_has_too_few_inliers(ortho_path, ortho_pack,
                                                               monkeypatch):
    """The cause: at the level's GSD the view is too small for min_inliers."""
    monkeypatch.setattr(navigator, "FINE_VIEW_MIN_PX", 0)
    look, result, _ = _locate(ortho_path, ortho_pack, 25.0)
    assert look.fine is None
    assert isinstance(result, Rejection) and result.reason in {"few_inliers", "few_features"}


def test_a_high_view_is_matched_at_its_level_only(ortho_path, ortho_pack):
    look, result, pos = _locate(ortho_path, ortho_pack, 80.0)
    assert look.fine is None
    assert isinstance(result, Fix), result


def test_views_line_up_with_the_map_whatever_the_frames_gsd(ortho_path, ortho):
    """A view pixel is the frame's mean over its ground cell (rectify: warped k x finer,
    averaged k x k, k whole): however many frame pixels make one view pixel, the view shows
    the map's pixels where they are, to 0.15 px (measured: 0.11 at most; the Gaussian
    pyramid it replaces, whose pixel i is the frame's 2i, not 2i + 0.5: 0.38)."""
    img, T = ortho
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    fx = FlightSpec().camera.fx
    for ratio in (1.5, 1.96, 2.04, 3.0, 3.96, 4.04, 6.0):
        frame, tel, pos, spec = _frame(ortho_path, 0.3 * fx / ratio)
        view = rectify(frame, tel, spec.camera, 0.3, RectifyConfig())
        ox, oy = view.origin_px
        # view pixel -> ortho pixel (centres: E = T.c + (c + 0.5) T.a)
        M = np.array([[0.3 / T.a, 0, (pos[0] - T.c) / T.a - 0.5 - ox * 0.3 / T.a],
                      [0, -0.3 / T.e, (pos[1] - T.f) / T.e - 0.5 - oy * -0.3 / T.e]])
        h, w = view.image.shape
        expected = cv2.warpAffine(gray, M, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        inner = np.s_[h // 4:3 * h // 4, w // 4:3 * w // 4]
        a, b = view.image[inner].astype(np.float32), expected[inner]
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9, ratio
        (dx, dy), _ = cv2.phaseCorrelate(a, b)
        assert np.hypot(dx, dy) < 0.15, (ratio, dx, dy)  # the pyramid: 0.33 px at 2.04


def test_a_finer_view_shows_no_detail_finer_than_the_map(ortho_path, ortho_pack):
    """The finer view's pixels are block means of its level's cells sampled back bilinearly
    (the map's pixels read finer are that, and a camera's frame, unlike these renders,
    holds detail the map never had): a 1-pixel checkerboard at the finer GSD is flat."""
    look, _, _ = _locate(ortho_path, ortho_pack, 25.0)
    m = round(look.view.gsd_m / look.fine.gsd_m)
    view = look.fine
    h, w = view.image.shape
    board = np.where((np.indices((h, w)).sum(0) % 2) == 0, 200, 40).astype(np.uint8)
    flat = with_detail_of(replace(view, image=board, mask=np.ones((h, w), bool)), m)
    inner = flat.image[flat.mask]
    assert flat.mask.mean() > 0.5 and inner.min() >= 118 and inner.max() <= 122
    # the frame's own view keeps the level's detail: its block means are the fine view's
    blocks = cv2.resize(look.fine.image[:h // m * m, :w // m * m], (w // m, h // m),
                        interpolation=cv2.INTER_AREA).astype(float)
    level = look.view.image[:h // m, :w // m].astype(float)
    both = look.view.mask[:h // m, :w // m]
    assert np.corrcoef(blocks[both], level[both])[0, 1] > 0.9
