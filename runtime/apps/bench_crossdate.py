"""`skyfix bench crossdate`: the product localising views of one date against a map pack of
another, on two-date pair sets (format: skyfix.models.pair_sets; views: skyfix.sim.pairs).

For each pair and method (encoder): image `a` gets a made-up georeference at the set's
gsd_m (UTM 33N, an arbitrary origin) and becomes a map pack through `maps build`'s own
code (skyfix.maps.build.build_pack, one level at gsd_m); each view of image `b` is a
frame of a nadir pinhole camera (focal length FOCAL_SIDES view sides) whose
ground resolution is gsd_m, with level attitude
reported; the runtime's `Localizer` rectifies it, extracts features and matches it with
the protocol's prior window. Scored: placed (accepted and the fix within PLACED_PX of the
truth), accepted, wrong (accepted and more than WRONG_PX off), the median error of the
placed views, view-side milliseconds (look + locate; libraries on one thread each, the
view's structure channels made on the Localizer's worker thread while the encoder runs)
and a PNG sheet of the failures per set (view | prior window of `a`, truth boxed | `a`
where it was placed).
Reachable: the views whose features the fine stage, seeded at the true place and rotation,
matches with at least min_inliers inliers; a view that is not cannot be placed by any
search, so the share tells a search or acceptance failure from one of the features.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError

from skyfix.maps.build import build_pack
from skyfix.maps.pack import MapPack
from skyfix.models.features import Encoder
from skyfix.models.pair_sets import Pair, PairSet, read_pair, read_pair_set
from skyfix.models.registry import ENCODER_NAMES, make_encoder
from skyfix.runtime.apps.args import trained_model_option
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.types import Fix, Frame, Telemetry
from skyfix.runtime.flight.assembly import build_chain
from skyfix.runtime.nav.coarse import CoarseMatch
from skyfix.runtime.nav.navigator import Localizer, Look
from skyfix.runtime.nav.retrieve import Prior
from skyfix.sim.pairs import SyntheticView, make_views

PLACED_PX = 3.0
WRONG_PX = 10.0
OVERCONFIDENT_SIGMAS = 5.0  # an error this many claimed sigmas: the error bar lied
FOCAL_SIDES = 1.5  # the synthetic camera's focal length in view sides (37 deg field of view)
# The protocol's corner jitter stands for what rectification leaves, not for a camera tilt:
# the synthetic autopilot's attitude is exact (else the pose would take the jitter for a
# tilt and move the camera centre, the fix, away from the view's centre, the truth).
ATTITUDE_SIGMA_DEG = 0.01
CRS_FAKE = CRS.from_epsg(32633)
ORIGIN_EN = (500_000.0, 5_000_000.0)  # top-left corner of every made-up georeference
SHEET_ROWS = 16


@dataclass(frozen=True)
class ViewResult:
    set_name: str
    pair_id: str
    index: int
    accepted: bool
    err_px: float  # NaN when rejected
    reason: str  # "" when accepted
    ms: float
    reachable: bool  # the fine stage at the true place finds min_inliers (see run_view)
    detail: str = ""  # the rejection's own words
    sigma_px: float = float("nan")  # the fix's claimed 1-sigma error, its worst direction

    @property
    def overconfident(self) -> bool:
        """Accepted, and off by more than OVERCONFIDENT_SIGMAS of its claimed error."""
        return self.accepted and self.err_px > OVERCONFIDENT_SIGMAS * self.sigma_px

    def record(self) -> dict:
        """The view's outcome for the JSON (no NaN: a rejected view's error is null)."""
        return {"set": self.set_name, "pair": self.pair_id, "index": self.index,
                "accepted": self.accepted,
                "err_px": round(self.err_px, 2) if self.accepted else None,
                "sigma_px": round(self.sigma_px, 2) if self.accepted else None,
                "reason": self.reason, "detail": self.detail, "ms": round(self.ms, 1),
                "reachable": self.reachable}


def _georeference(image_bgr: np.ndarray, gsd_m: float, dst: Path) -> None:
    h, w = image_bgr.shape[:2]
    t = Affine(gsd_m, 0, ORIGIN_EN[0], 0, -gsd_m, ORIGIN_EN[1])
    with rasterio.open(dst, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs=CRS_FAKE, transform=t) as ds:
        ds.write(image_bgr[:, :, ::-1].transpose(2, 0, 1))


def px_to_en(x: float, y: float, gsd_m: float) -> np.ndarray:
    """Map (east, north) of pixel (x, y) (OpenCV convention) under the made-up reference."""
    return np.array([ORIGIN_EN[0] + (x + 0.5) * gsd_m, ORIGIN_EN[1] - (y + 0.5) * gsd_m])


def en_to_px(e: float, n: float, gsd_m: float) -> tuple[float, float]:
    return (e - ORIGIN_EN[0]) / gsd_m - 0.5, (ORIGIN_EN[1] - n) / gsd_m - 0.5


def pack_for(pair: Pair, pset: PairSet, image_a: np.ndarray, method: str, encoder: Encoder,
             work: Path) -> Path:
    """The map pack of image `a` on the pair's grid (built once with `encoder`, kept in
    `work` while `a` is the same)."""
    folder = work / pset.name / pair.id
    pack = folder / f"pack-{method}"
    ortho = folder / "a.tif"
    if (pack / "manifest.json").is_file() and _same_image(ortho, image_a):
        try:
            MapPack.open(pack, encoder_id=encoder.id, verify=False)
            return pack
        except SkyfixError:
            pass  # an old or damaged pack, or one of other weights: rebuild it
    folder.mkdir(parents=True, exist_ok=True)
    _georeference(image_a, pset.gsd_m, ortho)
    return build_pack([ortho], pack, encoder=encoder, gsds_m=(pset.gsd_m,),
                      tile_px=tile_px_for(pair.width, pair.height), force=True, progress=False)


def _same_image(tif: Path, image_bgr: np.ndarray) -> bool:
    """`tif` (as _georeference wrote it) holds the pixels of `image_bgr`."""
    try:
        with rasterio.open(tif) as ds:
            return bool(np.array_equal(ds.read().transpose(1, 2, 0)[:, :, ::-1], image_bgr))
    except RasterioError:
        return False


def tile_px_for(width: int, height: int) -> int:
    """The pack tile size for images of `width` x `height` px (small images: smaller tiles)."""
    return 512 if min(width, height) >= 512 else 256


def view_frame(loc: Localizer, view: SyntheticView, gsd_m: float) -> tuple[Frame, Telemetry]:
    """The camera frame and telemetry of a view (a nadir camera whose ground resolution is
    gsd_m, level attitude reported); sets `loc.camera` to that camera."""
    s = view.image.shape[1]
    half = (s - 1) / 2
    focal = FOCAL_SIDES * s
    loc.camera = CameraModel(s, s, focal, focal, half, half)
    frame = Frame(view.index, view.index * 1_000_000_000, view.image)
    return frame, Telemetry(frame.t_ns, 0.0, 0.0, 0.0, focal * gsd_m, float("nan"))


def run_view(loc: Localizer, view: SyntheticView, gsd_m: float, set_name: str
             ) -> tuple[ViewResult, tuple[float, float] | None]:
    """Localise one view; (result, placed pixel of `a` or None)."""
    frame, tel = view_frame(loc, view, gsd_m)
    radius = view.prior_half_px * gsd_m
    prior = Prior(px_to_en(*view.prior_px, gsd_m), radius**2 * np.eye(2), "gnss")
    t0 = time.perf_counter()
    look = loc.look(frame, tel, prior)
    result = loc.locate(look, prior) if isinstance(look, Look) else look
    ms = (time.perf_counter() - t0) * 1e3
    # What the features allow: the fine stage seeded at the true place and rotation (the
    # view is turned clockwise in image b by heading_deg, so by -heading_deg in the coarse
    # stage's counter-clockwise, north-up sense). A view it cannot match there with
    # min_inliers has too little in common with the map, whatever the search does.
    truth = CoarseMatch(*px_to_en(*view.truth_px, gsd_m), -view.heading_deg, 0.0, 0.0)
    at_truth = loc.match_at(look, truth) if isinstance(look, Look) else None
    reachable = at_truth is not None and at_truth.match.inliers >= loc.cfg.match.min_inliers
    if not isinstance(result, Fix):
        return ViewResult(set_name, view.pair_id, view.index, False, float("nan"),
                          result.reason, ms, reachable, result.detail), None
    placed = en_to_px(result.east_m, result.north_m, gsd_m)
    err = float(np.hypot(placed[0] - view.truth_px[0], placed[1] - view.truth_px[1]))
    sigma = float(np.sqrt(np.linalg.eigvalsh(result.cov_en_m2).max())) / gsd_m
    return ViewResult(set_name, view.pair_id, view.index, True, err, "", ms, reachable,
                      sigma_px=sigma), placed


def _crop(image: np.ndarray, cx: float, cy: float, size: int) -> np.ndarray:
    """[size, size, 3] crop centred on (cx, cy), black outside the image."""
    m = np.float32([[1, 0, size / 2 - cx], [0, 1, size / 2 - cy]])
    return cv2.warpAffine(image, m, (size, size), borderValue=(0, 0, 0))


def _sheet_row(view: SyntheticView, image_a: np.ndarray, placed: tuple[float, float] | None,
               res: ViewResult) -> np.ndarray:
    s = view.image.shape[0]
    half = s // 2
    win = _crop(image_a, *view.prior_px, 2 * s)  # the prior window
    tx, ty = view.truth_px[0] - view.prior_px[0] + s, view.truth_px[1] - view.prior_px[1] + s
    cv2.rectangle(win, (int(tx - half), int(ty - half)), (int(tx + half), int(ty + half)),
                  (0, 255, 0), 3)
    win = cv2.resize(win, (s, s), interpolation=cv2.INTER_AREA)
    if placed is None:
        where = np.full((s, s, 3), 64, np.uint8)
        text = f"rejected: {res.reason}"
    else:
        where = _crop(image_a, *placed, s)
        text = f"placed {res.err_px:.0f} px off"
    if not res.reachable:
        text += ", unreachable"
    row = np.concatenate([view.image, win, where], axis=1)
    cv2.putText(row, f"{res.pair_id}#{res.index} {text}", (6, 22), cv2.FONT_HERSHEY_SIMPLEX,
                0.6, (0, 255, 255), 2, cv2.LINE_AA)
    return row


def _summary(results: list[ViewResult], gsd_m: float | None) -> dict:
    n = len(results)
    acc = [r for r in results if r.accepted]
    placed = [r for r in acc if r.err_px <= PLACED_PX]
    wrong = [r for r in acc if r.err_px > WRONG_PX]
    over = [r for r in acc if r.overconfident]
    reach = [r for r in results if r.reachable]
    errs = np.array([r.err_px for r in placed])
    ms = np.array([r.ms for r in results])
    reasons: dict[str, int] = {}
    for r in results:
        if not r.accepted:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return {
        "views": n, "placed": len(placed), "accepted": len(acc), "wrong": len(wrong),
        "placed_pct": round(100 * len(placed) / n, 1) if n else None,
        "accepted_pct": round(100 * len(acc) / n, 1) if n else None,
        "wrong_among_accepted_pct": round(100 * len(wrong) / len(acc), 2) if acc else None,
        "overconfident": len(over),
        "overconfident_among_accepted_pct": (round(100 * len(over) / len(acc), 2)
                                             if acc else None),
        "median_err_px": round(float(np.median(errs)), 2) if len(errs) else None,
        "median_err_m": (round(float(np.median(errs)) * gsd_m, 2)
                         if len(errs) and gsd_m else None),
        "reachable_pct": round(100 * len(reach) / n, 1) if n else None,
        "placed_of_reachable_pct": (round(100 * sum(r.accepted and r.err_px <= PLACED_PX
                                                    for r in reach) / len(reach), 1)
                                    if reach else None),
        "view_ms_median": round(float(np.median(ms)), 1) if n else None,
        "view_ms_p95": round(float(np.percentile(ms, 95)), 1) if n else None,
        "rejections": reasons,
    }


def run_method(method: str, sets: list[PairSet], views: int, seed: int, work: Path,
               sheets: Path, cfg: Config) -> tuple[dict, list[ViewResult]]:
    per_set, all_results = {}, []
    encoder = make_encoder(method, cfg.encoder)
    for pset in sets:
        results: list[ViewResult] = []
        rows: list[np.ndarray] = []
        for pi, pair in enumerate(pset.pairs):
            image_a, image_b = read_pair(pair, pset.rgb_bands)
            pack = MapPack.open(pack_for(pair, pset, image_a, method, encoder, work),
                                verify=False)
            # the localiser the flight would run (views come rectified: no camera needed)
            loc = build_chain(cfg, pack, CameraModel(1, 1, 1, 1, 0, 0)).navigator.localizer
            rng = np.random.default_rng([seed, pi, sum(map(ord, pset.name))])
            for view in make_views(pair, image_b, views, rng):
                res, placed = run_view(loc, view, pset.gsd_m, pset.name)
                results.append(res)
                if (not res.accepted or res.err_px > PLACED_PX) and len(rows) < SHEET_ROWS:
                    rows.append(_sheet_row(view, image_a, placed, res))
        per_set[pset.name] = {**_summary(results, pset.gsd_m), "pairs": len(pset.pairs),
                              "gsd_m": pset.gsd_m, "gsd_assumed": pset.gsd_assumed,
                              "registered": pset.registered, "licence": pset.licence}
        if rows:
            width = max(r.shape[1] for r in rows)
            rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
            sheet = sheets / f"{method}_{pset.name}.png"
            sheet.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(sheet), np.concatenate(rows, axis=0))
            per_set[pset.name]["failure_sheet"] = str(sheet)
        print(f"  {method} {pset.name}: {json.dumps(_short(per_set[pset.name]))}", flush=True)
        all_results += results
    reg = {s.name for s in sets if s.registered}
    overall = _summary([r for r in all_results if r.set_name in reg], None)
    unreg = _summary([r for r in all_results if r.set_name not in reg], None)
    return {"overall": overall, "unregistered": unreg if len(reg) < len(sets) else None,
            "sets": per_set}, all_results


def _short(d: dict) -> dict:
    keys = ("views", "placed_pct", "accepted_pct", "wrong_among_accepted_pct",
            "reachable_pct", "median_err_px", "view_ms_median")
    return {k: d[k] for k in keys}


def bench_crossdate(pair_dirs: list[Path], out: Path, views: int = 10, seed: int = 0,
                    methods: list[str] | None = None, work: Path | None = None,
                    trained_model: Path | None = None, extra: dict | None = None) -> dict:
    """Run the benchmark and write `out` (JSON) and the failure sheets beside it.
    `trained_model`: the weights method xfeat-xd runs (None: the shipped ones); `extra`:
    keys a caller adds to the report (what it varied)."""
    methods, sets, problems, cfg = read_sets(pair_dirs, views, methods, trained_model)
    out = Path(out)
    work = Path(work) if work is not None else out.parent / "crossdate-work"
    sheets = out.parent / f"{out.stem}_failures"
    cfg = replace(cfg, match=replace(cfg.match, attitude_sigma_deg=ATTITUDE_SIGMA_DEG))
    report = {
        "benchmark": "crossdate", "default_method": default_method(), "views_per_pair": views,
        "seed": seed, "placed_px": PLACED_PX, "wrong_px": WRONG_PX,
        "machine": machine(), "skipped_pairs": problems, **(extra or {}), "methods": {},
    }
    t0 = time.perf_counter()
    for m in methods:
        report["methods"][m], results = run_method(m, sets, views, seed, work, sheets, cfg)
        report["methods"][m]["per_view"] = [r.record() for r in results]
    report["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report


def read_sets(pair_dirs: list[Path], views: int, methods: list[str] | None,
              trained_model: Path | None = None
              ) -> tuple[list[str], list[PairSet], list[str], Config]:
    """(methods, default filled in; the pair sets; one line per pair left out, each also
    printed to stderr; the configuration the benchmark runs: one thread, method xfeat-xd
    with `trained_model` when given), after checking the arguments common to the pair-set
    benchmarks."""
    if views < 1:
        raise SkyfixError(f"--views must be at least 1, got {views}")
    methods = methods or [default_method()]
    for m in methods:
        if m not in ENCODER_NAMES:
            raise SkyfixError(f"unknown method {m!r} (choose from {', '.join(ENCODER_NAMES)})")
    if trained_model is not None and "xfeat-xd" not in methods:
        raise SkyfixError("--trained-model is for method xfeat-xd, which is not asked for")
    cv2.setNumThreads(1)
    base = Config()
    cfg = replace(base, encoder=replace(base.encoder, threads=1,
                                        trained_model=trained_model_option(trained_model)))
    sets, problems = [], []
    for d in pair_dirs:
        pset, bad = read_pair_set(d)
        sets.append(pset)
        problems += bad
    for line in problems:
        print(f"skyfix: skipped pair {line}", file=sys.stderr, flush=True)
    return methods, sets, problems, cfg


def machine() -> dict:
    """What the benchmark ran on, with the load at its start (add loadavg_1m_end)."""
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "loadavg_1m_start": os.getloadavg()[0]}


def default_method() -> str:
    """The encoder `maps build` uses unless told otherwise."""
    from skyfix.maps.build import DEFAULT_ENCODER_NAME

    return DEFAULT_ENCODER_NAME
