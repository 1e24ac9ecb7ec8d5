"""Coarse stage of matching across dates: where in the prior window the view lies, found
from structure (skyfix.maps.structure channels) rather than brightness.

    view (north-up, at the level's GSD) --block average x STRUCTURE_FACTOR--> coarse view
    for each residual rotation r in ROTATIONS_DEG:
        rotate the coarse view about its nadir point by r, take its structure channels,
        zero-mean them inside the valid mask -> v_c
        score(p) = sum_c sum_x v_c(x) M_c(x + p) / (|v| sqrt(sum_x mask(x) E(x + p)))
                   (FFT correlation; M_c: the pack's channels of the window; E: the energy
                   of M_c minus its local mean over a view-sized box, summed over c)
    the best score among the shifts that put the nadir inside the prior window, refined
    to a fraction of a pixel (parabola through the 3 x 3 neighbourhood) and a fraction of
    the rotation step (parabola through the rotations' scores at that shift).

The score is a normalised correlation (<= 1). Its confidence signals, for acceptance
(skyfix.runtime.nav.match): `score` itself, and `peak_ratio`, the best score over the best
score at least EXCLUDE_PX coarse pixels away from it (any rotation): a repeated pattern
(a street grid, rows of a field) gives a ratio near 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from skyfix.maps.structure import (
    STRUCTURE_FACTOR,
    StructureWindow,
    downsample,
    structure_channels,
)

ROTATIONS_DEG = (-4.0, 0.0, 4.0)  # residual heading errors searched
EXCLUDE_PX = 5  # coarse pixels: closer peaks are the same answer
MIN_VALID_SHARE = 0.3  # of the coarse view: fewer valid pixels -> no answer


@dataclass(frozen=True)
class CoarseMatch:
    """Where the view's nadir point lies on the map (E, N metres), the view's rotation
    against the map (degrees, counter-clockwise seen north-up), and the confidence."""

    east_m: float
    north_m: float
    rotation_deg: float
    score: float
    peak_ratio: float


def _dft(x: np.ndarray, fh: int, fw: int) -> np.ndarray:
    """OpenCV's packed real spectrum of [h, w] float32 `x` zero-padded to [fh, fw]."""
    h, w = x.shape
    pad = cv2.copyMakeBorder(np.ascontiguousarray(x, np.float32), 0, fh - h, 0, fw - w,
                             cv2.BORDER_CONSTANT, value=0)
    return cv2.dft(pad)


def _correlate(spec_map: np.ndarray, spec_view: np.ndarray, h: int, w: int) -> np.ndarray:
    """[h, w] c(p) = sum_x view(x) map(x + p) from the two packed spectra."""
    prod = cv2.mulSpectrums(spec_map, spec_view, 0, conjB=True)
    return cv2.idft(prod, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)[:h, :w]


def coarse_search(image: np.ndarray, mask: np.ndarray, origin_px: tuple[float, float],
                  window: StructureWindow, prior_en: np.ndarray, prior_radius_m: float,
                  rotations_deg: tuple[float, ...] = ROTATIONS_DEG) -> CoarseMatch | None:
    """The view's place in `window` (see the module docstring), or None when the view is
    too small or blank, or no shift keeps the nadir inside the prior circle.

    `image`: [H, W] uint8 view at the level's GSD, `mask`: [H, W] bool valid pixels,
    `origin_px`: the view pixel (x, y) below the camera; `prior_en`: [2] map E/N."""
    f = STRUCTURE_FACTOR
    vg = downsample(image, f)
    vm = downsample(mask.astype(np.float32), f) > 0.99
    hv, wv = vg.shape
    M = window.channels
    _, hm, wm = M.shape
    if hv < 8 or wv < 8 or hm < hv or wm < wv or vm.mean() < MIN_VALID_SHARE:
        return None
    ox, oy = (origin_px[0] + 0.5) / f - 0.5, (origin_px[1] + 0.5) / f - 0.5
    fh, fw = cv2.getOptimalDFTSize(hm), cv2.getOptimalDFTSize(wm)
    FM = [_dft(c, fh, fw) for c in M]
    local = np.stack([cv2.blur(c, (wv, hv)) for c in M])
    FE = _dft(((M - local) ** 2).sum(0), fh, fw)
    sh, sw = hm - hv + 1, wm - wv + 1
    # Nadir of shift p = (px, py) at map pixel (ox + px, oy + py): inside the prior circle?
    py, px = np.mgrid[0:hm - hv + 1, 0:wm - wv + 1]
    e = window.left_e_m + (ox + px + 0.5) * window.gsd_m
    n = window.top_n_m - (oy + py + 0.5) * window.gsd_m
    inside = np.hypot(e - prior_en[0], n - prior_en[1]) <= prior_radius_m
    if not inside.any():
        return None
    kernel = np.ones((3, 3), np.uint8)
    scores = []
    for r in rotations_deg:
        R = cv2.getRotationMatrix2D((ox, oy), r, 1.0)
        g = cv2.warpAffine(vg, R, (wv, hv), flags=cv2.INTER_LINEAR)
        m = cv2.warpAffine(vm.astype(np.uint8), R, (wv, hv), flags=cv2.INTER_NEAREST)
        m = cv2.erode(m, kernel, iterations=2).astype(np.float32)
        ch = structure_channels(g)
        cnt = m.sum()
        if cnt < MIN_VALID_SHARE * hv * wv:
            scores.append(np.full(inside.shape, -np.inf, np.float32))
            continue
        v = (ch - (ch * m).sum((1, 2), keepdims=True) / cnt) * m
        prod = sum(cv2.mulSpectrums(FMc, _dft(vc, fh, fw), 0, conjB=True)
                   for FMc, vc in zip(FM, v, strict=True))
        num = cv2.idft(prod, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)[:sh, :sw]
        den = _correlate(FE, _dft(m, fh, fw), sh, sw)
        den = np.sqrt(np.maximum(den, 1e-9)) * np.sqrt((v**2).sum())
        s = np.where(inside, num / np.maximum(den, 1e-9), -np.inf).astype(np.float32)
        scores.append(s)
    S = np.stack(scores)
    k = int(np.argmax(S))
    ri, yi, xi = np.unravel_index(k, S.shape)
    best = float(S[ri, yi, xi])
    if not np.isfinite(best):
        return None
    far = (np.hypot(px - xi, py - yi) > EXCLUDE_PX)[None]
    second = float(np.max(np.where(far, S, -np.inf)))
    ratio = best / second if np.isfinite(second) and second > 1e-6 else np.inf
    dx, dy = _parabola_2d(S[ri], yi, xi)
    rot = rotations_deg[ri]
    if 0 < ri < len(rotations_deg) - 1:
        step = rotations_deg[ri + 1] - rotations_deg[ri]
        rot += step * _parabola(S[ri - 1, yi, xi], best, S[ri + 1, yi, xi])
    east = window.left_e_m + (ox + xi + dx + 0.5) * window.gsd_m
    north = window.top_n_m - (oy + yi + dy + 0.5) * window.gsd_m
    return CoarseMatch(float(east), float(north), float(rot), best, float(ratio))


def _parabola(a: float, b: float, c: float) -> float:
    """Offset in [-0.5, 0.5] of the vertex of the parabola through (-1, a), (0, b), (1, c)."""
    if not (np.isfinite(a) and np.isfinite(c)):
        return 0.0
    d = a - 2 * b + c
    return float(np.clip(0.5 * (a - c) / d, -0.5, 0.5)) if d < 0 else 0.0


def _parabola_2d(s: np.ndarray, y: int, x: int) -> tuple[float, float]:
    h, w = s.shape
    dx = _parabola(s[y, x - 1], s[y, x], s[y, x + 1]) if 0 < x < w - 1 else 0.0
    dy = _parabola(s[y - 1, x], s[y, x], s[y + 1, x]) if 0 < y < h - 1 else 0.0
    return dx, dy
