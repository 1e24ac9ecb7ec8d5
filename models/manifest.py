"""Model manifests: the JSON file shipped next to every exported network.

A manifest records what a runner and an encoder need to use a model without
the framework that produced it: input and output names, shapes (ints for
static dims, strings such as "H" or "H/8" for dynamic ones), dtypes, the input
normalisation, and fingerprints (sha256 of the model file and of the source
weights). `load_manifest` refuses a model file whose sha256 does not match.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import file_sha256
from skyfix.runtime.core.provenance import check_manifest_signature

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output. `shape`: ints are static, strings name dynamic dims."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class ModelManifest:
    """What is needed to run `model_file` without its training framework."""

    model_id: str
    model_file: str
    sha256: str
    format: str
    opset: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    normalisation: str
    input_multiple: int = 1
    descriptor_dim: int = 0
    source: dict[str, str] = field(default_factory=dict)
    version: int = MANIFEST_VERSION
    global_dim: int = 0  # length of the `global` output (0: none)
    training_data: tuple[dict[str, str], ...] = ()  # what trained it: kind, name, licence

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def summary_rows(self) -> list[tuple[str, str]]:
        """(label, value) rows for `skyfix models info`."""
        def tensors(items: tuple[TensorInfo, ...]) -> str:
            return "; ".join(f"{t.name} [{', '.join(map(str, t.shape))}] {t.dtype}"
                             for t in items)

        rows = [("model", self.model_id), ("file", self.model_file),
                ("format", f"{self.format} (opset {self.opset})"),
                ("inputs", tensors(self.inputs)), ("outputs", tensors(self.outputs)),
                ("normalisation", self.normalisation),
                ("input multiple", str(self.input_multiple)),
                ("descriptor dim", str(self.descriptor_dim)), ("sha256", self.sha256)]
        rows += [(f"source {key}", value) for key, value in self.source.items()]
        if self.global_dim:
            rows.append(("global dim", str(self.global_dim)))
        rows += [(f"trained on ({d.get('split', 'train')})",
                  f"{d.get('name', '?')}: {d.get('licence', '?')}") for d in self.training_data]
        return rows

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        raw = json.loads(text)
        if raw.get("version") != MANIFEST_VERSION:
            raise SkyfixError(f"unsupported manifest version {raw.get('version')!r} "
                              f"(this skyfix reads version {MANIFEST_VERSION})")
        raw["inputs"] = tuple(_tensor(t) for t in raw["inputs"])
        raw["outputs"] = tuple(_tensor(t) for t in raw["outputs"])
        raw["training_data"] = tuple(raw.get("training_data", ()))
        return cls(**raw)


def _tensor(raw: dict) -> TensorInfo:
    return TensorInfo(raw["name"], tuple(raw["shape"]), raw["dtype"])


def manifest_path(model_path: Path) -> Path:
    """The manifest lives next to the model: `xfeat.onnx` -> `xfeat.onnx.json`."""
    return model_path.with_name(model_path.name + ".json")


def write_manifest(manifest: ModelManifest, model_path: Path) -> Path:
    path = manifest_path(model_path)
    path.write_text(manifest.to_json())
    return path


def load_manifest(model_path: Path, verify: bool = True) -> ModelManifest:
    """The manifest of `model_path`; with `verify`, the model file's sha256 must match it."""
    model_path = Path(model_path)
    path = manifest_path(model_path)
    if not model_path.exists():
        raise SkyfixError(f"model file not found: {model_path}")
    if not path.exists():
        raise SkyfixError(f"model manifest not found: {path} (re-export the model)")
    try:
        manifest = ModelManifest.from_json(path.read_text())
    except (KeyError, TypeError, ValueError) as exc:
        raise SkyfixError(f"unreadable model manifest {path}: {exc}") from None
    if verify:
        actual = file_sha256(model_path)
        if actual != manifest.sha256:
            raise SkyfixError(f"{model_path.name} sha256 {actual[:12]}... does not match its "
                              f"manifest ({manifest.sha256[:12]}...): re-export the model")
    return manifest


def check_model_signature(model_path: Path, trusted_key: Path) -> None:
    """Raise a one-line SkyfixError unless the manifest of `model_path` is signed by
    `trusted_key` (see runtime.core.provenance)."""
    path = manifest_path(Path(model_path))
    if not path.is_file():
        raise SkyfixError(f"model manifest not found: {path} (re-export the model)")
    check_manifest_signature(path, trusted_key, f"model {model_path}")
