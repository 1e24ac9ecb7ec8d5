"""Camera-to-body mount rotation and camera/autopilot time offset from a flight with
good GNSS.

Every frame is matched against the map pack (rectified with the nominal nadir mount
and the attitude logged at its time stamp, searched around the logged position), and
the matched map points give the camera's full pose by PnP: its centre (E, N) and its
rotation R_ned_cam, measured from the pixels alone. Then:

1. time offset: the frame stamps run `time_offset_s` late, i.e. a frame stamped t was
   taken at t - offset. The camera centres C_i must lie on the logged track p(t):

       C_i = p(t_i - offset) + b  ~=  p(t_i - offset0) - v_i (offset - offset0) + b

   with b a constant horizontal bias (map georeferencing vs GNSS). Linear least squares
   in (offset, b), re-linearised a few times and reweighted (Huber) against bad frames.
   The offset is observable only when the velocity changes direction (turns, rows
   flown both ways); a flight without that is refused.
2. mount: with the attitude interpolated at t_i - offset, each frame gives one
   measurement of the mount, R_body_cam_i = R_ned_body_i^T R_ned_cam_i; their chordal
   mean (SVD projection of the sum) after dropping outliers is the estimate.

The mount is reported as R_body_cam and as the (roll, pitch, yaw) about body axes that
takes the nominal nadir mount (skyfix.runtime.core.geo.R_BODY_CAM_NADIR) to it. The mount's
yaw is only as good as the autopilot's heading: a heading bias and a mount yaw are the
same thing to any camera.

The poses are in the map grid's axes (easting, northing, down), so the autopilot's
attitude is turned into them too (its yaw reduced by the grid convergence, about a degree
away from a projection's central meridian), which would otherwise show up as mount yaw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from skyfix.maps.index import in_window
from skyfix.maps.pack import MapPack
from skyfix.models.features import Encoder, match_mutual
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import (
    R_BODY_CAM_NADIR,
    R_ned_body,
    euler_from_R_ned_body,
    mean_rotation,
)
from skyfix.runtime.core.types import Frame, Telemetry
from skyfix.runtime.flight.assembly import open_map
from skyfix.runtime.io.sources import RecordedFlight
from skyfix.runtime.io.telemetry import TelemetryLog
from skyfix.runtime.nav.match import robust_similarity
from skyfix.runtime.nav.rectify import rectify, view_px_to_offset_m
from skyfix.runtime.nav.refine import refine_pairs

_MIN_INLIERS = 30
_TILES_PER_FRAME = 3
_MIN_VEL_SPREAD_MPS = 2.0  # RMS deviation of velocity from its mean needed to see an offset
_HUBER_M = 1.0


@dataclass(frozen=True)
class FramePose:
    """A frame's camera pose measured against the map. `centre_en_m`: [2] map (E, N);
    `R_ned_cam`: [3, 3]; `rms_px`: PnP reprojection RMS."""

    t_ns: int
    centre_en_m: np.ndarray
    alt_amsl_m: float
    R_ned_cam: np.ndarray
    inliers: int
    rms_px: float


@dataclass(frozen=True)
class MountCalibration:
    """`R_body_cam`: [3, 3]; `mount_error_deg`: (roll, pitch, yaw) from the nadir mount;
    `time_offset_s`: frame stamp minus capture time (subtract it from the stamps)."""

    R_body_cam: np.ndarray
    mount_error_deg: tuple[float, float, float]
    time_offset_s: float
    time_offset_sigma_s: float
    bias_en_m: tuple[float, float]  # visual track minus GNSS track, after the offset
    frames_used: int
    frames_total: int
    rotation_rms_deg: float  # per-frame mount measurements about their mean
    position_rms_m: float  # camera centres about the shifted GNSS track

    def save(self, path: Path) -> None:
        """OpenCV FileStorage YAML (cv2.FileStorage reads it back)."""
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
        fs.write("R_body_cam", self.R_body_cam)
        fs.write("mount_error_rpy_deg", np.asarray(self.mount_error_deg, np.float64))
        fs.write("time_offset_s", self.time_offset_s)
        fs.write("time_offset_sigma_s", self.time_offset_sigma_s)
        fs.write("frames_used", self.frames_used)
        fs.release()


def match_pose(frame: Frame, tel: Telemetry, prior_en: np.ndarray, camera: CameraModel,
               pack: MapPack, encoder: Encoder, cfg: Config,
               search_radius_m: float = 60.0) -> FramePose | None:
    """The camera pose of `frame` by PnP on map points, or None when it does not match.

    The frame is rectified with the nominal mount and `tel`; tiles whose centre lies
    within the view's reach of `prior_en` ([2] map E/N, the logged position) are tried,
    the one with most RANSAC inliers wins, its pairs refined on the map's pixels as in
    flight (match.refine).
    """
    level = pack.level_for_gsd(tel.agl_m / camera.fx)
    view = rectify(frame, tel, camera, pack.levels[level], cfg.rectify, pack.convergence_deg)
    if view is None:
        return None
    feats = encoder.extract(view.image, view.mask)
    if len(feats) < _MIN_INLIERS:
        return None
    reach = float(np.hypot(*view.footprint_m.T).max()) + search_radius_m
    near = np.flatnonzero(in_window(pack, prior_en, reach**2 * np.eye(2))
                          & (pack.tile_level == level))
    near = near[np.argsort(np.hypot(*(pack.tile_center_en[near] - prior_en).T))]
    src_all = view_px_to_offset_m(view, feats.keypoints.astype(np.float64))
    best: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for tile_id in near[:_TILES_PER_FRAME]:
        en, desc = pack.tile_features(int(tile_id))
        pairs = match_mutual(feats.descriptors, desc, cfg.match.ratio)
        if len(pairs) < _MIN_INLIERS:
            continue
        src, dst = src_all[pairs[:, 0]], en[pairs[:, 1]] - prior_en
        fit = robust_similarity(src, dst, cfg.match.ransac_px * view.gsd_m, _MIN_INLIERS)
        if fit is not None and (best is None or len(fit.keep) > len(best[0])):
            best = (src[fit.keep], dst[fit.keep], fit.params)
    if best is None:
        return None
    offsets, ground_en, params = best
    if cfg.match.refine:  # the pairs moved onto the map's own pixels, as in flight
        offsets, ground_en, _ = refine_pairs(view, offsets, ground_en, prior_en, params,
                                             pack.map_image)
    # View offsets (east, north) from nadir -> the image pixels the nominal warp took them from.
    R_nc = view.R_ned_cam
    rays = np.column_stack([offsets[:, 1], offsets[:, 0], np.full(len(offsets), tel.agl_m)])
    cam = rays @ R_nc  # rows: R_nc^T ray
    img = camera.distort_normalized(cam[:, :2] / cam[:, 2:3])
    # World frame: NED about (prior E, prior N, the ground below), ground points at down 0.
    obj = np.column_stack([ground_en[:, 1], ground_en[:, 0], np.zeros(len(ground_en))])
    centre0 = np.array([0.0, 0.0, -tel.agl_m])
    rvec, _ = cv2.Rodrigues(R_nc.T)
    tvec = -R_nc.T @ centre0
    ok, rvec, tvec = cv2.solvePnP(obj, img, camera.K, camera.dist_array, rvec, tvec.copy(),
                                  useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    proj, _ = cv2.projectPoints(obj, rvec, tvec, camera.K, camera.dist_array)
    err = np.linalg.norm(proj.reshape(-1, 2) - img, axis=1)
    good = err < max(3.0 * float(np.median(err)), 1.0)
    if good.sum() < _MIN_INLIERS:
        return None
    ok, rvec, tvec = cv2.solvePnP(obj[good], img[good], camera.K, camera.dist_array, rvec,
                                  tvec, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    proj, _ = cv2.projectPoints(obj[good], rvec, tvec, camera.K, camera.dist_array)
    rms = float(np.sqrt(((proj.reshape(-1, 2) - img[good]) ** 2).sum(1).mean()))
    R_cw = cv2.Rodrigues(rvec)[0]
    centre = -R_cw.T @ tvec.ravel()  # (north, east, down) in the world frame
    return FramePose(
        t_ns=frame.t_ns, centre_en_m=prior_en + centre[[1, 0]],
        alt_amsl_m=float(tel.alt_amsl_m - tel.agl_m - centre[2]), R_ned_cam=R_cw.T,
        inliers=int(good.sum()), rms_px=rms,
    )


@dataclass(frozen=True)
class Track:
    """The logged position track. `t_ns`: [N] int64; `en_m`: [N, 2] map (E, N)."""

    t_ns: np.ndarray
    en_m: np.ndarray

    def at(self, t_ns: np.ndarray) -> np.ndarray:
        """[M, 2] (E, N) linearly interpolated at `t_ns` [M]."""
        t = np.asarray(t_ns, np.float64)
        return np.stack([np.interp(t, self.t_ns, self.en_m[:, k]) for k in (0, 1)], -1)

    def velocity(self, t_ns: np.ndarray, dt_s: float = 0.2) -> np.ndarray:
        """[M, 2] (vE, vN) m/s by a central difference over `dt_s`."""
        h = dt_s * 0.5e9
        t = np.asarray(t_ns, np.float64)
        return (self.at(t + h) - self.at(t - h)) / dt_s


def estimate_time_offset(t_ns: np.ndarray, centres_en: np.ndarray, track: Track,
                         iterations: int = 8) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(offset_s, its 1-sigma, bias [2], weights [N]) fitting camera centres [N, 2] at
    stamps `t_ns` [N] to the track; see the module docstring."""
    t = np.asarray(t_ns, np.float64)
    offset, w = 0.0, np.ones(len(t))
    v = track.velocity(t)
    spread = np.sqrt(((v - v.mean(0)) ** 2).sum(1).mean())
    if spread < _MIN_VEL_SPREAD_MPS:
        raise SkyfixError(
            f"the flight's velocity hardly changes (RMS {spread:.1f} m/s about its mean): "
            f"fly turns or rows both ways so that the time offset can be seen")
    sigma, bias = float("nan"), np.zeros(2)
    for _ in range(iterations):
        tt = t - offset * 1e9
        v = track.velocity(tt)
        r = centres_en - track.at(tt)  # = b - v * (offset_new - offset)
        # unknowns x = (d_offset, bE, bN): r = [-v | I] x
        A = np.zeros((2 * len(t), 3))
        A[0::2, 0], A[1::2, 0] = -v[:, 0], -v[:, 1]
        A[0::2, 1], A[1::2, 2] = 1.0, 1.0
        sw = np.repeat(np.sqrt(w), 2)
        x, *_ = np.linalg.lstsq(A * sw[:, None], r.reshape(-1) * sw, rcond=None)
        offset += float(x[0])
        bias = x[1:]
        res = np.linalg.norm((r.reshape(-1) - A @ x).reshape(-1, 2), axis=1)
        w = np.where(res <= _HUBER_M, 1.0, _HUBER_M / np.maximum(res, 1e-12))
        dof = max(2 * len(t) - 3, 1)
        s2 = float((w * res**2).sum() / dof)
        cov = s2 * np.linalg.inv((A * sw[:, None]).T @ (A * sw[:, None]))
        sigma = float(np.sqrt(cov[0, 0]))
    return offset, sigma, bias, w


def _angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angles in degrees of [..., 3, 3] rotations."""
    c = (np.trace(R, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def estimate_mount(R_ned_body: np.ndarray, R_ned_cam_: np.ndarray) -> tuple[np.ndarray, float, int]:
    """(R_body_cam [3, 3], RMS angle deg of the kept measurements, how many kept) from
    per-frame body [N, 3, 3] and camera [N, 3, 3] attitudes in NED."""
    M = np.einsum("nji,njk->nik", R_ned_body, R_ned_cam_)  # R_nb^T R_nc
    R = mean_rotation(M)
    for _ in range(3):
        ang = _angle_deg(np.einsum("ji,njk->nik", R, M))
        keep = ang <= max(3.0 * float(np.median(ang)), 0.05)
        R = mean_rotation(M[keep])
    ang = _angle_deg(np.einsum("ji,njk->nik", R, M[keep]))
    return R, float(np.sqrt((ang**2).mean())), int(keep.sum())


def calibrate_mount(flight_dir: Path, pack_path: Path, cfg: Config, min_frames: int = 10,
                    progress: bool = True) -> MountCalibration:
    """Estimate the mount and time offset of the recorded flight in `flight_dir`, whose
    log has good GNSS, against the map pack at `pack_path`."""
    if min_frames < 3:
        raise SkyfixError(f"--min-frames must be at least 3, got {min_frames}")
    flight = RecordedFlight.open(flight_dir)
    log = TelemetryLog.from_tlog(flight.telemetry_path)
    pack, encoder, local = open_map(pack_path, cfg)  # as the flight opens it
    track = Track(log.pos[:, 0].astype(np.int64), local.lla_to_map(log.pos[:, 1], log.pos[:, 2]))

    poses: list[FramePose] = []
    for item in tqdm(flight.frames(), total=len(flight.frame_files), desc="mount",
                     unit="frame", disable=not progress):
        if not isinstance(item, Frame):
            continue
        tel = log.at(item.t_ns)
        if tel is None or not track.t_ns[0] <= item.t_ns <= track.t_ns[-1]:
            continue
        pose = match_pose(item, tel, track.at(np.array([item.t_ns]))[0], flight.camera, pack,
                          encoder, cfg)
        if pose is not None:
            poses.append(pose)
    total = len(flight.frame_files)
    if len(poses) < min_frames:
        raise SkyfixError(f"only {len(poses)} of {total} frames matched the map pack "
                          f"{pack_path} (need at least {min_frames}): is the flight over it?")
    t = np.array([p.t_ns for p in poses], np.int64)
    centres = np.array([p.centre_en_m for p in poses])
    offset, sigma, bias, w = estimate_time_offset(t, centres, track)
    tels = [log.at(int(round(ti - offset * 1e9))) for ti in t]
    use = [i for i, tel in enumerate(tels) if tel is not None and w[i] >= 0.5]
    if len(use) < min_frames:
        raise SkyfixError(f"only {len(use)} frames agree with the GNSS track "
                          f"(need at least {min_frames})")
    grid = np.radians(pack.convergence_deg)  # the poses are in grid axes
    R_nb = np.array([R_ned_body(tels[i].roll_rad, tels[i].pitch_rad, tels[i].yaw_rad - grid)
                     for i in use])
    R_nc = np.array([poses[i].R_ned_cam for i in use])
    R_bc, rot_rms, kept = estimate_mount(R_nb, R_nc)
    err = euler_from_R_ned_body(R_bc @ R_BODY_CAM_NADIR.T)
    shifted = centres - track.at(t - offset * 1e9) - bias
    return MountCalibration(
        R_body_cam=R_bc, mount_error_deg=tuple(float(np.degrees(a)) for a in err),
        time_offset_s=offset, time_offset_sigma_s=sigma,
        bias_en_m=(float(bias[0]), float(bias[1])), frames_used=kept, frames_total=total,
        rotation_rms_deg=rot_rms,
        position_rms_m=float(np.sqrt((shifted[use] ** 2).sum(1).mean())),
    )
