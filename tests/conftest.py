"""Shared fixtures: the bundled real orthophoto and paths to ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from skyfix.sim.sample import sample_ortho

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
def ortho(ortho_path: Path) -> tuple[np.ndarray, rasterio.Affine]:
    """([H, W, 3] uint8 BGR, affine transform) of the bundled orthophoto."""
    with rasterio.open(ortho_path) as src:
        rgb = src.read()
        return np.ascontiguousarray(np.moveaxis(rgb, 0, -1)[:, :, ::-1]), src.transform
