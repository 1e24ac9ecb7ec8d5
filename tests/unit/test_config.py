from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from skyfix.runtime.core.config import Config, load_config
from skyfix.runtime.core.errors import SkyfixError

REPO = Path(__file__).resolve().parents[2]


def test_no_file_and_empty_file_give_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(None) == Config()
    assert load_config(empty) == Config()


def test_shipped_default_config_is_the_code_default():
    path = REPO / "configs" / "default.yaml"
    assert load_config(path) == Config()
    written = yaml.safe_load(path.read_text())
    expected = {name: {g.name for g in dataclasses.fields(tp)}
                for name, tp in typing.get_type_hints(Config).items()}
    assert {k: set(v) for k, v in written.items()} == expected, "every key is documented"


def test_values_override_and_ints_widen_to_float(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("match:\n  min_inliers: 40\n  ratio: 1\nfilter:\n  rate_hz: 5\n")
    cfg = load_config(p)
    assert cfg.match.min_inliers == 40 and cfg.match.ratio == 1.0
    assert cfg.filter.rate_hz == 5.0 and isinstance(cfg.filter.rate_hz, float)
    assert cfg.retrieve == Config().retrieve


@pytest.mark.parametrize("text, message", [
    ("match:\n  min_inlier: 3\n", "unknown config key 'match.min_inlier'"),
    ("matcher:\n  x: 1\n", "unknown config key 'matcher'"),
    ("match:\n  min_inliers: many\n", "config key 'match.min_inliers' must be int"),
    ("match:\n  min_inliers: true\n", "config key 'match.min_inliers' must be int"),
    ("filter: 3\n", "config section 'filter' must be a mapping"),
    ("match: [1, 2\n", "is not valid YAML"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(SkyfixError, match=message.replace("[", r"\[")) as exc:
        load_config(p)
    assert "\n" not in str(exc.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(SkyfixError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_an_error_quoting_multi_line_text_stays_one_line():
    err = SkyfixError("pack.npy is not readable (Header info length is large.\nTo allow\n it)")
    assert str(err) == "pack.npy is not readable (Header info length is large. To allow it)"


def test_relative_paths_are_taken_from_the_config_files_folder(tmp_path, monkeypatch):
    """A daemon's working directory (systemd: /) is not where its config lives."""
    folder = tmp_path / "etc" / "skyfix"
    folder.mkdir(parents=True)
    p = folder / "skyfix.yaml"
    p.write_text("daemon:\n  map: maps/vienna\n  link: udpin:0.0.0.0:14550\n"
                 "camera:\n  calibration: ../camera.yaml\n  source: '0'\n"
                 f"encoder:\n  trained_model: {tmp_path / 'w.onnx'}\n"
                 "trust:\n  public_key: ~/keys/pack.pem\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("etc/skyfix/skyfix.yaml"))
    assert Path(cfg.daemon.map) == Path("etc/skyfix/maps/vienna")
    assert Path(cfg.camera.calibration).resolve() == tmp_path / "etc" / "camera.yaml"
    assert cfg.encoder.trained_model == str(tmp_path / "w.onnx")  # absolute: as written
    assert cfg.trust.public_key == str(Path.home() / "keys" / "pack.pem")
    assert cfg.daemon.link == "udpin:0.0.0.0:14550" and cfg.camera.source == "0"  # not paths
    assert cfg.encoder.engine_cache_dir == ""  # unset stays unset: the default applies
