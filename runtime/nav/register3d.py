"""A whole frame registered in six degrees of freedom against a survey's 3-D points.

    frame --SIFT (COLMAP's, the photo scaled as the survey's were)--> keypoints, descriptors
    --the two nearest map descriptors of different points, among the points near the
      prior, Lowe's ratio--> 2-D / 3-D pairs
    --PnP, LO-RANSAC and refinement (pycolmap)--> the camera's position and attitude
    --> Fix: the camera centre; its covariance from the reprojection residuals and a block
        jackknife over the frame

A pack made by `skyfix maps survey` (teach and repeat) carries the structure from motion's
sparse points: map east, north (the pack's CRS) and altitude, and the descriptor of every
photo that saw each (`survey_points.npz`). The rectified view matched against the mosaic
(`match.py`) is a few hundred map pixels: there a camera tilted by 3 deg and a camera
moved by its height times 3 deg look the same, so a camera whose attitude is not known
(a gimbal that lags after each turn; a log without attitude) is off by that much. The
frame's own pixels against points at their true heights (tree tops, roofs) tell the two
apart: the registration measures the attitude and the position together.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from skyfix.maps.index import SEARCH_THREADS
from skyfix.maps.survey_points import SIFT_MAX_FEATURES, SurveyPoints, sift_options
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.colmap import load_pycolmap
from skyfix.runtime.core.config import MatchConfig
from skyfix.runtime.core.geo import NED_FROM_ENU
from skyfix.runtime.core.types import Fix, Rejection, View
from skyfix.runtime.nav.match import CORRELATION_INFLATION
from skyfix.runtime.nav.rectify import to_gray
from skyfix.runtime.nav.retrieve import Prior

NEIGHBOURS = 4  # map descriptors looked at per feature: the second point's may be 2nd-4th
JACKKNIFE_CELLS = 3  # the frame cut into 3 x 3 cells, each left out once


@dataclass(frozen=True)
class _Pose:
    """Camera centre C [3] (ENU world) and R_cam_world [3, 3]."""

    C: np.ndarray
    R: np.ndarray


class Registrar:
    """Registers frames of `camera` against `points` (match.ratio, ransac_px at the SIFT
    scale, min_inliers, max_rotation_deg, sigma_floor_m and heading_floor_deg of `cfg`)."""

    def __init__(self, points: SurveyPoints, camera: CameraModel, cfg: MatchConfig):
        self._pycolmap = pycolmap = load_pycolmap("the registration against a map pack's "
                                                  "survey points")
        self.points, self.camera, self.cfg = points, camera, cfg
        self.scale = min(1.0, points.sift_max_px / max(camera.width, camera.height))
        self._sift = pycolmap.FeatureExtractor.create(
            sift_options(pycolmap, points.sift_max_px, SIFT_MAX_FEATURES), pycolmap.Device.cpu)
        d = points.descriptors.astype(np.float32)
        self._unit = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
        # undistorted pixels, COLMAP's convention (pixel centres at +0.5)
        self._pinhole = pycolmap.Camera(model="PINHOLE", width=camera.width,
                                        height=camera.height,
                                        params=[camera.fx, camera.fy, camera.cx + 0.5,
                                                camera.cy + 0.5])

    def register(self, image: np.ndarray, view: View, prior: Prior) -> Fix | Rejection:
        """The fix of the frame `image` ([H, W] gray or [H, W, 3] BGR, the camera's size)
        whose north-up `view` holds the reported attitude, searched among the points inside
        `prior` (all of them without one)."""
        t_ns, cfg = view.t_ns, self.cfg
        gray = to_gray(image)
        if gray.shape != (self.camera.height, self.camera.width):
            return Rejection(t_ns, "no_view", f"frame of {gray.shape[1]}x{gray.shape[0]} px, "
                             f"the camera's is {self.camera.width}x{self.camera.height}")
        px, desc = self._features(gray)
        cand = self._candidates(view, prior)
        pairs = _pairs(desc, self._unit[cand], self.points.point[cand], cfg.ratio)
        if len(pairs) < cfg.min_inliers:
            return Rejection(t_ns, "few_inliers", f"{len(pairs)} < {cfg.min_inliers} survey "
                                                  "matches")
        uv = px[pairs[:, 0]]
        xyz = self.points.xyz_m[self.points.point[cand][pairs[:, 1]]]
        origin = xyz.mean(axis=0)
        est = self._pycolmap.AbsolutePoseEstimationOptions()
        est.ransac.max_error = cfg.ransac_px / self.scale
        est.ransac.random_seed = 0  # the same frame gives the same fix
        found = self._pycolmap.estimate_and_refine_absolute_pose(uv, xyz - origin,
                                                                 self._pinhole, est)
        inliers = 0 if found is None else int(np.sum(found["inlier_mask"]))
        if inliers < cfg.min_inliers:
            return Rejection(t_ns, "few_inliers", f"{inliers} < {cfg.min_inliers} survey "
                                                  "inliers")
        keep = np.asarray(found["inlier_mask"], bool)
        uv, xyz = uv[keep], xyz[keep] - origin
        pose = _pose_of(found["cam_from_world"])
        R_ned_cam = NED_FROM_ENU @ pose.R.T
        # rotation from the reported camera attitude to the measured one, about N, E, D
        turn = cv2.Rodrigues(R_ned_cam @ view.R_ned_cam.T)[0].ravel()
        heading_err = float(np.degrees(turn[2]))
        # a stand-in attitude (a level camera along the course) says nothing of the yaw in
        # a turn; a measured one does (the compass's own error corrected: nav/heading.py)
        if view.attitude_measured and abs(heading_err) > cfg.max_rotation_deg:
            return Rejection(t_ns, "heading", f"survey registration turned {heading_err:+.1f} "
                                              "deg from the reported heading")
        cov, yaw_var = self._covariance(pose, uv, xyz)
        jack = self._jackknife(pose, uv, xyz, found["cam_from_world"])
        cov_en = (CORRELATION_INFLATION * cov[:2, :2] + jack
                  + cfg.sigma_floor_m**2 * np.eye(2))
        ground = view.ground_m
        C = pose.C + origin
        return Fix(
            t_ns=t_ns, east_m=float(C[0]), north_m=float(C[1]), cov_en_m2=cov_en,
            agl_m=float(C[2] - ground) if np.isfinite(ground) else view.agl_m,
            heading_err_deg=heading_err,
            tilt_ne_deg=(float(np.degrees(turn[0])), float(np.degrees(turn[1]))),
            heading_sigma_deg=float(np.hypot(np.degrees(np.sqrt(CORRELATION_INFLATION
                                                                 * yaw_var)),
                                             cfg.heading_floor_deg)),
            inliers=inliers, tile_id=-1, level=-1, shared_cov_en_m2=jack,
        )

    def _features(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([K, 2] undistorted pixel positions at full size, COLMAP's convention; [K, 128]
        unit descriptors) of the SIFT features of the frame `gray` (the camera's size)."""
        w = max(1, round(self.camera.width * self.scale))
        h = max(1, round(self.camera.height * self.scale))
        small = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA) if self.scale < 1 \
            else gray
        kp, desc = self._sift.extract_from_uint8_array(np.ascontiguousarray(small))
        if len(kp) == 0:
            return np.zeros((0, 2)), np.zeros((0, 128), np.float32)
        kxy = np.array([(k.x, k.y, k.compute_scale()) for k in kp], np.float64)
        d = np.asarray(desc.data, np.float32)
        if len(kxy) > SIFT_MAX_FEATURES:  # the coarsest features, as COLMAP keeps
            keep = np.argsort(-kxy[:, 2], kind="stable")[:SIFT_MAX_FEATURES]
            kxy, d = kxy[keep], d[keep]
        # COLMAP scales a photo's keypoints back by the sizes' ratio; OpenCV's pixel centres
        # are at 0 for the undistortion
        xy = kxy[:, :2] * [self.camera.width / w, self.camera.height / h]
        und = cv2.undistortPoints((xy - 0.5).reshape(-1, 1, 2), self.camera.K,
                                  self.camera.dist_array, P=self.camera.K).reshape(-1, 2)
        return und + 0.5, d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)

    def _candidates(self, view: View, prior: Prior) -> np.ndarray | slice:
        """Indices of the descriptors whose points lie within the prior window's radius
        plus the frame's reach on the ground from its centre (all, without a prior: a
        slice, so that no frame copies them)."""
        if prior.source == "none":
            return slice(None)
        radius = (float(np.sqrt(np.linalg.eigvalsh(prior.window_cov).max()))
                  + float(np.linalg.norm(view.footprint_m, axis=1).max()))
        d = np.linalg.norm(self.points.xyz_m[self.points.point, :2] - prior.centre_en, axis=1)
        return np.flatnonzero(d <= radius)

    def _covariance(self, pose: _Pose, uv: np.ndarray, xyz: np.ndarray
                    ) -> tuple[np.ndarray, float]:
        """([3, 3] covariance of the camera centre, variance of its yaw) from the inliers'
        reprojection residuals: sigma^2 (J^T J)^-1 over the centre and a turn of the camera
        about the world's axes."""
        def residuals(p: np.ndarray) -> np.ndarray:
            R = pose.R @ cv2.Rodrigues(p[3:])[0].T  # the camera turned by p[3:] (world)
            return (self._project(R, pose.C + p[:3], xyz) - uv).ravel()

        r0 = residuals(np.zeros(6))
        J = np.empty((len(r0), 6))
        for k, step in enumerate((1e-3, 1e-3, 1e-3, 1e-6, 1e-6, 1e-6)):
            e = np.zeros(6)
            e[k] = step
            J[:, k] = (residuals(e) - residuals(-e)) / (2 * step)
        dof = max(1, len(r0) - 6)
        cov = float(r0 @ r0) / dof * np.linalg.pinv(J.T @ J)
        return cov[:3, :3], float(cov[5, 5])

    def _project(self, R: np.ndarray, C: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        pc = (xyz - C) @ R.T
        z = np.where(np.abs(pc[:, 2]) > 1e-9, pc[:, 2], 1e-9)
        cam = self.camera
        return np.column_stack([cam.fx * pc[:, 0] / z + cam.cx + 0.5,
                                cam.fy * pc[:, 1] / z + cam.cy + 0.5])

    def _jackknife(self, pose: _Pose, uv: np.ndarray, xyz: np.ndarray, cam_from_world
                   ) -> np.ndarray:
        """[2, 2] block-jackknife covariance of the centre's east/north: the pose refined
        again with each cell of a 3 x 3 grid over the frame left out. Errors that
        neighbouring points share (a tree's points off by its sway, a roof's by a
        reconstruction error) move the pose without showing in the residuals."""
        n = JACKKNIFE_CELLS
        cell = (np.minimum(uv[:, 0] * n // self.camera.width, n - 1) * n
                + np.minimum(uv[:, 1] * n // self.camera.height, n - 1)).astype(int)
        opts = self._pycolmap.AbsolutePoseRefinementOptions()
        centres = []
        for c in np.unique(cell):
            keep = cell != c
            if keep.sum() < self.cfg.min_inliers:
                continue
            out = self._pycolmap.refine_absolute_pose(cam_from_world, uv[keep], xyz[keep],
                                                      np.ones(int(keep.sum()), bool),
                                                      self._pinhole, opts)
            if out is not None:
                centres.append(_pose_of(out["cam_from_world"]).C[:2])
        if len(centres) < 2:
            return np.zeros((2, 2))
        d = np.asarray(centres) - np.mean(centres, axis=0)
        return (len(centres) - 1) / len(centres) * d.T @ d


def _pose_of(cam_from_world) -> _Pose:
    R = np.asarray(cam_from_world.rotation.matrix(), np.float64)
    t = np.asarray(cam_from_world.translation, np.float64)
    return _Pose(-R.T @ t, R)


def _pairs(query: np.ndarray, train: np.ndarray, point: np.ndarray, ratio: float
           ) -> np.ndarray:
    """[K, 2] (query index, train index) of the features whose nearest map descriptor is
    nearer than `ratio` times the nearest of another point, one feature per point (the
    nearest). `query`, `train`: unit descriptors; the NEIGHBOURS nearest by inner product
    (distance^2 = 2 - 2 cos), exact, from faiss (one thread, as the tile search)."""
    import faiss

    if len(query) == 0 or len(train) < 2:
        return np.zeros((0, 2), np.int64)
    faiss.omp_set_num_threads(SEARCH_THREADS)
    sim, near = faiss.knn(np.ascontiguousarray(query, np.float32),
                          np.ascontiguousarray(train, np.float32),
                          min(NEIGHBOURS, len(train)), metric=faiss.METRIC_INNER_PRODUCT)
    dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sim))
    differs = point[near[:, 1:]] != point[near[:, :1]]  # neighbours of another point
    first = np.argmax(differs, axis=1)
    other = np.where(differs.any(axis=1), dist[np.arange(len(near)), 1 + first], np.inf)
    ok = dist[:, 0] < ratio * other
    q, t, d = np.flatnonzero(ok), near[ok, 0], dist[ok, 0]
    order = np.lexsort((d, point[t]))  # per point, the nearest feature first
    first_of_point = np.ones(len(order), bool)
    first_of_point[1:] = point[t[order]][1:] != point[t[order]][:-1]
    keep = order[first_of_point]
    return np.column_stack([q[keep], t[keep]]).astype(np.int64)
