"""Readers refuse what they cannot trust in one line (or drop a broken record): camera
files that are not a mapping or have no focal length, flight descriptions of the wrong
kind, and telemetry-log records stamped in the year 586524."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from pymavlink.dialects.v20 import ardupilotmega as mav2

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.io.sources import RecordedFlight
from skyfix.runtime.io.telemetry import TelemetryLog
from skyfix.runtime.io.tlog import TlogWriter
from skyfix.sim.flight import FlightSpec, simulate_flight
from skyfix.sim.sample import sample_ortho
from skyfix.sim.trajectory import Trajectory, Wobble, plan_lawnmower, write_tlog

START_NS = 1_767_225_600_000_000_000


def sim_tlog(path: Path, duration_s: float) -> Path:
    rng = np.random.default_rng(0)
    plan = plan_lawnmower((0.0, 0.0, 400.0, 400.0), 50.0, 80.0, 10.0, 100.0, rng)
    write_tlog(path, Trajectory(plan, Wobble.random(3.0, rng), 10.0, 120.0), START_NS,
               duration_s, lambda en: (48.2 + en[:, 1] * 1e-5, 16.3 + en[:, 0] * 1e-5),
               0.0, 0.3, 1.0, 1.5, rng)
    return path

OPENCV_CAMERA = """%YAML:1.0
---
image_width: 640
image_height: 480
camera_matrix: !!opencv-matrix
  rows: 3
  cols: 3
  dt: d
  data: [ {f}, 0., 320., 0., {f}, 240., 0., 0., 1. ]
"""


@pytest.mark.parametrize("text, words", [
    (OPENCV_CAMERA.format(f="0."), "focal length"),
    (OPENCV_CAMERA.format(f="-500."), "focal length"),
    (OPENCV_CAMERA.format(f=".nan"), "camera_matrix"),
    ("%YAML:1.0\n---\n- 1\n- 2\n", "mapping"),
    ("%YAML:1.0\n---\n42\n", "OpenCV YAML"),
    ("image_width: 640\n", "OpenCV YAML"),
])
def test_camera_files_that_cannot_be_a_camera_are_one_line(tmp_path, text, words):
    path = tmp_path / "camera.yaml"
    path.write_text(text)
    with pytest.raises(SkyfixError, match=words) as err:
        CameraModel.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_camera_without_a_focal_length_cannot_even_be_made():
    with pytest.raises(SkyfixError, match="focal"):
        CameraModel(640, 480, 0.0, 0.0, 320.0, 240.0)
    with pytest.raises(SkyfixError, match="size"):
        CameraModel(0, 480, 500.0, 500.0, 320.0, 240.0)


@pytest.fixture(scope="module")
def flight(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readers")
    simulate_flight(sample_ortho(), root / "flight", FlightSpec(duration_s=1.0, fps=1.0),
                    progress=False)
    return root / "flight"


@pytest.mark.parametrize("change, words", [
    (lambda d: [1, 2], "JSON object"),
    (lambda d: {**d, "camera": 5}, "file names"),
    (lambda d: {**d, "crs": "EPSG:999999"}, "unusable crs"),
    (lambda d: {**d, "frames": None}, "file names"),
])
def test_flight_descriptions_of_the_wrong_kind_are_one_line(flight, tmp_path, change, words):
    bad = tmp_path / "flight"
    shutil.copytree(flight, bad)
    meta = json.loads((bad / "flight.json").read_text())
    (bad / "flight.json").write_text(json.dumps(change(meta)))
    with pytest.raises(SkyfixError, match=words) as err:
        RecordedFlight.open(bad)
    assert "\n" not in str(err.value)


def test_binary_and_deeply_nested_flight_descriptions_are_one_line(flight, tmp_path):
    bad = tmp_path / "flight"
    shutil.copytree(flight, bad)
    for data in (bytes(range(256)), b"[" * 100_000 + b"]" * 100_000):
        (bad / "flight.json").write_bytes(data)
        with pytest.raises(SkyfixError) as err:
            RecordedFlight.open(bad)
        assert "\n" not in str(err.value)


def test_a_tlog_record_stamped_in_the_year_586524_is_dropped(tmp_path):
    """The record is counted as bad; the log's time span stays the flight's own."""
    path = sim_tlog(tmp_path / "t.tlog", 3.0)
    good = TelemetryLog.from_tlog(path)
    writer = TlogWriter(tmp_path / "late.tlog", 1, 1)
    writer.write(mav2.MAVLink_attitude_message(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), START_NS)
    writer.close()
    late = (tmp_path / "late.tlog").read_bytes()
    far = struct.pack(">Q", 2**64 - 1) + late[8:]  # the largest stamp: the year 586524
    (tmp_path / "mixed.tlog").write_bytes(path.read_bytes() + far)
    log = TelemetryLog.from_tlog(tmp_path / "mixed.tlog")
    assert log.att[-1, 0] == good.att[-1, 0] and log.bad_bytes > good.bad_bytes


def test_a_photo_time_in_the_year_1_is_one_line(flight, tmp_path):
    from skyfix.runtime.io.sources import ImageFolder

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(flight / "frames" / "000000.jpg", folder / "IMG_00010101000000.jpg")
    with pytest.raises(SkyfixError, match="2000..2100") as err:
        ImageFolder.open(folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("start, fps, words", [
    ("2026-01-01T00:00:00Z", 0.0, "video-fps"), ("2026-01-01T00:00:00Z", -2.0, "video-fps"),
    ("0001-01-01T00:00:00Z", 2.0, "2000..2100"), ("noon", 2.0, "ISO 8601"),
])
def test_video_options_that_cannot_work_are_one_line(tmp_path, start, fps, words):
    import cv2

    from skyfix.runtime.io.sources import VideoFrames

    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    with pytest.raises(SkyfixError, match=words) as err:
        VideoFrames.open(video, start, fps)
    assert "\n" not in str(err.value)
