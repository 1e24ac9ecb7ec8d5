"""Shared pieces of the fuzz tests: hypothesis settings and real MAVLink input.

`fuzz(n)` sizes a property for the normal suite (n examples, the "ci" profile) or, with
HYPOTHESIS_PROFILE=long (`make fuzz`), for a long run with FUZZ_LONG_FACTOR times as many.
Only the tests read that variable; the runtime has no environment-driven state.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from pymavlink import mavutil
from pymavlink.dialects.v20 import ardupilotmega as mavlink2
from rasterio.crs import CRS

from skyfix.runtime.core.config import Config
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.flight.assembly import assemble
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.sim.trajectory import Trajectory, Wobble, plan_lawnmower, write_tlog

FUZZ_LONG_FACTOR = 50
START_NS = 1_767_225_600_000_000_000

# derandomized: the suite checks the same inputs every run. The deadline catches a hang,
# not a slow machine: a whole replay example took 12.8 s on 2 cores shared with a CI run.
settings.register_profile(
    "ci", deadline=60_000, print_blob=True, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large])
settings.register_profile(
    "long", parent=settings.get_profile("ci"), derandomize=False)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")


def fuzz(n: int) -> settings:
    """Settings for a property: `n` examples in the normal suite (each under a 60 s
    deadline: a hang fails), FUZZ_LONG_FACTOR * n in the long profile."""
    base = settings.get_profile("long" if PROFILE == "long" else "ci")
    return settings(base, max_examples=n * (FUZZ_LONG_FACTOR if PROFILE == "long" else 1))


def sim_tlog(path: Path, duration_s: float = 3.0) -> Path:
    """A short simulated flight's telemetry (what `skyfix sim flight` writes) at `path`."""
    rng = np.random.default_rng(0)
    plan = plan_lawnmower((0.0, 0.0, 400.0, 400.0), 50.0, 80.0, 10.0, 100.0, rng)
    traj = Trajectory(plan, Wobble.random(3.0, rng), 10.0, 120.0)
    write_tlog(path, traj, START_NS, duration_s,
               lambda en: (48.2 + en[:, 1] * 1e-5, 16.3 + en[:, 0] * 1e-5),
               0.0, 0.3, 1.0, 1.5, rng)
    return path


def raw_stream(tlog: Path) -> list[bytes]:
    """The packed MAVLink 2 messages of a tlog, as they would arrive on a live link."""
    conn = mavutil.mavlink_connection(str(tlog), dialect="ardupilotmega")
    out = []
    while (msg := conn.recv_match()) is not None:
        out.append(bytes(msg.get_msgbuf()))
    return out


def live_parser() -> mavlink2.MAVLink:
    """The parser a daemon link uses (pinned MAVLink 2 ardupilotmega, robust parsing)."""
    mav = mavlink2.MAVLink(None, srcSystem=1, srcComponent=191)
    mav.robust_parsing = True
    return mav


def offline_daemon() -> Daemon:
    """A daemon whose `on_message` is fed by hand (no link, no frames)."""
    cfg = Config()
    cfg = replace(cfg, daemon=replace(cfg.daemon, link="udpin:127.0.0.1:0"))
    frame = LocalFrame.at(CRS.from_epsg(31256), 0.0, 340000.0)
    return Daemon(assemble(cfg, None, frame, None), LatestFrameQueue(2))
