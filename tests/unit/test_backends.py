"""Inference runners: input checks in the base class, registry, provider reporting."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import numpy as np
import pytest

from skyfix.models.registry import engine_options, make_encoder
from skyfix.models.xfeat import DEFAULT_MODEL
from skyfix.runtime.backends import Runner, TensorSpec, available_backends, get_runner
from skyfix.runtime.backends.tensorrt import (
    DEFAULT_CACHE_DIR,
    calibration_images,
    engine_cache_key,
)
from skyfix.runtime.backends.trt_profile import (
    check_engine_inputs,
    check_profile,
    image_profile,
    view_profile,
)
from skyfix.runtime.core.config import EncoderConfig
from skyfix.runtime.core.errors import SkyfixError

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
NO_TENSORRT = "TensorRT is not installed (JetPack / GPU only)"
TRT = EncoderConfig(backend="tensorrt")


class EchoRunner(Runner):
    backend = "echo"
    provider = "python"
    inputs = (TensorSpec("image", (1, 1, None, None), np.dtype(np.float32)),
              TensorSpec("k", (3,), np.dtype(np.int64)))

    def _infer(self, feeds):
        return {"out": feeds["image"] * 2}


GOOD = {"image": np.zeros((1, 1, 8, 16), np.float32), "k": np.zeros(3, np.int64)}


def _error(runner: Runner, **changes) -> str:
    feeds = {**GOOD, **changes}
    feeds = {k: v for k, v in feeds.items() if v is not None}
    with pytest.raises(SkyfixError) as info:
        runner.infer(feeds)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_feeds_reach_the_backend():
    out = EchoRunner().infer(GOOD)
    assert out["out"].shape == (1, 1, 8, 16)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"k": None}, "missing input(s) k"),
    ({"extra": np.zeros(1)}, "unexpected input(s) extra"),
    ({"image": np.zeros((1, 8, 16), np.float32)}, "rank 3"),
    ({"image": np.zeros((1, 3, 8, 16), np.float32)}, "dim 1 is 3"),
    ({"image": np.zeros((1, 1, 8, 16), np.float64)}, "dtype float64"),
    ({"k": np.zeros(4, np.int64)}, "dim 0 is 4"),
    ({"k": [0, 0, 0]}, "must be a numpy array"),
])
def test_input_checks_are_one_line_errors(changes, expected):
    message = _error(EchoRunner(), **changes)
    assert expected in message
    assert message.startswith("echo:")


def test_registry_names_and_unknown_backend():
    assert set(available_backends()) >= {"onnxruntime", "tensorrt"}
    with pytest.raises(SkyfixError, match="unknown inference backend 'openvino'"):
        get_runner("openvino", DEFAULT_MODEL)


def test_importing_backends_is_lazy():
    code = ("import sys, skyfix.runtime.backends\n"
            "print(any(m in sys.modules for m in ('onnxruntime', 'tensorrt', 'torch')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "False"


def test_onnxruntime_cpu_runner_declares_inputs_and_runs():
    runner = get_runner("onnxruntime", DEFAULT_MODEL, intra_op_threads=1)
    assert runner.provider == "CPUExecutionProvider"
    assert runner.intra_op_threads == 1
    assert runner.inputs == (TensorSpec("image", (1, 1, None, None), np.dtype(np.float32)),)
    out = runner.infer({"image": np.random.default_rng(0).random((1, 1, 64, 96), np.float32)})
    assert out["descriptors"].shape == (1, 64, 8, 12)
    assert out["keypoint_logits"].shape == (1, 65, 8, 12)
    assert out["reliability"].shape == (1, 1, 8, 12)
    assert "dtype float64" in _error(runner, image=np.zeros((1, 1, 64, 64)), k=None)


def test_onnxruntime_missing_model_and_bad_provider(tmp_path):
    with pytest.raises(SkyfixError, match="model file not found"):
        get_runner("onnxruntime", tmp_path / "none.onnx")
    with pytest.raises(SkyfixError, match="unknown onnxruntime provider"):
        get_runner("onnxruntime", DEFAULT_MODEL, provider="rocm")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(SkyfixError, match="cannot load broken.onnx") as info:
        get_runner("onnxruntime", broken)
    assert "\n" not in str(info.value)


def test_cuda_requested_without_cuda_provider():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(SkyfixError, match="has no CUDAExecutionProvider"):
        get_runner("onnxruntime", DEFAULT_MODEL, provider="cuda")
    assert get_runner("onnxruntime", DEFAULT_MODEL, provider="auto").provider == (
        "CPUExecutionProvider")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_cuda_listed_but_not_loading_is_detected(monkeypatch, caplog):
    """onnxruntime-gpu lists CUDA even when its libraries cannot load, then runs on CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a real CUDA provider is present; covered by the parity tests")
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(SkyfixError, match="CUDA was requested but is not active") as info:
        get_runner("onnxruntime", DEFAULT_MODEL, provider="cuda")
    assert "\n" not in str(info.value)
    with caplog.at_level(logging.WARNING):
        runner = get_runner("onnxruntime", DEFAULT_MODEL, provider="auto")
    assert runner.provider == "CPUExecutionProvider"
    assert "did not load" in caplog.text


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_tensorrt_absent_is_one_clear_error():
    shapes = view_profile("image", 256, 32)
    with pytest.raises(SkyfixError, match="TensorRT is not installed") as info:
        get_runner("tensorrt", DEFAULT_MODEL, shapes=shapes)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_from_the_config_checks_the_graph_then_says_tensorrt_is_absent(precision,
                                                                               tmp_path):
    """The whole configured path up to `import tensorrt` runs here: options from the
    config, the profile checked against the real ONNX graph, then one line."""
    cfg = EncoderConfig(backend="tensorrt", trt_precision=precision,
                        engine_cache_dir=str(tmp_path))
    with pytest.raises(SkyfixError, match="^TensorRT is not installed") as info:
        make_encoder("xfeat", cfg, view_px=1000)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("view_px", "side"), [(1024, 1024), (1000, 1024), (1025, 1056),
                                               (64, 64), (8192, 8192)])
def test_view_profile_is_the_view_size_rounded_up_to_the_model_multiple(view_px, side):
    assert view_profile("image", view_px, 32) == {
        "image": ((1, 1, 32, 32), (1, 1, side, side), (1, 1, side, side))}


def test_engine_options_come_from_the_config(tmp_path):
    opts = engine_options(EncoderConfig(backend="tensorrt", trt_precision="fp32",
                                        engine_cache_dir=str(tmp_path)), DEFAULT_MODEL, 1000)
    assert opts == {"precision": "fp32", "shapes": view_profile("image", 1024, 32),
                    "cache_dir": tmp_path, "input_multiple": 32}
    default = engine_options(TRT, DEFAULT_MODEL, 1024)
    assert default["precision"] == "fp16" and default["cache_dir"] == DEFAULT_CACHE_DIR
    assert default["shapes"] == {"image": ((1, 1, 32, 32), (1, 1, 1024, 1024),
                                           (1, 1, 1024, 1024))}


def test_engine_cache_key_changes_with_precision_and_view_size():
    keys = {engine_cache_key("a" * 64, "10.3.0", "Orin", precision, view_profile("image", px, 32))
            for precision in ("fp32", "fp16", "int8") for px in (512, 1024, 1056)}
    assert len(keys) == 9


XFEAT_INPUTS = (TensorSpec("image", (1, 1, None, None), np.dtype(np.float32)),)


@pytest.mark.parametrize(("shapes", "expected"), [
    ({}, "has dynamic dims and no engine profile"),
    ({"images": ((1, 1, 32, 32),) * 3}, "names input(s) images the model does not have"),
    ({"image": ((1, 1, 32, 32),) * 2}, "must be 3 shapes (min, opt, max) of rank 4"),
    ({"image": ((1, 32, 32),) * 3}, "of rank 4"),
    ({"image": ((1, 3, 32, 32),) * 3}, "dim 1 (min/opt/max) is 3/3/3, the model fixes it at 1"),
    ({"image": ((2, 1, 32, 32), (1, 1, 32, 32), (1, 1, 32, 32))}, "dim 0"),
    ({"image": ((1, 1, 64, 64), (1, 1, 32, 32), (1, 1, 64, 64))}, "must grow min <= opt"),
    ({"image": ((1, 1, 32, 32), (1, 1, 1000, 1000), (1, 1, 1024, 1024))},
     "dim 2 (min/opt/max) is 32/1000/1024: each must be a multiple of 32 from 32 to 8192"),
    ({"image": ((1, 1, 32, 32), (1, 1, 64, 64), (1, 1, 64, 8224))}, "dim 3"),
    ({"image": ((1, 1, 0, 32), (1, 1, 32, 32), (1, 1, 32, 32))}, "dim 2"),
])
def test_profiles_that_do_not_fit_the_graph_are_one_line(shapes, expected):
    with pytest.raises(SkyfixError) as info:
        check_profile(XFEAT_INPUTS, shapes, 32)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_static_inputs_need_no_profile():
    check_profile((TensorSpec("k", (3,), np.dtype(np.int64)),), {})
    check_profile(XFEAT_INPUTS, view_profile("image", 8192, 32), 32)


def test_the_bundled_xfeat_graph_is_checked_against_the_profile():
    check_engine_inputs(DEFAULT_MODEL, engine_options(TRT, DEFAULT_MODEL, 1024)["shapes"], 32)
    with pytest.raises(SkyfixError, match="names input.s. img the model does not have"):
        check_engine_inputs(DEFAULT_MODEL, {"img": ((1, 1, 32, 32),) * 3}, 32)


@pytest.mark.parametrize(("opts", "expected"), [
    ({}, "has dynamic dims and no engine profile"),
    ({"shapes": {"image": ((1, 1, 32, 32), (1, 1, 96, 96), (1, 1, 96, 96))},
      "input_multiple": 64}, "multiple of 64"),
    ({"precision": "fp8"}, "unknown TensorRT precision 'fp8'"),
])
def test_the_tensorrt_runner_refuses_a_bad_profile_before_needing_tensorrt(opts, expected):
    """Checked on every machine, TensorRT or not: nothing here reaches `import tensorrt`."""
    with pytest.raises(SkyfixError) as info:
        get_runner("tensorrt", DEFAULT_MODEL, **opts)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_engine_cache_key_changes_with_every_component():
    shapes = {"image": ((1, 1, 224, 224), (1, 1, 480, 640), (1, 1, 1088, 1440))}
    base = ("a" * 64, "10.3.0", "Orin", "fp16", shapes)
    key = engine_cache_key(*base)
    assert key == engine_cache_key(*base) and len(key) == 64
    for i, other in enumerate(("b" * 64, "10.7.0", "NVIDIA H100", "int8",
                               {"image": ((1, 1, 224, 224),) * 3})):
        changed = list(base)
        changed[i] = other
        assert engine_cache_key(*changed) != key


def test_image_profile_is_min_opt_max_in_nchw():
    profile = image_profile("image", (256, 224), (640, 480), (1280, 1024))
    assert profile == {"image": ((1, 1, 224, 256), (1, 1, 480, 640), (1, 1, 1024, 1280))}
    with pytest.raises(SkyfixError, match="min <= opt <= max"):
        image_profile("image", (256, 256), (640, 480), (1280, 320))


def test_calibration_feeds_from_tile_images(tmp_path):
    import cv2

    rng = np.random.default_rng(3)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"tile_{i}.png"), rng.integers(0, 255, (300, 200, 3),
                                                                  np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    feeds = calibration_images(tmp_path, "image", (64, 32), limit=2)
    assert len(feeds) == 2
    x = feeds[0]["image"]
    assert x.shape == (1, 1, 32, 64) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0
    (tmp_path / "tile_9.png").write_bytes(b"broken")
    with pytest.raises(SkyfixError, match="cannot be read"):
        calibration_images(tmp_path, "image", (64, 32))
    with pytest.raises(SkyfixError, match="no calibration images"):
        calibration_images(tmp_path / "notes.txt", "image", (64, 32))


@pytest.mark.skipif(not HAS_TENSORRT, reason=NO_TENSORRT)
def test_tensorrt_runner_runs_xfeat(tmp_path):
    shapes = {"image": ((1, 1, 64, 64), (1, 1, 480, 640), (1, 1, 768, 1024))}
    # TensorRT is installed: an engine that cannot be built is a failure, not a skip
    runner = get_runner("tensorrt", DEFAULT_MODEL, shapes=shapes, cache_dir=tmp_path)
    out = runner.infer({"image": np.zeros((1, 1, 96, 128), np.float32)})
    assert out["descriptors"].shape == (1, 64, 12, 16)
    assert runner.provider.startswith("TensorRT")
    assert list(tmp_path.glob("*.engine"))
    runner.close()


@pytest.mark.skipif(not HAS_TENSORRT, reason=NO_TENSORRT)
def test_configured_tensorrt_encoder_builds_then_loads_its_cached_engine(tmp_path):
    # TensorRT is installed: an engine that cannot be built is a failure, not a skip
    cfg = EncoderConfig(backend="tensorrt", engine_cache_dir=str(tmp_path))
    rng = np.random.default_rng(5)
    gray = (rng.random((150, 200)) * 255).astype(np.uint8)
    first = make_encoder("xfeat", cfg, view_px=256)
    assert "fp16" in first.provider
    built = sorted(tmp_path.glob("*.engine"))
    assert len(built) == 1
    features = first.extract(gray)
    first.runner.close()
    again = make_encoder("xfeat", cfg, view_px=256)  # from the cache, not rebuilt
    assert sorted(tmp_path.glob("*.engine")) == built
    assert len(again.extract(gray)) == len(features)
    with pytest.raises(SkyfixError, match="outside the engine.s optimisation profile"):
        again.extract(np.zeros((300, 300), np.uint8))
    again.runner.close()


@pytest.mark.skipif(not HAS_TENSORRT, reason=NO_TENSORRT)
def test_int8_without_a_cached_engine_is_refused_in_one_line(tmp_path):
    cfg = EncoderConfig(backend="tensorrt", trt_precision="int8",
                        engine_cache_dir=str(tmp_path))
    with pytest.raises(SkyfixError, match="no INT8 engine .* no calibration data") as info:
        make_encoder("xfeat", cfg, view_px=256)
    assert "\n" not in str(info.value)
