"""Rectification: frame + attitude + height above ground -> north-up orthographic view.

The ground is taken as a plane `agl_m` below the camera. A view pixel (u, v) is the
ground point at (east, north) = (x0 + u * gsd, y1 - v * gsd) metres from the point
straight below the camera, i.e. the NED ray (north, east, down) = A @ [u, v, 1] with

    A = [[0, -gsd, y1],
         [gsd,  0, x0],
         [0,    0, agl]]

and its ideal (undistorted) image point is K @ R_cam_ned @ A @ [u, v, 1], so the whole
warp is one homography applied to the undistorted frame. Matching the view against
the map then only has to cope with appearance change and the attitude's small errors.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import RectifyConfig
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import R_BODY_CAM_NADIR, R_ned_body, mount_rotation
from skyfix.runtime.core.types import Frame, Telemetry, View

_MAX_RAY_ANGLE_DEG = 75.0  # rays flatter than this from the vertical are left out of the footprint
_MAX_SUPERSAMPLE = 4  # frame samples per view pixel and axis, at most, averaged into it


def to_gray(image: np.ndarray) -> np.ndarray:
    """[H, W] uint8 gray of a BGR, BGRA or gray uint8 image ([H, W, 3], [H, W, 4], [H, W]
    or [H, W, 1]); anything else (other dtypes, channel counts, an empty image) is a
    SkyfixError, never a float or NaN image passed on to the matcher."""
    image = np.asarray(image)
    shape = image.shape
    if (image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0
            or (image.ndim == 3 and shape[2] not in (1, 3, 4))):
        raise SkyfixError(f"frame image must be [H, W] gray or [H, W, 3|4] BGR(A) uint8, "
                          f"got {list(shape)} {image.dtype}")
    if image.ndim == 2:
        return image
    if shape[2] == 1:
        return image[:, :, 0]
    code = cv2.COLOR_BGRA2GRAY if shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(image, code)


def R_ned_cam(tel: Telemetry, R_body_cam: np.ndarray = R_BODY_CAM_NADIR) -> np.ndarray:
    """[3, 3] rotation of camera axes into NED for the reported attitude."""
    return R_ned_body(tel.roll_rad, tel.pitch_rad, tel.yaw_rad) @ R_body_cam


def ground_footprint(camera: CameraModel, R_nc: np.ndarray, agl_m: float) -> np.ndarray:
    """[4, 2] (east, north) metres from nadir of the image corners on the ground plane.

    Corner rays flatter than 75 degrees from vertical are pulled in to that angle, so a
    footprint that reaches the horizon stays finite.
    """
    w, h = camera.width - 1, camera.height - 1
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64)
    rays = (R_nc @ np.linalg.inv(camera.K) @ corners.T).T  # [4, 3] NED
    min_down = np.cos(np.radians(_MAX_RAY_ANGLE_DEG)) * np.linalg.norm(rays, axis=1)
    rays[:, 2] = np.maximum(rays[:, 2], min_down)
    ground = rays[:, :2] / rays[:, 2:3] * agl_m  # (north, east)
    return ground[:, ::-1].copy()


def rectify(frame: Frame, tel: Telemetry, camera: CameraModel, gsd_m: float,
            cfg: RectifyConfig, convergence_deg: float = 0.0) -> View | None:
    """The north-up view of `frame` at `gsd_m` metres/pixel, or None when it cannot be made.

    North is the map grid's: `tel`'s attitude is about true north, and grid north lies
    `convergence_deg` east of it (core/geo.grid_convergence_deg; about 1 degree in Vienna
    on UTM 33N), so the view is made with the yaw reduced by it and its R_ned_cam is in
    grid axes. None when the height above ground is unknown or not positive, the attitude
    is not finite, or the camera looks more than `cfg.max_off_nadir_deg` away from
    straight down.
    """
    agl = tel.agl_m
    if not np.isfinite(agl) or agl <= 0:
        return None
    if not np.isfinite([tel.roll_rad, tel.pitch_rad, tel.yaw_rad]).all():
        return None
    tel = replace(tel, yaw_rad=tel.yaw_rad - np.radians(convergence_deg))
    R_nc = R_ned_cam(tel, mount_rotation(cfg.mount_roll_deg, cfg.mount_pitch_deg,
                                         cfg.mount_yaw_deg))
    off_nadir = np.degrees(np.arccos(np.clip(R_nc[2, 2], -1.0, 1.0)))
    if off_nadir > cfg.max_off_nadir_deg:
        return None

    footprint = ground_footprint(camera, R_nc, agl)
    # Crop the view to max_view_px around the ground point of the optical axis.
    axis = R_nc[:, 2]
    centre_en = np.array([axis[1], axis[0]]) / axis[2] * agl
    half = cfg.max_view_px * gsd_m / 2
    lo = np.maximum(footprint.min(0), centre_en - half)
    hi = np.minimum(footprint.max(0), centre_en + half)
    # at most max_view_px: (c + half) - (c - half) can round to a hair over 2 half, and a
    # TensorRT engine takes no larger view
    size = np.minimum(np.ceil((hi - lo) / gsd_m), cfg.max_view_px).astype(int)
    if (size < 32).any():
        return None
    x0, y1 = lo[0], hi[1]

    gray = to_gray(frame.image)
    cam = camera
    if gray.shape[:2] != (cam.height, cam.width):
        return None
    gray = cam.undistort_image(gray)
    # Each view pixel the mean of the frame over its ground cell, as the map's pixels are
    # (its ortho's, and the coarser levels' averages of them): where the frame is at least
    # twice as fine as the view, it is warped at k times the view's resolution (k: the
    # frame's pixels per view pixel, whole, so that the warp never upsamples; at most
    # _MAX_SUPERSAMPLE, a frame finer still first shrunk by area to that) and averaged
    # k x k. The Gaussian pyramid this replaces blurred the view by an amount that jumped
    # where the frame's GSD crossed half the view's (0.56 view px more just under it), and
    # shifted it (pyrDown's pixel i is the frame's 2i, not 2i + 0.5: up to 0.38 view px);
    # on the SITL descents it had 0-20 % fewer XFeat inliers at 35-65 m.
    frame_gsd = agl / cam.fx
    k = 1
    if frame_gsd * 2 <= gsd_m:
        if frame_gsd * _MAX_SUPERSAMPLE < gsd_m:
            f = frame_gsd * _MAX_SUPERSAMPLE / gsd_m
            wh = (max(1, round(gray.shape[1] * f)), max(1, round(gray.shape[0] * f)))
            gray = cv2.resize(gray, wh, interpolation=cv2.INTER_AREA)
            cam = cam.scaled(gray.shape[1] / cam.width)
            frame_gsd = agl / cam.fx
        k = min(int(gsd_m / frame_gsd + 1e-6), _MAX_SUPERSAMPLE)
    g = gsd_m / k  # the warp's resolution; block (i, j) of k x k its pixels -> view pixel
    # whose centre (x0 + i gsd, y1 - j gsd) is the block's: its first pixel (k - 1) / 2 off
    half_block = (k - 1) / 2 * g
    A = np.array([[0, -g, y1 + half_block], [g, 0, x0 - half_block], [0, 0, agl]], np.float64)
    H_img_view = cam.K @ R_nc.T @ A
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    fine_wh = (int(size[0]) * k, int(size[1]) * k)
    view = cv2.warpPerspective(gray, H_img_view, fine_wh, flags=flags)
    valid = np.full(gray.shape, 255, np.uint8)
    mask = cv2.warpPerspective(valid, H_img_view, fine_wh,
                               flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    if k > 1:
        wh = (int(size[0]), int(size[1]))
        view = cv2.resize(view, wh, interpolation=cv2.INTER_AREA)
        # a view pixel is valid only where its whole cell is
        mask = cv2.resize(mask, wh, interpolation=cv2.INTER_AREA)
        mask = np.where(mask == 255, 255, 0).astype(np.uint8)
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
    return View(
        t_ns=frame.t_ns, image=view, mask=mask, gsd_m=gsd_m,
        origin_px=(float(-x0 / gsd_m), float(y1 / gsd_m)),
        footprint_m=footprint, agl_m=agl, yaw_rad=tel.yaw_rad, R_ned_cam=R_nc,
        attitude_measured=tel.attitude_measured,
    )


def view_px_to_offset_m(view: View, px: np.ndarray) -> np.ndarray:
    """[N, 2] (east, north) metres from nadir of [N, 2] view pixels (x, y)."""
    east = (px[:, 0] - view.origin_px[0]) * view.gsd_m
    north = (view.origin_px[1] - px[:, 1]) * view.gsd_m
    return np.stack([east, north], -1)


def with_detail_of(view: View, factor: int) -> View:
    """`view` with no detail finer than `factor` of its pixels: the mean of each factor x
    factor block, sampled back at the view's pixels bilinearly, as the map's pixels are
    when read finer than its own GSD. A frame matched finer than the map (a low aircraft)
    then shows what the map can show, not the ground's finer texture, which the map never
    held (a camera's, unlike a render of the map itself, has it). Pixels of the blocks that
    do not fit whole at the right and bottom edges, and next to blocks not wholly valid,
    are masked."""
    h, w = view.image.shape
    hb, wb = h // factor, w // factor
    if factor < 2 or hb < 1 or wb < 1:
        return view
    inner = np.s_[:hb * factor, :wb * factor]
    coarse = cv2.resize(view.image[inner], (wb, hb), interpolation=cv2.INTER_AREA)
    whole = cv2.resize(view.mask[inner].astype(np.float32), (wb, hb),
                       interpolation=cv2.INTER_AREA) > 0.999
    # bilinear sampling reaches one block into the neighbours: those must be whole too
    whole = cv2.erode(whole.astype(np.uint8), np.ones((3, 3), np.uint8))
    image = np.zeros_like(view.image)
    image[inner] = cv2.resize(coarse, (wb * factor, hb * factor),
                              interpolation=cv2.INTER_LINEAR)
    mask = np.zeros_like(view.mask)
    mask[inner] = cv2.resize(whole, (wb * factor, hb * factor),
                             interpolation=cv2.INTER_NEAREST) > 0
    return replace(view, image=image, mask=mask & view.mask)
