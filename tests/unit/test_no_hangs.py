"""Loops driven by input data are bounded: replay and the daemon fed backwards,
duplicated, negative and huge time stamps finish (or refuse in one line) within a time
limit, and a map build that would make an absurd number of tiles asks for --force."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import restamp, small_pack
from link_support import RawPeer, make_daemon

from skyfix.maps.build import build_pack
from skyfix.models.features import RootSiftEncoder
from skyfix.runtime.apps.cli import main
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.types import Frame
from skyfix.sim.closed_loop import free_udp_port
from skyfix.sim.flight import FlightSpec, simulate_flight
from skyfix.sim.sample import sample_ortho

DAY_NS = 86_400 * 10**9


@pytest.fixture(scope="module")
def flight_and_pack(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hangs")
    flight = simulate_flight(sample_ortho(), root / "flight", FlightSpec(duration_s=3.0, fps=1.0),
                             progress=False)
    del flight
    return root / "flight", small_pack(root, 300)


CASES = {
    "a frame a day late": lambda t: [*t[:-1], t[-1] + DAY_NS],
    "backwards": lambda t: t[::-1],
    "duplicated": lambda t: [t[0]] * len(t),
    "a week apart": lambda t: [t[0] + i * 7 * DAY_NS for i in range(len(t))],
}
REFUSED = {
    "negative": lambda t: [-x for x in t],
    "beyond int64": lambda t: [x + 2**70 for x in t],
    "zero": lambda t: [0] * len(t),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_replay_of_odd_time_stamps_finishes_with_bounded_output(case, flight_and_pack,
                                                                tmp_path, capfd):
    flight, pack = flight_and_pack
    odd = restamp(flight, tmp_path / "flight", CASES[case])
    start = time.monotonic()
    code = main(["replay", str(odd), "--map", str(pack), "--out", str(tmp_path / "out")])
    assert time.monotonic() - start < 60.0
    err = [x for x in capfd.readouterr().err.splitlines() if x.startswith("skyfix:")]
    assert code in (0, 2) and len(err) == (code == 2), err
    tlog = tmp_path / "out" / "gps_input.tlog"
    if tlog.exists():  # at most lock budget + 30 s of 10 Hz messages per gap
        assert tlog.stat().st_size < 200_000


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_replay_refuses_impossible_time_stamps_in_one_line(case, flight_and_pack, tmp_path,
                                                           capfd):
    flight, pack = flight_and_pack
    odd = restamp(flight, tmp_path / "flight", REFUSED[case])
    assert main(["replay", str(odd), "--map", str(pack), "--out", str(tmp_path / "o")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2000..2100" in err[0]


def test_the_daemon_keeps_its_output_and_stops_on_time_under_odd_frame_stamps():
    """Frames stamped negative, beyond int64, a day off, repeated and backwards: refused
    as mis-stamped, never a fix, 10 Hz to the autopilot, and a prompt stop."""
    port = free_udp_port()
    daemon = make_daemon(port)
    autopilot = RawPeer(port)
    stop = threading.Event()
    runner = threading.Thread(target=daemon.run, args=(stop,))
    runner.start()
    now = time.time_ns()
    stamps = [-5, 2**70, now - DAY_NS, now + DAY_NS, now, now, now - 10**9, 0, -(2**70)]
    try:
        autopilot.pump(0.3)
        for i, t in enumerate(stamps):
            daemon.queue.put(Frame(i, t, np.full((48, 64, 3), i, np.uint8)))
            autopilot.pump(0.15)
    finally:
        stop.set()
        stopped = time.monotonic()
        runner.join(10.0)
    assert not runner.is_alive() and time.monotonic() - stopped < 6.0
    assert daemon.stats.mis_stamped_frames >= len(stamps) - 2 and daemon.stats.fixes == 0
    gps = autopilot.gps_times()
    assert len(gps) >= 10 and np.diff(gps).max() < 0.3
    assert all(m.fix_type == 0 for m in autopilot.of("GPS_INPUT"))


def test_a_build_of_millions_of_tiles_asks_for_force(tmp_path):
    start = time.monotonic()
    with pytest.raises(SkyfixError, match="3,814,209 tiles.*--force") as err:
        build_pack([sample_ortho()], tmp_path / "pack", RootSiftEncoder(), gsds_m=[0.001],
                   progress=False)
    assert "\n" not in str(err.value) and time.monotonic() - start < 60.0
    assert not (tmp_path / "pack").exists() and not (tmp_path / ".pack.partial").exists()
