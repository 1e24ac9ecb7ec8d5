"""Scoring and outputs of a replay: report.json, trajectory.csv/.geojson, estimate.kml,
estimate.gpx, plot.png (track over the map + error over time).

The reference is a simulated flight's truth or the recorded log's own GNSS (which the
runtime did not use after `--gnss-off-at`); without one the estimate outputs are still
written and the report says the flight was not scored. Fix errors are measured at each
frame's capture time; estimate errors over the stream actually sent to the autopilot
(only messages that claimed a 3D fix count), both only where the reference covers the
time. Errors are also split along and across the reference track's direction of travel
(cross-track positive to the right). A fix is an integrity violation when its error
exceeds 3 times its reported horizontal 1-sigma (root of the larger covariance
eigenvalue; with the map's stated georeferencing sigma, since a fix is a position in the
map) combined (root-sum-square) with the reference's own 1-sigma: zero for a
simulation's truth, the receiver's reported accuracy for a log's GNSS. A sent message
is a wrong claim when it claims a 3D fix and its error exceeds 3 times its own 1-sigma
(combined the same way): what the autopilot was told with too small an error bar.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import gpxpy.gpx
import numpy as np
import rasterio
import simplekml
from matplotlib.figure import Figure
from rasterio.warp import transform as crs_transform

from skyfix.maps.pixels import ORTHO_FILE
from skyfix.maps.tilemap import TileMap
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Estimate, Fix, sigma_max
from skyfix.runtime.io.sources import Truth
from skyfix.runtime.nav.navigator import FrameResult

GROSS_ERROR_M = 30.0
_MIN_TRACK_SPEED_MPS = 0.5  # slower than this, along/cross-track is undefined


@dataclass(frozen=True)
class SentEstimate:
    t_ns: int
    estimate: Estimate
    fix_type: int


@dataclass(frozen=True)
class Report:
    """Scores are None when there is nothing to score (no reference, no fixes)."""

    frames: int
    fixes: int
    availability: float
    reference: str  # "truth.csv", "log GNSS", "EXIF GPS" or "none"
    scored: bool
    fix_cep50_m: float | None
    fix_cep95_m: float | None
    est_cep50_m: float | None
    est_cep95_m: float | None
    max_err_m: float | None
    fix_along_track_rms_m: float | None
    fix_cross_track_rms_m: float | None
    est_along_track_rms_m: float | None
    est_cross_track_rms_m: float | None
    gross_errors: int
    integrity_violations: int
    claims_beyond_3sigma: int
    frame_latency_p50_ms: float
    frame_latency_p95_ms: float
    rejections: dict[str, int]


@dataclass(frozen=True)
class _Scored:
    """Errors against the reference. en/t: [K, 2]/[K]; err, along, cross: [K] metres
    (NaN along/cross where the reference stands still)."""

    t_ns: np.ndarray
    en: np.ndarray
    err: np.ndarray
    along: np.ndarray
    cross: np.ndarray


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def _rms(values: np.ndarray) -> float | None:
    v = values[np.isfinite(values)]
    return round(float(np.sqrt(np.mean(v**2))), 3) if len(v) else None


def _score(truth: Truth | None, t_ns: np.ndarray, en: np.ndarray) -> _Scored:
    """Errors of positions `en` [K, 2] at `t_ns` [K], where the reference covers them."""
    if truth is None or not len(t_ns):
        z = np.zeros(0)
        return _Scored(t_ns[:0], en[:0], z, z, z)
    keep = truth.covers(t_ns)
    t, en = t_ns[keep], en[keep]
    d = en - truth.at(t)
    half = 500_000_000
    v = (truth.at(t + half) - truth.at(t - half))  # metres per second over 1 s
    speed = np.linalg.norm(v, axis=1)
    u = v / np.maximum(speed, 1e-9)[:, None]
    moving = speed >= _MIN_TRACK_SPEED_MPS
    along = np.where(moving, (d * u).sum(1), np.nan)
    cross = np.where(moving, d[:, 0] * u[:, 1] - d[:, 1] * u[:, 0], np.nan)  # + = right
    return _Scored(t, en, np.linalg.norm(d, axis=1), along, cross)


def write_outputs(out: Path, pack: TileMap, frame: LocalFrame, truth: Truth | None,
                  results: list[FrameResult], sent: list[SentEstimate],
                  rejections: dict[str, int], reference: str = "truth.csv"
                  ) -> tuple[Report, tuple[Path, ...]]:
    truth = _truth_in(truth, pack) if truth is not None else None
    if truth is None:
        reference = "none"
    t = np.array([r.t_ns for r in results], np.int64)
    fixes = [(i, r.result) for i, r in enumerate(results) if isinstance(r.result, Fix)]
    fix_en = np.array([[f.east_m, f.north_m] for _, f in fixes]).reshape(-1, 2)
    fix_t = np.array([f.t_ns for _, f in fixes], np.int64)
    # a fix is a position in the map: against the world it also carries the map's own error
    fix_sig_all = np.hypot([sigma_max(f.cov_en_m2) for _, f in fixes],
                           pack.region.georef_sigma_m)
    fs = _score(truth, fix_t, fix_en)
    # A GNSS reference errs too: a fix is only called wrong beyond 3 sigma of both.
    covered = truth.covers(fix_t) if truth is not None else np.zeros(len(fix_t), bool)
    fix_sig = (np.hypot(fix_sig_all[covered], truth.sigma_at(fix_t[covered]))
               if truth is not None else np.zeros(0))

    claimed = [s for s in sent if s.fix_type >= 3]
    est_t = np.array([s.t_ns for s in claimed], np.int64)
    est_en = np.array([frame.ned_to_map(s.estimate.north_m, s.estimate.east_m)
                       for s in claimed]).reshape(-1, 2)
    es = _score(truth, est_t, est_en)
    est_sig_all = np.array([s.estimate.horiz_sigma_m for s in claimed])
    est_sig = (np.hypot(est_sig_all[truth.covers(est_t)], truth.sigma_at(es.t_ns))
               if truth is not None else np.zeros(0))
    lat = np.array([r.latency_ms for r in results if r.latency_ms > 0])

    report = Report(
        frames=len(results), fixes=len(fixes),
        availability=round(len(fixes) / len(results), 4),
        reference=reference, scored=truth is not None and bool(len(fs.err) or len(es.err)),
        fix_cep50_m=_pct(fs.err, 50), fix_cep95_m=_pct(fs.err, 95),
        est_cep50_m=_pct(es.err, 50), est_cep95_m=_pct(es.err, 95),
        max_err_m=round(float(fs.err.max()), 3) if len(fs.err) else None,
        fix_along_track_rms_m=_rms(fs.along), fix_cross_track_rms_m=_rms(fs.cross),
        est_along_track_rms_m=_rms(es.along), est_cross_track_rms_m=_rms(es.cross),
        gross_errors=int((fs.err > GROSS_ERROR_M).sum()),
        integrity_violations=int((fs.err > 3 * fix_sig).sum()),
        claims_beyond_3sigma=int((es.err > 3 * est_sig).sum()),
        frame_latency_p50_ms=_pct(lat, 50) or 0.0, frame_latency_p95_ms=_pct(lat, 95) or 0.0,
        rejections=dict(sorted(rejections.items())),
    )
    ref = truth.at(t) if truth is not None else np.full((len(t), 2), np.nan)
    if truth is not None:
        ref[~truth.covers(t)] = np.nan
    paths = (out / "report.json", out / "trajectory.csv", out / "trajectory.geojson",
             out / "estimate.kml", out / "estimate.gpx", out / "gps_input.tlog",
             out / "plot.png")
    paths[0].write_text(json.dumps(asdict(report), indent=2) + "\n")
    _write_csv(paths[1], results, ref, sent, frame)
    _write_geojson(paths[2], pack, ref, fix_en, fix_sig_all, est_en, fs)
    alt = np.array([s.estimate.alt_amsl_m for s in claimed])
    _write_kml(paths[3], _lonlat(pack, est_en), alt, _lonlat(pack, _finite_rows(ref)))
    _write_gpx(paths[4], _lonlat(pack, est_en), alt, est_t)
    _plot(paths[6], pack, t, ref, fix_t, fix_en, fs, est_en, es, reference)
    return report, paths


def _finite_rows(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a).all(1)]


def _truth_in(truth: Truth, pack: TileMap) -> Truth:
    """The reference track in the pack's CRS."""
    if truth.crs == pack.crs:
        return truth
    x, y = crs_transform(truth.crs, pack.crs, truth.en[:, 0].tolist(), truth.en[:, 1].tolist())
    return Truth(truth.t_ns, np.stack([x, y], -1), pack.crs, truth.sigma_m)


def _fmt(v: float) -> str:
    return f"{v:.3f}" if np.isfinite(v) else ""


def _write_csv(path: Path, results: list[FrameResult], ref: np.ndarray,
               sent: list[SentEstimate], frame: LocalFrame) -> None:
    sent_t = np.array([s.t_ns for s in sent], np.int64)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_ns", "truth_e", "truth_n", "status", "fix_e", "fix_n", "fix_sigma_m",
                    "fix_err_m", "est_e", "est_n", "est_sigma_m", "est_err_m", "prior",
                    "latency_ms", "detail"])
        for r, (te, tn) in zip(results, ref, strict=True):
            row: list[object] = [r.t_ns, _fmt(te), _fmt(tn)]
            if isinstance(r.result, Fix):
                fx = r.result
                row += ["fix", f"{fx.east_m:.3f}", f"{fx.north_m:.3f}",
                        f"{sigma_max(fx.cov_en_m2):.3f}", _fmt(np.hypot(fx.east_m - te,
                                                                     fx.north_m - tn))]
            else:
                row += [r.result.reason, "", "", "", ""]
            k = int(np.searchsorted(sent_t, r.t_ns, side="right")) - 1
            if k >= 0 and sent[k].estimate.valid:
                est = sent[k].estimate
                e, n = frame.ned_to_map(est.north_m, est.east_m)
                row += [f"{e:.3f}", f"{n:.3f}", f"{est.horiz_sigma_m:.3f}",
                        _fmt(np.hypot(e - te, n - tn))]
            else:
                row += ["", "", "", ""]
            detail = "" if isinstance(r.result, Fix) else r.result.detail
            row += [r.prior_source, f"{r.latency_ms:.1f}", detail]
            w.writerow(row)


def trajectory_columns(path: Path, *names: str) -> np.ndarray:
    """[K, len(names)] values of the columns `names` of a replay's trajectory.csv, from the
    rows where every one is filled (a fix's columns are empty on frames without one)."""
    with open(path, newline="") as f:
        rows = [[float(r[n]) for n in names] for r in csv.DictReader(f)
                if all(r[n] for n in names)]
    return np.array(rows, np.float64).reshape(-1, len(names))


def _lonlat(pack: TileMap, en: np.ndarray) -> list[list[float]]:
    if not len(en):
        return []
    lon, lat = crs_transform(pack.crs, "EPSG:4326", en[:, 0].tolist(), en[:, 1].tolist())
    return [[round(a, 8), round(b, 8)] for a, b in zip(lon, lat, strict=True)]


def _write_geojson(path: Path, pack: TileMap, ref: np.ndarray, fix_en: np.ndarray,
                   fix_sig: np.ndarray, est_en: np.ndarray, fs: _Scored) -> None:
    feats = [
        {"type": "Feature", "properties": {"name": "reference"},
         "geometry": {"type": "LineString", "coordinates": _lonlat(pack, _finite_rows(ref))}},
        {"type": "Feature", "properties": {"name": "estimate"},
         "geometry": {"type": "LineString", "coordinates": _lonlat(pack, est_en)}},
    ]
    err_of = {tuple(e): float(x) for e, x in zip(fs.en, fs.err, strict=True)}
    for en, xy, sig in zip(fix_en, _lonlat(pack, fix_en), fix_sig, strict=True):
        err = err_of.get(tuple(en))
        feats.append({"type": "Feature",
                      "properties": {"name": "fix", "sigma_m": round(float(sig), 3),
                                     "error_m": None if err is None else round(err, 3)},
                      "geometry": {"type": "Point", "coordinates": xy}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}) + "\n")


def _write_kml(path: Path, est: list[list[float]], alt: np.ndarray,
               ref: list[list[float]]) -> None:
    """KML: the estimate sent to the autopilot (absolute altitude) and the reference."""
    kml = simplekml.Kml(name="skyfix replay")
    line = kml.newlinestring(name="skyfix estimate",
                             coords=[(lo, la, float(a)) if np.isfinite(a) else (lo, la)
                                     for (lo, la), a in zip(est, alt, strict=True)])
    line.altitudemode = simplekml.AltitudeMode.absolute
    line.style.linestyle.color, line.style.linestyle.width = "ffffff00", 2
    if ref:
        line = kml.newlinestring(name="reference", coords=[(lo, la) for lo, la in ref])
        line.altitudemode = simplekml.AltitudeMode.clamptoground
        line.style.linestyle.color, line.style.linestyle.width = "ff0000ff", 2
    kml.save(str(path))


def _write_gpx(path: Path, est: list[list[float]], alt: np.ndarray, t_ns: np.ndarray) -> None:
    """GPX 1.1: one track of the estimate sent to the autopilot, with UTC times."""
    gpx = gpxpy.gpx.GPX()
    gpx.creator = "skyfix"
    track = gpxpy.gpx.GPXTrack(name="skyfix estimate")
    segment = gpxpy.gpx.GPXTrackSegment()
    for (lo, la), a, t in zip(est, alt, t_ns, strict=True):
        segment.points.append(gpxpy.gpx.GPXTrackPoint(
            la, lo, elevation=float(a) if np.isfinite(a) else None,
            time=datetime.fromtimestamp(int(t) / 1e9, timezone.utc)))
    track.segments.append(segment)
    gpx.tracks.append(track)
    path.write_text(gpx.to_xml(version="1.1"))


def _plot(path: Path, pack: TileMap, t: np.ndarray, ref: np.ndarray, fix_t: np.ndarray,
          fix_en: np.ndarray, fs: _Scored, est_en: np.ndarray, es: _Scored,
          reference: str) -> None:
    fig = Figure(figsize=(14, 6.5))  # no pyplot: no global backend, nothing kept alive
    ax_map, ax_err = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
    with rasterio.open(pack.path / ORTHO_FILE) as src:
        scale = max(1, int(np.ceil(max(src.width, src.height) / 1200)))
        img = src.read(indexes=[1, 2, 3] if src.count >= 3 else [1, 1, 1],
                       out_shape=(3, src.height // scale, src.width // scale))
        b = src.bounds
    ax_map.imshow(np.moveaxis(img, 0, -1), extent=(b.left, b.right, b.bottom, b.top))
    if np.isfinite(ref).any():
        ax_map.plot(ref[:, 0], ref[:, 1], "w-", lw=2, label=f"reference ({reference})")
    if len(est_en):
        ax_map.plot(est_en[:, 0], est_en[:, 1], "c-", lw=1, label="estimate (sent)")
    if len(fix_en):
        ax_map.scatter(fix_en[:, 0], fix_en[:, 1], s=10, c="lime", label="fixes", zorder=3)
    ax_map.set_xlim(b.left, b.right)
    ax_map.set_ylim(b.bottom, b.top)
    ax_map.set_title("track over the map")
    ax_map.set_xlabel("easting (m)")
    ax_map.set_ylabel("northing (m)")
    ax_map.legend(loc="lower right", fontsize=8)

    t0 = t[0]
    if len(es.err):
        ax_err.plot((es.t_ns - t0) * 1e-9, es.err, "c-", lw=1, label="estimate error")
    if len(fs.err):
        ax_err.plot((fs.t_ns - t0) * 1e-9, fs.err, "g.", label="fix error")
        ax_err.plot((fs.t_ns - t0) * 1e-9, np.abs(fs.cross), "m+", ms=4,
                    label="fix |cross-track|")
    if len(fs.err) or len(es.err):
        ax_err.axhline(GROSS_ERROR_M, color="r", ls="--", lw=0.8,
                       label=f"{GROSS_ERROR_M:.0f} m")
        ax_err.set_yscale("symlog", linthresh=1.0)
        ax_err.legend(fontsize=8)
    else:
        ax_err.text(0.5, 0.5, "not scored: no reference position for these frames",
                    ha="center", va="center", transform=ax_err.transAxes)
    ax_err.set_xlabel("time since first frame (s)")
    ax_err.set_ylabel(f"horizontal error vs {reference} (m)")
    ax_err.set_title("error over time")
    ax_err.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
