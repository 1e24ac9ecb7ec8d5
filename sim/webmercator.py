"""A Web-Mercator copy of a map, as a tile download gives it (tests, benchmarks).

    map GeoTIFF (any CRS) --warp (bilinear, as tile servers resample) to EPSG:3857 at the
    map's own ground resolution--> JPEG GeoTIFF with an internal mask

Web-Mercator metres are ground metres times 1/cos(latitude): the copy's pixel is that much
larger in grid units, so that it holds as much ground as the map's.
"""

from __future__ import annotations

import math
from pathlib import Path

import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds


def web_mercator_copy(src_path: Path, dst: Path) -> Path:
    """Write `src_path` reprojected to Web Mercator into `dst` and return `dst`."""
    with rasterio.open(src_path) as src:
        w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        res = src.res[0] / math.cos(math.radians((s + n) / 2))
        with WarpedVRT(src, crs="EPSG:3857", resampling=Resampling.bilinear,
                       resolution=res) as vrt:
            profile = dict(driver="GTiff", width=vrt.width, height=vrt.height, count=3,
                           dtype="uint8", crs=vrt.crs, transform=vrt.transform, tiled=True,
                           compress="JPEG", jpeg_quality=90, photometric="YCBCR")
            with rasterio.open(dst, "w", **profile) as out:
                out.write(vrt.read([1, 2, 3]))
                out.write_mask(vrt.dataset_mask())
    return Path(dst)
