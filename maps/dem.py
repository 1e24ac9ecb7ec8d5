"""Terrain model of a map pack: a DEM resampled onto the pack grid, and height lookups.

The DEM is stored as `dem.npy`, [H, W] float32 metres (NaN = unknown), on the pack's own
grid (same CRS, same top-left corner at (min E, max N)) with pixels of `dem_gsd_m` = an
integer multiple of the ortho GSD close to the DEM's own resolution (a 1 m DEM under a
0.30 m ortho is kept at 0.90 m, not blown up to 0.30 m). Heights are bilinear in the
source DEM; a pixel with a nodata neighbour in the source is NaN.

Written row block by row block, so memory stays bounded for any map size.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from skyfix.runtime.core.errors import SkyfixError

if TYPE_CHECKING:
    from skyfix.maps.build import Grid

DEM_FILE = "dem.npy"
ROWS_PER_BLOCK = 512


def dem_shape(bounds_en: tuple[float, float, float, float], dem_gsd_m: float) -> tuple[int, int]:
    """(H, W) of the DEM grid covering `bounds_en` (min E, min N, max E, max N)."""
    w, s, e, n = bounds_en
    return (max(1, math.ceil((n - s) / dem_gsd_m - 1e-6)),
            max(1, math.ceil((e - w) / dem_gsd_m - 1e-6)))


def write_dem(src_path: Path, grid: Grid, dst: Path) -> float:
    """Resample the DEM at `src_path` onto `grid` (coarsened) into `dst`; return dem_gsd_m.

    Raises SkyfixError (one line) for an unreadable DEM, one without georeferencing, or one
    that does not overlap the map.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(src_path)
    except RasterioError as e:
        raise SkyfixError(f"{src_path}: DEM is not a readable raster ({_line(e)})") from None
    with ds:
        if ds.crs is None or ds.transform.is_identity:
            raise SkyfixError(f"{src_path}: DEM has no georeferencing (CRS/geotransform missing)")
        w, s, e, n = transform_bounds(ds.crs, grid.crs, *ds.bounds, densify_pts=21)
        gw, gs, ge, gn = grid.bounds_en
        if e <= gw or w >= ge or n <= gs or s >= gn:
            raise SkyfixError(
                f"{src_path}: DEM does not overlap the orthophoto (DEM covers E {w:.0f}..{e:.0f}"
                f" N {s:.0f}..{n:.0f}, the map E {gw:.0f}..{ge:.0f} N {gs:.0f}..{gn:.0f}"
                f" in {grid.crs.to_string()})")
        native = min((e - w) / ds.width, (n - s) / ds.height)
        factor = max(1, round(native / grid.gsd_m))
        gsd = factor * grid.gsd_m
        height, width = dem_shape(grid.bounds_en, gsd)
        transform = Affine(gsd, 0.0, gw, 0.0, -gsd, gn)
        out = np.lib.format.open_memmap(dst, mode="w+", dtype=np.float32, shape=(height, width))
        try:
            with WarpedVRT(ds, crs=grid.crs, transform=transform, width=width, height=height,
                           resampling=Resampling.bilinear, dtype="float32",
                           add_alpha=ds.nodata is None) as vrt:
                for r in range(0, height, ROWS_PER_BLOCK):
                    win = Window(0, r, width, min(ROWS_PER_BLOCK, height - r))
                    block = vrt.read(1, window=win).astype(np.float32)
                    block[vrt.dataset_mask(window=win) == 0] = np.nan
                    out[r:r + win.height] = block
        except RasterioError as e:
            raise SkyfixError(f"{src_path}: DEM read failed ({_line(e)})") from None
        finally:
            out.flush()
            del out
    return gsd


def terrain_lookup(dem: np.ndarray, origin_en: tuple[float, float], gsd_m: float,
                   east_m: np.ndarray, north_m: np.ndarray) -> np.ndarray:
    """Bilinear height of [H, W] `dem` (pixel centres at origin + (i + 0.5) * gsd) at map
    points `east_m`, `north_m` (float64, one shape); NaN outside or next to a NaN pixel."""
    x = (east_m - origin_en[0]) / gsd_m - 0.5
    y = (origin_en[1] - north_m) / gsd_m - 0.5
    h, w = dem.shape
    ok = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (y >= -0.5) & (x <= w - 0.5) \
        & (y <= h - 0.5)
    out = np.full(x.shape, np.nan)
    xs, ys = np.clip(x[ok], 0, w - 1), np.clip(y[ok], 0, h - 1)
    x0 = np.minimum(np.floor(xs).astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(np.floor(ys).astype(np.int64), max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = xs - x0, ys - y0
    z00, z01 = dem[y0, x0].astype(np.float64), dem[y0, x1].astype(np.float64)
    z10, z11 = dem[y1, x0].astype(np.float64), dem[y1, x1].astype(np.float64)
    out[ok] = ((z00 * (1 - fx) + z01 * fx) * (1 - fy) + (z10 * (1 - fx) + z11 * fx) * fy)
    return out


def _line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
