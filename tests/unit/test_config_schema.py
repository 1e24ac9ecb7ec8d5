"""The config schema: every key has a type, a range or allowed values and a meaning; it
is the one source of the checks, configs/default.yaml and the README table; absurd
values and hostile YAML end as one line naming the key or the file."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import replace
from pathlib import Path

import pytest

from skyfix.runtime.core.config import Config, FilterConfig, load_config
from skyfix.runtime.core.config_doc import default_yaml, markdown_table, undocumented_keys
from skyfix.runtime.core.errors import SkyfixError

REPO = Path(__file__).resolve().parents[2]


def test_default_yaml_and_readme_table_come_from_the_schema():
    assert (REPO / "configs" / "default.yaml").read_text() == default_yaml(), \
        "run: skyfix config doc > configs/default.yaml"
    assert markdown_table() in (REPO / "README.md").read_text(), \
        "paste `skyfix config doc --markdown` into the README's Configuration section"
    assert load_config(REPO / "configs" / "default.yaml") == Config()


def test_every_key_has_a_meaning_and_every_number_a_range():
    assert undocumented_keys() == []
    for name, cls in typing.get_type_hints(Config).items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            m = f.metadata
            assert m["doc"].strip(), f"{name}.{f.name}"
            if hints[f.name] in (int, float):
                assert (m["ge"] is not None or m["gt"] is not None) and \
                    (m["le"] is not None or m["lt"] is not None), f"{name}.{f.name}"


@pytest.mark.parametrize("section, key, value", [
    ("filter", "rate_hz", 0), ("filter", "rate_hz", -10.0), ("output", "satellites", 256),
    ("output", "satellites", -1), ("output", "gps_id", 300), ("output", "system_id", 0),
    ("output", "system_id", 256), ("output", "component_id", 1000),
    ("output", "signing_link_id", 256), ("daemon", "heartbeat_hz", 0),
    ("daemon", "link_timeout_s", 0), ("daemon", "autopilot", "inav"),
    ("encoder", "backend", "pickle"), ("camera", "queue", 0), ("match", "min_inliers", 0),
    ("filter", "max_speed_mps", 1e300), ("gnss", "ekf_source_visual", 9),
])
def test_absurd_values_are_refused_in_one_line_naming_the_key(tmp_path, section, key, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"{section}:\n  {key}: {value!r}\n".replace("'", '"'))
    with pytest.raises(SkyfixError, match=f"'{section}.{key}'") as err:
        load_config(path)
    assert "\n" not in str(err.value)
    with pytest.raises(SkyfixError, match=f"'{section}.{key}'"):  # also when made in code
        replace(getattr(Config(), section), **{key: value})


def test_code_cannot_make_an_out_of_range_section_either():
    with pytest.raises(SkyfixError, match="rate_hz"):
        FilterConfig(rate_hz=0.0)


@pytest.mark.parametrize("text, words", [
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
     "aliases"),
    ("filter: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("x: " + "[" * 100 + "]" * 100 + "\n", "nested"),
    ("filter: {rate_hz: 10}\n" + "#" * 1_100_000 + "\n", "larger than"),
    (b"\xff\xfe\x00bad", "UTF-8"),
])
def test_hostile_yaml_is_one_line(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SkyfixError, match=words) as err:
        load_config(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_skyfix_config_doc_prints_both(capsys):
    from skyfix.runtime.apps.cli import main

    assert main(["config", "doc"]) == 0
    assert capsys.readouterr().out == default_yaml()
    assert main(["config", "doc", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table()
