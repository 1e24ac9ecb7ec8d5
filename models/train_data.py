"""Training data for the cross-date encoder: co-registered scenes and seeded batches.

Three kinds of source (a `data:` entry of the training config, see skyfix.models.train):

    series: FOLDER   co-registered GeoTIFFs of one place at several dates (any two form a
                     pair; cropped to the smallest common size, e.g. the NAIP series)
    pairs:  FOLDER   a pair set (pairs.csv + meta.json, skyfix.models.pair_sets)
    ortho:  FILE     one image; the second date is synthetic appearance change

Every source says its `licence` and `split` (train or val: validation is split by source,
never by pair). A batch is drawn from one numpy generator seeded by (seed, step), so a
step's batch does not depend on what ran before it (resuming gives the same batches):

    a       [B, S, S, 3] uint8 BGR   crop of date d1 at (x, y)
    b       [B, S, S, 3] uint8 BGR   crop of date d2 at (x + dx, y + dy) (same place and scale)
    offset  [B, 2] float32           (dx, dy) px: b pixel p shows a pixel p + offset
    synthetic [B] bool               d1 == d2 (an ortho): the appearance change is made up
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from skyfix.models.pair_sets import read_bgr, read_pair, read_pair_set
from skyfix.runtime.core.errors import SkyfixError

Kind = Literal["series", "pairs", "ortho"]
KINDS: tuple[Kind, ...] = ("series", "pairs", "ortho")
SERIES_SUFFIXES = (".tif", ".tiff", ".png", ".jpg")


@dataclass(frozen=True)
class Source:
    """One `data:` entry. `bands`: 1-based RGB bands (pairs sets take theirs from meta.json);
    `scales`: image scales trained at (0.5 = half resolution); `weight`: sampling share."""

    kind: Kind
    path: Path
    licence: str
    split: Literal["train", "val"] = "train"
    bands: tuple[int, ...] = (1, 2, 3)
    scales: tuple[float, ...] = (1.0,)
    weight: float = 1.0

    @property
    def name(self) -> str:
        """The data's name wherever it lies: its folder and file (or folder) name."""
        return f"{self.path.parent.name}/{self.path.name}"


@dataclass(frozen=True)
class Scene:
    """Co-registered dates of one place at one scale: images [D, H, W, 3] uint8 BGR."""

    name: str
    images: np.ndarray


@dataclass(frozen=True)
class Batch:
    a: np.ndarray
    b: np.ndarray
    offset: np.ndarray
    synthetic: np.ndarray


def _series_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SkyfixError(f"training series {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SERIES_SUFFIXES)
    if len(files) < 2:
        raise SkyfixError(f"training series {folder}: needs at least two dated images")
    return files


def _stack(name: str, images: list[np.ndarray], scale: float, crop_px: int) -> Scene:
    h = min(i.shape[0] for i in images)
    w = min(i.shape[1] for i in images)
    stack = np.stack([i[:h, :w] for i in images])
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        stack = np.stack([cv2.resize(i, size, interpolation=cv2.INTER_AREA) for i in stack])
    if min(stack.shape[1:3]) < crop_px:
        raise SkyfixError(f"training scene {name} at scale {scale} is {stack.shape[2]}x"
                          f"{stack.shape[1]} px, smaller than the {crop_px} px crop")
    return Scene(f"{name}@{scale:g}", stack)


def source_images(source: Source) -> list[Path]:
    """The image files `source` reads (SkyfixError where it cannot be read)."""
    if source.kind == "series":
        return _series_files(source.path)
    if source.kind == "pairs":
        pset, _ = read_pair_set(source.path)
        return [path for p in pset.pairs for path in (p.a, p.b)]
    return [source.path]


def load_scenes(source: Source, crop_px: int) -> list[Scene]:
    """The scenes of one source, at each of its scales."""
    if source.kind == "series":
        groups = [(source.path.name, [read_bgr(p, source.bands)
                                      for p in _series_files(source.path)])]
    elif source.kind == "pairs":
        pset, problems = read_pair_set(source.path)
        if problems:
            raise SkyfixError(f"training pair set {source.path}: {problems[0]}")
        groups = [(f"{pset.name}/{p.id}", list(read_pair(p, pset.rgb_bands)))
                  for p in pset.pairs]
    elif source.kind == "ortho":
        if not source.path.is_file():
            raise SkyfixError(f"training ortho {source.path}: no such file")
        groups = [(source.path.stem, [read_bgr(source.path, source.bands)])]
    else:
        raise SkyfixError(f"unknown training source kind {source.kind!r} "
                          f"(choose from {', '.join(KINDS)})")
    return [_stack(name, images, s, crop_px) for name, images in groups for s in source.scales]


class SceneSampler:
    """Seeded crops from the scenes of some sources (`draw(rng, batch)` -> Batch)."""

    def __init__(self, sources: list[Source], crop_px: int, max_shift: float) -> None:
        if not sources:
            raise SkyfixError("no training data in this split")
        self.crop_px = int(crop_px)
        self.max_shift = float(max_shift)
        self.scenes: list[list[Scene]] = [load_scenes(s, crop_px) for s in sources]
        weights = np.array([s.weight for s in sources], np.float64)
        self.weights = weights / weights.sum()

    def draw(self, rng: np.random.Generator, batch: int) -> Batch:
        s = self.crop_px
        a = np.empty((batch, s, s, 3), np.uint8)
        b = np.empty_like(a)
        offset = np.zeros((batch, 2), np.float32)
        synthetic = np.zeros(batch, bool)
        for i in range(batch):
            group = self.scenes[rng.choice(len(self.scenes), p=self.weights)]
            scene = group[rng.integers(len(group))]
            dates, h, w = scene.images.shape[:3]
            d1, d2 = (0, 0) if dates == 1 else rng.choice(dates, 2, replace=False)
            shift = min(self.max_shift * s, (w - s) / 2, (h - s) / 2)
            dx, dy = (int(round(v)) for v in rng.uniform(-shift, shift, 2))
            x = int(rng.integers(max(0, -dx), w - s - max(0, dx) + 1))
            y = int(rng.integers(max(0, -dy), h - s - max(0, dy) + 1))
            a[i] = scene.images[d1, y:y + s, x:x + s]
            b[i] = scene.images[d2, y + dy:y + dy + s, x + dx:x + dx + s]
            offset[i] = (dx, dy)
            synthetic[i] = dates == 1
        return Batch(a, b, offset, synthetic)
