"""The bundled sample map: the City of Vienna's 2023 orthophoto of Schoenbrunn,
0.30 m/px, EPSG:31256, 500 x 500 m. Datenquelle: Stadt Wien - data.wien.gv.at (CC BY 4.0)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_ortho() -> Path:
    """Path of the bundled orthophoto GeoTIFF."""
    return Path(str(resources.files("skyfix.sim") / "data" / "vienna_schoenbrunn_2023_30cm.tif"))
