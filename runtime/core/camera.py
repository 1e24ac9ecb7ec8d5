"""Pinhole camera with OpenCV's radial-tangential distortion (k1, k2, p1, p2, k3).

The YAML form is the one OpenCV's FileStorage reads and writes
(`image_width`, `image_height`, `camera_matrix`, `distortion_coefficients`), so a
file from `cv2.FileStorage` or ROS's camera_calibration converter loads as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from skyfix.runtime.core.errors import SkyfixError


@dataclass(frozen=True)
class CameraModel:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    dist: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        """Refuse a camera no image can come from: a size outside 1..65536 px, a focal
        length that is not a positive finite number of pixels, a principal point or a
        distortion coefficient that is not finite."""
        if not all(isinstance(v, int) and 1 <= v <= 65536 for v in (self.width, self.height)):
            raise SkyfixError(f"camera size {self.width}x{self.height} px is not 1..65536 px")
        if not all(math.isfinite(f) and 0 < f < 1e7 for f in (self.fx, self.fy)):
            raise SkyfixError(f"camera focal length fx={self.fx}, fy={self.fy} px must be "
                              "positive (and finite)")
        if not all(math.isfinite(v) for v in (self.cx, self.cy, *self.dist)):
            raise SkyfixError("camera principal point and distortion must be finite numbers")

    @property
    def K(self) -> np.ndarray:
        """[3, 3] float64 intrinsic matrix."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)

    @property
    def dist_array(self) -> np.ndarray:
        """[5] float64 distortion coefficients in OpenCV order."""
        return np.asarray(self.dist, np.float64)

    @property
    def hfov_deg(self) -> float:
        return float(np.degrees(2 * np.arctan2(self.width / 2, self.fx)))

    @cached_property
    def undistort_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """Remap tables that turn a distorted image into the ideal pinhole image (same K)."""
        return cv2.initUndistortRectifyMap(
            self.K, self.dist_array, None, self.K, (self.width, self.height), cv2.CV_16SC2
        )

    def undistort_image(self, image: np.ndarray) -> np.ndarray:
        if not any(self.dist):
            return image
        m1, m2 = self.undistort_maps
        return cv2.remap(image, m1, m2, cv2.INTER_LINEAR)

    def distort_normalized(self, xy: np.ndarray) -> np.ndarray:
        """[N, 2] ideal normalised coordinates -> [N, 2] distorted pixel coordinates."""
        pts = np.concatenate([xy, np.ones((len(xy), 1))], axis=1).astype(np.float64)
        px, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), self.K, self.dist_array)
        return px.reshape(-1, 2)

    def pixel_rays(self) -> np.ndarray:
        """[H, W, 2] float64 ideal normalised coordinates (x/z, y/z) of every pixel centre."""
        u, v = np.meshgrid(np.arange(self.width), np.arange(self.height))
        pts = np.stack([u, v], -1).reshape(-1, 1, 2).astype(np.float64)
        xy = cv2.undistortPointsIter(
            pts, self.K, self.dist_array, None, None,
            (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 1e-9),
        )
        return xy.reshape(self.height, self.width, 2)

    def scaled(self, factor: float) -> CameraModel:
        """The same camera with images resized by `factor`."""
        return CameraModel(
            round(self.width * factor), round(self.height * factor), self.fx * factor,
            self.fy * factor, (self.cx + 0.5) * factor - 0.5, (self.cy + 0.5) * factor - 0.5,
            self.dist,
        )

    @classmethod
    def from_fov(cls, width: int, height: int, hfov_deg: float,
                 dist: tuple[float, float, float, float, float] = (0.0,) * 5) -> CameraModel:
        f = width / 2 / np.tan(np.radians(hfov_deg) / 2)
        return cls(width, height, f, f, (width - 1) / 2, (height - 1) / 2, dist)

    def save(self, path: Path) -> None:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
        fs.write("image_width", self.width)
        fs.write("image_height", self.height)
        fs.write("camera_matrix", self.K)
        fs.write("distortion_coefficients", self.dist_array.reshape(1, 5))
        fs.release()

    @classmethod
    def load(cls, path: Path) -> CameraModel:
        path = Path(path)
        if not path.is_file():
            raise SkyfixError(f"camera file not found: {path}")
        if path.stat().st_size > 1_000_000:
            raise SkyfixError(f"camera file {path} is larger than 1 MB: not a camera file")
        try:
            fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
            if not fs.root().isMap():
                raise SkyfixError(f"camera file {path} must hold a mapping (image_width, ...)")
            K = fs.getNode("camera_matrix").mat()
            d = fs.getNode("distortion_coefficients").mat()
            w, h = fs.getNode("image_width").real(), fs.getNode("image_height").real()
            fs.release()
        except (cv2.error, SystemError) as exc:  # OpenCV's parser fails both ways
            reason = getattr(exc, "msg", None) or str(exc.__cause__ or exc)
            raise SkyfixError(f"camera file {path} is not OpenCV YAML: {reason}") from None
        if (K is None or K.shape != (3, 3) or not np.isfinite(K).all()
                or not all(math.isfinite(v) and v >= 1 for v in (w, h))):
            raise SkyfixError(
                f"camera file {path} needs image_width, image_height and a 3x3 camera_matrix"
            )
        d = np.zeros(5) if d is None else np.ravel(d)
        if d.size not in (4, 5, 8) or not np.isfinite(d).all():
            raise SkyfixError(
                f"camera file {path}: distortion_coefficients must have 4, 5 or 8 values")
        d5 = tuple(float(x) for x in np.pad(d[:5], (0, max(0, 5 - d.size))))
        try:
            return cls(int(w), int(h), float(K[0, 0]), float(K[1, 1]), float(K[0, 2]),
                       float(K[1, 2]), d5)  # type: ignore[arg-type]
        except SkyfixError as exc:
            raise SkyfixError(f"camera file {path}: {exc}") from None
