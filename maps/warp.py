"""Fast block-wise reprojection of a raster onto a north-up grid (OpenCV remap).

    output block --pixel centres, every NODE_PX px--> exact transform to the source CRS
    (PROJ) --bilinear between the nodes--> per-pixel source coordinates --cv2.remap-->
    block, and its valid mask

Over a few hundred metres any map projection is smooth, so coordinates interpolated
between nodes NODE_PX apart are within a small fraction of a pixel of exact (checked in
tests against GDAL). When the source is finer than the output by more than
`PREBLUR_FACTOR`, its window is read averaged down (GDAL) to about the output's
resolution, so that sampling does not alias and memory stays bounded. GDAL's
general warper does the same job several times slower on this kind of input.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import transform as crs_transform
from rasterio.windows import Window

NODE_PX = 32  # spacing of exactly transformed points
PREBLUR_FACTOR = 1.25  # source finer than this x the output: average down first
MARGIN_PX = 3  # source pixels read beyond the sampled area (bilinear + rounding)


def _interp_matrix(n: int, step: int, nodes: int) -> np.ndarray:
    """[n, nodes] weights that interpolate linearly between nodes at 0, step, 2 step..."""
    pos = np.arange(n, dtype=np.float64) / step
    i = np.minimum(pos.astype(np.int64), nodes - 2)
    t = pos - i
    m = np.zeros((n, nodes))
    m[np.arange(n), i] = 1 - t
    m[np.arange(n), i + 1] = t
    return m


def warp_block(src: rasterio.DatasetReader, dst_crs: CRS, dst_transform: Affine,
               win: Window, bands: list[int], terrain: bool) -> tuple[np.ndarray, np.ndarray]:
    """([C, h, w] pixels of `bands`, [h, w] bool valid) of output window `win` of the grid
    (`dst_crs`, `dst_transform`), sampled from `src` (its dataset mask, or NaN for
    terrain): cubically where imagery is about as fine as the output, else bilinearly."""
    h, w = int(win.height), int(win.width)
    dtype = np.float32 if terrain else np.uint8
    out = np.full((len(bands), h, w), np.nan if terrain else 0, dtype)
    valid = np.zeros((h, w), bool)
    nx, ny = math.ceil(w / NODE_PX) + 1, math.ceil(h / NODE_PX) + 1
    u, v = np.meshgrid(np.arange(nx) * NODE_PX, np.arange(ny) * NODE_PX)
    east, north = dst_transform * (win.col_off + u + 0.5, win.row_off + v + 0.5)
    xs, ys = crs_transform(dst_crs, src.crs, east.ravel().tolist(), north.ravel().tolist())
    col, row = ~src.transform * (np.asarray(xs), np.asarray(ys))
    col, row = col.reshape(u.shape) - 0.5, row.reshape(u.shape) - 0.5  # centres at integers
    c0 = max(0, math.floor(col.min()) - MARGIN_PX)
    r0 = max(0, math.floor(row.min()) - MARGIN_PX)
    c1 = min(src.width, math.ceil(col.max()) + MARGIN_PX + 1)
    r1 = min(src.height, math.ceil(row.max()) + MARGIN_PX + 1)
    if c1 <= c0 or r1 <= r0:
        return out, valid
    sw = Window(c0, r0, c1 - c0, r1 - r0)
    col, row = col - c0, row - r0
    scale = _source_per_output_px(col, row)
    # a source much finer than the output is read averaged down (bounded memory, no alias)
    f = 1.0 / scale if scale > PREBLUR_FACTOR else 1.0
    shape = (max(1, round(sw.height * f)), max(1, round(sw.width * f)))
    fx, fy = shape[1] / sw.width, shape[0] / sw.height
    col, row = (col + 0.5) * fx - 0.5, (row + 0.5) * fy - 0.5
    img = np.moveaxis(src.read(bands, window=sw, out_shape=(len(bands), *shape),
                               resampling=Resampling.average), 0, -1)
    if terrain:
        img = img.astype(np.float32)
        mask = np.isfinite(img[:, :, 0])
        if src.nodata is not None and np.isfinite(src.nodata):
            mask &= img[:, :, 0] != src.nodata
        img[~mask] = np.nan
        m8 = mask.astype(np.uint8) * 255
    else:
        m8 = src.read_masks(1, window=sw, out_shape=shape, resampling=Resampling.average)
    mx, my = _interp_matrix(w, NODE_PX, nx), _interp_matrix(h, NODE_PX, ny)
    map_x = (my @ col @ mx.T).astype(np.float32)
    map_y = (my @ row @ mx.T).astype(np.float32)
    img = np.ascontiguousarray(img).reshape(img.shape[0], img.shape[1], -1)
    # imagery about as fine as the output is sampled cubically, as `maps build` warps:
    # bilinear blurs by up to half a pixel where the grids fall half a pixel apart. A pixel
    # is then valid where the cubic's 4 x 4 source pixels all are: the mask, eroded by one
    # pixel, sampled bilinearly (MARGIN_PX keeps the block's edge out of it)
    cubic = not terrain and f == 1.0
    if cubic:
        m8 = cv2.erode(m8, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                       borderValue=0)
    warped = cv2.remap(img, map_x, map_y, cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT,
                       borderValue=float("nan") if terrain else 0)
    warped = warped.reshape(h, w, -1)
    ok = cv2.remap(m8, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                   borderValue=0) >= 255 - 1
    if terrain:
        ok &= np.isfinite(warped[:, :, 0])
    out[:] = np.moveaxis(warped, -1, 0)
    if terrain:
        out[:, ~ok] = np.nan
    else:
        out[:, ~ok] = 0
    return out, ok


def _source_per_output_px(col: np.ndarray, row: np.ndarray) -> float:
    """Source pixels per output pixel (mean of both axes) from the node grid."""
    dx = np.hypot(np.diff(col, axis=1), np.diff(row, axis=1)).mean() / NODE_PX \
        if col.shape[1] > 1 else 1.0
    dy = np.hypot(np.diff(col, axis=0), np.diff(row, axis=0)).mean() / NODE_PX \
        if col.shape[0] > 1 else 1.0
    return float((dx + dy) / 2)
