"""The simulated camera's true pose from PX4 SIH's HIL_STATE_QUATERNION."""

from __future__ import annotations

import math

import pytest
from pymavlink.dialects.v20 import ardupilotmega as mav2

from skyfix.sim.camera import sim_state_pose


def _hil_state(roll: float, pitch: float, yaw: float) -> mav2.MAVLink_hil_state_quaternion_message:
    """The message PX4 sends for this attitude (ZYX Euler angles -> w, x, y, z)."""
    cr, sr = math.cos(roll / 2), math.sin(roll / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    q = [cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy,
         cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy]
    return mav2.MAVLink_hil_state_quaternion_message(
        0, q, 0, 0, 0, 481853675, 163119640, 80_250, 0, 0, 0, 0, 0, 0, 0, 0)


def test_hil_state_quaternion_gives_the_true_pose():
    pose = sim_state_pose(_hil_state(0.1, -0.2, 2.5), 7)
    assert (pose.t_ns, pose.lat_deg, pose.lon_deg) == (7, 48.1853675, 16.311964)
    assert pose.alt_amsl_m == pytest.approx(80.25)
    assert pose.rpy_rad == pytest.approx((0.1, -0.2, 2.5), abs=1e-6)


def test_px4_at_rest_quaternion_minus_one_is_level_north():
    msg = _hil_state(0.0, 0.0, 0.0)
    msg.attitude_quaternion = [-1.0, 0.0, 0.0, 0.0]  # as SIH sends it on the ground
    assert sim_state_pose(msg, 0).rpy_rad == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
