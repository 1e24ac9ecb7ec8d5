"""Rectification and metric fix on frames made from the real Vienna orthophoto.

A nadir-ish frame is produced by the exact plane-to-image homography of a pinhole
camera at a known pose, so the answer is known without the simulator.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from skyfix.models.features import RootSiftEncoder
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import MatchConfig, RectifyConfig
from skyfix.runtime.core.types import Fix, Frame, Rejection, Telemetry
from skyfix.runtime.nav.match import (
    Candidate,
    fit_similarity,
    jackknife_cov,
    judge,
    locate,
    robust_similarity,
    second_fit,
)
from skyfix.runtime.nav.rectify import R_ned_cam, rectify

CAM = CameraModel.from_fov(640, 480, 70.0)
ENC = RootSiftEncoder()


def render(ortho, pos_en, agl, roll, pitch, yaw, camera=CAM):
    """Frame seen by `camera` at map position `pos_en`, `agl` metres over flat ground."""
    img, T = ortho
    tel = Telemetry(0, roll, pitch, yaw, agl, agl)
    # map pixel (c, r) -> ground offset from the camera -> NED ray -> image
    A = np.array([[0, T.e, T.f - pos_en[1]], [T.a, 0, T.c - pos_en[0]], [0, 0, agl]])
    H = camera.K @ R_ned_cam(tel).T @ A
    frame = cv2.warpPerspective(img, H, (camera.width, camera.height), flags=cv2.INTER_AREA)
    return Frame(0, 0, frame), tel


def tile_candidates(ortho, centre_en, half_m=120.0):
    """Features of a map window around `centre_en` as one candidate tile (map E/N)."""
    img, T = ortho
    c0 = int((centre_en[0] - half_m - T.c) / T.a)
    r0 = int((centre_en[1] + half_m - T.f) / T.e)
    n = int(2 * half_m / T.a)
    gray = cv2.cvtColor(img[r0:r0 + n, c0:c0 + n], cv2.COLOR_BGR2GRAY)
    f = ENC.extract(gray)
    en = np.column_stack([T.c + (f.keypoints[:, 0] + c0 + 0.5) * T.a,
                          T.f + (f.keypoints[:, 1] + r0 + 0.5) * T.e])
    return [Candidate(0, 0, en, f.descriptors, None)]


@pytest.fixture(scope="module")
def scene(ortho):
    _, T = ortho
    pos = np.array([T.c + 800 * T.a, T.f + 800 * T.e])  # middle of the map
    return pos


def fix_for(ortho, pos, agl, att_err_deg=0.0, roll=0.04, pitch=-0.03, yaw=0.7):
    frame, tel = render(ortho, pos, agl, roll, pitch, yaw)
    err = np.radians(att_err_deg)
    reported = Telemetry(0, roll + err, pitch, yaw, agl, agl)
    view = rectify(frame, reported, CAM, 0.3, RectifyConfig())
    assert view is not None
    feats = ENC.extract(view.image, view.mask)
    return locate(view, feats, tile_candidates(ortho, pos), MatchConfig())


def test_fix_recovers_position_with_exact_attitude(ortho, scene):
    fix = fix_for(ortho, scene, 120.0)
    assert isinstance(fix, Fix), fix
    err = np.hypot(fix.east_m - scene[0], fix.north_m - scene[1])
    assert err < 0.6
    assert abs(fix.agl_m - 120.0) < 3.0
    assert abs(fix.heading_err_deg) < 0.5
    sigma = np.sqrt(np.linalg.eigvalsh(fix.cov_en_m2).max())
    assert err < 3 * sigma


@pytest.mark.parametrize("agl, att_err_deg", [(120.0, 0.5), (120.0, 2.0), (200.0, 3.0)])
def test_pose_from_the_match_removes_the_reported_attitude_error(ortho, scene, agl, att_err_deg):
    # Trusting the reported roll would move the fix by AGL * tan(error): 1.0 m, 4.2 m
    # and 10.5 m here. The pose solved from the matches must not inherit that error,
    # must report the roll error it found, and its sigma must still cover what remains.
    fix = fix_for(ortho, scene, agl, att_err_deg=att_err_deg)
    assert isinstance(fix, Fix), fix
    err = np.hypot(fix.east_m - scene[0], fix.north_m - scene[1])
    naive = agl * np.tan(np.radians(att_err_deg))
    assert err < 0.6 < 0.6 * naive
    assert abs(fix.tilt_err_deg - att_err_deg) < 0.1
    assert abs(fix.agl_m - agl) < 0.02 * agl
    sigma = np.sqrt(np.linalg.eigvalsh(fix.cov_en_m2).max())
    assert err < 3 * sigma


def test_a_stand_in_attitude_claims_the_tilt_it_may_be_off_by(ortho, scene):
    """A source without attitude (a GPS track, photos without gimbal angles) gets a level
    camera along the course as a stand-in: the fix from it is the same position, but it
    claims what the configured unmeasured tilt would move the camera at that height."""
    frame, tel = render(ortho, scene, 120.0, 0.04, -0.03, 0.7)
    cfg = MatchConfig()
    fixes = []
    for measured in (True, False):
        view = rectify(frame, replace(tel, attitude_measured=measured), CAM, 0.3,
                       RectifyConfig())
        assert view is not None and view.attitude_measured == measured
        fixes.append(locate(view, ENC.extract(view.image, view.mask),
                            tile_candidates(ortho, scene), cfg))
    known, stand_in = fixes
    assert isinstance(known, Fix) and isinstance(stand_in, Fix)
    assert (stand_in.east_m, stand_in.north_m) == (known.east_m, known.north_m)
    tilt_m = 120.0 * np.tan(np.radians(cfg.unmeasured_tilt_sigma_deg))  # 10.5 m
    sigma = [np.sqrt(np.linalg.eigvalsh(f.cov_en_m2).max()) for f in fixes]
    assert sigma[0] < 0.2 * tilt_m
    assert sigma[1] >= tilt_m


def test_rectify_refuses_steep_attitude_and_unknown_height(ortho, scene):
    frame, tel = render(ortho, scene, 120.0, 0.0, 0.0, 0.0)
    steep = Telemetry(0, np.radians(50), 0.0, 0.0, 120.0, 120.0)
    assert rectify(frame, steep, CAM, 0.3, RectifyConfig()) is None
    no_height = Telemetry(0, 0.0, 0.0, 0.0, float("nan"), 120.0)
    assert rectify(frame, no_height, CAM, 0.3, RectifyConfig()) is None


@pytest.mark.parametrize("gsd_m", [0.1, 0.15, 0.3, 0.6])
def test_a_cropped_view_is_never_larger_than_max_view_px(ortho, scene, gsd_m):
    """A TensorRT engine takes views up to max_view_px: ceil((c + half) - (c - half)) / gsd
    came out max_view_px + 1 for about a third of positions before the clamp."""
    frame, tel = render(ortho, scene, 150.0, 0.1, -0.05, 2.0)
    for max_view_px in (64, 100, 128, 333):
        for shift in np.linspace(0.0, 1.0, 7):
            moved = Telemetry(0, tel.roll_rad + shift * 1e-3, tel.pitch_rad, tel.yaw_rad,
                              tel.agl_m, tel.alt_amsl_m)
            view = rectify(frame, moved, CAM, gsd_m, RectifyConfig(max_view_px=max_view_px))
            assert view is not None and max(view.image.shape) <= max_view_px


def test_rectified_view_is_north_up_at_map_scale(ortho, scene):
    frame, tel = render(ortho, scene, 150.0, 0.1, -0.05, 2.0)
    view = rectify(frame, tel, CAM, 0.3, RectifyConfig())
    img, T = ortho
    # The view pixel at the nadir origin shows the ortho pixel under the aircraft.
    c = (scene[0] - T.c) / T.a
    r = (scene[1] - T.f) / T.e
    u, v = view.origin_px
    a = view.image[int(v) - 20:int(v) + 20, int(u) - 20:int(u) + 20].astype(float)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    b = gray[int(r) - 20:int(r) + 20, int(c) - 20:int(c) + 20].astype(float)
    corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert corr > 0.8


def test_similarity_covariance_matches_known_noise():
    rng = np.random.default_rng(0)
    src = rng.uniform(-50, 50, (400, 2))
    dst = src + np.array([3.0, -2.0]) + rng.normal(0, 0.5, src.shape)
    params, res, cov = fit_similarity(src, dst)
    assert np.allclose(params, [1, 0, 3, -2], atol=0.1)
    # LSQ translation sigma for centred points ~ sigma / sqrt(N)
    assert np.sqrt(cov[2, 2]) == pytest.approx(0.5 / np.sqrt(400), rel=0.2)


def test_jackknife_sees_the_error_neighbouring_points_share():
    """Independent noise: the jackknife agrees with the fit's own covariance. A block of
    the view off by 2 m together (a roof's parallax, a changed block): the fit's
    residual-based sigma hardly moves, the jackknife's shows the shift."""
    rng = np.random.default_rng(1)
    src = rng.uniform(-50, 50, (300, 2))
    dst = src + rng.normal(0, 0.5, src.shape)
    _, _, cov = fit_similarity(src, dst)
    jk = np.sqrt(np.diag(jackknife_cov(src, dst)))
    assert np.all(jk < 3 * np.sqrt(np.diag(cov)[2:])) and np.all(jk > 0)
    block = (src[:, 0] > 17) & (src[:, 1] > 17)  # one cell of the 3 x 3 grid
    dst[block] += [2.0, 0.0]
    _, _, cov = fit_similarity(src, dst)
    assert np.sqrt(cov[2, 2]) < 0.1
    assert np.sqrt(jackknife_cov(src, dst)[0, 0]) > 0.2
    # too few points to leave any group out and fit the rest: nothing to tell
    assert not jackknife_cov(src[:8], dst[:8]).any()


def test_robust_similarity_finds_a_few_per_cent_of_inliers_under_perspective():
    # What matching across dates leaves: 20 true pairs among 600 candidates, the others
    # anywhere within 40 px of the prediction, and the view's corners moved by up to 2 %
    # (perspective that rectification leaves). The fit must take (nearly) all 20.
    rng = np.random.default_rng(3)
    src = rng.uniform(-192, 192, (600, 2))
    corners = np.array([[-192, -192], [192, -192], [192, 192], [-192, 192]], np.float32)
    moved = corners + rng.uniform(-7.7, 7.7, corners.shape).astype(np.float32)
    H = cv2.getPerspectiveTransform(corners, moved)
    t = np.radians(3.0)
    S = 1.02 * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    true = cv2.perspectiveTransform(src[None], H)[0] @ S.T + [12.0, -7.0]
    dst = src + rng.uniform(-40, 40, src.shape)
    dst[:20] = true[:20] + rng.normal(0, 0.7, (20, 2))
    fit = robust_similarity(src, dst, 3.0, 8)
    assert fit is not None
    assert len(np.intersect1d(fit.keep, np.arange(20))) >= 18
    assert len(fit.keep) <= 26  # chance pairs within the threshold, not a wrong model
    a, b, tx, ty = fit.params
    assert np.hypot(a, b) == pytest.approx(1.02, abs=0.02)
    at_origin = cv2.perspectiveTransform(np.zeros((1, 1, 2)), H)[0, 0] @ S.T + [12.0, -7.0]
    assert np.hypot(tx - at_origin[0], ty - at_origin[1]) < 2.0  # the view's centre


def _two_places(k1, k2, gap, rng):
    """View offsets -> map points where k1 pairs fit one place and k2 another `gap` m east
    (the house next door on a street of alike houses), among 150 chance pairs within 40 m."""
    src = rng.uniform(-100, 100, (k1 + k2 + 150, 2))
    dst = src + rng.uniform(-40, 40, src.shape)
    dst[:k1] = src[:k1] + rng.normal(0, 0.5, (k1, 2))
    dst[k1:k1 + k2] = src[k1:k1 + k2] + [gap, 0.0] + rng.normal(0, 0.5, (k2, 2))
    return src, dst


@pytest.mark.parametrize("k1, k2, gap, widens", [
    (27, 21, 16.0, True),    # two places the counts cannot tell apart: either may be true
    (60, 14, 16.0, False),   # the second clearly weaker
    (27, 21, 0.0, False),    # one place: one fit takes both, chance pairs are left
])
def test_a_second_fit_nearly_as_well_supported_widens_the_fix_to_reach_it(k1, k2, gap,
                                                                          widens):
    """Sequential RANSAC over the pairs the fit left out: the truth may lie at the second
    place, so the fix must claim the gap along it (LEVIR-CD, alike houses: the fix one
    house off with 27 inliers, the true place 21)."""
    src, dst = _two_places(k1, k2, gap, np.random.default_rng(4))
    fit = robust_similarity(src, dst, 1.5, 8)
    assert fit is not None and len(np.intersect1d(fit.keep, np.arange(k1))) >= k1 - 2
    extra = second_fit(src, dst, fit, 1.5, 8)
    if widens:
        assert extra is not None and np.sqrt(extra[0, 0]) == pytest.approx(gap, abs=0.5)
        assert abs(extra[1, 1]) < 0.5
    else:
        assert extra is None


def _tm(inliers, e, n, scale=1.0, rot=0.0, tid=0):
    from skyfix.runtime.nav.match import TileMatch

    return TileMatch(tid, 0, inliers, e, n, np.eye(2), scale, rot, (0.0, 0.0), 0.3, 1.0)


class _View:
    t_ns = 5
    agl_m = 100.0
    ground_m = float("nan")  # a pack without a DEM


@pytest.mark.parametrize("matches, reason", [
    ([], "few_inliers"),
    ([_tm(10, 0, 0)], "few_inliers"),
    ([_tm(100, 0, 0, scale=1.3)], "scale"),
    ([_tm(100, 0, 0, rot=20.0)], "heading"),
    ([_tm(100, 0, 0), _tm(90, 500, 0, tid=1)], "ambiguous"),
])
def test_rejection_rules(matches, reason):
    out = judge(_View(), matches, MatchConfig())
    assert isinstance(out, Rejection) and out.reason == reason


def test_nearby_second_tile_is_agreement_not_ambiguity():
    out = judge(_View(), [_tm(100, 0, 0), _tm(95, 5, 0, tid=1)], MatchConfig())
    assert isinstance(out, Fix) and out.tile_id == 0
    assert np.isnan(out.alt_amsl_m) and np.isnan(out.alt_sigma_m)  # no DEM: no altitude


def test_a_credible_rival_nearby_widens_the_error_bar_to_reach_it():
    """Solution separation: a second match with min_inliers 5 m east, which neither
    covariance (1 m^2) explains, leaves the fix claiming at least 5 m east-west; a rival
    its covariance explains, or one too weak to be a fix itself, changes nothing."""
    cfg = MatchConfig()
    out = judge(_View(), [_tm(100, 0, 0), _tm(95, 5, 0, tid=1)], cfg)
    assert isinstance(out, Fix)
    assert np.sqrt(out.cov_en_m2[0, 0]) >= 5 and out.cov_en_m2[1, 1] == pytest.approx(1)
    assert np.sqrt(out.shared_cov_en_m2[0, 0]) >= 5  # the next view sees the same two
    for rival in (_tm(95, 1, 1, tid=1), _tm(cfg.min_inliers - 1, 5, 0, tid=1)):
        out = judge(_View(), [_tm(100, 0, 0), rival], cfg)
        assert isinstance(out, Fix) and np.allclose(out.cov_en_m2, np.eye(2))


def test_what_every_match_of_the_view_shares_does_not_make_two_places_one():
    """High up, each match claims 10 m for the attitude's error, but that error moves every
    match of the view alike: a credible rival 10 m away, which their own 1 m^2 cannot
    explain, still widens the fix to reach it."""
    shared = 100.0 * np.eye(2)

    def high(inliers, e, tid):
        return replace(_tm(inliers, e, 0, tid=tid), cov_en_m2=np.eye(2) + shared,
                       shared_cov_en_m2=shared)

    out = judge(_View(), [high(100, 0.0, 0), high(95, 10.0, 1)], MatchConfig())
    assert isinstance(out, Fix)
    assert np.sqrt(out.cov_en_m2[0, 0]) >= np.hypot(10, 10)  # its own 10 m and the gap
    assert out.cov_en_m2[1, 1] == pytest.approx(101)
    out = judge(_View(), [high(100, 0.0, 0), high(95, 1.0, 1)], MatchConfig())
    assert isinstance(out, Fix) and np.allclose(out.cov_en_m2, np.eye(2) + shared)


def test_fix_altitude_is_the_pose_height_over_the_dem_ground():
    class OnDem(_View):
        ground_m = 180.0  # the DEM's height where the view's points were lifted from

    out = judge(OnDem(), [_tm(100, 0, 0, scale=1.04)], MatchConfig())
    assert isinstance(out, Fix) and out.agl_m == pytest.approx(104.0)
    assert (out.alt_amsl_m, out.alt_sigma_m) == (pytest.approx(284.0), 1.0)


def test_configured_mount_turns_the_camera_like_the_body_would(ortho, scene):
    """A camera mounted pitched 4 deg forward on a level aircraft sees what a nadir camera
    on an aircraft pitched 4 deg sees; rectification must give the same view for both."""
    frame, _ = render(ortho, scene, 120.0, 0.0, np.radians(4.0), 0.7)
    pitched = Telemetry(0, 0.0, np.radians(4.0), 0.7, 120.0, 120.0)
    level = Telemetry(0, 0.0, 0.0, 0.7, 120.0, 120.0)
    a = rectify(frame, pitched, CAM, 0.3, RectifyConfig())
    b = rectify(frame, level, CAM, 0.3, RectifyConfig(mount_pitch_deg=4.0))
    c = rectify(frame, level, CAM, 0.3, RectifyConfig())
    assert a.origin_px == b.origin_px and np.array_equal(a.image, b.image)
    assert c.origin_px != a.origin_px  # ignoring the mount puts nadir elsewhere


@pytest.mark.parametrize("roll_deg", [25.0, 40.0])
def test_oblique_frames_up_to_45_deg_off_nadir_still_fix(ortho, scene, roll_deg):
    fix = fix_for(ortho, scene, 100.0, att_err_deg=0.5, roll=np.radians(roll_deg), pitch=0.0)
    assert isinstance(fix, Fix), fix
    err = np.hypot(fix.east_m - scene[0], fix.north_m - scene[1])
    assert err < 0.6
    assert abs(fix.tilt_err_deg - 0.5) < 0.1
