"""TensorRT runner (TensorRT 10, name-based tensor API) for Jetson and CUDA GPUs.

The engine is built from the ONNX file (FP16 by default, optional INT8 with an
entropy calibrator fed from map tiles) and cached on disk under a key made of
the ONNX sha256, the TensorRT version, the GPU name, the precision and the
shape profile, so a JetPack upgrade or another GPU never loads a stale engine.

The profile is checked against the ONNX graph's declared inputs before TensorRT
is imported (backends/trt_profile.py), so a bad profile is one line on any machine,
not a failed build minutes into it. In flight the profile is `view_profile`: views
from [1, 1, m, m] up to the rectified-view size [1, 1, S, S] (S = rectify.max_view_px
rounded up to the model's multiple m), the same tensors ONNX Runtime sees, so flight
features match the map's.

TensorRT comes from JetPack (or NVIDIA's wheels) and is never installed by
skyfix; `tensorrt` and the CUDA bindings are imported only inside this
module's functions. Device memory goes through backends/cuda_device.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from skyfix.runtime.backends.base import Runner, TensorSpec, static_dim
from skyfix.runtime.backends.cuda_device import CudaDevice, open_device
from skyfix.runtime.backends.trt_profile import ShapeProfile, check_engine_inputs
from skyfix.runtime.core.errors import SkyfixError

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "skyfix" / "engines"


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a one-line SkyfixError saying how to get it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise SkyfixError(
            "TensorRT is not installed or cannot load here (it ships with JetPack on Jetson, "
            f"or as NVIDIA's tensorrt wheels on a CUDA machine): {exc}; "
            "use the onnxruntime backend instead") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise SkyfixError(f"TensorRT {trt.__version__} found; skyfix needs TensorRT >= 10")
    return trt


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, precision: str,
                     shapes: ShapeProfile | None = None) -> str:
    """Hex key of an engine: changes with the model, TensorRT, the GPU, precision, profile."""
    profile = {k: [list(s) for s in v] for k, v in sorted((shapes or {}).items())}
    text = json.dumps({"onnx": onnx_sha256, "trt": trt_version, "gpu": gpu_name,
                       "precision": precision, "profile": profile}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- engine build


def make_calibrator(trt: Any, device: CudaDevice,
                    feeds: Iterable[Mapping[str, np.ndarray]], cache_path: Path) -> Any:
    """INT8 entropy calibrator over `feeds` (e.g. preprocessed map tiles, batch 1, all
    shaped like the profile's `opt` shape); the calibration table is cached at `cache_path`."""

    class TileCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._feeds: Iterator[Mapping[str, np.ndarray]] = iter(feeds)
            self._buffers: dict[str, tuple[int, int]] = {}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._feeds, None)
            if batch is None:
                return None
            pointers = []
            for name in names:
                host = np.ascontiguousarray(batch[name])
                ptr, size = self._buffers.get(name, (0, 0))
                if size < host.nbytes:
                    if ptr:
                        device.free(ptr)
                    ptr, size = device.malloc(host.nbytes), host.nbytes
                    self._buffers[name] = (ptr, size)
                device.htod(ptr, host)
                pointers.append(ptr)
            device.synchronize()
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.exists() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_bytes(bytes(cache))

    return TileCalibrator()


def build_engine(trt: Any, onnx_path: Path, precision: Precision, shapes: ShapeProfile | None,
                 calibrator: Any = None, workspace_bytes: int = 1 << 30) -> bytes:
    """Serialized engine built from `onnx_path` with one optimisation profile."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SkyfixError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        if shapes and tensor.name in shapes:
            profile.set_shape(tensor.name, *shapes[tensor.name])
        elif any(d < 0 for d in dims):
            raise SkyfixError(f"input {tensor.name} {list(dims)} has dynamic dims: pass "
                              "shapes={name: (min, opt, max)} to build a TensorRT engine")
        else:
            profile.set_shape(tensor.name, dims, dims, dims)
    config.add_optimization_profile(profile)
    if precision == "int8":
        if calibrator is None:
            raise SkyfixError("INT8 needs calibration data: pass calibration_feeds "
                              "(preprocessed map tiles)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SkyfixError(f"TensorRT failed to build an engine for {onnx_path.name} "
                          "(see the TensorRT log above)")
    return bytes(serialized)


def calibration_images(folder: Path, input_name: str, size_wh: tuple[int, int],
                       limit: int = 64) -> list[dict[str, np.ndarray]]:
    """INT8 calibration feeds from map-tile images in `folder`: gray, resized to
    `size_wh`, scaled to [0, 1] float32, shaped [1, 1, H, W]; at most `limit`."""
    import cv2

    files = sorted(p for p in Path(folder).glob("*")
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"))[:limit]
    feeds = []
    for path in files:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise SkyfixError(f"calibration image {path} cannot be read")
        gray = cv2.resize(gray, size_wh, interpolation=cv2.INTER_AREA)
        feeds.append({input_name: (gray.astype(np.float32) / 255.0)[None, None]})
    if not feeds:
        raise SkyfixError(f"no calibration images (png/jpg/tif) in {folder}")
    return feeds


def build_cached_engine(onnx_path: Path, precision: Precision = "fp16",
                        shapes: ShapeProfile | None = None,
                        calibration_feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
                        cache_dir: Path | None = None, input_multiple: int = 1) -> Path:
    """Build (or find in the cache) the engine of `onnx_path`; returns its path."""
    runner = TensorRTRunner(onnx_path, precision=precision, shapes=shapes,
                            calibration_feeds=calibration_feeds, cache_dir=cache_dir,
                            input_multiple=input_multiple)
    try:
        return runner.engine_path
    finally:
        runner.close()


# ---------------------------------------------------------------- runner


class TensorRTRunner(Runner):
    """An ONNX model (built and cached) or a serialized `.engine`/`.plan` on TensorRT.

    For an ONNX model, `shapes` (checked against the graph before TensorRT is imported,
    dynamic dims multiples of `input_multiple`) is the engine's optimisation profile; an
    INT8 engine without `calibration_feeds` must already be in `cache_dir`.
    """

    backend = "tensorrt"

    def __init__(self, model_path: Path, precision: Precision = "fp16",
                 shapes: ShapeProfile | None = None,
                 calibration_feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
                 cache_dir: Path | None = None, device_id: int = 0,
                 workspace_bytes: int = 1 << 30, input_multiple: int = 1) -> None:
        if precision not in ("fp32", "fp16", "int8"):
            raise SkyfixError(f"unknown TensorRT precision {precision!r} (fp32, fp16, int8)")
        model_path = Path(model_path)
        if not model_path.exists():
            raise SkyfixError(f"model file not found: {model_path}")
        if model_path.suffix not in (".engine", ".plan"):
            check_engine_inputs(model_path, shapes, input_multiple)
        trt = import_tensorrt()
        self.trt = trt
        self.device = open_device(device_id)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)

        if model_path.suffix in (".engine", ".plan"):
            self.engine_path = model_path
            engine = runtime.deserialize_cuda_engine(model_path.read_bytes())
        else:
            engine = self._cached_engine(runtime, model_path, precision, shapes,
                                         calibration_feeds, cache_dir, workspace_bytes)
        if engine is None:
            raise SkyfixError(f"TensorRT cannot load the engine for {model_path.name} "
                              "(built by another TensorRT version or GPU?)")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.provider = f"TensorRT {trt.__version__} {precision} on {self.device.gpu_name}"

        specs_in, specs_out = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            spec = TensorSpec(name, tuple(static_dim(d) for d in engine.get_tensor_shape(name)),
                              dtype)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (specs_in if is_input else specs_out).append(spec)
        self.inputs, self.outputs = tuple(specs_in), tuple(specs_out)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device ptr, bytes)

    def _cached_engine(self, runtime: Any, onnx_path: Path, precision: Precision,
                       shapes: ShapeProfile | None, calibration_feeds: Any,
                       cache_dir: Path | None, workspace_bytes: int) -> Any:
        from skyfix.runtime.core.files import file_sha256

        onnx_sha = file_sha256(onnx_path)
        key = engine_cache_key(onnx_sha, self.trt.__version__, self.device.gpu_name,
                               precision, shapes)
        cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        self.engine_path = cache_dir / f"{onnx_path.stem}-{precision}-{key[:16]}.engine"
        if self.engine_path.exists():
            engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is not None:
                return engine
            log.warning("cached engine %s does not load; rebuilding", self.engine_path)
        calibrator = None
        if precision == "int8":
            if calibration_feeds is None:
                raise SkyfixError(
                    f"no INT8 engine {self.engine_path} and no calibration data to build one "
                    "(map packs hold no tile images): build it once with `skyfix models "
                    "engine --config CONFIG --calib TILE_IMAGES`, or use trt_precision fp16")
            calibrator = make_calibrator(self.trt, self.device, calibration_feeds,
                                         self.engine_path.with_suffix(".calib"))
        log.info("building TensorRT %s engine for %s (takes minutes on Jetson)",
                 precision, onnx_path.name)
        serialized = build_engine(self.trt, onnx_path, precision, shapes, calibrator,
                                  workspace_bytes)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.engine_path.with_suffix(".tmp")
        tmp.write_bytes(serialized)
        tmp.replace(self.engine_path)
        self.engine_path.with_suffix(".json").write_text(json.dumps(
            {"onnx": str(onnx_path), "onnx_sha256": onnx_sha, "tensorrt": self.trt.__version__,
             "gpu": self.device.gpu_name, "precision": precision,
             "shapes": {k: [list(s) for s in v] for k, v in (shapes or {}).items()}}, indent=2))
        return runtime.deserialize_cuda_engine(serialized)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.device.free(ptr)
            ptr, size = self.device.malloc(nbytes), nbytes
            self._buffers[name] = (ptr, size)
        return ptr

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        hosts = {}
        for spec in self.inputs:
            host = np.ascontiguousarray(feeds[spec.name])
            hosts[spec.name] = host  # keep alive until the stream synchronises
            if not self.context.set_input_shape(spec.name, host.shape):
                raise SkyfixError(f"tensorrt: input {spec.name} shape {list(host.shape)} is "
                                  "outside the engine's optimisation profile")
            ptr = self._device_buffer(spec.name, host.nbytes)
            self.device.htod(ptr, host)
            self.context.set_tensor_address(spec.name, ptr)
        results = {}
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise SkyfixError(f"tensorrt: output {spec.name} has data-dependent shape "
                                  f"{list(shape)}, not supported")
            out = np.empty(shape, spec.dtype)
            ptr = self._device_buffer(spec.name, out.nbytes)
            self.context.set_tensor_address(spec.name, ptr)
            results[spec.name] = (out, ptr)
        if not self.context.execute_async_v3(self.device.stream_handle):
            raise SkyfixError("tensorrt: execute_async_v3 failed (see the TensorRT log)")
        for out, ptr in results.values():
            self.device.dtoh(out, ptr)
        self.device.synchronize()
        return {name: out for name, (out, _) in results.items()}

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.device.free(ptr)
        self._buffers.clear()
        self.context = None
        self.engine = None
        self.device.close()
