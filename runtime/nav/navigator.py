"""The in-flight pipeline, stage by stage, as in the data-flow diagram:

    frame + telemetry -> rectify -> View -> features -> retrieve -> list[TileHit]
                      -> match -> Fix | Rejection -> filter -> Estimate
                                  features -> odometry -> velocity -> filter

`Localizer` turns one frame into a view and its features (`look`), then a fix or a
counted rejection given a prior (`locate`; on a pack made by `maps survey`, the whole frame
registered against the survey's 3-D points first: `register3d`); `Navigator` feeds the
views' motion (visual odometry) to the filter, and decides the prior: the filter's own
estimate while it is tracking, the aircraft's GNSS while that may be used, else a
search of the whole pack. A filter is started only by two fixes that agree with each other,
and reset (back to a global search) when it keeps refusing fixes.

The filter is the constant-velocity `PositionFilter` or the IMU-aided `ImuFilter`
(filter.kind; auto: the IMU filter when IMU samples came within the last second at the
filter's start, and no noisier than the filter assumes). The Navigator uses either through
the same few methods: initialize, reset, update_position, horizontal_at (and estimate_at
on top); odometry goes to the CV filter as a velocity between consecutive frames
(update_velocity), to the IMU filter as a displacement from the odometry's reference view,
which the filter marks (mark, update_displacement), with the autopilot's altitude
(update_altitude).

Two stages run beside others, each on one worker thread, because they need only what is
already there: the view's structure channels (coarse stage) while the encoder extracts its
features, and odometry while the view is located. The results are those of running them
in turn; the frame takes less time (benchmarks/bench_accuracy.py).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import chain

import cv2
import numpy as np

from skyfix.maps.survey_points import SurveyPoints
from skyfix.maps.tilemap import TileMap
from skyfix.models.features import Encoder, LocalFeatures
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.geo import LocalFrame, R_ned_body
from skyfix.runtime.core.types import Estimate, Fix, Frame, GnssSample, Rejection, Telemetry, View
from skyfix.runtime.nav.coarse import (
    ROTATIONS_DEG,
    CoarseMatch,
    CoarseSearch,
    CoarseView,
    self_similarity,
)
from skyfix.runtime.nav.eskf import ImuFilter
from skyfix.runtime.nav.filter import Innovation, PositionFilter, estimate_at, fix_noise
from skyfix.runtime.nav.fine import (
    NearMatch,
    best_of,
    judge_near,
    match_near,
    predicted_en,
    strong,
    vote_places,
)
from skyfix.runtime.nav.heading import HeadingCorrection
from skyfix.runtime.nav.match import Candidate, locate, weigh_rivals
from skyfix.runtime.nav.motion import MotionGate
from skyfix.runtime.nav.odometry import VelocityObservation, VisualOdometry
from skyfix.runtime.nav.rectify import rectify, view_px_to_offset_m, with_detail_of
from skyfix.runtime.nav.register3d import Registrar
from skyfix.runtime.nav.retrieve import NO_PRIOR, Prior, retrieve, window_prior

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameResult:
    """What one frame gave: the fix or why not, how it fared in the filter, timings."""

    t_ns: int
    result: Fix | Rejection
    innovation: Innovation | None
    prior_source: str
    latency_ms: float


# A view with a short side of fewer pixels than this at its level's GSD (a low aircraft: 120
# px at 34 m with a 0.3 m map and a 640 x 480, 70 deg camera) holds too few features for
# min_inliers (XFeat: ~1 per 100 px^2, about 1 in 4 of them an inlier): it is also made at
# the level's GSD / 2, 4 or 8 (no finer than the frame, and with no finer detail than the
# level's: rectify.with_detail_of), and matched against features of the map's own pixels
# read at that GSD around each coarse place (Localizer.match_at).
FINE_VIEW_MIN_PX = 200
FINE_MAX_FACTOR = 8
_MAP_BORDER_PX = 32  # the map's pixels read around where a finer view's features may match


@dataclass(frozen=True)
class Look:
    """A frame made ready for matching: its north-up view and that view's features;
    `structure`: the view made ready for the coarse stage (None where a Localizer other than
    this module's made it); `fine` and `fine_feats`: the same frame at a finer GSD (with the
    level's detail) and its features, where `view` is small (FINE_VIEW_MIN_PX), else None;
    `frame`: the frame's image, kept where the pack has survey points (register3d)."""

    level: int
    view: View
    feats: LocalFeatures
    structure: CoarseView | None = None
    fine: View | None = None
    fine_feats: LocalFeatures | None = None
    frame: np.ndarray | None = None  # the frame itself, where it is registered in 3-D


def with_height_above_ground(tel: Telemetry, ground_m: float) -> Telemetry:
    """`tel` with its best height above ground: a downward rangefinder's range times the
    cosine of the body's tilt when there is one; else the altitude above `ground_m` (the
    terrain height under the aircraft) when known; else the telemetry's (above home)."""
    if tel.range_m is not None:
        return replace(tel, agl_m=tel.range_m * np.cos(tel.roll_rad) * np.cos(tel.pitch_rad))
    if np.isfinite(ground_m) and np.isfinite(tel.alt_amsl_m):
        return replace(tel, agl_m=tel.alt_amsl_m - ground_m)
    return tel


def _half_diagonal_m(view: View) -> float:
    """The view's half-diagonal on the ground: how far its pixels reach from its centre."""
    return float(np.hypot(*view.image.shape)) * view.gsd_m / 2


class Localizer:
    """rectify -> features -> retrieve -> match, for one frame at a time."""

    def __init__(self, pack: TileMap, camera: CameraModel, encoder: Encoder, cfg: Config):
        self.pack, self.camera, self.encoder, self.cfg = pack, camera, encoder, cfg
        self._tile = lru_cache(maxsize=128)(self._load_tile)
        # the map's own pixels, to refine matched pairs on (runtime/nav/refine.py)
        self._pixels = pack.map_image if cfg.match.refine else None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skyfix-look")
        self._registrar = _registrar(pack, camera, cfg)

    def _coarse(self, level: int) -> bool:
        """Whether views of `level` go through the coarse stage (`match.coarse`, and the
        pack has that level's structure channels)."""
        return self.cfg.match.coarse and level < len(self.pack.structure)

    def _load_tile(self, tile_id: int) -> Candidate:
        en, desc = self.pack.tile_features(tile_id)
        heights = self.pack.terrain_m(en[:, 0], en[:, 1]) if self.pack.dem is not None else None
        level = int(self.pack.tile_levels(np.array([tile_id]))[0])
        return Candidate(int(tile_id), level, en, desc, heights)

    def look(self, frame: Frame, tel: Telemetry, prior: Prior = NO_PRIOR) -> Look | Rejection:
        """Rectify the frame at the pack level nearest its ground resolution; extract features.

        The height above ground: see `with_height_above_ground`, with the terrain height
        of the pack's DEM at the prior position when there is both."""
        ground = float("nan")
        if self.pack.dem is not None and prior.source != "none":
            ground = float(self.pack.terrain_m(*prior.centre_en))
        tel = with_height_above_ground(tel, ground)
        level = self.pack.level_for_gsd(tel.agl_m / self.camera.fx)
        view = rectify(frame, tel, self.camera, self.pack.levels[level], self.cfg.rectify,
                       self.pack.convergence_deg)
        if view is None:
            return Rejection(frame.t_ns, "no_view", "attitude or height above ground unusable")
        view = replace(view, ground_m=ground)
        # the view's structure channels (coarse stage) are made while the encoder runs
        structure = self._worker.submit(CoarseView, view.image, view.mask, view.origin_px,
                                        ROTATIONS_DEG if self._coarse(level) else (0.0,))
        feats = self.encoder.extract(view.image, view.mask)
        look = Look(level, view, feats, structure.result(),
                    frame=None if self._registrar is None else frame.image)
        return self._finer(look, frame, tel)

    def _finer(self, look: Look, frame: Frame, tel: Telemetry) -> Look:
        """`look` with its finer view (FINE_VIEW_MIN_PX) where its view is small, the frame
        fine enough and the pack has its pixels (ortho.tif); else `look` as it is."""
        view = look.view
        short = min(view.image.shape)
        if short >= FINE_VIEW_MIN_PX or not self.pack.has_pixels:
            return look
        frame_gsd = tel.agl_m / self.camera.fx
        m = 1
        while (m < FINE_MAX_FACTOR and short * m < FINE_VIEW_MIN_PX
               and view.gsd_m / (2 * m) >= 0.9 * frame_gsd):
            m *= 2
        if m == 1:
            return look
        fine = rectify(frame, tel, self.camera, view.gsd_m / m, self.cfg.rectify,
                       self.pack.convergence_deg)
        if fine is None:
            return look
        fine = with_detail_of(replace(fine, ground_m=view.ground_m), m)
        return replace(look, fine=fine, fine_feats=self.encoder.extract(fine.image, fine.mask))

    def locate(self, look: Look, prior: Prior) -> Fix | Rejection:
        """A fix of the frame, searched for inside `prior`: on a pack with survey points,
        the whole frame registered against them (register3d), and where that fails the
        view against the map's pixels (`_locate_view`; a refusal then says why both
        failed)."""
        if self._registrar is not None and look.frame is not None:
            fix = self._registrar.register(look.frame, look.view, prior)
            if isinstance(fix, Fix):
                return fix
            mosaic = self._locate_view(look, prior)
            if isinstance(mosaic, Fix):
                return mosaic
            return replace(mosaic, detail=f"survey points: {fix.reason}, {fix.detail}; "
                                          f"mosaic: {mosaic.detail}")
        return self._locate_view(look, prior)

    def _locate_view(self, look: Look, prior: Prior) -> Fix | Rejection:
        """A fix from the view's features, searched for inside `prior`: coarse structural
        search then features matched near it when the prior is a window and the pack has
        structure channels (`match.coarse`), else tiles retrieved and matched whole. A view
        of ground that repeats within it (coarse.self_similarity at or over
        `match.max_self_similarity`) is refused first, as ambiguous: whatever the map, one
        period of it looks like the next; and so is a match whose inliers all lie on such
        ground (the rest of the view, which would tell the periods apart, unmatched)."""
        t_ns, feats = look.view.t_ns, look.feats
        count = len(feats if look.fine_feats is None else look.fine_feats)
        if count < self.cfg.match.min_inliers:
            return Rejection(t_ns, "few_features", f"{count} features in the view")
        coarse = self._coarse(look.level)
        view, structure = look.view, look.structure
        repeats = self._repeats(self_similarity(structure), t_ns, "the view")
        if repeats is not None:
            return repeats
        if coarse and prior.source != "none":
            windows = [prior]
        else:
            query = self.pack.global_descriptor(feats.descriptors, feats.embedding)
            hits = retrieve(self.pack, query, look.level, prior, self.cfg.retrieve)
            if not hits:
                return Rejection(t_ns, "no_tiles", f"no tile of level {look.level} in the window")
            if not coarse:
                return locate(look.view, feats, [self._tile(h.tile_id) for h in hits],
                              self.cfg.match, self._pixels)
            # no prior: each retrieved tile is a window for the coarse stage
            half = 0.5 * self.pack.tile_px * self.pack.levels[look.level]
            centres = self.pack.tile_centers(np.array([h.tile_id for h in hits]))
            windows = [Prior(c, half**2 * np.eye(2), "none") for c in centres]
        near = self.match_near(look, structure, windows)
        if isinstance(near, Rejection):
            return near
        if near is not None:  # the ground the inliers lie on, alone, must not repeat either
            region = np.zeros(view.mask.shape, np.uint8)
            cv2.fillConvexPoly(region, np.round(near.hull_px).astype(np.int32), 1)
            repeats = self._repeats(self_similarity(structure, region.astype(bool)), t_ns,
                                    "the inliers' part of the view")
            if repeats is not None:
                return repeats
        # a match of the finer view is judged on it (its residual in its own pixels)
        return judge_near(view if look.fine is None else look.fine, near, self.cfg.match)

    def _repeats(self, similarity: float, t_ns: int, where: str) -> Rejection | None:
        """An "ambiguous" Rejection when the ground `where` repeats: its self-similarity
        (coarse.self_similarity) at or over match.max_self_similarity."""
        if not similarity >= self.cfg.match.max_self_similarity:
            return None
        return Rejection(t_ns, "ambiguous", f"the ground repeats within {where} "
                         f"(self-similarity {similarity:.2f})")

    def _places(self, level: int, structure: CoarseView, windows: list[Prior],
                radii: list[float], reach: float) -> Iterator[CoarseMatch]:
        """The coarse places of each window in turn, each refined only when asked for. The
        windows are searched in one crop of the map where its square is no larger than
        theirs together (the overlapping tiles of a search without a prior): each window
        gets the places its own crop would give (but for where pass 1's 2 x 2 blocks
        fall), and the coarse stage's pass 1 runs once, not once a window."""
        halves = [r + reach for r in radii]
        lo = np.min([p.centre_en - h for p, h in zip(windows, halves, strict=True)], 0)
        hi = np.max([p.centre_en + h for p, h in zip(windows, halves, strict=True)], 0)
        side = float(np.max(hi - lo))
        if len(windows) > 1 and side**2 <= sum((2 * h) ** 2 for h in halves):
            searches = [self._search(level, structure, (lo + hi) / 2, side / 2)] * len(windows)
        else:  # each window's own, made when it is reached
            searches = (self._search(level, structure, p.centre_en, h)
                        for p, h in zip(windows, halves, strict=True))
        for prior, radius, search in zip(windows, radii, searches, strict=True):
            if search is not None:
                yield from search.places(prior.centre_en, radius,
                                         hypotheses=self.cfg.match.hypotheses)

    def _search(self, level: int, structure: CoarseView, centre_en: np.ndarray, half_m: float
                ) -> CoarseSearch | None:
        """The coarse stage of the view over the map's square centre_en +- half_m (None:
        the pack has no structure channels for `level`)."""
        window = self.pack.structure_window(level, centre_en, half_m)
        return None if window is None else CoarseSearch(structure, window)

    def match_at(self, look: Look, place: CoarseMatch) -> NearMatch | None:
        """The fine match of the view's features near `place` (the 4 tiles of the view's
        level nearest it), or None."""
        view = look.view
        reach = _half_diagonal_m(view)
        centre = np.array([place.east_m, place.north_m])
        ids = self.pack.tiles_near(centre, reach, reach)
        ids = ids[self.pack.tile_levels(ids) == look.level]
        ids = self.pack.nearest_first(ids, centre)[0][:4]
        if look.fine is not None:
            return self._match_fine(look, place, int(ids[0]) if len(ids) else -1)
        return match_near(view, look.feats, [self._tile(int(i)) for i in ids], place,
                          self.cfg.match, self._pixels)

    def _match_fine(self, look: Look, place: CoarseMatch, tile_id: int) -> NearMatch | None:
        """The fine match of the finer view (Look.fine) near `place`, against the features of
        the map's own pixels read at its GSD there (None: no match, or no pixels). Its
        agreement with the coarse place and its inliers' hull are given in pixels of the
        level's view, as the coarse stage and the ambiguity check of the inliers' ground
        read them."""
        fine, cfg = look.fine, self.cfg.match
        g = fine.gsd_m
        # where match_near looks for the view's features: their places as the coarse stage
        # predicts them, and near_radius_px about; read _MAP_BORDER_PX wider, as the
        # detector finds fewer and other keypoints near an image's edge
        pred = predicted_en(view_px_to_offset_m(fine, look.fine_feats.keypoints.astype(np.float64)),
                            place)
        reach = (cfg.near_radius_px + _MAP_BORDER_PX) * g
        lo, hi = pred.min(0) - reach, pred.max(0) + reach
        tile = self._map_features(g, (lo[0], lo[1], hi[0], hi[1]), look.level, tile_id)
        if tile is None:
            return None
        near = match_near(fine, look.fine_feats, [tile], place, cfg, self._pixels)
        if near is None:
            return None
        view = look.view
        off = view_px_to_offset_m(fine, near.hull_px.astype(np.float64))
        hull = np.column_stack([off[:, 0] / view.gsd_m + view.origin_px[0],
                                view.origin_px[1] - off[:, 1] / view.gsd_m])
        return replace(near, agreement_px=near.agreement_px * g / view.gsd_m, hull_px=hull)

    def _map_features(self, gsd_m: float, box: tuple[float, float, float, float], level: int,
                      tile_id: int) -> Candidate | None:
        """Features of the map's own pixels at `gsd_m` over `box` (min E, min N, max E, max N)
        as a Candidate (None: no pixels there). Read for each place afresh: a wider read to
        reuse would hold more keypoints than the encoder keeps (max_features)."""
        image = self.pack.map_image(gsd_m, box)
        if image is None or min(image.gray.shape) < 32:
            return None
        mf = self.encoder.extract(image.gray, image.valid)
        en = np.column_stack([image.left_e_m + (mf.keypoints[:, 0] + 0.5) * gsd_m,
                              image.top_n_m - (mf.keypoints[:, 1] + 0.5) * gsd_m])
        heights = self.pack.terrain_m(en[:, 0], en[:, 1]) if self.pack.dem is not None else None
        return Candidate(tile_id, level, en, mf.descriptors, heights)

    def match_near(self, look: Look, structure: CoarseView, windows: list[Prior]
                   ) -> NearMatch | None | Rejection:
        """Coarse search of each window, then the fine match near each of its
        `match.hypotheses` best places: the one the fine stage supports best (None: none
        found); a Rejection when the coarse stage finds no place at all, or when a second
        place, away from the best, is supported nearly as well. The other places are not
        tried when the best coarse place agrees with 4 x min_inliers fine inliers; when none
        has 2 x min_inliers, the places the features vote for (`window_fallback`) are tried
        too. A place found again (windows overlap) is matched once. `structure`: the view
        made ready for the coarse stage, once for all windows."""
        view, cfg = look.view, self.cfg.match
        reach = _half_diagonal_m(view)
        radii = [float(np.sqrt(np.linalg.eigvalsh(p.window_cov).max())) for p in windows]
        places = self._places(look.level, structure, windows, radii, reach)
        first = next(places, None)
        if first is None:
            return Rejection(view.t_ns, "no_tiles", "no place for the view in the window")
        found: list[NearMatch] = []
        tried: dict[tuple[float, float, float], int | None] = {}  # place -> its match in found

        def attempt(place: CoarseMatch) -> NearMatch | None:
            """The fine match near `place`, added to `found`; None when there is none, or
            when the place was tried before: windows that overlap (the tiles of a search
            without a prior) find the very same place again, its match is the same, and it
            keeps the better peak ratio. Only the same numbers are the same place: moved by
            a hair, RANSAC draws other samples, and where a fit is unstable, a second draw
            is what shows it."""
            key = (place.east_m, place.north_m, place.rotation_deg)
            if key in tried:
                i = tried[key]
                if i is not None and place.peak_ratio > found[i].coarse.peak_ratio:
                    found[i] = replace(found[i], coarse=place)
                return None
            near = self.match_at(look, place)
            tried[key] = None if near is None else len(found)
            if near is not None:
                found.append(near)
            return near

        for coarse in chain([first], places):
            near = attempt(coarse)
            if (near is not None and len(found) == 1
                    and near.match.inliers >= 4 * cfg.min_inliers
                    and near.agreement_px <= cfg.coarse_agree_px and coarse.peak_ratio > 1):
                break  # the best coarse place, confirmed many times over: no rival can win
        if cfg.window_fallback and not any(
                strong(n, cfg) for n in found):
            # The coarse stage may have missed: places the features alone vote for across
            # each window; a match found so can only be accepted on its own strength
            # (2 x min_inliers).
            for prior, radius in zip(windows, radii, strict=True):
                ids = self.pack.tiles_near(prior.centre_en, radius + reach, radius + reach)
                ids = ids[self.pack.tile_levels(ids) == look.level]
                for place in vote_places(view, look.feats, [self._tile(int(i)) for i in ids],
                                         prior.centre_en, radius, cfg):
                    attempt(place)
        if not found:
            return None
        best = best_of(found, cfg)
        others = [n.match for n in found if n is not best]
        weighed = weigh_rivals(view.t_ns, best.match, others, cfg)
        return weighed if isinstance(weighed, Rejection) else replace(best, match=weighed)


def _registrar(pack: TileMap, camera: CameraModel, cfg: Config) -> Registrar | None:
    """The 3-D registration of frames on a pack with survey points (match.survey_3d), else
    None. Without pycolmap the view is matched against the mosaic alone, and the log says
    so once."""
    path = pack.survey_points_file
    if path is None or not cfg.match.survey_3d:
        return None
    if importlib.util.find_spec("pycolmap") is None:
        log.warning("%s carries survey points, but pycolmap is not installed (pip install "
                    "'skyfix[survey]'): matching the mosaic only", pack.path)
        return None
    return Registrar(SurveyPoints.load(path), camera, cfg.match)


def feed_imu(filt: ImuFilter, t_ns: np.ndarray, accel_mps2: np.ndarray,
             gyro_radps: np.ndarray, rpy_rad: np.ndarray) -> int | None:
    """Hand IMU samples (as `Navigator.on_imu` takes them) to `filt`; rows with a NaN
    attitude are skipped. Returns the time of the last sample handed over (None: none)."""
    last = None
    for t, f, w, rpy in zip(np.asarray(t_ns, np.int64).tolist(), accel_mps2, gyro_radps,
                            rpy_rad, strict=True):
        if np.all(np.isfinite(rpy)):
            filt.on_imu(t, f, w, R_ned_body(*rpy))
            last = t
    return last


_NOISE_MARGIN = 3.0  # filter.kind auto: an IMU this much noisier than configured -> cv


class Navigator:
    """Fuses fixes into estimates and chooses each frame's search prior."""

    def __init__(self, localizer: Localizer, frame: LocalFrame, cfg: Config):
        self.localizer, self.frame, self.cfg = localizer, frame, cfg
        # the map's stated 1-sigma error against the world, claimed on top (estimate_at)
        self.map_sigma_m = 0.0 if localizer is None else localizer.pack.region.georef_sigma_m
        self.filter: PositionFilter | ImuFilter = PositionFilter(cfg.filter)
        self.filter_kind = "cv"  # which filter runs: cv | imu
        # filter.kind auto: why it runs cv, or that it chooses at the first fix
        self.filter_note = "chosen at the first fix" if cfg.filter.kind == "auto" else ""
        self._imu_filter = ImuFilter(cfg.filter)  # buffers IMU samples until it runs
        self._imu_t_ns: int | None = None  # time of the last IMU sample
        self._alt_t_ns: int | None = None  # time of the last altitude fused
        self._down_m = 0.0  # NED down (-altitude AMSL) of the last frame's telemetry
        self._agl_m = 0.0  # height above ground of the last view
        self.odometry = VisualOdometry(cfg.odometry)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skyfix-odometry")
        self.motion = MotionGate(gate=cfg.filter.nis_gate)  # fixes vs the autopilot's motion
        self.rejections: Counter[str] = Counter()
        self.last_fix_t_ns: int | None = None
        # the last fused fix's shared covariance (Fix.shared_cov_en_m2), north/east
        self.shared_ne_m2 = np.zeros((2, 2))
        self.heading = HeadingCorrection(cfg.output.lock_budget_s)  # the compass's error
        self._candidate: Fix | None = None  # a first fix waiting for a second to agree
        self._gated_streak = 0

    def prior(self, t_ns: int, gnss: GnssSample | None) -> Prior:
        rc = self.cfg.retrieve
        lost_for_s = np.inf if self.last_fix_t_ns is None else (t_ns - self.last_fix_t_ns) * 1e-9
        if self.filter.initialized and lost_for_s <= rc.global_after_s:
            x, P = self.filter.horizontal_at(t_ns)
            J_inv = np.linalg.inv(self.frame.J_ned_map)
            cov_en = J_inv @ P[:2, :2] @ J_inv.T
            return window_prior(self.frame.ned_to_map(x[0], x[1]), cov_en, "filter", rc)
        if gnss is not None:
            centre = self.frame.lla_to_map(gnss.lat_deg, gnss.lon_deg)[0]
            sigma = gnss.eph_m if np.isfinite(gnss.eph_m) else 5.0
            return window_prior(centre, sigma**2 * np.eye(2), "gnss", rc)
        return NO_PRIOR

    def on_imu(self, t_ns: np.ndarray, accel_mps2: np.ndarray, gyro_radps: np.ndarray,
               rpy_rad: np.ndarray) -> None:
        """IMU samples in time order: `t_ns` [K], specific force `accel_mps2` [K, 3] and
        rate `gyro_radps` [K, 3] (body), the autopilot's attitude `rpy_rad` [K, 3] at each
        (rows with a NaN attitude are skipped)."""
        last = feed_imu(self._imu_filter, t_ns, accel_mps2, gyro_radps, rpy_rad)
        self._imu_t_ns = self._imu_t_ns if last is None else last

    def on_frame(self, frame: Frame, tel: Telemetry, gnss: GnssSample | None) -> FrameResult:
        start = time.perf_counter()
        self._down_m = -tel.alt_amsl_m if np.isfinite(tel.alt_amsl_m) else 0.0
        self._fuse_altitude(frame.t_ns, tel)
        if tel.vel_ned_mps is not None:
            self.motion.observe(frame.t_ns, tel.vel_ned_mps[0], tel.vel_ned_mps[1])
        prior = self.prior(frame.t_ns, gnss)
        correction = self.heading.at(frame.t_ns) or 0.0  # the compass's error (nav/heading.py)
        turned = replace(tel, yaw_rad=tel.yaw_rad + np.radians(correction))
        look = self.localizer.look(frame, turned, prior)
        result, innovation, velocity = look, None, None
        if isinstance(look, Look):  # odometry runs while the view is located
            motion = self._worker.submit(self.odometry.update, look.view, look.feats,
                                         keyframes=self.filter_kind == "imu")
            self._agl_m = look.view.agl_m
            result = self.localizer.locate(look, prior)
            velocity = motion.result()
        if isinstance(result, Fix):  # its heading error against the reported heading
            result = replace(result, heading_err_deg=result.heading_err_deg + correction)
            result, innovation = self.fuse(result)
            if isinstance(result, Fix):
                self.heading.add(result.t_ns, result.heading_err_deg)
        if not isinstance(result, Fix):
            self._fuse_velocity(velocity)  # only where no fix: its errors are time-correlated
        if (isinstance(look, Look) and self.filter_kind == "imu" and self.filter.initialized
                and self.filter.clone_t_ns != self.odometry.reference_t_ns):
            self.odometry.rebase()  # a new reference view (or a filter without its clone):
            self.filter.mark(look.view.t_ns)  # later displacements start here
        if isinstance(result, Rejection):
            self.rejections[result.reason] += 1
        latency = (time.perf_counter() - start) * 1e3
        return FrameResult(frame.t_ns, result, innovation, prior.source, latency)

    def _fuse_altitude(self, t_ns: int, tel: Telemetry) -> None:
        """The autopilot's altitude as the IMU filter's height (once per frame; the
        constant-velocity filter is horizontal only)."""
        if (self.filter_kind != "imu" or not self.filter.initialized
                or not np.isfinite(tel.alt_amsl_m)
                or (self._alt_t_ns is not None and t_ns <= self._alt_t_ns)):
            return
        self.filter.update_altitude(t_ns, -tel.alt_amsl_m, self.cfg.filter.alt_sigma_m**2)
        self._alt_t_ns = t_ns

    def _fuse_velocity(self, obs: VelocityObservation | None) -> None:
        """Visual odometry as a velocity (or displacement) measurement, to bridge frames
        without fixes.

        Not fused beside a fix: its error follows the attitude error, which is correlated
        from frame to frame, so fusing it every frame makes the filter overconfident
        (measured: estimate CEP50 0.10 -> 0.46 m on the 120 m Vienna sim flight)."""
        if obs is None or not self.filter.initialized:
            return
        J = self.frame.J_ned_map
        if self.filter_kind == "imu":
            # the displacement, with the attitude errors modelled (see eskf.py); the
            # view's metres are map-grid metres, turned into NED like the velocity
            d_en, cov_en = obs.d_en_m, obs.fit_cov_en_m2
            t1 = obs.t0_ns + int(round(obs.dt_s * 1e9))
            self.filter.update_displacement(obs.t0_ns, t1, J @ d_en, J @ cov_en @ J.T,
                                            self._agl_m)
            return
        v_en, cov_en = obs.v_en_mps, obs.cov_en_m2s2
        self.filter.update_velocity(obs.t_ns, J @ v_en, J @ cov_en @ J.T)

    def fuse(self, fix: Fix) -> tuple[Fix | Rejection, Innovation | None]:
        """The filter's verdict on `fix`: the fix when it is fused (or starts the filter),
        else a "gated" Rejection; a run of `divergence_after_gated` gated fixes resets the
        filter (the filter is the one lost), which sends the next frames to a global search.
        A fix that disagrees with the autopilot's own motion since the last fix (nav/motion.py:
        a frozen or mis-stamped frame, a wrong tile) is refused first, as "motion"."""
        z = self.frame.map_to_ned(fix.east_m, fix.north_m)
        R = self._own_ned(fix)
        verdict = self.motion.check(fix.t_ns, z, R)
        if not verdict.accepted:
            return Rejection(fix.t_ns, "motion", f"disagrees with the autopilot's motion "
                             f"(NIS {verdict.nis:.0f})"), None
        if not self.filter.initialized:
            return self._start(fix, z, R), None
        innovation = self.filter.update_position(fix.t_ns, z, R)
        if not innovation.accepted:
            self._gated_streak += 1
            if self._gated_streak >= self.cfg.filter.divergence_after_gated:
                self.filter.reset()  # the filter disagrees with every fix: it is the one lost
                self.odometry.reset()
                self._gated_streak = 0
                self._candidate = None
            return Rejection(fix.t_ns, "gated", f"NIS {innovation.nis:.1f}"), innovation
        self._gated_streak = 0
        self._fused(fix)
        self._fuse_heading(fix)
        return fix, innovation

    def _fused(self, fix: Fix) -> None:
        """Keep what the estimate needs of the fix the filter has just taken."""
        self.last_fix_t_ns = fix.t_ns
        self.shared_ne_m2 = self.frame.cov_map_to_ned(fix.shared_cov_en_m2)
        self.odometry.attitude.add(fix.t_ns, fix.tilt_ne_deg)  # how good the attitude is

    def _own_ned(self, fix: Fix) -> np.ndarray:
        """The covariance (north, east) the filter takes a fix with (filter.fix_noise): its
        own, and what of the part consecutive fixes share (Fix.shared_cov_en_m2) has
        changed since the last fused fix. The estimate claims that shared part on top,
        as the map's georef_sigma_m: fed to the filter as if it were each fix's own, it
        would weigh every fix down and still be averaged away. It drifts with the
        attitude's error (filter.tilt_tau_s); the map warp's part changes only as the view
        moves on, no faster over views hundreds of metres wide, so that time errs on the
        side of feeding more."""
        dt = None if self.last_fix_t_ns is None else (fix.t_ns - self.last_fix_t_ns) * 1e-9
        return self.frame.cov_map_to_ned(fix_noise(fix.cov_en_m2, fix.shared_cov_en_m2, dt,
                                                   self.cfg.filter.tilt_tau_s))

    def _fuse_heading(self, fix: Fix) -> None:
        """The heading error a fused fix measures, for the IMU filter (filter.fuse_heading):
        while fixes come it pins the heading and the gyro's bias, which no fix or odometry
        can see and which decide the drift once fixes stop."""
        if (self.filter_kind == "imu" and self.cfg.filter.fuse_heading
                and np.isfinite(fix.heading_sigma_deg) and np.isfinite(fix.heading_err_deg)):
            self.filter.update_heading(fix.t_ns, np.radians(fix.heading_err_deg),
                                       np.radians(fix.heading_sigma_deg) ** 2)

    def _start(self, fix: Fix, z: np.ndarray, R: np.ndarray) -> Fix | Rejection:
        """Start the filter from two fixes that agree; a lone fix waits as a candidate."""
        first = self._candidate
        self._candidate = fix
        if first is None:
            return Rejection(fix.t_ns, "gated", "first fix, waiting for a second to agree")
        dt = (fix.t_ns - first.t_ns) * 1e-9
        z0 = self.frame.map_to_ned(first.east_m, first.north_m)
        R0 = self._own_ned(first)
        gap = float(np.linalg.norm(z - z0))
        allowed = self.cfg.filter.max_speed_mps * dt + 3 * np.sqrt(np.trace(R + R0))
        if dt <= 0 or gap > allowed:
            return Rejection(fix.t_ns, "gated", f"disagrees with the previous fix by {gap:.0f} m")
        vel = (z - z0) / dt
        vel_cov = (R + R0) / dt**2 + np.eye(2) * self.cfg.filter.accel_sigma_mps2**2 * dt
        self._choose_filter(fix.t_ns)
        if self.filter_kind == "imu":
            self.filter.initialize(fix.t_ns, z, R, vel, vel_cov, self._down_m,
                                   self.cfg.filter.alt_sigma_m**2)
        else:
            self.filter.initialize(fix.t_ns, z, R, vel, vel_cov)
        self._fused(fix)
        self._candidate = None
        return fix

    def _choose_filter(self, t_ns: int) -> None:
        """filter.kind, with auto: imu when an IMU sample came within a second of `t_ns`,
        unless the stream is noisier than the IMU filter assumes (more than _NOISE_MARGIN
        times filter.accel_noise_mps2_rthz or gyro_noise_radps_rthz): it would then trust
        itself over the fixes and drift beyond its covariance (PX4 SIH's HIGHRES_IMU: one
        ~5 ms average per 20 ms, 0.17 m/s^2/rtHz and 0.014 rad/s/rtHz measured, against
        0.01 and 0.001; ArduPilot SITL's SCALED_IMU 0.002 and 1e-4). `filter_note` says why."""
        kind, fc = self.cfg.filter.kind, self.cfg.filter
        self.filter_note = ""
        if kind == "auto":
            recent = self._imu_t_ns is not None and abs(t_ns - self._imu_t_ns) <= 1_000_000_000
            kind = "imu" if recent else "cv"
            if not recent:
                self.filter_note = ("no IMU sample yet" if self._imu_t_ns is None else
                                    "no IMU sample in the last second")
            acc, gyro = self._imu_filter.noise_density()
            if recent and not (acc <= _NOISE_MARGIN * fc.accel_noise_mps2_rthz
                               and gyro <= _NOISE_MARGIN * fc.gyro_noise_radps_rthz):
                kind = "cv"
                self.filter_note = (f"IMU noise {acc:.3g} m/s^2/rtHz, {gyro:.3g} rad/s/rtHz: "
                                    f"over {_NOISE_MARGIN:g} x filter.accel_noise_mps2_rthz "
                                    f"or gyro_noise_radps_rthz")
        if kind != self.filter_kind:
            self.filter = self._imu_filter if kind == "imu" else PositionFilter(self.cfg.filter)
            self.filter_kind = kind
            self._alt_t_ns = None

    def estimate(self, t_ns: int, alt_amsl_m: float) -> Estimate | None:
        """The filter's estimate predicted to `t_ns`, or None before the filter has started."""
        if not self.filter.initialized:
            return None
        return estimate_at(self.filter, t_ns, self.frame, alt_amsl_m, self.last_fix_t_ns,
                           self.map_sigma_m, self.shared_ne_m2)
