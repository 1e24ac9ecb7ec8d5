"""ArduPlane output mode: MAV_CMD_EXTERNAL_POSITION_ESTIMATE as COMMAND_INT, through the
wire, and only while a fix is claimed; the daemon sends it at most once a second."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace

import numpy as np
from pymavlink.dialects.v20 import ardupilotmega as mav2
from rasterio.crs import CRS

from skyfix.runtime.core.config import Config, OutputConfig
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Estimate
from skyfix.runtime.flight.assembly import assemble
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.runtime.io.external_position import (
    EXTERNAL_POSITION_WRAP_S,
    external_position_estimate,
)

CFG = OutputConfig(lock_budget_s=2.0, max_sigma_m=20.0)


def _est(age_s: float = 0.5, sigma_m: float = 3.0) -> Estimate:
    cov = np.diag([sigma_m**2, (sigma_m / 2) ** 2])
    return Estimate(0, 10.0, -5.0, 20.0, 1.0, cov, 0.25 * np.eye(2), lat_deg=48.1853665,
                    lon_deg=16.3119633, alt_amsl_m=250.0, last_fix_age_s=age_s)


def _wire(msg):
    (back,) = mav2.MAVLink(None).parse_buffer(msg.pack(mav2.MAVLink(None, 7, 191)))
    return back


def test_external_position_estimate_fields():
    t = 1_767_225_600_123_456_789
    m = _wire(external_position_estimate(_est(), CFG, t, target_system=1))
    assert m.get_type() == "COMMAND_INT" and m.command == mav2.MAV_CMD_EXTERNAL_POSITION_ESTIMATE
    assert (m.target_system, m.target_component, m.frame) == (1, 1, mav2.MAV_FRAME_GLOBAL)
    assert (m.x, m.y) == (481853665, 163119633)
    assert m.param3 == np.float32(3.0)  # the larger 1-sigma
    assert m.param2 == 0.0 and math.isnan(m.z)
    wrapped = (t % int(EXTERNAL_POSITION_WRAP_S * 1e9)) * 1e-9
    assert 0.0 <= m.param1 < EXTERNAL_POSITION_WRAP_S
    assert m.param1 == np.float32(wrapped)


def test_no_reset_without_a_claimed_fix():
    assert external_position_estimate(_est(age_s=3.0), CFG, 0, 1) is None  # past the budget
    assert external_position_estimate(_est(sigma_m=30.0), CFG, 0, 1) is None  # too unsure
    assert external_position_estimate(Estimate.none(0), CFG, 0, 1) is None


def test_plane_mode_daemon_sends_resets_once_a_second():
    cfg = Config()
    cfg = replace(cfg, daemon=replace(cfg.daemon, autopilot="ardupilot-plane"),
                  filter=replace(cfg.filter, rate_hz=20.0))
    daemon = Daemon(assemble(cfg, None, LocalFrame.at(CRS.from_epsg(31256), 0.0, 340000.0),
                             None), LatestFrameQueue(2))
    sent: list = []
    daemon.send = lambda msg: sent.append((time.monotonic(), msg)) or True  # records the link
    daemon._heard = True  # a vehicle has been heard: hand-over verdicts are given
    daemon.estimate = lambda t_ns: replace(_est(), t_ns=t_ns)
    stop = threading.Event()
    t = threading.Thread(target=daemon._output_loop, args=(stop,))
    t.start()
    time.sleep(2.5)
    stop.set()
    t.join()
    resets = [(ts, m) for ts, m in sent if m.get_type() == "COMMAND_INT"]
    assert 2 <= len(resets) <= 3
    assert all(b - a >= 0.95 for (a, _), (b, _) in zip(resets, resets[1:], strict=False))
    assert not [m for _, m in sent if m.get_type() in ("GPS_INPUT", "GLOBAL_POSITION_SENSOR")]
