"""Dense structure channels: where the image has edges, and in which direction, regardless
of their brightness or contrast sign. The coarse stage of cross-date matching
(skyfix.runtime.nav.coarse) correlates these instead of pixels, because a field edge, a road
or a roof line keeps its place and direction from one year, season or sensor to the next
while its brightness does not.

For an image at STRUCTURE_FACTOR times its level's GSD (after a Gaussian of sigma
PRE_SIGMA_PX):

    g_k     = | cos(theta_k) dI/dx + sin(theta_k) dI/dy |,  theta_k = k pi / N_ORIENT
              (unsigned: a contrast reversal leaves it unchanged)
    smooth  Gaussian over space (SPATIAL_SIGMA_PX) and [1/4, 1/2, 1/4] over orientation
            (circular)
    norm    c_k = g_k / (|g|_2 + EPS): a unit vector where there is an edge, small in flat
            or noise-only areas (EPS in Sobel units of 8-bit intensity)

The map side is precomputed at build time and stored in the pack as one [N_ORIENT, H, W]
uint8 array per level (`structure_l{L}.npy`, values x 255), on the pack grid coarsened by
STRUCTURE_FACTOR (origin: the grid's top-left corner), written block by block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

N_ORIENT = 8
STRUCTURE_FACTOR = 2  # channels at this many times the level's GSD
PRE_SIGMA_PX = 0.8
SPATIAL_SIGMA_PX = 1.0
EPS = 12.0
BLOCK_PX = 1024  # output pixels per block side when writing a pack's channels
MARGIN_PX = 8  # block overlap: more than the filters reach
_THETA = np.arange(N_ORIENT) * np.pi / N_ORIENT
_DIRECTIONS = np.stack([np.cos(_THETA), np.sin(_THETA)]).astype(np.float32)  # [2, N]
# [N, N]: [1/4, 1/2, 1/4] over orientation, circular
_RING = (0.5 * np.eye(N_ORIENT) + 0.25 * np.roll(np.eye(N_ORIENT), 1, 0)
         + 0.25 * np.roll(np.eye(N_ORIENT), -1, 0)).astype(np.float32)


@dataclass(frozen=True)
class StructureWindow:
    """The pack's structure channels around a prior. `channels`: [C, H, W] float32 in
    [0, 1]; `left_e_m`, `top_n_m`: the map coordinates of its top-left pixel's outer
    corner; `gsd_m`: metres per channel pixel."""

    channels: np.ndarray
    left_e_m: float
    top_n_m: float
    gsd_m: float


def structure_file(level: int) -> str:
    """File name of level `level`'s structure channels in a pack."""
    return f"structure_l{level}.npy"


def structure_channels(gray: np.ndarray) -> np.ndarray:
    """[N_ORIENT, H, W] float32 channels (see the module docstring) of [H, W] uint8 (or
    float) gray, computed at the resolution it is given in."""
    img = cv2.GaussianBlur(np.asarray(gray, np.float32), (0, 0), PRE_SIGMA_PX)
    h, w = img.shape
    grad = np.stack([cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3),
                     cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)], -1).reshape(-1, 2)
    ch = np.abs(grad @ _DIRECTIONS).reshape(h, w, N_ORIENT)  # g_k, [H, W, N]: one blur call
    ch = cv2.GaussianBlur(ch, (0, 0), SPATIAL_SIGMA_PX).reshape(-1, N_ORIENT) @ _RING
    ch /= np.sqrt(np.einsum("ij,ij->i", ch, ch))[:, None] + EPS
    return np.ascontiguousarray(ch.reshape(h, w, N_ORIENT).transpose(2, 0, 1))


def downsample(gray: np.ndarray, factor: int = STRUCTURE_FACTOR) -> np.ndarray:
    """[ceil(H / f), ceil(W / f)] float32 block average of [H, W] gray (pixel (i, j) is the
    mean of source pixels f i .. f i + f - 1)."""
    h, w = gray.shape
    ph, pw = -h % factor, -w % factor
    g = cv2.copyMakeBorder(np.asarray(gray, np.float32), 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    return cv2.resize(g, (g.shape[1] // factor, g.shape[0] // factor),
                      interpolation=cv2.INTER_AREA)


def write_structure(ortho: Path, level_gsd_m: float, dst: Path) -> tuple[int, int]:
    """Write level `level_gsd_m`'s channels of `ortho` (the pack's mosaic) to `dst` (.npy);
    return its (height, width). Block by block with a margin, so memory stays bounded."""
    with rasterio.open(ortho) as ds:
        gsd = level_gsd_m * STRUCTURE_FACTOR
        scale = gsd / ds.transform.a  # ortho pixels per channel pixel
        w, h = int(np.ceil(ds.width / scale)), int(np.ceil(ds.height / scale))
        out = np.lib.format.open_memmap(dst, mode="w+", dtype=np.uint8,
                                        shape=(N_ORIENT, h, w))
        for r0 in range(0, h, BLOCK_PX):
            for c0 in range(0, w, BLOCK_PX):
                r1, c1 = min(h, r0 + BLOCK_PX), min(w, c0 + BLOCK_PX)
                rr0, cc0 = max(0, r0 - MARGIN_PX), max(0, c0 - MARGIN_PX)
                rr1, cc1 = min(h, r1 + MARGIN_PX), min(w, c1 + MARGIN_PX)
                win = Window(cc0 * scale, rr0 * scale, (cc1 - cc0) * scale, (rr1 - rr0) * scale)
                px = ds.read(window=win, out_shape=(ds.count, rr1 - rr0, cc1 - cc0),
                             resampling=Resampling.average, boundless=True, fill_value=0)
                gray = (cv2.cvtColor(np.ascontiguousarray(px.transpose(1, 2, 0)),
                                     cv2.COLOR_RGB2GRAY) if ds.count == 3 else px[0])
                ch = structure_channels(gray)
                ch = ch[:, r0 - rr0:r0 - rr0 + (r1 - r0), c0 - cc0:c0 - cc0 + (c1 - c0)]
                out[:, r0:r1, c0:c1] = np.round(ch * 255).astype(np.uint8)
        out.flush()
        del out
    return h, w


def structure_shape(bounds_en: tuple[float, ...], gsd_m: float) -> tuple[int, int, int]:
    """(N_ORIENT, H, W) of the channels of a pack with `bounds_en` at `gsd_m`."""
    return (N_ORIENT, math.ceil((bounds_en[3] - bounds_en[1]) / gsd_m - 1e-6),
            math.ceil((bounds_en[2] - bounds_en[0]) / gsd_m - 1e-6))


def crop_structure(arr: np.ndarray, gsd_m: float, left_top_en: tuple[float, float],
                   centre_en: np.ndarray, half_m: float) -> StructureWindow:
    """The square centre_en +- half_m of the [C, H, W] uint8 channels `arr` whose top-left
    corner is at map `left_top_en`, as float32 in [0, 1], zeros outside."""
    left, top = left_top_en
    c0 = math.floor((centre_en[0] - half_m - left) / gsd_m)
    r0 = math.floor((top - centre_en[1] - half_m) / gsd_m)
    size = math.ceil(2 * half_m / gsd_m) + 1
    out = np.zeros((arr.shape[0], size, size), np.float32)
    ra, rb = max(r0, 0), min(r0 + size, arr.shape[1])
    ca, cb = max(c0, 0), min(c0 + size, arr.shape[2])
    if ra < rb and ca < cb:
        out[:, ra - r0:rb - r0, ca - c0:cb - c0] = arr[:, ra:rb, ca:cb] * np.float32(1 / 255)
    return StructureWindow(out, left + c0 * gsd_m, top - r0 * gsd_m, gsd_m)
