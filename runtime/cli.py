"""`skyfix` command line: a thin layer over the library.

Bad input raises SkyfixError somewhere below; it is printed here as one line
(`skyfix: error: ...`) with exit status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skyfix.models.registry import ENCODER_NAMES
from skyfix.runtime.errors import SkyfixError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def cmd_sim_flight(a: argparse.Namespace) -> None:
    from skyfix.sim.flight import FlightSpec, simulate_flight

    spec = FlightSpec(agl_m=a.agl, duration_s=a.duration, fps=a.fps, seed=a.seed)
    summary = simulate_flight(a.ortho, a.out, spec, render_from=a.render_from, dem=a.dem)
    print(f"wrote {summary.frames} frames to {a.out}")


def cmd_maps_build(a: argparse.Namespace) -> None:
    from skyfix.maps.build import build_pack
    from skyfix.models.registry import make_encoder

    path = build_pack(a.orthos, a.out, encoder=make_encoder(a.encoder), gsds_m=a.gsd,
                      tile_px=a.tile, overlap=a.overlap, force=a.force)
    print(f"map pack written to {path}")


def cmd_maps_verify(a: argparse.Namespace) -> None:
    from skyfix.maps.pack import verify_pack

    problems = verify_pack(a.pack)
    if problems:
        raise SkyfixError(f"map pack {a.pack}: {problems[0]}"
                          + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    print(f"map pack {a.pack}: OK")


def cmd_maps_info(a: argparse.Namespace) -> None:
    from skyfix.maps.pack import pack_info

    info = pack_info(a.pack)
    for key, value in vars(info).items():
        print(f"{key:>16}: {value}")


def cmd_replay(a: argparse.Namespace) -> None:
    from skyfix.runtime.config import load_config
    from skyfix.runtime.replay import replay

    result = replay(a.flight, a.map, a.out, load_config(a.config), a.gnss_off_at)
    _print_summary(result.report, result.files)


def cmd_demo(a: argparse.Namespace) -> None:
    from skyfix.runtime.demo import run_demo

    result = run_demo(Path(a.out))
    _print_summary(result.report, result.files)


def _print_summary(report, files) -> None:
    rows = [
        ("frames", report.frames), ("accepted fixes", report.fixes),
        ("availability", f"{report.availability:.1%}"),
        ("fix CEP50 / CEP95 (m)", f"{report.fix_cep50_m} / {report.fix_cep95_m}"),
        ("estimate CEP50 / CEP95 (m)", f"{report.est_cep50_m} / {report.est_cep95_m}"),
        ("max fix error (m)", report.max_err_m),
        ("gross errors (>30 m)", report.gross_errors),
        ("integrity violations (>3 sigma)", report.integrity_violations),
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skyfix", description="Visual navigation for drones.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="sim flight over the bundled map + map build + replay")
    d.add_argument("--out", default="skyfix-demo", help="output folder (default: skyfix-demo)")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("replay", help="run a recorded flight through the runtime and score it")
    r.add_argument("flight", type=Path, help="recorded-flight folder")
    r.add_argument("--map", required=True, type=Path, help="map pack folder")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--config", type=Path, help="YAML configuration (defaults otherwise)")
    r.add_argument("--gnss-off-at", type=float, default=0.0, metavar="SECONDS",
                   help="the log's GNSS may serve as a search prior before this time (default 0)")
    r.set_defaults(func=cmd_replay)

    maps = sub.add_parser("maps", help="build, verify and inspect map packs")
    msub = maps.add_subparsers(dest="maps_command", required=True)
    b = msub.add_parser("build", help="tile an orthophoto and precompute its features")
    b.add_argument("orthos", nargs="+", type=Path, help="GeoTIFF/COG/VRT orthophotos")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--gsd", type=_floats, help="ground resolutions in m/px, e.g. 0.3,0.6")
    b.add_argument("--tile", type=int, default=512, help="tile size in pixels (default 512)")
    b.add_argument("--overlap", type=float, default=0.5, help="tile overlap 0..0.9 (default 0.5)")
    b.add_argument("--force", action="store_true", help="replace an existing output folder")
    b.add_argument("--encoder", choices=ENCODER_NAMES, default="rootsift",
                   help="local-feature encoder the runtime will match with (default rootsift)")
    b.set_defaults(func=cmd_maps_build)
    v = msub.add_parser("verify", help="re-hash every file of a pack against its manifest")
    v.add_argument("pack", type=Path)
    v.set_defaults(func=cmd_maps_verify)
    i = msub.add_parser("info", help="summary of a pack")
    i.add_argument("pack", type=Path)
    i.set_defaults(func=cmd_maps_info)

    sim = sub.add_parser("sim", help="synthetic flights")
    ssub = sim.add_subparsers(dest="sim_command", required=True)
    f = ssub.add_parser("flight", help="render a recorded-flight folder from an orthophoto")
    f.add_argument("--ortho", required=True, type=Path, help="map orthophoto (GeoTIFF)")
    f.add_argument("--render-from", type=Path, help="render frames from this image instead")
    f.add_argument("--dem", type=Path, help="terrain model (GeoTIFF)")
    f.add_argument("--agl", type=float, default=120.0, help="height above ground, m")
    f.add_argument("--duration", type=float, default=60.0, help="seconds")
    f.add_argument("--fps", type=float, default=2.0, help="camera frames per second")
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--out", required=True, type=Path)
    f.set_defaults(func=cmd_sim_flight)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SkyfixError as exc:
        print(f"skyfix: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skyfix: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
