"""XFeat encoder on the committed ONNX model, on the bundled real orthophoto (no torch)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from skyfix.models.features import match_mutual
from skyfix.models.manifest import load_manifest, manifest_path
from skyfix.models.xfeat import (
    DEFAULT_MODEL,
    XFEAT_DIM,
    XFeatEncoder,
    keypoint_heatmap,
    sample_bicubic,
)
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import file_sha256


@pytest.fixture(scope="module")
def encoder() -> XFeatEncoder:
    return XFeatEncoder(max_features=1024)


@pytest.fixture(scope="module")
def gray(ortho) -> np.ndarray:
    """[1667, 1667] uint8 gray of the bundled Vienna orthophoto."""
    return cv2.cvtColor(ortho[0], cv2.COLOR_BGR2GRAY)


def test_committed_model_matches_manifest():
    manifest = load_manifest(DEFAULT_MODEL)
    assert manifest.model_id == "xfeat-onnx-v1"
    assert manifest.sha256 == file_sha256(DEFAULT_MODEL)
    assert manifest.opset == 17 and manifest.input_multiple == 32
    assert [t.name for t in manifest.outputs] == ["descriptors", "keypoint_logits",
                                                  "reliability"]
    assert len(manifest.source["weights_sha256"]) == 64
    assert (DEFAULT_MODEL.parent / "LICENSE-XFEAT").exists()
    assert (DEFAULT_MODEL.parent / "NOTICE").exists()


def test_runs_without_torch():
    code = ("import sys, numpy as np\n"
            "from skyfix.models.xfeat import XFeatEncoder\n"
            "f = XFeatEncoder(max_features=64).extract("
            "np.random.default_rng(0).integers(0, 255, (96, 128), dtype=np.uint8))\n"
            "print(len(f), 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out[1] == "False", "importing/running the XFeat encoder imported torch"
    assert int(out[0]) > 0


def test_encoder_identity(encoder):
    assert encoder.id == "xfeat-onnx-v1" and encoder.dim == XFEAT_DIM == 64
    assert encoder.sha256 == file_sha256(DEFAULT_MODEL)
    assert encoder.provider == "CPUExecutionProvider"


def test_keypoints_on_real_image(encoder, gray):
    image = gray[300:780, 500:1140]  # 480 x 640
    f = encoder.extract(image)
    assert 500 < len(f) <= 1024
    assert f.keypoints.dtype == np.float32 and f.keypoints.shape == (len(f), 2)
    assert f.descriptors.dtype == np.float32 and f.descriptors.shape == (len(f), 64)
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-5)
    assert np.all(f.keypoints >= 0) and np.all(f.keypoints[:, 0] < 640)
    assert np.all(f.keypoints[:, 1] < 480)
    assert np.all(np.diff(f.scores) <= 0) and np.all(f.scores > 0)
    assert len(np.unique(f.keypoints, axis=0)) == len(f)


@pytest.mark.parametrize(("dx", "dy", "exact_share"), [(13, -7, 0.5), (16, -8, 0.95)])
def test_shifted_crop_recovers_shift(encoder, gray, dx, dy, exact_share):
    """Crops whose size is not a multiple of 32 (padding path), shifted by (dx, dy) px.

    XFeat's heads run at stride 8, so a shift that is not a multiple of 8 moves
    some keypoints by a pixel or two (measured: ~65% within 1 px, ~86% within 3 px);
    a cell-aligned shift is reproduced almost exactly."""
    r0, c0 = 400, 420
    a = gray[r0:r0 + 300, c0:c0 + 410]
    b = gray[r0 + dy:r0 + dy + 300, c0 + dx:c0 + dx + 410]
    fa, fb = encoder.extract(a), encoder.extract(b)
    pairs = match_mutual(fa.descriptors, fb.descriptors)
    assert len(pairs) > 300
    offsets = fa.keypoints[pairs[:, 0]] - fb.keypoints[pairs[:, 1]]
    np.testing.assert_allclose(np.median(offsets, axis=0), [dx, dy], atol=1.0)
    error = np.abs(offsets - [dx, dy]).max(axis=1)
    assert (error <= 1.0).mean() > exact_share
    assert (error <= 3.0).mean() > 0.8


def test_mask_is_honoured(encoder, gray):
    image = gray[600:856, 600:920]
    mask = np.ones(image.shape, bool)
    mask[:, :160] = False
    mask[200:, :] = False
    f = encoder.extract(image, mask)
    assert len(f) > 50
    kx, ky = f.keypoints[:, 0].astype(int), f.keypoints[:, 1].astype(int)
    assert np.all(mask[ky, kx])
    empty = encoder.extract(image, np.zeros(image.shape, bool))
    assert len(empty) == 0 and empty.keypoints.shape == (0, 2)
    assert empty.descriptors.shape == (0, 64)


def test_max_features_and_odd_sizes(gray):
    f = XFeatEncoder(max_features=100).extract(gray[:75, :101])
    assert 0 < len(f) <= 100
    assert np.all(f.keypoints[:, 0] < 101) and np.all(f.keypoints[:, 1] < 75)


@pytest.mark.parametrize("bad", [np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.float32),
                                 np.zeros((4, 64), np.uint8)])
def test_bad_images_are_one_line_errors(encoder, bad):
    with pytest.raises(SkyfixError) as info:
        encoder.extract(bad)
    assert "\n" not in str(info.value)


def test_mask_shape_mismatch(encoder):
    with pytest.raises(SkyfixError, match="mask shape"):
        encoder.extract(np.zeros((64, 64), np.uint8), np.ones((64, 32), bool))


def test_tampered_model_is_refused(tmp_path):
    model = tmp_path / "xfeat.onnx"
    shutil.copyfile(DEFAULT_MODEL, model)
    shutil.copyfile(manifest_path(DEFAULT_MODEL), manifest_path(model))
    with open(model, "ab") as f:
        f.write(b"\0")
    with pytest.raises(SkyfixError, match="does not match its manifest"):
        XFeatEncoder(model_path=model)


def test_heatmap_unfolds_cells_row_major():
    logits = np.full((65, 2, 3), -30.0, np.float32)
    logits[64] = 0.0
    logits[3 * 8 + 5, 1, 2] = 30.0  # cell (1, 2), row 3 / column 5 inside the cell
    heat = keypoint_heatmap(logits)
    assert heat.shape == (16, 24)
    assert np.unravel_index(heat.argmax(), heat.shape) == (1 * 8 + 3, 2 * 8 + 5)
    assert heat.max() == pytest.approx(1.0, abs=1e-6)


def _keys(d: float, a: float = -0.75) -> float:
    d = abs(d)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    if d < 2:
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return 0.0


def test_bicubic_sampling_matches_a_direct_sum():
    """Against Keys' kernel summed over the whole map (zeros outside), XFeat's coordinates:
    pixel x of a W-wide image -> u = x / (W - 1) * w - 0.5 on the w-wide map."""
    rng = np.random.default_rng(1)
    h, w = 5, 7
    fmap = rng.standard_normal((3, h, w)).astype(np.float32)
    xs, ys = np.array([0, 9, 27, 55]), np.array([0, 17, 22, 39])
    out = sample_bicubic(fmap, xs, ys, h * 8, w * 8)
    for n, (x, y) in enumerate(zip(xs, ys, strict=True)):
        u, v = x / (w * 8 - 1) * w - 0.5, y / (h * 8 - 1) * h - 0.5
        ref = sum(_keys(u - j) * _keys(v - i) * fmap[:, i, j] for i in range(h) for j in range(w))
        np.testing.assert_allclose(out[n], ref, atol=1e-5)
    inner_x, inner_y = np.array([27, 30]), np.array([22, 20])  # all 16 taps inside the map
    flat = sample_bicubic(np.full((1, h, w), 2.5, np.float32), inner_x, inner_y, h * 8, w * 8)
    np.testing.assert_allclose(flat, 2.5, atol=1e-5)
