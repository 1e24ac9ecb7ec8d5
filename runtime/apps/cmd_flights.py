"""`skyfix demo`, `skyfix replay` and `skyfix run`: flying, for real or from a recording."""

from __future__ import annotations

import argparse
from pathlib import Path

from skyfix.runtime.apps import args
from skyfix.runtime.core.errors import SkyfixError


def cmd_demo(a: argparse.Namespace) -> None:
    from skyfix.runtime.apps.demo import run_demo

    result = run_demo(Path(a.out))
    _print_summary(result.report, result.files)


def cmd_replay(a: argparse.Namespace) -> None:
    from skyfix.runtime.apps.replay import replay
    from skyfix.runtime.core.config import load_config
    from skyfix.runtime.io.clock import AutopilotClock
    from skyfix.runtime.io.sources import open_inputs

    cfg = load_config(a.config)
    if a.flights or a.ray is not None:
        from skyfix.runtime.apps.fleet import fleet_replay, read_terrain_labels

        flights = [*([a.flight] if a.flight else []), *(a.flights or [])]
        labels = read_terrain_labels(a.terrain_labels) if a.terrain_labels else None
        summary = fleet_replay(flights, a.map, a.out, cfg, a.gnss_off_at,
                               None if a.ray in (None, "local") else a.ray,
                               use_ray=a.ray is not None, workers=a.workers,
                               terrain_labels=labels)
        failed = [r for r in summary.flights if r.report is None]
        for r in failed:
            print(f"  {r.name}: failed: {r.error}")
        if len(failed) == len(summary.flights):
            raise SkyfixError(f"no flight could be replayed ({failed[0].error})")
        print(f"{len(summary.flights) - len(failed)} of {len(summary.flights)} flights"
              f" replayed; summary: {', '.join(str(f) for f in summary.files)}")
        return
    inputs = open_inputs(a.flight, frames=a.frames, frame_times=a.frame_times, video=a.video,
                         video_start=a.video_start, video_fps=a.video_fps,
                         telemetry=a.telemetry, camera=a.camera, time_offset_s=a.time_offset,
                         clock=AutopilotClock.from_config(cfg))
    result = replay(inputs, a.map, a.out, cfg, a.gnss_off_at)
    _print_summary(result.report, result.files)


def cmd_run(a: argparse.Namespace) -> None:
    from skyfix.runtime.flight.daemon import run_daemon

    args.log_to_stderr(a.verbose)
    run_daemon(a.config, a.duration, a.record, a.record_every, int(a.record_max_mb * 1024**2))


def _print_summary(report, files) -> None:
    rows = [
        ("frames", report.frames), ("accepted fixes", report.fixes),
        ("availability", f"{report.availability:.1%}"),
        ("scored against", report.reference if report.scored else "not scored: no reference"),
        ("fix CEP50 / CEP95 (m)", f"{report.fix_cep50_m} / {report.fix_cep95_m}"),
        ("estimate CEP50 / CEP95 (m)", f"{report.est_cep50_m} / {report.est_cep95_m}"),
        ("max fix error (m)", report.max_err_m),
        ("gross errors (>30 m)", report.gross_errors),
        ("integrity violations (>3 sigma)", report.integrity_violations),
        ("wrong claims sent (>3 sigma)", report.claims_beyond_3sigma),
        ("frame latency p50 / p95 (ms)",
         f"{report.frame_latency_p50_ms} / {report.frame_latency_p95_ms}"),
        ("rejections", ", ".join(f"{k} {v}" for k, v in report.rejections.items()) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print("\nwritten:")
    for path in files:
        print(f"  {path}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's commands on the root parser's subparsers."""
    d = sub.add_parser("demo", help="sim flight over the bundled map + map build + replay")
    d.add_argument("--out", default="skyfix-demo", help="output folder (default: skyfix-demo)")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("replay", help="run a recorded flight through the runtime and score it")
    r.add_argument("flight", type=Path, nargs="?",
                   help="recorded-flight folder (or use --frames / --video)")
    r.add_argument("--frames", type=Path, metavar="DIR",
                   help="image folder; times from EXIF, YYYYmmddHHMMSScc names or --frame-times")
    r.add_argument("--frame-times", type=Path, metavar="CSV",
                   help="capture times: columns file and t_ns|unix_s|utc_unix_s")
    r.add_argument("--video", type=Path, metavar="FILE", help="video file (with --video-start)")
    r.add_argument("--video-start", metavar="ISO8601", help="UTC time of the video's first frame")
    r.add_argument("--video-fps", type=float, default=2.0,
                   help="frames per second taken from the video (default 2)")
    r.add_argument("--telemetry", type=Path, metavar="LOG",
                   help=".tlog, .bin, .ulg or GPS track .csv (default: the images' EXIF/XMP)")
    r.add_argument("--camera", type=Path, metavar="FILE",
                   help="intrinsics: OpenCV YAML or cuav JSON (default: guess from EXIF)")
    r.add_argument("--time-offset", type=float, default=0.0, metavar="SECONDS",
                   help="added to frame times to put them on the log's clock (default 0)")
    r.add_argument("--map", required=True, type=Path, help="map pack folder (plain or sharded)")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--config", type=Path, help="YAML configuration (defaults otherwise)")
    r.add_argument("--gnss-off-at", type=float, default=0.0, metavar="SECONDS",
                   help="seconds after the first frame before which the log's GNSS may serve "
                        "as a search prior (default 0: not at all)")
    r.add_argument("--flights", type=Path, nargs="+", metavar="DIR",
                   help="several recorded-flight folders: per-flight reports + fleet summary")
    r.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="replay the flights as Ray tasks (a local cluster, or ADDRESS)")
    r.add_argument("--workers", type=int, help="CPUs of a local Ray cluster (default: all)")
    r.add_argument("--terrain-labels", type=Path, metavar="CSV",
                   help="fleet summary terrain types: CSV with columns flight,terrain")
    r.set_defaults(func=cmd_replay)
    rn = sub.add_parser("run", help="the flight daemon: camera + map pack -> MAVLink GPS_INPUT")
    rn.add_argument("--config", required=True, type=Path, help="YAML configuration")
    rn.add_argument("--duration", type=float, help="stop after this many seconds")
    rn.add_argument("--record", type=Path, metavar="DIR",
                    help="record frames, telemetry and outputs (a flight `skyfix replay` reads)")
    rn.add_argument("--record-every", type=int, default=1, metavar="N",
                    help="record every N-th frame the daemon takes (default 1)")
    rn.add_argument("--record-max-mb", type=float, default=2048.0, metavar="MB",
                    help="disk for recorded frames; the oldest go first (default 2048)")
    rn.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    rn.set_defaults(func=cmd_run)
