"""Fine stage of matching with a prior: local features matched only near where the coarse
stage (skyfix.runtime.nav.coarse) put the view, then the shared robust fit and pose
(skyfix.runtime.nav.match), then acceptance from several independent signals.

    coarse answer (E, N, rotation) -> predicted map point of every view keypoint
    -> mutual best descriptor match among the map keypoints within `near_radius_px` of the
       prediction (no ratio test: nearby repeated structure is what the radius removes)
    -> RANSAC similarity, pairs refined on the map's pixels, pose; a second fit of the
       pairs left out nearly as well supported widens the fix's covariance to reach it
       (skyfix.runtime.nav.match.fit_pose, which the whole-tile matcher shares)

Where the coarse stage found no place the features support strongly, `vote_places` gives
the places the features alone point to across the whole window, to match near the same way.
Of the matches found, `best_of` picks the one acceptance weighs: a confirmed one first.

Acceptance (`judge_near`): a fix must pass all of
    inliers          >= min_inliers
    scale, heading   as for any fix (skyfix.runtime.nav.match.judge)
    spread           the inliers cover the view: the square root of their convex hull's area
                     over the view's valid area >= min_spread (a cluster in one corner fits
                     anything)
    residual         inlier residual RMS <= max_residual_px
and, unless the fine stage alone is strong (inliers >= 2 x min_inliers),
    agreement        the fine answer within coarse_agree_px of the coarse answer, and its
                     rotation within coarse_agree_deg: two methods that share nothing but the
                     pixels (dense structure vs sparse learned features) agree
    confidence       the coarse peak's ratio >= min_peak_ratio (the best coarse place, not
                     a runner-up)
The thresholds were chosen once on all the shared two-date sets together (README, "Matching
across dates"), never per set; tests/unit/test_coarse.py pins them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from skyfix.models.features import LocalFeatures
from skyfix.runtime.core.config import MatchConfig
from skyfix.runtime.core.types import Fix, Rejection, View
from skyfix.runtime.nav.coarse import CoarseMatch
from skyfix.runtime.nav.match import Candidate, TileMatch, fit_pose, fix_from
from skyfix.runtime.nav.rectify import view_px_to_offset_m
from skyfix.runtime.nav.refine import MapPixels

_MIN_FIT = 8  # fewer inliers: no match at all (acceptance asks for min_inliers)
VOTES_PER_POINT = 3  # vote_places: map keypoints each view keypoint votes with


@dataclass(frozen=True)
class NearMatch:
    """The fine match and the signals acceptance weighs. `agreement_px`: distance between
    the fine and the coarse position of the nadir in view pixels; `rotation_gap_deg`: between
    their rotations; `spread`: see the module docstring; `hull_px`: [K, 2] the inliers'
    convex hull in view pixels (x, y); `candidates`: matches given to RANSAC."""

    match: TileMatch
    coarse: CoarseMatch
    agreement_px: float
    rotation_gap_deg: float
    spread: float
    candidates: int
    hull_px: np.ndarray


def _union(tiles: list[Candidate], gsd_m: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Keypoints of overlapping tiles, each place once: ([M, 2] E/N, [M, D], [M] heights or
    None, tile id of the first tile)."""
    en = np.concatenate([t.en_m for t in tiles])
    desc = np.concatenate([t.descriptors for t in tiles])
    hs = [t.heights_m for t in tiles]
    heights = None if any(h is None for h in hs) else np.concatenate(hs)
    q = np.round((en - en.min(0)) / (0.5 * gsd_m)).astype(np.int64)
    _, first = np.unique(q[:, 0] * (int(q[:, 1].max()) + 1) + q[:, 1], return_index=True)
    first = np.sort(first)
    return en[first], desc[first], None if heights is None else heights[first], tiles[0].tile_id


def near_mutual(pred: np.ndarray, en: np.ndarray, desc_v: np.ndarray, desc_m: np.ndarray,
                radius: float) -> tuple[np.ndarray, np.ndarray]:
    """([P], [P]) index pairs (view i, map j), in the order of i, each the other's most
    similar (descriptor dot product) among the pairs with |pred[i] - en[j]| <= radius
    (ties: the first). The view points are taken in square cells of side 2 radius, each
    cell's against the map points within `radius` of it: a product and a distance test
    over a small part of all the pairs, not all of them."""
    side = 2.0 * radius
    order_m = np.argsort(en[:, 1], kind="stable")  # by N: a row of cells' map points, a run
    en, desc_m = en[order_m], desc_m[order_m]
    lo = pred.min(0)
    cell = ((pred - lo) // side).astype(np.int64)
    key = cell[:, 1] * (int(cell[:, 0].max()) + 1) + cell[:, 0]
    order_v = np.argsort(key, kind="stable")
    starts = np.flatnonzero(np.diff(key[order_v], prepend=-1))
    dtype = np.result_type(desc_v, desc_m)
    best_v = np.full(len(pred), -np.inf, dtype)
    arg_v = np.zeros(len(pred), np.int64)
    best_m = np.full(len(en), -np.inf, dtype)
    for rows in np.split(order_v, starts[1:]):
        left, bottom = lo + cell[rows[0]] * side
        s, e = np.searchsorted(en[:, 1], [bottom - radius, bottom + side + radius])
        cols = s + np.flatnonzero(np.abs(en[s:e, 0] - (left + radius)) <= 2 * radius)
        if not len(cols):
            continue
        d2 = ((pred[rows, 0, None] - en[None, cols, 0]) ** 2
              + (pred[rows, 1, None] - en[None, cols, 1]) ** 2)
        sim = np.where(d2 <= radius * radius, desc_v[rows] @ desc_m[cols].T, -np.inf)
        j = sim.argmax(1)
        best_v[rows], arg_v[rows] = sim[np.arange(len(rows)), j], cols[j]
        best_m[cols] = np.maximum(best_m[cols], sim.max(0))
    vi = np.flatnonzero(np.isfinite(best_v) & (best_v >= best_m[arg_v]))
    mj = arg_v[vi]
    first = np.sort(np.unique(mj, return_index=True)[1])  # one view point per map point
    return vi[first], order_m[mj[first]]


def vote_places(view: View, feats: LocalFeatures, tiles: list[Candidate],
                centre_en: np.ndarray, radius_m: float, cfg: MatchConfig) -> list[CoarseMatch]:
    """Places for the view in a window, found by its features alone: each view keypoint's
    VOTES_PER_POINT most similar map keypoints of `tiles` vote for where the view's nadir
    lies (map point less the keypoint's offset, the view taken as north-up), if inside
    the circle of `radius_m` about `centre_en`, on a grid of cells of side
    `near_radius_px`. Up to `hypotheses` places, most votes (over 3 x 3 cells) first, each
    at the median of those votes and away from the ones before; peak_ratio 0, as they
    are no structural answer."""
    if not tiles or len(feats) < _MIN_FIT:
        return []
    xy = view_px_to_offset_m(view, feats.keypoints.astype(np.float64))
    en, desc, _, _ = _union(tiles, view.gsd_m)
    sim = feats.descriptors @ desc.T
    rows, best = np.arange(len(sim)), []
    for _ in range(min(VOTES_PER_POINT, len(en))):  # a row's argmax is far cheaper than a partition
        best.append(sim.argmax(1))
        sim[rows, best[-1]] = -np.inf
    votes = (en[np.stack(best, 1)] - xy[:, None, :]).reshape(-1, 2)
    votes = votes[np.hypot(*(votes - centre_en).T) <= radius_m]
    if len(votes) < _MIN_FIT:
        return []
    side = cfg.near_radius_px * view.gsd_m
    cell = np.floor((votes - votes.min(0)) / side).astype(np.int64)
    grid = np.zeros(tuple(cell.max(0) + 3), np.int64)  # a cell of margin on each side
    np.add.at(grid, (cell[:, 0] + 1, cell[:, 1] + 1), 1)
    box = sum(np.roll(grid, (dx, dy), (0, 1)) for dx in (-1, 0, 1) for dy in (-1, 0, 1))
    places: list[CoarseMatch] = []
    for flat in np.argsort(box, axis=None)[::-1]:
        if len(places) == cfg.hypotheses or box.flat[flat] < _MIN_FIT:
            break
        cx, cy = np.unravel_index(flat, box.shape)
        mine = votes[(np.abs(cell[:, 0] + 1 - cx) <= 1) & (np.abs(cell[:, 1] + 1 - cy) <= 1)]
        e, n = np.median(mine, axis=0)
        if all(np.hypot(e - p.east_m, n - p.north_m) > 2 * side for p in places):
            places.append(CoarseMatch(float(e), float(n), 0.0, float(box.flat[flat]), 0.0))
    return places


def predicted_en(xy: np.ndarray, coarse: CoarseMatch) -> np.ndarray:
    """[N, 2] map E, N where the coarse answer puts [N, 2] view offsets (metres east, north
    of the point below the camera: view_px_to_offset_m)."""
    t = np.radians(coarse.rotation_deg)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return xy @ R.T + [coarse.east_m, coarse.north_m]


def match_near(view: View, feats: LocalFeatures, tiles: list[Candidate], coarse: CoarseMatch,
               cfg: MatchConfig, pixels: MapPixels | None = None) -> NearMatch | None:
    """The fine match of the view near the coarse answer (module docstring), or None;
    `pixels`: see skyfix.runtime.nav.match.pose_match."""
    if not tiles or len(feats) < _MIN_FIT:
        return None
    xy = view_px_to_offset_m(view, feats.keypoints.astype(np.float64))
    pred = predicted_en(xy, coarse)
    en, desc, heights, tile_id = _union(tiles, view.gsd_m)
    radius = cfg.near_radius_px * view.gsd_m
    lo, hi = pred.min(0) - radius, pred.max(0) + radius
    near = np.flatnonzero(((en >= lo) & (en <= hi)).all(1))
    if len(near) < _MIN_FIT:
        return None
    en, desc = en[near], desc[near]
    heights = None if heights is None else heights[near]
    vi, mi = near_mutual(pred, en, feats.descriptors, desc, radius)
    origin = np.array([coarse.east_m, coarse.north_m])
    found = fit_pose(view, xy[vi], en[mi] - origin, origin,
                     None if heights is None else heights[mi], tile_id, tiles[0].level, cfg,
                     pixels, _MIN_FIT)
    if found is None:
        return None
    fit, m = found
    hull = cv2.convexHull(feats.keypoints[vi[fit.keep]].astype(np.float32))
    spread = float(np.sqrt(cv2.contourArea(hull) / max(float(view.mask.sum()), 1.0)))
    # The coarse answer is the ground point of the view's nadir pixel (the fix, the camera
    # centre, differs from it by any tilt the pose finds): compare it with where the
    # similarity puts that pixel (origin = the coarse answer), and the two rotations.
    a, b, tx, ty = fit.params
    agree = float(np.hypot(tx, ty)) / view.gsd_m
    rot_gap = abs((np.degrees(np.arctan2(b, a)) - coarse.rotation_deg + 180) % 360 - 180)
    return NearMatch(m, coarse, agree, float(rot_gap), spread, len(vi), hull.reshape(-1, 2))


def coarse_agrees(near: NearMatch, cfg: MatchConfig) -> bool:
    """The fine answer within coarse_agree_px and coarse_agree_deg of its coarse place."""
    return (near.agreement_px <= cfg.coarse_agree_px
            and near.rotation_gap_deg <= cfg.coarse_agree_deg)


def strong(near: NearMatch, cfg: MatchConfig) -> bool:
    """A fine match acceptance takes on its own strength: 2 x min_inliers."""
    return near.match.inliers >= 2 * cfg.min_inliers


def confirmed(near: NearMatch, cfg: MatchConfig) -> bool:
    """What judge_near asks of a fine match that is not strong: its coarse place, the best
    coarse peak (min_peak_ratio), agrees with it."""
    return coarse_agrees(near, cfg) and near.coarse.peak_ratio >= cfg.min_peak_ratio


def best_of(found: list[NearMatch], cfg: MatchConfig) -> NearMatch:
    """The fine match acceptance weighs: of those that are confirmed and have min_inliers,
    the one with most inliers; where none is, the one with most inliers of all. Two
    methods that agree outweigh more inliers: near a coarse runner-up or a place the
    features voted for (window_fallback: never confirmed), the features can slide along
    ground that repeats (rows of crops or of houses) to a place a few pixels off with more
    inliers than the true one has. The others are the chosen one's rivals (weigh_rivals)."""
    agreed = [n for n in found if n.match.inliers >= cfg.min_inliers and confirmed(n, cfg)]
    return max(agreed or found, key=lambda n: n.match.inliers)


def judge_near(view: View, near: NearMatch | None, cfg: MatchConfig) -> Fix | Rejection:
    """The fine match as a Fix, or the reason it cannot be trusted (module docstring)."""
    if near is None:
        return Rejection(view.t_ns, "few_inliers", "no consistent match near the coarse answer")
    m, c = near.match, near.coarse
    rot_gap = near.rotation_gap_deg
    alone = strong(near, cfg)
    checks = [
        (m.inliers >= cfg.min_inliers, "few_inliers", f"{m.inliers} < {cfg.min_inliers}"),
        (abs(m.scale - 1) <= cfg.max_scale_err, "scale",
         f"match scale {m.scale:.3f} vs telemetry height"),
        (abs(m.rotation_deg) <= cfg.max_rotation_deg, "heading",
         f"view rotated {m.rotation_deg:.1f} deg against the map"),
        (near.spread >= cfg.min_spread, "unconfirmed", f"inliers cover {near.spread:.2f}"),
        (m.residual_rms_m <= cfg.max_residual_px * view.gsd_m, "unconfirmed",
         f"residual {m.residual_rms_m / view.gsd_m:.2f} px"),
        (alone or coarse_agrees(near, cfg), "unconfirmed",
         f"{m.inliers} inliers; fine and coarse differ by"
         f" {near.agreement_px:.1f} px, {rot_gap:.1f} deg"),
        (alone or c.peak_ratio >= cfg.min_peak_ratio, "ambiguous",
         f"{m.inliers} inliers at a coarse peak of ratio {c.peak_ratio:.2f}"),
    ]
    for ok, reason, detail in checks:
        if not ok:
            return Rejection(view.t_ns, reason, detail)  # type: ignore[arg-type]
    return fix_from(view, m)
