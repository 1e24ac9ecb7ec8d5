"""Shared fixtures: the bundled real orthophoto and paths to ../shared/data."""

from __future__ import annotations

import csv
import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from skyfix.maps.build import build_pack
from skyfix.models.features import RootSiftEncoder
from skyfix.sim.sample import sample_ortho

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def weights_of_ones_own(folder: Path, model_id: str) -> Path:
    """The shipped cross-date weights copied into `folder` as xfeat-xd.onnx, their manifest
    beside them naming `model_id`: what `skyfix models train` leaves a user."""
    import json

    from skyfix.models.manifest import manifest_path
    from skyfix.models.xfeat import XD_MODEL

    model = folder / "xfeat-xd.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(XD_MODEL, model)
    raw = json.loads(manifest_path(XD_MODEL).read_text())
    manifest_path(model).write_text(json.dumps({**raw, "model_id": model_id}))
    return model


def benchmark_script(name: str) -> Iterator[ModuleType]:
    """benchmarks/`name`.py loaded as a module, for a module-scoped fixture to yield; gone
    from sys.modules (where dataclasses look their module up) afterwards."""
    spec = importlib.util.spec_from_file_location(f"skyfix_bench_{name}",
                                                  BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or a skip naming it when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path} (tests read ../shared/data)")
    return path


@pytest.fixture(scope="session")
def ortho_path() -> Path:
    return sample_ortho()


@pytest.fixture(scope="session")
def ortho_pack(tmp_path_factory, ortho_path: Path) -> Path:
    """The map pack of the bundled orthophoto as `maps build` makes it by default, built
    once for the whole session: its users read it, or spoil a copy."""
    return build_pack([ortho_path], tmp_path_factory.mktemp("ortho_pack") / "pack",
                      progress=False)


@pytest.fixture(scope="session")
def ortho(ortho_path: Path) -> tuple[np.ndarray, rasterio.Affine]:
    """([H, W, 3] uint8 BGR, affine transform) of the bundled orthophoto."""
    with rasterio.open(ortho_path) as src:
        rgb = src.read()
        return np.ascontiguousarray(np.moveaxis(rgb, 0, -1)[:, :, ::-1]), src.transform


def small_pack(root: Path, size_px: int) -> Path:
    """A RootSIFT pack (256 px tiles) of a `size_px` square of the bundled orthophoto,
    built in `root`: quick enough for tests that spoil a real pack."""
    with rasterio.open(sample_ortho()) as src:
        win = Window(400, 500, size_px, size_px)
        profile = dict(driver="GTiff", width=size_px, height=size_px, count=src.count,
                       dtype=src.dtypes[0], crs=src.crs, transform=src.window_transform(win))
        data = src.read(window=win)
    with rasterio.open(root / "crop.tif", "w", **profile) as out:
        out.write(data)
    return build_pack([root / "crop.tif"], root / "pack", RootSiftEncoder(), tile_px=256,
                      progress=False)


def restamp(flight: Path, dst: Path, stamps) -> Path:
    """A copy of `flight` whose frames.csv stamps are `stamps(t)` of the original ones."""
    shutil.copytree(flight, dst)
    with open(flight / "frames.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    times = stamps([int(r["t_ns"]) for r in rows])
    with open(dst / "frames.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r, t in zip(rows, times, strict=True):
            w.writerow({**r, "t_ns": str(t)})
    return dst
