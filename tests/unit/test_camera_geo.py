from __future__ import annotations

import cv2
import numpy as np
import pytest
from rasterio.crs import CRS

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import (
    R_BODY_CAM_NADIR,
    LocalFrame,
    R_ned_body,
    euler_from_R_ned_body,
    grid_convergence_deg,
)

CAM = CameraModel(640, 480, 500.0, 502.0, 321.0, 239.0, (-0.1, 0.03, 0.001, -0.002, 0.0))


def test_camera_yaml_round_trip_readable_by_opencv(tmp_path):
    p = tmp_path / "cam.yaml"
    CAM.save(p)
    assert CameraModel.load(p) == CAM
    fs = cv2.FileStorage(str(p), cv2.FILE_STORAGE_READ)
    assert np.allclose(fs.getNode("camera_matrix").mat(), CAM.K)


def test_camera_load_errors(tmp_path):
    with pytest.raises(SkyfixError, match="camera file not found"):
        CameraModel.load(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("%YAML:1.0\n---\nimage_width: 640\n")
    with pytest.raises(SkyfixError, match="3x3 camera_matrix"):
        CameraModel.load(bad)


def test_pixel_rays_invert_distortion():
    rays = CAM.pixel_rays()
    pick = rays[[0, 100, 479], [0, 300, 639]]
    back = CAM.distort_normalized(pick)
    assert np.allclose(back, [[0, 0], [300, 100], [639, 479]], atol=1e-3)


def test_undistort_image_moves_corners_outwards_for_barrel_distortion():
    img = np.zeros((480, 640), np.uint8)
    img[95:106, 95:106] = 255  # a dot towards the corner of the distorted image
    und = CAM.undistort_image(img)
    ys, xs = np.nonzero(und > 128)
    expected = CAM.pixel_rays()[100, 100] * [CAM.fx, CAM.fy] + [CAM.cx, CAM.cy]
    assert np.allclose([xs.mean(), ys.mean()], expected, atol=1.0)
    assert xs.mean() < 99 and ys.mean() < 99  # barrel (k1 < 0): corners move out


def test_scaled_camera_keeps_field_of_view():
    half = CAM.scaled(0.5)
    assert half.width == 320 and half.hfov_deg == pytest.approx(CAM.hfov_deg, rel=1e-3)


def test_euler_round_trip_and_nadir_camera_axis():
    R = R_ned_body(0.1, -0.2, 2.5)
    assert np.allclose(euler_from_R_ned_body(R), (0.1, -0.2, 2.5))
    level = R_ned_body(0, 0, 0) @ R_BODY_CAM_NADIR
    assert np.allclose(level[:, 2], [0, 0, 1])  # optical axis straight down
    assert np.allclose(level[:, 1], [-1, 0, 0])  # image down = towards the tail


@pytest.mark.parametrize("epsg, e, n", [(26914, 488000.0, 5207000.0), (31256, -1500.0, 338550.0),
                                        (32633, 600000.0, 5300000.0)])
def test_local_frame_round_trips_and_is_metric(epsg, e, n):
    f = LocalFrame.at(CRS.from_epsg(epsg), e, n)
    ne = f.map_to_ned(e + 300.0, n - 200.0)
    assert np.allclose(f.ned_to_map(*ne), [e + 300.0, n - 200.0], atol=1e-6)
    lat, lon = f.ned_to_lla(100.0, -50.0)
    assert np.allclose(f.lla_to_ned(lat, lon), [[100.0, -50.0]], atol=0.01)
    # a grid step is a metre on the ground within the projection's scale factor
    assert np.allclose(np.linalg.norm(f.J_ned_map, axis=0), 1.0, atol=1.5e-3)


def test_grid_convergence_is_the_true_azimuth_of_grid_north():
    # UTM 33N at 16.33 E, 48.18 N: 1.33 deg east of the central meridian, so grid north
    # lies about 1.33 sin(48.18) = 0.99 deg east of true north; west of it, west; and on
    # the meridian, none
    east = grid_convergence_deg(CRS.from_epsg(32633), 600000.0, 5337000.0)
    assert east == pytest.approx(0.99, abs=0.02)
    assert grid_convergence_deg(CRS.from_epsg(32633), 400000.0, 5337000.0) == pytest.approx(
        -east, abs=0.02)
    assert abs(grid_convergence_deg(CRS.from_epsg(32633), 500000.0, 5337000.0)) < 1e-3
    f = LocalFrame.at(CRS.from_epsg(32633), 600000.0, 5337000.0)
    n, e = f.map_to_ned(600000.0, 5337100.0)  # 100 m up the grid: true azimuth = convergence
    assert np.degrees(np.arctan2(e, n)) == pytest.approx(east, abs=1e-6)


def test_local_frame_north_is_true_north():
    # 1 km north in NED keeps the longitude and adds ~0.009 deg of latitude.
    f = LocalFrame.at(CRS.from_epsg(26914), 488000.0, 5207000.0)
    lat, lon = f.ned_to_lla(1000.0, 0.0)
    assert lon[0] == pytest.approx(f.origin_lon_deg, abs=1e-7)
    assert (lat[0] - f.origin_lat_deg) * 111_200 == pytest.approx(1000.0, rel=3e-3)
