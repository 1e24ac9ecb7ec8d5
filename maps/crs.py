"""The CRS of a map pack: one whose grid metres are ground metres.

An input's own CRS is kept when it is projected in metres and its scale (grid metres per
ground metre, meridional and parallel, from pyproj's projection factors) is within
SCALE_TOLERANCE of 1 at the area's centre and corners: a national grid or a UTM zone.
Anything else (geographic, Web Mercator with its 1/cos(latitude), equirectangular) is
reprojected to the UTM zone of the area's centre, so that fixes, ground resolutions and
covariances of the pack are in ground metres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pyproj import CRS as PyprojCRS
from pyproj import Proj
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds

from skyfix.runtime.core.errors import SkyfixError

SCALE_TOLERANCE = 0.002  # an input CRS whose scale differs more from 1 is reprojected
UTM_MAX_DEG = 4.0  # a reprojected input may reach this far from its UTM central meridian


def pack_crs(crss: Sequence[CRS], bounds: Sequence[tuple[float, ...]], names: Sequence[str]
             ) -> CRS:
    """The first input's CRS if its grid metres are ground metres over the area (projected,
    metric, scale within SCALE_TOLERANCE at the centre and corners), else the UTM zone of
    the centre (e.g. for geographic or Web Mercator inputs)."""
    first = crss[0]
    boxes = [transform_bounds(c, "EPSG:4326", *b) for c, b in zip(crss, bounds, strict=True)]
    w, s_, e, n = (min(b[0] for b in boxes), min(b[1] for b in boxes),
                   max(b[2] for b in boxes), max(b[3] for b in boxes))
    lon, lat = (w + e) / 2, (s_ + n) / 2
    try:
        metric = first.is_projected and abs(first.linear_units_factor[1] - 1.0) < 1e-9
    except CRSError:
        metric = False
    if metric and ground_scale_error(first, [w, e, lon, w, e], [s_, s_, lat, n, n]) \
            <= SCALE_TOLERANCE:
        return first
    zone = min(60, max(1, int((lon + 180.0) // 6) + 1))
    meridian = zone * 6 - 183
    if max(meridian - w, e - meridian) > UTM_MAX_DEG or max(abs(s_), abs(n)) > 84:
        kind = "geographic CRS" if first.is_geographic else first.to_string()
        raise SkyfixError(
            f"{', '.join(names)}: {kind} covering lon {w:.2f}..{e:.2f}, lat {s_:.2f}..{n:.2f}"
            " deg; too large for one UTM zone (reproject it to a suitable projected CRS first)")
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def ground_scale_error(crs: CRS, lons_deg: Sequence[float], lats_deg: Sequence[float]
                       ) -> float:
    """Largest |scale - 1| of `crs` (meridional or parallel: grid metres per ground metre)
    at the given points; pyproj's projection factors."""
    factors = Proj(PyprojCRS.from_wkt(crs.to_wkt())).get_factors(
        list(lons_deg), list(lats_deg), errcheck=False)
    scales = np.concatenate([np.atleast_1d(factors.meridional_scale),
                             np.atleast_1d(factors.parallel_scale)]).astype(np.float64)
    return float(np.max(np.abs(np.nan_to_num(scales, nan=np.inf) - 1.0)))
