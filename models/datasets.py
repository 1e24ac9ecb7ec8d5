"""Loaders for the public UAV geo-localisation datasets, as frozen records.

UAV-VisLoc (real flights over 11 sites in China), laid out as

    root/satellite_coordinates_range.csv
                          mapname,LT_lat_map,LT_lon_map,RB_lat_map,RB_lon_map,region
    root/NN/NN.csv                         num,filename,date,lat,lon,height,Omega,Kappa,Phi1,Phi2
    root/NN/drone/<filename>               the flight's drone frames
    root/NN/satelliteNN.tif                the site's satellite GeoTIFF

The satellite image spans the range's left-top to right-bottom corners
linearly in latitude/longitude (that is how the dataset maps pixels).

GTA-UAV (Game4Loc's synthetic data), laid out as

    root/drone/images/<h>_<seq>_<id>.png   drone views (h: flight height in m)
    root/satellite/<z>_<offset>_<x>_<y>.png  256 px satellite tiles
    root/<split>.json                      a list with one entry per drone view:
        drone_img_dir, drone_img_name, drone_loc_x_y, sate_img_dir,
        pair_pos_sate_{img,weight,loc_x_y}_list          IoU positives
        pair_pos_semipos_sate_{img,weight,loc_x_y}_list  positives + semi-positives
        drone_metadata (height, angles; optional)

Locations are metres in the game map's plane: a tile's centre is
tile_px * (x + 1/2 + offset / 256) * 0.45 with tile_px = 24576 / 2**z
(and likewise for y). Malformed files raise one-line `SkyfixError`s naming
the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skyfix.runtime.core.errors import SkyfixError

VISLOC_COLUMNS = ("num", "filename", "date", "lat", "lon", "height", "Omega", "Kappa", "Phi1",
                  "Phi2")
# the dataset's download names it with a space ("satellite_ coordinates_range.csv")
VISLOC_RANGE_FILES = ("satellite_coordinates_range.csv", "satellite_ coordinates_range.csv")
VISLOC_RANGE_COLUMNS = ("mapname", "LT_lat_map", "LT_lon_map", "RB_lat_map", "RB_lon_map")
GTA_MAP_PX = 24576  # the game map's side at zoom 0, pixels
GTA_TILE_PX = 256
GTA_M_PER_PX = 0.45
_GTA_TILE = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.png$")


# ------------------------------------------------------------------ UAV-VisLoc


@dataclass(frozen=True)
class VisLocFrame:
    """One drone frame of a UAV-VisLoc flight (angles as recorded, degrees)."""

    flight_id: str
    num: int
    image_path: Path
    date: str
    lat_deg: float
    lon_deg: float
    height_m: float
    omega_deg: float
    kappa_deg: float
    phi1_deg: float
    phi2_deg: float


@dataclass(frozen=True)
class VisLocRange:
    """One row of the range CSV: a satellite image's corners (degrees) and region."""

    mapname: str
    lt_lat_deg: float
    lt_lon_deg: float
    rb_lat_deg: float
    rb_lon_deg: float
    region: str


@dataclass(frozen=True)
class VisLocSatellite:
    """A site's satellite GeoTIFF and its corner range from the range CSV."""

    path: Path
    width_px: int
    height_px: int
    lt_lat_deg: float
    lt_lon_deg: float
    rb_lat_deg: float
    rb_lon_deg: float
    region: str

    def pixel_of(self, lat_deg: np.ndarray | float, lon_deg: np.ndarray | float) -> np.ndarray:
        """[..., 2] (col, row) pixel coordinates of geodetic points (linear in lat/lon)."""
        col = (np.asarray(lon_deg) - self.lt_lon_deg) / (self.rb_lon_deg - self.lt_lon_deg)
        row = (self.lt_lat_deg - np.asarray(lat_deg)) / (self.lt_lat_deg - self.rb_lat_deg)
        return np.stack([col * self.width_px, row * self.height_px], -1)

    def contains(self, lat_deg: float, lon_deg: float) -> bool:
        return (self.rb_lat_deg <= lat_deg <= self.lt_lat_deg
                and self.lt_lon_deg <= lon_deg <= self.rb_lon_deg)


@dataclass(frozen=True)
class VisLocFlight:
    flight_id: str
    frames: tuple[VisLocFrame, ...]
    satellite: VisLocSatellite


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV whose header must hold `required`."""
    if not path.is_file():
        raise SkyfixError(f"file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise SkyfixError(f"{path}: missing column(s) {', '.join(missing)} "
                                  f"(header: {','.join(header) or 'empty'})")
            reader.fieldnames = header
            rows = []
            for row in reader:
                if None in row:  # DictReader's key for fields beyond the header
                    raise SkyfixError(f"{path} line {reader.line_num}: more fields than the "
                                      f"header's {len(header)}")
                if any((v or "").strip() for v in row.values()):
                    rows.append((reader.line_num, row))
            return rows
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SkyfixError(f"{path}: not a readable CSV file ({exc})") from None


def _number(path: Path, line: int, row: dict[str, str], column: str) -> float:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise SkyfixError(f"{path} line {line}: {column} {text!r} is not a number") from None
    if not np.isfinite(value):
        raise SkyfixError(f"{path} line {line}: {column} is {text}")
    return value


def visloc_range_file(root: Path) -> Path:
    """The range CSV of a UAV-VisLoc root (either spelling of its name)."""
    for name in VISLOC_RANGE_FILES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    raise SkyfixError(f"file not found: {Path(root) / VISLOC_RANGE_FILES[0]}")


def load_visloc_ranges(root: Path) -> dict[str, VisLocRange]:
    """mapname (e.g. "satellite01.tif") -> its row of the range CSV."""
    path = visloc_range_file(root)
    out = {}
    for line, row in _read_csv(path, VISLOC_RANGE_COLUMNS):
        lt_lat, lt_lon, rb_lat, rb_lon = (_number(path, line, row, c)
                                          for c in VISLOC_RANGE_COLUMNS[1:])
        if not (lt_lat > rb_lat and rb_lon > lt_lon):
            raise SkyfixError(f"{path} line {line}: left-top ({lt_lat}, {lt_lon}) is not "
                              f"north-west of right-bottom ({rb_lat}, {rb_lon})")
        name = (row["mapname"] or "").strip()
        out[name] = VisLocRange(name, lt_lat, lt_lon, rb_lat, rb_lon,
                                (row.get("region") or "").strip())
    return out


def load_visloc_satellite(root: Path, site_id: str) -> VisLocSatellite:
    """The GeoTIFF `root/NN/satelliteNN.tif` with its range from the range CSV."""
    import rasterio

    name = f"satellite{site_id}.tif"
    ranges = load_visloc_ranges(root)
    if name not in ranges:
        raise SkyfixError(f"{visloc_range_file(root)}: no row for {name}")
    path = Path(root) / site_id / name
    if not path.is_file():
        raise SkyfixError(f"satellite image not found: {path}")
    try:
        with rasterio.open(path) as src:
            width, height = src.width, src.height
    except rasterio.errors.RasterioIOError as exc:
        raise SkyfixError(f"{path}: not a readable GeoTIFF ({exc})") from None
    r = ranges[name]
    return VisLocSatellite(path, width, height, r.lt_lat_deg, r.lt_lon_deg, r.rb_lat_deg,
                           r.rb_lon_deg, r.region)


def load_visloc_flight(root: Path, flight_id: str, check_images: bool = True) -> VisLocFlight:
    """Flight `flight_id` ("01".."11"): its frames from NN.csv and its site's satellite."""
    root = Path(root)
    path = root / flight_id / f"{flight_id}.csv"
    satellite = load_visloc_satellite(root, flight_id)
    frames = []
    for line, row in _read_csv(path, VISLOC_COLUMNS):
        filename = (row["filename"] or "").strip()
        if not filename:
            raise SkyfixError(f"{path} line {line}: empty filename")
        num, lat, lon, height, omega, kappa, phi1, phi2 = (
            _number(path, line, row, c)
            for c in ("num", "lat", "lon", "height", "Omega", "Kappa", "Phi1", "Phi2"))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise SkyfixError(f"{path} line {line}: lat/lon ({lat}, {lon}) out of range")
        image = root / flight_id / "drone" / filename
        if check_images and not image.is_file():
            raise SkyfixError(f"{path} line {line}: image not found: {image}")
        frames.append(VisLocFrame(flight_id, int(num), image, (row["date"] or "").strip(), lat,
                                  lon, height, omega, kappa, phi1, phi2))
    if not frames:
        raise SkyfixError(f"{path}: no frames")
    return VisLocFlight(flight_id, tuple(frames), satellite)


def list_visloc_flights(root: Path) -> tuple[str, ...]:
    """Flight ids (folder names) that have their NN/NN.csv."""
    root = Path(root)
    if not root.is_dir():
        raise SkyfixError(f"UAV-VisLoc folder not found: {root}")
    return tuple(sorted(p.name for p in root.iterdir() if (p / f"{p.name}.csv").is_file()))


# --------------------------------------------------------------------- GTA-UAV


@dataclass(frozen=True)
class GtaTile:
    """A GTA-UAV satellite tile `{zoom}_{offset}_{x}_{y}.png`; centre in map metres."""

    name: str
    zoom: int
    offset: int
    x: int
    y: int
    centre_xy_m: tuple[float, float]


@dataclass(frozen=True)
class GtaPair:
    """A tile paired with a drone view: its name, IoU weight and centre (metres)."""

    tile: str
    weight: float
    loc_xy_m: tuple[float, float]


@dataclass(frozen=True)
class GtaQuery:
    """A drone view with its positives and its positives + semi-positives."""

    image_path: Path
    image_name: str
    loc_xy_m: tuple[float, float]
    height_m: float | None
    positives: tuple[GtaPair, ...]
    semi_positives: tuple[GtaPair, ...]


def gta_tile_centre_m(zoom: int, offset: int, x: int, y: int) -> tuple[float, float]:
    """Centre (x, y) in metres of tile (zoom, offset, x, y) in the game map's plane."""
    tile_px = GTA_MAP_PX / 2**zoom
    shift = 0.5 + offset / GTA_TILE_PX
    return (tile_px * (x + shift) * GTA_M_PER_PX, tile_px * (y + shift) * GTA_M_PER_PX)


def parse_gta_tile(name: str) -> GtaTile:
    """The tile named `{zoom}_{offset}_{x}_{y}.png` (a path's folder is ignored)."""
    base = Path(name).name
    match = _GTA_TILE.match(base)
    if match is None:
        raise SkyfixError(f"GTA-UAV tile name {base!r} is not {{zoom}}_{{offset}}_{{x}}_{{y}}.png")
    zoom, offset, x, y = (int(v) for v in match.groups())
    return GtaTile(base, zoom, offset, x, y, gta_tile_centre_m(zoom, offset, x, y))


def load_gta_tiles(root: Path, sate_dir: str = "satellite") -> tuple[GtaTile, ...]:
    """Every tile PNG under root/sate_dir (sorted by name): the retrieval gallery."""
    folder = Path(root) / sate_dir
    if not folder.is_dir():
        raise SkyfixError(f"GTA-UAV satellite folder not found: {folder}")
    tiles = tuple(parse_gta_tile(p.name) for p in sorted(folder.rglob("*.png")))
    if not tiles:
        raise SkyfixError(f"{folder}: no tile PNGs")
    return tiles


def _xy(value: object, where: str) -> tuple[float, float]:
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int | float) and np.isfinite(v) for v in value)):
        raise SkyfixError(f"{where}: expected [x, y] metres, got {value!r}")
    return (float(value[0]), float(value[1]))


def _pairs(entry: dict, kind: str, where: str) -> tuple[GtaPair, ...]:
    keys = [f"pair_{kind}_sate_{k}_list" for k in ("img", "weight", "loc_x_y")]
    missing = [k for k in keys if k not in entry]
    if missing:
        raise SkyfixError(f"{where}: missing {', '.join(missing)}")
    imgs, weights, locs = (entry[k] for k in keys)
    if not all(isinstance(v, list) for v in (imgs, weights, locs)) or not (
            len(imgs) == len(weights) == len(locs)):
        raise SkyfixError(f"{where}: {keys[0]}, {keys[1]} and {keys[2]} must be lists of "
                          "one length")
    out = []
    for img, w, loc in zip(imgs, weights, locs, strict=True):
        if not isinstance(w, int | float) or not 0.0 <= w <= 1.0:
            raise SkyfixError(f"{where}: IoU weight {w!r} of {img} is not in [0, 1]")
        try:
            parse_gta_tile(str(img))
        except SkyfixError as exc:
            raise SkyfixError(f"{where}: {exc}") from None
        out.append(GtaPair(str(img), float(w), _xy(loc, f"{where} {img}")))
    return tuple(out)


def load_gta_pairs(root: Path, json_name: str, check_images: bool = True) -> tuple[GtaQuery, ...]:
    """Drone views of a GTA-UAV pair JSON (e.g. "cross-area-drone2sate-test.json")."""
    root = Path(root)
    path = root / json_name
    if not path.is_file():
        raise SkyfixError(f"pair file not found: {path}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SkyfixError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list):
        raise SkyfixError(f"{path}: expected a list of drone entries")
    queries = []
    for i, entry in enumerate(entries):
        where = f"{path} entry {i}"
        if not isinstance(entry, dict):
            raise SkyfixError(f"{where}: expected an object")
        for key in ("drone_img_dir", "drone_img_name", "drone_loc_x_y"):
            if key not in entry:
                raise SkyfixError(f"{where}: missing {key}")
        image = root / str(entry["drone_img_dir"]) / str(entry["drone_img_name"])
        if check_images and not image.is_file():
            raise SkyfixError(f"{where}: image not found: {image}")
        height = (entry.get("drone_metadata") or {}).get("height")
        queries.append(GtaQuery(
            image, str(entry["drone_img_name"]), _xy(entry["drone_loc_x_y"], where),
            float(height) if isinstance(height, int | float) else None,
            _pairs(entry, "pos", where), _pairs(entry, "pos_semipos", where)))
    return tuple(queries)


def gta_positive_indices(queries: tuple[GtaQuery, ...], tiles: tuple[GtaTile, ...],
                         semi: bool = False) -> list[list[int]]:
    """Per query, the gallery indices of its positives (or positives + semi-positives)."""
    index = {t.name: i for i, t in enumerate(tiles)}
    out = []
    for q in queries:
        pairs = q.semi_positives if semi else q.positives
        missing = [p.tile for p in pairs if p.tile not in index]
        if missing:
            raise SkyfixError(f"{q.image_name}: paired tile {missing[0]} is not in the gallery")
        out.append([index[p.tile] for p in pairs])
    return out
