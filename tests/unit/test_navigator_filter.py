"""Which filter the Navigator runs (filter.kind, auto: the IMU filter only when the
autopilot streams an IMU), and the daemon asking for the IMU stream."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from pymavlink.dialects.v20 import ardupilotmega as mav2
from rasterio.crs import CRS
from test_daemon import _Peer  # the test module next door

from skyfix.runtime.core.config import Config, FilterConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Fix
from skyfix.runtime.flight.assembly import assemble
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.runtime.nav.eskf import ImuFilter
from skyfix.runtime.nav.filter import PositionFilter
from skyfix.runtime.nav.navigator import Navigator
from skyfix.sim.closed_loop import free_udp_port

FRAME = LocalFrame.at(CRS.from_epsg(31256), 0.0, 340000.0)
T0 = 1_767_225_600_000_000_000


def _fix(t_s: float) -> Fix:
    return Fix(T0 + int(t_s * 1e9), 12.0 * t_s, 340000.0, np.eye(2), 120.0, 0.0, 0.0, 100, 0, 0)


def _navigator(kind: str, imu: bool) -> Navigator:
    cfg = Config()
    nav = Navigator(None, FRAME, replace(cfg, filter=replace(cfg.filter, kind=kind)))
    if imu:  # 1 s of a level IMU at 100 Hz
        t = T0 + np.arange(100) * 10_000_000
        nav.on_imu(t, np.tile([0.0, 0.0, -9.80665], (100, 1)), np.zeros((100, 3)),
                   np.tile([0.0, 0.0, np.pi / 2], (100, 1)))
    for t_s in (0.8, 0.9):  # two fixes that agree start the filter
        nav.fuse(_fix(t_s))
    return nav


@pytest.mark.parametrize("kind, imu, expect", [
    ("auto", True, ImuFilter), ("auto", False, PositionFilter),
    ("cv", True, PositionFilter), ("imu", True, ImuFilter)])
def test_the_filter_that_runs(kind, imu, expect):
    nav = _navigator(kind, imu)
    assert isinstance(nav.filter, expect) and nav.filter.initialized
    assert nav.filter_kind == ("imu" if expect is ImuFilter else "cv")
    est = nav.estimate(T0 + 950_000_000, 200.0)
    assert est is not None and est.valid
    assert est.east_m == pytest.approx(12.0 * 0.95, abs=0.5) and est.vn_mps == pytest.approx(
        0.0, abs=1.0) and est.ve_mps == pytest.approx(12.0, abs=1.5)


def test_unknown_filter_kind_is_refused():
    with pytest.raises(SkyfixError, match="filter.kind"):
        FilterConfig(kind="ukf")


def test_daemon_asks_for_the_imu_and_hands_it_over():
    port = free_udp_port()
    cfg = Config()
    cfg = replace(cfg, daemon=replace(cfg.daemon, link=f"udpin:127.0.0.1:{port}",
                                      link_timeout_s=0.5))
    daemon = Daemon(assemble(cfg, None, FRAME, None), LatestFrameQueue(2))
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,))
    runner.start()
    peer = _Peer(port)
    try:
        peer.pump(0.6)
        for k in range(5):
            peer.conn.mav.send(mav2.MAVLink_attitude_message(k, 0.0, 0.0, 1.0, 0, 0, 0))
            peer.conn.mav.send(mav2.MAVLink_scaled_imu_message(k, 0, 0, -1000, 0, 0, 0,
                                                               0, 0, 0, 0))
        peer.pump(0.4)
    finally:
        stop.set()
        runner.join(10.0)
    asks = {(int(m.param1), int(m.param2)) for _, m in peer.of("COMMAND_LONG")
            if m.command == mav2.MAV_CMD_SET_MESSAGE_INTERVAL}
    assert asks == {(mav2.MAVLINK_MSG_ID_SCALED_IMU, 10_000),
                    (mav2.MAVLINK_MSG_ID_ATTITUDE, 20_000)}
    daemon._feed_imu(time.time_ns())
    assert daemon.nav._imu_t_ns is not None  # the samples reached the IMU filter
