"""The package layers, lowest first: a module may import its own layer and the ones below,
never one above. The README's layout section describes the same order."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = [
    ("skyfix.runtime.core", "runtime/core"),  # errors, types, config, geo, camera model
    ("skyfix.runtime.backends", "runtime/backends"),  # inference runners
    ("skyfix.models", "models"),  # encoders, weights, metrics, datasets
    ("skyfix.maps", "maps"),  # map packs
    ("skyfix.runtime.io", "runtime/io"),  # frame sources, telemetry, logs, MAVLink messages
    ("skyfix.runtime.nav", "runtime/nav"),  # in-flight stages, navigator
    ("skyfix.runtime.flight", "runtime/flight"),  # assembly, send policy, GNSS, daemon
    ("skyfix.calibration", "calibration"),  # camera and mount calibration
    ("skyfix.sim", "sim"),  # simulated flights, autopilot emulator, SITL
    ("skyfix.runtime.apps", "runtime/apps"),  # the programs: CLI, replay, fleet, report, demo
]


def _layer(module: str) -> int | None:
    for i, (name, _) in enumerate(LAYERS):
        if module == name or module.startswith(name + "."):
            return i
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m.startswith("skyfix")]


def _sources() -> list[tuple[int, Path]]:
    out = []
    for i, (_, folder) in enumerate(LAYERS):
        out += [(i, p) for p in sorted((ROOT / folder).rglob("*.py"))]
    return out


def test_every_source_file_is_in_a_layer():
    runtime_files = {p for p in (ROOT / "runtime").rglob("*.py")}
    in_layers = {p for _, p in _sources()}
    stray = sorted(str(p.relative_to(ROOT)) for p in runtime_files - in_layers
                   if p.name != "__init__.py" or p.parent != ROOT / "runtime")
    assert not stray, f"runtime modules outside every layer: {stray}"


@pytest.mark.parametrize("layer,path", _sources(), ids=lambda v: str(v)[-40:])
def test_no_import_from_a_higher_layer(layer: int, path: Path):
    bad = []
    for line, module in _imports(path):
        target = _layer(module)
        assert target is not None, f"{path.relative_to(ROOT)}:{line} imports {module}, no layer"
        if target > layer:
            bad.append(f"{path.relative_to(ROOT)}:{line} ({LAYERS[layer][0]}) imports {module} "
                       f"({LAYERS[target][0]})")
    assert not bad, "\n".join(bad)
