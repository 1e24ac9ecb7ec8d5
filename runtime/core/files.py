"""File helpers every layer uses: content hashes; YAML, JSON and CSV read with limits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

from skyfix.runtime.core.errors import SkyfixError

MAX_YAML_BYTES = 1_000_000
MAX_JSON_BYTES = 16_000_000
MAX_YAML_DEPTH = 64


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (a few anchors can expand into gigabytes)
    and with a bounded nesting depth."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise SkyfixError(f"YAML aliases (*name) are not accepted (line {mark.line + 1})")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise SkyfixError(f"YAML nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _read_bounded(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of `path`, refused (one line naming `what`) when missing or over
    `max_bytes`; never reads more than max_bytes + 1."""
    if not path.is_file():
        raise SkyfixError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise SkyfixError(f"{what} {path} is larger than {max_bytes // 1000} kB")
    return raw


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document in `path` (at most MAX_YAML_BYTES, no aliases, nesting at most
    MAX_YAML_DEPTH); a one-line SkyfixError naming `what` and `path` otherwise."""
    path = Path(path)
    raw = _read_bounded(path, what, MAX_YAML_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SkyfixError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from None
    try:
        return yaml.load(text, Loader=_LimitedLoader)  # noqa: S506 (a SafeLoader subclass)
    except SkyfixError as exc:
        raise SkyfixError(f"{what} {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SkyfixError(f"{what} {path} is not valid YAML: {exc}".splitlines()[0]) from None
    except RecursionError:
        raise SkyfixError(f"{what} {path} is nested too deeply") from None


def read_json_object(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The JSON object (a mapping) in `path`: at most `max_bytes`, nesting bounded by
    Python's recursion limit; a one-line SkyfixError naming `what` and `path` otherwise."""
    import json

    path = Path(path)
    raw = _read_bounded(path, what, max_bytes)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SkyfixError(f"{what} {path} is not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise SkyfixError(f"{what} {path}: not valid JSON ({exc.msg}, line {exc.lineno})"
                          ) from None
    except RecursionError:
        raise SkyfixError(f"{what} {path} is nested too deeply") from None
    if not isinstance(data, dict):
        raise SkyfixError(f"{what} {path} must hold a JSON object, not {type(data).__name__}")
    return data


def read_csv(path: Path, what: str, max_bytes: int = 256_000_000
             ) -> tuple[list[str], list[dict[str, str]]]:
    """(column names, rows) of the CSV file `path` (UTF-8, at most `max_bytes`); a
    one-line SkyfixError naming `what` and `path` otherwise."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise SkyfixError(f"{what} not found: {path}")
    if path.stat().st_size > max_bytes:
        raise SkyfixError(f"{what} {path} is larger than {max_bytes // 1_000_000} MB")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except UnicodeDecodeError as exc:
        raise SkyfixError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from None
    except csv.Error as exc:
        raise SkyfixError(f"{what} {path} is not readable CSV ({exc})") from None


def systemd_state_dir() -> Path | None:
    """The service's state directory when systemd gives one (StateDirectory=), else None."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) if state else None
