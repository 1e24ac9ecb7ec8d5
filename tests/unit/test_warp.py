"""maps.warp: imagery warped onto a grid half a pixel off keeps its detail, and no pixel
next to a hole in the source's mask is called valid."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from skyfix.maps.warp import warp_block

CRS_UTM = CRS.from_epsg(32633)
E0, N0 = 500_000.0, 5_000_000.0


def _pattern(e: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Grey levels of a texture of 3.3-5 m wavelengths at (east, north) metres."""
    x, y = e - E0, N0 - n
    return (128 + 40 * np.sin(2 * np.pi * x / 4.0 + 0.3) * np.cos(2 * np.pi * y / 5.0)
            + 30 * np.sin(2 * np.pi * (x + y) / 3.3))


def _source(path, hole: bool):
    """256 x 256 px at 1 m/px; with `hole`, a 20 x 20 px square masked out."""
    rows, cols = np.mgrid[0:256, 0:256] + 0.5
    pixels = np.clip(np.round(_pattern(E0 + cols, N0 - rows)), 0, 255).astype(np.uint8)
    mask = np.full((256, 256), 255, np.uint8)
    if hole:
        mask[100:120, 100:120] = 0
        pixels[100:120, 100:120] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            path, "w", driver="GTiff", width=256, height=256, count=1, dtype="uint8",
            crs=CRS_UTM, transform=from_origin(E0, N0, 1.0, 1.0)) as dst:
        dst.write(pixels[None])
        dst.write_mask(mask)
    return path


def _warped(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(warped, valid, true pattern) of a 128 x 128 block whose grid lies half a pixel
    south-east of the source's."""
    origin = (E0 + 48.5, N0 - 48.5)
    with rasterio.open(path) as src:
        out, ok = warp_block(src, CRS_UTM, from_origin(*origin, 1.0, 1.0),
                             Window(0, 0, 128, 128), [1], terrain=False)
    rows, cols = np.mgrid[0:128, 0:128] + 0.5
    return out[0].astype(np.float64), ok, _pattern(origin[0] + cols, origin[1] - rows)


def test_half_a_pixel_off_keeps_the_detail(tmp_path):
    got, ok, truth = _warped(_source(tmp_path / "src.tif", hole=False))
    assert ok.all()
    # cubic: 5.2 grey levels RMS; bilinear sampling averages neighbours and gives 16.5
    assert np.sqrt(np.mean((got - truth) ** 2)) < 8.0


def test_no_valid_pixel_takes_from_a_hole(tmp_path):
    got, ok, truth = _warped(_source(tmp_path / "src.tif", hole=True))
    # the hole lies at output rows/cols 51.5-71.5: a pixel is valid only when the cubic's
    # 4 x 4 source pixels all are, so the holes' black never leaks in
    assert not ok[50:72, 50:72].any() and ok[:48].all() and ok[76:].all()
    assert np.abs(got - truth)[ok].max() < 20.0
