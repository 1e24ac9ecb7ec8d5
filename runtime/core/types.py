"""Frozen dataclasses passed between the pipeline stages.

Frames: `map` is the map pack's projected CRS (easting, northing in metres);
`ned` is a local north-east-down tangent frame about the pack's reference point;
`body` is x forward, y right, z down; `camera` is OpenCV's x right, y down, z forward.
Transforms are named `T_a_b` (maps points in b to a); angles carry their unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

RejectReason = Literal[
    "no_view",  # rectification failed (attitude too steep, AGL unknown, footprint off the map)
    "no_tiles",  # no map tile inside the search window
    "few_features",  # the view has too little texture
    "few_inliers",  # robust estimation found too few consistent matches
    "scale",  # match scale disagrees with the reported height above ground
    "heading",  # match rotation disagrees with the reported attitude
    "ambiguous",  # a second, distant tile (or coarse peak) matches nearly as well, or the
    # ground repeats within the view (or within the part of it the inliers lie on)
    "unconfirmed",  # the coarse and fine stages disagree, or the inliers cover too little
    "gated",  # the filter's NIS gate refused the fix
    "motion",  # disagrees with the autopilot's own motion since the last fix
    # refused before matching (flight/output.FrameGate, flight/assembly.Chain):
    "frozen",  # identical to the previous frame
    "blank",  # identical to the previous frame and of one value
    "clock",  # stamped too far from the clock
    "backwards",  # stamped no later than the previous usable frame
    "repeated",  # the previous usable frame's stamp once more (no alarm)
    "bad_image",  # not an image (unreadable file, wrong type or size)
    "no_telemetry",  # no attitude / height for the frame's time
]


def sigma_max(cov: np.ndarray) -> float:
    """1-sigma in the worst direction: root of the larger eigenvalue of a [2, 2] covariance
    (symmetrised); inf when it is not a finite [2, 2] matrix."""
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (2, 2) or not np.all(np.isfinite(cov)):
        return float("inf")
    return float(np.sqrt(max(np.linalg.eigvalsh(0.5 * (cov + cov.T)).max(), 0.0)))


@dataclass(frozen=True)
class Frame:
    """One camera image. `image`: [H, W, 3] uint8 BGR (or [H, W] uint8 gray)."""

    index: int
    t_ns: int
    image: np.ndarray


@dataclass(frozen=True)
class UnreadableFrame:
    """A frame a source could not read (a missing or corrupt file): where and why."""

    index: int
    t_ns: int
    reason: str


FrameItem = Frame | UnreadableFrame  # what a frame source yields


@dataclass(frozen=True)
class GnssSample:
    """The aircraft's own GNSS (GPS_RAW_INT), used as a prior or for scoring only."""

    t_ns: int
    lat_deg: float
    lon_deg: float
    alt_m: float
    fix_type: int
    satellites: int
    eph_m: float


@dataclass(frozen=True)
class Telemetry:
    """Autopilot state at one instant: attitude of the body in NED, heights."""

    t_ns: int
    roll_rad: float
    pitch_rad: float
    yaw_rad: float
    agl_m: float  # height above ground under the aircraft
    alt_amsl_m: float
    vel_ned_mps: tuple[float, float, float] | None = None
    range_m: float | None = None  # downward rangefinder distance along the body's down axis
    # False: the source has no attitude, and a level camera along the course stands in
    attitude_measured: bool = True


@dataclass(frozen=True)
class View:
    """A frame warped to a north-up orthographic view at the map's metres/pixel.

    View pixel (u, v) lies at ground offset east = (u - origin_px[0]) * gsd_m,
    north = -(v - origin_px[1]) * gsd_m from the point straight below the camera.
    `image`: [H, W] uint8 gray; `mask`: [H, W] bool valid pixels;
    `footprint_m`: [4, 2] float64 (east, north) offsets of the frame corners;
    `R_ned_cam`: [3, 3] the reported camera attitude the view was made with;
    `attitude_measured`: False when that attitude is a stand-in (Telemetry).
    """

    t_ns: int
    image: np.ndarray
    mask: np.ndarray
    gsd_m: float
    origin_px: tuple[float, float]
    footprint_m: np.ndarray
    agl_m: float
    yaw_rad: float
    R_ned_cam: np.ndarray
    ground_m: float = float("nan")  # terrain height under the aircraft that agl_m is over
    attitude_measured: bool = True


@dataclass(frozen=True)
class TileHit:
    """A map tile proposed by retrieval; higher score is better."""

    tile_id: int
    level: int
    score: float


@dataclass(frozen=True)
class Fix:
    """An absolute position from one frame, in the map CRS, with its 1-sigma covariance.

    `cov_en_m2`: [2, 2] covariance of (easting, northing) in m^2; `shared_cov_en_m2`: the
    part of it that consecutive fixes share (what the reported attitude's error and the
    map's warp move it: both change slowly), which a filter averaging fixes cannot shrink.
    """

    t_ns: int
    east_m: float
    north_m: float
    cov_en_m2: np.ndarray
    agl_m: float  # camera height above the matched ground, from the pose
    heading_err_deg: float  # estimated minus reported heading
    tilt_ne_deg: tuple[float, float]  # rotation from the reported camera attitude to the
    # one the image shows, about north and east: the reported roll/pitch's error
    inliers: int
    tile_id: int
    level: int
    alt_amsl_m: float = float("nan")  # camera altitude from the pose over the pack's DEM
    alt_sigma_m: float = float("nan")  # its 1-sigma (both NaN without a DEM)
    heading_sigma_deg: float = float("nan")  # 1-sigma of heading_err_deg from the image alone
    shared_cov_en_m2: np.ndarray = field(default_factory=lambda: np.zeros((2, 2)))

    @property
    def tilt_err_deg(self) -> float:
        """Angle between the estimated and the reported camera axis."""
        return float(np.hypot(*self.tilt_ne_deg))


@dataclass(frozen=True)
class Rejection:
    """A frame that gave no fix, and why."""

    t_ns: int
    reason: RejectReason
    detail: str = ""


@dataclass(frozen=True)
class Estimate:
    """Filter output at one instant: local NED position/velocity and geodetic position.

    `cov_ne_m2`: [2, 2] horizontal position covariance; `vel_cov_ne_m2s2`: [2, 2].
    `alt_amsl_m` is the autopilot's own altitude unless `alt_sigma_m` is finite, which
    marks an altitude skyfix measured (flight/aids.py) and is its 1-sigma.
    """

    t_ns: int
    north_m: float
    east_m: float
    vn_mps: float
    ve_mps: float
    cov_ne_m2: np.ndarray
    vel_cov_ne_m2s2: np.ndarray
    lat_deg: float = float("nan")
    lon_deg: float = float("nan")
    alt_amsl_m: float = float("nan")
    alt_sigma_m: float = float("nan")
    vd_mps: float = 0.0
    valid: bool = True
    last_fix_age_s: float = float("inf")

    @classmethod
    def none(cls, t_ns: int) -> Estimate:
        """No position at all (e.g. after a filter reset): sent as fix_type 0."""
        nan2 = np.full((2, 2), np.nan)
        nan = float("nan")
        return cls(t_ns, nan, nan, nan, nan, nan2, nan2, valid=False)

    @property
    def horiz_sigma_m(self) -> float:
        """Root of the larger eigenvalue of the position covariance (inf when not finite)."""
        return sigma_max(self.cov_ne_m2)
