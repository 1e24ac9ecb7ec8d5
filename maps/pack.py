"""Reading a map pack: manifest, integrity check, tile table, features and descriptors.

A map pack is a folder written by `skyfix.maps.build.build_pack`:

    manifest.json          format "skyfix-pack/1", CRS, levels, encoder, sha256 of every other file
    tiles.npy              [T] structured array, dtype TILE_DTYPE (one row per tile)
    keypoints.npy          [F, 2] float32 (east, north) metres RELATIVE to the tile centre
    local_descriptors.npy  [F, D] float16 local descriptors; rows tiles[i].feat_offset ...
                           + feat_count belong to tile i, strongest keypoint first
    descriptors.npy        [T, K * D + G] float32 unit global descriptors: VLAD, then the
                           encoder's G-d embedding (`embedding_dim`, 0 for most encoders)
    codebook.npy           [K, D] float32 VLAD codebook fitted on the map's own descriptors
    ortho.tif              the mosaic in the pack CRS (tiled JPEG GeoTIFF with overviews)
    dem.npy                optional [H, W] float32 terrain height, metres (NaN = unknown), on
                           the pack grid coarsened to `dem_gsd_m` (origin: min E, max N)
    structure_l{L}.npy     [C, Hs, Ws] uint8 structure channels of level L for the coarse stage
                           of matching (skyfix.maps.structure), on the pack grid coarsened to
                           `structure_gsds_m[L]`; optional (sharded packs have none)
    index_l{L}.faiss       optional FAISS IVF index of level L's descriptors (faiss's own
                           serialisation; ids = tile ids), for `index_levels` only

Map coordinates are float64 (east, north) metres in the pack CRS; only offsets from a
tile centre are ever stored as float32. All arrays are opened memory-mapped.
The manifest carries `manifest_sha256`, a digest of its own canonical JSON, so that an
edit to the manifest is caught as surely as one to the files it lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds

from skyfix.maps.dem import DEM_FILE, dem_shape
from skyfix.maps.manifest import MANIFEST, Manifest, read_manifest
from skyfix.maps.pack_checks import array_problems, tile_problems
from skyfix.maps.pixels import ORTHO_FILE
from skyfix.maps.structure import structure_file, structure_shape
from skyfix.maps.tilemap import TileMap
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import file_sha256
from skyfix.runtime.core.provenance import check_manifest_signature
from skyfix.runtime.core.types import TileHit

IN_RAM_MAX_BYTES = 64 << 20  # arrays up to this size are copied to memory at open
PACK_FILES = ("tiles.npy", "keypoints.npy", "local_descriptors.npy", "descriptors.npy",
              "codebook.npy", ORTHO_FILE)
TILE_DTYPE = np.dtype([
    ("id", "<i4"),
    ("level", "<i2"),
    ("gsd_m", "<f8"),
    ("center_en", "<f8", (2,)),  # (east, north) map metres
    ("bounds_en", "<f8", (4,)),  # (min east, min north, max east, max north)
    ("feat_offset", "<i8"),
    ("feat_count", "<i4"),
    ("valid_fraction", "<f4"),  # share of the tile's pixels that hold imagery
])


@dataclass(frozen=True)
class PackInfo:
    """Summary for `skyfix maps info`. Bounds: map (min E, min N, max E, max N) metres and
    (west, south, east, north) degrees; `area_km2` is the area of the map bounds."""

    path: str
    format: str
    encoder_id: str
    crs: str
    bounds_en: tuple[float, float, float, float]
    bounds_lonlat: tuple[float, float, float, float]
    area_km2: float
    gsds_m: tuple[float, ...]
    tiles_per_level: tuple[int, ...]
    n_features: int
    size_bytes: int
    dem_gsd_m: float | None = None  # None: the pack has no terrain model
    faiss_index_levels: tuple[int, ...] = ()
    shards: int = 0  # 0: a plain pack
    georef_sigma_m: float = 0.0  # the map's stated error against the world (0: not stated)


def _check_files(path: Path, m: Manifest, rehash: bool) -> list[str]:
    wanted = [*PACK_FILES, *([DEM_FILE] if m.dem_gsd_m else []),
              *(structure_file(lv) for lv in range(len(m.structure_gsds_m))),
              *(index_file(lv) for lv in m.index_levels)]
    problems = [f"{MANIFEST} does not list {n}" for n in wanted if n not in m.files]
    for name, digest in m.files.items():
        if Path(name).name != name or name.startswith("."):
            problems.append(f"{MANIFEST} lists an invalid file name {name!r}")
        elif not (path / name).is_file():
            problems.append(f"{name} is missing")
        elif rehash and file_sha256(path / name) != digest:
            problems.append(f"{name} does not match its manifest (sha256 mismatch)")
    return problems


def index_file(level: int) -> str:
    """File name of level `level`'s FAISS index."""
    return f"index_l{level}.faiss"


def _load(path: Path, name: str) -> np.ndarray:
    try:
        return np.load(path / name, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, SyntaxError, TypeError, TokenError) as e:
        # numpy parses the header with tokenize + ast: a damaged one raises their errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SkyfixError(f"map pack {path}: {name} is not a readable .npy file ({first})"
                          ) from None


def _check_arrays(m: Manifest, tiles, kps, local, desc, codebook) -> list[str]:
    """Shape/dtype consistency between the arrays and the manifest."""
    t, f, k, d = sum(m.tile_count), m.n_features, m.codebook_k, m.local_dim
    want = [("tiles.npy", tiles, (t,), TILE_DTYPE), ("keypoints.npy", kps, (f, 2), np.float32),
            ("local_descriptors.npy", local, (f, d), np.float16),
            ("descriptors.npy", desc, (t, m.global_dim), np.float32),
            ("codebook.npy", codebook, (k, d), np.float32)]
    problems = [f"{n} has shape {a.shape} {a.dtype}, the manifest says {s} {np.dtype(dt)}"
                for n, a, s, dt in want if a.shape != s or a.dtype != dt]
    if problems:
        return problems
    end = tiles["feat_offset"].astype(np.int64) + tiles["feat_count"]
    if t and (tiles["feat_offset"].min() < 0 or end.max() > f):
        problems.append("tiles.npy has feature ranges outside keypoints.npy")
    counts = np.bincount(tiles["level"].astype(np.int64), minlength=len(m.gsds_m))
    if t and (tiles["level"].min() < 0 or tuple(counts) != m.tile_count):
        problems.append("tiles.npy does not match the manifest's tile_count per level")
    return problems or tile_problems(m, tiles)


class MapPack(TileMap):
    """An opened map pack (the skyfix.maps.tilemap surface). Use `MapPack.open(path)`.

    `tile_level`: [T] int; `tile_gsd_m`: [T] float64; `tile_center_en`: [T, 2] float64;
    `tile_bounds_en`: [T, 4] float64 (min E, min N, max E, max N); `descriptors`: [T, K * D + G]
    float32 memory-mapped; `codebook`: [K, D] float32; `dem`: [H, W] float32 memory-mapped
    terrain heights or None; `indexes`: {level: FAISS index} for levels that have one.
    """

    def __init__(self, path: Path, manifest: Manifest, tiles: np.ndarray, keypoints: np.ndarray,
                 local_descriptors: np.ndarray, descriptors: np.ndarray, codebook: np.ndarray):
        self.path, self.manifest, self.region = path, manifest, manifest
        self.crs = CRS.from_wkt(manifest.crs_wkt)
        self.n_tiles = len(tiles)
        self.levels: tuple[float, ...] = manifest.gsds_m
        self.tile_level = np.asarray(tiles["level"], np.int64)
        self.tile_gsd_m = np.asarray(tiles["gsd_m"], np.float64)
        self.tile_center_en = np.asarray(tiles["center_en"], np.float64)
        self.tile_bounds_en = np.asarray(tiles["bounds_en"], np.float64)
        self.centre_en = (self.tile_center_en.mean(0) if self.n_tiles
                          else np.zeros(2, np.float64))
        self._feat_offset = np.asarray(tiles["feat_offset"], np.int64)
        self._feat_count = np.asarray(tiles["feat_count"], np.int64)
        self._keypoints, self._local = keypoints, local_descriptors
        self.descriptors, self.codebook = descriptors, np.asarray(codebook, np.float32)
        self.dem: np.ndarray | None = None
        self.indexes: dict[int, Any] = {}
        self._by_east: tuple[np.ndarray, np.ndarray, float, float] | None = None
        self.structure: list[np.ndarray] = []  # per level: [C, Hs, Ws] uint8 memory-mapped
        self._mapped: list[tuple[Path, int]] = []  # (file, size at open) of mapped arrays

    def _keep(self, arr: np.ndarray, file: Path, in_ram_max_bytes: int) -> np.ndarray:
        """`arr` (loaded from `file`) in memory when small enough, else left mapped and
        size-guarded by `check_files`."""
        if arr.nbytes <= in_ram_max_bytes:
            return np.array(arr)
        self._mapped.append((file, file.stat().st_size))
        return arr

    def check_files(self) -> None:
        """Raise SkyfixError when a memory-mapped array's file shrank since the pack was
        opened (reading its pages would kill the process with SIGBUS)."""
        for file, size in self._mapped:
            try:
                now = file.stat().st_size
            except OSError:
                now = -1
            if now < size:
                raise SkyfixError(f"map pack {self.path}: {file.name} was truncated or removed "
                                  "while in use; reopen the pack")

    @classmethod
    def open(cls, path: Path, encoder_id: str | None = None, verify: bool = True,
             in_ram_max_bytes: int = IN_RAM_MAX_BYTES,
             trusted_key: Path | None = None) -> MapPack:
        """Open the pack at `path`; `verify` re-hashes every file against the manifest and
        scans every array's values (`maps.pack_checks`; tiles are always checked). Arrays
        up to `in_ram_max_bytes` are read into memory; larger ones stay memory-mapped and
        `check_files` guards them against a truncation while in use. With `trusted_key`
        the manifest must carry a valid signature by it (`runtime.core.provenance`).

        Raises SkyfixError naming the pack and the offending file, or both encoder ids when
        the pack was built with another encoder than `encoder_id`.
        """
        path = Path(path)
        if trusted_key is not None and (path / MANIFEST).is_file():
            check_manifest_signature(path / MANIFEST, trusted_key, f"map pack {path}")
        manifest, problems = read_manifest(path)
        if manifest is None:
            raise SkyfixError(f"map pack {path}: {problems[0]}")
        problems = _encoder_problems(manifest, encoder_id) + _check_files(path, manifest, verify)
        if problems:
            raise SkyfixError(f"map pack {path}: {problems[0]}")
        arrays = [_load(path, n) for n in PACK_FILES[:5]]
        problems = _check_arrays(manifest, *arrays)
        if not problems and verify:
            problems = array_problems(manifest, *arrays[1:])
        if problems:
            raise SkyfixError(f"map pack {path}: {problems[0]}")
        mapped = []  # arrays left memory-mapped: their files are size-checked before use
        for i, name in enumerate(PACK_FILES[:5]):
            if arrays[i].nbytes <= in_ram_max_bytes:
                arrays[i] = np.array(arrays[i])  # in memory: a later truncation cannot hurt
            else:
                mapped.append((path / name, (path / name).stat().st_size))
        try:
            pack = cls(path, manifest, *arrays)
        except CRSError as e:
            raise SkyfixError(f"map pack {path}: {MANIFEST} has an unusable CRS ({e})") from None
        pack._mapped = mapped
        dem, structure = region_grids(path, manifest)
        pack.dem = None if dem is None else pack._keep(dem, path / DEM_FILE, in_ram_max_bytes)
        pack.structure = [pack._keep(a, path / structure_file(lv), in_ram_max_bytes)
                          for lv, a in enumerate(structure)]
        for level in manifest.index_levels:
            pack.indexes[level] = _read_index(path, index_file(level), pack.descriptors.shape[1])
        return pack

    def tiles_near(self, centre_en: np.ndarray, half_e_m: float, half_n_m: float) -> np.ndarray:
        """[n] int64 ids (ascending) of the tiles whose bounds can reach the box
        centre +- (half_e_m, half_n_m); a superset for exact window tests (tile centres are
        kept sorted by east, so this costs O(log T + strip))."""
        if self._by_east is None:
            order = np.argsort(self.tile_center_en[:, 0], kind="stable")
            c, b = self.tile_center_en, self.tile_bounds_en
            reach = (float(np.max(np.maximum(c[:, 0] - b[:, 0], b[:, 2] - c[:, 0])))
                     if self.n_tiles else 0.0,
                     float(np.max(np.maximum(c[:, 1] - b[:, 1], b[:, 3] - c[:, 1])))
                     if self.n_tiles else 0.0)
            self._by_east = (order, self.tile_center_en[order, 0], *reach)
        order, east, reach_e, reach_n = self._by_east
        ce, cn = float(centre_en[0]), float(centre_en[1])
        lo = int(np.searchsorted(east, ce - half_e_m - reach_e, side="left"))
        hi = int(np.searchsorted(east, ce + half_e_m + reach_e, side="right"))
        ids = order[lo:hi]
        north = self.tile_center_en[ids, 1]
        return np.sort(ids[np.abs(north - cn) <= half_n_m + reach_n])

    def tile_features(self, tile_id: int) -> tuple[np.ndarray, np.ndarray]:
        """([n, 2] float64 absolute map (E, N), [n, D] float32 descriptors) of one tile,
        strongest keypoint first."""
        if not 0 <= tile_id < self.n_tiles:
            raise IndexError(f"tile id {tile_id} outside 0..{self.n_tiles - 1}")
        self.check_files()
        a = self._feat_offset[tile_id]
        b = a + self._feat_count[tile_id]
        en = self.tile_center_en[tile_id] + np.asarray(self._keypoints[a:b], np.float64)
        return en, np.asarray(self._local[a:b], np.float32)

    def tile_levels(self, ids: np.ndarray) -> np.ndarray:
        return self.tile_level[ids]

    def tile_centers(self, ids: np.ndarray) -> np.ndarray:
        return self.tile_center_en[ids]

    def tile_bounds(self, ids: np.ndarray) -> np.ndarray:
        return self.tile_bounds_en[ids]

    def search(self, query: np.ndarray, level: int, top_k: int,
               window: tuple[np.ndarray, np.ndarray] | None = None) -> list[TileHit]:
        """skyfix.maps.index.search on this pack."""
        from skyfix.maps.index import search

        return search(self, query, level, top_k, window)


def region_grids(path: Path, m: Manifest) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """The memory-mapped whole-region grids of the map at `path` that manifest `m` lists:
    (dem.npy or None, [structure_l{L}.npy per level]), each checked against its shape."""
    dem = None
    if m.dem_gsd_m:
        dem = _load(path, DEM_FILE)
        want = dem_shape(m.bounds_en, m.dem_gsd_m)
        if dem.shape != want or dem.dtype != np.float32:
            raise SkyfixError(f"map pack {path}: {DEM_FILE} has shape {dem.shape}"
                              f" {dem.dtype}, the manifest says {want} float32")
    structure = []
    for level, sgsd in enumerate(m.structure_gsds_m):
        arr = _load(path, structure_file(level))
        want = structure_shape(m.bounds_en, sgsd)
        if arr.shape != want or arr.dtype != np.uint8:
            raise SkyfixError(f"map pack {path}: {structure_file(level)} has shape"
                              f" {arr.shape} {arr.dtype}, the manifest says {want} uint8")
        structure.append(arr)
    return dem, structure


def _read_index(path: Path, name: str, dim: int) -> Any:
    """The FAISS index stored in `name` (already hash-checked when the pack was verified)."""
    import faiss

    try:
        index = faiss.read_index(str(path / name))
    except RuntimeError as e:
        raise SkyfixError(f"map pack {path}: {name} is not a readable FAISS index"
                          f" ({str(e).strip().splitlines()[-1]})") from None
    if index.d != dim:
        raise SkyfixError(f"map pack {path}: {name} indexes {index.d}-value descriptors,"
                          f" descriptors.npy has {dim}")
    return index


def _encoder_problems(m: Manifest, encoder_id: str | None) -> list[str]:
    if encoder_id is None or encoder_id == m.encoder_id:
        return []
    return [f"built with encoder {m.encoder_id!r}, but the runtime uses {encoder_id!r}"
            " (rebuild the pack with that encoder)"]


def verify_pack(path: Path, encoder_id: str | None = None) -> list[str]:
    """Every problem found in the pack at `path` (empty list = OK): manifest, encoder,
    missing files, sha256 mismatches, array shapes."""
    path = Path(path)
    manifest, problems = read_manifest(path)
    if manifest is None:
        return problems
    problems = _encoder_problems(manifest, encoder_id) + _check_files(path, manifest, True)
    if any(n in p for p in problems for n in PACK_FILES[:5]):
        return problems
    try:
        arrays = [_load(path, n) for n in PACK_FILES[:5]]
        problems += _check_arrays(manifest, *arrays) or array_problems(manifest, *arrays[1:])
    except SkyfixError as e:
        problems.append(str(e).split(": ", 1)[1])
    return problems


def pack_info(pack: TileMap) -> PackInfo:
    """Summary of the map `pack` (a plain or a sharded pack, opened without re-hashing)."""
    m = pack.region
    size = sum(p.stat().st_size for p in pack.path.rglob("*") if p.is_file())
    w, s, e, n = transform_bounds(pack.crs, "EPSG:4326", *m.bounds_en, densify_pts=21)
    area = (m.bounds_en[2] - m.bounds_en[0]) * (m.bounds_en[3] - m.bounds_en[1]) * 1e-6
    crs = f"EPSG:{m.crs_epsg}" if m.crs_epsg else pack.crs.to_string()
    return PackInfo(str(pack.path), m.format, m.encoder_id, crs, m.bounds_en,
                    (float(w), float(s), float(e), float(n)), float(area), m.gsds_m,
                    m.tile_count, m.n_features, int(size), m.dem_gsd_m, m.index_levels,
                    pack.shard_count, m.georef_sigma_m)
