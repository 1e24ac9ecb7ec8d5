"""Typed configuration: YAML -> frozen dataclasses, with one schema for every key.

Every key is declared with `key(default, meaning, bounds...)`: its type (the annotation),
its range (`ge`/`gt`/`le`/`lt`) or allowed values (`choices`), and one sentence of
meaning. That declaration is the single source for validation (a section checks its
values whenever it is made, from YAML or in code), `configs/default.yaml` and the README
table (`skyfix config doc` writes both; a test keeps them in sync). Every key has a
default, so an empty file (or none) is a valid configuration. An unknown key, a value of
the wrong type or out of its range is an error that names the key (`filter.rate_hz`).
Keys declared `path=True` name files or folders; in a config file, relative ones are taken
from that file's folder.

YAML is read with limits: at most 1 MB, no aliases (a few anchors can expand into
gigabytes), nesting at most 64 deep.
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import read_yaml


def key(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None,
        choices: tuple[str, ...] | None = None, path: bool = False) -> Any:
    """A config key: `default`, one sentence `doc`, and its bounds or allowed values;
    `path`: a file or folder, which a config file names relative to its own folder."""
    return field(default=default, metadata={"doc": doc, "ge": ge, "gt": gt, "le": le,
                                            "lt": lt, "choices": choices, "path": path})


def bounds_text(f: dataclasses.Field) -> str:
    """The allowed values of a key, as written in the docs: "0 < x <= 100", "a | b"."""
    m = f.metadata
    if m.get("path"):
        return "path (relative to the config file)"
    if m.get("choices"):
        return " | ".join(m["choices"])
    low = (f"{m['ge']:g} <= " if m.get("ge") is not None
           else f"{m['gt']:g} < " if m.get("gt") is not None else "")
    high = (f" <= {m['le']:g}" if m.get("le") is not None
            else f" < {m['lt']:g}" if m.get("lt") is not None else "")
    return f"{low}x{high}" if low or high else ""


def _check(section: Any) -> None:
    """Refuse (one line naming the key) a value of `section` outside its declared range."""
    where = _SECTION_NAMES.get(type(section), type(section).__name__)
    for f in dataclasses.fields(section):
        m, value = f.metadata, getattr(section, f.name)
        if not m or isinstance(value, bool) or not isinstance(value, (int, float, str)):
            continue
        name = f"{where}.{f.name}"
        if m.get("choices") is not None and value not in m["choices"]:
            raise SkyfixError(f"config key {name!r} must be one of {', '.join(m['choices'])}, "
                              f"got {reprlib.repr(value)}")
        if isinstance(value, str):
            continue
        bad = ((m.get("ge") is not None and not value >= m["ge"])
               or (m.get("gt") is not None and not value > m["gt"])
               or (m.get("le") is not None and not value <= m["le"])
               or (m.get("lt") is not None and not value < m["lt"]))
        if bad:
            raise SkyfixError(f"config key {name!r} must be {bounds_text(f)}, got {value!r} "
                              f"({m['doc']})")


@dataclass(frozen=True)
class Section:
    """Base of the config sections: values are checked against the schema when made."""

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class EncoderConfig(Section):
    """The encoder itself is the one the map pack was built with (its manifest names it). A
    TensorRT engine takes views up to rectify.max_view_px a side (rounded up to the model's
    multiple, e.g. 1024 -> [1, 1, 1024, 1024]); it is built on first use, then cached."""

    backend: str = key("onnxruntime", "network runner", choices=("onnxruntime", "tensorrt"))
    provider: str = key("cpu", "onnxruntime provider (auto: cuda when it really loads)",
                        choices=("cpu", "cuda", "auto"))
    threads: int = key(0, "onnxruntime intra-op threads (0: onnxruntime decides)", ge=0, le=256)
    max_features: int = key(2048, "keypoints per frame for learned encoders", ge=16, le=100_000)
    trained_model: str = key("", "ONNX file of the cross-date encoder xfeat-xd (skyfix models "
                             "train writes one; its .json manifest beside it; empty: the "
                             "shipped weights)", path=True)
    trt_precision: str = key("fp16", "TensorRT engine precision (int8: build the engine first "
                             "with skyfix models engine --calib)",
                             choices=("fp32", "fp16", "int8"))
    engine_cache_dir: str = key("", "TensorRT engine cache folder (empty: "
                                "~/.cache/skyfix/engines)", path=True)


@dataclass(frozen=True)
class RectifyConfig(Section):
    """Camera mount: rotation about body axes from looking straight down, image top forward
    (`skyfix calibrate mount` measures it; a gimbal's own angles come with the frames)."""

    max_view_px: int = key(1024, "longest side of the north-up view; larger footprints are "
                           "cropped", ge=64, le=8192)
    max_off_nadir_deg: float = key(45.0, "frames looking further from straight down are "
                                   "skipped", gt=0, lt=90)
    mount_roll_deg: float = key(0.0, "camera mount roll", ge=-180, le=180)
    mount_pitch_deg: float = key(0.0, "camera mount pitch", ge=-180, le=180)
    mount_yaw_deg: float = key(0.0, "camera mount yaw", ge=-180, le=180)


@dataclass(frozen=True)
class RetrieveConfig(Section):
    top_k: int = key(5, "tiles re-ranked by local matching (window and global search)",
                     ge=1, le=1000)
    tracking_k: int = key(2, "tiles matched when the prior window fits inside one tile",
                          ge=1, le=1000)
    window_sigma: float = key(3.0, "prior window radius in filter standard deviations ...",
                              gt=0, le=100)
    window_margin_m: float = key(40.0, "... plus this margin", ge=0, le=100_000)
    global_after_s: float = key(10.0, "search the whole pack after this long without a fix",
                                ge=0, le=86_400)


@dataclass(frozen=True)
class MatchConfig(Section):
    ratio: float = key(0.85, "Lowe ratio for mutual nearest-neighbour matches", gt=0, le=1)
    ransac_px: float = key(3.0, "RANSAC inlier threshold in view pixels", gt=0, le=100)
    min_inliers: int = key(25, "fewer consistent matches -> rejected (few_inliers)",
                           ge=4, le=100_000)
    max_scale_err: float = key(0.15, "|match scale - 1| above this -> rejected (scale)",
                               gt=0, le=10)
    max_rotation_deg: float = key(8.0, "view-to-map rotation above this (after the compass "
                                  "correction the last fixes measured) -> rejected (heading)",
                                  gt=0, le=180)
    ambiguity_ratio: float = key(0.8, "a distant second tile with this share of inliers -> "
                                 "ambiguous", gt=0, le=10)
    max_self_similarity: float = key(0.9, "a view that matches itself elsewhere with this "
                                     "share of its own score (ground that repeats: a car "
                                     "park's bays, rows of panels) -> ambiguous", gt=0, le=1)
    ambiguity_radius_m: float = key(20.0, "second-best fixes further than this compete "
                                    "(ambiguity_ratio); closer ones that the two error bars "
                                    "cannot explain widen the fix's to reach them",
                                    ge=0, le=100_000)
    attitude_sigma_deg: float = key(0.5, "1-sigma error of the autopilot's roll/pitch (pose "
                                    "prior)", gt=0, le=90)
    yaw_sigma_deg: float = key(3.0, "1-sigma error of the autopilot's heading (pose prior)",
                               gt=0, le=180)
    unmeasured_tilt_sigma_deg: float = key(5.0, "1-sigma roll/pitch of a camera whose "
                                           "telemetry has no attitude (a level camera along "
                                           "the course stands in): what it moves the position "
                                           "is claimed", ge=0, le=45)
    lens_sigma: float = key(0.05, "prior 1-sigma of radial lens error k (p -> p (1 + k "
                            "|p|^2))", ge=0, le=1)
    map_warp_px: float = key(1.0, "1-sigma of the map's own smooth distortion across a view "
                             "(map pixels): the pose reads it as a tilt, which moves the fix "
                             "by the height times its angle; the fix's covariance claims it",
                             ge=0, le=100)
    refine: bool = key(True, "move each inlier pair to where the map's own pixels (the pack's "
                       "ortho.tif) line up with the view's, to a fraction of a pixel, "
                       "before the pose (runtime/nav/refine.py)")
    sigma_floor_m: float = key(0.5, "smallest 1-sigma a fix may claim", gt=0, le=10_000)
    focal_sigma: float = key(0.02, "1-sigma relative error of the camera's focal length: "
                             "scales the height a fix measures", ge=0, le=1)
    heading_floor_deg: float = key(0.2, "smallest 1-sigma a fix's heading may claim (the "
                                   "camera mount's yaw error)", gt=0, le=180)
    # With a prior and a pack that has structure channels: coarse structural search of the
    # prior window, then features matched near its answer (runtime/nav/coarse.py, fine.py)
    coarse: bool = key(True, "coarse structural search before feature matching, where the "
                       "pack has structure channels")
    hypotheses: int = key(3, "coarse places given to the fine stage, best first", ge=1, le=100)
    window_fallback: bool = key(True, "no strong match near the coarse places: the places "
                                "the features vote for across the whole window, matched near "
                                "and accepted on their own strength")
    near_radius_px: float = key(40.0, "features matched within this of the coarse prediction",
                                gt=0, le=10_000)
    min_spread: float = key(0.45, "inliers' hull: sqrt(area / view area) below this -> "
                            "rejected", ge=0, le=1)
    coarse_agree_px: float = key(6.0, "below 2 x min_inliers: fine vs coarse nadir further "
                                 "apart -> rejected", gt=0, le=10_000)
    coarse_agree_deg: float = key(3.0, "below 2 x min_inliers: fine vs coarse rotation further "
                                  "apart -> rejected", gt=0, le=180)
    min_peak_ratio: float = key(1.0, "below 2 x min_inliers: coarse peak ratio below this (a "
                                "runner-up) -> rejected", ge=0, le=1000)
    max_residual_px: float = key(4.0, "inlier residual RMS above this -> rejected", gt=0,
                                 le=1000)
    survey_3d: bool = key(True, "on a pack made by maps survey: register the whole frame "
                          "against the survey's 3-D points first (position and attitude; "
                          "runtime/nav/register3d.py), the view against the mosaic where that "
                          "fails")


@dataclass(frozen=True)
class OdometryConfig(Section):
    """Motion between rectified views -> velocity or displacement for the filter."""

    ratio: float = key(0.85, "Lowe ratio for mutual nearest-neighbour matches", gt=0, le=1)
    ransac_px: float = key(3.0, "RANSAC inlier threshold in view pixels", gt=0, le=100)
    min_inliers: int = key(20, "fewer consistent matches -> no velocity from this pair",
                           ge=3, le=100_000)
    max_gap_s: float = key(2.0, "frames further apart are not compared", gt=0, le=3600)
    max_scale_err: float = key(0.1, "|scale - 1| between the two views above this -> refused",
                               gt=0, le=10)
    max_rotation_deg: float = key(5.0, "rotation between the two views above this -> refused",
                                  gt=0, le=180)
    attitude_step_sigma_deg: float = key(0.1, "1-sigma change of the roll/pitch error frame "
                                         "to frame, at least (where consecutive fixes "
                                         "measure a larger one, that)", gt=0, le=90)
    yaw_sigma_deg: float = key(1.0, "1-sigma heading error (turns the measured displacement)",
                               gt=0, le=180)
    sigma_floor_mps: float = key(0.05, "smallest 1-sigma a velocity may claim, per axis",
                                 gt=0, le=100)
    keyframe_fraction: float = key(0.1, "imu filter: a view stays the reference of later ones "
                                   "until the aircraft has moved this fraction of its ground "
                                   "footprint (0: every frame against the one before)", ge=0,
                                   lt=1)


@dataclass(frozen=True)
class FilterConfig(Section):
    accel_sigma_mps2: float = key(5.0, "white-acceleration noise: must cover the largest turn "
                                  "v^2/r", gt=0, le=1000)
    nis_gate: float = key(13.8, "chi-square gate on fixes, 2 dof (13.8: 99.9 %)", gt=0,
                          le=1e6)
    rate_hz: float = key(10.0, "estimate output rate (skyfix run needs at least 5)", ge=1,
                         le=100)
    init_vel_sigma_mps: float = key(10.0, "1-sigma of the velocity when the filter starts",
                                    gt=0, le=1000)
    max_speed_mps: float = key(40.0, "two fixes further apart than this allows cannot start "
                               "the filter", gt=0, le=1000)
    divergence_after_gated: int = key(3, "this many gated fixes in a row -> filter reset, "
                                      "global search", ge=1, le=1000)
    kind: str = key("auto", "cv: 2-D constant velocity (nav/filter.py); imu: IMU-aided 3-D "
                    "error-state filter (nav/eskf.py); auto: imu when the autopilot streams an "
                    "IMU at filter start no noisier than 3 x accel_noise_mps2_rthz and "
                    "gyro_noise_radps_rthz, else cv", choices=("auto", "cv", "imu"))
    imu_rate_hz: float = key(100.0, "IMU stream rate requested (MAV_CMD_SET_MESSAGE_INTERVAL)",
                             ge=1, le=1000)
    history_s: float = key(5.0, "late measurements up to this old are fused at their capture "
                           "time", gt=0, le=60)
    imu_gap_s: float = key(0.1, "longer without an IMU sample -> bridged as constant velocity",
                           gt=0, le=10)
    accel_noise_mps2_rthz: float = key(0.01, "accelerometer white noise density (with "
                                       "vibration)", ge=0, le=100)
    accel_bias_sigma_mps2: float = key(0.1, "initial 1-sigma accelerometer bias", ge=0, le=100)
    accel_bias_rw_mps2_rths: float = key(0.001, "accelerometer bias random walk", ge=0, le=10)
    gyro_noise_radps_rthz: float = key(0.001, "gyro white noise density", ge=0, le=10)
    gyro_bias_sigma_radps: float = key(0.005, "initial 1-sigma gyro bias", ge=0, le=10)
    gyro_bias_rw_radps_rths: float = key(1e-4, "gyro bias random walk", ge=0, le=10)
    tilt_sigma_deg: float = key(0.5, "1-sigma error of the autopilot's roll/pitch (the "
                                "error match.attitude_sigma_deg gives the pose) ...", ge=0,
                                le=90)
    tilt_tau_s: float = key(5.0, "... and its correlation time", gt=0, le=86_400)
    yaw_sigma_deg: float = key(1.0, "1-sigma error of the autopilot's heading ...", ge=0,
                               le=180)
    yaw_tau_s: float = key(20.0, "... and its correlation time", gt=0, le=86_400)
    alt_sigma_m: float = key(1.0, "1-sigma of the autopilot's altitude (barometer)", gt=0,
                             le=10_000)
    alt_nis_gate: float = key(10.83, "chi-square gate on altitudes and headings, 1 dof "
                              "(10.83: 99.9 %)", gt=0, le=1e6)
    fuse_heading: bool = key(True, "imu: fuse the heading each fix measures (the image's "
                             "rotation against the map)")


@dataclass(frozen=True)
class OutputConfig(Section):
    system_id: int = key(1, "MAVLink system id of the vehicle (we share it)", ge=1, le=255)
    component_id: int = key(191, "our MAVLink component id (191: onboard computer)", ge=1,
                            le=255)
    gps_id: int = key(1, "GPS instance the autopilot expects (GPS2 -> 1)", ge=0, le=255)
    satellites: int = key(10, "reported satellites_visible while we claim a fix", ge=0,
                          le=255)
    lock_budget_s: float = key(5.0, "after this long without a fix, fix_type drops to 0",
                               gt=0, le=3600)
    max_sigma_m: float = key(50.0, "never claim a 3D fix with a larger 1-sigma", gt=0,
                             le=100_000)
    signing_key: str = key("", "MAVLink 2 signing key file (32 bytes, mode 0600); empty: "
                           "unsigned", path=True)
    refuse_unsigned: bool = key(False, "with a key: drop unsigned input (bad signatures "
                                "always are)")
    signing_link_id: int = key(0, "link id stamped into our signatures", ge=0, le=255)
    signing_state: str = key("", "file keeping our signing timestamp across restarts (empty: "
                             "$STATE_DIRECTORY/signing_timestamp under systemd, else "
                             "~/.local/state/skyfix/signing_timestamp)", path=True)


@dataclass(frozen=True)
class GnssConfig(Section):
    """always: we are a second GPS, the autopilot chooses; on-loss: send only while the real
    GNSS is lost or spoofed; ekf-source: also switch EKF source sets
    (MAV_CMD_SET_EKF_SOURCE_SET)."""

    mode: str = key("always", "when to send and whether to switch EKF source sets",
                    choices=("always", "on-loss", "ekf-source"))
    min_fix_type: int = key(3, "real GNSS below this fix type counts as no fix", ge=0, le=8)
    min_satellites: int = key(6, "fewer -> degraded", ge=0, le=255)
    max_hdop: float = key(2.5, "GPS_RAW_INT eph / 100 above this -> degraded", gt=0, le=100)
    max_h_acc_m: float = key(10.0, "reported horizontal accuracy above this -> degraded",
                             gt=0, le=100_000)
    lost_after_s: float = key(2.0, "no usable GNSS fix for this long -> lost", gt=0, le=3600)
    recover_after_s: float = key(10.0, "GNSS must stay better this long before we step back",
                                 ge=0, le=86_400)
    spoof_gate: float = key(30.0, "one GNSS-vs-visual NIS above this -> spoofed at once",
                            gt=0, le=1e6)
    spoof_cusum_drift: float = key(6.0, "CUSUM of (NIS - drift) x seconds (GNSS vs "
                                   "visual) ...", ge=0, le=1e6)
    spoof_cusum_limit: float = key(60.0, "... above this (NIS s) -> spoofed (slow drift)",
                                   gt=0, le=1e9)
    max_fix_age_s: float = key(0.5, "a GNSS report's position is up to this old when it "
                               "arrives (receiver latency plus the autopilot's stream "
                               "period); the estimate is compared at half this age, the "
                               "rest counts as uncertainty along the velocity", ge=0, le=5)
    verify_s: float = key(10.0, "seconds the visual estimate must agree with a healthy GNSS "
                          "before a disagreement is blamed on the GNSS; before that it is "
                          "blamed on the visual side (camera clock, mount, map) and no "
                          "position is sent", ge=0, le=3600)
    ekf_source_gnss: int = key(1, "EKF source set that uses the real GNSS", ge=1, le=3)
    ekf_source_visual: int = key(2, "EKF source set to use while GNSS is lost or spoofed",
                                 ge=1, le=3)


@dataclass(frozen=True)
class CameraConfig(Section):
    source: str = key("0", "V4L2 index (0), GStreamer pipeline (contains !), rtsp:// URL or "
                      "a video file")
    calibration: str = key("", "camera.yaml (intrinsics + distortion); required by skyfix run",
                           path=True)
    width: int = key(0, "requested capture width (0: the device's default)", ge=0, le=16384)
    height: int = key(0, "requested capture height (0: the device's default)", ge=0,
                      le=16384)
    fps: float = key(0.0, "requested capture rate (0: the device's default)", ge=0, le=1000)
    queue: int = key(2, "latest-frame queue length; older frames are dropped, never queued "
                     "up", ge=1, le=100)


@dataclass(frozen=True)
class DaemonConfig(Section):
    map: str = key("", "map pack folder (plain or sharded); required by skyfix run",
                   path=True)
    map_budget_mb: int = key(256, "memory a sharded map pack's loaded shards may hold; "
                             "the least recently used shard is dropped first", ge=16,
                             le=65_536)
    link: str = key("udpin:0.0.0.0:14550", "pymavlink connection: udpin:host:port | "
                    "/dev/ttyTHS1,921600 | tcp:host:port")
    peer: str = key("", "autopilot address (host:port) a udpin link answers; empty: the "
                    "first to send its HEARTBEAT")
    autopilot: str = key("ardupilot", "ardupilot: GPS_INPUT | ardupilot-plane: "
                         "MAV_CMD_EXTERNAL_POSITION_ESTIMATE (1 Hz, dead-reckoning resets) | "
                         "px4: GLOBAL_POSITION_SENSOR",
                         choices=("ardupilot", "ardupilot-plane", "px4"))
    link_timeout_s: float = key(3.0, "no MAVLink message for this long -> reconnect", gt=0,
                                le=3600)
    heartbeat_hz: float = key(1.0, "HEARTBEAT rate, as an onboard computer", ge=0.1, le=50)
    diagnostics_hz: float = key(1.0, "NAMED_VALUE_FLOAT diagnostics rate (0: off)", ge=0,
                                le=50)
    health_period_s: float = key(10.0, "health summary in the log every this many seconds",
                                 gt=0, le=86_400)
    max_frame_age_s: float = key(2.0, "frames stamped further than this from the clock, not "
                                 "after the previous one, or frozen are refused", gt=0,
                                 le=3600)
    blas_threads: int = key(1, "numpy's BLAS threads once the chain is built (0: as the "
                            "environment sets them): the chain's stages run on threads of "
                            "their own, and BLAS's on top contend for the same cores", ge=0,
                            le=256)


@dataclass(frozen=True)
class TelemetryConfig(Section):
    """Time stamps of the autopilot's telemetry (runtime/io/clock.py)."""

    clock: str = key("auto", "auto: stamp samples at their autopilot time (time_boot_ms mapped "
                     "to our clock) once locked, arrival time before | arrival: always the "
                     "arrival time", choices=("auto", "arrival"))
    clock_window_s: float = key(60.0, "autopilot-to-our clock fit over this much recent time",
                                ge=5, le=3600)
    timesync_hz: float = key(1.0, "TIMESYNC requests a second (with clock auto; 0: none)",
                             ge=0, le=10)


@dataclass(frozen=True)
class TrustConfig(Section):
    """Provenance: with a key set, map packs and models must carry an Ed25519 signature by
    it over their manifest (`skyfix maps build --sign-key`, `skyfix models sign`)."""

    public_key: str = key("", "trusted Ed25519 public key (PEM) that packs and models must "
                          "be signed with; empty: signatures are not checked", path=True)


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
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)


_SECTION_NAMES = {tp: name for name, tp in typing.get_type_hints(Config).items()}


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
        raise SkyfixError(f"config key {name!r} must be {tp.__name__}, got {reprlib.repr(value)}")
    if tp is float and not math.isfinite(value):
        raise SkyfixError(f"config key {name!r} must be a finite number, got {value!r}")
    return value


def load_config(path: Path | None = None) -> Config:
    """The configuration in `path` (YAML), defaults for everything it leaves out. A file or
    folder it names by a relative path is taken from the config file's folder (a daemon's
    working directory is not the config's), `~` as the user's home."""
    if path is None:
        return Config()
    return _paths_from(_build(Config, read_yaml(Path(path), "config file"), ""),
                       Path(path).parent)


def _paths_from(section: Any, base: Path) -> Any:
    """`section` with its non-empty path keys resolved from `base` (nested sections too)."""
    changes = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            changes[f.name] = _paths_from(value, base)
        elif f.metadata.get("path") and value:
            changes[f.name] = resolve_path(value, base)
    return dataclasses.replace(section, **changes)


def resolve_path(value: str, base: Path) -> str:
    """A path key's `value` as a config file in the folder `base` means it: `~` and `~/...`
    from the user's home, another relative path from `base`, an absolute one as written."""
    if value == "~" or value.startswith("~/"):
        value = os.path.expanduser("~") + value[1:]
    return str(base / value)
