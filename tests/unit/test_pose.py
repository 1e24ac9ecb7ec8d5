"""Camera pose from ground matches: exact geometry with known noise, so the answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from skyfix.runtime.core.geo import R_BODY_CAM_NADIR, R_ned_body
from skyfix.runtime.nav.pose import solve_pose


def _case(rng, agl, half_fov_deg, att_err_deg, noise_norm, n=300):
    """Matches seen by a camera at (0, 0, -agl), reported with a roll/pitch error.

    Returns the view offsets the rectification would produce from the reported
    attitude, the true ground points, the reported attitude and the true centre."""
    R_true = R_ned_body(0.03, -0.02, 0.8) @ R_BODY_CAM_NADIR
    C = np.array([0.0, 0.0, -agl])
    half = agl * np.tan(np.radians(half_fov_deg))
    P = np.column_stack([rng.uniform(-half, half, (n, 2)), np.zeros(n)])
    x = (P - C) @ R_true  # camera frame
    uv = x[:, :2] / x[:, 2:3] + rng.normal(0, noise_norm, (n, 2))
    e = np.radians(att_err_deg)
    R_rep = R_ned_body(0.03 + e[0], -0.02 + e[1], 0.8 + e[2]) @ R_BODY_CAM_NADIR
    rays = np.column_stack([uv, np.ones(n)]) @ R_rep.T  # NED rays under the reported attitude
    offsets = rays[:, [1, 0]] / rays[:, 2:3] * agl  # (east, north) on the reported ground
    return offsets, P, R_rep, C


def _solve(offsets, P, R_rep, agl, noise_norm, tilt_deg=0.5, yaw_deg=3.0):
    C0 = np.array([3.0, -2.0, -1.05 * agl])  # a start off the truth, as a similarity gives
    return solve_pose(offsets, P, R_rep, agl, C0, np.radians(tilt_deg), np.radians(yaw_deg),
                      noise_norm)


def _warp(rng, P, warp_m):
    """The ground points moved by a smooth warp of the map, about `warp_m` at the corners,
    with no shift (a shift is the map's georeferencing error, not its warp)."""
    q = P[:, :2] / np.abs(P[:, :2]).max()
    d = np.column_stack([q[:, 0] ** 2, q[:, 0] * q[:, 1], q[:, 1] ** 2]) @ rng.normal(
        0, warp_m / 2, (3, 2))
    P[:, :2] += d - d.mean(0)


@pytest.mark.parametrize("att_err", [(0.5, 0.0, 0.0), (-1.0, 1.5, 0.0), (0.3, -0.3, 2.0)])
def test_wide_view_recovers_position_and_attitude_error(att_err):
    rng = np.random.default_rng(1)
    offsets, P, R_rep, C = _case(rng, 150.0, 30.0, att_err, 1e-3)
    pose = _solve(offsets, P, R_rep, 150.0, 1e-3)
    assert pose is not None
    assert np.linalg.norm(pose.C_ned_m - C) < 0.3
    # The rotation taking the reported attitude to the true one undoes the error.
    assert np.degrees(np.abs(pose.w_rad)).max() > 0.25
    assert pose.sigma_norm == pytest.approx(1e-3, rel=0.15)


def test_covariance_is_consistent_over_many_trials():
    """Mean NEES of the horizontal position over 200 noisy trials is about 2 (2 dof)."""
    rng = np.random.default_rng(7)
    nees = []
    for _ in range(200):
        err = rng.normal(0, 0.5, 3) * np.array([1, 1, 6])  # within the priors
        offsets, P, R_rep, C = _case(rng, 120.0, 25.0, err, 2e-3, n=80)
        pose = _solve(offsets, P, R_rep, 120.0, 2e-3)
        d = pose.C_ned_m[:2] - C[:2]
        nees.append(d @ np.linalg.solve(pose.cov[3:5, 3:5], d))
    # chi-square(2) mean 2; over 200 trials the mean's 99 % band is about 1.6 .. 2.45
    assert 1.5 < np.mean(nees) < 2.6


def test_narrow_view_falls_back_on_the_attitude_prior_and_says_so():
    """With a 1.5 degree field of view, tilt and shift look alike: the covariance must
    grow to about AGL * attitude sigma instead of claiming image-level precision."""
    rng = np.random.default_rng(3)
    agl = 1500.0
    offsets, P, R_rep, C = _case(rng, agl, 0.75, (0.0, 0.0, 0.0), 2e-5)
    pose = _solve(offsets, P, R_rep, agl, 2e-5, tilt_deg=0.5)
    sigma_m = np.sqrt(np.linalg.eigvalsh(pose.cov_en_m2).max())
    assert sigma_m > 0.5 * agl * np.tan(np.radians(0.5))  # ~13 m at 0.5 deg
    wide = _solve(*_case(np.random.default_rng(3), agl, 30.0, (0, 0, 0), 2e-5)[:3], agl, 2e-5)
    assert np.sqrt(np.linalg.eigvalsh(wide.cov_en_m2).max()) < 0.2 * sigma_m


def test_too_few_points_or_camera_below_ground_give_none():
    rng = np.random.default_rng(0)
    offsets, P, R_rep, _ = _case(rng, 100.0, 30.0, (0, 0, 0), 1e-3, n=5)
    assert _solve(offsets, P, R_rep, 100.0, 1e-3) is None


def test_unmodelled_lens_distortion_is_estimated_not_mistaken_for_a_tilt():
    """Points matched on one side of the image, seen through barrel distortion the camera
    model lacks (as with a camera guessed from EXIF): held at k = 0 the pose mistakes the
    distortion for a tilt and moves metres; estimating k keeps the position."""
    rng = np.random.default_rng(11)
    agl, n, k_true = 120.0, 400, -0.08
    R_true = R_ned_body(0.02, -0.01, 1.1) @ R_BODY_CAM_NADIR
    C = np.array([0.0, 0.0, -agl])
    half = agl * np.tan(np.radians(35.0))
    P = np.column_stack([rng.uniform(0.1 * half, half, n), rng.uniform(-half, half, n),
                         np.zeros(n)])  # one side of the footprint
    x = (P - C) @ R_true
    p = x[:, :2] / x[:, 2:3]
    uv = p * (1 + k_true * (p**2).sum(1, keepdims=True)) + rng.normal(0, 5e-4, (n, 2))
    rays = np.column_stack([uv, np.ones(n)]) @ R_true.T
    offsets = rays[:, [1, 0]] / rays[:, 2:3] * agl
    start = np.array([2.0, -2.0, -agl])
    held = solve_pose(offsets, P, R_true, agl, start, np.radians(0.5), np.radians(3), 1e-3)
    free = solve_pose(offsets, P, R_true, agl, start, np.radians(0.5), np.radians(3), 1e-3,
                      lens_sigma=0.05)
    assert np.linalg.norm(held.C_ned_m[:2] - C[:2]) > 1.0
    assert np.linalg.norm(free.C_ned_m[:2] - C[:2]) < 0.3
    assert free.lens_k == pytest.approx(k_true, abs=0.02)


def test_a_map_warp_read_as_a_tilt_is_claimed_in_the_covariance():
    """The map is not the world: a smooth warp of it moves the points as a tilt would, the
    pose reads it as one, and the position moves by the height times that tilt. Precise
    matches then claim centimetres while the fix is metres off. With the warp's size
    stated (warp_norm), the covariance covers it; the estimate itself is unchanged."""
    rng = np.random.default_rng(3)
    agl, warp_m = 1000.0, 5.0
    beyond = {0.0: 0, warp_m / agl: 0}
    for _ in range(60):
        offsets, P, R_rep, C = _case(rng, agl, 30.0, rng.normal(0, 0.3, 3), 2e-4, n=150)
        _warp(rng, P, warp_m)
        poses = []
        for wn in beyond:
            pose = solve_pose(offsets, P, R_rep, agl, np.array([3.0, -2.0, -1.05 * agl]),
                              np.radians(0.5), np.radians(3.0), 2e-4, warp_norm=wn)
            err = np.linalg.norm(pose.C_ned_m[:2] - C[:2])
            sigma = np.sqrt(np.linalg.eigvalsh(pose.cov_en_m2 + pose.warp_cov_en_m2).max())
            beyond[wn] += err > 3 * sigma
            poses.append(pose)
        np.testing.assert_allclose(poses[0].C_ned_m, poses[1].C_ned_m)
        assert not poses[0].warp_cov_en_m2.any()
    assert beyond[0.0] > 40  # without the warp term most claims are wrong
    assert beyond[warp_m / agl] == 0


def test_points_weighed_with_their_inflation_leave_the_tilt_to_the_attitude():
    """From high up, points that all err the same way (here a smooth warp of the map the
    warp term does not cover) settle a tilt the camera does not have, and the fix moves
    by the height times it. Weighed with the inflation their covariance is claimed with,
    the points outweigh the reported attitude (within its prior here) only as much as
    they are worth: the attitude's share of the covariance grows and the fix stays
    nearer the truth."""
    rng = np.random.default_rng(3)
    agl, warp_m = 1000.0, 5.0
    errors = {1.0: [], 4.0: []}
    shares = {1.0: [], 4.0: []}
    for _ in range(60):
        offsets, P, R_rep, C = _case(rng, agl, 15.0, rng.normal(0, 0.3, 3), 5e-4, n=80)
        _warp(rng, P, warp_m)
        for inflation in errors:
            pose = solve_pose(offsets, P, R_rep, agl, np.array([3.0, -2.0, -1.05 * agl]),
                              np.radians(0.5), np.radians(3.0), 5e-4, inflation=inflation)
            errors[inflation].append(np.linalg.norm(pose.C_ned_m[:2] - C[:2]))
            shares[inflation].append(np.trace(pose.attitude_cov_en_m2)
                                     / np.trace(pose.cov_en_m2))
    assert np.median(errors[4.0]) < 0.75 * np.median(errors[1.0])
    assert np.median(shares[4.0]) > 2 * np.median(shares[1.0])


def test_the_attitude_prior_share_of_the_position_variance():
    """The part of the position's covariance the reported attitude's error brings in is
    what consecutive fixes share (that error changes slowly): nearly all of it from a
    narrow view, where the image hardly tells a tilt from a shift; little from a wide
    view with precise points, where the image measures the tilt itself."""
    rng = np.random.default_rng(4)
    shares = []
    for agl, half_fov in ((1000.0, 5.0), (150.0, 35.0)):
        offsets, P, R_rep, C = _case(rng, agl, half_fov, (0.3, -0.2, 1.0), 1e-3, n=200)
        pose = _solve(offsets, P, R_rep, agl, 1e-3)
        own = pose.cov_en_m2 - pose.attitude_cov_en_m2
        assert np.linalg.eigvalsh(own).min() > -1e-9  # a part of the covariance
        shares.append(np.trace(pose.attitude_cov_en_m2) / np.trace(pose.cov_en_m2))
    assert shares[0] > 0.8 and shares[1] < 0.1
