"""Teach and repeat, measured on one survey: the map from some flight lines, the photos of
the others replayed against it (GNSS-denied: the log's GNSS only scores) and scored
against the GNSS track. `make bench-survey` and the ZR10 integration test run this.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio

from skyfix.maps.survey import SurveyResult, build_survey_pack, side_folder
from skyfix.maps.survey_lines import parse_line_spec
from skyfix.maps.survey_sfm import reconstruct
from skyfix.runtime.apps.maps_survey import open_survey, select
from skyfix.runtime.apps.replay import replay
from skyfix.runtime.apps.report import Report
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import R_ned_body, mount_rotation
from skyfix.runtime.core.types import Fix
from skyfix.runtime.io.sources import open_inputs
from skyfix.runtime.nav.rectify import ground_footprint

ON_MAP_SHARE = 0.5  # a test photo "over the map": this share of its footprint on the mosaic


@dataclass(frozen=True)
class LeaveLinesOut:
    lines: int  # flight lines found in the survey
    map_lines: tuple[int, ...]
    test_lines: tuple[int, ...]
    map_frames: int
    test_frames: int
    survey: SurveyResult
    report: Report  # the replay of the test lines' photos
    replay_s: float
    clock: str  # where the camera clock offset came from: "all" lines or the "map" lines
    clock_offset_s: float  # photo time + this = GNSS time, as used for map and replay
    clock_s: float  # wall time of the clock calibration on all lines (0 for "map")
    on_map: tuple[float, ...]  # per test photo: share of its ground footprint on the mosaic
    fixed: tuple[bool, ...]  # per test photo: whether its frame gave a fix


@dataclass(frozen=True)
class Clock:
    """The camera clock's offset from the GNSS that a leave-lines-out run starts from."""

    source: str  # "all": measured by SfM of the whole survey; "map": as given
    offset_s: float  # photo time + this = GNSS time
    wall_s: float  # wall time of the measurement (0 for "map")


def calibrate_clock(frames_dir: Path, telemetry: Path, work: Path, time_offset_s: float = 0.0,
                    progress: bool = True) -> Clock:
    """The camera clock's offset measured by SfM of every photo of the survey (lines flown
    both ways), as one calibrates a camera before using it; `time_offset_s` is the first
    guess. The SfM works in `work`."""
    t0 = time.perf_counter()
    track = open_survey(frames_dir, telemetry, time_offset_s=time_offset_s)
    whole = reconstruct(track.frames, Path(work), progress=progress)
    return Clock("all", time_offset_s + whole.georef.time_offset_s, time.perf_counter() - t0)


def leave_lines_out(frames_dir: Path, telemetry: Path, out: Path, map_lines: str = "even",
                    time_offset_s: float = 0.0, gsd_m: float | None = None,
                    cfg: Config | None = None, clock: str | Clock = "all",
                    progress: bool = True) -> LeaveLinesOut:
    """Build the map pack `out`/pack from the flight lines `map_lines` of the survey in
    `frames_dir`, replay the photos of every other line against it into `out`/replay.

    `clock`: "all" measures the camera clock's offset from the GNSS first
    (`calibrate_clock`, in `out`/clock_sfm); a Clock from it is used as it is (one
    calibration for several runs); "map" starts from `time_offset_s` and leaves the rest to
    the map's own SfM. Every other line of a lawn-mower survey is every line flown one way,
    where a clock offset cannot be told from a shift of the map along the lines; the
    replayed lines, flown the other way, then see twice that shift."""
    out = Path(out)
    if clock == "all":
        clock = calibrate_clock(frames_dir, telemetry, out / "clock_sfm", time_offset_s,
                                progress)
    elif clock == "map":
        clock = Clock("map", time_offset_s, 0.0)
    elif not isinstance(clock, Clock):
        raise SkyfixError(f"clock {clock!r}: expected all or map")
    track = open_survey(frames_dir, telemetry, time_offset_s=clock.offset_s)
    keep = parse_line_spec(map_lines, track.lines.count)
    test = tuple(k for k in range(track.lines.count) if k not in keep)
    if not test:
        raise SkyfixError(f"--lines {map_lines!r} leaves no flight line to test on")
    frames = select(track, map_lines, None)
    kwargs = {} if gsd_m is None else {"gsd_m": gsd_m}
    survey = build_survey_pack(frames, out / "pack", force=True, progress=progress, **kwargs)
    test_files = [f for f, k in zip(track.frames.files, track.lines.line, strict=True)
                  if k in test]
    folder = out / "test_frames"  # the test photos alone, as a repeat flight would bring them
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for f in test_files:
        (folder / f.name).symlink_to(f.resolve())
    # the repeat flight's camera is the survey's: its intrinsics, clock offset and mount as
    # the survey measured them
    inputs = open_inputs(frames=folder, telemetry=telemetry,
                         camera=side_folder(out / "pack") / "camera.yaml",
                         time_offset_s=clock.offset_s + survey.georef.time_offset_s)
    cfg = cfg or Config()
    roll, pitch, yaw = survey.georef.mount_rpy_deg
    cfg = replace(cfg, rectify=replace(cfg.rectify, mount_roll_deg=roll, mount_pitch_deg=pitch,
                                       mount_yaw_deg=yaw))
    t0 = time.perf_counter()
    result = replay(inputs, out / "pack", out / "replay", cfg, progress=progress)
    replay_s = time.perf_counter() - t0
    tested = np.isin(track.lines.line, test)
    side = side_folder(out / "pack")
    on_map = _on_map(track.frames.enu_m[tested], track.frames.rpy_rad[tested], inputs.camera,
                     survey.georef.mount_rpy_deg, side)
    fixed = tuple(isinstance(f.result, Fix) for f in result.frames)
    if len(fixed) != len(test_files):
        raise SkyfixError(f"the replay gave {len(fixed)} frames for {len(test_files)} photos")
    return LeaveLinesOut(track.lines.count, keep, test, len(frames.files), len(test_files),
                         survey, result.report, replay_s, clock.source,
                         clock.offset_s + survey.georef.time_offset_s, clock.wall_s,
                         tuple(float(v) for v in on_map), fixed)


def _on_map(enu_m: np.ndarray, rpy_rad: np.ndarray, camera: CameraModel,
            mount_rpy_deg: tuple[float, float, float], side: Path) -> np.ndarray:
    """[N] share of each photo's ground footprint (at its GNSS position and telemetry
    attitude, the survey's camera and mount, on the survey's ground plane; grid convergence
    left out) that the survey's mosaic covers: what a photo of the repeat flight can match."""
    a, b, c = json.loads((side / "report.json").read_text())["ground"]["plane_a_b_c"]
    R_body_cam = mount_rotation(*mount_rpy_deg)
    with rasterio.open(side / "mosaic.tif") as src:
        valid, inverse = src.dataset_mask() > 0, ~src.transform
    u, v = np.meshgrid(np.linspace(0, 1, 32), np.linspace(0, 1, 18))
    u, v = u.ravel()[:, None], v.ravel()[:, None]
    shares = []
    for p, rpy in zip(enu_m, rpy_rad, strict=True):
        agl = p[2] - (a * p[0] + b * p[1] + c)
        q = p[:2] + ground_footprint(camera, R_ned_body(*rpy) @ R_body_cam, agl)
        pts = ((1 - u) * (1 - v) * q[0] + u * (1 - v) * q[1] + u * v * q[2]
               + (1 - u) * v * q[3])  # a grid over the footprint's quadrilateral
        col, row = (np.floor(x).astype(int) for x in inverse @ (pts[:, 0], pts[:, 1]))
        inside = (col >= 0) & (row >= 0) & (col < valid.shape[1]) & (row < valid.shape[0])
        shares.append(float(valid[row[inside], col[inside]].sum()) / len(pts))
    return np.asarray(shares)


def summary(r: LeaveLinesOut) -> dict:
    """The figures of a run as JSON-ready values."""
    rep, g = r.report, r.survey.georef
    on = np.asarray(r.on_map) >= ON_MAP_SHARE
    return {
        "lines": r.lines, "map_lines": list(r.map_lines), "test_lines": list(r.test_lines),
        "map_frames": r.map_frames, "test_frames": r.test_frames,
        "sfm_registered": g.frames_registered,
        "georef_horizontal_rms_m": round(g.horizontal_rms_m, 3),
        "georef_horizontal_p50_m": round(g.horizontal_p50_m, 3),
        "georef_horizontal_max_m": round(g.horizontal_max_m, 3),
        "georef_vertical_rms_m": round(g.vertical_rms_m, 3),
        "camera_focal_px": round(g.focal_px, 1), "camera_k1": round(g.k1, 4),
        "clock_from": r.clock, "clock_offset_s": round(r.clock_offset_s, 3),
        "map_sfm_residual_clock_offset_s": round(g.time_offset_s, 3),
        "camera_mount_rpy_deg": [round(v, 2) for v in g.mount_rpy_deg],
        "georef_horizontal_rms_before_time_offset_m": round(g.horizontal_rms_before_offset_m,
                                                            3),
        "availability": round(rep.availability, 4), "fixes": rep.fixes,
        "fix_cep50_m": rep.fix_cep50_m, "fix_cep95_m": rep.fix_cep95_m,
        "max_err_m": rep.max_err_m, "gross_errors_over_30m": rep.gross_errors,
        "rejections": rep.rejections,
        # the test photos at least ON_MAP_SHARE over the map's mosaic, and the share of them
        # that gave a fix: the rest see more ground that no placed map photo saw than ground
        # that one did
        "test_frames_on_map": int(np.sum(on)),
        "availability_on_map": round(float(np.mean(np.asarray(r.fixed)[on])), 4)
        if on.any() else None,
        "wall_s": {**{k: round(v, 1) for k, v in r.survey.wall_s.items()},
                   "replay_s": round(r.replay_s, 1), "clock_sfm_s": round(r.clock_s, 1)},
        "frame_latency_p50_ms": rep.frame_latency_p50_ms,
    }
