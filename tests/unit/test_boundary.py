"""The error boundary: every subcommand, given an output it cannot write (an existing
file, a path under a file, a place the OS refuses, a full disk) or inputs of the wrong
kind, ends with exactly one line `skyfix: error: ...` and exit status 2; a bug ends with
one line naming a crash report (traceback, version, config) and status 70."""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import small_pack

from skyfix.runtime.apps.boundary import EXIT_BUG, EXIT_ERROR, run_guarded
from skyfix.runtime.apps.cli import main
from skyfix.runtime.core.errors import SkyfixError
from skyfix.sim.flight import FlightSpec, simulate_flight
from skyfix.sim.sample import sample_ortho


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("boundary")
    pack = small_pack(root, 300)
    flight = simulate_flight(sample_ortho(), root / "flight", FlightSpec(duration_s=2.0, fps=1.0),
                             progress=False)
    del flight
    (root / "afile").write_text("x")
    config = root / "skyfix.yaml"
    config.write_text("filter:\n  rate_hz: 10\n")
    return {"pack": pack, "ortho": root / "crop.tif", "flight": root / "flight",
            "file": root / "afile", "config": config, "camera": root / "flight" / "camera.yaml"}


def commands(i: dict[str, Path]) -> dict[str, list[str]]:
    """Each subcommand with working inputs and `OUT` where its output goes."""
    frame = str(next((i["flight"] / "frames").iterdir()))
    return {
        "demo": ["demo", "--out", "OUT"],
        "replay": ["replay", str(i["flight"]), "--map", str(i["pack"]), "--out", "OUT"],
        "maps build": ["maps", "build", str(i["ortho"]), "--tile", "256", "--out", "OUT"],
        "maps shard": ["maps", "shard", str(i["pack"]), "--cell-m", "50", "--out", "OUT"],
        "sim flight": ["sim", "flight", "--ortho", str(sample_ortho()), "--duration", "1",
                       "--fps", "1", "--out", "OUT"],
        "sim autopilot": ["sim", "autopilot", "--ortho", str(sample_ortho()), "--duration",
                          "0.5", "--link", "udpout:127.0.0.1:9", "--out", "OUT"],
        "sim closed-loop": ["sim", "closed-loop", "--ortho", str(sample_ortho()), "--map",
                            str(i["pack"]), "--duration", "3", "--gnss-off-at", "1",
                            "--blank-at", "2", "--out", "OUT"],
        "sim sitl": ["sim", "sitl", "--ortho", str(sample_ortho()), "--map", str(i["pack"]),
                     "--out", "OUT"],
        "models export": ["models", "export", "--out", "OUT"],
        "models bench": ["models", "bench", "--out", "OUT/x/models.json"],
        "calibrate camera": ["calibrate", "camera", frame, "--pattern", "chessboard:9x6:0.025",
                             "--out", "OUT/camera.yaml"],
        "calibrate mount": ["calibrate", "mount", str(i["flight"]), "--map", str(i["pack"]),
                            "--out", "OUT/mount.yaml"],
    }


def run_cli(argv: list[str], capfd) -> tuple[int, list[str]]:
    code = main(argv)
    err = [line for line in capfd.readouterr().err.splitlines()
           if line.strip() and not re.search(r"\[\d\d:\d\d", line)]  # not a progress bar
    return code, err


def unwritable_places(tmp: Path, afile: Path) -> dict[str, str]:
    """Outputs the OS refuses, by class."""
    places = {"existing file": str(afile), "under a file": str(afile / "sub")}
    if os.geteuid() != 0:  # root writes into a mode-555 folder anyway
        ro = tmp / "ro"
        ro.mkdir(exist_ok=True)
        ro.chmod(0o555)
        places["read-only folder"] = str(ro / "out")
    if Path("/sys").is_dir():
        places["refused by the OS"] = "/sys/skyfix-out"  # sysfs: EPERM / EROFS, root or not
    return places


@pytest.mark.parametrize("name", ["demo", "replay", "maps build", "maps shard", "sim flight",
                                  "sim autopilot", "sim closed-loop", "sim sitl",
                                  "models export", "models bench", "calibrate camera",
                                  "calibrate mount"])
def test_every_subcommand_refuses_an_unusable_output_in_one_line(name, inputs, tmp_path,
                                                                 capfd, monkeypatch):
    monkeypatch.setenv("SKYFIX_CRASH_DIR", str(tmp_path / "crash"))
    for kind, out in unwritable_places(tmp_path, inputs["file"]).items():
        argv = [a.replace("OUT", out) for a in commands(inputs)[name]]
        code, err = run_cli(argv, capfd)
        assert code == EXIT_ERROR, (kind, err)
        assert len(err) == 1 and err[0].startswith("skyfix: error: "), (kind, err)
    assert not (tmp_path / "crash").exists()  # all expected: no crash report


@pytest.mark.parametrize("name", ["maps build", "sim flight", "replay"])
def test_running_out_of_space_while_writing_is_one_line(name, inputs, tmp_path):
    """A file-size limit (what a full disk looks like to the writer: the write fails
    half way) in a real process: one line, status 2, no traceback, no signal."""
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in commands(inputs)[name]]
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000)); "
              "from skyfix.runtime.apps.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "SKYFIX_CRASH_DIR": str(tmp_path / "crash")}
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True,
                          text=True, timeout=300, env=env)
    err = [line for line in proc.stderr.splitlines()
           if line.strip() and not re.search(r"\[\d\d:\d\d", line)]
    assert proc.returncode == EXIT_ERROR, proc.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("skyfix: error: ") and "File too large" in err[0]


@pytest.mark.parametrize("argv", [
    ["replay", "FILE", "--map", "PACK", "--out", "TMP/r"],  # a file where a flight goes
    ["replay", "FLIGHT", "--map", "FILE", "--out", "TMP/r"],  # a file where a pack goes
    ["replay", "FLIGHT", "--map", "PACK", "--out", "TMP/r", "--config", "FLIGHT"],
    ["maps", "build", "FILE", "--out", "TMP/p"],  # not a GeoTIFF
    ["maps", "verify", "FILE"], ["maps", "info", "FLIGHT"],
    ["models", "info", "FILE"], ["run", "--config", "FILE"],
    ["run", "--config", "CONFIG"],  # no map, no camera
])
def test_inputs_of_the_wrong_kind_are_one_line(argv, inputs, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("SKYFIX_CRASH_DIR", str(tmp_path / "crash"))
    subs = {"FILE": str(inputs["file"]), "PACK": str(inputs["pack"]),
            "FLIGHT": str(inputs["flight"]), "CONFIG": str(inputs["config"]),
            "TMP": str(tmp_path)}
    argv = [next((a.replace(k, v) for k, v in subs.items() if k in a), a) for a in argv]
    code, err = run_cli(argv, capfd)
    assert code == EXIT_ERROR and len(err) == 1 and err[0].startswith("skyfix: error:"), err


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="TensorRT is installed here")
@pytest.mark.parametrize("command", ["run", "replay"])
def test_tensorrt_configured_but_absent_is_one_line(command, inputs, tmp_path, capfd,
                                                    monkeypatch):
    """encoder.backend: tensorrt in a real config file, an XFeat pack, no TensorRT: the
    daemon and replay stop with one line saying so (the profile was checked first)."""
    from skyfix.maps.build import build_pack
    from skyfix.models.registry import make_encoder

    monkeypatch.setenv("SKYFIX_CRASH_DIR", str(tmp_path / "crash"))
    pack = build_pack([inputs["ortho"]], tmp_path / "xfeat-pack", make_encoder("xfeat"),
                      tile_px=256, progress=False)
    config = tmp_path / "trt.yaml"
    config.write_text(f"encoder:\n  backend: tensorrt\n  trt_precision: fp16\n"
                      f"  engine_cache_dir: {tmp_path / 'engines'}\n"
                      f"daemon:\n  map: {pack}\ncamera:\n  calibration: {inputs['camera']}\n")
    argv = {"run": ["run", "--config", str(config), "--duration", "1"],
            "replay": ["replay", str(inputs["flight"]), "--map", str(pack), "--out",
                       str(tmp_path / "out"), "--config", str(config)]}[command]
    code, err = run_cli(argv, capfd)
    assert code == EXIT_ERROR and len(err) == 1, err
    assert err[0].startswith("skyfix: error: TensorRT is not installed"), err
    assert not (tmp_path / "crash").exists() and not (tmp_path / "engines").exists()


@pytest.mark.parametrize(("argv", "words"), [
    (["--size", "1000x1000"], "dim 2 (min/opt/max) is 32/1000/1024: each must be a multiple "
                               "of 32"),
    (["--precision", "int8"], "int8 needs --calib FOLDER"),
    *([] if importlib.util.find_spec("tensorrt") else [([], "TensorRT is not installed")]),
])
def test_models_engine_checks_the_graph_then_needs_tensorrt(argv, words, capfd):
    code, err = run_cli(["models", "engine", *argv], capfd)
    assert code == EXIT_ERROR and len(err) == 1 and words in err[0], err


@pytest.mark.parametrize("exc, words", [
    (SkyfixError("bad\ninput"), "bad input"),
    (FileExistsError(errno.EEXIST, "File exists", "/x/out"), "/x/out: File exists; choose"),
    (OSError(errno.ENOSPC, "No space left on device", "/x/f"), "free some space"),
    (OSError(errno.EROFS, "Read-only file system", "/x"), "write somewhere else"),
    (MemoryError(), "out of memory"),
    (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
])
def test_expected_failures_are_one_line_without_a_report(exc, words, tmp_path, capfd,
                                                         monkeypatch):
    monkeypatch.setenv("SKYFIX_CRASH_DIR", str(tmp_path / "crash"))

    def fail():
        raise exc

    assert run_guarded(fail, ["skyfix", "x"]) == EXIT_ERROR
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and words in err[0]
    assert not (tmp_path / "crash").exists()


def test_a_bug_is_one_line_naming_a_crash_report(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("SKYFIX_CRASH_DIR", str(tmp_path / "crash"))
    config = tmp_path / "c.yaml"
    config.write_text("filter:\n  rate_hz: 7\n")

    def buggy():
        return {}["missing"]

    assert run_guarded(buggy, ["skyfix", "replay", "x"], config) == EXIT_BUG
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("skyfix: internal error: KeyError")
    report = Path(err[0].rsplit("crash report: ", 1)[1])
    text = report.read_text()
    assert "Traceback" in text and "buggy" in text and "rate_hz: 7" in text
    assert "skyfix replay x" in text and "crash report" in text


def test_a_bug_where_no_report_can_be_written_is_still_one_line(tmp_path, capfd,
                                                                monkeypatch):
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("SKYFIX_CRASH_DIR", str(tmp_path / "f" / "crash"))
    assert run_guarded(lambda: 1 / 0, ["skyfix"]) == EXIT_BUG
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and "ZeroDivisionError" in err[0] and "no crash report" in err[0]


def test_two_crashes_in_one_second_get_two_reports(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("SKYFIX_CRASH_DIR", str(tmp_path / "crash"))
    for _ in range(2):
        assert run_guarded(lambda: 1 / 0, ["skyfix"]) == EXIT_BUG
    assert len(list((tmp_path / "crash").iterdir())) == 2


def test_fuzz_regression_a_frame_list_that_is_not_utf8(inputs, tmp_path, capfd):
    """Found by tests/fuzz/test_fuzz_programs.py: one byte 0x80 before frames.csv's header
    was a UnicodeDecodeError (an internal error) instead of one line."""
    flight = tmp_path / "flight"
    shutil.copytree(inputs["flight"], flight)
    (flight / "frames.csv").write_bytes(b"\x80" + (flight / "frames.csv").read_bytes())
    code, err = run_cli(["replay", str(flight), "--map", str(inputs["pack"]), "--out",
                         str(tmp_path / "out")], capfd)
    assert code == EXIT_ERROR and len(err) == 1 and "not UTF-8" in err[0], err


def test_regression_a_1x1_geotiff_is_one_line(tmp_path, capfd):
    """Found by hand (issue 18's class "files that are the wrong kind of thing"): a 1x1
    GeoTIFF crashed the map build in OpenCV."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    tif = tmp_path / "one.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=1, height=1, count=3, dtype="uint8",
                       crs="EPSG:31256", transform=from_origin(0, 340000, 0.3, 0.3)) as o:
        o.write(np.full((3, 1, 1), 100, np.uint8))
    code, err = run_cli(["maps", "build", str(tif), "--out", str(tmp_path / "p")], capfd)
    assert code == EXIT_ERROR and len(err) == 1 and "too small" in err[0], err


@pytest.mark.parametrize("argv", [
    ["sim", "flight", "--ortho", "ORTHO", "--duration", "1e9", "--fps", "1e9", "--out", "TMP/f"],
    ["maps", "shard", "PACK", "--cell-m", "1e-9", "--out", "TMP/s"],
    ["replay", "FLIGHT", "--map", "PACK", "--out", "TMP/r", "--time-offset", "nan"],
    ["replay", "FLIGHT", "--map", "PACK", "--out", "TMP/r", "--time-offset", "1e30"],
    ["calibrate", "mount", "FLIGHT", "--map", "PACK", "--min-frames", "-3", "--out", "TMP/m"],
    ["sim", "closed-loop", "--ortho", "ORTHO", "--map", "PACK", "--duration", "1e12",
     "--gnss-off-at", "1", "--blank-at", "2", "--out", "TMP/c"],
    ["sim", "autopilot", "--ortho", "ORTHO", "--duration", "1e12", "--out", "TMP/a"],
    ["maps", "build", "ORTHO", "--gsd", "0.001", "--out", "TMP/p"],
])
def test_regression_absurd_numbers_on_the_command_line_are_one_line(argv, inputs, tmp_path,
                                                                     capfd):
    """Found by hand: these hung (a 1e18-frame flight, a 1e-9 m shard grid, real-time
    flights of 1e12 s, 3.8 million tiles) or were internal errors (NaN and 1e30 s time
    offsets, a negative frame minimum)."""
    subs = {"ORTHO": str(sample_ortho()), "PACK": str(inputs["pack"]),
            "FLIGHT": str(inputs["flight"]), "TMP": str(tmp_path)}
    argv = [next((a.replace(k, v) for k, v in subs.items() if k in a), a) for a in argv]
    start = time.monotonic()
    code, err = run_cli(argv, capfd)
    assert code == EXIT_ERROR and len(err) == 1 and err[0].startswith("skyfix: error:"), err
    assert time.monotonic() - start < 60.0
