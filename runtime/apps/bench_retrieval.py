"""`skyfix bench retrieval`: the global search of the product (which tiles of the whole map a
view is like) on two-date pair sets, with Game4Loc's metrics (skyfix.models.metrics).

For each set and method (encoder): one map pack of every distinct map image `a` of the set,
built by `maps build`'s own code at the set's gsd_m. The images keep their own
georeference when all of them have one in one CRS (a series of one place then makes one
map, the first image winning where they overlap); otherwise each gets a made-up one, side by
side in a row with a tile of empty ground between them, so every other image's tiles are
distractors. The views are the cross-date benchmark's (skyfix.sim.pairs, same seeds), each
made ready by the runtime's `Localizer.look` and described by `pack.global_descriptor`, as a
flight without a prior searches. Every tile of the pack is ranked by the inner product of
its descriptor with the view's, exactly (a FAISS index's approximation is not measured). A
tile is a positive when it covers the ground under the view's centre.

Scored per set, and over the registered sets by view count: Recall@1/5/10, AP, SDM@1/3/5 and
Dis@1/3/5 (metres). A pack whose encoder has a global embedding (`xfeat-xd`) stores VLAD and
embedding side by side in one descriptor; each half is also ranked alone ("vlad",
"embedding") next to what the pack searches ("descriptor").
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from skyfix.maps.build import build_pack
from skyfix.maps.pack import MapPack
from skyfix.models.metrics import RetrievalMetrics, retrieval_metrics
from skyfix.models.pair_sets import PairSet, image_grid, read_b, read_bgr
from skyfix.models.registry import make_encoder
from skyfix.runtime.apps.bench_crossdate import (
    CRS_FAKE,
    ORIGIN_EN,
    machine,
    read_sets,
    tile_px_for,
    view_frame,
)
from skyfix.runtime.core.camera import CameraModel
from skyfix.runtime.core.config import Config
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.flight.assembly import build_chain
from skyfix.runtime.nav.navigator import Look
from skyfix.runtime.nav.retrieve import NO_PRIOR
from skyfix.sim.pairs import make_views

RECALL_KS = (1, 5, 10)


def _own_georeference(paths: list[Path]) -> list[tuple[rasterio.crs.CRS, Affine]] | None:
    """Each image's (CRS, transform) when all have one, in one CRS; else None."""
    grids = [image_grid(p) for p in paths]
    if any(g.crs is None for g in grids) or len({g.crs.to_wkt() for g in grids}) != 1:
        return None
    return [(g.crs, g.transform) for g in grids]


def _tile_px(pset: PairSet) -> int:
    return tile_px_for(min(p.width for p in pset.pairs), min(p.height for p in pset.pairs))


def map_images(pset: PairSet, folder: Path) -> tuple[list[Path], dict[Path, Affine]]:
    """The set's distinct map images written as GeoTIFFs into `folder` (their own
    georeference, or made-up ones in a row: module docstring), and each source image's
    transform (pixel (col, row) -> map E, N at the pixel's corner)."""
    sources = list(dict.fromkeys(p.a for p in pset.pairs))
    own = _own_georeference(sources)
    tile = _tile_px(pset)
    tifs, transforms, x = [], {}, 0
    for i, src in enumerate(sources):
        image = read_bgr(src, pset.rgb_bands)
        h, w = image.shape[:2]
        if own is None:
            crs = CRS_FAKE
            t = Affine(pset.gsd_m, 0, ORIGIN_EN[0] + x * pset.gsd_m, 0, -pset.gsd_m, ORIGIN_EN[1])
            x += w + tile
        else:
            crs, t = own[i]
        tif = folder / f"map_{i:03d}.tif"
        if not tif.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            with rasterio.open(tif, "w", driver="GTiff", width=w, height=h, count=3,
                               dtype="uint8", crs=crs, transform=t) as ds:
                ds.write(image[:, :, ::-1].transpose(2, 0, 1))
        tifs.append(tif)
        transforms[src] = t
    return tifs, transforms


def _pack(pset: PairSet, method: str, tifs: list[Path], folder: Path, cfg: Config) -> MapPack:
    """The map pack of `tifs` built with `method` as `cfg` sets it up (kept in `folder`;
    rebuilt when it is of other weights or damaged)."""
    encoder = make_encoder(method, cfg.encoder)
    path = folder / f"pack-{method}"
    if (path / "manifest.json").is_file():
        try:
            return MapPack.open(path, encoder_id=encoder.id, verify=False)
        except SkyfixError:
            pass
    build_pack(tifs, path, encoder=encoder, gsds_m=(pset.gsd_m,), tile_px=_tile_px(pset),
               force=True, progress=False)
    return MapPack.open(path, encoder_id=encoder.id, verify=False)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def _record(m: RetrievalMetrics) -> dict:
    return {**{f"recall@{k}": round(100 * m.recall_at(k), 1) for k in m.recall_ks},
            "ap": round(100 * m.ap, 1),
            **{f"sdm@{k}": round(m.sdm_at(k), 4) for k in m.sdm_ks},
            **{f"dis@{k}_m": round(m.dis_at_m(k), 1) for k in m.dis_ks}}


def run_set(pset: PairSet, maps: tuple[list[Path], dict[Path, Affine]], method: str,
            views: int, seed: int, folder: Path, cfg: Config) -> dict:
    """One set's retrieval figures for `method` (module docstring); `maps`: map_images of
    the set, written into `folder`."""
    tifs, transforms = maps
    pack = _pack(pset, method, tifs, folder, cfg)
    ids = np.arange(pack.region.tile_count[0])  # one level
    bounds, centres = pack.tile_bounds(ids), pack.tile_centers(ids)
    gallery = np.asarray(pack.descriptors[ids], np.float32)
    loc = build_chain(cfg, pack, CameraModel(1, 1, 1, 1, 0, 0)).navigator.localizer
    queries, where, positives, ms = [], [], [], []
    for pi, pair in enumerate(pset.pairs):
        image_b = read_b(pair, pset.rgb_bands)
        rng = np.random.default_rng([seed, pi, sum(map(ord, pset.name))])
        for view in make_views(pair, image_b, views, rng):
            frame, tel = view_frame(loc, view, pset.gsd_m)
            t0 = time.perf_counter()
            look = loc.look(frame, tel, NO_PRIOR)
            if not isinstance(look, Look):
                raise SkyfixError(f"{pset.name}/{pair.id}: view {view.index} could not be made"
                                  f" ready ({look.reason})")
            queries.append(pack.global_descriptor(look.feats.descriptors, look.feats.embedding))
            ms.append((time.perf_counter() - t0) * 1e3)
            e, n = transforms[pair.a] @ (pair.col + view.truth_px[0] + 0.5,
                                         pair.row + view.truth_px[1] + 0.5)
            where.append((e, n))
            positives.append(np.flatnonzero((bounds[:, 0] <= e) & (e <= bounds[:, 2])
                                            & (bounds[:, 1] <= n) & (n <= bounds[:, 3])))
    q, qloc = np.array(queries, np.float32), np.array(where)
    ks = tuple(k for k in RECALL_KS if k <= len(ids))
    scored = {"descriptor": (q, gallery)}
    vlad_dim = pack.region.codebook_k * pack.region.local_dim
    if pack.region.embedding_dim:
        scored["vlad"] = (_unit_rows(q[:, :vlad_dim]), _unit_rows(gallery[:, :vlad_dim]))
        scored["embedding"] = (_unit_rows(q[:, vlad_dim:]), _unit_rows(gallery[:, vlad_dim:]))
    small = tuple(k for k in (1, 3, 5) if k <= len(ids))
    out = {"views": len(q), "tiles": len(ids), "map_images": len(transforms),
           "positives_per_view": round(float(np.mean([len(p) for p in positives])), 2),
           "gsd_m": pset.gsd_m, "registered": pset.registered,
           "look_ms_median": round(float(np.median(ms)), 1)}
    for name, (qq, gg) in scored.items():
        m = retrieval_metrics(qq @ gg.T, positives, qloc, centres, recall_ks=ks, sdm_ks=small,
                              dis_ks=small)
        out[name] = _record(m)
    return out


def _overall(per_set: dict, registered: set[str]) -> dict:
    """View-weighted means over the registered sets, per ranking."""
    sets = [s for name, s in per_set.items() if name in registered]
    total = sum(s["views"] for s in sets)
    out: dict = {"views": total}
    for name in ("descriptor", "vlad", "embedding"):
        have = [s for s in sets if name in s]
        if len(have) != len(sets) or not total:
            continue
        keys = set.intersection(*(set(s[name]) for s in have))
        out[name] = {k: round(sum(s[name][k] * s["views"] for s in have) / total, 4 if
                              k.startswith("sdm") else 1) for k in sorted(keys)}
    return out


def bench_retrieval(pair_dirs: list[Path], out: Path, views: int = 10, seed: int = 0,
                    methods: list[str] | None = None, work: Path | None = None,
                    trained_model: Path | None = None) -> dict:
    """Run the benchmark and write `out` (JSON). `trained_model`: the weights method
    xfeat-xd runs (None: the shipped ones)."""
    methods, sets, problems, cfg = read_sets(pair_dirs, views, methods, trained_model)
    out = Path(out)
    work = Path(work) if work is not None else out.parent / "retrieval-work"
    report = {
        "benchmark": "retrieval", "views_per_pair": views, "seed": seed,
        "positive": "a tile covering the ground under the view's centre",
        "machine": machine(), "skipped_pairs": problems, "methods": {},
    }
    t0 = time.perf_counter()
    registered = {s.name for s in sets if s.registered}
    maps = {s.name: map_images(s, work / s.name) for s in sets}  # read once for every method
    for m in methods:
        per_set = {}
        for pset in sets:
            per_set[pset.name] = run_set(pset, maps[pset.name], m, views, seed,
                                         work / pset.name, cfg)
            print(f"  {m} {pset.name}: {json.dumps(per_set[pset.name]['descriptor'])}",
                  flush=True)
        report["methods"][m] = {"overall": _overall(per_set, registered), "sets": per_set}
    report["machine"]["loadavg_1m_end"] = os.getloadavg()[0]
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report
