"""Orthomosaic of a reconstructed survey: ground surface, orthorectification, blending.

    sparse points --robust plane--> GroundSurface   (or a DEM resampled onto the grid)
    grid cell (e, n) --z = ground(e, n)--> world point --each camera--> pixel --> sample

The ground surface without a DEM is the plane z = a e + b n + c fitted to the sparse points
by least squares, refitted without points more than 3 x their median absolute residual off
(trees, roofs, outliers). Each photo is first scaled to about the mosaic's resolution
(INTER_AREA, so that it does not alias), then every grid cell inside its footprint is
projected into it and sampled (bilinear).

Seams are blended by feathering: a photo's weight at a pixel is

    w = (d / d_max)^FEATHER_POWER,  d = distance to the nearest photo border,

d_max = half the photo's shorter side, so a cell takes most of its colour from the photo
that sees it nearest to that photo's centre (least relief displacement), and the
hand-over from one photo to the next is a smooth ramp instead of a cut. The mosaic is
sum(w I) / sum(w); cells no photo sees are masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject
from tqdm import tqdm

from skyfix.maps.survey_sfm import SurveyModel
from skyfix.runtime.core.errors import SkyfixError

FEATHER_POWER = 2.0
PLANE_MIN_POINTS = 10
MAX_MOSAIC_PX = 20_000  # a longer side is a wrong GSD or a broken reconstruction


@dataclass(frozen=True)
class MosaicGrid:
    """North-up grid of the mosaic: `transform` maps (col, row) to (east, north)."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    def cell_centres(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """([h, w] east, [h, w] north) of the cell centres in a window."""
        c, r = np.meshgrid(np.arange(cols.start, cols.stop) + 0.5,
                           np.arange(rows.start, rows.stop) + 0.5)
        t = self.transform
        return t.c + c * t.a, t.f + r * t.e


@dataclass(frozen=True)
class GroundSurface:
    """Ground height of the mosaic grid: [H, W] float64 metres (same datum as the GNSS
    altitudes); `source`: "plane" (from the sparse points) or "dem"; `plane`: (a, b, c) of
    z = a e + b n + c (for a DEM, the plane fitted to it as a summary)."""

    height_m: np.ndarray
    source: str
    plane: tuple[float, float, float]


def fit_plane(points_m: np.ndarray) -> tuple[float, float, float]:
    """(a, b, c) of the robust plane z = a e + b n + c through `points_m` [P, 3]."""
    if len(points_m) < PLANE_MIN_POINTS:
        raise SkyfixError(f"the reconstruction has {len(points_m)} points, too few for a "
                          f"ground surface (at least {PLANE_MIN_POINTS})")
    A = np.column_stack([points_m[:, 0], points_m[:, 1], np.ones(len(points_m))])
    z = points_m[:, 2]
    keep = np.ones(len(z), bool)
    for _ in range(3):
        coef = np.linalg.lstsq(A[keep], z[keep], rcond=None)[0]
        r = np.abs(z - A @ coef)
        mad = float(np.median(r[keep]))
        keep = r <= max(3 * mad, 1e-3)
    a, b, c = (float(v) for v in coef)
    return a, b, c


def grid_for(model: SurveyModel, ground_z_m: float, gsd_m: float) -> MosaicGrid:
    """The grid covering every registered photo's footprint on the plane z = ground_z_m."""
    cam = model.camera
    corners = np.array([[0, 0], [cam.width - 1, 0], [cam.width - 1, cam.height - 1],
                        [0, cam.height - 1]], np.float64)
    xy = cv2.undistortPoints(corners.reshape(-1, 1, 2), cam.K, cam.dist_array).reshape(-1, 2)
    rays_cam = np.column_stack([xy, np.ones(4)])
    pts = []
    for p in model.poses:
        rays = rays_cam @ p.R_cam_world  # world directions: R^T x
        if (rays[:, 2] >= 0).any():
            continue  # a corner at or above the horizon: no footprint
        lam = (ground_z_m - p.centre_m[2]) / rays[:, 2]
        pts.append(p.centre_m[:2] + lam[:, None] * rays[:, :2])
    if not pts:
        raise SkyfixError("no photo looks down at the ground: not a nadir survey")
    allp = np.concatenate(pts)
    w0, s0 = np.floor(allp.min(axis=0) / gsd_m) * gsd_m
    e1, n1 = np.ceil(allp.max(axis=0) / gsd_m) * gsd_m
    width, height = int(round((e1 - w0) / gsd_m)), int(round((n1 - s0) / gsd_m))
    if max(width, height) > MAX_MOSAIC_PX:
        raise SkyfixError(f"the survey mosaic would be {width}x{height} px at {gsd_m:g} m/px "
                          f"(more than {MAX_MOSAIC_PX} px a side): choose a larger --gsd")
    return MosaicGrid(model.crs, Affine(gsd_m, 0, w0, 0, -gsd_m, n1), width, height)


def ground_surface(model: SurveyModel, grid: MosaicGrid, plane: tuple[float, float, float],
                   dem: Path | None = None) -> GroundSurface:
    """The ground height of every grid cell: the DEM's when given, else the plane's."""
    e, n = grid.cell_centres(slice(0, grid.height), slice(0, grid.width))
    if dem is None:
        a, b, c = plane
        return GroundSurface(a * e + b * n + c, "plane", plane)
    z = np.full((grid.height, grid.width), np.nan, np.float64)
    try:
        with rasterio.open(dem) as src:
            reproject(rasterio.band(src, 1), z, dst_transform=grid.transform, dst_crs=grid.crs,
                      dst_nodata=np.nan, resampling=Resampling.bilinear)
    except rasterio.errors.RasterioError as exc:
        raise SkyfixError(f"DEM {dem}: not a readable GeoTIFF ({exc})") from None
    if not np.isfinite(z).any():
        raise SkyfixError(f"DEM {dem} does not cover the survey area")
    holes = ~np.isfinite(z)
    if holes.any():  # the plane through the DEM's own heights fills what it does not cover
        ok = ~holes
        pts = np.column_stack([e[ok], n[ok], z[ok]])
        step = max(1, len(pts) // 100_000)
        a, b, c = fit_plane(pts[::step])
        z[holes] = a * e[holes] + b * n[holes] + c
    ok = np.isfinite(z)
    pts = np.column_stack([e[ok], n[ok], z[ok]])
    return GroundSurface(z, "dem", fit_plane(pts[:: max(1, len(pts) // 100_000)]))


def mosaic(model: SurveyModel, grid: MosaicGrid, ground: GroundSurface, out: Path,
           progress: bool = True) -> Path:
    """Orthorectify and blend every registered photo onto `grid`; write an RGB GeoTIFF with
    an internal mask to `out` and return `out`."""
    acc = np.zeros((grid.height, grid.width, 3), np.float32)
    wsum = np.zeros((grid.height, grid.width), np.float32)
    for pose in tqdm(model.poses, desc="survey mosaic", unit="photo", disable=not progress):
        image = cv2.imread(str(pose.file), cv2.IMREAD_COLOR)
        if image is None:
            raise SkyfixError(f"{pose.file}: unreadable image")
        if (image.shape[1], image.shape[0]) != (model.camera.width, model.camera.height):
            raise SkyfixError(f"{pose.file}: {image.shape[1]}x{image.shape[0]} px, the other "
                              f"photos are {model.camera.width}x{model.camera.height}")
        # the photo at about the mosaic's resolution: ground metres per photo pixel at nadir
        native_m = (pose.centre_m[2] - float(np.median(ground.height_m))) / model.camera.fx
        factor = min(1.0, native_m / grid.transform.a * 1.5)
        cam = model.camera.scaled(factor) if factor < 1.0 else model.camera
        small = cv2.resize(image, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
        rows, cols = _footprint_window(pose, cam, grid, ground)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            continue
        e, n = grid.cell_centres(rows, cols)
        world = np.stack([e, n, ground.height_m[rows, cols]], -1).reshape(-1, 3)
        px, front = pose.project(cam, world)
        u = px[:, 0].reshape(e.shape).astype(np.float32)
        v = px[:, 1].reshape(e.shape).astype(np.float32)
        d = np.minimum.reduce([u, v, cam.width - 1 - u, cam.height - 1 - v])
        w = np.where(front.reshape(e.shape) & (d > 0),
                     (np.clip(d / (min(cam.width, cam.height) / 2), 0, 1)) ** FEATHER_POWER, 0)
        w = w.astype(np.float32)
        sample = cv2.remap(small, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        acc[rows, cols] += sample.astype(np.float32) * w[..., None]
        wsum[rows, cols] += w
    valid = wsum > 0
    if not valid.any():
        raise SkyfixError("no photo projects onto the mosaic grid")
    rgb = np.zeros_like(acc, np.uint8)
    rgb[valid] = np.clip(acc[valid] / wsum[valid][:, None] + 0.5, 0, 255).astype(np.uint8)
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=3,
                   dtype="uint8", crs=grid.crs, transform=grid.transform, tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate", photometric="RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(out, "w", **profile) as dst:
        dst.write(rgb[..., ::-1].transpose(2, 0, 1))  # OpenCV BGR -> RGB bands
        dst.write_mask(valid.astype(np.uint8) * 255)
    return out


def _footprint_window(pose, cam, grid: MosaicGrid, ground: GroundSurface
                      ) -> tuple[slice, slice]:
    """Rows and columns of the grid that the photo can see (its corners' rays cut with the
    lowest and highest ground of the grid), clipped to the grid."""
    corners = np.array([[0, 0], [cam.width - 1, 0], [cam.width - 1, cam.height - 1],
                        [0, cam.height - 1]], np.float64)
    xy = cv2.undistortPoints(corners.reshape(-1, 1, 2), cam.K, cam.dist_array).reshape(-1, 2)
    rays = np.column_stack([xy, np.ones(4)]) @ pose.R_cam_world
    if (rays[:, 2] >= 0).any():
        return slice(0, 0), slice(0, 0)
    pts = []
    for z in (float(ground.height_m.min()), float(ground.height_m.max())):
        lam = (z - pose.centre_m[2]) / rays[:, 2]
        pts.append(pose.centre_m[:2] + lam[:, None] * rays[:, :2])
    p = np.concatenate(pts)
    t = grid.transform  # north-up: col = (e - c) / a, row = (n - f) / e
    cr = np.column_stack([(p[:, 0] - t.c) / t.a, (p[:, 1] - t.f) / t.e])
    c0, r0 = np.floor(cr.min(axis=0)).astype(int)
    c1, r1 = np.ceil(cr.max(axis=0)).astype(int) + 1
    return (slice(max(0, r0), min(grid.height, r1)), slice(max(0, c0), min(grid.width, c1)))
