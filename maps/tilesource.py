"""Imagery sources as tile grids: XYZ/TMS URL templates, named providers, WMTS and WMS.

Every source is reduced to one `TileLevel` (a regular grid of tiles in some CRS) and a URL
per tile, so downloading, caching and mosaicking are the same for all of them:

    XYZ/TMS template  {z}/{x}/{y} ({-y}: TMS row order, {s}: subdomain) in Web Mercator
    provider name     xyzservices' catalogue -> its template, attribution, zoom limit
    WMTS              OWSLib capabilities -> tile matrix set (any CRS) -> ResourceURL/KVP
    WMS               OWSLib capabilities -> GetMap requests of 512 px squares in a CRS
                      the server offers (the area's own metric CRS when it can)

The level is the coarsest one whose ground resolution at the area's centre is as fine as
the resolution asked for (measured on the ground with pyproj's geodesic, so it is right
for any CRS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlencode

from pyproj import Geod
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform as crs_transform
from rasterio.warp import transform_bounds

from skyfix.maps.area import Area
from skyfix.runtime.core.errors import SkyfixError

WEB_MERCATOR = CRS.from_epsg(3857)
MERCATOR_HALF_M = 20037508.342789244  # half the Web Mercator world, metres
WMS_TILE_PX = 512
WMTS_PIXEL_M = 0.28e-3  # OGC "standardized rendering pixel size"
_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class TileLevel:
    """A grid of `tile_px` square tiles of `res` CRS units per pixel; tile (0, 0) has its
    top-left corner at `origin_xy`; columns grow east, rows south."""

    name: str  # zoom or tile-matrix identifier, as put in URLs
    crs: CRS
    origin_xy: tuple[float, float]
    res: float
    tile_px: int
    cols: int
    rows: int

    def tile_range(self, bounds_xy: tuple[float, float, float, float]
                   ) -> tuple[range, range]:
        """(columns, rows) of the tiles touching `bounds_xy` (min x, min y, max x, max y)."""
        size = self.res * self.tile_px
        x0, y0 = self.origin_xy
        c0 = max(0, math.floor((bounds_xy[0] - x0) / size))
        c1 = min(self.cols - 1, math.floor((bounds_xy[2] - x0) / size - 1e-9))
        r0 = max(0, math.floor((y0 - bounds_xy[3]) / size))
        r1 = min(self.rows - 1, math.floor((y0 - bounds_xy[1]) / size - 1e-9))
        return range(c0, c1 + 1), range(r0, r1 + 1)

    def ground_res_m(self, lon_deg: float, lat_deg: float) -> float:
        """Ground metres per pixel at a point (geodesic length of one pixel, east-west)."""
        (x,), (y,) = crs_transform(CRS.from_epsg(4326), self.crs, [lon_deg], [lat_deg])
        lons, lats = crs_transform(self.crs, CRS.from_epsg(4326), [x, x + self.res],
                                   [y, y])
        return float(_GEOD.inv(lons[0], lats[0], lons[1], lats[1])[2])


@dataclass(frozen=True)
class TileSource:
    """Where tiles come from: `template` holds {level} {col} {row} (and {s}), plus what the
    provider asks users to say about it."""

    kind: str  # "xyz", "tms", "provider", "wmts", "wms"
    name: str
    template: str
    levels: tuple[TileLevel, ...]
    attribution: str
    terms: str
    subdomains: str = ""

    def level_for(self, gsd_m: float, area: Area) -> TileLevel:
        """The coarsest level at least as fine as `gsd_m` on the ground (else the finest)."""
        lon, lat = area.centre_deg
        fine_first = sorted(self.levels, key=lambda lv: lv.ground_res_m(lon, lat))
        ok = [lv for lv in fine_first if lv.ground_res_m(lon, lat) <= gsd_m * (1 + 1e-6)]
        return ok[-1] if ok else fine_first[0]

    def url(self, level: TileLevel, col: int, row: int) -> str:
        if self.kind == "wms":
            size = level.res * level.tile_px
            x0 = level.origin_xy[0] + col * size
            y1 = level.origin_xy[1] - row * size
            box = (x0, y1 - size, x0 + size, y1)
            if _lat_first(level.crs):
                box = (box[1], box[0], box[3], box[2])
            return self.template.replace("{bbox}", ",".join(f"{v:.6f}" for v in box))
        sub = self.subdomains[(col + row) % len(self.subdomains)] if self.subdomains else ""
        return (self.template.replace("{s}", sub).replace("{level}", level.name)
                .replace("{col}", str(col)).replace("{row}", str(row))
                .replace("{-row}", str(level.rows - 1 - row)))


def _mercator_levels(max_zoom: int, tile_px: int = 256) -> tuple[TileLevel, ...]:
    return tuple(TileLevel(str(z), WEB_MERCATOR, (-MERCATOR_HALF_M, MERCATOR_HALF_M),
                           2 * MERCATOR_HALF_M / (tile_px * 2**z), tile_px, 2**z, 2**z)
                 for z in range(max_zoom + 1))


def xyz_source(template: str, attribution: str, terms: str = "", max_zoom: int = 22,
               subdomains: str = "abc") -> TileSource:
    """An XYZ ({z}/{x}/{y}) or TMS ({z}/{x}/{-y}) template in Web Mercator."""
    if not ("{z}" in template and "{x}" in template and ("{y}" in template
                                                         or "{-y}" in template)):
        raise SkyfixError(f"tile URL template needs {{z}}, {{x}} and {{y}} (or {{-y}} for"
                          f" TMS), got {template!r}")
    if not template.startswith(("http://", "https://")):
        raise SkyfixError(f"tile URL must be http(s), got {template!r}")
    tms = "{-y}" in template
    t = (template.replace("{z}", "{level}").replace("{x}", "{col}")
         .replace("{-y}", "{-row}").replace("{y}", "{row}"))
    return TileSource("tms" if tms else "xyz", template.split("?")[0], t,
                      _mercator_levels(max_zoom),
                      attribution, terms, subdomains if "{s}" in t else "")


def provider_source(name: str, api_key: str | None = None, terms: str = "") -> TileSource:
    """A provider of xyzservices' catalogue, e.g. "Esri.WorldImagery" (the catalogue
    carries attributions, not terms of use: `terms` records what the user read)."""
    import xyzservices.providers as xyz

    try:
        p = xyz.query_name(name)
    except ValueError:
        raise SkyfixError(f"unknown tile provider {name!r} (xyzservices catalogue names,"
                          " e.g. Esri.WorldImagery)") from None
    if api_key:
        key = next((k for k in p if p.get(k) == "<insert your api key here>"), None)
        if key:
            p[key] = api_key
    if p.requires_token():
        raise SkyfixError(f"provider {name} needs an API key (--api-key)")
    template = p.build_url(x="{x}", y="{y}", z="{z}", fill_subdomain=False)
    terms = terms or f"see the terms of use of {name} (not in the xyzservices catalogue)"
    src = xyz_source(template, p.get("attribution", name), terms, int(p.get("max_zoom", 19)),
                     p.get("subdomains", "abc") if isinstance(p.get("subdomains", "abc"), str)
                     else "".join(p["subdomains"]))
    return TileSource("provider", name, src.template, src.levels, src.attribution, src.terms,
                      src.subdomains)


def _crs_of(code: str) -> CRS:
    try:
        return CRS.from_user_input(code.replace("urn:ogc:def:crs:", "").replace("::", ":"))
    except CRSError:
        raise SkyfixError(f"unknown CRS {code!r} in the service's capabilities") from None


def _lat_first(crs: CRS) -> bool:
    """True for CRSs whose official axis order is latitude first (EPSG:4326 in OGC 1.3)."""
    return crs.is_geographic


def _metres_per_unit(crs: CRS) -> float:
    return 2 * math.pi * 6378137.0 / 360.0 if crs.is_geographic else crs.linear_units_factor[1]


def wmts_source(url: str, layer: str | None = None, matrix_set: str | None = None,
                attribution: str = "", terms: str = "") -> TileSource:
    """A WMTS layer from its GetCapabilities URL (OWSLib)."""
    from owslib.wmts import WebMapTileService

    try:
        svc = WebMapTileService(url)
    except Exception as e:  # OWSLib raises whatever requests or its XML parser raise
        raise SkyfixError(f"{url}: WMTS capabilities unreadable ({_line(e)})") from None
    name = layer or next(iter(svc.contents), None)
    if name not in svc.contents:
        raise SkyfixError(f"{url}: no WMTS layer {name!r} (has: {', '.join(svc.contents)})")
    lay = svc.contents[name]
    sets = list(lay.tilematrixsetlinks)
    ms = matrix_set or next((s for s in sets if "3857" in str(svc.tilematrixsets[s].crs)
                             or "GoogleMaps" in s), sets[0] if sets else None)
    if ms not in svc.tilematrixsets:
        raise SkyfixError(f"{url}: layer {name} has no tile matrix set {ms!r}")
    tms = svc.tilematrixsets[ms]
    crs = _crs_of(tms.crs)
    levels = []
    for m in tms.tilematrix.values():
        x, y = m.topleftcorner
        if _lat_first(crs):
            x, y = y, x
        res = m.scaledenominator * WMTS_PIXEL_M / _metres_per_unit(crs)
        if m.tilewidth != m.tileheight:
            raise SkyfixError(f"{url}: non-square WMTS tiles are not supported")
        levels.append(TileLevel(m.identifier, crs, (x, y), res, m.tilewidth, m.matrixwidth,
                                m.matrixheight))
    fmt = next(iter(lay.formats), "image/jpeg")
    style = next((s for s, v in lay.styles.items() if v.get("isDefault")),
                 next(iter(lay.styles), "default"))
    rest = [r for r in getattr(lay, "resourceURLs", []) if r.get("resourceType") == "tile"]
    if rest:
        template = (rest[0]["template"].replace("{TileMatrixSet}", ms)
                    .replace("{Style}", style).replace("{TileMatrix}", "{level}")
                    .replace("{TileRow}", "{row}").replace("{TileCol}", "{col}"))
    else:
        base = svc.getOperationByName("GetTile").methods[0]["url"]
        query = urlencode({"SERVICE": "WMTS", "REQUEST": "GetTile", "VERSION": "1.0.0",
                           "LAYER": name, "STYLE": style, "TILEMATRIXSET": ms,
                           "FORMAT": fmt})
        template = (f"{base}{'&' if '?' in base else '?'}{query}&TILEMATRIX={{level}}"
                    "&TILEROW={row}&TILECOL={col}")
    return TileSource("wmts", f"{url} layer {name}", template, tuple(levels),
                      attribution or _service_credit(svc), terms or url)


def wms_source(url: str, area: Area, gsd_m: float, layer: str | None = None,
               attribution: str = "", terms: str = "") -> TileSource:
    """A WMS layer (1.3.0, OWSLib) as one level of 512 px GetMap squares over `area`."""
    from owslib.wms import WebMapService

    try:
        svc = WebMapService(url, version="1.3.0")
    except Exception as e:  # OWSLib raises whatever requests or its XML parser raise
        raise SkyfixError(f"{url}: WMS capabilities unreadable ({_line(e)})") from None
    name = layer or next((n for n, c in svc.contents.items() if c.name), None)
    if name not in svc.contents:
        raise SkyfixError(f"{url}: no WMS layer {name!r} (has: {', '.join(svc.contents)})")
    offered = {c.upper() for c in svc.contents[name].crsOptions}
    epsg = area.crs.to_epsg()
    pick = next((c for c in (f"EPSG:{epsg}" if epsg else None, "EPSG:3857", "EPSG:4326")
                 if c and c in offered), None)
    if pick is None:
        raise SkyfixError(f"{url}: layer {name} offers none of the area's CRS, EPSG:3857 or"
                          " EPSG:4326")
    crs = CRS.from_user_input(pick)
    w, s, e, n = area.bounds_en
    pad = 4 * gsd_m  # the output grid snaps outwards, bilinear needs a neighbour
    x0, y0, x1, y1 = transform_bounds(area.crs, crs, w - pad, s - pad, e + pad, n + pad,
                                      densify_pts=21)
    probe = TileLevel("0", crs, (x0, y1), 1.0, WMS_TILE_PX, 1, 1)
    res = gsd_m / probe.ground_res_m(*area.centre_deg)
    cols = math.ceil((x1 - x0) / (res * WMS_TILE_PX))
    rows = math.ceil((y1 - y0) / (res * WMS_TILE_PX))
    level = TileLevel("0", crs, (x0, y1), res, WMS_TILE_PX, cols, rows)
    formats = svc.getOperationByName("GetMap").formatOptions
    fmt = "image/jpeg" if "image/jpeg" in formats else "image/png"
    base = svc.getOperationByName("GetMap").methods[0]["url"]
    query = urlencode({"SERVICE": "WMS", "VERSION": "1.3.0", "REQUEST": "GetMap",
                       "LAYERS": name, "STYLES": "", "CRS": pick, "FORMAT": fmt,
                       "WIDTH": WMS_TILE_PX, "HEIGHT": WMS_TILE_PX})
    template = f"{base}{'&' if '?' in base else '?'}{query}&BBOX={{bbox}}"
    return TileSource("wms", f"{url} layer {name}", template, (level,),
                      attribution or _service_credit(svc), terms or url)


def _service_credit(svc) -> str:
    ident = getattr(svc, "identification", None)
    parts = [getattr(ident, "title", None), getattr(ident, "accessconstraints", None)]
    provider = getattr(getattr(svc, "provider", None), "name", None)
    return "; ".join(p for p in [provider, *parts] if p) or "unknown"


def _line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
