"""`skyfix maps survey`: a map pack from a GNSS-tagged nadir survey (skyfix.maps.survey).

The photos' capture times (EXIF, file names or --frame-times) put each on the GNSS track
of --telemetry (a .tlog, .bin, .ulg or GPS track CSV), or --exif takes the photos' own
GPS tags. --lines keeps some flight lines of the survey (skyfix.maps.survey_lines) and
--exclude-frames drops photos by name; the rest go into the map.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyproj import Transformer

from skyfix.maps.crs import pack_crs
from skyfix.maps.survey_lines import FlightLines, parse_line_spec, split_lines
from skyfix.maps.survey_sfm import SurveyFrames
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import WGS84
from skyfix.runtime.io.sources import ImageFolder, load_camera, open_inputs


@dataclass(frozen=True)
class SurveyTrack:
    """Every photo of a survey folder that the GNSS covers, in time order, with its
    position: `frames` (all of them) and the flight `lines` they were taken on."""

    frames: SurveyFrames
    t_ns: np.ndarray  # [N] int64, on the GNSS clock
    lines: FlightLines


def open_survey(frames_dir: Path, telemetry: Path | None, camera: Path | None = None,
                time_offset_s: float = 0.0, frame_times: Path | None = None) -> SurveyTrack:
    """The photos of `frames_dir` placed on `telemetry`'s GNSS track (None: their own EXIF
    GPS tags)."""
    if telemetry is None and ImageFolder.open(frames_dir, frame_times).telemetry() is None:
        raise SkyfixError(f"{frames_dir}: the photos carry no GNSS tags (EXIF GPS); pass "
                          "--telemetry LOG")
    inputs = open_inputs(frames=frames_dir, frame_times=frame_times, telemetry=telemetry,
                         camera=camera, time_offset_s=time_offset_s)
    if inputs.truth is None:
        raise SkyfixError(f"{telemetry}: no GNSS positions in the log")
    folder = inputs.frames  # an ImageFolder: frames= always opens one
    t = folder.frame_times_ns
    covered = inputs.truth.covers(t, margin_ns=0)
    if not covered.any():
        raise SkyfixError(f"{frames_dir}: no photo was taken while the GNSS track runs")
    t = t[covered]
    files = tuple(f for f, c in zip(folder.frame_files, covered, strict=True) if c)
    lonlat = inputs.truth.at(t)
    states = [inputs.telemetry.at(int(ti)) for ti in t]
    alt = np.array([np.nan if s is None else s.alt_amsl_m for s in states])
    agl = np.array([np.nan if s is None else s.agl_m for s in states])
    vel = np.array([(v[1], v[0], -v[2]) if (v := None if s is None else s.vel_ned_mps)
                    else (0.0, 0.0, 0.0) for s in states], np.float64)
    if not (np.isfinite(alt).all() and np.isfinite(agl).any()):
        raise SkyfixError(f"{telemetry or frames_dir}: no altitude for some photos")
    bounds = (float(lonlat[:, 0].min()), float(lonlat[:, 1].min()),
              float(lonlat[:, 0].max()), float(lonlat[:, 1].max()))
    crs = pack_crs([WGS84], [bounds], [str(frames_dir)])
    east, north = Transformer.from_crs(WGS84.to_wkt(), crs.to_wkt(), always_xy=True).transform(
        lonlat[:, 0], lonlat[:, 1])
    enu = np.column_stack([east, north, alt])
    rpy = np.array([(0.0, 0.0, 0.0) if s is None else (s.roll_rad, s.pitch_rad, s.yaw_rad)
                    for s in states], np.float64)
    survey = SurveyFrames(files, enu, vel, rpy, crs, inputs.camera, float(np.nanmedian(agl)),
                          camera is not None)
    return SurveyTrack(survey, t, split_lines(east, north))


def select(track: SurveyTrack, lines: str | None, exclude: list[str] | None) -> SurveyFrames:
    """The photos of the flight lines named by `lines` (all photos when None), less those
    named in `exclude`."""
    keep = np.ones(len(track.t_ns), bool)
    if lines is not None:
        keep &= np.isin(track.lines.line, parse_line_spec(lines, track.lines.count))
    if exclude:
        names = {f.name for f in track.frames.files}
        unknown = sorted(set(exclude) - names)
        if unknown:
            raise SkyfixError(f"--exclude-frames: no photo {unknown[0]} in the survey")
        keep &= np.array([f.name not in exclude for f in track.frames.files])
    f = track.frames
    return SurveyFrames(tuple(p for p, k in zip(f.files, keep, strict=True) if k),
                        f.enu_m[keep], f.vel_enu_mps[keep], f.rpy_rad[keep], f.crs,
                        f.camera, f.agl_m, f.camera_calibrated)


def cmd_maps_survey(a: argparse.Namespace) -> None:
    from skyfix.maps.survey import build_survey_pack

    if a.camera is not None:
        load_camera(a.camera)  # an unusable camera file fails before the photos are read
    track = open_survey(a.frames_dir, None if a.exif else a.telemetry, a.camera,
                        a.time_offset, a.frame_times)
    frames = select(track, a.lines, a.exclude_frames)
    print(f"{len(frames.files)} of {len(track.t_ns)} photos ({track.lines.count} flight lines "
          f"along {track.lines.axis_deg:.0f} deg) go into the map")
    result = build_survey_pack(frames, a.out, a.gsd, a.dem, a.force)
    g = result.georef
    print(f"SfM placed {g.frames_registered} of {g.frames_given} photos; georeferencing "
          f"error against the GNSS: {g.horizontal_p50_m:.2f} m median, "
          f"{g.horizontal_rms_m:.2f} m RMS, {g.horizontal_max_m:.2f} m max horizontal, "
          f"{g.vertical_rms_m:.2f} m RMS vertical")
    print(f"camera: focal length {g.focal_px:.0f} px, k1 {g.k1:.3f}; its clock is "
          f"{g.time_offset_s:+.2f} s off the GNSS (add it to --time-offset when replaying); "
          "mount against the log's attitude: roll {:.1f}, pitch {:.1f}, yaw {:.1f} deg".format(
              *g.mount_rpy_deg))
    print(f"map pack written to {result.pack}; mosaic, camera and report in {result.side}")


def add_parser(msub) -> None:
    """Add `survey` to the `maps` subcommands."""
    from skyfix.maps.survey import DEFAULT_GSD_M

    s = msub.add_parser("survey", help="a map pack from your own GNSS-tagged nadir survey "
                        "(structure from motion -> orthomosaic -> pack)")
    s.add_argument("frames_dir", type=Path, metavar="FRAMES_DIR", help="the survey photos")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--telemetry", type=Path, metavar="LOG",
                       help=".tlog, .bin, .ulg or GPS track .csv with the GNSS positions")
    where.add_argument("--exif", action="store_true", help="the photos' own EXIF GPS tags")
    s.add_argument("--out", required=True, type=Path, metavar="PACK")
    s.add_argument("--lines", metavar="SPEC",
                   help="flight lines to use: even, odd or numbers such as 0,2,5 (default all)")
    s.add_argument("--exclude-frames", nargs="+", metavar="NAME",
                   help="photo file names to leave out")
    s.add_argument("--dem", type=Path, help="terrain model (GeoTIFF) as the ground surface "
                                            "(default: a plane through the sparse points)")
    s.add_argument("--gsd", type=float, default=DEFAULT_GSD_M,
                   help=f"mosaic resolution, m/px (default {DEFAULT_GSD_M})")
    s.add_argument("--camera", type=Path, metavar="FILE",
                   help="first-guess intrinsics (default: from EXIF); SfM refines them")
    s.add_argument("--frame-times", type=Path, metavar="CSV",
                   help="capture times: columns file and t_ns|unix_s|utc_unix_s")
    s.add_argument("--time-offset", type=float, default=0.0, metavar="SECONDS",
                   help="added to photo times to put them on the log's clock (default 0)")
    s.add_argument("--force", action="store_true", help="replace an existing pack")
    s.set_defaults(func=cmd_maps_survey)
