"""Refinement: the inlier pairs of a match moved to where the map's own pixels line up with
the view's, to a fraction of a pixel.

A learned detector places its keypoints to about a pixel (XFeat, on an image and a rotated
copy of it: median 0.9 px apart; SIFT 0.06 px), and the pose turns that noise into tilt and
position error. Once the robust fit (skyfix.runtime.nav.match.robust_similarity) has chosen
the inliers:

    map pixels around the inliers (the pack's ortho.tif at the view's level)
    --warped into the view's pixel grid by the fitted similarity-->
    per inlier: the view's (2 PATCH_R + 1)^2 patch at its keypoint (rounded to a pixel)
    correlated with the warped map within +- SEARCH_PX (normalised cross-correlation)
    --from the whole-pixel peak, Gauss-Newton on the shift (ITERATIONS steps, patches at
      zero mean and unit std)-->
    the pair (that view pixel, the map point the shift lands on)

The Gauss-Newton step, not a parabola through the correlation peak, gives the fraction of
a pixel: a parabola pulls every shift towards a whole pixel, and across a view whose
pixels nearly line up with the map's that pull is one shared bias (Vienna, 250 m: fix
CEP95 0.29 m with a parabola, 0.09 m this way).

A pair moves only where the peak is clear: correlation >= MIN_NCC, not on the edge of the
search, the view patch textured (intensity std >= MIN_STD), every pixel under both
patches valid, and the shift converged within a pixel of the peak. Elsewhere, as across
dates where the pixels differ, the pair keeps its keypoints. The choice of inliers and
the fit's residual (acceptance reads it) are not changed: refinement only sharpens the
pose of a match already found.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from skyfix.maps.pixels import MapImage
from skyfix.runtime.core.types import View

PATCH_R = 7  # view patch: 15 x 15 px
SEARCH_PX = 3  # the map point searched within +- this many px of the fit's prediction
MIN_NCC = 0.6  # correlation of the whole-pixel peak
MIN_STD = 2.0  # gray levels: flatter patches have no peak to find
ITERATIONS = 3  # Gauss-Newton steps of the sub-pixel shift
_INVALID = np.float32(-1e4)  # map pixels without imagery (any sum touching one goes negative)
_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skyfix-refine")

# (level GSD m, (min E, min N, max E, max N)) -> the map's pixels there, or None
MapPixels = Callable[[float, tuple[float, float, float, float]], MapImage | None]


def _affine(view: View, params: np.ndarray, origin: np.ndarray, image: MapImage) -> np.ndarray:
    """[2, 3] view pixel -> `image` pixel under the similarity `params` ([a, b, tx, ty]: map
    = [[a, -b], [b, a]] offset + t + origin, offsets in E/N metres from the view's nadir)."""
    a, b, tx, ty = params
    g, (ox, oy) = view.gsd_m, view.origin_px
    to_offset = np.array([[g, 0, -ox * g], [0, -g, oy * g], [0, 0, 1]])
    to_map = np.array([[a, -b, tx + origin[0]], [b, a, ty + origin[1]], [0, 0, 1]])
    h = image.gsd_m
    to_px = np.array([[1 / h, 0, -image.left_e_m / h - 0.5],
                      [0, -1 / h, image.top_n_m / h - 0.5], [0, 0, 1]])
    return (to_px @ to_map @ to_offset)[:2]


def _peaks(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([n, 2] whole-pixel (dx, dy) from the centre, [n] found) of the maxima of [n, h, w]
    correlation surfaces; not found where the peak is too weak or on the search's edge."""
    n, h, w = c.shape
    flat = c.reshape(n, -1).argmax(1)
    y, x = np.divmod(flat, w)
    found = ((c.reshape(n, -1)[np.arange(n), flat] >= MIN_NCC)
             & (0 < y) & (y < h - 1) & (0 < x) & (x < w - 1))
    return np.column_stack([x, y]).astype(np.float64) - SEARCH_PX, found


def _normalised(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, h, w] patches to zero mean and unit std each, and their 1 / std [n, 1, 1]."""
    p = p - p.mean(axis=(1, 2), keepdims=True)
    inv = 1.0 / np.maximum(p.std(axis=(1, 2), keepdims=True), 1e-6)
    return p * inv, inv


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[n, h, w] bilinear samples of `image` at [n, h, w] pixel coordinates (_INVALID
    outside), in batches: OpenCV's remap takes maps of fewer than 32767 rows."""
    n, h, w = x.shape
    step = max(1, 16_000 // h)
    return np.concatenate([
        cv2.remap(image, x[i:i + step].reshape(-1, w), y[i:i + step].reshape(-1, w),
                  cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                  borderValue=float(_INVALID)).reshape(-1, h, w)
        for i in range(0, n, step)]) if n else np.zeros((0, h, w), np.float32)


def _subpixel(warped: np.ndarray, templates: np.ndarray, centres: np.ndarray,
              start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([n, 2] shifts, [n] converged): Gauss-Newton on the shift (dx, dy) of each [n, 2]
    view pixel's patch in `warped` that best matches its [n, h, w] template, both taken to
    zero mean and unit std (a change of gain and offset is not a shift), from `start`."""
    n, h, w = templates.shape
    tn, _ = _normalised(templates.astype(np.float32))
    jj, ii = np.meshgrid(np.arange(-1, w + 1) - w // 2, np.arange(-1, h + 1) - h // 2)
    shift = start.astype(np.float64)
    ok = np.ones(n, bool)
    for _ in range(ITERATIONS):
        x = (centres[:, 0] + shift[:, 0])[:, None, None] + jj
        y = (centres[:, 1] + shift[:, 1])[:, None, None] + ii
        patch = _sample(warped, x.astype(np.float32), y.astype(np.float32))
        ok &= patch.min(axis=(1, 2)) >= 0
        inner, inv = _normalised(patch[:, 1:-1, 1:-1])
        gx = 0.5 * (patch[:, 1:-1, 2:] - patch[:, 1:-1, :-2]) * inv
        gy = 0.5 * (patch[:, 2:, 1:-1] - patch[:, :-2, 1:-1]) * inv
        r = tn - inner
        a, b, c = (gx * gx).sum((1, 2)), (gx * gy).sum((1, 2)), (gy * gy).sum((1, 2))
        u, v = (gx * r).sum((1, 2)), (gy * r).sum((1, 2))
        det = a * c - b * b
        ok &= det > 1e-9 * np.maximum(a * c, 1e-12)
        det = np.where(ok, det, 1.0)
        shift += np.column_stack([(c * u - b * v) / det, (a * v - b * u) / det])
    ok &= np.abs(shift - start).max(axis=1) <= 1.0  # stayed at the correlation's peak
    return shift, ok


def _shifts(warped: np.ndarray, templates: np.ndarray, searches: np.ndarray,
            centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([n, 2] shifts, [n] moved) of the [n, h, w] view patches `templates` at [n, 2] view
    pixels `centres` in `warped`: the whole-pixel peak of their correlation with
    `searches` (their search areas in it), then _subpixel from there."""
    if not len(templates):
        return np.zeros((0, 2)), np.zeros(0, bool)
    shift, ok = _peaks(np.stack([cv2.matchTemplate(S, T, cv2.TM_CCOEFF_NORMED)
                                 for T, S in zip(templates, searches, strict=True)]))
    if ok.any():  # from each whole-pixel peak found
        shift[ok], ok[ok] = _subpixel(warped, templates[ok], centres[ok], shift[ok])
    return shift, ok


def refine_pairs(view: View, src: np.ndarray, dst: np.ndarray, origin: np.ndarray,
                 params: np.ndarray, pixels: MapPixels) -> tuple[np.ndarray, np.ndarray, int]:
    """(src, dst, pairs moved): [K, 2] view offsets (E, N metres from nadir) and map points
    minus `origin`, each inlier pair moved where the map's pixels confirm it (module
    docstring); `params`: the robust fit's similarity of dst on src."""
    g = view.gsd_m
    reach = (PATCH_R + SEARCH_PX + 2) * g * 1.5  # the patches' reach, turned up to 45 deg
    pts = dst + origin
    image = pixels(g, (float(pts[:, 0].min() - reach), float(pts[:, 1].min() - reach),
                       float(pts[:, 0].max() + reach), float(pts[:, 1].max() + reach)))
    if image is None:
        return src, dst, 0
    M = _affine(view, params, origin, image)
    h, w = view.image.shape
    mapf = np.where(image.valid, image.gray.astype(np.float32), _INVALID)
    warped = cv2.warpAffine(mapf, M, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=float(_INVALID))
    ox, oy = view.origin_px
    u = np.rint(src[:, 0] / g + ox).astype(np.int64)
    v = np.rint(oy - src[:, 1] / g).astype(np.int64)
    r, s = PATCH_R, SEARCH_PX
    inside = (u - r - s >= 0) & (v - r - s >= 0) & (u + r + s < w) & (v + r + s < h)
    # patches whose view pixels are all valid: a box sum of the mask over each patch
    valid_sum = cv2.boxFilter(view.mask.astype(np.float32), -1, (2 * r + 1, 2 * r + 1),
                              normalize=False, borderType=cv2.BORDER_CONSTANT)
    idx = np.flatnonzero(inside)
    idx = idx[valid_sum[v[idx], u[idx]] >= (2 * r + 1) ** 2 - 0.5]
    if not len(idx):
        return src, dst, 0
    vimg = view.image.astype(np.float32)
    templates = sliding_window_view(vimg, (2 * r + 1, 2 * r + 1))[v[idx] - r, u[idx] - r]
    searches = sliding_window_view(warped, (2 * (r + s) + 1, 2 * (r + s) + 1))[
        v[idx] - r - s, u[idx] - r - s]
    keep = (templates.std(axis=(1, 2)) >= MIN_STD) & (searches.min(axis=(1, 2)) >= 0)
    idx, templates, searches = idx[keep], templates[keep], searches[keep]
    if not len(idx):
        return src, dst, 0
    centres = np.column_stack([u[idx], v[idx]]).astype(np.float64)
    # the pairs are independent: half of them on the worker thread, half on this one
    half = len(idx) // 2
    other = _WORKER.submit(_shifts, warped, templates[half:], searches[half:], centres[half:])
    (shift, ok), (shift2, ok2) = (_shifts(warped, templates[:half], searches[:half],
                                          centres[:half]), other.result())
    shift, ok = np.concatenate([shift, shift2]), np.concatenate([ok, ok2])
    idx, centres, shift = idx[ok], centres[ok], shift[ok]
    # the view pixel (u, v) lies where the warped map's pixel (u + dx, v + dy) does
    here = np.column_stack([(centres[:, 0] - ox) * g, (oy - centres[:, 1]) * g])
    there = here + np.column_stack([shift[:, 0], -shift[:, 1]]) * g
    a, b, tx, ty = params
    new_src, new_dst = src.copy(), dst.copy()
    new_src[idx] = here
    new_dst[idx] = there @ np.array([[a, -b], [b, a]]).T + (tx, ty)
    return new_src, new_dst, len(idx)
