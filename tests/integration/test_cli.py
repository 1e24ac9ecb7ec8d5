"""The `skyfix` command's error path: one clear line and a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skyfix.runtime.apps.cli", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("skyfix: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_ortho_file(tmp_path):
    proc = run_cli("maps", "build", str(tmp_path / "nope.tif"), "--out", str(tmp_path / "p"))
    assert_one_line_error(proc, "nope.tif")


def test_non_georeferenced_image(tmp_path):
    plain = tmp_path / "plain.tif"
    data = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    with rasterio.open(plain, "w", driver="GTiff", width=64, height=64, count=3,
                       dtype="uint8") as dst:
        dst.write(data)
    proc = run_cli("maps", "build", str(plain), "--out", str(tmp_path / "p"))
    assert_one_line_error(proc, "georeferenc")
    proc = run_cli("sim", "flight", "--ortho", str(plain), "--out", str(tmp_path / "f"),
                   "--duration", "5")
    assert_one_line_error(proc, "georeferenc")


def test_unknown_config_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("match:\n  min_inlers: 10\n")
    proc = run_cli("replay", str(tmp_path), "--map", str(tmp_path), "--out",
                   str(tmp_path / "o"), "--config", str(cfg))
    assert_one_line_error(proc, "unknown config key 'match.min_inlers'")


def test_replay_of_a_folder_that_is_not_a_flight(tmp_path):
    proc = run_cli("replay", str(tmp_path), "--map", str(tmp_path), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "not a recorded flight")


@pytest.mark.parametrize("args", [["maps", "verify"], ["maps", "info"]])
def test_pack_commands_on_a_folder_that_is_not_a_pack(tmp_path, args):
    proc = run_cli(*args, str(tmp_path))
    assert_one_line_error(proc, str(tmp_path))


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_knows_every_command(shell):
    proc = run_cli("completion", shell)
    assert proc.returncode == 0, proc.stderr
    for word in ("replay", "maps", "build", "verify", "closed-loop", "calibrate", "--gnss-off-at"):
        assert word in proc.stdout, word


def test_trained_model_only_with_its_encoder(tmp_path, ortho_path):
    proc = run_cli("maps", "build", str(ortho_path), "--out", str(tmp_path / "p"),
                   "--trained-model", str(tmp_path / "mine.onnx"))
    assert_one_line_error(proc, "--trained-model goes with --encoder xfeat-xd")
    proc = run_cli("maps", "build", str(ortho_path), "--out", str(tmp_path / "p"),
                   "--encoder", "xfeat-xd", "--trained-model", str(tmp_path / "mine.onnx"))
    assert_one_line_error(proc, f"--trained-model {tmp_path / 'mine.onnx'}: no such file")
