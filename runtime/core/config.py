"""Typed configuration: YAML -> frozen dataclasses.

Every section and key has a documented default, so an empty file (or none) is a
valid configuration. An unknown key, or a value of the wrong type, is an error
that names the key (`match.min_inliers`), never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from skyfix.runtime.core.errors import SkyfixError


@dataclass(frozen=True)
class EncoderConfig:
    # The encoder itself is the one the map pack was built with (its manifest names it).
    backend: str = "onnxruntime"  # network runner: onnxruntime | tensorrt
    provider: str = "cpu"  # onnxruntime: cpu | cuda | auto (cuda when it really loads)
    threads: int = 0  # onnxruntime intra-op threads (0: onnxruntime decides)
    max_features: int = 2048  # keypoints per frame for learned encoders


@dataclass(frozen=True)
class RectifyConfig:
    max_view_px: int = 1024  # longest side of the north-up view; larger footprints are cropped
    max_off_nadir_deg: float = 45.0  # frames looking further from straight down are skipped
    # Camera mount: rotation about body axes from looking straight down, image top forward
    # (`skyfix calibrate mount` measures it; a gimbal's own angles come with the frames).
    mount_roll_deg: float = 0.0
    mount_pitch_deg: float = 0.0
    mount_yaw_deg: float = 0.0


@dataclass(frozen=True)
class RetrieveConfig:
    top_k: int = 5  # tiles re-ranked by local matching (window and global search)
    tracking_k: int = 2  # tiles matched when the prior window fits inside one tile
    window_sigma: float = 3.0  # prior window radius in filter standard deviations ...
    window_margin_m: float = 40.0  # ... plus this margin
    global_after_s: float = 10.0  # search the whole pack after this long without a fix


@dataclass(frozen=True)
class MatchConfig:
    ratio: float = 0.85  # Lowe ratio for mutual nearest-neighbour matches
    ransac_px: float = 3.0  # MAGSAC threshold in view pixels
    min_inliers: int = 25  # fewer consistent matches -> rejected ("few_inliers")
    max_scale_err: float = 0.15  # |match scale - 1| above this -> rejected ("scale")
    max_rotation_deg: float = 8.0  # view-to-map rotation above this -> rejected ("heading")
    ambiguity_ratio: float = 0.8  # a distant second tile with this share of inliers -> "ambiguous"
    ambiguity_radius_m: float = 20.0  # second-best fixes closer than this agree, not compete
    attitude_sigma_deg: float = 0.5  # 1-sigma error of the autopilot's roll/pitch (pose prior)
    yaw_sigma_deg: float = 3.0  # 1-sigma error of the autopilot's heading (pose prior)
    lens_sigma: float = 0.05  # prior 1-sigma of radial lens error k (p -> p (1 + k |p|^2))
    sigma_floor_m: float = 0.5  # smallest 1-sigma a fix may claim


@dataclass(frozen=True)
class OdometryConfig:
    # Frame-to-frame motion of consecutive rectified views -> velocity for the filter.
    ratio: float = 0.85  # Lowe ratio for mutual nearest-neighbour matches
    ransac_px: float = 3.0  # MAGSAC threshold in view pixels
    min_inliers: int = 20  # fewer consistent matches -> no velocity from this pair
    max_gap_s: float = 2.0  # frames further apart are not compared
    max_scale_err: float = 0.1  # |scale - 1| between the two views above this -> refused
    max_rotation_deg: float = 5.0  # rotation between the two views above this -> refused
    attitude_step_sigma_deg: float = 0.1  # 1-sigma change of the roll/pitch error frame to frame
    yaw_sigma_deg: float = 1.0  # 1-sigma heading error (turns the measured displacement)
    sigma_floor_mps: float = 0.05  # smallest 1-sigma a velocity may claim, per axis


@dataclass(frozen=True)
class FilterConfig:
    accel_sigma_mps2: float = 5.0  # white-acceleration noise: must cover the largest turn v^2/r
    nis_gate: float = 13.8  # chi-square, 2 dof, 99.9 %
    rate_hz: float = 10.0  # estimate output rate
    init_vel_sigma_mps: float = 10.0
    max_speed_mps: float = 40.0  # two fixes further apart than this allows cannot start the filter
    divergence_after_gated: int = 3  # this many gated fixes in a row -> filter reset, global search
    # cv: 2-D constant velocity (runtime/nav/filter.py); imu: IMU-aided 3-D error-state filter
    # (runtime/nav/eskf.py); auto: imu when the autopilot streams an IMU at filter start, else cv
    kind: str = "auto"
    imu_rate_hz: float = 100.0  # IMU stream rate requested (MAV_CMD_SET_MESSAGE_INTERVAL)
    history_s: float = 5.0  # late measurements up to this old are fused at their capture time
    imu_gap_s: float = 0.1  # longer without an IMU sample -> bridged as constant velocity
    accel_noise_mps2_rthz: float = 0.01  # accelerometer white noise density (with vibration)
    accel_bias_sigma_mps2: float = 0.1  # initial 1-sigma accelerometer bias
    accel_bias_rw_mps2_rths: float = 0.001  # accelerometer bias random walk
    gyro_noise_radps_rthz: float = 0.001  # gyro white noise density
    gyro_bias_sigma_radps: float = 0.005  # initial 1-sigma gyro bias
    gyro_bias_rw_radps_rths: float = 1e-4  # gyro bias random walk
    tilt_sigma_deg: float = 0.3  # 1-sigma error of the autopilot's roll/pitch ...
    tilt_tau_s: float = 5.0  # ... and its correlation time
    yaw_sigma_deg: float = 1.0  # 1-sigma error of the autopilot's heading ...
    yaw_tau_s: float = 20.0  # ... and its correlation time
    alt_sigma_m: float = 1.0  # 1-sigma of the autopilot's altitude (barometer)
    alt_nis_gate: float = 10.83  # chi-square, 1 dof, 99.9 %

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "cv", "imu"):
            raise SkyfixError(f"config key 'filter.kind' must be one of auto, cv, imu, "
                              f"got {self.kind!r}")


@dataclass(frozen=True)
class OutputConfig:
    system_id: int = 1
    component_id: int = 191  # MAV_COMP_ID_ONBOARD_COMPUTER
    gps_id: int = 1  # GPS instance the autopilot expects (GPS2 -> 1)
    satellites: int = 10  # reported satellites_visible while we claim a fix
    lock_budget_s: float = 5.0  # after this long without a fix, fix_type drops to 0
    max_sigma_m: float = 50.0  # never claim a 3D fix with a larger 1-sigma
    signing_key: str = ""  # MAVLink 2 signing key file (32 bytes, mode 0600); "" = unsigned
    refuse_unsigned: bool = False  # with a key: drop unsigned input (bad signatures always are)
    signing_link_id: int = 0  # link id stamped into our signatures


_GNSS_MODES = ("always", "on-loss", "ekf-source")


@dataclass(frozen=True)
class GnssConfig:
    # always: we are a second GPS, the autopilot chooses; on-loss: send only while the real
    # GNSS is lost or spoofed; ekf-source: also switch EKF source sets (MAV_CMD_SET_EKF_SOURCE_SET)
    mode: str = "always"
    min_fix_type: int = 3  # real GNSS below this fix type counts as no fix
    min_satellites: int = 6  # fewer -> degraded
    max_hdop: float = 2.5  # GPS_RAW_INT eph / 100 above this -> degraded
    max_h_acc_m: float = 10.0  # reported horizontal accuracy above this -> degraded
    lost_after_s: float = 2.0  # no usable GNSS fix for this long -> lost
    recover_after_s: float = 10.0  # GNSS must stay better this long before we step back
    spoof_gate: float = 30.0  # one GNSS-vs-visual NIS above this -> spoofed at once
    spoof_cusum_drift: float = 6.0  # CUSUM of (NIS - drift) x seconds (GNSS vs visual) ...
    spoof_cusum_limit: float = 60.0  # ... above this (NIS s) -> spoofed (slow drift)
    ekf_source_gnss: int = 1  # EKF source set that uses the real GNSS
    ekf_source_visual: int = 2  # EKF source set to use while GNSS is lost or spoofed

    def __post_init__(self) -> None:
        if self.mode not in _GNSS_MODES:
            raise SkyfixError(f"config key 'gnss.mode' must be one of {', '.join(_GNSS_MODES)}, "
                              f"got {self.mode!r}")


@dataclass(frozen=True)
class CameraConfig:
    # V4L2 index ("0"), GStreamer pipeline (contains "!"), rtsp:// URL or a video file.
    source: str = "0"
    calibration: str = ""  # camera.yaml (intrinsics + distortion); required by `skyfix run`
    width: int = 0  # requested capture size (0: the device's default)
    height: int = 0
    fps: float = 0.0  # requested capture rate (0: the device's default)
    queue: int = 2  # latest-frame queue length; older frames are dropped, never queued up


@dataclass(frozen=True)
class DaemonConfig:
    map: str = ""  # map pack folder; required by `skyfix run`
    link: str = "udpin:0.0.0.0:14550"  # pymavlink connection: /dev/ttyTHS1,921600 | tcp:host:port
    autopilot: str = "ardupilot"  # ardupilot: GPS_INPUT | px4: GLOBAL_POSITION_SENSOR
    link_timeout_s: float = 3.0  # no MAVLink message for this long -> reconnect
    heartbeat_hz: float = 1.0  # HEARTBEAT rate, as an onboard computer
    diagnostics_hz: float = 1.0  # NAMED_VALUE_FLOAT diagnostics rate (0: off)
    health_period_s: float = 10.0  # health summary in the log every this many seconds
    # frames stamped further than this from the daemon's clock (either way), stamped no
    # later than the previous frame, or identical to it (a frozen camera) are refused
    max_frame_age_s: float = 2.0


@dataclass(frozen=True)
class Config:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    rectify: RectifyConfig = field(default_factory=RectifyConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    odometry: OdometryConfig = field(default_factory=OdometryConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    gnss: GnssConfig = field(default_factory=GnssConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SkyfixError(f"config section {where or 'top level'!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise SkyfixError(f"unknown config key {name!r}")
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name)
    if isinstance(tp, types.UnionType):
        tp = next(t for t in typing.get_args(tp) if t is not type(None))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
        raise SkyfixError(f"config key {name!r} must be {tp.__name__}, got {value!r}")
    if tp is float and not math.isfinite(value):
        raise SkyfixError(f"config key {name!r} must be a finite number, got {value!r}")
    return value


def load_config(path: Path | None = None) -> Config:
    """The configuration in `path` (YAML), defaults for everything it leaves out."""
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        raise SkyfixError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SkyfixError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    except UnicodeDecodeError as exc:
        raise SkyfixError(f"config file {path} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from None
    except RecursionError:  # PyYAML recurses once per nesting level
        raise SkyfixError(f"config file {path} is nested too deeply") from None
    return _build(Config, data, "")
