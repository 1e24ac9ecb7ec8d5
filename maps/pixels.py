"""The map's own pixels at a level's ground resolution: what the tiles' features were
computed from (skyfix.maps.tiles) and what matching refines its pairs against
(skyfix.runtime.nav.refine).

A level pixel is `scale` = level GSD / ortho GSD pixels of the pack's `ortho.tif`, read
with average resampling when coarser, nearest at the native GSD, bilinear when finer.
Pixel (j, i) of a level, counted from the ortho's top-left corner, has its centre at map
E = left + (j + 0.5) gsd, N = top - (i + 0.5) gsd: the convention of tile keypoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

ORTHO_FILE = "ortho.tif"  # a pack's mosaic, in the pack CRS on the pack grid


@dataclass(frozen=True)
class MapImage:
    """The map's pixels at `gsd_m` over a box. `gray`: [H, W] uint8; `valid`: [H, W] bool
    (imagery, not nodata or outside the map); pixel (j, i) has its centre at map
    E = left_e_m + (j + 0.5) gsd_m, N = top_n_m - (i + 0.5) gsd_m."""

    gray: np.ndarray
    valid: np.ndarray
    left_e_m: float
    top_n_m: float
    gsd_m: float


def read_level(ds: rasterio.DatasetReader, x0: float, y0: float, scale: float, width: int,
               height: int) -> tuple[np.ndarray, np.ndarray, int]:
    """([height, width] uint8 gray, [height, width] bool valid, pixels inside the map) of
    the level window whose top-left corner is level pixel (x0 >= 0, y0 >= 0); one level
    pixel = `scale` ortho pixels; what lies beyond the map's right or bottom edge is 0 and
    not valid."""
    cols = max(0, min(width, math.floor(ds.width / scale - x0 + 1e-6)))
    rows = max(0, min(height, math.floor(ds.height / scale - y0 + 1e-6)))
    gray = np.zeros((height, width), np.uint8)
    valid = np.zeros((height, width), bool)
    if rows == 0 or cols == 0:
        return gray, valid, 0
    k = round(scale)
    if abs(scale - k) < 1e-9 and float(x0 * k).is_integer() and float(y0 * k).is_integer():
        # whole ortho pixels: read them all and average k x k blocks here (GDAL's decimated
        # reads go through overviews whose pixels need not be exactly k ortho pixels: the
        # tiles' keypoints moved 0.15 px at k = 2, measured)
        win = Window(int(x0 * k), int(y0 * k), cols * k, rows * k)
        px = ds.read(window=win)
        mask = ds.dataset_mask(window=win)
        if k > 1:
            blocks = px.reshape(ds.count, rows, k, cols, k).sum(axis=(2, 4), dtype=np.uint32)
            px = ((blocks + k * k // 2) // (k * k)).astype(np.uint8)
            mask = mask.reshape(rows, k, cols, k).min(axis=(1, 3))
    else:
        win = Window(x0 * scale, y0 * scale, cols * scale, rows * scale)
        resampling = Resampling.average if scale > 1 else Resampling.bilinear
        px = ds.read(window=win, out_shape=(ds.count, rows, cols), resampling=resampling)
        mask = ds.dataset_mask(window=win, out_shape=(rows, cols),
                               resampling=Resampling.nearest)
    gray[:rows, :cols] = (cv2.cvtColor(np.ascontiguousarray(px.transpose(1, 2, 0)),
                                       cv2.COLOR_RGB2GRAY) if ds.count == 3 else px[0])
    valid[:rows, :cols] = mask > 0
    return gray, valid, rows * cols


def _span(box_en: tuple[float, float, float, float], left: float, top: float, gsd_m: float,
          width: int, height: int) -> tuple[int, int, int, int] | None:
    """(col0, row0, col1, row1): the whole pixels of a [height, width] grid with its
    top-left corner at map (left, top) that cover box_en, or None when it misses them."""
    c0 = max(0, math.floor((box_en[0] - left) / gsd_m))
    r0 = max(0, math.floor((top - box_en[3]) / gsd_m))
    c1 = min(width, math.ceil((box_en[2] - left) / gsd_m))
    r1 = min(height, math.ceil((top - box_en[1]) / gsd_m))
    return None if c1 <= c0 or r1 <= r0 else (c0, r0, c1, r1)


def read_map_image(ds: rasterio.DatasetReader, gsd_m: float,
                   box_en: tuple[float, float, float, float]) -> MapImage | None:
    """The pixels of the level of `gsd_m` covering box_en (min E, min N, max E, max N) of
    the ortho `ds`, or None when the box misses the map."""
    left, top = ds.transform.c, ds.transform.f
    scale = gsd_m / ds.transform.a
    span = _span(box_en, left, top, gsd_m, math.floor(ds.width / scale + 1e-6),
                 math.floor(ds.height / scale + 1e-6))
    if span is None:
        return None
    x0, y0, x1, y1 = span
    gray, valid, _ = read_level(ds, x0, y0, scale, x1 - x0, y1 - y0)
    return MapImage(gray, valid, left + x0 * gsd_m, top - y0 * gsd_m, gsd_m)


def crop_map_image(image: MapImage, box_en: tuple[float, float, float, float]
                   ) -> MapImage | None:
    """The part of `image` covering box_en (whole pixels around it), or None when the box
    misses it."""
    g = image.gsd_m
    span = _span(box_en, image.left_e_m, image.top_n_m, g, image.gray.shape[1],
                 image.gray.shape[0])
    if span is None:
        return None
    c0, r0, c1, r1 = span
    return MapImage(image.gray[r0:r1, c0:c1], image.valid[r0:r1, c0:c1],
                    image.left_e_m + c0 * g, image.top_n_m - r0 * g, g)
