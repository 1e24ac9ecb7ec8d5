"""Replay is a rehearsal of the flight: the same recorded flight fed through `skyfix replay`
and through the daemon (its MAVLink entry point, vision step and send step, driven on the
log's clock instead of the wall clock) gives the same GPS_INPUT stream, message for message."""

from __future__ import annotations

import pytest
from pymavlink import mavutil
from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from skyfix.runtime.apps.replay import replay
from skyfix.runtime.core.config import Config
from skyfix.runtime.flight.assembly import build_chain
from skyfix.runtime.flight.daemon import Daemon
from skyfix.runtime.io.camera_source import LatestFrameQueue
from skyfix.runtime.io.sources import RecordedFlight
from skyfix.sim.flight import FlightSpec, simulate_flight

ARRIVAL_NS = 300_000_000  # telemetry received ahead of the frame / slot being handled


class _RecordingDaemon(Daemon):
    """The daemon with its link replaced by a list: what it would have sent, in order."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list = []

    def send(self, msg) -> bool:
        self.sent.append(msg)
        return True


def _fly_daemon(flight_dir, pack, cfg: Config) -> list:
    flight = RecordedFlight.open(flight_dir)
    daemon = _RecordingDaemon(build_chain(cfg, pack, flight.camera), LatestFrameQueue(2),
                              link="udpin:127.0.0.1:0")
    log = mavutil.mavlink_connection(str(flight_dir / "telemetry.tlog"), dialect="ardupilotmega")
    messages = []
    while (msg := log.recv_match()) is not None:
        messages.append((int(round(msg._timestamp * 1e9)), msg))
    frames = list(flight.frames())
    t0 = frames[0].t_ns
    step = int(1e9 / cfg.filter.rate_hz)
    next_send, k = t0, 0
    def receive_until(t_ns: int) -> None:  # the receiver thread
        nonlocal k
        while k < len(messages) and messages[k][0] <= t_ns:
            daemon.on_message(messages[k][1], messages[k][0])
            k += 1

    for frame in frames:
        while next_send < frame.t_ns:  # the output thread's slots up to this capture
            receive_until(next_send + ARRIVAL_NS)
            daemon.send_slot(next_send, next_send)
            next_send += step
        receive_until(frame.t_ns + ARRIVAL_NS)
        daemon.process_frame(frame, frame.t_ns)
    receive_until(next_send + ARRIVAL_NS)
    daemon.send_slot(next_send, next_send)
    return [m for m in daemon.sent if m.get_type() == "GPS_INPUT"]


@pytest.fixture(scope="module")
def flown(tmp_path_factory, ortho_path):
    root = tmp_path_factory.mktemp("equivalence")
    simulate_flight(ortho_path, root / "flight",
                    FlightSpec(agl_m=120.0, duration_s=12.0, fps=2.0, seed=5), progress=False)
    return root


def test_replay_sends_what_the_daemon_sends(flown, ortho_pack):
    cfg = Config()
    # the daemon hears the log's GPS_RAW_INT: replay's GNSS serves (as a prior, to the
    # monitor) past the flight's end too, or the two search with different priors
    replay(flown / "flight", ortho_pack, flown / "out", cfg, 60.0, progress=False)
    log = mavutil.mavlink_connection(str(flown / "out" / "gps_input.tlog"),
                                     dialect="ardupilotmega")
    replayed = []
    while (msg := log.recv_match(type="GPS_INPUT")) is not None:
        replayed.append(msg)
    flown_msgs = _fly_daemon(flown / "flight", ortho_pack, cfg)
    assert len(replayed) == len(flown_msgs) > 100
    assert any(m.fix_type == 3 for m in replayed) and any(m.fix_type == 0 for m in replayed)
    wire = mavlink2.MAVLink(None)  # the daemon's messages as the autopilot decodes them
    for a, b in zip(replayed, flown_msgs, strict=True):
        da, db = a.to_dict(), wire.decode(bytearray(b.pack(wire))).to_dict()
        da.pop("time_usec"), db.pop("time_usec")
        da.pop("time_week_ms"), db.pop("time_week_ms")
        assert da == db
