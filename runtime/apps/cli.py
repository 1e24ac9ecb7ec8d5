"""`skyfix` command line: a thin layer over the library.

Bad input raises SkyfixError somewhere below; it is printed here as one line
(`skyfix: error: ...`) with exit status 2, like operating-system errors (an existing
output, a full or read-only disk). Anything else is a bug: one line naming a crash report
with the traceback, exit status 70 (see `runtime/apps/boundary.py`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import shtab

from skyfix.models.registry import ENCODER_NAMES
from skyfix.runtime.core.errors import SkyfixError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _output_file(path: Path) -> Path:
    """`path` as a file to write later: its folder made now, so that an unusable path
    fails before the work rather than after it."""
    if path.is_dir():
        raise SkyfixError(f"--out {path} is a folder: give the file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def cmd_sim_flight(a: argparse.Namespace) -> None:
    from skyfix.sim.flight import FlightSpec, simulate_flight

    spec = FlightSpec(agl_m=a.agl, duration_s=a.duration, fps=a.fps, seed=a.seed)
    summary = simulate_flight(a.ortho, a.out, spec, render_from=a.render_from, dem=a.dem)
    print(f"wrote {summary.frames} frames to {a.out}")


def cmd_maps_build(a: argparse.Namespace) -> None:
    from skyfix.maps.build import INDEX_MIN_TILES, build_pack
    from skyfix.models.registry import make_encoder

    kwargs = dict(encoder=make_encoder(a.encoder), gsds_m=a.gsd, tile_px=a.tile,
                  overlap=a.overlap, force=a.force, dem=a.dem, min_valid_fraction=a.min_valid,
                  sign_key=a.sign_key,
                  index_min_tiles=INDEX_MIN_TILES if a.index_min_tiles is None
                  else a.index_min_tiles)
    if a.ray is not None:
        from skyfix.maps.distributed import build_pack_ray

        path = build_pack_ray(a.orthos, a.out, None if a.ray == "local" else a.ray,
                              a.workers, **kwargs)
    else:
        path = build_pack(a.orthos, a.out, **kwargs)
    print(f"map pack written to {path}")


def cmd_maps_shard(a: argparse.Namespace) -> None:
    from skyfix.maps.shards import shard_pack

    print(f"sharded map pack written to {shard_pack(a.pack, a.out, a.cell_m)}")


def cmd_maps_verify(a: argparse.Namespace) -> None:
    from skyfix.maps.pack import MANIFEST, verify_pack
    from skyfix.runtime.core.provenance import check_manifest_signature

    if a.trusted_key:
        check_manifest_signature(a.pack / MANIFEST, a.trusted_key, f"map pack {a.pack}")
    problems = verify_pack(a.pack)
    if problems:
        raise SkyfixError(f"map pack {a.pack}: {problems[0]}"
                          + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    print(f"map pack {a.pack}: OK")


def cmd_sign(a: argparse.Namespace) -> None:
    from skyfix.maps.pack import MANIFEST, verify_pack
    from skyfix.models.manifest import load_manifest, manifest_path
    from skyfix.runtime.core.provenance import sign_manifest

    if a.command == "maps":
        problems = verify_pack(a.target)  # never sign a pack that fails its own checks
        if problems:
            raise SkyfixError(f"map pack {a.target}: {problems[0]}; not signed")
        manifest = a.target / MANIFEST
    else:
        load_manifest(a.target, verify=True)
        manifest = manifest_path(a.target)
    print(f"signed {manifest}: {sign_manifest(manifest, a.key)}")


def cmd_maps_info(a: argparse.Namespace) -> None:
    from skyfix.maps.pack import pack_info

    info = pack_info(a.pack)
    for key, value in vars(info).items():
        print(f"{key:>18}: {value}")


def cmd_replay(a: argparse.Namespace) -> None:
    from skyfix.runtime.apps.replay import replay
    from skyfix.runtime.core.config import load_config
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
                         telemetry=a.telemetry, camera=a.camera, time_offset_s=a.time_offset)
    result = replay(inputs, a.map, a.out, cfg, a.gnss_off_at)
    _print_summary(result.report, result.files)


def cmd_demo(a: argparse.Namespace) -> None:
    from skyfix.runtime.apps.demo import run_demo

    result = run_demo(Path(a.out))
    _print_summary(result.report, result.files)


def _log_to_stderr(verbose: bool = False) -> None:
    import logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_run(a: argparse.Namespace) -> None:
    from skyfix.runtime.flight.daemon import run_daemon

    _log_to_stderr(a.verbose)
    run_daemon(a.config, a.duration, a.record, a.record_every, int(a.record_max_mb * 1024**2))


def cmd_sim_autopilot(a: argparse.Namespace) -> None:
    import threading

    from skyfix.sim.autopilot import AutopilotEmulator, AutopilotSpec
    from skyfix.sim.flight import FlightSpec

    spec = AutopilotSpec(a.duration, a.gnss_off_at, FlightSpec(agl_m=a.agl, seed=a.seed))
    emulator = AutopilotEmulator(a.ortho, spec, a.link)
    print(f"flying {a.duration:g} s over {a.ortho.name}, GNSS off at {a.gnss_off_at:g} s, "
          f"MAVLink on {a.link}")
    a.out.mkdir(parents=True, exist_ok=True)  # before the flight, not after it
    emulator.run(threading.Event())
    path = emulator.write_received(a.out / "received.tlog")
    print(f"sent {emulator.sent} messages, received {len(emulator.gps_inputs())} GPS_INPUT; "
          f"wrote {path}")


def cmd_sim_closed_loop(a: argparse.Namespace) -> None:
    import json

    from skyfix.runtime.core.config import load_config
    from skyfix.sim.closed_loop import ClosedLoopSpec, run_closed_loop
    from skyfix.sim.faults import parse_fault

    _log_to_stderr()
    faults = tuple(parse_fault(f, a.duration, a.gnss_off_at) for f in a.fault)
    blank_at = a.duration if faults and a.blank_at < 0 else a.blank_at  # faults: no blanking
    spec = ClosedLoopSpec(a.duration, a.gnss_off_at, blank_at, a.fps, a.agl, a.seed, faults)
    result = run_closed_loop(a.ortho, a.out, spec, load_config(a.config), a.map)
    print(json.dumps({k: v for k, v in result.items() if k != "daemon"}, indent=2))
    print(f"wrote {a.out / 'closed_loop.json'}")


def cmd_sim_sitl(a: argparse.Namespace) -> None:
    import json
    from dataclasses import replace

    from skyfix.runtime.core.config import load_config
    from skyfix.sim.sitl import SitlSpec, run_sitl

    _log_to_stderr()
    spec = SitlSpec(agl_m=a.agl, fps=a.fps, laps=a.laps, gnss_off_after_s=a.gnss_off_after,
                    blanks=tuple(a.blank), gps_delay_ms=a.gps_delay_ms,
                    spoof_after_s=a.spoof[0] if a.spoof else 0.0,
                    spoof_mps=a.spoof[1] if a.spoof else 0.0)
    cfg = load_config(a.config)
    cfg = replace(cfg, gnss=replace(cfg.gnss, mode=a.gnss_mode))
    result = run_sitl(a.ortho, a.out, spec, cfg, a.map, a.binary, a.autopilot)
    print(json.dumps({k: v for k, v in result.items() if k not in ("daemon", "params")},
                     indent=2))
    print(f"wrote {a.out / 'report.json'}")


def _pair(text: str) -> tuple[float, float]:
    try:
        start, duration = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers A:B, got {text!r}") from None
    return start, duration


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def cmd_models_export(a: argparse.Namespace) -> None:
    from skyfix.models.export import export_xfeat

    path = export_xfeat(a.out, a.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.name}.json")


def cmd_models_info(a: argparse.Namespace) -> None:
    from skyfix.models.manifest import load_manifest

    manifest = load_manifest(a.model, verify=True)
    rows = manifest.summary_rows()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:>{width}}: {value}")
    print(f"{'':>{width}}  sha256 of {a.model.name} verified")


def cmd_models_engine(a: argparse.Namespace) -> None:
    from skyfix.models.manifest import load_manifest
    from skyfix.runtime.backends import tensorrt as trt_backend

    manifest = load_manifest(a.model, verify=True)
    name = manifest.inputs[0].name
    multiple = manifest.input_multiple
    for w, h in (a.min_size, a.size, a.max_size):
        if w % multiple or h % multiple:
            raise SkyfixError(f"engine size {w}x{h} is not a multiple of {multiple} "
                              f"({manifest.model_id} needs it)")
    shapes = trt_backend.image_profile(name, a.min_size, a.size, a.max_size)
    feeds = (trt_backend.calibration_images(a.calib, name, a.size) if a.calib else None)
    if a.precision == "int8" and feeds is None:
        raise SkyfixError("--precision int8 needs --calib FOLDER of map-tile images")
    trt_backend.import_tensorrt()  # one clear line when TensorRT is absent
    path = trt_backend.build_cached_engine(a.model, a.precision, shapes, feeds, a.cache_dir)
    print(f"engine: {path}")


def cmd_models_bench(a: argparse.Namespace) -> None:
    import subprocess

    import skyfix.models

    script = Path(skyfix.models.__file__).resolve().parents[1] / "benchmarks" / "bench_models.py"
    if not script.is_file():
        raise SkyfixError(f"{script} not found: the model benchmark runs from a source checkout")
    _output_file(a.out)
    cmd = [sys.executable, str(script), "--out", str(a.out), "--runs", str(a.runs),
           "--tiles", str(a.tiles)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise SkyfixError(f"model benchmark failed (exit status {code})")


def cmd_calibrate_camera(a: argparse.Namespace) -> None:
    from skyfix.calibration.intrinsics import (
        calibrate_intrinsics,
        parse_pattern,
        write_camera_info,
    )

    _output_file(a.out)
    if a.ros:
        _output_file(a.ros)
    res = calibrate_intrinsics(a.images, parse_pattern(a.pattern), a.min_views)
    res.camera.save(a.out)
    c = res.camera
    print(f"board found in {len(res.views_used)} of {res.views_total} images")
    print(f"fx {c.fx:.2f}  fy {c.fy:.2f}  cx {c.cx:.2f}  cy {c.cy:.2f}  "
          f"dist {' '.join(f'{d:.5f}' for d in c.dist)}")
    print(f"RMS reprojection error {res.rms_px:.3f} px (worst image "
          f"{float(res.view_rms_px.max()):.3f} px)")
    print(f"wrote {a.out}")
    if a.ros:
        write_camera_info(a.ros, c, a.camera_name)
        print(f"wrote {a.ros}")


def cmd_calibrate_mount(a: argparse.Namespace) -> None:
    from skyfix.calibration.mount import calibrate_mount
    from skyfix.runtime.core.config import load_config

    _output_file(a.out)
    cal = calibrate_mount(a.flight, a.map, load_config(a.config), a.min_frames)
    r, p_, y = cal.mount_error_deg
    print(f"frames used {cal.frames_used} of {cal.frames_total}")
    print(f"mount vs nadir: roll {r:+.3f}  pitch {p_:+.3f}  yaw {y:+.3f} deg "
          f"(per-frame spread {cal.rotation_rms_deg:.2f} deg RMS)")
    print(f"time offset {cal.time_offset_s * 1e3:+.1f} ms (1-sigma "
          f"{cal.time_offset_sigma_s * 1e3:.1f} ms): frames are stamped this late")
    print(f"map vs GNSS bias E {cal.bias_en_m[0]:+.2f} N {cal.bias_en_m[1]:+.2f} m, "
          f"track residual {cal.position_rms_m:.2f} m RMS")
    cal.save(a.out)
    print(f"wrote {a.out}")


def cmd_config_doc(a: argparse.Namespace) -> None:
    from skyfix.runtime.core.config_doc import default_yaml, markdown_table

    print(markdown_table() if a.markdown else default_yaml(), end="")


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


def cmd_bench_crossdate(a: argparse.Namespace) -> None:
    from skyfix.runtime.apps.bench_crossdate import bench_crossdate

    report = bench_crossdate(a.pairs, a.out, a.views, a.seed, a.method)
    for name, m in report["methods"].items():
        print(f"{name}: {m['overall']}")
    print(f"wrote {a.out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skyfix", description="Visual navigation for drones.")
    sub = p.add_subparsers(dest="command", required=True)

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
    r.add_argument("--map", required=True, type=Path, help="map pack folder")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--config", type=Path, help="YAML configuration (defaults otherwise)")
    r.add_argument("--gnss-off-at", type=float, default=0.0, metavar="SECONDS",
                   help="the log's GNSS may serve as a search prior before this time (default 0)")
    r.add_argument("--flights", type=Path, nargs="+", metavar="DIR",
                   help="several recorded-flight folders: per-flight reports + fleet summary")
    r.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="replay the flights as Ray tasks (a local cluster, or ADDRESS)")
    r.add_argument("--workers", type=int, help="CPUs of a local Ray cluster (default: all)")
    r.add_argument("--terrain-labels", type=Path, metavar="CSV",
                   help="fleet summary terrain types: CSV with columns flight,terrain")
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
    b.add_argument("--sign-key", type=Path, metavar="PEM",
                   help="sign the manifest with this Ed25519 private key (manifest.json.sig)")
    b.add_argument("--encoder", choices=ENCODER_NAMES, default="rootsift",
                   help="local-feature encoder the runtime will match with (default rootsift)")
    b.add_argument("--dem", type=Path, help="terrain model (GeoTIFF) to resample into the pack")
    b.add_argument("--min-valid", type=float, default=0.5, metavar="FRACTION",
                   help="least share of imagery in a tile (default 0.5); ragged drone orthos"
                        " may want less")
    b.add_argument("--index-min-tiles", type=int, metavar="N",
                   help="build a FAISS index for levels with at least N tiles (default 5000)")
    b.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="compute tile features on Ray (a local cluster, or ADDRESS)")
    b.add_argument("--workers", type=int, help="CPUs of a local Ray cluster (default: all)")
    b.set_defaults(func=cmd_maps_build)
    from skyfix.runtime.apps.maps_fetch import add_parser as add_fetch_parser

    add_fetch_parser(msub)
    sh = msub.add_parser("shard", help="cut a map pack into geographic cells for lazy loading")
    sh.add_argument("pack", type=Path, help="map pack folder")
    sh.add_argument("--cell-m", type=float, required=True, help="cell size, metres")
    sh.add_argument("--out", required=True, type=Path)
    sh.set_defaults(func=cmd_maps_shard)
    v = msub.add_parser("verify", help="re-hash every file of a pack against its manifest")
    v.add_argument("pack", type=Path)
    v.add_argument("--trusted-key", type=Path, metavar="PEM",
                   help="also require an Ed25519 signature by this public key")
    v.set_defaults(func=cmd_maps_verify)
    sg = msub.add_parser("sign", help="sign a pack's manifest with an Ed25519 private key")
    sg.add_argument("target", type=Path, metavar="PACK")
    sg.add_argument("--key", required=True, type=Path, metavar="PEM", help="private key")
    sg.set_defaults(func=cmd_sign)
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
    ap = ssub.add_parser("autopilot", help="MAVLink autopilot emulator over UDP (flies a "
                                           "mission, cuts GNSS, records GPS_INPUT)")
    ap.add_argument("--ortho", required=True, type=Path, help="map orthophoto (GeoTIFF)")
    ap.add_argument("--link", default="udpout:127.0.0.1:14550",
                    help="pymavlink connection (default udpout:127.0.0.1:14550)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds")
    ap.add_argument("--gnss-off-at", type=float, default=20.0, metavar="SECONDS",
                    help="GNSS loses its fix at this time (negative: never)")
    ap.add_argument("--agl", type=float, default=120.0, help="height above ground, m")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True, type=Path)
    ap.set_defaults(func=cmd_sim_autopilot)
    cl = ssub.add_parser("closed-loop", help="daemon + autopilot emulator (open loop: it flies "
                                             "its plan) + rendered camera, in real time; "
                                             "writes OUT/closed_loop.json")
    cl.add_argument("--ortho", required=True, type=Path, help="map orthophoto (GeoTIFF)")
    cl.add_argument("--map", type=Path, help="map pack of the ortho (built into OUT/pack if "
                                            "not given)")
    cl.add_argument("--config", type=Path, help="YAML configuration (defaults otherwise)")
    cl.add_argument("--duration", type=float, default=90.0, help="seconds")
    cl.add_argument("--gnss-off-at", type=float, default=20.0, metavar="SECONDS")
    cl.add_argument("--blank-at", type=float, default=-1.0, metavar="SECONDS",
                    help="camera goes black here (default: 10 s before the end)")
    cl.add_argument("--fps", type=float, default=2.0, help="camera frames per second")
    cl.add_argument("--agl", type=float, default=120.0, help="height above ground, m")
    cl.add_argument("--seed", type=int, default=1)
    cl.add_argument("--fault", action="append", default=[], metavar="NAME[@START:END]",
                    help="inject a fault (repeatable): freeze, black, saturated, blur, "
                         "clock-back, clock-forward, telemetry-gap, link-loss, spoof-drift, "
                         "corrupt-map, wrong-map, featureless, repetitive (sim/faults.py); "
                         "with faults the camera is not blanked unless --blank-at says so")
    cl.add_argument("--out", required=True, type=Path)
    cl.set_defaults(func=cmd_sim_closed_loop)
    st = ssub.add_parser("sitl", help="closed loop with a real autopilot SITL: AUTO mission, "
                                      "GNSS switched off, skyfix as GPS 2; writes report.json")
    st.add_argument("--ortho", required=True, type=Path, help="map orthophoto (GeoTIFF)")
    st.add_argument("--autopilot", default="arducopter", choices=("arducopter", "px4"))
    st.add_argument("--binary", type=Path,
                    help="SITL binary (default: ../shared/sitl/ardupilot/arducopter)")
    st.add_argument("--map", type=Path, help="map pack of the ortho (built if not given)")
    st.add_argument("--config", type=Path, help="YAML configuration (defaults otherwise)")
    st.add_argument("--agl", type=float, default=80.0, help="mission height above ground, m")
    st.add_argument("--fps", type=float, default=2.0, help="camera frames per second")
    st.add_argument("--laps", type=int, default=1, help="laps of the mission rectangle")
    st.add_argument("--gnss-off-after", type=float, default=60.0, metavar="SECONDS",
                    help="switch the simulated GNSS off this long after arming (< 0: never)")
    st.add_argument("--blank", type=_pair, action="append", default=[],
                    metavar="START:SECONDS", help="black camera frames (repeatable)")
    st.add_argument("--gps-delay-ms", type=int, default=0, help="GPS2_DELAY_MS to set")
    st.add_argument("--spoof", type=_pair, metavar="START:MPS",
                    help="from START s after arming the simulated GNSS drifts north at MPS m/s")
    st.add_argument("--gnss-mode", default="ekf-source", choices=("always", "ekf-source"),
                    help="hand-over: ekf-source also switches EKF3 to source set 2 (position "
                         "from skyfix, no GPS velocity) on GNSS loss")
    st.add_argument("--out", required=True, type=Path)
    st.set_defaults(func=cmd_sim_sitl)

    co = sub.add_parser("config", help="the configuration schema")
    cosub = co.add_subparsers(dest="config_command", required=True)
    cd = cosub.add_parser("doc", help="every key with its default, allowed values and meaning "
                          "(configs/default.yaml; --markdown: the README table)")
    cd.add_argument("--markdown", action="store_true", help="the README table instead")
    cd.set_defaults(func=cmd_config_doc)

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

    models = sub.add_parser("models", help="export, inspect, build engines for and benchmark "
                                           "the encoder models")
    mo = models.add_subparsers(dest="models_command", required=True)
    from skyfix.models.xfeat import DEFAULT_MODEL

    e = mo.add_parser("export", help="export XFeat to ONNX + manifest (needs make train-deps)")
    e.add_argument("--out", type=Path, default=DEFAULT_MODEL.parent,
                   help=f"output folder (default: the bundled {DEFAULT_MODEL.parent})")
    e.add_argument("--opset", type=int, default=17)
    e.set_defaults(func=cmd_models_export)
    n = mo.add_parser("info", help="a model's manifest, with its sha256 verified")
    n.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL,
                   help="ONNX model (default: the bundled XFeat)")
    n.set_defaults(func=cmd_models_info)
    ms = mo.add_parser("sign", help="sign a model's manifest with an Ed25519 private key")
    ms.add_argument("target", type=Path, metavar="MODEL", help="the .onnx file")
    ms.add_argument("--key", required=True, type=Path, metavar="PEM", help="private key")
    ms.set_defaults(func=cmd_sign)
    g = mo.add_parser("engine", help="build (or find cached) the TensorRT engine of a model")
    g.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL,
                   help="ONNX model (default: the bundled XFeat)")
    g.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    g.add_argument("--size", type=_size, default=(640, 480),
                   help="optimal input WIDTHxHEIGHT (default 640x480)")
    g.add_argument("--min-size", type=_size, default=(256, 256), help="(default 256x256)")
    g.add_argument("--max-size", type=_size, default=(1280, 1024), help="(default 1280x1024)")
    g.add_argument("--calib", type=Path, help="folder of map-tile images for INT8 calibration")
    g.add_argument("--cache-dir", type=Path, help="engine cache (default ~/.cache/skyfix)")
    g.set_defaults(func=cmd_models_engine)
    k = mo.add_parser("bench", help="encoder latency/throughput/memory benchmark to JSON")
    k.add_argument("--out", type=Path, default=Path("out/bench/models.json"))
    k.add_argument("--runs", type=int, default=20, help="timed runs per size (default 20)")
    k.add_argument("--tiles", type=int, default=24, help="512 px tiles for map-build speed")
    k.add_argument("--threads", type=int, help="CPU threads (default: skyfix's choice)")
    k.set_defaults(func=cmd_models_bench)

    bench = sub.add_parser("bench", help="benchmarks of the product itself")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    bc = bsub.add_parser("crossdate", help="views of one date localised against a map pack of"
                         " another, on two-date pair sets (JSON + failure sheets)")
    bc.add_argument("--pairs", type=Path, nargs="+", required=True, metavar="DIR")
    bc.add_argument("--views", type=int, default=10, help="views per pair")
    bc.add_argument("--seed", type=int, default=0)
    bc.add_argument("--method", action="append", help="encoder (repeatable; default: the"
                    " map build default)")
    bc.add_argument("--out", type=Path, default=Path("out/bench/crossdate.json"))
    bc.set_defaults(func=cmd_bench_crossdate)

    cal = sub.add_parser("calibrate", help="camera intrinsics, camera mount and time offset")
    csub = cal.add_subparsers(dest="calibrate_command", required=True)
    cc = csub.add_parser("camera", help="intrinsics + distortion from calibration-board images")
    cc.add_argument("images", nargs="+", type=Path, help="images of the board")
    cc.add_argument("--pattern", required=True,
                    help="chessboard:COLSxROWS:SQUARE_M (inner corners) or "
                         "charuco:COLSxROWS:SQUARE_M:MARKER_M[:DICT]")
    cc.add_argument("--out", type=Path, default=Path("camera.yaml"),
                    help="OpenCV FileStorage YAML (default camera.yaml)")
    cc.add_argument("--ros", type=Path, help="also write a ROS camera_info YAML here")
    cc.add_argument("--camera-name", default="camera", help="camera_name in the ROS file")
    cc.add_argument("--min-views", type=int, default=8,
                    help="refuse with fewer usable images (default 8)")
    cc.set_defaults(func=cmd_calibrate_camera)
    cm = csub.add_parser("mount", help="camera-to-body rotation and camera time offset from "
                                       "a recorded flight with good GNSS")
    cm.add_argument("flight", type=Path, help="recorded-flight folder")
    cm.add_argument("--map", required=True, type=Path, help="map pack under the flight")
    cm.add_argument("--out", type=Path, default=Path("mount.yaml"),
                    help="OpenCV FileStorage YAML (default mount.yaml)")
    cm.add_argument("--config", type=Path, help="YAML configuration (defaults otherwise)")
    cm.add_argument("--min-frames", type=int, default=10,
                    help="refuse with fewer frames matched (default 10)")
    cm.set_defaults(func=cmd_calibrate_mount)

    co = sub.add_parser("completion", help="print a shell completion script "
                                           "(e.g. skyfix completion bash > ~/.skyfix-complete)")
    co.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    co.set_defaults(func=lambda a: print(shtab.complete(p, shell=a.shell)))
    return p


def main(argv: list[str] | None = None) -> int:
    from skyfix.runtime.apps.boundary import run_guarded

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.func(args), ["skyfix", *argv], getattr(args, "config", None))


if __name__ == "__main__":
    sys.exit(main())
