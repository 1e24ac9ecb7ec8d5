"""Coarse stage of matching across dates: where in the prior window the view lies, found
from structure (skyfix.maps.structure channels) rather than brightness.

    view (north-up, at the level's GSD) --block average x STRUCTURE_FACTOR--> coarse view
    for each residual rotation r in ROTATIONS_DEG:
        rotate the coarse view about its nadir point by r, take its structure channels,
        zero-mean them inside the valid mask -> v_c
        score(p) = sum_c sum_x v_c(x) M_c(x + p)
                   / (|v| sqrt(sum_c sum_x mask(x) (M_c(x + p) - mu_c(p))^2))
                   (FFT correlation; M_c: the pack's channels of the window; mu_c(p): the
                   mean of M_c under the view's mask at shift p, so that both sides are
                   zero-mean where they overlap: a normalised cross-correlation. Taken
                   about the window's mean instead, the denominator marks down ground
                   with more or fewer edges than the window's average, and the search
                   finds the wrong place in a third to a half of the views that cross-date
                   sets give it)
    pass 1, both sides 2 x 2 averaged: the best score among the shifts that put the nadir
    inside the prior window; pass 2, full channel resolution, only within REFINE_PX of it;
    then a fraction of a pixel (parabola through the 3 x 3 neighbourhood) and of the
    rotation step (parabola through the rotations' scores at that shift).

The score is a normalised correlation (<= 1). Its confidence signals, for acceptance
(skyfix.runtime.nav.fine): `score` itself, and `peak_ratio`, a peak's pass-1 score over the
best other peak (at least EXCLUDE_PX channel pixels away, any rotation): a repeated pattern
(a street grid, rows of a field) gives a ratio near 1. With `hypotheses` > 1 the next
peaks are returned too (ratio < 1), for the fine stage to confirm or refute.

`self_similarity` asks the same of the view against itself: how well its central half
matches the view elsewhere (at least EXCLUDE_PX away), as a share of how it matches in place.
Ground that repeats within the view (a car park's bays, rows of panels or trees) scores near
1 whatever the map: no map can tell one period of it from the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import cv2
import numpy as np

from skyfix.maps.structure import (
    STRUCTURE_FACTOR,
    StructureWindow,
    downsample,
    structure_channels,
)

ROTATIONS_DEG = (-4.0, 0.0, 4.0)  # residual heading errors searched
EXCLUDE_PX = 6  # channel pixels: closer peaks are the same answer
SEPARATION_PX = 16  # channel pixels between the places returned as hypotheses
REFINE_PX = 3  # channel pixels searched around the first pass's answer
MIN_VALID_SHARE = 0.3  # of the coarse view: fewer valid pixels -> no answer
MIN_MAP_VARIANCE = 1e-3  # per valid pixel (channels are unit vectors): flatter map -> score 0


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


def _pool(x: np.ndarray) -> np.ndarray:
    """[..., H // 2, W // 2] 2 x 2 average of [..., H, W] (a leading channel axis kept)."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    return 0.25 * (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2]
                   + x[..., 1::2, 1::2])


class _View:
    """A view's channels [C, h, w] (zero-mean inside the mask), its mask [h, w] float32,
    and their spectra at each DFT size asked for (the places refined share them)."""

    def __init__(self, channels: np.ndarray, mask: np.ndarray):
        self.channels, self.mask = channels, mask
        self.norm = float(np.sqrt((channels**2).sum()))
        self.count = max(float(mask.sum()), 1.0)  # the mask's weight (fractional where pooled)
        self._spectra: dict[tuple[int, int], tuple[list[np.ndarray], np.ndarray]] = {}

    def pooled(self) -> _View:
        return _View(_pool(self.channels), _pool(self.mask))

    def spectra(self, fh: int, fw: int) -> tuple[list[np.ndarray], np.ndarray]:
        if (fh, fw) not in self._spectra:
            self._spectra[fh, fw] = ([_dft(c, fh, fw) for c in self.channels],
                                     _dft(self.mask, fh, fw))
        return self._spectra[fh, fw]


class _Map:
    """A window's channels ready for correlation: their spectra, and the spectrum of their
    energy sum_c M_c^2 (the denominator of the normalised correlation is a correlation of
    the view's mask with it, less the squared correlations of the mask with each M_c over
    the mask's weight)."""

    def __init__(self, M: np.ndarray, hv: int, wv: int):
        _, self.h, self.w = M.shape
        self.sh, self.sw = self.h - hv + 1, self.w - wv + 1
        self.fh, self.fw = cv2.getOptimalDFTSize(self.h), cv2.getOptimalDFTSize(self.w)
        self.spectra = [_dft(c, self.fh, self.fw) for c in M]
        self.energy = _dft((M**2).sum(0), self.fh, self.fw)

    def _shifts(self, spectrum: np.ndarray) -> np.ndarray:
        """[sh, sw] of the inverse transform of `spectrum`: the shifts that keep the view
        inside the window."""
        return cv2.idft(spectrum, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)[:self.sh, :self.sw]

    def _corr(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """[sh, sw] correlation of two spectra (b conjugated)."""
        return self._shifts(cv2.mulSpectrums(a, b, 0, conjB=True))

    def scores(self, views: list[_View]) -> np.ndarray:
        """[len(views), sh, sw] normalised correlation of each view at every shift that
        keeps it inside the window; the views share one mask (the same denominator)."""
        mask = views[0].spectra(self.fh, self.fw)[1]
        den = self._corr(self.energy, mask) - sum(
            self._corr(Mc, mask) ** 2 for Mc in self.spectra) / views[0].count
        # where the map under the view has no structure (nodata, a flat roof), the
        # correlation is rounding noise over rounding noise: no match there
        flat = den < MIN_MAP_VARIANCE * views[0].count
        den = np.sqrt(np.maximum(den, 1e-9))
        out = []
        for v in views:
            channels = v.spectra(self.fh, self.fw)[0]
            prod = sum(cv2.mulSpectrums(Mc, vc, 0, conjB=True)
                       for Mc, vc in zip(self.spectra, channels, strict=True))
            out.append(np.where(flat, 0.0, self._shifts(prod) / (den * v.norm + 1e-9)))
        return np.stack(out)


def _centred(channels: np.ndarray, mask: np.ndarray, count: float) -> _View:
    """`channels` [C, h, w] less their mean over `mask` [h, w] (`count` pixels), zero
    outside it: a template for the normalised correlation."""
    return _View((channels - (channels * mask).sum((1, 2), keepdims=True) / count) * mask,
                 mask)


def _view_channels(vg: np.ndarray, vm: np.ndarray, o: tuple[float, float],
                   rotations_deg: tuple[float, ...]) -> list[_View]:
    """Structure channels of the coarse view turned by each of `rotations_deg` about o,
    zero-mean inside one mask, the pixels valid at every turn (eroded), so that the map's
    side of the correlation is the same for all; [] when too little is valid."""
    h, w = vg.shape
    turned, valid = [], np.ones((h, w), np.uint8)
    for r in rotations_deg:
        R = cv2.getRotationMatrix2D(o, r, 1.0)
        turned.append(cv2.warpAffine(vg, R, (w, h), flags=cv2.INTER_LINEAR))
        valid &= cv2.warpAffine(vm.astype(np.uint8), R, (w, h), flags=cv2.INTER_NEAREST)
    m = cv2.erode(valid, np.ones((3, 3), np.uint8), iterations=2).astype(np.float32)
    cnt = float(m.sum())
    if cnt < MIN_VALID_SHARE * h * w:
        return []
    return [_centred(structure_channels(g), m, cnt) for g in turned]


class CoarseView:
    """A view made ready for the coarse stage once, for every window it is searched in and
    for `self_similarity`: its structure channels at each of `rotations_deg` (`views`, empty
    when too little is valid) and their 2 x 2 averages for pass 1 (`pooled`); `usable` is
    False when the view is too small or blank for any answer.

    `image`: [H, W] uint8 view at the level's GSD, `mask`: [H, W] bool valid pixels,
    `origin_px`: the view pixel (x, y) below the camera."""

    def __init__(self, image: np.ndarray, mask: np.ndarray, origin_px: tuple[float, float],
                 rotations_deg: tuple[float, ...] = ROTATIONS_DEG):
        f = STRUCTURE_FACTOR
        vg = downsample(image, f)
        vm = downsample(mask.astype(np.float32), f) > 0.99
        self.shape = vg.shape
        self.origin = ((origin_px[0] + 0.5) / f - 0.5, (origin_px[1] + 0.5) / f - 0.5)
        self.rotations_deg = tuple(rotations_deg)
        big = min(vg.shape) >= 16 and vm.mean() >= MIN_VALID_SHARE
        self.views = _view_channels(vg, vm, self.origin, self.rotations_deg) if big else []
        self.pooled = [v.pooled() for v in self.views]
        self.usable = bool(self.views)
        # the channels as the view is, unturned (None: no rotation 0, or too little valid)
        self.upright = self.views[self.rotations_deg.index(0.0)] \
            if self.views and 0.0 in self.rotations_deg else None


class CoarseSearch:
    """The coarse stage (module docstring) of one view over one map window, asked for the
    view's likeliest places in any number of prior circles inside the window: pass 1 runs
    once for all of them, on the first circle that has a shift in it, and pass 2 once per
    place however many circles find it (the tiles a search without a prior takes as its
    windows overlap)."""

    def __init__(self, view: CoarseView, window: StructureWindow):
        self.view, self.window = view, window
        hv, wv = view.shape
        M = window.channels
        self.usable = view.usable and M.shape[1] >= hv and M.shape[2] >= wv
        self._scores: np.ndarray | None = None
        self._refined: dict[tuple[int, int], CoarseMatch] = {}
        if not self.usable:
            return
        # Pass 1 is at half the channels' resolution: every shift, every rotation
        self._M4 = _pool(M)
        h4, w4 = view.pooled[0].mask.shape
        self._shifts = (self._M4.shape[1] - h4 + 1, self._M4.shape[2] - w4 + 1)
        self._gsd4 = 2 * window.gsd_m

    def _nadirs(self, px: np.ndarray | int, py: np.ndarray | int
                ) -> tuple[np.ndarray | float, np.ndarray | float]:
        """Map E, N of the view's nadir at pass-1 shifts (px, py)."""
        o, g = self.view.origin, self._gsd4
        return (self.window.left_e_m + ((o[0] + 0.5) / 2 + px) * g,
                self.window.top_n_m - ((o[1] + 0.5) / 2 + py) * g)

    def places(self, prior_en: np.ndarray, prior_radius_m: float, hypotheses: int = 1
               ) -> Iterator[CoarseMatch]:
        """The view's likeliest places whose nadir lies in the circle of `prior_radius_m`
        about map E/N `prior_en`, up to `hypotheses` of them, best first; none when the view
        is too small or blank, or no shift puts the nadir in the circle. Lazily: pass 2 runs
        for a place only when it is asked for, so a caller that stops at the first place it
        confirms pays for no other."""
        if not (self.usable and np.isfinite(prior_en).all() and prior_radius_m >= 0):
            return
        # the shifts whose nadir can lie in the circle (a box of them: the rest is -inf)
        g = self._gsd4
        e0, n0 = self._nadirs(0, 0)
        c = np.array([n0 - prior_en[1], prior_en[0] - e0]) / g  # the centre in shifts (y, x)
        (y0, x0), (y1, x1) = (np.clip(v, 0, self._shifts).astype(int) for v in (
            np.floor(c - prior_radius_m / g) - 1, np.ceil(c + prior_radius_m / g) + 2))
        box = np.s_[y0:y1, x0:x1]
        py, px = np.mgrid[box]
        e, n = self._nadirs(px, py)
        inside = np.hypot(e - prior_en[0], n - prior_en[1]) <= prior_radius_m
        if not inside.any():
            return
        if self._scores is None:
            pooled = self.view.pooled
            self._scores = _Map(self._M4, *pooled[0].mask.shape).scores(pooled)
        # Peaks of pass 1, best first, each at least SEPARATION_PX from the others; the first
        # one's ratio is against the best score at least EXCLUDE_PX from it, the others'
        # against the first one's score.
        peaks, rest = [], np.where(inside, self._scores[(slice(None), *box)], -np.inf)
        while len(peaks) < hypotheses:
            ri, yi, xi = np.unravel_index(int(np.argmax(rest)), rest.shape)
            if not np.isfinite(rest[ri, yi, xi]):
                break
            peaks.append((int(py[yi, xi]), int(px[yi, xi]), float(rest[ri, yi, xi])))
            near = np.hypot(px - px[yi, xi], py - py[yi, xi])
            if len(peaks) == 1:
                second = float(np.max(np.where(near > EXCLUDE_PX / 2, rest, -np.inf)))
            rest[:, near <= SEPARATION_PX / 2] = -np.inf
        for k, (yi, xi, score) in enumerate(peaks):
            top = second if k == 0 else peaks[0][2]
            ratio = score / top if np.isfinite(top) and top > 1e-6 else np.inf
            if (yi, xi) not in self._refined:
                self._refined[yi, xi] = _refine(self.view, self.window, xi, yi)
            match = replace(self._refined[yi, xi], peak_ratio=float(ratio))
            if np.hypot(match.east_m - prior_en[0], match.north_m - prior_en[1]) \
                    <= prior_radius_m + 2 * self._gsd4:
                yield match


def self_similarity(view: CoarseView, region: np.ndarray | None = None) -> float:
    """The view's self-similarity (module docstring) in [0, 1], from its channels as they
    are (rotation 0), over the valid pixels inside `region` ([H, W] bool, the view's own
    pixels; None: all of them): the central half of their bounding box against all of them.
    NaN when the channels are not there, too little is valid, or the box is too small to
    shift the half EXCLUDE_PX away within it."""
    v = view.upright
    if v is None:
        return float("nan")
    m, channels = v.mask, v.channels
    if region is not None:
        m = m * (downsample(region.astype(np.float32), STRUCTURE_FACTOR) > 0.5)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if len(rows) < 16 or len(cols) < 16:
        return float("nan")
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    m, channels = m[box], channels[(slice(None), *box)]
    h, w = m.shape
    y0, x0, th, tw = h // 4, w // 4, h // 2, w // 2  # the central half
    tm = m[y0:y0 + th, x0:x0 + tw]
    cnt = float(tm.sum())
    if cnt < MIN_VALID_SHARE * th * tw:
        return float("nan")
    channels = channels * m
    template = _centred(channels[:, y0:y0 + th, x0:x0 + tw], tm, cnt)
    scores = _Map(channels, th, tw).scores([template])[0]
    py, px = np.mgrid[0:scores.shape[0], 0:scores.shape[1]]
    away = np.hypot(px - x0, py - y0) > EXCLUDE_PX
    if not away.any():
        return float("nan")
    return float(np.clip(scores[away].max() / max(float(scores[y0, x0]), 1e-9), 0.0, 1.0))


def _refine(view: CoarseView, window: StructureWindow, xi: int, yi: int) -> CoarseMatch:
    """Pass 2 around pass 1's shift (xi, yi) (pass-1 pixels); its peak ratio is pass 1's,
    left at 0 here."""
    M, (hv, wv), o, rotations_deg = window.channels, view.shape, view.origin, view.rotations_deg
    x0, y0 = max(0, 2 * xi - REFINE_PX), max(0, 2 * yi - REFINE_PX)
    x1 = min(M.shape[2], 2 * xi + REFINE_PX + wv)
    y1 = min(M.shape[1], 2 * yi + REFINE_PX + hv)
    fine_map = _Map(M[:, y0:y1, x0:x1], hv, wv)
    S2 = fine_map.scores(view.views)
    ri, yj, xj = np.unravel_index(int(np.argmax(S2)), S2.shape)
    best = float(S2[ri, yj, xj])
    dx, dy = _parabola_2d(S2[ri], yj, xj)
    rot = rotations_deg[ri]
    if 0 < ri < len(rotations_deg) - 1:
        step = rotations_deg[ri + 1] - rotations_deg[ri]
        rot += step * _parabola(S2[ri - 1, yj, xj], best, S2[ri + 1, yj, xj])
    east = window.left_e_m + (o[0] + x0 + xj + dx + 0.5) * window.gsd_m
    north = window.top_n_m - (o[1] + y0 + yj + dy + 0.5) * window.gsd_m
    return CoarseMatch(float(east), float(north), float(rot), best, 0.0)


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
