"""Which filter the Navigator runs (filter.kind, auto: the IMU filter only when the
autopilot streams an IMU), and the daemon asking for the IMU stream."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from pymavlink.dialects.v20 import ardupilotmega as mav2
from rasterio.crs import CRS
from test_daemon import _Peer  # the test module next door

from skyfix.runtime.apps.replay import _Flight
from skyfix.runtime.core.config import Config, FilterConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Fix
from skyfix.runtime.flight.assembly import assemble
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.runtime.io.telemetry import TelemetryLog
from skyfix.runtime.nav.eskf import ImuFilter
from skyfix.runtime.nav.filter import PositionFilter
from skyfix.runtime.nav.navigator import Navigator
from skyfix.sim.closed_loop import free_udp_port

FRAME = LocalFrame.at(CRS.from_epsg(31256), 0.0, 340000.0)
T0 = 1_767_225_600_000_000_000
G = 9.80665


def _fix(t_s: float) -> Fix:
    return Fix(T0 + int(t_s * 1e9), 12.0 * t_s, 340000.0, np.eye(2), 120.0, 0.0, (0.0, 0.0), 100,
               0, 0)


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


@pytest.mark.parametrize("fuse", [True, False])
def test_a_fused_fix_hands_its_measured_heading_to_the_imu_filter(fuse):
    nav = _navigator("imu", True)
    if not fuse:
        nav.cfg = replace(nav.cfg, filter=replace(nav.cfg.filter, fuse_heading=False))
    before = nav.filter.x[8]
    fix = replace(_fix(0.95), heading_err_deg=-2.0, heading_sigma_deg=0.2)
    assert nav.fuse(fix)[1].accepted
    moved = np.degrees(nav.filter.x[8] - before)
    assert (moved < -1.0) if fuse else moved == 0.0  # the 1-deg prior yields to 0.2 deg
    unmeasured = replace(_fix(0.99), heading_err_deg=-2.0)  # no heading_sigma_deg: skipped
    before = nav.filter.x[8]
    nav.fuse(unmeasured)
    assert nav.filter.x[8] == pytest.approx(before, abs=1e-4)


def test_auto_refuses_an_imu_noisier_than_the_filter_assumes():
    """PX4 SIH's HIGHRES_IMU (one ~5 ms average per 20 ms): about 1 m/s^2 and 0.1 rad/s of
    noise per sample, 0.14 m/s^2/rtHz and 0.014 rad/s/rtHz, against the 0.01 and 0.001 the
    filter assumes; the IMU filter trusted itself over the fixes and drifted 10-70 m beyond
    its covariance. auto runs the constant-velocity filter instead, and says why."""
    cfg = Config()
    nav = Navigator(None, FRAME, cfg)
    rng = np.random.default_rng(0)
    t = T0 + np.arange(50) * 20_000_000
    nav.on_imu(t, [0.0, 0.0, -G] + rng.normal(0.0, 1.0, (50, 3)),
               rng.normal(0.0, 0.1, (50, 3)), np.zeros((50, 3)))
    for t_s in (0.8, 0.9):
        nav.fuse(_fix(t_s))
    assert isinstance(nav.filter, PositionFilter) and nav.filter.initialized
    assert nav.filter_kind == "cv" and "IMU noise" in nav.filter_note


def test_auto_says_why_it_runs_the_constant_velocity_filter_without_an_imu():
    nav = Navigator(None, FRAME, Config())
    assert nav.filter_kind == "cv" and nav.filter_note == "chosen at the first fix"
    for t_s in (0.8, 0.9):  # the filter starts from two fixes
        nav.fuse(_fix(t_s))
    assert nav.filter_kind == "cv" and nav.filter_note == "no IMU sample yet"
    nav = Navigator(None, FRAME, Config())
    nav.on_imu(np.array([T0]), [[0.0, 0.0, -G]], [[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]])
    for t_s in (2.4, 2.5):  # the only sample is 2.5 s old
        nav.fuse(_fix(t_s))
    assert nav.filter_kind == "cv" and nav.filter_note == "no IMU sample in the last second"


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


def _accelerate_then_cruise() -> np.ndarray:
    """[201, 8] imu rows (TelemetryLog layout) of PX4's 50 Hz HIGHRES_IMU, level, heading
    north: 3 m/s^2 north for 1 s, then 3 m/s cruise for 3 s."""
    k = np.arange(201)
    rows = np.zeros((201, 8))
    rows[:, 0], rows[:, 1], rows[:, 3] = T0 + k * 20_000_000, np.where(k < 50, 3.0, 0.0), -G
    return rows


def test_daemon_estimate_follows_the_imu_received_since_the_last_frame():
    """Seen on PX4 SITL: frames queued and were dropped for up to 4 s while the aircraft
    accelerated, then cruised; the estimate was the last frame's state predicted with
    its last IMU sample held, 30-60 m off within 3 s. The output thread now carries its
    copy of the filter through the HIGHRES_IMU samples received since that frame."""
    cfg = Config()
    cfg = replace(cfg, filter=replace(cfg.filter, kind="imu"),
                  daemon=replace(cfg.daemon, autopilot="px4"))
    daemon = Daemon(assemble(cfg, None, FRAME, None), LatestFrameQueue(2))
    for row in _accelerate_then_cruise():
        t, ms = int(row[0]), int(row[0] - T0) // 1_000_000
        daemon.telemetry.add(mav2.MAVLink_attitude_message(ms, 0.0, 0.0, 0.0, 0, 0, 0), t)
        daemon.telemetry.add(mav2.MAVLink_highres_imu_message(
            ms * 1000, *row[1:7], 0, 0, 0, 1000, 0, 0, 20, 0x3F), t)
    daemon._feed_imu(T0 + 990_000_000)  # the last frame, still accelerating
    for t_s in (0.0, 0.1):  # two fixes on the track start the filter
        daemon.nav.fuse(Fix(T0 + int(t_s * 1e9), 0.0, 340000.0 + 1.5 * t_s**2, np.eye(2) * 0.01,
                            120.0, 0.0, (0.0, 0.0), 100, 0, 0))
    assert daemon.nav.filter_kind == "imu"
    daemon.publish()
    for k in range(1, 31):  # the send slots of the next 3 s, no frame in between
        est = daemon.estimate(T0 + 1_000_000_000 + k * 100_000_000)
    assert est.north_m == pytest.approx(1.5 + 3.0 * 3.0, abs=1.0)  # held: 1.5 + 9 + 13.5 m
    assert est.vn_mps == pytest.approx(3.0, abs=0.3)  # held: 12 m/s


def test_replay_sends_estimates_carried_by_the_imu_between_frames():
    """Replay, like the daemon, feeds the IMU up to each send slot, not only up to frames."""
    cfg = Config()
    cfg = replace(cfg, filter=replace(cfg.filter, kind="imu"))
    imu = _accelerate_then_cruise()
    att = np.c_[imu[:, 0], np.zeros((len(imu), 3))]
    log = TelemetryLog(att, np.zeros((0, 8)), np.zeros((0, 7)), 0, 0, imu=imu)
    nav = Navigator(None, FRAME, cfg)
    seen = imu[imu[:, 0] <= T0 + 990_000_000]  # the last frame's, still accelerating
    nav.on_imu(seen[:, 0], seen[:, 1:4], seen[:, 4:7], np.zeros((len(seen), 3)))
    for t_s in (0.0, 0.1):
        nav.fuse(Fix(T0 + int(t_s * 1e9), 0.0, 340000.0 + 1.5 * t_s**2, np.eye(2) * 0.01,
                     120.0, 0.0, (0.0, 0.0), 100, 0, 0))
    sent = []

    def tick(now_ns, est, heading_deg=None):
        sent.append(est)
        return SimpleNamespace(messages=[], position=None)

    chain = SimpleNamespace(cfg=cfg, navigator=nav, tick=tick,
                            policy=SimpleNamespace(gnss=None))  # no GNSS in the log
    flight = _Flight(chain, SimpleNamespace(telemetry=log), T0 + 1_000_000_000, 0.0, None)
    flight.send_until(T0 + 4_050_000_000)  # no frame for 3 s
    assert sent[-1].t_ns == T0 + 4_000_000_000
    assert sent[-1].north_m == pytest.approx(1.5 + 3.0 * 3.0, abs=1.0)
    assert sent[-1].vn_mps == pytest.approx(3.0, abs=0.3)
