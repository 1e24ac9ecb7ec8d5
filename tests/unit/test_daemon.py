"""The daemon's MAVLink side over real UDP sockets, its frame queue and camera capture,
and the live telemetry buffer against the recorded-log reader."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from pymavlink.dialects.v20 import ardupilotmega as mav2
from rasterio.crs import CRS

from skyfix.runtime.core.config import CameraConfig, Config, load_config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import LocalFrame
from skyfix.runtime.core.types import Frame
from skyfix.runtime.flight.assembly import assemble
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import CameraSource, LatestFrameQueue, source_kind
from skyfix.runtime.io.mavlink import signing_timestamp
from skyfix.runtime.io.signature import PersistedStamp
from skyfix.runtime.io.telemetry import TelemetryBuffer, TelemetryLog, open_link
from skyfix.sim.closed_loop import free_udp_port
from skyfix.sim.trajectory import Trajectory, Wobble, plan_lawnmower, write_tlog

REPO = Path(__file__).resolve().parents[2]
CRS_31256 = CRS.from_epsg(31256)


def _frame(i: int, t_ns: int = 0) -> Frame:
    return Frame(i, t_ns, np.full((48, 64, 3), i, np.uint8))


def test_latest_frame_queue_serves_the_newest_and_never_blocks():
    q = LatestFrameQueue(2)
    for i in range(5):
        q.put(_frame(i))
    assert q.dropped == 3  # full: the oldest went
    assert q.get(0.01).index == 4 and q.dropped == 4  # frame 3 is stale now
    start = time.monotonic()
    assert q.get(0.05) is None and time.monotonic() - start < 1.0
    with pytest.raises(SkyfixError):
        LatestFrameQueue(0)


def test_camera_source_plays_a_real_video_file(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    src = CameraSource(CameraConfig(source=str(path), queue=1)).start()
    frames = []
    while (f := src.queue.get(1.0)) is not None:
        frames.append(f)
    assert src.ended.is_set()
    src.stop()
    assert src.frames == 10 and len(frames) + src.queue.dropped == 10
    assert frames[-1].index == 9 and frames[-1].image.shape == (48, 64, 3)
    assert abs(int(frames[-1].image.mean()) - 180) <= 3  # the last frame, MJPEG-decoded
    assert np.all(np.diff([f.t_ns for f in frames]) > 0)


def test_camera_source_kinds_and_bad_source():
    assert source_kind("0") == "v4l2"
    assert source_kind("videotestsrc ! videoconvert ! appsink") == "gstreamer"
    assert source_kind("rtsp://10.0.0.2:8554/cam") == "rtsp"
    with pytest.raises(SkyfixError, match="camera source"):
        CameraSource(CameraConfig(source="/no/such/video.mp4"))


def test_shipped_example_configs_load():
    for name in ("ardupilot.yaml", "px4.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert cfg.filter.rate_hz >= 5.0 and cfg.daemon.link
    unit = (REPO / "configs" / "skyfix.service").read_text()
    for key in ("User=skyfix", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                "DevicePolicy=closed", "DeviceAllow="):
        assert key in unit


def test_live_buffer_answers_like_the_log_reader(tmp_path):
    rng = np.random.default_rng(0)
    plan = plan_lawnmower((0.0, 0.0, 400.0, 400.0), 50.0, 80.0, 10.0, 100.0, rng)
    traj = Trajectory(plan, Wobble.random(3.0, rng), 10.0, 120.0)
    start_ns = 1_767_225_600_000_000_000
    path = tmp_path / "t.tlog"
    write_tlog(path, traj, start_ns, 8.0, lambda en: (48.2 + en[:, 1] * 1e-5,
                                                      16.3 + en[:, 0] * 1e-5),
               0.0, 0.3, 1.0, 1.5, rng)
    log = TelemetryLog.from_tlog(path)
    buf = TelemetryBuffer(window_s=30.0)
    conn = open_link(str(path), 1, 191)
    while (msg := conn.recv_match()) is not None:
        buf.add(msg, int(round(msg._timestamp * 1e9)))
    for t in start_ns + np.array([0.5e9, 3.3e9, 7.9e9], np.int64):
        a, b = log.at(int(t)), buf.at(int(t))
        assert a == b
        assert log.gnss_at(int(t)) == buf.gnss_at(int(t))
    assert buf.at(start_ns + int(60e9)) is None  # beyond the data


class _Peer:
    """An autopilot-side pymavlink endpoint that records what the daemon sends."""

    def __init__(self, port: int) -> None:
        self.conn = open_link(f"udpout:127.0.0.1:{port}", 1, 1)
        self.got: list[tuple[float, object]] = []

    def pump(self, seconds: float, heartbeat: bool = True, garbage: bool = False) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if heartbeat:
                self.conn.mav.send(mav2.MAVLink_heartbeat_message(2, 3, 0, 0, 4, 3))
            if garbage:
                self.conn.write(b"\xfd\x09\x00\x00garbage bytes\x00\xff" * 3)
            while (m := self.conn.recv_msg()) is not None:
                if m.get_type() != "BAD_DATA":
                    self.got.append((time.monotonic(), m))
            time.sleep(0.05)

    def of(self, kind: str) -> list:
        return [(t, m) for t, m in self.got if m.get_type() == kind]


def _daemon(port: int, autopilot: str = "ardupilot", gnss_mode: str = "always",
            **output) -> Daemon:
    cfg = Config()
    cfg = replace(cfg, output=replace(cfg.output, **output),
                  gnss=replace(cfg.gnss, mode=gnss_mode, lost_after_s=0.4),
                  daemon=replace(cfg.daemon, link=f"udpin:127.0.0.1:{port}", link_timeout_s=0.5,
                                 autopilot=autopilot))
    frame = LocalFrame.at(CRS_31256, 0.0, 340000.0)
    # no frames are fed: the localiser is never asked
    return Daemon(assemble(cfg, None, frame, None), LatestFrameQueue(2))


def test_daemon_sends_gps_input_heartbeat_and_drops_the_fix(tmp_path):
    port = free_udp_port()
    daemon = _daemon(port, lock_budget_s=0.6)
    now = time.time_ns()
    daemon.nav.filter.initialize(now, np.array([10.0, -5.0]), np.eye(2) * 4.0,
                                 np.array([3.0, 4.0]), np.eye(2) * 0.1)
    daemon.nav.last_fix_t_ns = now
    daemon.publish()
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,))
    runner.start()
    peer = _Peer(port)
    try:
        peer.pump(0.8)
        peer.pump(0.6, garbage=True)  # garbage on the link: counted, never a crash
        peer.pump(0.8)
    finally:
        stop.set()
        runner.join(10.0)
    gps = peer.of("GPS_INPUT")
    t = np.array([ti for ti, _ in gps])
    assert len(gps) >= 15 and np.diff(t).max() < 0.3
    assert {m.get_srcComponent() for _, m in gps} == {191}
    assert all(m.gps_id == 1 for _, m in gps)
    fixes = [m.fix_type for _, m in gps]
    assert fixes[0] == 3 and fixes[-1] == 0  # lock budget of 0.6 s ran out
    # Each estimate is predicted to its send time: the track moves on at (3, 4) m/s.
    for _, m in gps:
        dt = (m.time_usec * 1000 - now) * 1e-9
        ne = daemon.nav.frame.lla_to_ned(m.lat * 1e-7, m.lon * 1e-7)[0]
        assert np.allclose(ne, [10.0 + 3.0 * dt, -5.0 + 4.0 * dt], atol=0.05)
        assert (m.vn, m.ve) == pytest.approx((3.0, 4.0), abs=1e-3)
    texts = [m.text for _, m in peer.of("STATUSTEXT")]
    assert any("3D fix" in x for x in texts) and any("no fix" in x for x in texts)
    hb = peer.of("HEARTBEAT")
    assert hb and hb[0][1].type == mav2.MAV_TYPE_ONBOARD_CONTROLLER
    assert {m.name for _, m in peer.of("NAMED_VALUE_FLOAT")} >= {"SF_SIGMA_M", "SF_FIXAGE"}
    assert daemon.stats.bad_messages > 0 and daemon.stats.messages > 0
    sync = peer.of("TIMESYNC")  # requests for the autopilot's clock, marked as ours
    assert len(sync) >= 2 and all(m.tc1 == 0 and m.ts1 % 1000 == 191 for _, m in sync)


@pytest.mark.parametrize("clock", ["auto", "arrival"])
def test_a_delayed_attitude_is_stamped_at_its_autopilot_time(clock):
    cfg = _daemon(free_udp_port()).cfg
    daemon = Daemon(assemble(replace(cfg, telemetry=replace(cfg.telemetry, clock=clock)),
                             None, LocalFrame.at(CRS_31256, 0.0, 340000.0), None),
                    LatestFrameQueue(2))
    mav = mav2.MAVLink(None, srcSystem=1, srcComponent=1)

    def receive(msg, t_ns: int) -> None:
        daemon.on_message(mav2.MAVLink(None).decode(bytearray(msg.pack(mav))), t_ns)

    rng = np.random.default_rng(0)
    t0, ms = time.time_ns(), 1_000_000  # our clock at the autopilot's boot
    for k in range(200):  # 4 s at 50 Hz, 2..12 ms on the link; then one held 300 ms
        roll, delay = (0.3, 300 * ms) if k == 150 else (0.0, 2 * ms + rng.integers(10 * ms))
        receive(mav2.MAVLink_attitude_message(20 * k, roll, 0, 0, 0, 0, 0),
                t0 + 20 * k * ms + delay)
        if k % 5 == 0:
            receive(mav2.MAVLink_global_position_int_message(20 * k, 0, 0, 0, 100_000, 0,
                                                             0, 0, 0), t0 + 20 * k * ms + delay)
    roll = daemon.telemetry.at(t0 + 3000 * ms + 2 * ms).roll_rad  # measured at 3.000 s
    state = daemon.telemetry.clock.state()
    if clock == "auto":
        assert state.source == "autopilot" and roll == pytest.approx(0.3, abs=0.03)
    else:  # on its arrival, 300 ms late, it is not where it was measured
        assert state.source == "arrival" and roll < 0.03


def test_daemon_reconnects_after_silence_and_counts_bad_frames():
    port = free_udp_port()
    daemon = _daemon(port)
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,))
    runner.start()
    peer = _Peer(port)
    try:
        peer.pump(0.5)
        before = daemon.stats.messages
        peer.pump(1.5, heartbeat=False)  # silence past link_timeout_s
        assert daemon.stats.link_losses >= 1
        daemon.queue.put(Frame(0, time.time_ns(), np.zeros((4, 4), np.float32)))  # not uint8
        time.sleep(0.3)
        # an image, but no attitude has arrived to rectify it with
        daemon.queue.put(Frame(1, time.time_ns(), np.zeros((480, 640, 3), np.uint8)))
        peer.conn = open_link(f"udpout:127.0.0.1:{port}", 1, 1)
        peer.pump(0.8)
    finally:
        stop.set()
        runner.join(10.0)
    assert not runner.is_alive()
    assert daemon.stats.messages > before  # heard again after reopening the link
    assert daemon.stats.bad_frames == 2 and daemon.stats.frame_errors == 0


def _run_with_filter(daemon: Daemon, peer_steps) -> None:
    now = time.time_ns()
    daemon.nav.filter.initialize(now, np.zeros(2), np.eye(2), np.zeros(2), np.eye(2) * 0.1)
    daemon.nav.last_fix_t_ns = now + int(60e9)  # a fresh fix for the whole test
    daemon.publish()
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,))
    runner.start()
    try:
        peer_steps()
    finally:
        stop.set()
        runner.join(10.0)


def _gps_raw(fix_type: int, lat_deg: float, lon_deg: float) -> mav2.MAVLink_gps_raw_int_message:
    return mav2.MAVLink_gps_raw_int_message(time.time_ns() // 1000, fix_type,
                                            round(lat_deg * 1e7), round(lon_deg * 1e7), 100000,
                                            80, 120, 0, 0, 14 if fix_type >= 3 else 0)


def test_on_loss_mode_sends_only_after_the_real_gnss_is_lost():
    port = free_udp_port()
    daemon = _daemon(port, gnss_mode="on-loss")
    peer = _Peer(port)
    marks = {}
    lat, lon = (float(v[0]) for v in daemon.nav.frame.ned_to_lla(0.0, 0.0))  # where we are

    def steps():
        for fix, seconds in ((3, 1.0), (1, 1.2)):
            marks[fix] = time.monotonic()
            end = marks[fix] + seconds
            while time.monotonic() < end:
                peer.conn.mav.send(_gps_raw(fix, lat, lon))
                peer.pump(0.1)

    _run_with_filter(daemon, steps)
    gps_t = [t for t, _ in peer.of("GPS_INPUT")]
    assert gps_t and min(gps_t) > marks[1] + 0.3  # none while GNSS had its fix
    assert len(gps_t) >= 5
    texts = [m.text for _, m in peer.of("STATUSTEXT")]
    assert any("GNSS lost" in x for x in texts)


def test_signed_link_signs_output_and_refuses_unsigned_input(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_bytes(bytes(range(32)))
    key_file.chmod(0o600)
    port = free_udp_port()
    daemon = _daemon(port, signing_key=str(key_file), refuse_unsigned=True,
                     signing_state=str(tmp_path / "stamp"))
    signed_peer = _Peer(port)
    signed_peer.conn = open_link(f"udpout:127.0.0.1:{port}", 1, 1, bytes(range(32)))
    unsigned_peer = _Peer(port)

    def steps():
        unsigned_peer.pump(0.6)
        signed_peer.pump(0.8)

    _run_with_filter(daemon, steps)
    assert daemon.stats.bad_messages > 0  # the unsigned heartbeats
    got = signed_peer.of("GPS_INPUT")
    assert got and all(m._signed for _, m in got)
    assert not unsigned_peer.of("GPS_INPUT")  # never answered: it was never heard


def _stamp_of(msg) -> int:
    """The signing timestamp of a received signed MAVLink 2 message."""
    return int.from_bytes(msg.get_msgbuf()[-12:-6], "little")


def test_signing_timestamps_never_go_back_across_a_restart(tmp_path):
    """A restart with the wall clock an hour behind what we signed before (no real-time
    clock, a clock stepped back; the autopilot signs with the true time): the new daemon
    starts past the saved stamp."""
    key_file = tmp_path / "key"
    key_file.write_bytes(bytes(range(32)))
    key_file.chmod(0o600)
    state = tmp_path / "state" / "signing_timestamp"
    ahead = signing_timestamp(time.time_ns()) + 360_000_000  # an hour ahead of the clock
    state.parent.mkdir()
    state.write_text(f"{ahead}\n")
    port = free_udp_port()
    daemon = _daemon(port, signing_key=str(key_file), signing_state=str(state))
    peer = _Peer(port)
    peer.conn = open_link(f"udpout:127.0.0.1:{port}", 1, 1, bytes(range(32)))
    peer.conn.mav.signing.timestamp = ahead + 3_000_000  # the autopilot's clock is right
    _run_with_filter(daemon, lambda: peer.pump(0.8))
    got = [m for _, m in peer.of("GPS_INPUT")]
    assert got and all(m._signed and _stamp_of(m) > ahead for m in got)
    assert int(state.read_text()) > ahead  # saved again, further on


def test_an_unusable_signing_state_costs_only_that_protection(tmp_path, caplog):
    state = tmp_path / "stamp"
    state.write_bytes(b"\xff\x00 not a number")
    stamp = PersistedStamp(state, logging.getLogger("t").warning)
    assert stamp.resume() == 0 and "unreadable" in caplog.text
    blocked = tmp_path / "file"
    blocked.write_text("")
    stamp = PersistedStamp(blocked / "stamp", logging.getLogger("t").warning)
    stamp.seen(5_000_000)  # its folder is a file: logged, not raised
    assert "cannot save" in caplog.text


def test_px4_gets_global_position_sensor_instead_of_gps_input():
    port = free_udp_port()
    daemon = _daemon(port, autopilot="px4")
    peer = _Peer(port)
    _run_with_filter(daemon, lambda: peer.pump(0.8))
    got = peer.of("GLOBAL_POSITION_SENSOR")
    assert len(got) >= 4 and not peer.of("GPS_INPUT")
    lat, lon = daemon.nav.frame.ned_to_lla(0.0, 0.0)
    m = got[0][1]
    assert abs(m.lat - lat[0] * 1e7) <= 2 and abs(m.lon - lon[0] * 1e7) <= 2
    assert m.flags == 0  # healthy: we claim the fix
