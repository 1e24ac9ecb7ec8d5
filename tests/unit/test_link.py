"""The daemon's link against an attacker on the same network, over real UDP sockets on
127.0.0.1: output goes to the autopilot alone, floods of new senders neither stop nor
slow it, forged signing timestamps cannot shut a signed link, and a thread that dies
ends `Daemon.run` with its exception instead of a clean stop."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from link_support import FRAME, RawPeer, make_daemon, vehicle_heartbeat
from pymavlink.dialects.v20 import ardupilotmega as mav2

from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.flight.assembly import assemble
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.runtime.io.mavlink import setup_signing
from skyfix.runtime.io.telemetry import open_link
from skyfix.sim.closed_loop import free_udp_port

KEY = bytes(range(7, 39))


def signed(daemon: Daemon, tmp_path, refuse_unsigned: bool = True) -> Daemon:
    path = tmp_path / "signing.key"
    path.write_bytes(KEY)
    path.chmod(0o600)
    cfg = daemon.cfg
    cfg = replace(cfg, output=replace(cfg.output, signing_key=str(path),
                                      refuse_unsigned=refuse_unsigned,
                                      signing_state=str(tmp_path / "signing_timestamp")))
    return Daemon(assemble(cfg, None, daemon.chain.frame, None), daemon.queue)


def run_with_fix(daemon: Daemon, steps) -> BaseException | None:
    """Run `daemon` with a fresh filter while `steps()` runs; the exception `run` raised."""
    now = time.time_ns()
    daemon.nav.filter.initialize(now, np.zeros(2), np.eye(2), np.zeros(2), np.eye(2) * 0.1)
    daemon.nav.last_fix_t_ns = now + int(60e9)
    daemon.publish()
    stop, raised = threading.Event(), []

    def target() -> None:
        try:
            daemon.run(stop)
        except BaseException as exc:  # what the process would exit with
            raised.append(exc)

    runner = threading.Thread(target=target)
    runner.start()
    end = time.monotonic() + 5.0
    while daemon._conn is None and time.monotonic() < end:  # the link is open
        time.sleep(0.01)
    try:
        steps()
    finally:
        stop.set()
        runner.join(15.0)
    assert not runner.is_alive()
    return raised[0] if raised else None


def test_output_goes_to_the_autopilot_only():
    port = free_udp_port()
    daemon = make_daemon(port)
    autopilot, ground, late_impostor = (RawPeer(port), RawPeer(port, system_id=255),
                                        RawPeer(port))

    def steps():
        ground.send(vehicle_heartbeat())  # another system's heartbeat names no peer
        autopilot.pump(0.6)
        for _ in range(10):  # the same system id from another address, once pinned
            late_impostor.send(vehicle_heartbeat())
            ground.send(vehicle_heartbeat())
        autopilot.pump(0.6)
        ground.drain()
        late_impostor.drain()

    assert run_with_fix(daemon, steps) is None
    assert len(autopilot.of("GPS_INPUT")) >= 8 and autopilot.of("HEARTBEAT")
    assert not ground.got and not late_impostor.got
    for p in (autopilot, ground, late_impostor):
        p.close()


def test_configured_peer_wins_over_an_earlier_impostor():
    port = free_udp_port()
    autopilot = RawPeer(port)
    impostor = RawPeer(port)
    daemon = make_daemon(port, peer=f"127.0.0.1:{autopilot.address[1]}")

    def steps():
        impostor.pump(0.4)  # first to send a vehicle heartbeat, but not the configured peer
        autopilot.pump(0.6)
        impostor.pump(0.2)

    assert run_with_fix(daemon, steps) is None
    assert len(autopilot.of("GPS_INPUT")) >= 4
    assert not impostor.got


FLOOD = """
import socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
junk = bytes.fromhex(sys.argv[3])
kept, end, sent = [], time.monotonic() + seconds, 0
while time.monotonic() < end:
    batch = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(50)]
    for s in batch:
        s.sendto(junk, ("127.0.0.1", port))
        s.sendto(b"\\xfd\\x09garbage", ("127.0.0.1", port))
        sent += 2
    kept += batch[:1]  # a few stay open to see what they receive
    for s in batch[1:]:
        s.close()
    time.sleep(0.005)
time.sleep(0.3)
got = 0
for s in kept:
    s.setblocking(False)
    try:
        s.recv(65535)
        got += 1
    except BlockingIOError:
        pass
print(sent, got)
"""


def test_a_flood_of_new_senders_neither_stops_nor_slows_the_output():
    """Thousands of datagrams from new source ports (each a new "client" for pymavlink's
    UDP server), sent by another process while the autopilot listens: 10 Hz output to it
    alone, nothing to them."""
    port = free_udp_port()
    daemon = make_daemon(port)
    autopilot = RawPeer(port)
    junk = vehicle_heartbeat().pack(mav2.MAVLink(None, 1, 1)).hex()
    result = []

    def steps():
        autopilot.pump(0.5)
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(port), "2.0", junk],
                                 stdout=subprocess.PIPE, text=True)
        autopilot.pump(2.0)
        result.append(flood.communicate(timeout=30)[0].split())
        autopilot.pump(0.3)

    assert run_with_fix(daemon, steps) is None
    sent, answered = (int(x) for x in result[0])
    assert sent >= 2000 and answered == 0  # nobody but the autopilot heard anything
    t = autopilot.gps_times()
    assert len(t) >= 20 and np.diff(t).max() < 0.3
    assert daemon.stats.sent >= 20
    autopilot.close()


def test_forged_signing_timestamps_do_not_shut_a_signed_link(tmp_path):
    """Packets signed with a wrong key and stamped near 2^48, on the autopilot's own stream
    and before it speaks: refused, and they move no signing state."""
    port = free_udp_port()
    daemon = signed(make_daemon(port), tmp_path)
    forger = RawPeer(port, key=bytes(32), stamp=2**48 - 1000)
    autopilot = RawPeer(port, key=KEY)

    heard = []

    def steps():
        for _ in range(20):
            forger.send(vehicle_heartbeat())
        time.sleep(0.2)
        autopilot.pump(0.8)
        heard.append(daemon.stats.messages)
        forger.send(vehicle_heartbeat())  # once more, on the stream now known
        time.sleep(0.1)
        autopilot.pump(0.5)
        heard.append(daemon.stats.messages)
        forger.drain()

    assert run_with_fix(daemon, steps) is None
    got = autopilot.of("GPS_INPUT")
    assert len(got) >= 6 and all(m.get_signed() for m in got)
    assert heard[0] >= 8 and heard[1] >= heard[0] + 5  # genuine heartbeats taken throughout
    assert not forger.got


def test_an_unsigned_heartbeat_cannot_name_the_peer_of_a_signed_link(tmp_path):
    port = free_udp_port()
    daemon = signed(make_daemon(port), tmp_path, refuse_unsigned=False)
    impostor = RawPeer(port)
    autopilot = RawPeer(port, key=KEY)

    def steps():
        impostor.pump(0.4)
        autopilot.pump(0.6)
        impostor.drain()

    assert run_with_fix(daemon, steps) is None
    assert autopilot.of("GPS_INPUT") and not impostor.got


def test_signature_is_checked_before_its_timestamp_is_trusted():
    """At the parser: a forged stamp near 2^48 on a new stream, then the genuine sender
    on that stream is still accepted (pymavlink alone would refuse it as old)."""
    receiver = mav2.MAVLink(None, 1, 191)
    receiver.robust_parsing = True
    setup_signing(receiver, KEY, refuse_unsigned=True)
    forger, genuine = mav2.MAVLink(None, 1, 1), mav2.MAVLink(None, 1, 1)
    setup_signing(forger, bytes(32), refuse_unsigned=True)
    forger.signing.timestamp = 2**48 - 10
    setup_signing(genuine, KEY, refuse_unsigned=True)
    before = receiver.signing.timestamp
    forged = receiver.parse_buffer(vehicle_heartbeat().pack(forger))
    assert [m.get_type() for m in forged] == ["BAD_DATA"]
    assert receiver.signing.stream_timestamps == {} and receiver.signing.timestamp == before
    ok = receiver.parse_buffer(vehicle_heartbeat().pack(genuine))
    assert [m.get_type() for m in ok] == ["HEARTBEAT"] and ok[0].get_signed()
    replayed = receiver.parse_buffer(bytes(ok[0].get_msgbuf()))
    assert [m.get_type() for m in replayed] == ["BAD_DATA"]  # the same stamp again


def test_a_thread_that_dies_ends_run_with_its_exception():
    port = free_udp_port()
    daemon = make_daemon(port)
    autopilot = RawPeer(port)

    def broken_listener(msg, t_ns):
        raise RuntimeError("listener bug")

    daemon.listeners.append(broken_listener)
    start = time.monotonic()
    exc = run_with_fix(daemon, lambda: autopilot.pump(1.0))
    assert isinstance(exc, RuntimeError) and "listener bug" in str(exc)
    assert time.monotonic() - start < 10.0
    assert daemon._conn is None  # the link was closed on the way out


@pytest.mark.parametrize("link", ["udpin:127.0.0.1", "udpin:127.0.0.1:port",
                                  "udpin:127.0.0.1:70000", "tcp::5760",
                                  "/dev/ttyUSB0,fast"])
def test_a_malformed_link_is_one_line_before_any_thread(link):
    cfg = Config()
    cfg = replace(cfg, daemon=replace(cfg.daemon, link=link))
    with pytest.raises(SkyfixError) as err:
        Daemon(assemble(cfg, None, FRAME, None), LatestFrameQueue(2))
    assert "\n" not in str(err.value)


def test_open_link_refuses_a_malformed_peer():
    with pytest.raises(SkyfixError, match="peer"):
        open_link("udpin:127.0.0.1:0", 1, 191, peer="127.0.0.1")


def test_the_systemd_unit_restarts_a_failed_daemon_with_a_back_off():
    from pathlib import Path

    unit = (Path(__file__).resolve().parents[2] / "configs" / "skyfix.service").read_text()
    for key in ("Restart=always", "RestartSteps=", "RestartMaxDelaySec=",
                "StartLimitIntervalSec=0"):
        assert key in unit


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.0.0.1:port", ":14550", "10.0.0.1:99999"])
def test_a_malformed_peer_is_one_line_before_any_thread(peer):
    cfg = Config()
    cfg = replace(cfg, daemon=replace(cfg.daemon, link="udpin:127.0.0.1:0", peer=peer))
    with pytest.raises(SkyfixError, match="daemon.peer") as err:
        Daemon(assemble(cfg, None, FRAME, None), LatestFrameQueue(2))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec", ["udpin:127.0.0.1:0", "udp:127.0.0.1:0"])
def test_every_udp_server_spec_answers_the_autopilot_alone(spec):
    from skyfix.runtime.io.link import AutopilotUDP

    conn = open_link(spec, 1, 191)
    try:
        assert isinstance(conn, AutopilotUDP) and not conn.ready
    finally:
        conn.close()
