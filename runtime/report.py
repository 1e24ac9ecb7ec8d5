"""Scoring and outputs of a replay: report.json, trajectory.csv/.geojson, plot.png.

Fix errors are measured at each frame's capture time; estimate errors over the
stream actually sent to the autopilot (only messages that claimed a 3D fix count).
A fix is an integrity violation when its error exceeds 3 times its reported
horizontal 1-sigma (root of the larger covariance eigenvalue).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from rasterio.warp import transform as crs_transform  # noqa: E402

from skyfix.maps.pack import MapPack  # noqa: E402
from skyfix.runtime.geo import LocalFrame  # noqa: E402
from skyfix.runtime.pipeline import FrameResult  # noqa: E402
from skyfix.runtime.sources import Truth  # noqa: E402
from skyfix.runtime.types import Estimate, Fix  # noqa: E402

GROSS_ERROR_M = 30.0


@dataclass(frozen=True)
class SentEstimate:
    t_ns: int
    estimate: Estimate
    fix_type: int


@dataclass(frozen=True)
class Report:
    frames: int
    fixes: int
    availability: float
    fix_cep50_m: float | None
    fix_cep95_m: float | None
    est_cep50_m: float | None
    est_cep95_m: float | None
    max_err_m: float | None
    gross_errors: int
    integrity_violations: int
    frame_latency_p50_ms: float
    frame_latency_p95_ms: float
    rejections: dict[str, int]


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def _sigma(cov: np.ndarray) -> float:
    return float(np.sqrt(np.linalg.eigvalsh(cov).max()))


def write_outputs(out: Path, pack: MapPack, frame: LocalFrame, truth: Truth,
                  results: list[FrameResult], sent: list[SentEstimate],
                  rejections: dict[str, int]) -> tuple[Report, tuple[Path, ...]]:
    truth = _truth_in(truth, pack)
    t = np.array([r.t_ns for r in results], np.int64)
    ref = truth.at(t)
    fixes = [(i, r.result) for i, r in enumerate(results) if isinstance(r.result, Fix)]
    fix_en = np.array([[f.east_m, f.north_m] for _, f in fixes]).reshape(-1, 2)
    fix_err = np.linalg.norm(fix_en - ref[[i for i, _ in fixes]], axis=1)
    fix_sig = np.array([_sigma(f.cov_en_m2) for _, f in fixes])

    claimed = [s for s in sent if s.fix_type >= 3]
    est_t = np.array([s.t_ns for s in claimed], np.int64)
    est_en = np.array([frame.ned_to_map(s.estimate.north_m, s.estimate.east_m)
                       for s in claimed]).reshape(-1, 2)
    est_err = np.linalg.norm(est_en - truth.at(est_t), axis=1) if len(claimed) else np.zeros(0)
    lat = np.array([r.latency_ms for r in results if r.latency_ms > 0])

    report = Report(
        frames=len(results), fixes=len(fixes),
        availability=round(len(fixes) / len(results), 4),
        fix_cep50_m=_pct(fix_err, 50), fix_cep95_m=_pct(fix_err, 95),
        est_cep50_m=_pct(est_err, 50), est_cep95_m=_pct(est_err, 95),
        max_err_m=round(float(fix_err.max()), 3) if len(fix_err) else None,
        gross_errors=int((fix_err > GROSS_ERROR_M).sum()),
        integrity_violations=int((fix_err > 3 * fix_sig).sum()),
        frame_latency_p50_ms=_pct(lat, 50) or 0.0, frame_latency_p95_ms=_pct(lat, 95) or 0.0,
        rejections=dict(sorted(rejections.items())),
    )
    paths = (out / "report.json", out / "trajectory.csv", out / "trajectory.geojson",
             out / "gps_input.tlog", out / "plot.png")
    paths[0].write_text(json.dumps(asdict(report), indent=2) + "\n")
    _write_csv(paths[1], results, ref, sent, frame)
    _write_geojson(paths[2], pack, ref, fix_en, fix_err, fix_sig, est_en)
    _plot(paths[4], pack, t, ref, fixes, fix_err, fix_sig, est_t, est_en, est_err)
    return report, paths


def _truth_in(truth: Truth, pack: MapPack) -> Truth:
    """The reference track in the pack's CRS."""
    if truth.crs == pack.crs:
        return truth
    x, y = crs_transform(truth.crs, pack.crs, truth.en[:, 0].tolist(), truth.en[:, 1].tolist())
    return Truth(truth.t_ns, np.stack([x, y], -1), pack.crs)


def _write_csv(path: Path, results: list[FrameResult], ref: np.ndarray,
               sent: list[SentEstimate], frame: LocalFrame) -> None:
    sent_t = np.array([s.t_ns for s in sent], np.int64)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_ns", "truth_e", "truth_n", "status", "fix_e", "fix_n", "fix_sigma_m",
                    "fix_err_m", "est_e", "est_n", "est_sigma_m", "est_err_m", "prior",
                    "latency_ms", "detail"])
        for r, (te, tn) in zip(results, ref, strict=True):
            row: list[object] = [r.t_ns, f"{te:.3f}", f"{tn:.3f}"]
            if isinstance(r.result, Fix):
                fx = r.result
                err = np.hypot(fx.east_m - te, fx.north_m - tn)
                row += ["fix", f"{fx.east_m:.3f}", f"{fx.north_m:.3f}",
                        f"{_sigma(fx.cov_en_m2):.3f}", f"{err:.3f}"]
            else:
                row += [r.result.reason, "", "", "", ""]
            k = int(np.searchsorted(sent_t, r.t_ns, side="right")) - 1
            if k >= 0:
                est = sent[k].estimate
                e, n = frame.ned_to_map(est.north_m, est.east_m)
                row += [f"{e:.3f}", f"{n:.3f}", f"{est.horiz_sigma_m:.3f}",
                        f"{np.hypot(e - te, n - tn):.3f}"]
            else:
                row += ["", "", "", ""]
            detail = "" if isinstance(r.result, Fix) else r.result.detail
            row += [r.prior_source, f"{r.latency_ms:.1f}", detail]
            w.writerow(row)


def _lonlat(pack: MapPack, en: np.ndarray) -> list[list[float]]:
    if not len(en):
        return []
    lon, lat = crs_transform(pack.crs, "EPSG:4326", en[:, 0].tolist(), en[:, 1].tolist())
    return [[round(a, 8), round(b, 8)] for a, b in zip(lon, lat, strict=True)]


def _write_geojson(path: Path, pack: MapPack, ref: np.ndarray, fix_en: np.ndarray,
                   fix_err: np.ndarray, fix_sig: np.ndarray, est_en: np.ndarray) -> None:
    feats = [
        {"type": "Feature", "properties": {"name": "reference"},
         "geometry": {"type": "LineString", "coordinates": _lonlat(pack, ref)}},
        {"type": "Feature", "properties": {"name": "estimate"},
         "geometry": {"type": "LineString", "coordinates": _lonlat(pack, est_en)}},
    ]
    for xy, err, sig in zip(_lonlat(pack, fix_en), fix_err, fix_sig, strict=True):
        feats.append({"type": "Feature",
                      "properties": {"name": "fix", "error_m": round(float(err), 3),
                                     "sigma_m": round(float(sig), 3)},
                      "geometry": {"type": "Point", "coordinates": xy}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}) + "\n")


def _plot(path: Path, pack: MapPack, t: np.ndarray, ref: np.ndarray, fixes: list,
          fix_err: np.ndarray, fix_sig: np.ndarray, est_t: np.ndarray, est_en: np.ndarray,
          est_err: np.ndarray) -> None:
    fig, (ax_map, ax_err) = plt.subplots(1, 2, figsize=(14, 6.5),
                                         gridspec_kw={"width_ratios": [1, 1.2]})
    with rasterio.open(pack.path / "ortho.tif") as src:
        scale = max(1, int(np.ceil(max(src.width, src.height) / 1200)))
        img = src.read(indexes=[1, 2, 3] if src.count >= 3 else [1, 1, 1],
                       out_shape=(3, src.height // scale, src.width // scale))
        b = src.bounds
    ax_map.imshow(np.moveaxis(img, 0, -1), extent=(b.left, b.right, b.bottom, b.top))
    ax_map.plot(ref[:, 0], ref[:, 1], "w-", lw=2, label="reference")
    if len(est_en):
        ax_map.plot(est_en[:, 0], est_en[:, 1], "c-", lw=1, label="estimate (sent)")
    if fixes:
        fe = np.array([[f.east_m, f.north_m] for _, f in fixes])
        ax_map.scatter(fe[:, 0], fe[:, 1], s=10, c="lime", label="fixes", zorder=3)
    ax_map.set_title("track over the map")
    ax_map.set_xlabel("easting (m)")
    ax_map.set_ylabel("northing (m)")
    ax_map.legend(loc="lower right", fontsize=8)

    t0 = t[0]
    if len(est_t):
        ax_err.plot((est_t - t0) * 1e-9, est_err, "c-", lw=1, label="estimate error")
    if fixes:
        ft = (np.array([t[i] for i, _ in fixes]) - t0) * 1e-9
        ax_err.plot(ft, fix_err, "g.", label="fix error")
        ax_err.plot(ft, 3 * fix_sig, "k_", ms=6, label="fix 3-sigma")
    ax_err.axhline(GROSS_ERROR_M, color="r", ls="--", lw=0.8, label=f"{GROSS_ERROR_M:.0f} m")
    ax_err.set_xlabel("time since first frame (s)")
    ax_err.set_ylabel("horizontal error (m)")
    ax_err.set_yscale("symlog", linthresh=1.0)
    ax_err.set_title("error over time")
    ax_err.legend(fontsize=8)
    ax_err.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
