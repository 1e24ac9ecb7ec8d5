"""Survey-built maps: flight lines from the track, the georeferencing fit (similarity and
camera clock offset), the ground plane, and orthorectification + blending of photos
rendered from a known ground texture (no SfM: the poses are the true ones)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from skyfix.maps.survey_lines import NOT_ON_A_LINE, parse_line_spec, split_lines
from skyfix.maps.survey_mosaic import fit_plane, grid_for, ground_surface, mosaic
from skyfix.maps.survey_sfm import (
    GeorefError,
    SurveyModel,
    SurveyPose,
    _time_offset,
    similarity,
)
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError


def lawnmower(axis_deg: float, lines: int, per_line: int, spacing_m: float, step_m: float):
    """(east, north) [N] of a lawn-mower survey along `axis_deg`, with two turn frames
    between lines, and the true line of each frame."""
    pts, truth = [], []
    for k in range(lines):
        along = np.arange(per_line) * step_m
        if k % 2:
            along = along[::-1]
        pts += [(a, k * spacing_m) for a in along]
        truth += [k] * per_line
        if k < lines - 1:  # the turn: out past the end, across, back
            end = along[-1] + (step_m * 0.2 if k % 2 == 0 else -step_m * 0.2)
            pts += [(end, k * spacing_m + 0.3 * spacing_m), (end, k * spacing_m + 0.7 * spacing_m)]
            truth += [NOT_ON_A_LINE] * 2
    p = np.array(pts, np.float64)
    a = np.radians(axis_deg)  # along-track -> course axis_deg, cross-track -> 90 deg right
    east = p[:, 0] * np.sin(a) + p[:, 1] * np.cos(a)
    north = p[:, 0] * np.cos(a) - p[:, 1] * np.sin(a)
    return east, north, np.array(truth)


def test_lines_of_a_lawnmower_survey():
    east, north, truth = lawnmower(62.0, lines=6, per_line=7, spacing_m=15.0, step_m=24.0)
    rng = np.random.default_rng(1)
    fl = split_lines(east + rng.normal(0, 1.0, len(east)), north + rng.normal(0, 1.0, len(east)))
    assert fl.count == 6
    assert fl.axis_deg == pytest.approx(62.0, abs=3.0)
    np.testing.assert_array_equal(fl.line, truth)


def test_line_spec():
    assert parse_line_spec("even", 5) == (0, 2, 4)
    assert parse_line_spec("odd", 5) == (1, 3)
    assert parse_line_spec("3, 1", 5) == (1, 3)
    for bad, msg in (("7", "lines 0..4"), ("x", "expected even"), ("odd", "names no line")):
        with pytest.raises(SkyfixError, match=msg):
            parse_line_spec(bad, 5 if bad != "odd" else 1)
    with pytest.raises(SkyfixError, match="too few"):
        split_lines(np.zeros(2), np.zeros(2))


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(2)
    src = rng.uniform(-100, 100, (20, 3))
    c, s_ = np.cos(0.7), np.sin(0.7)
    R = np.array([[c, -s_, 0], [s_, c, 0], [0, 0, 1]])
    dst = 1.3 * src @ R.T + [5.0, -7.0, 2.0]
    s, R_fit, t = similarity(src, dst)
    assert s == pytest.approx(1.3, rel=1e-9)
    np.testing.assert_allclose(R_fit, R, atol=1e-9)
    np.testing.assert_allclose(t, [5.0, -7.0, 2.0], atol=1e-7)


def test_camera_clock_offset_from_lines_flown_both_ways():
    east, north, line = lawnmower(30.0, lines=4, per_line=8, spacing_m=20.0, step_m=20.0)
    on = line >= 0
    true = np.column_stack([east, north, np.full(len(east), 70.0)])[on]
    # velocity along each line: 4 m/s in the line's direction
    a = np.radians(30.0)
    sign = np.where(line[on] % 2 == 0, 1.0, -1.0)
    vel = np.column_stack([4 * sign * np.sin(a), 4 * sign * np.cos(a), np.zeros(on.sum())])
    gnss = true - 1.5 * vel  # photos stamped 1.5 s early: the GNSS then lags 6 m behind
    sfm = (true - true.mean(0)) * 0.5  # SfM frame: another scale and origin
    dt, s, R, t = _time_offset(sfm, gnss, vel)
    assert dt == pytest.approx(1.5, abs=1e-3)
    np.testing.assert_allclose(sfm @ (s * R).T + t, true, atol=1e-3)


def test_camera_mount_against_the_body_attitude():
    from skyfix.maps.survey_sfm import _mount
    from skyfix.runtime.core.geo import NED_FROM_ENU, R_ned_body, mount_rotation

    rpy = np.radians([[2.0, -3.0, 62.0], [-1.0, 4.0, -118.0], [0.0, 0.0, 10.0]])
    poses = []
    for r in rpy:  # SfM's cameras are in the map grid, 1.5 deg turned from true north
        R_grid_cam = R_ned_body(r[0], r[1], r[2] - np.radians(1.5)) @ mount_rotation(1.0, -6.0,
                                                                                   2.0)
        poses.append(SurveyPose(Path("p.jpg"), R_grid_cam.T @ NED_FROM_ENU, np.zeros(3),
                                np.zeros(3)))
    assert _mount(poses, rpy, 1.5) == pytest.approx((1.0, -6.0, 2.0), abs=1e-6)
    roll, pitch, yaw = _mount(poses, rpy, 0.0)  # the convergence ignored: it is mount yaw
    assert yaw == pytest.approx(0.5, abs=0.1)


def test_plane_through_points_with_outliers():
    rng = np.random.default_rng(3)
    e, n = rng.uniform(0, 200, 500), rng.uniform(0, 200, 500)
    z = 0.02 * e - 0.01 * n + 380 + rng.normal(0, 0.1, 500)
    z[:60] += rng.uniform(5, 15, 60)  # roofs and trees
    a, b, c = fit_plane(np.column_stack([e, n, z]))
    assert (a, b, c) == pytest.approx((0.02, -0.01, 380), abs=0.05)


CRS_UTM = CRS.from_epsg(32633)
E0, N0, GSD = 500_000.0, 5_000_000.0, 0.1  # texture's top-left corner, metres/px


def _texture() -> np.ndarray:
    rng = np.random.default_rng(4)
    t = cv2.resize(rng.integers(0, 255, (100, 100, 3), np.uint8), (1000, 1000),
                   interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(t, (0, 0), 1.0)


def _pose(east: float, north: float, alt: float, yaw_deg: float, path: Path) -> SurveyPose:
    """A nadir camera whose image top points to `yaw_deg` (x right, y down, z down)."""
    y = np.radians(yaw_deg)
    up = np.array([np.sin(y), np.cos(y), 0.0])  # image top on the ground
    right = np.array([np.cos(y), -np.sin(y), 0.0])
    R_cam_world = np.array([right, -up, [0.0, 0.0, -1.0]])
    c = np.array([east, north, alt])
    return SurveyPose(path, R_cam_world, c, c)


def _render(texture: np.ndarray, cam: CameraModel, pose: SurveyPose) -> np.ndarray:
    """The photo `pose` takes of the flat textured ground z = 0 (with lens distortion)."""
    xy = cam.pixel_rays()  # [H, W, 2] ideal normalised coordinates of every pixel
    rays = np.concatenate([xy, np.ones(xy.shape[:2] + (1,))], -1) @ pose.R_cam_world
    lam = -pose.centre_m[2] / rays[..., 2]
    e = pose.centre_m[0] + lam * rays[..., 0]
    n = pose.centre_m[1] + lam * rays[..., 1]
    col = ((e - E0) / GSD - 0.5).astype(np.float32)
    row = ((N0 - n) / GSD - 0.5).astype(np.float32)
    return cv2.remap(texture, col, row, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_mosaic_puts_the_ground_back_where_it_was(tmp_path):
    """Photos rendered from a georeferenced texture, orthorectified and blended: the
    mosaic matches the texture at the same coordinates within a fraction of a pixel."""
    tex = _texture()
    cam = CameraModel(320, 180, 260.0, 260.0, 159.5, 89.5, (-0.05, 0.0, 0.0, 0.0, 0.0))
    poses = []
    for k, (de, dn, yaw) in enumerate([(20, 20, 62), (35, 28, 62), (28, 40, -118),
                                       (40, 35, 0)]):
        path = tmp_path / f"p{k}.png"
        pose = _pose(E0 + 20 + de, N0 - 80 + dn, 30.0, yaw, path)
        cv2.imwrite(str(path), _render(tex, cam, pose))
        poses.append(pose)
    georef = GeorefError(4, 4, 0, 0, 0, 0, 0, 1.0, cam.fx, cam.dist[0], 0.0, 0.0, (0, 0, 0))
    model = SurveyModel(CRS_UTM, cam, tuple(poses), np.zeros((0, 3)), georef)
    grid = grid_for(model, 0.0, GSD)
    ground = ground_surface(model, grid, (0.0, 0.0, 0.0))
    out = mosaic(model, grid, ground, tmp_path / "mosaic.tif", progress=False)
    with rasterio.open(out) as ds:
        assert ds.crs == CRS_UTM and ds.res == (GSD, GSD)
        rgb = ds.read().transpose(1, 2, 0)[..., ::-1]
        valid = ds.dataset_mask() > 0
        col0 = int(round((ds.transform.c - E0) / GSD))
        row0 = int(round((N0 - ds.transform.f) / GSD))
    ref = tex[row0:row0 + rgb.shape[0], col0:col0 + rgb.shape[1]]
    assert ref.shape == rgb.shape and valid.mean() > 0.5
    inner = cv2.erode(valid.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    diff = np.abs(rgb.astype(float) - ref.astype(float))[inner]
    assert np.median(diff) < 6.0  # blurred by resampling, never misplaced
    g1 = cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY).astype(np.float32) * inner
    g2 = cv2.cvtColor(ref, cv2.COLOR_BGR2GRAY).astype(np.float32) * inner
    (dx, dy), _ = cv2.phaseCorrelate(g1, g2)
    assert np.hypot(dx, dy) < 0.3  # pixels of 0.1 m: georeferenced within 3 cm


def test_refused_surveys(tmp_path):
    from skyfix.maps.survey import build_survey_pack
    from skyfix.maps.survey_sfm import SurveyFrames, reconstruct

    cam = CameraModel.from_fov(640, 360, 60.0)
    few = SurveyFrames(tuple(tmp_path / f"{k}.jpg" for k in range(3)), np.zeros((3, 3)),
                       np.zeros((3, 3)), np.zeros((3, 3)), CRS_UTM, cam, 70.0)
    with pytest.raises(SkyfixError, match="3 photos are too few"):
        reconstruct(few, tmp_path / "sfm", progress=False)
    with pytest.raises(SkyfixError, match="--gsd 0: expected"):
        build_survey_pack(few, tmp_path / "pack", gsd_m=0.0, progress=False)
    (tmp_path / "pack").mkdir()
    with pytest.raises(SkyfixError, match="exists"):
        build_survey_pack(few, tmp_path / "pack", progress=False)


def test_share_of_a_test_photo_over_the_survey_map(tmp_path):
    """leave_lines_out's coverage figure: a level photo at 50 m over flat ground, its
    footprint 50 x 25 m, straddling the east edge of a mosaic or wholly inside or outside."""
    import json

    from skyfix.runtime.apps.survey_eval import _on_map

    side = tmp_path / "pack.survey"
    side.mkdir()
    (side / "report.json").write_text(json.dumps({"ground": {"plane_a_b_c": [0, 0, 100.0]}}))
    transform = rasterio.transform.from_origin(E0, N0, 1.0, 1.0)  # 200 x 200 m, 1 m/px
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            side / "mosaic.tif", "w", driver="GTiff", width=200, height=200, count=1,
            dtype="uint8", crs=CRS_UTM, transform=transform) as dst:
        dst.write(np.full((1, 200, 200), 128, np.uint8))
        mask = np.zeros((200, 200), np.uint8)
        mask[:, :100] = 255  # the west half holds imagery
        dst.write_mask(mask)
    cam = CameraModel.from_fov(640, 320, 2 * np.degrees(np.arctan(0.5)))  # 50 m wide at 50 m
    enu = np.array([[E0 + 100, N0 - 100, 150.0],  # across the edge
                    [E0 + 40, N0 - 100, 150.0],  # inside
                    [E0 + 160, N0 - 100, 150.0],  # outside
                    [E0 + 110, N0 - 100, 150.0],  # heading north: 50 m across, 15 m in
                    [E0 + 110, N0 - 100, 150.0]])  # heading east: 25 m across, 2.5 m in
    rpy = np.array([[0, 0, 0]] * 4 + [[0, 0, np.pi / 2]], np.float64)
    share = _on_map(enu, rpy, cam, (0.0, 0.0, 0.0), side)
    assert share == pytest.approx([0.5, 1.0, 0.0, 0.3, 0.1], abs=0.04)
