"""`skyfix calibrate camera`: boards rendered through a camera with known intrinsics and
distortion (each output pixel's ray is undistorted, intersected with the board plane at
a known pose and the board texture sampled there) are calibrated back."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from skyfix.calibration.intrinsics import (
    calibrate_intrinsics,
    parse_pattern,
    read_camera_info,
    write_camera_info,
)
from skyfix.runtime.apps.cli import main
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError

TRUE_CAM = CameraModel(640, 480, 520.0, 518.0, 322.5, 236.0, (-0.21, 0.06, 0.001, -0.0015, 0.0))
TEX_PX = 40  # texture pixels per board square


def _texture(pattern) -> tuple[np.ndarray, float]:
    """(board texture [H, W] uint8, texture px of board coordinate 0) for a pattern."""
    if pattern.kind == "chessboard":
        sq = np.indices((pattern.rows + 1, pattern.cols + 1)).sum(0) % 2
        tex = np.kron(1 - sq, np.ones((TEX_PX, TEX_PX))).astype(np.uint8) * 255
        tex = cv2.copyMakeBorder(tex, TEX_PX, TEX_PX, TEX_PX, TEX_PX, cv2.BORDER_CONSTANT,
                                 value=255)
        return tex, 2.0 * TEX_PX  # inner corner (0, 0) is one square + border in
    size = (pattern.cols * TEX_PX + 2 * TEX_PX, pattern.rows * TEX_PX + 2 * TEX_PX)
    return pattern.board().generateImage(size, marginSize=TEX_PX), float(TEX_PX)


def _pose(rng: np.random.Generator, centre_xy_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tilt = np.radians(rng.uniform(-35, 35, 2))
    rvec = np.array([tilt[0], tilt[1], np.radians(rng.uniform(-25, 25))])
    R = cv2.Rodrigues(rvec)[0]
    depth = rng.uniform(0.35, 0.55)
    t = np.array([*(rng.uniform(-0.12, 0.12, 2) * depth / 0.45), depth]) - R @ np.array(
        [*centre_xy_m, 0.0])
    return rvec, t


def render_boards(folder: Path, pattern, n: int, seed: int = 0) -> list[Path]:
    """`n` images of the board seen by TRUE_CAM at random poses with every corner inside."""
    tex, zero_px = _texture(pattern)
    tex = cv2.GaussianBlur(tex, (0, 0), 0.8)
    xy = TRUE_CAM.pixel_rays()  # [H, W, 2] ideal normalised coordinates of each pixel
    rays = np.concatenate([xy, np.ones((*xy.shape[:2], 1))], -1)
    if pattern.kind == "chessboard":
        corners = pattern.object_points().astype(np.float64)
    else:
        corners = pattern.board().getChessboardCorners().astype(np.float64)
    centre = corners[:, :2].mean(0)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    while len(paths) < n:
        rvec, t = _pose(rng, centre)
        px, _ = cv2.projectPoints(corners, rvec, t, TRUE_CAM.K, TRUE_CAM.dist_array)
        px = px.reshape(-1, 2)
        if (px.min() < 25) or (px[:, 0].max() > 615) or (px[:, 1].max() > 455):
            continue
        R = cv2.Rodrigues(rvec)[0]
        H = np.column_stack([R[:, 0], R[:, 1], t])  # board (X, Y, 1) -> camera ray
        board = rays @ np.linalg.inv(H).T  # [H, W, 3] homogeneous board coordinates
        bx, by = board[..., 0] / board[..., 2], board[..., 1] / board[..., 2]
        mx = (bx / pattern.square_m * TEX_PX + zero_px - 0.5).astype(np.float32)
        my = (by / pattern.square_m * TEX_PX + zero_px - 0.5).astype(np.float32)
        img = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=120)
        paths.append(folder / f"board_{len(paths):02d}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


@pytest.fixture(scope="module")
def chessboard_set(tmp_path_factory) -> list[Path]:
    return render_boards(tmp_path_factory.mktemp("chess"), parse_pattern("chessboard:9x6:0.025"),
                         14)


def test_chessboard_recovers_focal_length_and_distortion(chessboard_set):
    res = calibrate_intrinsics(chessboard_set, parse_pattern("chessboard:9x6:0.025"),
                               progress=False)
    cam = res.camera
    assert len(res.views_used) == 14
    assert abs(cam.fx / TRUE_CAM.fx - 1) < 0.005
    assert abs(cam.fy / TRUE_CAM.fy - 1) < 0.005
    assert abs(cam.cx - TRUE_CAM.cx) < 3 and abs(cam.cy - TRUE_CAM.cy) < 3
    assert res.rms_px < 0.3
    # The distortion model as a whole: undistorted points agree across the image.
    grid = np.stack(np.meshgrid(np.linspace(20, 620, 7), np.linspace(20, 460, 5)), -1)
    grid = grid.reshape(-1, 1, 2)
    a = cv2.undistortPoints(grid, TRUE_CAM.K, TRUE_CAM.dist_array, P=TRUE_CAM.K)
    b = cv2.undistortPoints(grid, cam.K, cam.dist_array, P=TRUE_CAM.K)
    assert np.abs(a - b).max() < 1.5


def test_charuco_recovers_focal_length(tmp_path):
    pattern = parse_pattern("charuco:7x5:0.04:0.03")
    paths = render_boards(tmp_path, pattern, 10, seed=3)
    res = calibrate_intrinsics(paths, pattern, progress=False)
    assert abs(res.camera.fx / TRUE_CAM.fx - 1) < 0.005
    assert abs(res.camera.fy / TRUE_CAM.fy - 1) < 0.005


def test_too_few_views_is_one_clear_line(chessboard_set, tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((480, 640), 128, np.uint8))
    with pytest.raises(SkyfixError, match=r"found in 3 of 4 images; need at least 8"):
        calibrate_intrinsics([*chessboard_set[:3], blank], parse_pattern("chessboard:9x6:0.025"),
                             progress=False)


@pytest.mark.parametrize("text", ["chessboard:9x6", "chess:9x6:0.02", "chessboard:9by6:0.02",
                                  "chessboard:9x6:-1", "charuco:7x5:0.04:0.05",
                                  "charuco:7x5:0.04:0.03:DICT_NOPE"])
def test_bad_pattern_is_refused(text):
    with pytest.raises(SkyfixError, match="pattern"):
        parse_pattern(text)


def test_cli_writes_opencv_and_ros_yaml_that_round_trip(chessboard_set, tmp_path, capsys):
    out, ros = tmp_path / "cam.yaml", tmp_path / "camera_info.yaml"
    rc = main(["calibrate", "camera", *map(str, chessboard_set), "--pattern",
               "chessboard:9x6:0.025", "--out", str(out), "--ros", str(ros)])
    assert rc == 0
    assert "RMS reprojection error" in capsys.readouterr().out
    fs = cv2.FileStorage(str(out), cv2.FILE_STORAGE_READ)  # plain OpenCV reads it
    K = fs.getNode("camera_matrix").mat()
    fs.release()
    cam = CameraModel.load(out)
    assert np.allclose(K, cam.K)
    assert abs(cam.fx / TRUE_CAM.fx - 1) < 0.005
    info = yaml.safe_load(ros.read_text())
    assert info["distortion_model"] == "plumb_bob" and len(info["projection_matrix"]["data"]) == 12
    back = read_camera_info(ros)
    assert np.allclose(back.K, cam.K) and np.allclose(back.dist, cam.dist)


def test_camera_info_round_trip(tmp_path):
    path = tmp_path / "info.yaml"
    write_camera_info(path, TRUE_CAM, "downward")
    assert read_camera_info(path) == TRUE_CAM


def test_cli_too_few_views_exits_2(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((48, 64), 128, np.uint8))
    rc = main(["calibrate", "camera", str(blank), "--pattern", "chessboard:9x6:0.025",
               "--out", str(tmp_path / "c.yaml")])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert rc == 2 and err.startswith("skyfix: error: the chessboard 9x6 board was found in 0")
    assert "need at least 8 usable views" in err
