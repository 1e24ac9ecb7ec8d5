"""Fuzzing the flight-log readers with truncated and mutated real logs: the ArduCopter
DataFlash .bin and PX4 .ulg from ../shared/data/flight_logs (skipped when absent), the
real ArduPlane .tlog, and a sim-written tlog. Each read ends as a TelemetryLog of sane
arrays or a one-line SkyfixError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from fuzz_support import fuzz, sim_tlog
from hypothesis import given
from hypothesis import strategies as st

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.io.logs import read_telemetry
from skyfix.runtime.io.telemetry import TelemetryLog

HEAD_BYTES = 256 * 1024  # fuzz the first part of each log: keeps every example fast
REAL = {
    "bin": "flight_logs/dronekit-la-testdata_log171.bin",
    "ulg": "flight_logs/pyulog_sample_log_small.ulg",
    "tlog": "cuav_cmac_2018-08-05/flight.tlog",
}


class Heads(dict):
    """{suffix: first HEAD_BYTES of that log}; a short repr for hypothesis' reports."""

    def __repr__(self) -> str:
        return f"Heads({sorted(self)})"


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> Heads:
    """First HEAD_BYTES of each log that is present, by suffix."""
    out = Heads({"sim.tlog": sim_tlog(tmp_path_factory.mktemp("logs") / "sim.tlog").read_bytes()})
    for suffix, rel in REAL.items():
        if (SHARED_DATA / rel).is_file():
            out[suffix] = (SHARED_DATA / rel).read_bytes()[:HEAD_BYTES]
    return out


def read_or_refuse(path: Path) -> TelemetryLog | None:
    try:
        log = read_telemetry(path)
    except SkyfixError as exc:
        assert "\n" not in str(exc) and str(exc)
        return None
    assert isinstance(log, TelemetryLog) and len(log.att) and len(log.pos)
    for arr, width in ((log.att, 4), (log.pos, 8), (log.gnss, 7)):
        assert arr.ndim == 2 and arr.shape[1] == width
        assert np.all(np.diff(arr[:, 0]) >= 0) or np.isnan(arr[:, 0]).any()
    return log


def mutate(data, blob: bytes) -> bytes:
    buf = bytearray(blob)
    for p in data.draw(st.lists(st.integers(0, len(buf) - 1), max_size=8)):
        buf[p] = data.draw(st.integers(0, 255))
    return bytes(buf[:data.draw(st.integers(0, len(buf)))])


def fuzz_one(heads, key: str, data, tmp_path_factory) -> None:
    if key not in heads:
        pytest.skip(f"real data not available: {SHARED_DATA / REAL[key]} "
                    "(tests read ../shared/data)")
    suffix = "." + key.split(".")[-1]
    path = tmp_path_factory.mktemp("log") / f"mutated{suffix}"
    path.write_bytes(mutate(data, heads[key]))
    read_or_refuse(path)


@fuzz(15)
@given(data=st.data())
def test_mutated_dataflash_bin(heads, tmp_path_factory, data):
    fuzz_one(heads, "bin", data, tmp_path_factory)


@fuzz(15)
@given(data=st.data())
def test_mutated_px4_ulog(heads, tmp_path_factory, data):
    fuzz_one(heads, "ulg", data, tmp_path_factory)


@fuzz(15)
@given(data=st.data())
def test_mutated_real_tlog(heads, tmp_path_factory, data):
    fuzz_one(heads, "tlog", data, tmp_path_factory)


@fuzz(20)
@given(data=st.data())
def test_mutated_sim_tlog(heads, tmp_path_factory, data):
    fuzz_one(heads, "sim.tlog", data, tmp_path_factory)


@fuzz(20)
@given(blob=st.binary(max_size=2000),
       suffix=st.sampled_from([".bin", ".log", ".ulg", ".tlog", ".csv"]))
def test_random_bytes_under_every_log_suffix(tmp_path_factory, blob, suffix):
    path = tmp_path_factory.mktemp("log") / f"random{suffix}"
    path.write_bytes(blob)
    read_or_refuse(path)
