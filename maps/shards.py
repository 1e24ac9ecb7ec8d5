"""Sharded map packs: a region cut into square geographic cells, opened lazily in flight.

    shards.json                manifest: format "skyfix-shards/1", cell size, the source
                               pack's manifest (CRS, levels, encoder, ...), one entry per
                               shard, sha256 of every file (shard files included)
    codebook.npy               [K, D] float32, shared by every shard (descriptors compare
                               across shards)
    coarse.npy                 [S, L, K * D] float32 coarse index: per shard and level, the
                               normalised mean of the tile descriptors (zero: no tile)
    ortho.tif, dem.npy         copied from the source pack when it has them
    cell_rRRRRR_cCCCCC/        one shard: tiles.npy, keypoints.npy, local_descriptors.npy,
                               descriptors.npy in the layout of a plain pack (skyfix.maps.pack)

A tile belongs to the cell that holds its centre (row counted down from the region's top
edge, column right from its left edge). Tile ids of a sharded pack: shard `first_id` +
the tile's row in its shard. Shards are written in two streamed passes over blocks of
tiles (count, then append), so a region of any size is written with bounded memory.

In flight (`ShardedPack`), only the manifest and the coarse index are held; a shard is
loaded (tile table + global descriptors in memory, local features memory-mapped) when a
search needs it and kept in an LRU cache whose resident bytes never exceed the budget.
Window search visits the shards whose cells reach the window; global search scores the
coarse index first and searches only the `probe` best shards.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from tqdm import tqdm

from skyfix.maps.index import search as pack_search
from skyfix.maps.pack import FORMAT, TILE_DTYPE, Manifest, MapPack, manifest_digest
from skyfix.maps.pack_checks import array_problems, tile_problems
from skyfix.maps.tiles import _write_npy
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import file_sha256
from skyfix.runtime.core.types import TileHit

SHARDS_FORMAT = "skyfix-shards/1"
SHARDS_MANIFEST = "shards.json"
SHARD_FILES = ("tiles.npy", "keypoints.npy", "local_descriptors.npy", "descriptors.npy")
BLOCK_TILES = 65536  # tiles per block when streaming a pack into shards
DEFAULT_BUDGET_BYTES = 256 << 20
DEFAULT_PROBE = 8  # shards searched by a global search
MAX_CELLS = 10_000_000  # cells a shard grid may have (empty ones included)


@dataclass(frozen=True)
class TileBlock:
    """A run of tiles to shard. `tiles`: [t] TILE_DTYPE (feat_offset into this block's
    `keypoints`); `descriptors`: [t, K * D] float32; `keypoints`: [f, 2] float32;
    `local`: [f, D] float16."""

    tiles: np.ndarray
    descriptors: np.ndarray
    keypoints: np.ndarray
    local: np.ndarray


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardsManifest:
        try:
            shards = tuple(ShardInfo(str(s["name"]), (int(s["cell"][0]), int(s["cell"][1])),
                                     int(s["first_id"]), int(s["n_tiles"]), int(s["n_features"]),
                                     tuple(float(v) for v in s["bounds_en"]),  # type: ignore
                                     int(s["resident_bytes"])) for s in d["shards"])
            return cls(str(d["format"]), float(d["cell_m"]), dict(d["pack"]), shards,
                       {str(k): str(v) for k, v in d["files"].items()}, str(d["created_utc"]))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"missing or mistyped key ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["manifest_sha256"] = manifest_digest(d)
        return d


def _cells(tiles: np.ndarray, origin_en: tuple[float, float], cell_m: float) -> np.ndarray:
    """[t, 2] int64 (row, col) of the cell holding each tile's centre."""
    c = tiles["center_en"]
    return np.stack([np.floor((origin_en[1] - c[:, 1]) / cell_m),
                     np.floor((c[:, 0] - origin_en[0]) / cell_m)], 1).astype(np.int64)


def _groups(cells: np.ndarray) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """((row, col), [n] int64 ascending positions) for each distinct cell of [t, 2] `cells`."""
    order = np.lexsort((cells[:, 1], cells[:, 0]))
    c = cells[order]
    cut = np.flatnonzero(np.any(c[1:] != c[:-1], axis=1)) + 1
    for part in np.split(order, cut):
        if len(part):
            yield (int(cells[part[0], 0]), int(cells[part[0], 1])), np.sort(part)


def write_shards(blocks: Callable[[], Iterable[TileBlock]], out: Path, pack: Manifest,
                 codebook: np.ndarray, cell_m: float, copy_files: Iterable[Path] = (),
                 progress: bool = True) -> Path:
    """Write the sharded pack of the tiles `blocks()` yields (called twice: two passes).

    `pack`: the manifest describing the tiles (bounds, levels, encoder); `copy_files`:
    whole-region files (ortho.tif, dem.npy) copied to the top level. Returns `out`.
    """
    if not np.isfinite(cell_m) or cell_m <= 0:
        raise SkyfixError(f"shard cell size must be a positive number of metres, got {cell_m}")
    b = pack.bounds_en
    cells = math.ceil((b[2] - b[0]) / cell_m) * math.ceil((b[3] - b[1]) / cell_m)
    if cells > MAX_CELLS:
        raise SkyfixError(f"shard cell size {cell_m:g} m cuts the pack into {cells:,} cells "
                          f"(at most {MAX_CELLS:,}): choose larger cells")
    out = Path(out)
    if out.exists():
        raise SkyfixError(f"{out}: exists (remove it first)")
    origin = (pack.bounds_en[0], pack.bounds_en[3])
    levels, dim = len(pack.gsds_m), pack.codebook_k * pack.local_dim
    counts: dict[tuple[int, int], list] = {}  # cell -> [tiles, feats, bounds, coarse sums]
    for b in tqdm(blocks(), desc="shards: count", unit="block", disable=not progress,
                  leave=False):
        for key, sel in _groups(_cells(b.tiles, origin, cell_m)):
            tb = b.tiles["bounds_en"][sel]
            box = np.array([*tb[:, :2].min(0), *tb[:, 2:].max(0)])
            acc = counts.setdefault(key, [0, 0, box, np.zeros((levels, dim), np.float64)])
            acc[0] += len(sel)
            acc[1] += int(b.tiles["feat_count"][sel].sum())
            acc[2] = np.array([*np.minimum(acc[2][:2], box[:2]), *np.maximum(acc[2][2:], box[2:])])
            np.add.at(acc[3], b.tiles["level"][sel].astype(np.int64),
                      np.asarray(b.descriptors[sel], np.float64))
    if not counts:
        raise SkyfixError(f"{out}: no tiles to shard")
    work = out.parent / f".{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    keys = sorted(counts)
    infos, first = [], 0
    for key in keys:
        n, f, box, _ = counts[key]
        name = f"cell_r{key[0]:06d}_c{key[1]:06d}"
        (work / name).mkdir()
        for fname, dt, shape in (("tiles.npy", TILE_DTYPE, (n,)),
                                 ("keypoints.npy", np.dtype(np.float32), (f, 2)),
                                 ("local_descriptors.npy", np.dtype(np.float16),
                                  (f, pack.local_dim)),
                                 ("descriptors.npy", np.dtype(np.float32), (n, dim))):
            with open(work / name / fname, "wb") as fh:
                _write_npy(fh, np.dtype(dt), shape)
        infos.append(ShardInfo(name, key, first, n, f, tuple(float(v) for v in box),
                               n * (TILE_DTYPE.itemsize + 4 * dim)))
        first += n
    _append_blocks(blocks, work, {i.cell: i for i in infos}, origin, cell_m, progress)
    coarse = np.stack([counts[k][3] for k in keys]).astype(np.float32)
    coarse /= np.linalg.norm(coarse, axis=2, keepdims=True) + 1e-12
    np.save(work / "coarse.npy", coarse, allow_pickle=False)
    np.save(work / "codebook.npy", np.asarray(codebook, np.float32), allow_pickle=False)
    for p in copy_files:
        shutil.copyfile(p, work / Path(p).name)
    files = {str(p.relative_to(work)): file_sha256(p)
             for p in sorted(work.rglob("*")) if p.is_file()}
    m = ShardsManifest(SHARDS_FORMAT, float(cell_m), {**asdict(pack), "files": {}},
                       tuple(infos), files,
                       datetime.now(timezone.utc).isoformat(timespec="seconds"))
    (work / SHARDS_MANIFEST).write_text(json.dumps(m.to_dict(), indent=1) + "\n")
    os.replace(work, out)
    return out


def _append_blocks(blocks: Callable[[], Iterable[TileBlock]], work: Path,
                   by_cell: dict[tuple[int, int], ShardInfo], origin: tuple[float, float],
                   cell_m: float, progress: bool) -> None:
    """Second pass: append each block's tiles to their shards' files."""
    next_tile = {c: 0 for c in by_cell}
    next_feat = {c: 0 for c in by_cell}
    for b in tqdm(blocks(), desc="shards: write", unit="block", disable=not progress,
                  leave=False):
        for key, sel in _groups(_cells(b.tiles, origin, cell_m)):
            rows = b.tiles[sel].copy()
            n_feat = rows["feat_count"].astype(np.int64)
            starts = rows["feat_offset"].astype(np.int64) - np.cumsum(n_feat) + n_feat
            feat = np.repeat(starts, n_feat) + np.arange(int(n_feat.sum()))
            rows["id"] = next_tile[key] + np.arange(len(rows))
            rows["feat_offset"] = next_feat[key] + np.concatenate(
                [[0], np.cumsum(rows["feat_count"])[:-1]]).astype(np.int64)
            folder = work / by_cell[key].name
            for fname, arr in (("tiles.npy", rows), ("keypoints.npy", b.keypoints[feat]),
                               ("local_descriptors.npy", b.local[feat]),
                               ("descriptors.npy", b.descriptors[sel])):
                with open(folder / fname, "ab") as fh:
                    fh.write(np.ascontiguousarray(arr).tobytes())
            next_tile[key] += len(rows)
            next_feat[key] += len(feat)


def pack_blocks(pack: MapPack, block_tiles: int = BLOCK_TILES) -> Iterator[TileBlock]:
    """Stream an opened plain pack as TileBlocks (its features are stored in tile order)."""
    tiles = np.load(pack.path / "tiles.npy", mmap_mode="r", allow_pickle=False)
    for a in range(0, pack.n_tiles, block_tiles):
        t = np.array(tiles[a:a + block_tiles])
        f0 = int(t["feat_offset"][0])
        f1 = int(t["feat_offset"][-1] + t["feat_count"][-1])
        t["feat_offset"] -= f0
        yield TileBlock(t, np.asarray(pack.descriptors[a:a + len(t)], np.float32),
                        np.asarray(pack._keypoints[f0:f1]), np.asarray(pack._local[f0:f1]))


def shard_pack(pack_path: Path, out: Path, cell_m: float, progress: bool = True) -> Path:
    """Cut the plain map pack at `pack_path` into a sharded pack at `out` (cells of `cell_m`)."""
    pack = MapPack.open(Path(pack_path))
    extra = [pack.path / n for n in ("ortho.tif", "dem.npy") if (pack.path / n).is_file()]
    return write_shards(lambda: pack_blocks(pack), out, pack.manifest, pack.codebook, cell_m,
                        extra, progress)


class ShardedPack:
    """A sharded pack opened for flight. Use `ShardedPack.open(path, budget_bytes)`.

    `shard_bounds_en`: [S, 4] float64; `coarse`: [S, L, K * D] float32; `resident_bytes`:
    what the loaded shards hold now (never above `budget_bytes`).
    """

    def __init__(self, path: Path, manifest: ShardsManifest, budget_bytes: int, verify: bool):
        self.path, self.manifest = path, manifest
        self.budget_bytes, self.verify = budget_bytes, verify
        try:
            self.base = Manifest.from_dict(manifest.pack)
        except ValueError as e:
            raise SkyfixError(f"sharded pack {path}: {SHARDS_MANIFEST} pack entry: {e}") from None
        self.levels = self.base.gsds_m
        self.codebook = np.load(path / "codebook.npy", allow_pickle=False)
        self.coarse = np.load(path / "coarse.npy", allow_pickle=False)
        self.shard_bounds_en = np.array([s.bounds_en for s in manifest.shards], np.float64)
        self.first_ids = np.array([s.first_id for s in manifest.shards], np.int64)
        self._cache: OrderedDict[int, tuple[MapPack, int]] = OrderedDict()  # pack, bytes
        self.resident_bytes = 0
        self.loads = 0

    @classmethod
    def open(cls, path: Path, budget_bytes: int = DEFAULT_BUDGET_BYTES,
             verify: bool = True) -> ShardedPack:
        """Open the manifest and coarse index; `verify` hashes the top-level files now and
        each shard's files when it is first loaded."""
        path = Path(path)
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
    def n_tiles(self) -> int:
        return int(sum(s.n_tiles for s in self.manifest.shards))

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
        if self.verify:
            _verify(self.path, self.manifest.files, [f"{info.name}/{n}" for n in SHARD_FILES])
        try:
            tiles = np.load(folder / "tiles.npy", allow_pickle=False)
            desc = np.load(folder / "descriptors.npy", allow_pickle=False)
            kps = np.load(folder / "keypoints.npy", mmap_mode="r", allow_pickle=False)
            local = np.load(folder / "local_descriptors.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SkyfixError(f"sharded pack {self.path}: {info.name} is unreadable"
                              f" ({e})") from None
        counts = tuple(int(c) for c in np.bincount(tiles["level"].astype(np.int64),
                                                   minlength=len(self.levels)))
        m = replace(self.base, tile_count=counts, n_features=info.n_features, files={},
                    index_levels=(), dem_gsd_m=None, structure_gsds_m=())
        problems = tile_problems(m, tiles) or (array_problems(m, kps, local, desc, self.codebook)
                                               if self.verify else [])
        if problems:
            raise SkyfixError(f"sharded pack {self.path}: {info.name}: {problems[0]}")
        pack = MapPack(folder, m, tiles, kps, local, desc, self.codebook)
        pack._mapped = [(folder / n, (folder / n).stat().st_size)  # size-checked before use
                        for n in ("keypoints.npy", "local_descriptors.npy")]
        self._cache[index] = (pack, tiles.nbytes + desc.nbytes)
        self.resident_bytes += tiles.nbytes + desc.nbytes
        self.loads += 1
        return pack

    def shards_near(self, centre_en: np.ndarray, half_e_m: float, half_n_m: float) -> np.ndarray:
        """[n] int64 shards whose tiles can reach the box centre +- (half_e_m, half_n_m)."""
        b, (e, n) = self.shard_bounds_en, np.asarray(centre_en, np.float64)
        return np.flatnonzero((b[:, 0] <= e + half_e_m) & (b[:, 2] >= e - half_e_m)
                              & (b[:, 1] <= n + half_n_m) & (b[:, 3] >= n - half_n_m))

    def search(self, query: np.ndarray, level: int, top_k: int,
               window: tuple[np.ndarray, np.ndarray] | None = None,
               probe: int = DEFAULT_PROBE) -> list[TileHit]:
        """As skyfix.maps.index.search, over all shards; tile ids are sharded-pack ids.

        With a window, every shard reaching it is searched (exact); without, the `probe`
        shards whose coarse descriptor is closest to the query."""
        q = np.asarray(query, np.float32).reshape(-1)
        if window is not None:
            centre, cov = (np.asarray(w, np.float64) for w in window)
            half = np.sqrt(np.clip(np.diag(cov.reshape(2, 2)), 0, None))
            shards = (self.shards_near(centre.reshape(2), *half) if np.all(np.isfinite(half))
                      and np.all(np.isfinite(centre)) else np.zeros(0, np.int64))
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


def _verify(path: Path, files: dict[str, str], names: list[str]) -> None:
    for name in names:
        if not (path / name).is_file():
            raise SkyfixError(f"sharded pack {path}: {name} is missing")
        if file_sha256(path / name) != files.get(name):
            raise SkyfixError(f"sharded pack {path}: {name} does not match its manifest"
                              " (sha256 mismatch)")


def synthetic_region(n_tiles: int, dim: int = 32, tile_m: float = 10.0, seed: int = 0
                     ) -> tuple[Manifest, Callable[[], Iterator[TileBlock]]]:
    """A region-sized stand-in for benchmarks and tests: ~`n_tiles` tiles of `tile_m`
    metres on a square grid (one level, no local features), with [dim] unit descriptors
    that vary smoothly over the region (a blend of random vectors on an 8 x 8 lattice,
    plus noise), generated block by block from `seed` so both passes see the same data.
    Returns (manifest, blocks) for `write_shards`."""
    side = max(1, int(round(np.sqrt(n_tiles))))
    n = side * side
    extent = side * tile_m
    lattice = np.random.default_rng(seed).normal(size=(9, 9, dim))
    m = Manifest(format=FORMAT, crs_wkt=CRS.from_epsg(32633).to_wkt(), crs_epsg=32633,
                 bounds_en=(0.0, 0.0, extent, extent), gsds_m=(tile_m / 32,), tile_px=32,
                 overlap=0.0, tile_count=(n,), encoder_id="synthetic", encoder_sha256="",
                 local_dim=dim, codebook_k=1, n_features=0, sources=("synthetic",),
                 build={"seed": seed}, files={}, created_utc="")

    def blocks() -> Iterator[TileBlock]:
        for a in range(0, n, BLOCK_TILES):
            i = np.arange(a, min(n, a + BLOCK_TILES))
            t = np.zeros(len(i), TILE_DTYPE)
            e, nn = (i % side + 0.5) * tile_m, extent - (i // side + 0.5) * tile_m
            t["id"], t["gsd_m"], t["valid_fraction"] = i, tile_m / 32, 1.0
            t["center_en"] = np.stack([e, nn], 1)
            t["bounds_en"] = np.stack([e - tile_m / 2, nn - tile_m / 2,
                                       e + tile_m / 2, nn + tile_m / 2], 1)
            u, v = e / extent * 8, (extent - nn) / extent * 8
            u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
            fu, fv = (u - u0)[:, None], (v - v0)[:, None]
            d = ((1 - fu) * (1 - fv) * lattice[v0, u0] + fu * (1 - fv) * lattice[v0, u0 + 1]
                 + (1 - fu) * fv * lattice[v0 + 1, u0] + fu * fv * lattice[v0 + 1, u0 + 1])
            d += 0.3 * np.random.default_rng([seed, a]).normal(size=d.shape)
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            yield TileBlock(t, d.astype(np.float32), np.zeros((0, 2), np.float32),
                            np.zeros((0, dim), np.float16))

    return m, blocks
