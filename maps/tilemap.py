"""What the in-flight localiser reads of a map: the surface a plain map pack
(skyfix.maps.pack.MapPack) and a sharded region pack (skyfix.maps.shards.ShardedPack)
share, so that runtime/nav works on either without knowing which.

Tile ids are the map's own (a sharded pack numbers its tiles across shards). Lookups go
by id arrays, never through a whole-map tile table, so a region too large for memory
answers them by loading only the shards the ids fall in.

    region          Manifest describing the whole map: CRS, bounds, levels, tile size,
                    encoder, terrain and structure grids
    tiles_near      ids of the tiles that can reach a box (a superset; exact tests follow)
    tile_levels / tile_centers / tile_bounds      per-id tile table columns
    tile_features   one tile's cached local features
    search          retrieval: the best tiles of a level for a global descriptor
    terrain_m, structure_window, level_for_gsd, global_descriptor   (shared here)
    map_image       the map's own pixels around a place (ortho.tif), read on demand
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioError

from skyfix.maps.dem import terrain_lookup
from skyfix.maps.pixels import ORTHO_FILE, MapImage, crop_map_image, read_map_image
from skyfix.maps.structure import StructureWindow, crop_structure
from skyfix.maps.survey_points import SURVEY_POINTS_FILE
from skyfix.models.features import global_descriptor
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.geo import grid_convergence_deg
from skyfix.runtime.core.types import TileHit

if TYPE_CHECKING:
    from skyfix.maps.manifest import Manifest

log = logging.getLogger(__name__)
PIXELS_CACHE_MB = 32  # GDAL's block cache while map_image reads
PIXELS_MARGIN = 0.5  # map_image reads this share of the box's side more on every side


class TileMap(ABC):
    """A map opened for flight. Subclasses set `path`, `region`, `crs`, `levels`,
    `codebook` ([K, D] float32), `dem` ([H, W] float32 or None, on the region grid at
    `region.dem_gsd_m`), `structure` (per level [C, Hs, Ws] uint8) and `centre_en`
    ([2] float64 mean of the tile centres: where the local frame of a flight sits)."""

    path: Path
    region: Manifest
    crs: CRS
    levels: tuple[float, ...]
    codebook: np.ndarray
    dem: np.ndarray | None
    structure: list[np.ndarray]
    centre_en: np.ndarray

    @property
    def tile_px(self) -> int:
        return self.region.tile_px

    @cached_property
    def convergence_deg(self) -> float:
        """Grid convergence at `centre_en` (runtime/core/geo.grid_convergence_deg): how far
        the map's grid north lies east of true north, which views are turned by."""
        return grid_convergence_deg(self.crs, *self.centre_en)

    @property
    def shard_count(self) -> int:
        """Shards the map is cut into (0: one plain pack)."""
        return 0

    @property
    def encoder_id(self) -> str:
        return self.region.encoder_id

    @property
    def survey_points_file(self) -> Path | None:
        """The survey's sparse points (maps/survey_points.py) where the pack was made by
        `maps survey` and carries them, else None."""
        listed = SURVEY_POINTS_FILE in self.region.files
        return self.path / SURVEY_POINTS_FILE if listed else None

    @abstractmethod
    def tiles_near(self, centre_en: np.ndarray, half_e_m: float, half_n_m: float) -> np.ndarray:
        """[n] int64 ascending ids of the tiles whose bounds can reach the box
        centre_en +- (half_e_m, half_n_m) (a superset: exact window tests follow)."""

    @abstractmethod
    def tile_levels(self, ids: np.ndarray) -> np.ndarray:
        """[n] int64 level of each tile of [n] int ids."""

    @abstractmethod
    def tile_centers(self, ids: np.ndarray) -> np.ndarray:
        """[n, 2] float64 map (E, N) centre of each tile of [n] int ids."""

    @abstractmethod
    def tile_bounds(self, ids: np.ndarray) -> np.ndarray:
        """[n, 4] float64 (min E, min N, max E, max N) of each tile of [n] int ids."""

    @abstractmethod
    def tile_features(self, tile_id: int) -> tuple[np.ndarray, np.ndarray]:
        """([n, 2] float64 absolute map (E, N), [n, D] float32 descriptors) of one tile,
        strongest keypoint first."""

    @abstractmethod
    def search(self, query: np.ndarray, level: int, top_k: int,
               window: tuple[np.ndarray, np.ndarray] | None = None) -> list[TileHit]:
        """The `top_k` tiles of `level` most similar to the [K * D + G] global descriptor
        `query`, best first, inside `window` (centre_en [2], cov_en [2, 2], as
        skyfix.maps.index.in_window) or over the whole level."""

    def nearest_first(self, ids: np.ndarray, centre_en: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """([n] ids, [n] float64 distances) of tiles [n] `ids` ordered by the distance of
        their centres to `centre_en`, ties by east then north (an order that depends on the
        map's geography only, not on how its tiles are numbered)."""
        c = self.tile_centers(ids)
        dist = np.hypot(c[:, 0] - centre_en[0], c[:, 1] - centre_en[1])
        order = np.lexsort((c[:, 1], c[:, 0], dist))
        return ids[order], dist[order]

    def terrain_m(self, east_m, north_m) -> np.ndarray:
        """Terrain height (metres, the DEM's vertical datum) at map points, bilinear in the
        map's DEM; NaN where unknown (no DEM, outside it, or a nodata neighbour).

        `east_m`, `north_m`: scalars or arrays of one shape; returns float64 of that shape.
        """
        e, n = np.broadcast_arrays(np.asarray(east_m, np.float64), np.asarray(north_m, np.float64))
        if self.dem is None or self.region.dem_gsd_m is None:
            return np.full(e.shape, np.nan)
        b = self.region.bounds_en
        return terrain_lookup(self.dem, (b[0], b[3]), self.region.dem_gsd_m, e, n)

    def structure_window(self, level: int, centre_en: np.ndarray, half_m: float
                         ) -> StructureWindow | None:
        """`level`'s structure channels in the square centre_en +- half_m (zeros outside
        the map), or None when the map has none."""
        if level >= len(self.structure):
            return None
        b = self.region.bounds_en
        return crop_structure(self.structure[level], self.region.structure_gsds_m[level],
                              (b[0], b[3]), centre_en, half_m)

    _pixels_last: tuple[float, tuple[float, ...], MapImage | None] | None = None

    @cached_property
    def _ortho(self) -> rasterio.DatasetReader | None:
        """The map's ortho.tif, opened on first use (None: the map has none, or it does not
        open; said once in the log)."""
        path = self.path / ORTHO_FILE
        if not path.is_file():
            return None
        try:
            return rasterio.open(path)
        except RasterioError as e:
            log.warning("%s does not open (%s): fixes are not refined on its pixels", path, e)
            return None

    @property
    def has_pixels(self) -> bool:
        """Whether the map's own pixels (ortho.tif) are there for map_image."""
        return self._ortho is not None

    def map_image(self, gsd_m: float, box_en: tuple[float, float, float, float]
                  ) -> MapImage | None:
        """The map's pixels at level GSD `gsd_m` over box_en (min E, min N, max E, max N),
        or None where the map has no ortho.tif, the box misses it, or it cannot be read
        (a damaged file: logged, and matching goes on without its pixels).

        What was read last is kept, PIXELS_MARGIN wider than asked on every side, and
        boxes inside it are cut from it: consecutive frames ask for nearly the same place,
        and GDAL's block cache is held small (its default is 5 % of RAM)."""
        ds = self._ortho
        if ds is None:
            return None
        last = self._pixels_last
        if (last is not None and last[0] == gsd_m and last[1][0] <= box_en[0]
                and last[1][1] <= box_en[1] and box_en[2] <= last[1][2]
                and box_en[3] <= last[1][3]):
            return None if last[2] is None else crop_map_image(last[2], box_en)
        m = PIXELS_MARGIN * max(box_en[2] - box_en[0], box_en[3] - box_en[1])
        wide = (box_en[0] - m, box_en[1] - m, box_en[2] + m, box_en[3] + m)
        try:
            with rasterio.Env(GDAL_CACHEMAX=PIXELS_CACHE_MB):
                image = read_map_image(ds, gsd_m, wide)
        except RasterioError as e:
            log.warning("%s: cannot read %s (%s)", self.path / ORTHO_FILE, box_en, e)
            return None
        self._pixels_last = (gsd_m, wide, image)
        return None if image is None else crop_map_image(image, box_en)

    def level_for_gsd(self, gsd_m: float) -> int:
        """The level to rectify a frame of ground resolution `gsd_m` to.

        The finest level whose GSD is at least 0.9 * gsd_m: the view is then never
        upsampled by more than ~10 % (upsampling adds pixels but no detail). When every
        level is finer than that, the coarsest level. A non-finite or non-positive gsd_m
        selects the finest level (the frame is rejected downstream anyway).
        """
        gsds = np.asarray(self.levels)
        if not math.isfinite(gsd_m) or gsd_m <= 0:
            return int(gsds.argmin())
        ok = np.flatnonzero(gsds >= 0.9 * gsd_m)
        return int(ok[gsds[ok].argmin()]) if len(ok) else int(gsds.argmax())

    def global_descriptor(self, descriptors: np.ndarray, embedding: np.ndarray | None = None
                          ) -> np.ndarray:
        """A view's global descriptor, as the map's tiles have theirs: the VLAD of its [N, D]
        local descriptors with the map's codebook, then its [G] embedding where the map's
        encoder gives one (region.embedding_dim; LocalFeatures.embedding)."""
        g = self.region.embedding_dim
        if g and (embedding is None or len(embedding) != g):
            raise SkyfixError(f"the map's tiles carry a {g}-d embedding and this view's "
                              "encoder gives none of that length")
        return global_descriptor(np.asarray(descriptors, np.float32), self.codebook,
                                 embedding if g else None)
