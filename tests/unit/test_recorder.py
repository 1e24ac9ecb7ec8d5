"""`skyfix run --record DIR`: frames (decimated, disk-bounded with the oldest deleted
first), the telemetry and skyfix's own messages, in the recorded-flight layout that
`skyfix replay` reads."""

from __future__ import annotations

import numpy as np
import pytest
from pymavlink.dialects.v20 import ardupilotmega as mav2

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.types import Frame
from skyfix.runtime.io.recorder import FlightRecorder
from skyfix.runtime.io.sources import RecordedFlight
from skyfix.runtime.io.telemetry import TelemetryLog

CAMERA = CameraModel.from_fov(64, 48, 70.0)
T0 = 1_767_225_600_000_000_000


def _wire(msg, system=1, component=1):
    (back,) = mav2.MAVLink(None).parse_buffer(msg.pack(mav2.MAVLink(None, system, component)))
    return back


def _textured(i: int) -> np.ndarray:
    """A smooth pattern that JPEG keeps, different for each i."""
    y, x = np.mgrid[0:48, 0:64].astype(np.float64)
    bands = [127 + 100 * np.sin(x / 6.0 + i + k) * np.cos(y / 9.0 - 0.5 * i) for k in range(3)]
    return np.clip(np.stack(bands, axis=-1), 0, 255).astype(np.uint8)


def _record(root, n_frames: int, every_n: int = 1, max_bytes: int = 10**9) -> FlightRecorder:
    rec = FlightRecorder(root, CAMERA, every_n, max_bytes)
    for i in range(n_frames):
        t = T0 + i * 100_000_000
        rec.on_message(_wire(mav2.MAVLink_attitude_message(i * 100, 0.01, -0.02, 1.0 + i * 1e-3,
                                                             0, 0, 0)), t - 20_000_000)
        rec.on_message(_wire(mav2.MAVLink_global_position_int_message(
            i * 100, 481853665, 163119633, 120_000, 100_000, 0, 0, 0, 0)), t - 10_000_000)
        rec.on_frame(Frame(i, t, _textured(i)))
        rec.on_sent(_wire(mav2.MAVLink_statustext_message(6, b"skyfix: test"), 1, 191), t)
    return rec


def test_recording_reads_back_as_a_recorded_flight(tmp_path):
    rec = _record(tmp_path / "rec", 10, every_n=3)
    rec.close()
    flight = RecordedFlight.open(tmp_path / "rec")
    assert flight.camera.width == 64 and flight.camera.fx == pytest.approx(CAMERA.fx)
    frames = list(flight.frames())
    assert [f.t_ns for f in frames] == [T0 + i * 100_000_000 for i in (0, 3, 6, 9)]  # 1 in 3
    err = [np.abs(frames[1].image.astype(int) - _textured(k)).mean() for k in (3, 4)]
    assert err[0] < 5 < err[1]  # the JPEG of frame 3
    log = TelemetryLog.from_tlog(flight.telemetry_path)
    tel = log.at(T0 + 500_000_000)
    assert tel is not None and tel.alt_amsl_m == pytest.approx(120.0)
    sent = (tmp_path / "rec" / "outputs.tlog").read_bytes()
    assert sent.count(b"skyfix: test") == 10


def test_frames_rotate_oldest_first_within_the_budget(tmp_path):
    one = len(__import__("cv2").imencode(".jpg", _textured(0))[1])
    rec = _record(tmp_path / "rec", 30, max_bytes=5 * one)
    assert rec.frame_bytes <= 5 * one * 1.2 and rec.deleted >= 20
    rec.close()
    kept = [(f.t_ns - T0) // 100_000_000 for f in RecordedFlight.open(tmp_path / "rec").frames()]
    assert kept == list(range(30 - len(kept), 30))  # the newest survive, in order
    on_disk = sorted(p.name for p in (tmp_path / "rec" / "frames").iterdir())
    assert on_disk == [f"{i:06d}.jpg" for i in kept]


def test_a_recording_cut_short_still_reads(tmp_path):
    rec = _record(tmp_path / "rec", 4)  # never closed: a crash
    rec._telemetry.flush()
    flight = RecordedFlight.open(tmp_path / "rec")
    assert len(list(flight.frames())) == 4


def test_bad_recording_settings_are_one_clear_error(tmp_path):
    with pytest.raises(SkyfixError, match="at least 1"):
        FlightRecorder(tmp_path / "a", CAMERA, every_n=0)
    with pytest.raises(SkyfixError, match="budget"):
        FlightRecorder(tmp_path / "b", CAMERA, max_frame_bytes=0)



def test_fixes_csv_holds_each_frames_outcome(tmp_path):
    from skyfix.runtime.core.types import Fix, Rejection
    from skyfix.runtime.nav.navigator import FrameResult

    rec = FlightRecorder(tmp_path / "rec", CAMERA)
    fix = Fix(T0, 600.5, 340100.25, np.diag([4.0, 1.0]), 80.0, 0.1, (0.2, 0.0), 120, 7, 0)
    rec.on_result(FrameResult(T0, fix, None, "gnss", 120.0))
    rec.on_result(FrameResult(T0 + 1, Rejection(T0 + 1, "few_inliers", "9 < 15"), None,
                              "filter", 90.0))
    rec.close()
    rows = (tmp_path / "rec" / "fixes.csv").read_text().splitlines()
    assert rows == ["t_ns,status,fix_e,fix_n,fix_sigma_m",
                    f"{T0},fix,600.500,340100.250,2.000", f"{T0 + 1},few_inliers,,,"]
