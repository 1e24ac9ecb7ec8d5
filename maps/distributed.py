"""Map-pack builds on a Ray cluster: tile feature extraction fanned out over Ray tasks.

    build_pack (skyfix.maps.build) --extract=RayChunkExtractor--> one Ray task per chunk of
    CHUNK_TILES tiles (read tiles from ortho.tif, local features) --> chunk_NNNNN.npz written
    by the driver, in chunk order --> the single-machine merge / codebook / VLAD / index

Only the expensive, embarrassingly parallel step (reading + encoding every tile) runs on
the workers; each task runs the very function the single-machine build runs
(skyfix.maps.tiles' chunk encoder) on the same chunk of tile specs, and the driver writes
the chunk files under the same names. Everything after that (merge, seeded codebook,
VLAD descriptors, FAISS index, manifest) is the single-machine code, so a Ray build is
identical, file for file, to a local build of the same inputs (the manifest differs only
in `created_utc` and its own digest). Resumption works as for a local build: chunk files
already in the partial folder are not recomputed.

Workers read the mosaic `ortho.tif` from the partial build folder, so on a multi-node
cluster that folder must be on a file system every node mounts (the usual Ray setup for
data on disk); a worker that cannot see it fails with one clear line.

Ray is an optional dependency (`pip install 'skyfix[scale]'`): it is imported inside the
functions here, never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from tqdm import tqdm

from skyfix.maps.tiles import CHUNK_TILES, BuildProgress, TileSpec, _encode_chunk
from skyfix.models.features import Encoder
from skyfix.runtime.core.errors import SkyfixError

if TYPE_CHECKING:
    from skyfix.maps.build import Grid

IN_FLIGHT_PER_CPU = 2  # chunk tasks queued per cluster CPU (bounds driver memory)


def import_ray() -> Any:
    """The `ray` module, or SkyfixError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SkyfixError("--ray needs the Ray extra: pip install 'skyfix[scale]'") from None
    return ray


@contextmanager
def ray_session(address: str | None, workers: int | None = None) -> Iterator[Any]:
    """Connect to the Ray cluster at `address` ("auto": the one `ray start` runs here), or
    start a local one with `workers` CPUs when `address` is None. Reuses a session that is
    already up (and then leaves it up); shuts down only what it started. Yields `ray`."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if workers is not None and workers < 1:
        raise SkyfixError(f"Ray workers must be at least 1, got {workers}")
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                  configure_logging=False)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local cluster"
        raise SkyfixError(f"cannot start Ray on {where}: {str(e).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def encoder_recipe(encoder: Encoder, threads: int = 1) -> tuple:
    """What a worker needs to make the same encoder itself: an inference session (ONNX
    Runtime, TensorRT) cannot be sent to another process. XFeat travels as its settings
    (ONNX Runtime: the provider it really runs on, `threads` intra-op threads; TensorRT:
    the same engine options, so each worker loads the cached engine or builds the same
    one); an encoder of plain Python objects (RootSIFT) travels as it is."""
    from skyfix.models.xfeat import XFeatEncoder

    if isinstance(encoder, XFeatEncoder):
        runner = encoder.runner
        opts = dict(encoder.backend_opts)
        if runner.backend == "onnxruntime":
            provider = "cuda" if "CUDA" in str(getattr(runner, "provider", "")) else "cpu"
            opts = {"provider": provider, "intra_op_threads": max(1, threads)}
        return ("xfeat", encoder.max_features, encoder.detection_threshold,
                str(encoder.model_path), runner.backend, opts, encoder.nms_size)
    return ("object", encoder)


_ENCODERS: dict[str, Encoder] = {}  # a worker process's own encoders, by recipe


def _worker_encoder(recipe: tuple) -> Encoder:
    """The worker's own encoder of `recipe`, made once per worker process."""
    if recipe[0] == "object":
        return recipe[1]
    key = repr(recipe)
    if key not in _ENCODERS:
        from skyfix.models.xfeat import XFeatEncoder

        _, max_features, threshold, model, backend, opts, nms = recipe
        _ENCODERS[key] = XFeatEncoder(max_features, threshold, model, backend, dict(opts), nms)
    return _ENCODERS[key]


def _encode_task(ortho: str, grid: Grid, specs: Sequence[TileSpec], tile_px: int,
                 recipe: tuple) -> dict[str, np.ndarray]:
    """One chunk on a worker: the single-machine chunk encoder, unchanged, with the
    worker's own encoder (`encoder_recipe`)."""
    import cv2

    cv2.setNumThreads(1)  # one task per CPU: OpenCV's own threads would oversubscribe
    if not os.path.isfile(ortho):
        raise SkyfixError(f"Ray worker on {os.uname().nodename} cannot read {ortho}"
                          " (the build folder must be on a file system every node mounts)")
    try:
        with rasterio.open(ortho) as ds:
            return _encode_chunk(ds, grid, specs, tile_px, _worker_encoder(recipe))
    except RasterioError as e:
        raise SkyfixError(f"{Path(ortho).name}: read failed ({e})") from None


class RayChunkExtractor:
    """Drop-in for skyfix.maps.tiles.extract_chunks that runs the chunks as Ray tasks.

    Needs a Ray session (`ray_session`). `cpus_per_task`/`gpus_per_task` are the Ray
    resources each chunk task asks for (a GPU encoder on GPU workers: gpus_per_task=1).
    """

    def __init__(self, cpus_per_task: float = 1.0, gpus_per_task: float = 0.0) -> None:
        self.cpus_per_task, self.gpus_per_task = cpus_per_task, gpus_per_task

    def __call__(self, ortho: Path, grid: Grid, specs: Sequence[TileSpec], tile_px: int,
                 encoder: Encoder, work: Path, progress: bool,
                 on_progress: Callable[[BuildProgress], None] | None = None) -> list[Path]:
        ray = import_ray()
        if not ray.is_initialized():
            raise SkyfixError("RayChunkExtractor needs a Ray session (use ray_session)")
        groups = [specs[i:i + CHUNK_TILES] for i in range(0, len(specs), CHUNK_TILES)]
        paths = [work / f"chunk_{i:05d}.npz" for i in range(len(groups))]
        todo = [i for i, p in enumerate(paths) if not p.is_file()]
        resumed = len(specs) - sum(len(groups[i]) for i in todo)
        task = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
                          max_retries=2)(_encode_task)
        grid_ref = ray.put(grid)
        enc_ref = ray.put(encoder_recipe(encoder, int(self.cpus_per_task)))
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        limit = IN_FLIGHT_PER_CPU * cpus
        pending: dict[Any, int] = {}
        done = resumed
        if on_progress is not None:
            on_progress(BuildProgress(done, len(specs), resumed))
        with tqdm(total=len(specs), initial=resumed, desc="map tiles (ray)", unit="tile",
                  disable=not progress) as bar:
            queue = iter(todo)
            while True:
                for i in queue:
                    pending[task.remote(str(ortho), grid_ref, groups[i], tile_px,
                                        enc_ref)] = i
                    if len(pending) >= limit:
                        break
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ready[0])
                arrays = _get(ray, ready[0])
                part = paths[i].with_name(paths[i].stem + ".part.npz")
                np.savez(part, **arrays)
                os.replace(part, paths[i])
                done += len(groups[i])
                bar.update(len(groups[i]))
                if on_progress is not None:
                    on_progress(BuildProgress(done, len(specs), resumed))
        return paths


def _get(ray: Any, ref: Any) -> dict[str, np.ndarray]:
    """The task's result, with a worker's SkyfixError re-raised as itself (one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.as_instanceof_cause()
        if isinstance(cause, SkyfixError):
            raise SkyfixError(str(cause.args[0]) if cause.args else str(cause)) from None
        raise SkyfixError(f"Ray chunk task failed: {str(e).strip().splitlines()[-1]}") from None


def build_pack_ray(orthos: Sequence[Path], out: Path, address: str | None = None,
                   workers: int | None = None, gpus_per_task: float = 0.0,
                   **build_kwargs: Any) -> Path:
    """`skyfix.maps.build.build_pack` with the tile chunks computed on Ray.

    `address`: a Ray cluster ("auto" or "ray://host:10001"), or None for a local cluster
    of `workers` CPUs. Other arguments as build_pack. Returns `out`.
    """
    from skyfix.maps.build import build_pack

    with ray_session(address, workers):
        return build_pack(orthos, out, extract=RayChunkExtractor(gpus_per_task=gpus_per_task),
                          **build_kwargs)
