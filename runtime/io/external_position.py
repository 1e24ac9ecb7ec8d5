"""ArduPlane's route for a visual position: MAV_CMD_EXTERNAL_POSITION_ESTIMATE.

ArduPlane dead-reckons without GPS; EKF3 resets its horizontal position to an external
estimate (AP_AHRS::handle_external_position_estimate -> NavEKF3 setLatLng) whenever no GPS
is in use. It is an occasional reset, not a stream: the daemon sends one at most once a
second (daemon.autopilot: ardupilot-plane), and only while it claims a fix.
"""

from __future__ import annotations

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from skyfix.runtime.core.config import OutputConfig
from skyfix.runtime.core.types import Estimate, sigma_max
from skyfix.runtime.io.mavlink import FIX_3D, fix_type_for

EXTERNAL_POSITION_WRAP_S = 200.0  # transmission time wraps (MAVLink: at most 250 s)
EXTERNAL_POSITION_PERIOD_S = 1.0  # at most one reset this often (a reset per second bounds
# the dead-reckoning drift)


def external_position_estimate(est: Estimate, cfg: OutputConfig, t_send_ns: int,
                               target_system: int, target_component: int = 1
                               ) -> mavlink2.MAVLink_command_int_message | None:
    """COMMAND_INT MAV_CMD_EXTERNAL_POSITION_ESTIMATE for `est` (ArduPlane dead reckoning:
    EKF3 resets its horizontal position to it while no GPS is in use), or None when no
    fix is claimed (`fix_type_for` < 3): an occasional reset must never carry a guess.

    param1 transmission time = `t_send_ns` (our clock) wrapped at EXTERNAL_POSITION_WRAP_S,
    param2 processing time 0 (`est` is predicted to the send time), param3 the same
    conservative 1-sigma as GPS_INPUT's horiz_accuracy, x/y lat/lon 1e-7 deg, z NaN
    (altitude not used)."""
    if fix_type_for(est, cfg) < FIX_3D:
        return None
    return mavlink2.MAVLink_command_int_message(
        target_system=target_system, target_component=target_component,
        frame=mavlink2.MAV_FRAME_GLOBAL, command=mavlink2.MAV_CMD_EXTERNAL_POSITION_ESTIMATE,
        current=0, autocontinue=0,
        param1=float((int(t_send_ns) % int(EXTERNAL_POSITION_WRAP_S * 1e9)) * 1e-9),
        param2=0.0, param3=sigma_max(est.cov_ne_m2), param4=float("nan"),
        x=int(round(est.lat_deg * 1e7)), y=int(round(est.lon_deg * 1e7)), z=float("nan"))
