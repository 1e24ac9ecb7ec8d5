"""Writing sharded map packs (layout: skyfix.maps.shards): from a plain pack
(`shard_pack`), or from any stream of tile blocks (`write_shards`; `synthetic_region` makes
a region-sized stand-in for benchmarks and tests).

Shards are written in two streamed passes over blocks of tiles (count, then append), so a
region of any size is written with bounded memory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from tqdm import tqdm

from skyfix.maps.dem import DEM_FILE
from skyfix.maps.manifest import FORMAT, Manifest
from skyfix.maps.pack import TILE_DTYPE, MapPack
from skyfix.maps.pixels import ORTHO_FILE
from skyfix.maps.shards import SHARDS_FORMAT, SHARDS_MANIFEST, ShardInfo, ShardsManifest
from skyfix.maps.structure import structure_file
from skyfix.maps.tiles import _write_npy
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import file_sha256

BLOCK_TILES = 65536  # tiles per block when streaming a pack into shards
MAX_CELLS = 10_000_000  # cells a shard grid may have (empty ones included)


@dataclass(frozen=True)
class TileBlock:
    """A run of tiles to shard. `tiles`: [t] TILE_DTYPE (feat_offset into this block's
    `keypoints`); `descriptors`: [t, K * D + G] float32; `keypoints`: [f, 2] float32;
    `local`: [f, D] float16."""

    tiles: np.ndarray
    descriptors: np.ndarray
    keypoints: np.ndarray
    local: np.ndarray


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
    levels, dim = len(pack.gsds_m), pack.global_dim
    counts: dict[tuple[int, int], list] = {}  # cell -> [tiles, feats, bounds, coarse sums]
    centre_sum = np.zeros(2, np.float64)
    for b in tqdm(blocks(), desc="shards: count", unit="block", disable=not progress,
                  leave=False):
        centre_sum += b.tiles["center_en"].sum(0)
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
                       datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       tuple(float(v) for v in centre_sum / first))  # type: ignore[arg-type]
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
    names = [ORTHO_FILE, DEM_FILE, *(structure_file(lv) for lv in
                                      range(len(pack.manifest.structure_gsds_m)))]
    extra = [pack.path / n for n in names if (pack.path / n).is_file()]
    return write_shards(lambda: pack_blocks(pack), out, pack.manifest, pack.codebook, cell_m,
                        extra, progress)


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
