"""Fuzzing config loading: random bytes and YAML text, random mappings over the real
sections and keys with values of every type. The result is a Config holding exactly the
values given, or a one-line SkyfixError that names the offending key."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import yaml
from fuzz_support import fuzz
from hypothesis import given
from hypothesis import strategies as st

from skyfix.runtime.core.config import Config, load_config, resolve_path
from skyfix.runtime.core.errors import SkyfixError

SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
HINTS = {name: typing.get_type_hints(typing.get_type_hints(Config)[name])
         for name in SECTIONS}
FIELDS = {name: {f.name: f for f in dataclasses.fields(typing.get_type_hints(Config)[name])}
          for name in SECTIONS}


def in_bounds(section: str, key: str, value) -> bool:
    """Whether `value` lies inside the schema's range for `section.key`."""
    m = FIELDS[section][key].metadata
    if m.get("choices"):
        return value in m["choices"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return ((m.get("ge") is None or value >= m["ge"]) and (m.get("gt") is None or value > m["gt"])
            and (m.get("le") is None or value <= m["le"])
            and (m.get("lt") is None or value < m["lt"]))


any_value = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
    st.text(max_size=12), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def good_value(section: str, key: str):
    """Values of the key's type inside its schema range (or its allowed values)."""
    m = FIELDS[section][key].metadata
    if m.get("choices"):
        return st.sampled_from(m["choices"])
    tp = HINTS[section][key]
    low = m.get("ge") if m.get("ge") is not None else m.get("gt")
    high = m.get("le") if m.get("le") is not None else m.get("lt")
    if tp is int:
        return st.integers(int(low if low is not None else -10**6),
                           int(high if high is not None else 10**6)).filter(
            lambda v: in_bounds(section, key, v))
    if tp is float:
        return st.floats(low if low is not None else -1e6, high if high is not None else 1e6,
                         allow_nan=False).filter(lambda v: in_bounds(section, key, v))
    return {bool: st.booleans(), str: st.text(max_size=20)}[tp]


@st.composite
def config_mapping(draw, bad: bool):
    """{section: {key: value}} over real keys; with `bad`, any value or an unknown key."""
    out: dict = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        keys = sorted(HINTS[section])
        chosen = draw(st.lists(st.sampled_from(keys), max_size=5, unique=True))
        out[section] = {k: draw(any_value if bad else good_value(section, k)) for k in chosen}
        if bad and draw(st.booleans()):
            out[section][draw(st.text(min_size=1, max_size=8))] = 1
    return out


def load_text(tmp_path_factory, text: str | bytes):
    """(the Config or the one-line SkyfixError of `text` as a config file, its folder)."""
    path = tmp_path_factory.mktemp("cfg") / "skyfix.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        return load_config(path), path.parent
    except SkyfixError as exc:
        assert "\n" not in str(exc)
        return exc, path.parent


def read_back(section: str, key: str, value, folder: Path):
    """What `value` of `section.key` in a config file in `folder` reads back as: itself, or
    for a file or folder key its path from that folder (runtime/core/config.resolve_path)."""
    if FIELDS[section][key].metadata.get("path") and value:
        return resolve_path(value, folder)
    return value


@fuzz(60)
@given(text=st.binary(max_size=300) | st.text(max_size=300))
def test_garbage_is_a_config_or_one_line(tmp_path_factory, text):
    got, _ = load_text(tmp_path_factory, text)
    assert isinstance(got, Config | SkyfixError)


@fuzz(60)
@given(mapping=config_mapping(bad=False))
def test_well_typed_values_come_back_exactly(tmp_path_factory, mapping):
    cfg, folder = load_text(tmp_path_factory, yaml.safe_dump(mapping))
    assert isinstance(cfg, Config), cfg
    for section, values in mapping.items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == read_back(section, key, value, folder)


@fuzz(100)
@given(mapping=config_mapping(bad=True))
def test_bad_values_name_their_key(tmp_path_factory, mapping):
    got, folder = load_text(tmp_path_factory, yaml.safe_dump(mapping))
    if isinstance(got, Config):
        for section, values in mapping.items():
            for key, value in values.items():
                assert key in HINTS[section]
                held = getattr(getattr(got, section), key)
                assert held == read_back(section, key, value, folder)
                assert type(value) in (HINTS[section][key], int)
                assert in_bounds(section, key, held)  # nothing outside the schema's range
                if isinstance(held, float):
                    assert math.isfinite(held)
        return
    named = [repr(f"{s}.{k}") for s, v in mapping.items() for k in v]
    assert any(n in str(got) for n in named), str(got)
