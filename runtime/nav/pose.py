"""Camera pose from ground matches, so that a fix does not inherit the attitude's error.

The view was rectified with the reported attitude R_rep (camera -> NED) and height
above ground h: a view point at ground offset (e, n) stands for the camera ray

    b = R_rep^T [n, e, h]                                    (camera frame)

and its match gives where that ray really meets the ground: the map point P
(north, east, down) relative to a local origin, down = 0 on flat ground or minus the
terrain height above the reference. The true pose (R, C) satisfies, for each point,

    x = R^T (P - C),   (x0/x2, x1/x2) = (b0/b2, b1/b2)           (pinhole projection)

with R = Exp(w) R_rep. Gauss-Newton solves for w (3) and C (3), with the reported
attitude as a prior on w (roll/pitch `tilt_sigma`, yaw `yaw_sigma`), and for the radial
lens error k the camera model leaves (prior `lens_sigma`; the projection p becomes
p (1 + k |p|^2)): a lens model error, e.g. a camera guessed from EXIF without its
distortion, would otherwise pass for a tilt and move the fix by metres. Where the image
geometry pins the pose down the position no longer depends on the reported
attitude; where it does not (narrow field of view, few points) the prior takes over
and the covariance says so. Neighbouring features' errors are not independent, so
each residual is weighed with `inflation` times the image noise's variance: the same
weight the fix's covariance claims for the points, so that the image does not outweigh
the reported attitude by more than it is worth (from high up, across dates, points
that would otherwise settle the tilt move the fix by the height times their own
error). With J the Jacobian of all residuals whitened so,

    cov(w, C, k) = (J^T J + prior information)^-1,
    sigma_px^2 = sum(r^2) / (2N - unknowns)                         (re-estimated)

and the covariance of C's horizontal part is what the fix reports, plus what a warp of
the map adds: the map is not the world, and a smooth distortion of it across the view
(`warp_norm`, `match.map_warp_px` map pixels) is read as a tilt where it looks like one,
moving the position by the height times that tilt (`_warp_cov`); from high up, matches
across dates would otherwise claim a tilt, and so a position, their map cannot give.
The yaw's variance is also given without its prior (the information less
1 / yaw_sigma^2): what the image alone measures of the heading, for a filter that has
the reported heading already.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

_ITERATIONS = 8
_STEP = 1e-6  # numerical derivative step (radians / metres, relative to scale)


@dataclass(frozen=True)
class Pose:
    """Camera pose from the match. `C_ned_m`: [3] camera centre (north, east, down)
    relative to the points' origin; `w_rad`: [3] rotation taking the reported attitude
    to the estimated one (about north, east, down); `cov`: [6, 6] of (w, C);
    `sigma_norm`: residual 1-sigma in normalised image units."""

    C_ned_m: np.ndarray
    w_rad: np.ndarray
    cov: np.ndarray
    sigma_norm: float
    lens_k: float = 0.0
    yaw_var_image: float = float("nan")  # rad^2: the yaw's variance without its prior
    # [6, 6] of (w, C): what the map's warp adds to `cov` (_warp_cov)
    warp_cov: np.ndarray = field(default_factory=lambda: np.zeros((6, 6)))
    # [6, 6] of (w, C): the part of `cov` from the roll/pitch prior, cov L cov with L its
    # information (the rest is the image's noise): the error the reported attitude leaves
    attitude_cov: np.ndarray = field(default_factory=lambda: np.zeros((6, 6)))

    @property
    def cov_en_m2(self) -> np.ndarray:
        """[2, 2] covariance of the camera's (east, north)."""
        return self.cov[3:5, 3:5][::-1, ::-1].copy()

    @property
    def attitude_cov_en_m2(self) -> np.ndarray:
        """[2, 2] the part of `cov_en_m2` the reported roll/pitch's error brings in."""
        return self.attitude_cov[3:5, 3:5][::-1, ::-1].copy()

    @property
    def warp_cov_en_m2(self) -> np.ndarray:
        """[2, 2] covariance of the camera's (east, north) from the map's warp."""
        return self.warp_cov[3:5, 3:5][::-1, ::-1].copy()


def _residuals(params: np.ndarray, R_rep: np.ndarray, P: np.ndarray,
               obs: np.ndarray) -> np.ndarray:
    """[2N] projection errors in normalised image units of the points P [N, 3].

    params: w [3], C [3], k: radial lens error left by the camera model, which moves an
    image point p to p (1 + k |p|^2)."""
    R = cv2.Rodrigues(params[:3])[0] @ R_rep
    x = (P - params[3:6]) @ R  # rows: R^T (P - C)
    z = np.where(np.abs(x[:, 2]) > 1e-9, x[:, 2], 1e-9)
    p = x[:, :2] / z[:, None]
    return (p * (1 + params[6] * (p**2).sum(1, keepdims=True)) - obs).ravel()


def _warp_cov(J: np.ndarray, cov: np.ndarray, var: float, warp_norm: float) -> np.ndarray:
    """What a smooth warp of the map adds to the covariance of the parameters.

    A map warp that displaces the points as a tilt would (beyond the shift a tilt also
    makes, which the camera centre takes) is read as that tilt, and the tilt moves the
    position by the height times its angle. Modelled as residual noise G g, g ~ N(0, I2),
    with G the tilt's columns of J less their projection on the camera centre's, scaled
    so that its largest displacement among the points is `warp_norm`. The estimate
    weighs each residual with variance `var` (cov = A^-1); its error covariance under that
    noise is the sandwich A^-1 (A + J^T G G^T J / var^2) A^-1, i.e. `cov` plus the result."""
    m = len(cov)
    if warp_norm <= 0:
        return np.zeros((m, m))
    Jw, Jc = J[:, :2], J[:, 3:6]
    G = Jw - Jc @ np.linalg.lstsq(Jc, Jw, rcond=None)[0]
    amp = float(np.sqrt((G.reshape(-1, 2, 2) ** 2).sum(1).max()))  # per point, per column
    if not amp > 0:
        return np.zeros((m, m))
    K = cov @ (J.T @ G) * (warp_norm / amp / var)
    return K @ K.T


def solve_pose(offsets_en_m: np.ndarray, points_ned_m: np.ndarray, R_rep: np.ndarray,
               agl_m: float, C0_ned_m: np.ndarray, tilt_sigma_rad: float,
               yaw_sigma_rad: float, sigma_norm0: float, lens_sigma: float = 0.0,
               warp_norm: float = 0.0, inflation: float = 1.0) -> Pose | None:
    """The camera pose explaining N >= 6 ground matches, or None if it does not converge.

    `offsets_en_m`: [N, 2] view offsets from nadir (east, north) under the reported
    attitude; `points_ned_m`: [N, 3] the matched ground points; `R_rep`: [3, 3] reported
    camera -> NED; `C0_ned_m`: [3] starting camera centre; `sigma_norm0`: a first guess
    of the image noise (normalised units), re-estimated from the residuals;
    `inflation`: how many times the variance of independent points the image noise has
    (the module doc): the points are weighed with it against the priors.
    """
    n = len(offsets_en_m)
    if n < 6:
        return None
    rays = np.column_stack([offsets_en_m[:, 1], offsets_en_m[:, 0], np.full(n, agl_m)])
    b = rays @ R_rep  # rows: R_rep^T ray
    obs = b[:, :2] / b[:, 2:3]
    # Unknowns: w, C, and the lens error k when `lens_sigma` > 0 (else k stays 0).
    # Priors: w about the reported attitude, k about 0.
    m = 7 if lens_sigma > 0 else 6
    prior_sigma = np.array([tilt_sigma_rad, tilt_sigma_rad, yaw_sigma_rad, lens_sigma])
    prior_idx = [0, 1, 2, 6][: m - 3]
    prior_sigma = prior_sigma[: m - 3]
    params = np.concatenate([np.zeros(3), C0_ned_m, [0.0]])
    sigma = sigma_norm0
    for it in range(_ITERATIONS):
        r = _residuals(params, R_rep, points_ned_m, obs)
        J = np.empty((2 * n, m))
        for k in range(m):
            h = _STEP * (max(1.0, abs(C0_ned_m[2])) if 3 <= k < 6 else 1.0)
            d = np.zeros(7)
            d[k] = h
            J[:, k] = (_residuals(params + d, R_rep, points_ned_m, obs) - r) / h
        if it >= 2:  # re-estimate the image noise once the pose has settled
            sigma = max(float(np.sqrt(r @ r / max(2 * n - m, 1))), 1e-6)
        var = inflation * sigma**2  # the weight of each residual
        A = J.T @ J / var
        A[prior_idx, prior_idx] += 1.0 / prior_sigma**2
        g = J.T @ r / var
        g[prior_idx] += params[prior_idx] / prior_sigma**2
        try:
            step = np.linalg.solve(A, -g)
        except np.linalg.LinAlgError:
            return None
        params[:m] = params[:m] + step
        if np.abs(step[3:6]).max() < 1e-4 and np.abs(step[prior_idx]).max() < 1e-7:
            break
    r = _residuals(params, R_rep, points_ned_m, obs)
    if not np.all(np.isfinite(params)) or params[5] >= 0:  # the camera must be above ground
        return None
    try:
        cov = np.linalg.inv(A)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(cov)):
        return None
    warp = _warp_cov(J, cov, var, warp_norm)
    attitude = cov[:, :2] @ cov[:2, :] / tilt_sigma_rad**2
    # what the image alone says of the yaw: the same information less the yaw's prior
    A[2, 2] -= 1.0 / yaw_sigma_rad**2
    try:
        yaw_var = float(np.linalg.inv(A)[2, 2])
    except np.linalg.LinAlgError:
        yaw_var = float("nan")
    return Pose(params[3:6].copy(), params[:3].copy(), cov[:6, :6], sigma, float(params[6]),
                yaw_var if yaw_var > 0 else float("nan"), warp[:6, :6], attitude[:6, :6])
