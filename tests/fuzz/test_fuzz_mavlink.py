"""Fuzzing the MAVLink input path: random bytes, mutated real (sim-written) telemetry,
truncated and oversized packets, wrong CRCs and unknown message ids, through the log
reader (`TelemetryLog.from_tlog`) and the live path (the daemon link's parser ->
`Daemon.on_message` -> `TelemetryBuffer`). Nothing may raise but SkyfixError, bad input
is counted, and intact messages around the damage still get through."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from fuzz_support import START_NS, fuzz, live_parser, offline_daemon, raw_stream, sim_tlog
from hypothesis import given
from hypothesis import strategies as st
from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.io.telemetry import TelemetryLog

RESYNC_BYTES = 1024  # after the last damaged byte, every packet must come through again


@pytest.fixture(scope="module")
def tlog(tmp_path_factory) -> Path:
    return sim_tlog(tmp_path_factory.mktemp("fuzz_mavlink") / "sim.tlog")


@pytest.fixture(scope="module")
def stream(tlog) -> list[bytes]:
    return raw_stream(tlog)


def read_or_refuse(path: Path) -> TelemetryLog | None:
    """The log, or None when refused with a one-line SkyfixError (anything else fails)."""
    try:
        log = TelemetryLog.from_tlog(path)
    except SkyfixError as exc:
        assert "\n" not in str(exc)
        return None
    for arr, width in ((log.att, 4), (log.pos, 8), (log.gnss, 7)):
        assert arr.ndim == 2 and arr.shape[1] == width
        assert np.all(np.diff(arr[:, 0]) >= 0)  # time-sorted
    assert np.isfinite(log.att).all()  # a NaN attitude never gets in
    return log


def feed(data: bytes, chunks: list[int]):
    """Parse `data` in the chunk sizes a socket might deliver, into an offline daemon;
    returns (daemon, decoded messages)."""
    mav, daemon, msgs, i = live_parser(), offline_daemon(), [], 0
    sizes = iter(chunks)
    while i < len(data):
        n = next(sizes, 64)
        got = mav.parse_buffer(data[i:i + n]) or []
        i += n
        for m in got:
            msgs.append(m)
            daemon.on_message(m, START_NS + 10**9)
    return daemon, msgs


def check_counts(daemon, msgs) -> None:
    bad = [m for m in msgs if m.get_type() == "BAD_DATA" or m.get_type().startswith("UNKNOWN")]
    assert daemon.stats.bad_messages == len(bad)
    assert daemon.stats.messages == sum(m.get_srcSystem() == 1 for m in msgs if m not in bad)
    tel = daemon.telemetry.at(START_NS + 10**9)
    if tel is not None:
        assert np.isfinite([tel.roll_rad, tel.pitch_rad, tel.yaw_rad]).all()


@fuzz(40)
@given(data=st.binary(max_size=3000))
def test_random_bytes_as_a_log_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("rand") / "random.tlog"
    path.write_bytes(data)
    read_or_refuse(path)


@fuzz(60)
@given(data=st.binary(max_size=4000), chunks=st.lists(st.integers(1, 300), max_size=30))
def test_random_bytes_on_the_live_link_are_counted(data, chunks):
    daemon, msgs = feed(data, chunks)
    check_counts(daemon, msgs)


@st.composite
def damaged(draw, total: int):
    """Byte substitutions at sorted positions of a stream of `total` bytes."""
    pos = draw(st.lists(st.integers(0, total - 1), min_size=1, max_size=8, unique=True))
    return [(p, draw(st.integers(0, 255))) for p in sorted(pos)]


@fuzz(40)
@given(data=st.data())
def test_mutated_live_stream_recovers_every_packet_away_from_the_damage(stream, data):
    blob = b"".join(stream)
    edits = data.draw(damaged(len(blob)))
    cut = data.draw(st.integers(edits[-1][0] + 1, len(blob)))  # and maybe truncated
    buf = bytearray(blob)
    for p, b in edits:
        buf[p] = b
    daemon, msgs = feed(bytes(buf[:cut]), data.draw(st.lists(st.integers(1, 500), max_size=20)))
    check_counts(daemon, msgs)
    got = {bytes(m.get_msgbuf()) for m in msgs if m.get_type() != "BAD_DATA"}
    first, last, start = edits[0][0], edits[-1][0], 0
    for packet in stream:
        end = start + len(packet)
        if end <= first or (start >= last + RESYNC_BYTES and end <= cut):
            assert packet in got, f"intact packet at byte {start} lost"
        start = end


@fuzz(30)
@given(data=st.data())
def test_mutated_and_truncated_sim_tlog(tlog, tmp_path_factory, data):
    blob = tlog.read_bytes()
    edits = data.draw(damaged(len(blob)))
    buf = bytearray(blob)
    for p, b in edits:
        buf[p] = b
    cut = data.draw(st.integers(0, len(blob)))
    path = tmp_path_factory.mktemp("mut") / "mutated.tlog"
    path.write_bytes(bytes(buf[:cut]))
    log = read_or_refuse(path)
    clean = TelemetryLog.from_tlog(tlog)
    if log is not None:
        assert len(log.att) <= len(clean.att)


def packet(msgid: int, payload: bytes, crc_extra: int, seq: int = 0) -> bytes:
    """A MAVLink 2 packet from system 1 with a correct checksum for `crc_extra`."""
    header = struct.pack("<BBBBBBBHB", 0xFD, len(payload), 0, 0, seq, 1, 1, msgid & 0xFFFF,
                         msgid >> 16)
    crc = mavlink2.x25crc(header[1:] + payload)
    crc.accumulate(bytes([crc_extra]))
    return header + payload + struct.pack("<H", crc.crc)


@st.composite
def hostile_packet(draw) -> bytes:
    kind = draw(st.sampled_from(["unknown_id", "wrong_crc", "short", "long_payload"]))
    payload = draw(st.binary(min_size=1, max_size=255))
    if kind == "unknown_id":  # ids no dialect defines (checksummed with a guessed extra)
        msgid = draw(st.integers(0, 2**24 - 1).filter(lambda i: i not in mavlink2.mavlink_map))
        return packet(msgid, payload, draw(st.integers(0, 255)))
    msgid = draw(st.sampled_from([0, 24, 30, 33]))  # HEARTBEAT, GPS_RAW_INT, ATTITUDE, GPI
    extra = mavlink2.mavlink_map[msgid].crc_extra
    good = packet(msgid, payload, extra)
    if kind == "wrong_crc":
        return good[:-2] + bytes([good[-2] ^ draw(st.integers(1, 255)), good[-1]])
    if kind == "short":  # cut inside the header or the payload
        return good[:draw(st.integers(1, len(good) - 1))]
    return good  # a known id with a payload longer or shorter than its definition


@fuzz(60)
@given(hostile=st.lists(hostile_packet(), min_size=1, max_size=6), data=st.data())
def test_hostile_packets_between_real_ones(stream, hostile, data):
    """Hostile packets spliced between real ones: each is counted or absorbed, never a
    crash, and a real packet well after the last one still arrives intact."""
    k = data.draw(st.integers(0, len(stream) - 60))
    real = stream[k:k + 60]
    blob = b"".join(real[:10]) + b"".join(hostile) + b"".join(real[10:])
    daemon, msgs = feed(blob, data.draw(st.lists(st.integers(1, 400), max_size=10)))
    check_counts(daemon, msgs)
    got = {bytes(m.get_msgbuf()) for m in msgs if m.get_type() != "BAD_DATA"}
    assert all(p in got for p in real[:10])
    tail_start = len(b"".join(real[:10]) + b"".join(hostile)) + RESYNC_BYTES
    start = len(b"".join(real[:10]) + b"".join(hostile))
    for p in real[10:]:
        if start >= tail_start:
            assert p in got
        start += len(p)


def test_nan_attitude_is_dropped_not_interpolated():
    """A well-formed ATTITUDE carrying NaN (valid CRC) must not poison the buffer."""
    daemon = offline_daemon()
    ap = mavlink2.MAVLink(None, srcSystem=1, srcComponent=1)
    for k, roll in enumerate([0.1, float("nan"), 0.1]):
        msg = mavlink2.MAVLink_attitude_message(k * 100, roll, 0.0, 0.5, 0, 0, 0)
        daemon.on_message(live_parser().parse_buffer(msg.pack(ap))[0], START_NS + k * 10**8)
        gpi = mavlink2.MAVLink_global_position_int_message(k * 100, 481858700, 163131600,
                                                            200000, 100000, 0, 0, 0, 0)
        daemon.on_message(live_parser().parse_buffer(gpi.pack(ap))[0], START_NS + k * 10**8)
    tel = daemon.telemetry.at(START_NS + 10**8)
    assert tel is not None and tel.roll_rad == pytest.approx(0.1)
    assert daemon.stats.messages == 6
