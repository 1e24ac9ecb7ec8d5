"""Replay many recorded flights (a fleet) against one map pack, on Ray or in this process.

    flights --one task per flight: skyfix.runtime.apps.replay.replay (its own report + outputs
    in OUT/<flight name>/)--> FlightRun --pool the per-frame errors--> fleet summary:
    CEP per flight, per altitude band (median AGL), per terrain type
    --> OUT/fleet_summary.json, OUT/fleet_summary.csv

Errors are pooled from each flight's trajectory.csv (one row per frame): fix errors at
capture time, and the error of the estimate last sent before each frame. Terrain type is
the user's label (a CSV `flight,terrain`); without one, the relief under the flight's
reference track in the pack's DEM (p95 - p5 of the terrain height: flat < FLAT_RELIEF_M,
rolling < ROLLING_RELIEF_M, else hilly); "unknown" without a DEM or a reference.
A flight that fails (bad input) is listed with its error and does not stop the fleet.
Ray (the `scale` extra) is imported only when asked for.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from skyfix.runtime.apps.report import Report, trajectory_columns
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError

ALTITUDE_BANDS_M = (0.0, 100.0, 200.0, 400.0, 800.0)  # lower edges of the AGL bands
FLAT_RELIEF_M = 10.0
ROLLING_RELIEF_M = 50.0
SUMMARY_JSON = "fleet_summary.json"
SUMMARY_CSV = "fleet_summary.csv"


@dataclass(frozen=True)
class FlightRun:
    """One replayed flight. `fix_err_m` / `est_err_m`: per-frame errors (metres) where
    scored; `report` is None (and `error` says why) when the replay failed."""

    name: str
    flight: str
    out: str
    agl_m: float
    altitude_band: str
    terrain: str
    report: Report | None
    fix_err_m: tuple[float, ...] = ()
    est_err_m: tuple[float, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class GroupScore:
    """Scores pooled over the flights of one group (`kind`: flight, altitude or terrain)."""

    kind: str
    key: str
    flights: int
    frames: int
    fixes: int
    availability: float | None
    fix_cep50_m: float | None
    fix_cep95_m: float | None
    est_cep50_m: float | None
    est_cep95_m: float | None


@dataclass(frozen=True)
class FleetSummary:
    flights: tuple[FlightRun, ...]
    groups: tuple[GroupScore, ...]
    files: tuple[Path, ...]


def altitude_band(agl_m: float) -> str:
    """'100-200 m' style label of the band holding `agl_m` ('unknown' when not finite)."""
    if not np.isfinite(agl_m):
        return "unknown"
    i = max(0, int(np.searchsorted(ALTITUDE_BANDS_M, agl_m, side="right")) - 1)
    hi = ALTITUDE_BANDS_M[i + 1] if i + 1 < len(ALTITUDE_BANDS_M) else None
    return f"{ALTITUDE_BANDS_M[i]:.0f}-{hi:.0f} m" if hi else f">={ALTITUDE_BANDS_M[i]:.0f} m"


def read_terrain_labels(path: Path) -> dict[str, str]:
    """{flight folder name: terrain label} from a CSV with columns flight,terrain."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise SkyfixError(f"{path}: cannot read terrain labels ({e})") from None
    if rows and not {"flight", "terrain"} <= set(rows[0]):
        raise SkyfixError(f"{path}: terrain labels need the columns flight,terrain")
    return {Path(r["flight"]).name: r["terrain"].strip() for r in rows}


def _relief_class(pack_path: Path, truth_en: np.ndarray | None) -> str:
    from skyfix.maps.shards import open_map_pack

    if truth_en is None or not len(truth_en):
        return "unknown"
    pack = open_map_pack(pack_path, verify=False)
    h = pack.terrain_m(truth_en[:, 0], truth_en[:, 1])
    h = h[np.isfinite(h)]
    if not len(h):
        return "unknown"
    relief = float(np.percentile(h, 95) - np.percentile(h, 5))
    return ("flat" if relief < FLAT_RELIEF_M else "rolling" if relief < ROLLING_RELIEF_M
            else "hilly")


def replay_one(flight: Path, pack: Path, out: Path, cfg: Config, gnss_off_at_s: float,
               terrain: str | None) -> FlightRun:
    """Replay one flight into `out` and describe it for the fleet summary."""
    from skyfix.runtime.apps.replay import replay
    from skyfix.runtime.io.clock import AutopilotClock
    from skyfix.runtime.io.sources import open_inputs

    name = out.name
    try:
        inputs = open_inputs(Path(flight), clock=AutopilotClock.from_config(cfg))
        t = inputs.frames.frame_times_ns
        agl = [s.agl_m for s in (inputs.telemetry.at(int(x)) for x in t) if s is not None]
        agl_m = float(np.median(agl)) if agl else float("nan")
        result = replay(inputs, pack, out, cfg, gnss_off_at_s, progress=False)
        if terrain is None:
            truth = inputs.truth
            terrain = _relief_class(pack, None if truth is None else truth.en)
    except SkyfixError as e:
        return FlightRun(name, str(flight), str(out), float("nan"), "unknown",
                         terrain or "unknown", None, error=str(e))
    csv_path = out / "trajectory.csv"
    return FlightRun(name, str(flight), str(out), agl_m, altitude_band(agl_m), terrain,
                     result.report, tuple(trajectory_columns(csv_path, "fix_err_m")[:, 0]),
                     tuple(trajectory_columns(csv_path, "est_err_m")[:, 0]))


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def _group(kind: str, key: str, runs: list[FlightRun]) -> GroupScore:
    ok = [r for r in runs if r.report is not None]
    frames = sum(r.report.frames for r in ok)  # type: ignore[union-attr]
    fixes = sum(r.report.fixes for r in ok)  # type: ignore[union-attr]
    fix = [e for r in ok for e in r.fix_err_m]
    est = [e for r in ok for e in r.est_err_m]
    return GroupScore(kind, key, len(runs), frames, fixes,
                      round(fixes / frames, 4) if frames else None,
                      _pct(fix, 50), _pct(fix, 95), _pct(est, 50), _pct(est, 95))


def summarise(runs: Sequence[FlightRun]) -> tuple[GroupScore, ...]:
    """Scores per flight, per altitude band and per terrain type (groups sorted by key)."""
    groups = [_group("flight", r.name, [r]) for r in runs]
    for kind, attr in (("altitude", "altitude_band"), ("terrain", "terrain")):
        for key in sorted({getattr(r, attr) for r in runs}):
            groups.append(_group(kind, key, [r for r in runs if getattr(r, attr) == key]))
    return tuple(groups)


def _out_names(flights: Sequence[Path]) -> list[str]:
    """Distinct output folder names: the flight folder's name, suffixed when repeated."""
    names: list[str] = []
    for f in flights:
        base = Path(f).resolve().name or "flight"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def fleet_replay(flights: Sequence[Path], pack: Path, out: Path, cfg: Config,
                 gnss_off_at_s: float = 0.0, ray_address: str | None = None,
                 use_ray: bool = False, workers: int | None = None,
                 terrain_labels: dict[str, str] | None = None,
                 progress: bool = True) -> FleetSummary:
    """Replay every flight folder in `flights` into OUT/<name>/ and write the summary.

    `use_ray`: one Ray task per flight on the cluster at `ray_address` (None: a local
    cluster of `workers` CPUs); otherwise the flights run one after another here.
    """
    if not flights:
        raise SkyfixError("no flights to replay")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = terrain_labels or {}
    jobs = [(Path(f), Path(pack), out / n, cfg, gnss_off_at_s, labels.get(Path(f).name))
            for f, n in zip(flights, _out_names(flights), strict=True)]
    bar = tqdm(total=len(jobs), desc="fleet replay", unit="flight", disable=not progress)
    if use_ray:
        from skyfix.maps.distributed import ray_session

        with ray_session(ray_address, workers) as ray:
            task = ray.remote(num_cpus=1, max_retries=1)(replay_one)
            refs = [task.remote(*j) for j in jobs]
            pending = list(refs)
            while pending:
                _, pending = ray.wait(pending, num_returns=1)
                bar.update(1)
            runs = ray.get(refs)
    else:
        runs = []
        for j in jobs:
            runs.append(replay_one(*j))
            bar.update(1)
    bar.close()
    groups = summarise(runs)
    files = (out / SUMMARY_JSON, out / SUMMARY_CSV)
    body = {"flights": [{**{k: v for k, v in asdict(r).items()
                            if k not in ("fix_err_m", "est_err_m")},
                         "agl_m": round(r.agl_m, 1) if np.isfinite(r.agl_m) else None}
                        for r in runs],
            "groups": [asdict(g) for g in groups]}
    files[0].write_text(json.dumps(body, indent=2) + "\n")
    with open(files[1], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([k for k in GroupScore.__dataclass_fields__])
        for g in groups:
            w.writerow(["" if v is None else v for v in asdict(g).values()])
    return FleetSummary(tuple(runs), groups, files)
