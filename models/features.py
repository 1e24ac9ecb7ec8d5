"""Local features and the global retrieval descriptor.

The foundation encoder is RootSIFT (OpenCV SIFT, descriptors L1-normalised and
square-rooted so that Euclidean distance becomes a Hellinger kernel). The global
descriptor is VLAD over those local descriptors with a codebook fitted on the
map itself, so retrieval needs no training data; an encoder whose network also
gives a global embedding of the whole image (`embedding_dim` > 0: skyfix's
trained `xfeat-xd`) has it set beside the VLAD (`global_descriptor`).

Every encoder exposes `id` (recorded in map packs; a pack built by another
encoder is refused), `embedding_dim` and `extract(gray, mask) -> LocalFeatures`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np


@dataclass(frozen=True)
class LocalFeatures:
    """`keypoints`: [N, 2] float32 pixel (x, y); `descriptors`: [N, D] float32; `scores`: [N];
    `embedding`: [G] float32 unit global embedding of the whole image, from encoders whose
    network has one (else None)."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    scores: np.ndarray
    embedding: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keypoints)


class Encoder(Protocol):
    id: str
    dim: int
    embedding_dim: int  # length of LocalFeatures.embedding (0: the encoder gives none)

    @property
    def sha256(self) -> str: ...

    def extract(self, gray: np.ndarray, mask: np.ndarray | None = None) -> LocalFeatures: ...


@dataclass(frozen=True)
class RootSiftEncoder:
    """OpenCV SIFT keypoints with RootSIFT descriptors, strongest `max_features` kept."""

    max_features: int = 2000
    contrast_threshold: float = 0.02
    id: str = "opencv-rootsift-v1"
    dim: int = 128
    embedding_dim: int = 0

    @property
    def sha256(self) -> str:
        """Fingerprint of the parameters (SIFT has no weight file)."""
        text = f"{self.id}:{self.max_features}:{self.contrast_threshold}"
        return hashlib.sha256(text.encode()).hexdigest()

    def extract(self, gray: np.ndarray, mask: np.ndarray | None = None) -> LocalFeatures:
        sift = cv2.SIFT_create(nfeatures=self.max_features,
                               contrastThreshold=self.contrast_threshold)
        m = None if mask is None else mask.astype(np.uint8) * 255
        kps, desc = sift.detectAndCompute(gray, m)
        if desc is None or not kps:
            return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, self.dim), np.float32),
                                 np.zeros(0, np.float32))
        desc = desc / (np.abs(desc).sum(1, keepdims=True) + 1e-7)
        return LocalFeatures(
            np.array([k.pt for k in kps], np.float32),
            np.sqrt(desc).astype(np.float32),
            np.array([k.response for k in kps], np.float32),
        )


def match_mutual(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float = 0.85) -> np.ndarray:
    """[M, 2] int index pairs (a, b): mutual nearest neighbours passing Lowe's ratio test.

    Descriptors are unit-length rows, so one matrix product gives every squared distance:
    |a - b|^2 = 2 - 2 a.b.
    """
    if len(desc_a) < 2 or len(desc_b) < 2:
        return np.zeros((0, 2), np.int64)
    desc_a, desc_b = desc_a.astype(np.float32), desc_b.astype(np.float32)
    sim = desc_a @ desc_b.T  # [Na, Nb]
    a_idx = np.arange(len(desc_a))
    best = sim.argmax(axis=1)
    s_best = sim[a_idx, best]
    # best a for every b: a second product read along its rows is several times faster
    # than an argmax down the columns of the first
    back = (desc_b @ desc_a.T).argmax(axis=1)
    sim[a_idx, best] = -np.inf
    s_second = sim.max(axis=1)
    d_best = np.sqrt(np.maximum(2 - 2 * s_best, 0))
    d_second = np.sqrt(np.maximum(2 - 2 * s_second, 0))
    keep = (d_best < ratio * d_second) & (back[best] == a_idx)
    return np.stack([a_idx[keep], best[keep]], -1).astype(np.int64)


def fit_codebook(descriptors: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """[k, D] float32 k-means centres of [N, D] descriptors (k-means++, deterministic seed)."""
    if len(descriptors) < k:
        raise ValueError(f"need at least {k} descriptors to fit a codebook, got {len(descriptors)}")
    cv2.setRNGSeed(seed)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-4)
    _, _, centres = cv2.kmeans(descriptors.astype(np.float32), k, None, crit, 2,
                               cv2.KMEANS_PP_CENTERS)
    return centres.astype(np.float32)


def vlad(descriptors: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """[K * D] float32 VLAD: residuals summed per centre, intra-normalised, signed root, L2."""
    k, d = codebook.shape
    out = np.zeros((k, d), np.float32)
    if len(descriptors):
        dist = (descriptors**2).sum(1)[:, None] - 2 * descriptors @ codebook.T
        assign = dist.argmin(1)
        np.add.at(out, assign, descriptors - codebook[assign])
        out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-12
    out = np.sign(out) * np.sqrt(np.abs(out))
    flat = out.ravel()
    return flat / (np.linalg.norm(flat) + 1e-12)


def global_descriptor(descriptors: np.ndarray, codebook: np.ndarray,
                      embedding: np.ndarray | None = None) -> np.ndarray:
    """[K * D (+ G)] float32: the VLAD of [N, D] local descriptors; with a [G] unit
    `embedding`, the two side by side, scaled to unit length together, so that the inner
    product of two such descriptors is the mean of their VLAD and embedding similarities
    (which ranks better than either alone: README, "Finding the place without a prior")."""
    v = vlad(descriptors, codebook)
    if embedding is None:
        return v
    both = np.concatenate([v, np.asarray(embedding, np.float32)])
    return (both / (np.linalg.norm(both) + 1e-12)).astype(np.float32)
