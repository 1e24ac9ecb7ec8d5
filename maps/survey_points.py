"""The sparse points of a survey-built map pack (`survey_points.npz`), for registering
frames against them in six degrees of freedom (skyfix.runtime.nav.register3d).

Written by `skyfix maps survey` from its structure from motion: every point's position
(map east, north in the pack's CRS, and altitude) and the SIFT descriptor of every photo
that saw it, as COLMAP computed them on the photos scaled to `sift_max_px`. A frame is
described the same way before it is matched to them (`sift_options`).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skyfix.runtime.core.errors import SkyfixError

SURVEY_POINTS_FILE = "survey_points.npz"
# SIFT features per photo, the survey's and the frames registered against it alike (with
# 4096 the SfM placed fewer of a sparse survey's photos: README "Survey-built maps")
SIFT_MAX_FEATURES = 8192
FORMAT = "skyfix-survey-points/1"


@dataclass(frozen=True)
class SurveyPoints:
    """The survey's sparse points. `xyz_m`: [P, 3] float64 map east, north and altitude
    (the survey's GNSS altitudes); `descriptors`: [M, 128] uint8, COLMAP's SIFT of each
    observation of a point; `point`: [M] int32, the point each one saw; `sift_max_px`: the
    longest side the survey's photos were scaled to for their features."""

    xyz_m: np.ndarray
    descriptors: np.ndarray
    point: np.ndarray
    sift_max_px: int

    def save(self, path: Path) -> None:
        np.savez(path, format=np.array(FORMAT), xyz_m=self.xyz_m,
                 descriptors=self.descriptors, point=self.point,
                 sift_max_px=np.array(self.sift_max_px))

    @classmethod
    def load(cls, path: Path) -> SurveyPoints:
        """The points in `path`; SkyfixError (one line) when they are not a whole, consistent
        set."""
        try:
            with np.load(path, allow_pickle=False) as z:
                fmt = str(z["format"])
                pts = cls(np.asarray(z["xyz_m"], np.float64), np.asarray(z["descriptors"]),
                          np.asarray(z["point"]), int(z["sift_max_px"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise SkyfixError(f"{path}: not readable survey points ({exc})") from None
        if fmt != FORMAT:
            raise SkyfixError(f"{path}: format {fmt!r}, this skyfix reads {FORMAT!r}")
        P, M = len(pts.xyz_m), len(pts.point)
        ok = (pts.xyz_m.ndim == 2 and pts.xyz_m.shape[1] == 3
              and bool(np.isfinite(pts.xyz_m).all())
              and pts.descriptors.shape == (M, 128) and pts.descriptors.dtype == np.uint8
              and pts.point.ndim == 1 and pts.point.dtype.kind == "i"
              and (M == 0 or (int(pts.point.min()) >= 0 and int(pts.point.max()) < P))
              and 64 <= pts.sift_max_px <= 16384)
        if not ok:
            raise SkyfixError(f"{path}: survey points of inconsistent shapes or values")
        return pts


def sift_options(pycolmap, max_px: int, max_features: int, threads: int = 1):
    """COLMAP's SIFT settings of a survey's photos and of the frames registered against
    them: the image scaled to `max_px` on its longest side, at most `max_features`."""
    opts = pycolmap.FeatureExtractionOptions()
    opts.max_image_size = max_px
    opts.sift.max_num_features = max_features
    opts.num_threads = threads
    return opts
