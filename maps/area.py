"""Where to fetch a map for, and how fine: an area and a ground resolution.

    bbox W,S,E,N (deg) | point LAT,LON + radius (m) | mission/track file + buffer (m)
    --> Area: WGS 84 bounds + the local metric CRS the map will be written in
    height range above ground + camera --> ground resolution needed --> tile zoom

Track files: QGroundControl `.plan` (mission items, polygon survey patterns, geofence,
rally points, planned home), KML (every `<coordinates>`), GPX (track, route and waypoints).
Buffers and radii are ground metres, applied in the local CRS.

Local metric CRS: the UTM zone of the area's centre (conformal; scale within 0.1 % of
ground metres across a zone), or `local-tm`, a transverse Mercator centred on the area
(scale 1 at its centre), or any EPSG code the user names.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform as crs_transform

from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.errors import SkyfixError

WGS84 = CRS.from_epsg(4326)
EARTH_CIRCUMFERENCE_M = 2 * math.pi * 6378137.0  # Web Mercator sphere, equator
MAX_AREA_KM2 = 2500.0  # refuse larger requests: one pack per region, shard above that


@dataclass(frozen=True)
class Area:
    """The area to map: `bounds_deg` (west, south, east, north) and its metric CRS."""

    bounds_deg: tuple[float, float, float, float]
    crs: CRS
    bounds_en: tuple[float, float, float, float]  # in `crs`, metres

    @property
    def area_km2(self) -> float:
        w, s, e, n = self.bounds_en
        return (e - w) * (n - s) / 1e6

    @property
    def centre_deg(self) -> tuple[float, float]:
        """(lon, lat) of the centre."""
        w, s, e, n = self.bounds_deg
        return (w + e) / 2, (s + n) / 2


def local_crs(lon_deg: float, lat_deg: float, kind: str = "utm") -> CRS:
    """The metric CRS named by `kind` ("utm", "local-tm" or "EPSG:n") for a centre point."""
    if kind == "utm":
        if abs(lat_deg) > 84:
            return local_crs(lon_deg, lat_deg, "local-tm")
        zone = min(60, max(1, int((lon_deg + 180.0) // 6) + 1))
        return CRS.from_epsg((32600 if lat_deg >= 0 else 32700) + zone)
    if kind == "local-tm":
        return CRS.from_proj4(f"+proj=tmerc +lat_0={lat_deg:.6f} +lon_0={lon_deg:.6f} +k=1"
                              " +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs")
    try:
        crs = CRS.from_user_input(kind)
    except CRSError:
        raise SkyfixError(f"unknown CRS {kind!r} (utm, local-tm or EPSG:n)") from None
    if not crs.is_projected or abs(crs.linear_units_factor[1] - 1.0) > 1e-9:
        raise SkyfixError(f"CRS {kind} is not projected in metres")
    return crs


def _area_from_points(lon: np.ndarray, lat: np.ndarray, buffer_m: float, crs_kind: str
                      ) -> Area:
    if not len(lon):
        raise SkyfixError("no coordinates found")
    if not (np.all(np.abs(lat) <= 90) and np.all(np.abs(lon) <= 180)):
        raise SkyfixError("coordinates out of range (lon -180..180, lat -90..90)")
    crs = local_crs(float((lon.min() + lon.max()) / 2), float((lat.min() + lat.max()) / 2),
                    crs_kind)
    e, n = crs_transform(WGS84, crs, lon.tolist(), lat.tolist())
    bounds_en = (min(e) - buffer_m, min(n) - buffer_m, max(e) + buffer_m, max(n) + buffer_m)
    if bounds_en[2] - bounds_en[0] < 1 or bounds_en[3] - bounds_en[1] < 1:
        raise SkyfixError("the area is empty: give a radius or a buffer")
    w, s, e_, n_ = bounds_en
    ring_e = np.concatenate([np.linspace(w, e_, 21), np.full(21, e_), np.linspace(e_, w, 21),
                             np.full(21, w)])
    ring_n = np.concatenate([np.full(21, s), np.linspace(s, n_, 21), np.full(21, n_),
                             np.linspace(n_, s, 21)])
    rlon, rlat = crs_transform(crs, WGS84, ring_e.tolist(), ring_n.tolist())
    area = Area((min(rlon), min(rlat), max(rlon), max(rlat)), crs, bounds_en)
    if area.area_km2 > MAX_AREA_KM2:
        raise SkyfixError(f"area of {area.area_km2:.0f} km2 is larger than {MAX_AREA_KM2:.0f}"
                          " km2; split it")
    return area


def area_from_bbox(bounds_deg: Sequence[float], crs_kind: str = "utm") -> Area:
    """Area of a (west, south, east, north) box in degrees."""
    if len(bounds_deg) != 4:
        raise SkyfixError(f"bbox needs 4 numbers W,S,E,N, got {len(bounds_deg)}")
    w, s, e, n = (float(v) for v in bounds_deg)
    if not (w < e and s < n):
        raise SkyfixError(f"bbox must be W,S,E,N with W < E and S < N, got {w},{s},{e},{n}")
    return _area_from_points(np.array([w, e, e, w]), np.array([s, s, n, n]), 0.0, crs_kind)


def area_from_point(lat_deg: float, lon_deg: float, radius_m: float,
                    crs_kind: str = "utm") -> Area:
    """Square area of half-side `radius_m` around a point."""
    if not radius_m > 0:
        raise SkyfixError(f"radius must be positive, got {radius_m}")
    return _area_from_points(np.array([lon_deg]), np.array([lat_deg]), radius_m, crs_kind)


def area_from_track(path: Path, buffer_m: float, crs_kind: str = "utm") -> Area:
    """Area covering every coordinate of a QGC .plan, KML or GPX file plus `buffer_m`."""
    if buffer_m < 0:
        raise SkyfixError(f"buffer must be >= 0 m, got {buffer_m}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SkyfixError(f"{path}: cannot read ({e})") from None
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".plan":
            lon_lat = _plan_points(json.loads(text))
        elif suffix in (".kml", ".gpx"):
            lon_lat = _xml_points(ET.fromstring(text), suffix)
        else:
            raise SkyfixError(f"{path}: unknown track format (.plan, .kml or .gpx)")
    except (ValueError, ET.ParseError, KeyError, TypeError, IndexError) as e:
        raise SkyfixError(f"{path}: not a valid {suffix[1:]} file ({e})") from None
    pts = np.array(lon_lat, np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(1) & ~((pts[:, 0] == 0) & (pts[:, 1] == 0))]
    if not len(pts):
        raise SkyfixError(f"{path}: no coordinates found")
    try:
        return _area_from_points(pts[:, 0], pts[:, 1], buffer_m, crs_kind)
    except SkyfixError as e:
        raise SkyfixError(f"{path}: {e}") from None


def _plan_points(plan: dict) -> list[tuple[float, float]]:
    """(lon, lat) of a QGC plan's mission items, survey polygons, fence and rally points."""
    out: list[tuple[float, float]] = []

    def items(seq: list) -> None:
        for it in seq:
            if it.get("type") == "ComplexItem":
                poly = it.get("polygon") or it.get("TransectStyleComplexItem", {}).get(
                    "VisualTransectPoints", [])
                out.extend((float(p[1]), float(p[0])) for p in poly)
                items(it.get("TransectStyleComplexItem", {}).get("Items", []))
            elif "params" in it and it.get("frame", 3) != 2:  # frame 2: mission, no position
                lat, lon = it["params"][4], it["params"][5]
                if lat is not None and lon is not None:
                    out.append((float(lon), float(lat)))

    mission = plan.get("mission", {})
    items(mission.get("items", []))
    home = mission.get("plannedHomePosition")
    if home:
        out.append((float(home[1]), float(home[0])))
    for poly in plan.get("geoFence", {}).get("polygons", []):
        out.extend((float(p[1]), float(p[0])) for p in poly.get("polygon", []))
    for circle in plan.get("geoFence", {}).get("circles", []):
        c = circle["circle"]["center"]
        out.append((float(c[1]), float(c[0])))
    for p in plan.get("rallyPoints", {}).get("points", []):
        out.append((float(p[1]), float(p[0])))
    return out


def _xml_points(root: ET.Element, suffix: str) -> list[tuple[float, float]]:
    out = []
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if suffix == ".kml" and tag == "coordinates" and el.text:
            for triple in el.text.split():
                parts = triple.split(",")
                out.append((float(parts[0]), float(parts[1])))
        elif suffix == ".gpx" and tag in ("trkpt", "rtept", "wpt"):
            out.append((float(el.attrib["lon"]), float(el.attrib["lat"])))
    return out


def camera_gsd_m(agl_m: float, camera: CameraModel) -> float:
    """Ground metres per pixel of a nadir `camera` at `agl_m` over flat ground."""
    return agl_m / camera.fx


def mercator_ground_res_m(zoom: int, lat_deg: float, tile_px: int = 256) -> float:
    """Ground metres per pixel of Web Mercator tiles of `zoom` at `lat_deg`."""
    return EARTH_CIRCUMFERENCE_M * math.cos(math.radians(lat_deg)) / (tile_px * 2**zoom)


def zoom_for(gsd_m: float, lat_deg: float, max_zoom: int = 22, tile_px: int = 256) -> int:
    """The coarsest zoom whose ground resolution is at least as fine as `gsd_m` (capped at
    the source's `max_zoom`)."""
    for z in range(0, max_zoom + 1):
        if mercator_ground_res_m(z, lat_deg, tile_px) <= gsd_m * (1 + 1e-9):
            return z
    return max_zoom


def pack_gsds_m(map_gsd_m: float, agl_max_m: float, camera: CameraModel) -> tuple[float, ...]:
    """Pack levels for a height range: the map's own GSD, doubling until a level is as
    coarse as the camera's GSD at the greatest height (at least two levels)."""
    top = camera_gsd_m(agl_max_m, camera)
    gsds = [map_gsd_m, 2 * map_gsd_m]
    while gsds[-1] < top * 0.75:
        gsds.append(2 * gsds[-1])
    return tuple(round(g, 4) for g in gsds)
