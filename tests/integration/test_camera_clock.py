"""Frames that lie about time: a camera whose clock is seconds off (images shifted against
the log), frames stamped backwards, a frozen camera. A shifted camera gives a confident,
consistently wrong track that no check of one fix against the next can see; the honest
GNSS of the first part of the flight can. Replay must send no 3D fix that is more than
3 sigma off in any of them, also after the GNSS is gone."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import restamp
from pymavlink import mavutil

from skyfix.runtime.apps.replay import replay
from skyfix.runtime.core.config import Config
from skyfix.sim.flight import FlightSpec, simulate_flight

SHIFT_NS = 4 * 10**9  # the images are 4 s older than their stamps say: 40 m at 10 m/s
GNSS_OFF_S = 20.0


@pytest.fixture(scope="module")
def flight_and_pack(tmp_path_factory, ortho_path, ortho_pack):
    root = tmp_path_factory.mktemp("clock")
    simulate_flight(ortho_path, root / "flight",
                    FlightSpec(agl_m=120.0, duration_s=40.0, fps=2.0, seed=11), progress=False)
    return root / "flight", ortho_pack


def texts(tlog) -> list[str]:
    log = mavutil.mavlink_connection(str(tlog), dialect="ardupilotmega")
    out = []
    while (m := log.recv_match(type="STATUSTEXT")) is not None:
        out.append(m.text)
    return out


def test_a_camera_clock_seconds_off_sends_no_wrong_fix(flight_and_pack, tmp_path):
    flight, pack = flight_and_pack
    shifted = restamp(flight, tmp_path / "shifted", lambda t: [x + SHIFT_NS for x in t])
    replay(shifted, pack, tmp_path / "out", Config(), GNSS_OFF_S, progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["fixes"] > 10  # the visual fixes themselves look fine one by one
    assert report["claims_beyond_3sigma"] == 0, report
    said = texts(tmp_path / "out" / "gps_input.tlog")
    assert any("unverified visual" in t and "off GNSS" in t for t in said), said


def test_the_same_flight_on_time_is_sent(flight_and_pack, tmp_path):
    """The control: with the clock right the estimate agrees with the GNSS, is verified,
    and is sent (3D fixes, none wrong) before and after the GNSS goes."""
    flight, pack = flight_and_pack
    replay(flight, pack, tmp_path / "out", Config(), GNSS_OFF_S, progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["claims_beyond_3sigma"] == 0 and report["est_cep95_m"] is not None
    said = texts(tmp_path / "out" / "gps_input.tlog")
    assert not any("unverified visual" in t for t in said), said


def frozen_after(flight, dst, k: int = 10):
    """A copy of `flight` whose camera freezes at frame `k`: every later row shows its image."""
    copy = restamp(flight, dst, lambda t: t)
    with open(copy / "frames.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(copy / "frames.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "file": rows[min(i, k)]["file"]} for i, r in enumerate(rows))
    return copy


@pytest.mark.parametrize("case", ["backwards", "frozen"])
def test_frames_backwards_or_frozen_send_no_wrong_fix(case, flight_and_pack, tmp_path):
    flight, pack = flight_and_pack
    odd = (restamp(flight, tmp_path / "odd", lambda t: t[::-1]) if case == "backwards"
           else frozen_after(flight, tmp_path / "odd"))
    replay(odd, pack, tmp_path / "out", Config(), GNSS_OFF_S, progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["claims_beyond_3sigma"] == 0, report
    assert sum(report["rejections"].values()) > 0  # what the frame checks refused
