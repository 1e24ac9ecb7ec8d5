"""Sharded map packs: a region cut into square geographic cells, opened lazily in flight.

    shards.json                manifest: format "skyfix-shards/1", cell size, the source
                               pack's manifest (CRS, levels, encoder, ...), one entry per
                               shard, sha256 of every file (shard files included)
    codebook.npy               [K, D] float32, shared by every shard (descriptors compare
                               across shards)
    coarse.npy                 [S, L, K * D + G] float32 coarse index: per shard and level, the
                               normalised mean of the tile descriptors (zero: no tile)
    ortho.tif, dem.npy,        copied from the source pack when it has them (whole-region
    structure_l{L}.npy         grids, memory-mapped in flight)
    cell_rRRRRR_cCCCCC/        one shard: tiles.npy, keypoints.npy, local_descriptors.npy,
                               descriptors.npy in the layout of a plain pack (skyfix.maps.pack)

A tile belongs to the cell that holds its centre (row counted down from the region's top
edge, column right from its left edge). Tile ids of a sharded pack: shard `first_id` +
the tile's row in its shard. Written by skyfix.maps.shard_write.

In flight (`ShardedPack`, the skyfix.maps.tilemap surface the localiser reads, as a plain
pack's), only the manifest and the coarse index are held; a shard is
loaded (tile table + global descriptors in memory, local features memory-mapped) when a
search needs it and kept in an LRU cache whose resident bytes never exceed the budget.
Window search visits the shards whose cells reach the window; global search scores the
coarse index first and searches only the `probe` best shards.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS

from skyfix.maps.dem import DEM_FILE
from skyfix.maps.index import search as pack_search
from skyfix.maps.manifest import Manifest, manifest_digest
from skyfix.maps.pack import MapPack, region_grids
from skyfix.maps.pack_checks import array_problems, tile_problems
from skyfix.maps.structure import structure_file
from skyfix.maps.tilemap import TileMap
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import file_sha256
from skyfix.runtime.core.provenance import check_manifest_signature
from skyfix.runtime.core.types import TileHit

log = logging.getLogger("skyfix.maps")

SHARDS_FORMAT = "skyfix-shards/1"
SHARDS_MANIFEST = "shards.json"
SHARD_FILES = ("tiles.npy", "keypoints.npy", "local_descriptors.npy", "descriptors.npy")
DEFAULT_BUDGET_BYTES = 256 << 20
DEFAULT_PROBE = 8  # shards searched by a global search


@dataclass(frozen=True)
class ShardInfo:
    """One cell: `bounds_en` is the union of its tiles' bounds (min E, min N, max E, max N);
    `resident_bytes` is what loading it holds in memory (tile table + descriptors)."""

    name: str
    cell: tuple[int, int]  # (row, col)
    first_id: int
    n_tiles: int
    n_features: int
    bounds_en: tuple[float, float, float, float]
    resident_bytes: int


@dataclass(frozen=True)
class ShardsManifest:
    format: str
    cell_m: float
    pack: dict[str, Any]  # the source pack's manifest (its `files` left empty)
    shards: tuple[ShardInfo, ...]
    files: dict[str, str]
    created_utc: str
    centre_en: tuple[float, float] | None = None  # mean tile centre (older packs: none)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardsManifest:
        try:
            shards = tuple(ShardInfo(str(s["name"]), (int(s["cell"][0]), int(s["cell"][1])),
                                     int(s["first_id"]), int(s["n_tiles"]), int(s["n_features"]),
                                     tuple(float(v) for v in s["bounds_en"]),  # type: ignore
                                     int(s["resident_bytes"])) for s in d["shards"])
            centre = d.get("centre_en")
            return cls(str(d["format"]), float(d["cell_m"]), dict(d["pack"]), shards,
                       {str(k): str(v) for k, v in d["files"].items()}, str(d["created_utc"]),
                       None if centre is None else (float(centre[0]), float(centre[1])))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"missing or mistyped key ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["manifest_sha256"] = manifest_digest(d)
        return d


class ShardedPack(TileMap):
    """A sharded pack opened for flight. Use `ShardedPack.open(path, budget_bytes)`.

    `shard_bounds_en`: [S, 4] float64; `coarse`: [S, L, K * D + G] float32; `resident_bytes`:
    what the loaded shards hold now (never above `budget_bytes`); `loads`: shard loads so
    far (a load after an eviction counts again).
    """

    def __init__(self, path: Path, manifest: ShardsManifest, budget_bytes: int, verify: bool):
        self.path, self.manifest = path, manifest
        self.budget_bytes, self.verify = budget_bytes, verify
        try:
            base = Manifest.from_dict(manifest.pack)
        except ValueError as e:
            raise SkyfixError(f"sharded pack {path}: {SHARDS_MANIFEST} pack entry: {e}") from None
        # whole-region grids the sharded pack does not hold (older packs: no structure)
        has = set(manifest.files)
        self.region = replace(
            base, dem_gsd_m=base.dem_gsd_m if DEM_FILE in has else None,
            structure_gsds_m=base.structure_gsds_m if all(
                structure_file(lv) in has for lv in range(len(base.structure_gsds_m))) else ())
        self.crs = CRS.from_wkt(base.crs_wkt)
        self.levels = base.gsds_m
        self.codebook = np.load(path / "codebook.npy", allow_pickle=False)
        self.coarse = np.load(path / "coarse.npy", allow_pickle=False)
        self.dem, self.structure = region_grids(path, self.region)
        self.shard_bounds_en = np.array([s.bounds_en for s in manifest.shards], np.float64)
        self.first_ids = np.array([s.first_id for s in manifest.shards], np.int64)
        self.n_tiles = int(sum(s.n_tiles for s in manifest.shards))
        b = base.bounds_en
        self.centre_en = np.array(manifest.centre_en if manifest.centre_en is not None
                                  else (0.5 * (b[0] + b[2]), 0.5 * (b[1] + b[3])), np.float64)
        self._cache: OrderedDict[int, tuple[MapPack, int]] = OrderedDict()  # pack, bytes
        self._checked: set[int] = set()  # shards whose files were hashed and scanned
        self.resident_bytes = 0
        self.loads = 0
        self.over_budget_windows = 0  # windows whose shards did not all fit the budget

    @classmethod
    def open(cls, path: Path, budget_bytes: int = DEFAULT_BUDGET_BYTES,
             verify: bool = True, trusted_key: Path | None = None) -> ShardedPack:
        """Open the manifest and coarse index; `verify` hashes the top-level files now and
        each shard's files (and scans their values) when it is first loaded; a shard loaded
        again after an eviction gets the checks a plain pack's files get while in use
        (tile table, sizes). With `trusted_key`, shards.json must carry a valid signature
        by it (it lists the sha256 of every shard file)."""
        path = Path(path)
        if trusted_key is not None:
            check_manifest_signature(path / SHARDS_MANIFEST, trusted_key, f"sharded pack {path}")
        try:
            raw = json.loads((path / SHARDS_MANIFEST).read_text())
            if raw.get("format") != SHARDS_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, this skyfix reads"
                                 f" {SHARDS_FORMAT!r}")
            if raw.get("manifest_sha256") != manifest_digest(raw):
                raise ValueError("does not match its own checksum (edited or corrupt)")
            m = ShardsManifest.from_dict(raw)
        except RecursionError:
            raise SkyfixError(f"sharded pack {path}: {SHARDS_MANIFEST}: nested too deeply"
                              ) from None
        except (OSError, ValueError, AttributeError) as e:
            raise SkyfixError(f"sharded pack {path}: {SHARDS_MANIFEST}: "
                              f"{str(e).splitlines()[0]}") from None
        biggest = max(s.resident_bytes for s in m.shards)
        if biggest > budget_bytes:
            raise SkyfixError(f"sharded pack {path}: its largest shard needs {biggest >> 20} MiB,"
                              f" over the memory budget of {budget_bytes >> 20} MiB"
                              " (raise the budget or re-shard with smaller cells)")
        if verify:
            _verify(path, m.files, [n for n in m.files if "/" not in n])
        return cls(path, m, budget_bytes, verify)

    @property
    def shard_count(self) -> int:
        return len(self.manifest.shards)

    def shard(self, index: int) -> MapPack:
        """Shard `index` as a plain MapPack (local tile ids), loading it if needed."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index][0]
        info = self.manifest.shards[index]
        while self._cache and self.resident_bytes + info.resident_bytes > self.budget_bytes:
            _, (_, nbytes) = self._cache.popitem(last=False)
            self.resident_bytes -= nbytes
        folder = self.path / info.name
        check = self.verify and index not in self._checked
        if check:
            _verify(self.path, self.manifest.files, [f"{info.name}/{n}" for n in SHARD_FILES])
        try:
            tiles = np.load(folder / "tiles.npy", allow_pickle=False)
            desc = np.load(folder / "descriptors.npy", allow_pickle=False)
            kps = np.load(folder / "keypoints.npy", mmap_mode="r", allow_pickle=False)
            local = np.load(folder / "local_descriptors.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise SkyfixError(f"sharded pack {self.path}: {info.name} is unreadable"
                              f" ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
        counts = tuple(int(c) for c in np.bincount(tiles["level"].astype(np.int64),
                                                   minlength=len(self.levels)))
        m = replace(self.region, tile_count=counts, n_features=info.n_features, files={},
                    index_levels=(), dem_gsd_m=None, structure_gsds_m=())
        problems = tile_problems(m, tiles) or (array_problems(m, kps, local, desc, self.codebook)
                                               if check else [])
        if problems:
            raise SkyfixError(f"sharded pack {self.path}: {info.name}: {problems[0]}")
        pack = MapPack(folder, m, tiles, kps, local, desc, self.codebook)
        pack._mapped = [(folder / n, (folder / n).stat().st_size)  # size-checked before use
                        for n in ("keypoints.npy", "local_descriptors.npy")]
        self._checked.add(index)
        self._cache[index] = (pack, tiles.nbytes + desc.nbytes)
        self.resident_bytes += tiles.nbytes + desc.nbytes
        self.loads += 1
        return pack

    def shards_near(self, centre_en: np.ndarray, half_e_m: float, half_n_m: float) -> np.ndarray:
        """[n] int64 shards whose tiles can reach the box centre +- (half_e_m, half_n_m)."""
        b, (e, n) = self.shard_bounds_en, np.asarray(centre_en, np.float64)
        return np.flatnonzero((b[:, 0] <= e + half_e_m) & (b[:, 2] >= e - half_e_m)
                              & (b[:, 1] <= n + half_n_m) & (b[:, 3] >= n - half_n_m))

    def tiles_near(self, centre_en: np.ndarray, half_e_m: float, half_n_m: float) -> np.ndarray:
        near = self.shards_near(centre_en, half_e_m, half_n_m)
        need = sum(self.manifest.shards[int(s)].resident_bytes for s in near)
        if need > self.budget_bytes:
            # each frame would evict what the next one needs again: it works, slowly
            if not self.over_budget_windows:
                log.warning("map budget %.1f MiB is below the %.1f MiB one search window "
                            "needs (%d shards): shards are reloaded every frame; raise "
                            "daemon.map_budget_mb", self.budget_bytes / 2**20, need / 2**20,
                            len(near))
            self.over_budget_windows += 1
        parts = [self.first_ids[s] + self.shard(int(s)).tiles_near(centre_en, half_e_m, half_n_m)
                 for s in near]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _column(self, ids: np.ndarray, column: str, shape: tuple[int, ...], dtype
                ) -> np.ndarray:
        """[n, *shape] `column` of each tile of [n] sharded-pack ids (shard by shard)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n_tiles):
            raise IndexError(f"tile ids outside 0..{self.n_tiles - 1}")
        which = np.searchsorted(self.first_ids, ids, side="right") - 1
        out = np.empty((len(ids), *shape), dtype)
        for s in np.unique(which):
            sel = which == s
            out[sel] = getattr(self.shard(int(s)), column)[ids[sel] - self.first_ids[s]]
        return out

    def tile_levels(self, ids: np.ndarray) -> np.ndarray:
        return self._column(ids, "tile_level", (), np.int64)

    def tile_centers(self, ids: np.ndarray) -> np.ndarray:
        return self._column(ids, "tile_center_en", (2,), np.float64)

    def tile_bounds(self, ids: np.ndarray) -> np.ndarray:
        return self._column(ids, "tile_bounds_en", (4,), np.float64)

    def search(self, query: np.ndarray, level: int, top_k: int,
               window: tuple[np.ndarray, np.ndarray] | None = None,
               probe: int = DEFAULT_PROBE) -> list[TileHit]:
        """As skyfix.maps.index.search, over all shards; tile ids are sharded-pack ids.

        With a window, every shard reaching it is searched (exact); without, the `probe`
        shards whose coarse descriptor is closest to the query."""
        q = np.asarray(query, np.float32).reshape(-1)
        if window is not None:
            centre, cov = (np.asarray(w, np.float64) for w in window)
            half = (np.sqrt(np.clip(np.diag(cov.reshape(2, 2)), 0, None))
                    if np.all(np.isfinite(cov)) else np.zeros(2))
            shards = (self.shards_near(centre.reshape(2), *half)
                      if np.all(np.isfinite(centre)) else np.zeros(0, np.int64))
        else:
            if not 0 <= level < len(self.levels) or q.shape[0] != self.coarse.shape[2]:
                raise SkyfixError(f"query of {q.shape[0]} values at level {level} does not fit"
                                  f" sharded pack {self.path}")
            scores = self.coarse[:, level] @ (q / (np.linalg.norm(q) + 1e-12))
            has = np.any(self.coarse[:, level] != 0, axis=1)
            order = np.flatnonzero(has)[np.argsort(-scores[has], kind="stable")]
            shards = order[:max(1, probe)]
        hits: list[TileHit] = []
        for s in shards:
            first = int(self.first_ids[s])
            hits += [replace(h, tile_id=first + h.tile_id)
                     for h in pack_search(self.shard(int(s)), q, level, top_k, window)]
        hits.sort(key=lambda h: (-h.score, h.tile_id))
        return hits[:top_k]

    def locate(self, tile_id: int) -> tuple[MapPack, int]:
        """(shard MapPack, local id) of sharded-pack tile `tile_id`."""
        if not 0 <= tile_id < self.n_tiles:
            raise IndexError(f"tile id {tile_id} outside 0..{self.n_tiles - 1}")
        s = int(np.searchsorted(self.first_ids, tile_id, side="right")) - 1
        return self.shard(s), tile_id - int(self.first_ids[s])

    def tile_features(self, tile_id: int) -> tuple[np.ndarray, np.ndarray]:
        """As MapPack.tile_features, by sharded-pack tile id."""
        pack, local = self.locate(tile_id)
        return pack.tile_features(local)


def verify_sharded(path: Path) -> list[str]:
    """Every problem found in the sharded pack at `path` (empty list = OK), each a line
    naming the pack: its manifest and top-level files, then every shard's files (hashes,
    shapes, values), loaded one at a time."""
    try:
        pack = ShardedPack.open(Path(path), budget_bytes=1 << 62)
    except SkyfixError as e:
        return [str(e)]
    pack.budget_bytes = max(s.resident_bytes for s in pack.manifest.shards)  # one at a time
    problems = []
    for i in range(len(pack.manifest.shards)):
        try:
            pack.shard(i)
        except SkyfixError as e:
            problems.append(str(e))
    return problems


def open_map_pack(path: Path, budget_bytes: int = DEFAULT_BUDGET_BYTES, verify: bool = True,
                  trusted_key: Path | None = None) -> TileMap:
    """The map at `path` opened for flight: a sharded pack (it has shards.json; shards
    load lazily within `budget_bytes`) or a plain map pack; `verify` and `trusted_key`
    as their `open`."""
    path = Path(path)
    if (path / SHARDS_MANIFEST).is_file():
        return ShardedPack.open(path, budget_bytes, verify, trusted_key)
    return MapPack.open(path, verify=verify, trusted_key=trusted_key)


def _verify(path: Path, files: dict[str, str], names: list[str]) -> None:
    for name in names:
        if not (path / name).is_file():
            raise SkyfixError(f"sharded pack {path}: {name} is missing")
        if file_sha256(path / name) != files.get(name):
            raise SkyfixError(f"sharded pack {path}: {name} does not match its manifest"
                              " (sha256 mismatch)")
