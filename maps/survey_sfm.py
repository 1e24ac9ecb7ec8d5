"""Structure from motion of a GNSS-tagged nadir survey (pycolmap), georeferenced by the GNSS.

    photos --SIFT at <= SFM_MAX_PX--> features --pairs within the footprint of each other's
    GNSS position (spatial matching)--> verified matches --incremental mapping, pass 1:
    geometry alone--> camera + the camera clock's offset --pass 2: mapping again with the
    GNSS positions at the corrected times as position priors--> cameras + sparse points
    --similarity onto the GNSS--> SurveyModel in the survey's projected CRS

One camera is shared by all photos (SIMPLE_RADIAL: f, cx, cy, k1), its focal length and
distortion refined by the bundle adjustment from the first guess given. Positions are
handled relative to `origin_m` (the mean GNSS position) so that the solver sees numbers of
a few hundred metres, not millions.

The last step fits the similarity (Umeyama) that takes the reconstructed camera centres
c_i onto the GNSS positions g_i,

    min_{s, R, t} sum_i | g_i - (s R c_i + t) |^2,

with the centroids mu_c, mu_g, the covariance S = sum (g_i - mu_g)(c_i - mu_c)^T / n and its
SVD S = U D V^T: R = U diag(1, 1, det(U V^T)) V^T, s = trace(diag(D) E) / var(c), t = mu_g -
s R mu_c. The residuals |g_i - (s R c_i + t)| after it are the map's own georeferencing
error against the GNSS (`GeorefError`); the GNSS's own error is in them too.

pycolmap (PyPI, BSD-3-Clause) is the `survey` extra, imported when a survey is built
(runtime/core/colmap.py).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.crs import CRS

from skyfix.maps.survey_points import SIFT_MAX_FEATURES, sift_options
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.colmap import load_pycolmap
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import (
    NED_FROM_ENU,
    R_BODY_CAM_NADIR,
    R_ned_body,
    euler_from_R_ned_body,
    grid_convergence_deg,
    mean_rotation,
)

SFM_MAX_PX = 1024  # features are found on the photo scaled to this longest side
PRIOR_SIGMA_M = 3.0  # 1-sigma error of a GNSS position prior (each axis)
MIN_FRAMES = 5  # a survey of fewer photos is refused
MIN_REGISTERED_SHARE = 0.6  # SfM must place at least this share of the photos
MIN_POSE_INLIERS = 15  # a photo is placed on this many 2D-3D inliers (COLMAP: 30)
MAX_TIME_OFFSET_S = 5.0  # a larger camera clock offset is not estimated, only reported as 0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SurveyFrames:
    """Nadir photos with the GNSS position of each. `enu_m`: [N, 3] float64 (east, north)
    in `crs` metres and altitude AMSL; `vel_enu_mps`: [N, 3] the GNSS velocity then (for the
    camera clock's offset); `camera`: first guess of the photos' camera."""

    files: tuple[Path, ...]
    enu_m: np.ndarray
    vel_enu_mps: np.ndarray
    rpy_rad: np.ndarray  # [N, 3] the telemetry's body attitude (roll, pitch, yaw in NED)
    crs: CRS
    camera: CameraModel
    agl_m: float  # typical height above the ground, for the matching radius
    camera_calibrated: bool = False  # True: `camera` is a calibration, not an EXIF guess


@dataclass(frozen=True)
class SurveyPose:
    """One registered photo. World = (east, north, altitude) in the survey CRS, metres.
    `R_cam_world`: [3, 3] maps world directions into the camera (x right, y down, z along
    the optical axis); `centre_m`, `gnss_m`: [3] its SfM and GNSS positions."""

    file: Path
    R_cam_world: np.ndarray
    centre_m: np.ndarray
    gnss_m: np.ndarray

    def project(self, camera: CameraModel, world_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([M, 2] pixel positions, [M] bool in front of the camera) of world points [M, 3]."""
        pc = (world_m - self.centre_m) @ self.R_cam_world.T  # X_cam = R (X_world - C)
        z = pc[:, 2]
        front = z > 1e-6
        xy = pc[:, :2] / np.where(front, z, 1.0)[:, None]
        return camera.distort_normalized(xy), front


@dataclass(frozen=True)
class GeorefError:
    """SfM camera centres against the GNSS after the similarity fit, metres."""

    frames_given: int
    frames_registered: int
    horizontal_rms_m: float
    horizontal_p50_m: float
    horizontal_p95_m: float
    horizontal_max_m: float
    vertical_rms_m: float
    scale: float  # of the similarity: SfM units -> metres (the priors make it ~1)
    focal_px: float  # refined focal length at full resolution
    k1: float
    time_offset_s: float  # photo time + this = GNSS time of the photo (see _time_offset)
    horizontal_rms_before_offset_m: float  # the fit at the photo times as given
    mount_rpy_deg: tuple[float, float, float]  # camera mount against the telemetry's body


@dataclass(frozen=True)
class SurveyModel:
    crs: CRS
    camera: CameraModel  # refined, full resolution, OpenCV pixel convention
    poses: tuple[SurveyPose, ...]
    points_m: np.ndarray  # [P, 3] sparse points, world metres
    georef: GeorefError
    # [M, 128] uint8 COLMAP SIFT of every observation of a point, and [M] the point of each
    descriptors: np.ndarray = field(default_factory=lambda: np.zeros((0, 128), np.uint8))
    descriptor_point: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))


def reconstruct(frames: SurveyFrames, work: Path | None = None, threads: int = 2,
                progress: bool = True) -> SurveyModel:
    """Run SfM on `frames` and georeference it onto their GNSS positions.

    Raises SkyfixError when pycolmap is missing, there are too few photos, or fewer than
    MIN_REGISTERED_SHARE of them could be placed."""
    n = len(frames.files)
    if n < MIN_FRAMES:
        raise SkyfixError(f"{n} photos are too few for a survey map (at least {MIN_FRAMES})")
    pycolmap = load_pycolmap("maps survey")
    if work is None:
        with tempfile.TemporaryDirectory(prefix="skyfix-sfm-") as tmp:
            return _reconstruct(pycolmap, frames, Path(tmp), threads, progress)
    return _reconstruct(pycolmap, frames, Path(work), threads, progress)


def _reconstruct(pycolmap, frames: SurveyFrames, work: Path, threads: int,
                 progress: bool) -> SurveyModel:
    from tqdm import tqdm

    work.mkdir(parents=True, exist_ok=True)
    db_path = work / "database.db"
    db_path.unlink(missing_ok=True)
    root = frames.files[0].parent
    if any(f.parent != root for f in frames.files):
        raise SkyfixError("survey photos must lie in one folder")
    names = [f.name for f in frames.files]
    origin = frames.enu_m.mean(axis=0)
    prior = frames.enu_m - origin
    cam = frames.camera
    steps = tqdm(total=3, desc="survey SfM", unit="step", disable=not progress)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"  # COLMAP pixel centres are at +0.5
    reader.camera_params = f"{cam.fx},{cam.cx + 0.5},{cam.cy + 0.5},0"
    extract = sift_options(pycolmap, SFM_MAX_PX, SIFT_MAX_FEATURES, threads)
    pycolmap.extract_features(db_path, root, names, camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, extraction_options=extract)
    steps.update()
    with pycolmap.Database.open(db_path) as db:
        # an EXIF focal length can be far off (the ZR10 writes one 2.2x too long): trusted
        # as a prior, it would make the two-view verification throw good pairs away
        camera = next(iter(db.read_all_cameras()))
        camera.has_prior_focal_length = frames.camera_calibrated
        db.update_camera(camera)
    _write_priors(pycolmap, db_path, names, prior)  # spatial matching pairs by them
    pairing = pycolmap.SpatialPairingOptions()
    # photos whose footprints can overlap: 1.5 x the footprint's diagonal at the survey height
    pairing.max_distance = float(1.5 * frames.agl_m * np.hypot(cam.width, cam.height) / cam.fx)
    pairing.num_threads = threads
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    pycolmap.match_spatial(db_path, matching_options=matching, pairing_options=pairing)
    steps.update()
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.multiple_models = False
    options.random_seed = 0
    # sparse surveys (30 % forward overlap, every other line) leave a photo few points
    options.mapper.abs_pose_min_num_inliers = MIN_POSE_INLIERS
    options.mapper.abs_pose_min_inlier_ratio = 0.15
    # ... and much of their ground is seen by two photos only. COLMAP leaves such points out
    # by default (a third view confirms a point); kept, the flights registered against the
    # map find points where its lines barely overlap (ZR10, every other line: 3.2x the
    # points; README "Survey-built maps")
    options.triangulation.ignore_two_view_tracks = False
    # Pass 1, geometry alone: GNSS positions at the photo times are off along the track by
    # the camera clock's offset, and as priors they would bend a flat-ground survey (camera
    # shifted along the track + tilted back fits the photos about as well). Its cameras give
    # the offset; pass 2 maps again from its camera with the GNSS priors at the corrected
    # times.
    options.use_prior_position = False
    first = _map(pycolmap, db_path, root, work, options, len(names))
    idx, centres = _centres(first, names)
    dt = (_time_offset(centres, prior[idx], frames.vel_enu_mps[idx])[0]
          if len(idx) >= MIN_FRAMES else 0.0)
    log.info("SfM pass 1 placed %d of %d photos; camera clock %+.2f s", len(idx), len(names),
             dt)
    with pycolmap.Database.open(db_path) as db:
        camera = next(iter(db.read_all_cameras()))
        camera.params = next(iter(first.cameras.values())).params
        db.update_camera(camera)
    _write_priors(pycolmap, db_path, names, prior + dt * frames.vel_enu_mps)
    options.use_prior_position = True
    second = _map(pycolmap, db_path, root, work, options, len(names))
    rec = second if second.num_reg_images() >= first.num_reg_images() else first
    steps.update()
    steps.close()
    return _georeference(pycolmap, rec, names, frames, origin, dt, db_path)


def _write_priors(pycolmap, db_path: Path, names: list[str], positions: np.ndarray) -> None:
    """GNSS position priors [N, 3] (relative to the origin) of every photo in the database,
    replacing any (the photos' own EXIF GPS, an earlier pass)."""
    cov = np.eye(3) * PRIOR_SIGMA_M**2
    with pycolmap.Database.open(db_path) as db:
        db.clear_pose_priors()
        for image in db.read_all_images():
            db.write_pose_prior(pycolmap.PosePrior(
                position=positions[names.index(image.name)], position_covariance=cov,
                coordinate_system=pycolmap.PosePriorCoordinateSystem.CARTESIAN,
                corr_data_id=image.data_id))


def _centres(rec, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """([K] photo indices, [K, 3] camera centres) of the photos `rec` placed."""
    images = sorted(rec.images.values(), key=lambda im: names.index(im.name))
    return (np.array([names.index(im.name) for im in images], np.int64),
            np.array([im.projection_center() for im in images]).reshape(-1, 3))


def _map(pycolmap, db_path: Path, root: Path, work: Path, options, n: int):
    """The largest reconstruction of an incremental mapping run."""
    recs = pycolmap.incremental_mapping(db_path, root, work, options)
    if not recs:
        raise SkyfixError(f"SfM placed none of the {n} photos (too little overlap or "
                          "texture?)")
    return max(recs.values(), key=lambda r: r.num_reg_images())


def _georeference(pycolmap, rec, names: list[str], frames: SurveyFrames, origin: np.ndarray,
                  dt0: float, db_path: Path) -> SurveyModel:
    """The model of `rec` on the GNSS positions at the photo times + `dt0` (+ what is left
    of the clock offset, fitted again), with the descriptors of its points' observations
    from the database at `db_path`."""
    n = len(names)
    images = sorted(rec.images.values(), key=lambda im: names.index(im.name))
    if len(images) < max(MIN_FRAMES, MIN_REGISTERED_SHARE * n):
        raise SkyfixError(f"SfM placed {len(images)} of {n} photos (at least "
                          f"{MIN_REGISTERED_SHARE:.0%} needed): too little overlap or texture")
    idx, centres = _centres(rec, names)
    gnss0 = frames.enu_m[idx] - origin
    s, R, t = _robust_similarity(centres, gnss0)
    r0 = centres @ (s * R).T + t - gnss0
    rms0 = float(np.sqrt(np.mean(r0[:, 0] ** 2 + r0[:, 1] ** 2)))
    vel = frames.vel_enu_mps[idx]
    dt, s, R, t = _time_offset(centres, gnss0 + dt0 * vel, vel)
    dt += dt0
    gnss = gnss0 + dt * vel
    # world' = s R world + t: camera rotations turn by R^T, centres and points map through it
    poses = []
    for k, im in enumerate(images):
        R_cw = np.asarray(im.cam_from_world().rotation.matrix()) @ R.T
        poses.append(SurveyPose(frames.files[idx[k]], R_cw, s * R @ centres[k] + t + origin,
                                gnss[k] + origin))
    pts = np.array([p.xyz for p in rec.points3D.values()]).reshape(-1, 3)
    points = pts @ (s * R).T + t + origin
    descriptors, descriptor_point = _observations(pycolmap, rec, db_path)
    c = next(iter(rec.cameras.values()))
    f, cx, cy, k1 = (float(v) for v in c.params)
    camera = CameraModel(int(c.width), int(c.height), f, f, cx - 0.5, cy - 0.5,
                         (k1, 0.0, 0.0, 0.0, 0.0))
    res = np.array([p.centre_m - p.gnss_m for p in poses])
    h = np.hypot(res[:, 0], res[:, 1])
    georef = GeorefError(n, len(images), float(np.sqrt(np.mean(h**2))),
                         float(np.percentile(h, 50)), float(np.percentile(h, 95)),
                         float(h.max()), float(np.sqrt(np.mean(res[:, 2] ** 2))), float(s), f,
                         k1, dt, rms0, _mount(poses, frames.rpy_rad[idx], grid_convergence_deg(
                             frames.crs, *frames.enu_m[:, :2].mean(0))))
    log.info("SfM placed %d of %d photos; georeferencing error %.2f m RMS", len(images), n,
             georef.horizontal_rms_m)
    return SurveyModel(frames.crs, camera, tuple(poses), points, georef, descriptors,
                       descriptor_point)


def _observations(pycolmap, rec, db_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """([M, 128] uint8 descriptors, [M] int32 point index in `rec.points3D`'s order) of
    every observation of every point of `rec`."""
    desc, point, cache = [], [], {}
    with pycolmap.Database.open(db_path) as db:
        for k, p in enumerate(rec.points3D.values()):
            for el in p.track.elements:
                if el.image_id not in cache:
                    cache[el.image_id] = np.asarray(db.read_descriptors(el.image_id).data)
                desc.append(cache[el.image_id][el.point2D_idx])
                point.append(k)
    return (np.asarray(desc, np.uint8).reshape(-1, 128), np.asarray(point, np.int32))


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R [3, 3], t [3]) minimising sum |dst - (s R src + t)|^2 (Umeyama, see above)."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    var = float(np.mean(np.sum(a**2, axis=1)))
    if var <= 0:
        raise SkyfixError("the SfM camera centres coincide: no georeferencing possible")
    U, D, Vt = np.linalg.svd(b.T @ a / len(src))
    E = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    R = U @ E @ Vt
    s = float(np.trace(np.diag(D) @ E) / var)
    return s, R, mu_d - s * R @ mu_s


def _mount(poses: list[SurveyPose], rpy_rad: np.ndarray, convergence_deg: float
           ) -> tuple[float, float, float]:
    """(roll, pitch, yaw) deg of the camera mount (runtime/core/geo.mount_rotation, the
    `rectify.mount_*_deg` options) that the SfM cameras show against the telemetry's body
    attitude: R_body_cam_i = R_ned_body_i^T P R_cam_world_i^T, its turn away from the
    nadir mount M_i = R_body_cam_i R_BODY_CAM_NADIR^T, averaged over the photos (the
    chordal mean: the rotation nearest sum M_i). The cameras are in the map grid's axes,
    so the attitude's yaw is reduced by the grid convergence `convergence_deg`."""
    grid = np.radians(convergence_deg)
    M = mean_rotation(np.array([
        R_ned_body(rpy[0], rpy[1], rpy[2] - grid).T @ NED_FROM_ENU @ pose.R_cam_world.T
        @ R_BODY_CAM_NADIR.T for pose, rpy in zip(poses, rpy_rad, strict=True)]))
    roll, pitch, yaw = np.degrees(euler_from_R_ned_body(M))
    return float(roll), float(pitch), float(yaw)


def _time_offset(centres: np.ndarray, gnss: np.ndarray, vel: np.ndarray
                 ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(dt, s, R, t): the camera clock's offset from the GNSS clock, with the similarity
    fitted to the GNSS positions at the photo times + dt.

    A photo stamped dt too early sits on the track where the GNSS is dt later:
    g_i(dt) ~ g_i + v_i dt. Alternating with the similarity fit, dt is the least-squares
    solution of the horizontal residuals r_i = (s R c_i + t) - g_i ~ v_i dt,

        dt = sum_i v_i . r_i / sum_i v_i . v_i,

    which flight lines flown in both directions make observable (one direction alone
    cannot tell a clock offset from a shift of the map). Beyond MAX_TIME_OFFSET_S, or
    without motion, dt is 0."""
    vh = vel[:, :2]
    dt = 0.0
    s, R, t = _robust_similarity(centres, gnss)
    if float(np.sum(vh * vh)) <= 0:
        return dt, s, R, t
    for _ in range(5):
        g = gnss + dt * vel
        s, R, t = _robust_similarity(centres, g)
        r = (centres @ (s * R).T + t - g)[:, :2]
        dt += float(np.sum(vh * r) / np.sum(vh * vh))
    if not abs(dt) <= MAX_TIME_OFFSET_S:
        return 0.0, *_robust_similarity(centres, gnss)
    return dt, *_robust_similarity(centres, gnss + dt * vel)


def _robust_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity fitted again without centres more than 3 x the median residual (and
    PRIOR_SIGMA_M) off: one wrongly placed photo must not tilt the map."""
    s, R, t = similarity(src, dst)
    r = np.linalg.norm(dst - (src @ (s * R).T + t), axis=1)
    keep = r <= max(3 * float(np.median(r)), PRIOR_SIGMA_M)
    if keep.sum() >= MIN_FRAMES and not keep.all():
        s, R, t = similarity(src[keep], dst[keep])
    return s, R, t
