"""Camera intrinsics and distortion from images of a calibration board.

Patterns (the `--pattern` text):
- `chessboard:COLSxROWS:SQUARE_M`: COLS x ROWS inner corners (OpenCV's convention,
  e.g. 9x6 for a board of 10 x 7 squares), squares SQUARE_M metres wide;
- `charuco:COLSxROWS:SQUARE_M:MARKER_M[:DICT]`: a ChArUco board of COLS x ROWS squares,
  markers MARKER_M wide from the ArUco dictionary DICT (default DICT_4X4_50).

Corners are found (chessboard: findChessboardCorners + cornerSubPix; ChArUco:
cv2.aruco.CharucoDetector) in every image; calibrateCamera fits the pinhole + k1, k2,
p1, p2, k3 model on the images where the board was found. The result is written as
OpenCV FileStorage YAML (skyfix.runtime.core.camera.CameraModel) and, optionally, as a
ROS camera_info YAML (plumb_bob).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError

_SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
_MIN_CHARUCO_CORNERS = 8


@dataclass(frozen=True)
class Pattern:
    """A calibration board; `cols` x `rows` inner corners (chessboard) or squares (ChArUco)."""

    kind: Literal["chessboard", "charuco"]
    cols: int
    rows: int
    square_m: float
    marker_m: float = 0.0
    dictionary: str = "DICT_4X4_50"

    def board(self) -> cv2.aruco.CharucoBoard:
        """The OpenCV ChArUco board (ChArUco patterns only)."""
        aruco_dict = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.cols, self.rows), self.square_m, self.marker_m,
                                      aruco_dict)

    def object_points(self) -> np.ndarray:
        """[N, 3] float32 chessboard inner corners on the board plane (z = 0), metres,
        row by row as findChessboardCorners orders them."""
        xs, ys = np.meshgrid(np.arange(self.cols), np.arange(self.rows))
        pts = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], -1) * self.square_m
        return pts.astype(np.float32)


def parse_pattern(text: str) -> Pattern:
    """`chessboard:9x6:0.025` or `charuco:7x5:0.04:0.03[:DICT_4X4_50]` -> Pattern."""
    usage = ("expected chessboard:COLSxROWS:SQUARE_M or "
             "charuco:COLSxROWS:SQUARE_M:MARKER_M[:DICT], e.g. chessboard:9x6:0.025")
    parts = text.split(":")
    if len(parts) < 3 or parts[0] not in ("chessboard", "charuco"):
        raise SkyfixError(f"pattern {text!r}: {usage}")
    size = re.fullmatch(r"(\d+)x(\d+)", parts[1])
    try:
        nums = [float(p) for p in parts[2:4]]
    except ValueError:
        raise SkyfixError(f"pattern {text!r}: {usage}") from None
    if size is None or any(not np.isfinite(v) or v <= 0 for v in nums):
        raise SkyfixError(f"pattern {text!r}: {usage}")
    cols, rows = int(size[1]), int(size[2])
    if parts[0] == "chessboard":
        if len(parts) != 3 or min(cols, rows) < 3:
            raise SkyfixError(f"pattern {text!r}: {usage} (at least 3x3 inner corners)")
        return Pattern("chessboard", cols, rows, nums[0])
    if len(parts) not in (4, 5) or min(cols, rows) < 3 or nums[1] >= nums[0]:
        raise SkyfixError(f"pattern {text!r}: {usage} (at least 3x3 squares, marker smaller "
                          f"than the square)")
    dictionary = parts[4] if len(parts) == 5 else "DICT_4X4_50"
    if not dictionary.startswith("DICT_") or not hasattr(cv2.aruco, dictionary):
        raise SkyfixError(f"pattern {text!r}: unknown ArUco dictionary {dictionary!r}")
    return Pattern("charuco", cols, rows, nums[0], nums[1], dictionary)


@dataclass(frozen=True)
class BoardView:
    """One image's detected board corners. `object_m`: [N, 3] float32 board-plane points;
    `image_px`: [N, 2] float32 their pixels."""

    path: Path
    object_m: np.ndarray
    image_px: np.ndarray


@dataclass(frozen=True)
class IntrinsicsResult:
    """`rms_px`: overall RMS reprojection error; `view_rms_px`: [V] per used image."""

    camera: CameraModel
    rms_px: float
    views_used: tuple[Path, ...]
    views_total: int
    view_rms_px: np.ndarray


def detect_board(gray: np.ndarray, pattern: Pattern) -> tuple[np.ndarray, np.ndarray] | None:
    """(object [N, 3] float32, image [N, 2] float32) corners of the board in `gray`
    ([H, W] uint8), or None when it is not found."""
    if pattern.kind == "chessboard":
        flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
        found, corners = cv2.findChessboardCorners(gray, (pattern.cols, pattern.rows),
                                                   flags=flags)
        if not found:
            return None
        corners = cv2.cornerSubPix(gray, corners, (5, 5), (-1, -1), _SUBPIX_CRITERIA)
        return pattern.object_points(), corners.reshape(-1, 2).astype(np.float32)
    board = pattern.board()
    corners, ids, _, _ = cv2.aruco.CharucoDetector(board).detectBoard(gray)
    if ids is None or len(ids) < _MIN_CHARUCO_CORNERS:
        return None
    obj = board.getChessboardCorners()[ids.ravel()]
    return obj.astype(np.float32), corners.reshape(-1, 2).astype(np.float32)


def calibrate_intrinsics(images: Sequence[Path], pattern: Pattern, min_views: int = 8,
                         progress: bool = True) -> IntrinsicsResult:
    """Fit intrinsics + distortion to the boards found in `images` (all the same size).

    Raises SkyfixError when an image cannot be read, sizes differ, or the board is found
    in fewer than `min_views` images.
    """
    views: list[BoardView] = []
    size: tuple[int, int] | None = None
    for path in tqdm([Path(p) for p in images], desc="board corners", unit="image",
                     disable=not progress):
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
        if gray is None:
            raise SkyfixError(f"cannot read image {path}")
        if size is None:
            size = (gray.shape[1], gray.shape[0])
        elif size != (gray.shape[1], gray.shape[0]):
            raise SkyfixError(f"image {path} is {gray.shape[1]}x{gray.shape[0]}, the first "
                              f"was {size[0]}x{size[1]}: all images must be the same size")
        found = detect_board(gray, pattern)
        if found is not None:
            views.append(BoardView(path, *found))
    if len(views) < max(min_views, 3) or size is None:
        name = f"{pattern.kind} {pattern.cols}x{pattern.rows}"
        raise SkyfixError(f"the {name} board was found in {len(views)} of {len(images)} images;"
                          f" need at least {max(min_views, 3)} usable views")
    # fx, fy, cx, cy, k1, k2, p1, p2, k3 all free
    rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(
        [v.object_m for v in views], [v.image_px for v in views], size, None, None)
    per_view = []
    for v, r, t in zip(views, rvecs, tvecs, strict=True):
        proj, _ = cv2.projectPoints(v.object_m, r, t, K, dist)
        per_view.append(np.sqrt(((proj.reshape(-1, 2) - v.image_px) ** 2).sum(1).mean()))
    d = np.ravel(dist)[:5]
    camera = CameraModel(size[0], size[1], float(K[0, 0]), float(K[1, 1]), float(K[0, 2]),
                         float(K[1, 2]), tuple(float(x) for x in d))  # type: ignore[arg-type]
    return IntrinsicsResult(camera, float(rms), tuple(v.path for v in views), len(images),
                            np.asarray(per_view))


def write_camera_info(path: Path, camera: CameraModel, camera_name: str = "camera") -> None:
    """ROS sensor_msgs/CameraInfo calibration YAML (camera_calibration_parsers layout)."""
    K = camera.K
    P = np.hstack([K, np.zeros((3, 1))])

    def mat(rows: int, cols: int, values: np.ndarray) -> dict:
        return {"rows": rows, "cols": cols, "data": [float(x) for x in np.ravel(values)]}

    info = {
        "image_width": camera.width, "image_height": camera.height,
        "camera_name": camera_name,
        "camera_matrix": mat(3, 3, K),
        "distortion_model": "plumb_bob",
        "distortion_coefficients": mat(1, 5, camera.dist_array),
        "rectification_matrix": mat(3, 3, np.eye(3)),
        "projection_matrix": mat(3, 4, P),
    }
    Path(path).write_text(yaml.safe_dump(info, sort_keys=False))


def read_camera_info(path: Path) -> CameraModel:
    """The camera of a ROS camera_info YAML (plumb_bob or no distortion)."""
    try:
        info = yaml.safe_load(Path(path).read_text())
        K = np.asarray(info["camera_matrix"]["data"], np.float64).reshape(3, 3)
        d = np.asarray(info.get("distortion_coefficients", {}).get("data", []) or [0.0] * 5)
        w, h = int(info["image_width"]), int(info["image_height"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise SkyfixError(f"{path} is not a ROS camera_info YAML ({exc})") from None
    if d.size < 4 or info.get("distortion_model", "plumb_bob") not in ("plumb_bob",
                                                                         "rational_polynomial"):
        raise SkyfixError(f"{path}: distortion model {info.get('distortion_model')!r} "
                          f"is not supported (plumb_bob)")
    d5 = tuple(float(x) for x in np.pad(d[:5], (0, max(0, 5 - d.size))))
    return CameraModel(w, h, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]),
                       d5)  # type: ignore[arg-type]
