"""Teach and repeat, measured on one survey: the map from some flight lines, the photos of
the others replayed against it (GNSS-denied: the log's GNSS only scores) and scored
against the GNSS track. `make bench-survey` and the ZR10 integration test run this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from skyfix.maps.survey import SurveyResult, build_survey_pack, side_folder
from skyfix.maps.survey_lines import parse_line_spec
from skyfix.maps.survey_sfm import reconstruct
from skyfix.runtime.apps.maps_survey import open_survey, select
from skyfix.runtime.apps.replay import replay
from skyfix.runtime.apps.report import Report
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.io.sources import open_inputs


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


def leave_lines_out(frames_dir: Path, telemetry: Path, out: Path, map_lines: str = "even",
                    time_offset_s: float = 0.0, gsd_m: float | None = None,
                    cfg: Config | None = None, clock: str = "all",
                    progress: bool = True) -> LeaveLinesOut:
    """Build the map pack `out`/pack from the flight lines `map_lines` of the survey in
    `frames_dir`, replay the photos of every other line against it into `out`/replay.

    `clock`: "all" measures the camera clock's offset from the GNSS first, by SfM of the
    whole survey (lines flown both ways), as one calibrates a camera before using it;
    "map" leaves it to the map's own SfM. Every other line of a lawn-mower survey is every
    line flown one way, where a clock offset cannot be told from a shift of the map along
    the lines; the replayed lines, flown the other way, then see twice that shift."""
    out = Path(out)
    if clock not in ("all", "map"):
        raise SkyfixError(f"clock {clock!r}: expected all or map")
    track = open_survey(frames_dir, telemetry, time_offset_s=time_offset_s)
    clock_offset, clock_s = time_offset_s, 0.0
    if clock == "all":
        t0 = time.perf_counter()
        whole = reconstruct(track.frames, out / "clock_sfm", progress=progress)
        clock_offset += whole.georef.time_offset_s
        clock_s = time.perf_counter() - t0
        track = open_survey(frames_dir, telemetry, time_offset_s=clock_offset)
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
                         time_offset_s=clock_offset + survey.georef.time_offset_s)
    cfg = cfg or Config()
    roll, pitch, yaw = survey.georef.mount_rpy_deg
    cfg = replace(cfg, rectify=replace(cfg.rectify, mount_roll_deg=roll, mount_pitch_deg=pitch,
                                       mount_yaw_deg=yaw))
    t0 = time.perf_counter()
    result = replay(inputs, out / "pack", out / "replay", cfg, progress=progress)
    return LeaveLinesOut(track.lines.count, keep, test, len(frames.files), len(test_files),
                         survey, result.report, time.perf_counter() - t0, clock,
                         clock_offset + survey.georef.time_offset_s, clock_s)


def summary(r: LeaveLinesOut) -> dict:
    """The figures of a run as JSON-ready values."""
    rep, g = r.report, r.survey.georef
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
        "wall_s": {**{k: round(v, 1) for k, v in r.survey.wall_s.items()},
                   "replay_s": round(r.replay_s, 1), "clock_sfm_s": round(r.clock_s, 1)},
        "frame_latency_p50_ms": rep.frame_latency_p50_ms,
    }
