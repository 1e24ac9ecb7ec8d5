"""Two-date image pairs for the cross-date benchmark: the view protocol over pair sets
(the folder format and its reader: skyfix.models.pair_sets).

Views (`make_views`), seeded: K square crops of side S = min(384, 0.6 x the shorter side)
of image `b` at random centres, with what rectification leaves: heading error uniform in
+-5 deg, scale uniform in [0.97, 1.03], each corner moved by up to 2 % of S (perspective),
Gaussian noise sigma 3, gamma in [0.8, 1.25]. The search prior is a window of side 2S
centred on the truth plus an offset of up to S/4.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from skyfix.models.pair_sets import Pair

MAX_VIEW_PX = 384
VIEW_SHARE = 0.6  # of the shorter image side
HEADING_DEG = 5.0
SCALE_RANGE = (0.97, 1.03)
PERSPECTIVE = 0.02  # corner jitter, share of S
NOISE_SIGMA = 3.0
GAMMA_RANGE = (0.8, 1.25)
PRIOR_OFFSET = 0.25  # of S


@dataclass(frozen=True)
class SyntheticView:
    """One view cut from image `b`.

    `image`: [S, S, 3] uint8 BGR; `truth_px`: (x, y) pixel of `a`/`b` (OpenCV convention,
    pixel centres at integers) below the view's centre; `prior_px`: the prior window's
    centre; `prior_half_px`: its half side; `heading_deg`, `scale`: what was applied."""

    pair_id: str
    index: int
    image: np.ndarray
    truth_px: tuple[float, float]
    prior_px: tuple[float, float]
    prior_half_px: float
    heading_deg: float
    scale: float


def view_side(width: int, height: int) -> int:
    return int(min(MAX_VIEW_PX, VIEW_SHARE * min(width, height)))


def make_views(pair: Pair, image_b: np.ndarray, k: int, rng: np.random.Generator
               ) -> list[SyntheticView]:
    """`k` views of `image_b` ([H, W, 3] uint8) following the protocol (module docstring)."""
    h, w = image_b.shape[:2]
    s = view_side(w, h)
    half = (s - 1) / 2
    # the whole rotated, scaled, jittered square must lie inside the image
    reach = half * np.sqrt(2) * SCALE_RANGE[1] + PERSPECTIVE * s + 2
    views = []
    corners = np.array([[0, 0], [s - 1, 0], [s - 1, s - 1], [0, s - 1]], np.float64)
    for i in range(k):
        cx, cy = rng.uniform(reach, w - 1 - reach), rng.uniform(reach, h - 1 - reach)
        heading = rng.uniform(-HEADING_DEG, HEADING_DEG)
        scale = rng.uniform(*SCALE_RANGE)
        t = np.radians(heading)
        R = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        src = (corners - half) @ R.T + [cx, cy]
        src += rng.uniform(-PERSPECTIVE * s, PERSPECTIVE * s, src.shape)
        H = cv2.getPerspectiveTransform(corners.astype(np.float32), src.astype(np.float32))
        img = cv2.warpPerspective(image_b, H, (s, s), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        gamma = np.exp(rng.uniform(*np.log(GAMMA_RANGE)))
        lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma, 0, 255).astype(np.uint8)
        img = cv2.LUT(img, lut).astype(np.float32) + rng.normal(0, NOISE_SIGMA, img.shape)
        img = np.clip(img, 0, 255).astype(np.uint8)
        centre = H @ np.array([half, half, 1.0])
        truth = (float(centre[0] / centre[2]), float(centre[1] / centre[2]))
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, PRIOR_OFFSET * s)
        prior = (truth[0] + rad * np.cos(ang), truth[1] + rad * np.sin(ang))
        views.append(SyntheticView(pair.id, i, img, truth, prior, float(s), float(heading),
                                   float(scale)))
    return views
