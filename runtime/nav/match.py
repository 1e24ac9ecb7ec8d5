"""Metric fix: the view's local features against cached tile features -> Fix + covariance.

For each candidate tile:
1. mutual nearest-neighbour matches with a ratio test;
2. a RANSAC similarity between view offsets and map coordinates picks the inliers, and
   a least-squares similarity on them drops the rest
   (map = s R(theta) view + t, t being the point below the camera);
3. where the map's pixels are at hand, each inlier pair moved to where they line up with
   the view's (runtime/nav/refine.py);
4. the camera pose from the inliers (runtime/nav/pose.py), so that the position does not
   inherit the reported roll/pitch error: its centre is the fix, its height the
   height above ground, its rotation against the reported attitude the heading and
   tilt errors.

Covariance of the fix (1 sigma, m^2): the pose's covariance (its points weighed as
correlated feature errors, CORRELATION_INFLATION; the attitude prior's part claimed with
that inflation too, a margin for an attitude worse than configured), plus the map warp's
part, plus the spread of the fit over groups of neighbouring inliers left out
(jackknife_cov), plus the shift a tilt beyond twice the attitude prior's sigma would
cause (a sign of a wrong camera or mount model, which the residuals alone understate),
plus a floor; and, where another credible match of the view lies nearby but further
than the two covariances allow, their separation (weigh_rivals), as for a second fit of
the same pairs nearly as well supported (second_fit).
The fix is rejected (and the reason counted) when inliers are too few, the height
or heading disagrees with telemetry, or a distant tile matches nearly as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from skyfix.models.features import LocalFeatures, match_mutual
from skyfix.runtime.core.config import MatchConfig
from skyfix.runtime.core.types import Fix, Rejection, RejectReason, View
from skyfix.runtime.nav.pose import solve_pose
from skyfix.runtime.nav.rectify import view_px_to_offset_m
from skyfix.runtime.nav.refine import MapPixels, refine_pairs

_MIN_POINTS = 8

CORRELATION_INFLATION = 4.0  # neighbouring features' errors are not independent
RIVAL_CHI2 = 9.21  # weigh_rivals, second_fit: 2-dof chi-square, 99 %
SECOND_FIT_Z = 2.0  # second_fit: support this many counting sigma short of the fit's or nearer
JACKKNIFE_CELLS = 3  # jackknife_cov: groups of inliers, a grid this many cells a side


@dataclass(frozen=True)
class Candidate:
    """A map tile to match: `en_m` [M, 2] keypoints in map E/N metres, `descriptors`
    [M, D], `heights_m` [M] terrain height of each keypoint (None without a terrain model)."""

    tile_id: int
    level: int
    en_m: np.ndarray
    descriptors: np.ndarray
    heights_m: np.ndarray | None


@dataclass(frozen=True)
class TileMatch:
    """One tile's match. `cov_en_m2`: [2, 2]; `residual_rms_m`: inlier residual RMS of
    the similarity, in map metres."""

    tile_id: int
    level: int
    inliers: int
    east_m: float
    north_m: float
    cov_en_m2: np.ndarray
    scale: float  # height above ground from the pose / reported height above ground
    rotation_deg: float  # estimated minus reported heading
    tilt_ne_deg: tuple[float, float]  # rotation from the reported camera attitude to the
    # estimated one, about north and east (see Fix)
    residual_rms_m: float
    height_sigma_m: float  # 1-sigma of the camera's height above ground from the pose
    heading_deg: float = float("nan")  # rotation_deg as the image alone measures it
    heading_sigma_deg: float = float("nan")  # its 1-sigma (NaN: the image does not pin it)
    # the part of cov_en_m2 that consecutive fixes share (see Fix.shared_cov_en_m2)
    shared_cov_en_m2: np.ndarray = field(default_factory=lambda: np.zeros((2, 2)))


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares dst = [[a, -b], [b, a]] src + t for [N, 2] float64 point sets.

    Returns (params [a, b, tx, ty], residuals [N, 2], cov [4, 4] of params) where the
    covariance is sigma^2 (J^T J)^-1 with sigma^2 = sum(r^2) / (2N - 4).
    """
    n = len(src)
    J = np.zeros((2 * n, 4))
    J[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    J[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    params, *_ = np.linalg.lstsq(J, dst.reshape(-1), rcond=None)
    residuals = (dst.reshape(-1) - J @ params).reshape(n, 2)
    sigma2 = float((residuals**2).sum() / max(2 * n - 4, 1))
    cov = sigma2 * np.linalg.inv(J.T @ J)
    return params, residuals, cov


def jackknife_cov(src: np.ndarray, dst: np.ndarray, cells: int = JACKKNIFE_CELLS
                  ) -> np.ndarray:
    """[2, 2] block-jackknife covariance of the translation (the nadir's map point) that
    fit_similarity gives for [N, 2] `src` -> `dst`: the inliers are grouped by the cell of
    a `cells` x `cells` grid over their extent in `src` that they lie in, and the fit is
    redone leaving each group out. Neighbouring points share their errors (a changed
    block, a roof's parallax, a stretch of road matched one period off); whole groups left
    out show what that moves the answer, which the residuals of the fit cannot. Zero where
    fewer than 3 groups can be left out with _MIN_POINTS left to fit."""
    lo, span = src.min(0), np.ptp(src, axis=0) + 1e-9
    cell = np.minimum((cells * (src - lo) / span).astype(int), cells - 1)
    group = cell[:, 0] * cells + cell[:, 1]
    ts = []
    for g in np.unique(group):
        rest = group != g
        if rest.sum() >= _MIN_POINTS:
            ts.append(fit_similarity(src[rest], dst[rest])[0][2:])
    if len(ts) < 3:
        return np.zeros((2, 2))
    d = np.asarray(ts) - np.mean(ts, axis=0)
    return (len(ts) - 1) / len(ts) * d.T @ d


@dataclass(frozen=True)
class SimilarityFit:
    """A robust similarity dst = s R src + t. `keep`: [K] int indices of the points kept;
    `params`: [a, b, tx, ty] (s R = [[a, -b], [b, a]]); `residuals`: [K, 2]; `cov`: [4, 4]."""

    keep: np.ndarray
    params: np.ndarray
    residuals: np.ndarray
    cov: np.ndarray


def robust_similarity(src: np.ndarray, dst: np.ndarray, thresh: float,
                      min_points: int = _MIN_POINTS) -> SimilarityFit | None:
    """The inliers of [N, 2] point pairs and the similarity they fit (`thresh` in the
    points' unit), or None when fewer than `min_points` survive:
    1. RANSAC similarity: its minimal sample is 2 pairs, so at the few per cent of inliers
       that matches across dates leave, 10 000 draws find them (a homography's 4-pair
       samples almost never hold only inliers: on 600 pairs with 20 inliers, OpenCV's
       MAGSAC++ homography kept 12 of them);
    2. twice, a least-squares homography through the inliers and the pairs it explains
       within `thresh`, which takes in the perspective that rectification leaves;
    3. a least-squares similarity on those, then once more on those it explains within
       2 `thresh`."""
    if len(src) < max(min_points, 4):
        return None
    src32, dst32 = src.astype(np.float32), dst.astype(np.float32)
    cv2.setRNGSeed(0)  # the same pairs, the same inliers
    _, inl = cv2.estimateAffinePartial2D(src32, dst32,
                                         method=cv2.RANSAC, ransacReprojThreshold=thresh,
                                         maxIters=10_000, confidence=0.999, refineIters=0)
    if inl is None or inl.sum() < min_points:
        return None
    keep = np.flatnonzero(inl.ravel())
    for _ in range(2):
        H, _ = cv2.findHomography(src32[keep], dst32[keep], 0)
        if H is None:
            break
        proj = cv2.perspectiveTransform(src[None].astype(np.float64), H)[0]
        keep = np.flatnonzero(np.linalg.norm(proj - dst, axis=1) <= thresh)
        if len(keep) < min_points:
            return None
    _, res, _ = fit_similarity(src[keep], dst[keep])
    keep = keep[np.linalg.norm(res, axis=1) <= 2 * thresh]
    if len(keep) < min_points:
        return None
    params, res, cov = fit_similarity(src[keep], dst[keep])
    return SimilarityFit(keep, params, res, cov)


def second_fit(src: np.ndarray, dst: np.ndarray, fit: SimilarityFit, thresh: float,
               min_points: int = _MIN_POINTS) -> np.ndarray | None:
    """[2, 2] what the view's second consistent fit adds to the fix's covariance, or None.
    The pairs `fit` left out of [N, 2] `src` -> `dst` are fitted again (robust_similarity,
    `thresh`, `min_points`: sequential RANSAC). Where the second fit's support is not
    clearly below the first's (k1 - k2 < SECOND_FIT_Z sqrt(k1 + k2): the two counts are
    alike within counting noise) and the two fits' own errors cannot explain their
    separation d (RIVAL_CHI2), the view's pairs support two places and the truth may lie at
    either: d d^T, as weigh_rivals widens a fix for a nearby rival match. Ground that
    repeats leaves such a fit a period away (the house next door on a street of alike
    houses, the next row of a field), and changed ground can make it the stronger one;
    parallax leaves one a roof's displacement away."""
    rest = np.setdiff1d(np.arange(len(src)), fit.keep)
    other = robust_similarity(src[rest], dst[rest], thresh, min_points)
    if other is None:
        return None
    k1, k2 = len(fit.keep), len(other.keep)
    if k1 - k2 >= SECOND_FIT_Z * np.sqrt(k1 + k2):
        return None
    d = other.params[2:] - fit.params[2:]
    own = CORRELATION_INFLATION * (fit.cov[2:, 2:] + other.cov[2:, 2:])
    if d @ np.linalg.solve(own, d) <= RIVAL_CHI2:
        return None
    return np.outer(d, d)


def widened(m: TileMatch, extra: np.ndarray | None) -> TileMatch:
    """`m` with `extra` [2, 2] (m^2, None: nothing) added to its covariance and to the part
    of it consecutive fixes share (their views see the same two places)."""
    if extra is None:
        return m
    return replace(m, cov_en_m2=m.cov_en_m2 + extra,
                   shared_cov_en_m2=m.shared_cov_en_m2 + extra)


def pose_match(view: View, src: np.ndarray, dst: np.ndarray, origin: np.ndarray,
               heights: np.ndarray | None, fit: SimilarityFit, tile_id: int, level: int,
               cfg: MatchConfig, pixels: MapPixels | None) -> TileMatch | None:
    """The camera pose from the inliers of `fit` as a TileMatch (None if it fails).

    `src`: [K, 2] view offsets (E, N) metres from nadir; `dst`: [K, 2] their map points
    minus `origin` ([2] map E/N); `heights`: [K] terrain heights of the map points or None;
    `pixels`: the map's pixels to refine the pairs on (None: not refined).
    """
    if pixels is not None:
        src, dst, _ = refine_pairs(view, src, dst, origin, fit.params, pixels)
    a, b, tx, ty = fit.params
    # Ground points: down = 0 on the plane the view was rectified on; with a terrain
    # model, each point's height above the ground under the aircraft lifts it.
    down = np.zeros(len(dst))
    if heights is not None and np.isfinite(view.ground_m):
        rise = heights - view.ground_m
        down = -np.where(np.isfinite(rise), rise, 0.0)
    points = np.column_stack([dst[:, 1], dst[:, 0], down])
    pose = solve_pose(src, points, view.R_ned_cam, view.agl_m,
                      np.array([ty, tx, -view.agl_m * np.hypot(a, b)]),
                      np.radians(cfg.attitude_sigma_deg), np.radians(cfg.yaw_sigma_deg),
                      view.gsd_m / view.agl_m, cfg.lens_sigma,
                      cfg.map_warp_px * view.gsd_m / view.agl_m, CORRELATION_INFLATION)
    if pose is None:
        return None
    # The pose turning the camera further from the reported attitude than the prior allows
    # (2 sigma) means the autopilot, the mount or the camera model is wrong; a lens model
    # error mimics such a tilt (no distortion model: 2-3 deg, 4 m at 120 m). Count what
    # that much tilt would move the position as uncertainty.
    tilt = float(np.hypot(pose.w_rad[0], pose.w_rad[1]))
    excess = max(0.0, tilt - 2 * np.radians(cfg.attitude_sigma_deg))
    # Without a measured attitude the level camera stays the pose's prior (a view this
    # narrow hardly tells a tilt from a shift: freed, the tilt follows the map's own
    # distortions), and the position claims what the unknown tilt can move it.
    unmeasured = 0.0 if view.attitude_measured else np.radians(cfg.unmeasured_tilt_sigma_deg)
    # What the reported attitude's error leaves in the pose and the map's warp read as a
    # tilt, consecutive fixes share: both change slowly, so averaging fixes does not
    # shrink them (Fix). An unmeasured or excess tilt may change from frame to frame (a
    # camera on its own gimbal): each fix's own.
    shared = CORRELATION_INFLATION * pose.attitude_cov_en_m2 + pose.warp_cov_en_m2
    # the image noise's part of the pose's covariance (less the attitude prior's), the
    # shared part, and what each fix has of its own beyond the pose
    cov = (pose.cov_en_m2 - pose.attitude_cov_en_m2 + shared + jackknife_cov(src, dst)
           + ((view.agl_m * np.tan(excess)) ** 2 + (view.agl_m * np.tan(unmeasured)) ** 2
              + cfg.sigma_floor_m**2) * np.eye(2))
    # The height: the pose's variance, the floor, and the focal length's own error, which
    # scales the whole view and so the height (the position does not depend on it).
    height = float(-pose.C_ned_m[2])
    height_var = (pose.cov[5, 5] + cfg.sigma_floor_m**2
                  + (cfg.focal_sigma * height) ** 2)
    # The heading the image measures, for a filter that has the reported one already: the
    # pose's yaw without its prior, where the image pins it at least 3 x better than that
    # prior (1-D: the prior shrank the yaw by v / (v + p), so it is scaled back by 1 + v/p);
    # its variance, and a floor for the camera mount's own yaw error.
    prior_var = np.radians(cfg.yaw_sigma_deg) ** 2
    yaw_var = pose.yaw_var_image
    heading = heading_sigma = float("nan")
    if np.isfinite(yaw_var) and yaw_var < prior_var / 9:
        heading = float(np.degrees(pose.w_rad[2]) * (1 + yaw_var / prior_var))
        heading_sigma = float(np.hypot(np.degrees(np.sqrt(yaw_var)),
                                       cfg.heading_floor_deg))
    return TileMatch(
        tile_id=tile_id, level=level, inliers=len(src),
        east_m=float(pose.C_ned_m[1] + origin[0]), north_m=float(pose.C_ned_m[0] + origin[1]),
        cov_en_m2=cov, scale=height / view.agl_m,
        rotation_deg=float(np.degrees(pose.w_rad[2])),
        tilt_ne_deg=(float(np.degrees(pose.w_rad[0])), float(np.degrees(pose.w_rad[1]))),
        residual_rms_m=float(np.sqrt((fit.residuals**2).sum(1).mean())),
        height_sigma_m=float(np.sqrt(height_var)),
        heading_deg=heading, heading_sigma_deg=heading_sigma, shared_cov_en_m2=shared,
    )


def fit_pose(view: View, src: np.ndarray, dst: np.ndarray, origin: np.ndarray,
             heights: np.ndarray | None, tile_id: int, level: int, cfg: MatchConfig,
             pixels: MapPixels | None, min_points: int = _MIN_POINTS
             ) -> tuple[SimilarityFit, TileMatch] | None:
    """The robust fit of [N, 2] pairs `src` -> `dst` (robust_similarity, at least
    `min_points`), the pose of its inliers (pose_match) widened by a second fit nearly as
    well supported (second_fit); None where either fails. `heights`: [N] terrain heights
    of the map points or None."""
    thresh = cfg.ransac_px * view.gsd_m
    fit = robust_similarity(src, dst, thresh, min_points)
    if fit is None:
        return None
    h = None if heights is None else heights[fit.keep]
    m = pose_match(view, src[fit.keep], dst[fit.keep], origin, h, fit, tile_id, level, cfg,
                   pixels)
    if m is None:
        return None
    return fit, widened(m, second_fit(src, dst, fit, thresh, min_points))


def fix_from(view: View, m: TileMatch) -> Fix:
    """The Fix a trusted match gives. Its altitude: the camera's height from the pose over
    the ground the view's points were measured from (`view.ground_m`, the pack's DEM), so
    NaN on packs without a DEM, where that ground's own altitude is unknown. Its heading
    error: the image's own where it pins it (with heading_sigma_deg), else the pose's."""
    agl = view.agl_m * m.scale
    on_dem = bool(np.isfinite(view.ground_m))
    measured = bool(np.isfinite(m.heading_sigma_deg))
    return Fix(
        t_ns=view.t_ns, east_m=m.east_m, north_m=m.north_m, cov_en_m2=m.cov_en_m2,
        agl_m=agl, heading_err_deg=m.heading_deg if measured else m.rotation_deg,
        tilt_ne_deg=m.tilt_ne_deg, heading_sigma_deg=m.heading_sigma_deg,
        inliers=m.inliers, tile_id=m.tile_id, level=m.level,
        alt_amsl_m=view.ground_m + agl if on_dem else float("nan"),
        alt_sigma_m=m.height_sigma_m if on_dem else float("nan"),
        shared_cov_en_m2=m.shared_cov_en_m2,
    )


def match_tile(view_xy_m: np.ndarray, view_desc: np.ndarray, tile: Candidate, view: View,
               cfg: MatchConfig, pixels: MapPixels | None = None) -> TileMatch | None:
    """Match one tile; None when robust estimation finds fewer than 8 consistent points.

    `view_xy_m`: [N, 2] (east, north) metres from nadir; `pixels`: see pose_match.
    """
    tile_id, level, tile_en, tile_desc, tile_h = (tile.tile_id, tile.level, tile.en_m,
                                                  tile.descriptors, tile.heights_m)
    pairs = match_mutual(view_desc, tile_desc, cfg.ratio)
    src = view_xy_m[pairs[:, 0]]
    origin = tile_en.mean(0)  # condition the numbers: absolute northings are ~1e6 m
    dst = tile_en[pairs[:, 1]] - origin
    heights = None if tile_h is None else tile_h[pairs[:, 1]]
    found = fit_pose(view, src, dst, origin, heights, tile_id, level, cfg, pixels)
    return None if found is None else found[1]


def judge(view: View, matches: list[TileMatch], cfg: MatchConfig) -> Fix | Rejection:
    """The best tile match as a Fix, or the reason it cannot be trusted."""
    if not matches:
        return Rejection(view.t_ns, "few_inliers", "no tile gave a consistent match")
    ranked = sorted(matches, key=lambda m: m.inliers, reverse=True)
    best = ranked[0]
    reason: RejectReason | None = None
    detail = ""
    if best.inliers < cfg.min_inliers:
        reason, detail = "few_inliers", f"{best.inliers} < {cfg.min_inliers}"
    elif abs(best.scale - 1) > cfg.max_scale_err:
        reason, detail = "scale", f"match scale {best.scale:.3f} vs telemetry height"
    elif abs(best.rotation_deg) > cfg.max_rotation_deg:
        reason, detail = "heading", f"view rotated {best.rotation_deg:.1f} deg against the map"
    if reason is not None:
        return Rejection(view.t_ns, reason, detail)
    weighed = weigh_rivals(view.t_ns, best, ranked[1:], cfg)
    return weighed if isinstance(weighed, Rejection) else fix_from(view, weighed)


def same_place(a: TileMatch, b: TileMatch) -> bool:
    """Two matches of one view whose own errors explain their separation (RIVAL_CHI2): the
    part of each covariance that every match of the view shares (the reported attitude's
    error, the map's warp: shared_cov_en_m2) moves both alike, so it explains none of it."""
    d = np.array([b.east_m - a.east_m, b.north_m - a.north_m])
    own = a.cov_en_m2 - a.shared_cov_en_m2 + b.cov_en_m2 - b.shared_cov_en_m2
    return bool(d @ np.linalg.solve(own, d) <= RIVAL_CHI2)


def weigh_rivals(t_ns: int, best: TileMatch, others: list[TileMatch], cfg: MatchConfig
                 ) -> TileMatch | Rejection:
    """`best` weighed against the view's other matches (solution separation): one further
    than ambiguity_radius_m with ambiguity_ratio of best's inliers makes the view
    "ambiguous"; a nearer one with min_inliers (a credible fix itself) that the two
    covariances cannot explain (RIVAL_CHI2) widens best's covariance by their separation,
    along it: the truth may lie at either, and consecutive views see the same two. A best
    below min_inliers comes back as it is: acceptance refuses it for that."""
    if best.inliers < cfg.min_inliers:
        return best
    widen = np.zeros((2, 2))
    for other in others:
        d = np.array([other.east_m - best.east_m, other.north_m - best.north_m])
        gap = float(np.hypot(*d))
        if gap > cfg.ambiguity_radius_m:
            if other.inliers >= cfg.ambiguity_ratio * best.inliers:
                return Rejection(t_ns, "ambiguous", f"tile {other.tile_id}: {other.inliers} vs"
                                 f" {best.inliers} inliers {gap:.0f} m apart")
        elif other.inliers >= cfg.min_inliers and not same_place(best, other):
            widen += np.outer(d, d)
    return widened(best, widen)


def locate(view: View, feats: LocalFeatures, candidates: list[Candidate],
           cfg: MatchConfig, pixels: MapPixels | None = None) -> Fix | Rejection:
    """Match the view against each candidate tile (`pixels`: see pose_match)."""
    if len(feats) < cfg.min_inliers:
        return Rejection(view.t_ns, "few_features", f"{len(feats)} features in the view")
    xy = view_px_to_offset_m(view, feats.keypoints.astype(np.float64))
    matches = [m for tile in candidates
               if (m := match_tile(xy, feats.descriptors, tile, view, cfg, pixels)) is not None]
    return judge(view, matches, cfg)
