"""The comparison baseline: OpenCV SIFT + brute-force matching against every tile in the
prior window, as a straightforward visual localiser does it (no retrieval, no pose solve).

    map     plain SIFT keypoints and descriptors of every tile image of a skyfix map pack,
            read from the pack's own ortho.tif at the tile's resolution (computed once,
            like a map build; `BaselineLocalizer.build_s` says how long it took)
    frame   the same rectification as skyfix (a north-up view at the tile resolution:
            needed to turn a homography into a metric position, and it makes the two
            compare on the same views), then plain SIFT on the view
    search  every tile of that level inside the prior window (the whole level with no
            prior): cv2.BFMatcher k=2 + Lowe's ratio test, RANSAC homography; the tile with
            most inliers wins and the view's nadir pixel, mapped through the homography,
            is the fix. Its 1-sigma is the inliers' reprojection RMS (map metres), floored.

`BaselineLocalizer` has the `look` / `locate` interface of skyfix's `Localizer`, so the
same `Navigator` (filter, odometry, gating) and daemon run on it unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
from tqdm import tqdm

from skyfix.maps.index import window_ids
from skyfix.maps.pack import MapPack
from skyfix.models.features import LocalFeatures
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.types import Fix, Frame, Rejection, Telemetry, View
from skyfix.runtime.nav.navigator import Look
from skyfix.runtime.nav.rectify import rectify
from skyfix.runtime.nav.retrieve import NO_PRIOR, Prior

RATIO = 0.75  # Lowe's ratio, as in his paper
RANSAC_PX = 3.0  # RANSAC reprojection threshold, tile pixels
MAX_FEATURES = 2000  # SIFT keypoints per image (skyfix's RootSIFT keeps as many)


@dataclass(frozen=True)
class SiftTile:
    """One tile's SIFT features. `keypoints_px`: [N, 2] float32 tile pixels (x, y);
    `descriptors`: [N, 128] float32; `origin_en`: map (E, N) of pixel (-0.5, -0.5), the
    tile's top-left corner; `gsd_m`: metres per tile pixel."""

    tile_id: int
    level: int
    keypoints_px: np.ndarray
    descriptors: np.ndarray
    origin_en: tuple[float, float]
    gsd_m: float

    def px_to_en(self, px: np.ndarray) -> np.ndarray:
        """[N, 2] map (E, N) of [N, 2] tile pixels (x, y)."""
        e = self.origin_en[0] + (px[:, 0] + 0.5) * self.gsd_m
        n = self.origin_en[1] - (px[:, 1] + 0.5) * self.gsd_m
        return np.stack([e, n], -1)


@dataclass(frozen=True)
class SiftEncoder:
    """Plain OpenCV SIFT as an encoder (`extract(gray, mask)`, see `sift_features`)."""

    max_features: int = MAX_FEATURES
    id: str = "baseline-opencv-sift"
    dim: int = 128
    embedding_dim: int = 0

    @property
    def sha256(self) -> str:
        return ""

    def extract(self, gray: np.ndarray, mask: np.ndarray | None = None) -> LocalFeatures:
        return sift_features(gray, mask, self.max_features)


def sift_features(gray: np.ndarray, mask: np.ndarray | None = None,
                  max_features: int = MAX_FEATURES) -> LocalFeatures:
    """Plain OpenCV SIFT of a [H, W] uint8 image; descriptors [N, 128] float32 scaled to
    unit length (as OpenCV's own SIFT nearly does), so skyfix's odometry can use them."""
    sift = cv2.SIFT_create(nfeatures=max_features)
    kps, desc = sift.detectAndCompute(gray, None if mask is None else mask.astype(np.uint8) * 255)
    if desc is None or not kps:
        return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32),
                             np.zeros(0, np.float32))
    desc = desc / (np.linalg.norm(desc, axis=1, keepdims=True) + 1e-7)
    return LocalFeatures(np.array([k.pt for k in kps], np.float32), desc.astype(np.float32),
                         np.array([k.response for k in kps], np.float32))


def tile_image(ortho: rasterio.DatasetReader, bounds_en: np.ndarray,
               gsd_m: float) -> tuple[np.ndarray, np.ndarray]:
    """([H, W] uint8 gray, [H, W] bool valid) of the map inside `bounds_en` (min E, min N,
    max E, max N) at `gsd_m` metres per pixel, resampled by area averaging."""
    w, s, e, n = (float(v) for v in bounds_en)
    shape = (max(1, round((n - s) / gsd_m)), max(1, round((e - w) / gsd_m)))
    T = ortho.transform  # north-up: pixel (col, row) -> (T.c + col T.a, T.f + row T.e)
    win = Window((w - T.c) / T.a, (n - T.f) / T.e, (e - w) / T.a, (s - n) / T.e)
    px = ortho.read(window=win, out_shape=(ortho.count, *shape), resampling=Resampling.average,
                    boundless=True, fill_value=0)
    valid = ortho.dataset_mask(window=win, out_shape=shape, resampling=Resampling.nearest,
                               boundless=True) > 0
    rgb = np.ascontiguousarray(px.transpose(1, 2, 0))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if ortho.count == 3 else rgb[:, :, 0]
    return gray, valid


class BaselineLocalizer:
    """SIFT + brute force over the prior window (see the module doc); `look`/`locate` as
    skyfix.runtime.nav.navigator.Localizer."""

    def __init__(self, pack: MapPack, camera: CameraModel, cfg: Config,
                 ratio: float = RATIO, max_features: int = MAX_FEATURES,
                 progress: bool = False) -> None:
        self.pack, self.camera, self.cfg = pack, camera, cfg
        self.ratio, self.encoder = ratio, SiftEncoder(max_features)
        self.matcher = cv2.BFMatcher(cv2.NORM_L2)
        t0 = time.perf_counter()
        self.tiles: dict[int, SiftTile] = {}
        with rasterio.open(pack.path / "ortho.tif") as ortho:
            for tid in tqdm(range(pack.n_tiles), desc="baseline tiles", unit="tile",
                            disable=not progress):
                gsd = float(pack.tile_gsd_m[tid])
                bounds = pack.tile_bounds_en[tid]
                gray, valid = tile_image(ortho, bounds, gsd)
                f = self.encoder.extract(gray, valid)
                self.tiles[tid] = SiftTile(tid, int(pack.tile_level[tid]), f.keypoints,
                                           f.descriptors, (float(bounds[0]), float(bounds[3])),
                                           gsd)
        self.build_s = time.perf_counter() - t0
        self.tiles_matched = 0  # tiles brute-force matched so far (all frames)

    # -- the stages -----------------------------------------------------------------------

    def view(self, frame: Frame, tel: Telemetry) -> tuple[int, View] | Rejection:
        """The frame rectified at the pack level nearest its ground resolution."""
        level = self.pack.level_for_gsd(tel.agl_m / self.camera.fx)
        view = rectify(frame, tel, self.camera, self.pack.levels[level], self.cfg.rectify,
                       self.pack.convergence_deg)
        if view is None:
            return Rejection(frame.t_ns, "no_view", "attitude or height above ground unusable")
        return level, view

    def window_tiles(self, level: int, prior: Prior) -> np.ndarray:
        """[n] int64 ids of the tiles of `level` in the prior window (all of them without
        a prior): no retrieval, every one is matched."""
        if prior.source == "none":
            return np.flatnonzero(self.pack.tile_level == level)
        ids = window_ids(self.pack, prior.centre_en, prior.window_cov)
        return ids[self.pack.tile_level[ids] == level]

    def match(self, view: View, feats: LocalFeatures, tile_ids: np.ndarray) -> Fix | Rejection:
        """Brute-force match the view against each tile; the best tile's homography -> Fix."""
        best: tuple[np.ndarray, np.ndarray, SiftTile, np.ndarray, np.ndarray] | None = None
        for tid in tile_ids:
            tile = self.tiles[int(tid)]
            self.tiles_matched += 1
            if len(feats) < 8 or len(tile.descriptors) < 8:
                continue
            pairs = self.matcher.knnMatch(feats.descriptors, tile.descriptors, k=2)
            good = [p[0] for p in pairs
                    if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
            if len(good) < 8:
                continue
            src = feats.keypoints[[m.queryIdx for m in good]]
            dst = tile.keypoints_px[[m.trainIdx for m in good]]
            H, inl = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PX)
            if H is None or inl is None:
                continue
            keep = inl.ravel().astype(bool)
            if best is None or keep.sum() > best[0].sum():
                best = (keep, H, tile, src, dst)
        if best is None:
            return Rejection(view.t_ns, "few_inliers", "no tile gave a homography")
        keep, H, tile, src, dst = best
        inliers = int(keep.sum())
        if inliers < self.cfg.match.min_inliers:
            return Rejection(view.t_ns, "few_inliers", f"{inliers} < {self.cfg.match.min_inliers}")
        proj = cv2.perspectiveTransform(src[keep][None].astype(np.float64), H)[0]
        rms_m = float(np.sqrt(((proj - dst[keep]) ** 2).sum(1).mean())) * tile.gsd_m
        nadir = cv2.perspectiveTransform(np.array([[view.origin_px]], np.float64), H)[0]
        east, north = tile.px_to_en(nadir)[0]
        # true / reported height: ground metres per view pixel, as matched / as assumed
        scale = float(np.sqrt(abs(np.linalg.det(H[:2, :2])))) * tile.gsd_m / view.gsd_m
        rotation_deg = float(np.degrees(np.arctan2(H[1, 0], H[0, 0])))  # view -> map, image axes
        sigma = max(rms_m, self.cfg.match.sigma_floor_m)
        return Fix(t_ns=view.t_ns, east_m=float(east), north_m=float(north),
                   cov_en_m2=sigma**2 * np.eye(2), agl_m=view.agl_m * scale,
                   heading_err_deg=rotation_deg, tilt_ne_deg=(0.0, 0.0), inliers=inliers,
                   tile_id=tile.tile_id, level=tile.level)

    # -- the Localizer interface ---------------------------------------------------------

    def look(self, frame: Frame, tel: Telemetry, prior: Prior = NO_PRIOR) -> Look | Rejection:
        """Rectified view and its SIFT features (`prior` unused: the height above ground is
        the telemetry's)."""
        out = self.view(frame, tel)
        if isinstance(out, Rejection):
            return out
        level, view = out
        return Look(level, view, self.encoder.extract(view.image, view.mask))

    def locate(self, look: Look, prior: Prior) -> Fix | Rejection:
        ids = self.window_tiles(look.level, prior)
        if not len(ids):
            return Rejection(look.view.t_ns, "no_tiles",
                             f"no tile of level {look.level} in the window")
        return self.match(look.view, look.feats, ids)
