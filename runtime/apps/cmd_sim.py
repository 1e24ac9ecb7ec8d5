"""`skyfix sim ...`: simulated flights, the autopilot emulator, SITL."""

from __future__ import annotations

import argparse
from pathlib import Path

from skyfix.runtime.apps import args


def cmd_sim_flight(a: argparse.Namespace) -> None:
    from skyfix.sim.flight import FlightSpec, simulate_flight

    spec = FlightSpec(agl_m=a.agl, duration_s=a.duration, fps=a.fps, seed=a.seed)
    summary = simulate_flight(a.ortho, a.out, spec, render_from=a.render_from, dem=a.dem)
    print(f"wrote {summary.frames} frames to {a.out}")


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

    args.log_to_stderr()
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

    args.log_to_stderr()
    spec = SitlSpec(agl_m=a.agl, fps=a.fps, laps=a.laps, gnss_off_after_s=a.gnss_off_after,
                    blanks=tuple(a.blank), gps_delay_ms=a.gps_delay_ms,
                    spoof_after_s=a.spoof[0] if a.spoof else 0.0,
                    spoof_mps=a.spoof[1] if a.spoof else 0.0)
    if a.autopilot == "px4" and a.config is None:
        from skyfix.sim.sitl_px4 import sim_config

        cfg = sim_config()
    else:
        cfg = load_config(a.config)
    mode = a.gnss_mode or ("always" if a.autopilot == "px4" else "ekf-source")
    cfg = replace(cfg, gnss=replace(cfg.gnss, mode=mode))
    result = run_sitl(a.ortho, a.out, spec, cfg, a.map, a.binary, a.autopilot)
    print(json.dumps({k: v for k, v in result.items() if k not in ("daemon", "params")},
                     indent=2))
    print(f"wrote {a.out / 'report.json'}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's commands on the root parser's subparsers."""
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
                                      "GNSS switched off, skyfix as GPS 2 (PX4: EKF2 "
                                      "auxiliary global position); writes report.json")
    st.add_argument("--ortho", required=True, type=Path, help="map orthophoto (GeoTIFF)")
    st.add_argument("--autopilot", default="arducopter", choices=("arducopter", "px4"))
    st.add_argument("--binary", type=Path,
                    help="SITL binary (default: ../shared/sitl/ardupilot/arducopter); for "
                         "px4 the folder with bin/px4 and etc/ (default: ../shared/sitl/px4)")
    st.add_argument("--map", type=Path, help="map pack of the ortho (built if not given)")
    st.add_argument("--config", type=Path, help="YAML configuration (defaults otherwise)")
    st.add_argument("--agl", type=float, default=80.0, help="mission height above ground, m")
    st.add_argument("--fps", type=float, default=2.0, help="camera frames per second")
    st.add_argument("--laps", type=int, default=1, help="laps of the mission rectangle")
    st.add_argument("--gnss-off-after", type=float, default=60.0, metavar="SECONDS",
                    help="switch the simulated GNSS off this long after arming (< 0: never)")
    st.add_argument("--blank", type=args.pair, action="append", default=[],
                    metavar="START:SECONDS", help="black camera frames (repeatable)")
    st.add_argument("--gps-delay-ms", type=int, default=0, help="GPS2_DELAY_MS to set")
    st.add_argument("--spoof", type=args.pair, metavar="START:MPS",
                    help="from START s after arming the simulated GNSS drifts north at MPS m/s")
    st.add_argument("--gnss-mode", choices=("always", "ekf-source"),
                    help="hand-over: ekf-source (arducopter's default) also switches EKF3 "
                         "to source set 2 (position from skyfix, no GPS velocity) on GNSS "
                         "loss; px4 has no source sets (default always)")
    st.add_argument("--out", required=True, type=Path)
    st.set_defaults(func=cmd_sim_sitl)
