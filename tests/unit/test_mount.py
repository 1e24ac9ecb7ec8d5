"""`skyfix calibrate mount`: sim flights over the bundled orthophoto with a camera mount
turned up to 5 degrees off nadir and frames stamped up to 0.5 s off; the mount must come
back within 0.5 degrees and the time offset within 20 ms.

The autopilot's heading error is set to 0.2 deg (1 sigma) in these flights: a heading
bias is indistinguishable from a mount yaw, so the mount's yaw can be no better than
the heading the log reports. Roll/pitch errors keep the simulator's default.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from skyfix.calibration.mount import (
    Track,
    calibrate_mount,
    estimate_time_offset,
)
from skyfix.maps.build import build_pack
from skyfix.runtime.apps.cli import main
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import R_BODY_CAM_NADIR, mount_rotation
from skyfix.sim.flight import FlightSpec, simulate_flight

CAM = CameraModel.from_fov(320, 240, 70.0, dist=(-0.08, 0.02, 0.0, 0.0, 0.0))


def spec(mount_deg, offset_s, seed) -> FlightSpec:
    # 90 s: the autopilot's roll/pitch error (Gauss-Markov, 5 s correlation) averages down
    # to ~0.1 deg; a frame every 4 s is plenty for the PnP poses (22 frames).
    return FlightSpec(duration_s=90.0, fps=0.25, camera=CAM, seed=seed, yaw_noise_deg=0.2,
                      mount_error_deg=mount_deg, camera_time_offset_s=offset_s)


@pytest.fixture(scope="module")
def pack(tmp_path_factory, ortho_path) -> Path:
    # One level: the 320x240 frames at 120 m are ~0.53 m/px, rectified to 0.6 m/px.
    return build_pack([ortho_path], tmp_path_factory.mktemp("mount") / "pack", gsds_m=(0.6,),
                      progress=False)


def _angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def test_mount_rotation_is_nadir_at_zero_and_turns_about_body_axes():
    assert np.allclose(mount_rotation(), R_BODY_CAM_NADIR)
    R = mount_rotation(0.0, 4.0, 0.0)  # pitch up: the optical axis tilts forward
    axis_body = R @ np.array([0.0, 0.0, 1.0])
    assert axis_body[0] > 0 and np.isclose(np.degrees(np.arctan2(axis_body[0], axis_body[2])),
                                           4.0)


def test_recovers_mount_and_offset(tmp_path, ortho_path, pack):
    mount, offset = (-5.0, 2.5, -3.5), -0.35
    flight = tmp_path / "flight"
    simulate_flight(ortho_path, flight, spec(mount, offset, 7), progress=False)
    cal = calibrate_mount(flight, pack, Config(), progress=False)
    assert cal.frames_used >= 18
    assert _angle_deg(cal.R_body_cam.T @ mount_rotation(*mount)) < 0.5
    assert np.abs(np.subtract(cal.mount_error_deg, mount)).max() < 0.5
    assert abs(cal.time_offset_s - offset) < 0.020
    assert cal.time_offset_sigma_s < 0.02


def test_cli_writes_filestorage_yaml(tmp_path, ortho_path, pack, capsys):
    mount, offset = (3.0, -4.0, 5.0), 0.5
    flight = tmp_path / "flight"
    simulate_flight(ortho_path, flight, spec(mount, offset, 2), progress=False)
    out = tmp_path / "mount.yaml"
    assert main(["calibrate", "mount", str(flight), "--map", str(pack), "--out", str(out)]) == 0
    assert "time offset" in capsys.readouterr().out
    fs = cv2.FileStorage(str(out), cv2.FILE_STORAGE_READ)
    R = fs.getNode("R_body_cam").mat()
    offset_s = fs.getNode("time_offset_s").real()
    fs.release()
    assert _angle_deg(R.T @ mount_rotation(*mount)) < 0.5
    assert abs(offset_s - offset) < 0.020


def test_straight_flight_cannot_show_a_time_offset():
    t = np.arange(0, 30e9, 0.1e9).astype(np.int64)
    en = np.stack([10.0 * t * 1e-9, np.zeros(len(t))], -1)  # 10 m/s due east
    track = Track(t, en)
    with pytest.raises(SkyfixError, match="fly turns"):
        estimate_time_offset(t[5:-5:10], track.at(t[5:-5:10]), track)


def test_offset_fit_on_a_known_track():
    """Centres = a curved track 0.3 s late plus a constant bias -> both come back exactly."""
    t = np.arange(0, 40e9, 0.1e9).astype(np.int64)
    ang = 0.15 * t * 1e-9
    en = np.stack([60 * np.sin(ang), 60 * np.cos(ang)], -1)  # a circle at 9 m/s
    track = Track(t, en)
    stamps = t[20:-20:5]
    centres = track.at(stamps - 0.3e9) + [1.5, -0.7]
    offset, sigma, bias, _ = estimate_time_offset(stamps, centres, track)
    assert abs(offset - 0.3) < 1e-3 and np.allclose(bias, [1.5, -0.7], atol=0.02)
