"""Typed configuration: YAML -> frozen dataclasses.

Every section and key has a documented default, so an empty file (or none) is a
valid configuration. An unknown key, or a value of the wrong type, is an error
that names the key (`match.min_inliers`), never silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from skyfix.runtime.errors import SkyfixError


@dataclass(frozen=True)
class EncoderConfig:
    # The encoder itself is the one the map pack was built with (its manifest names it).
    backend: str = "onnxruntime"  # network runner: onnxruntime | tensorrt
    provider: str = "cpu"  # onnxruntime: cpu | cuda | auto (cuda when it really loads)
    threads: int = 0  # onnxruntime intra-op threads (0: onnxruntime decides)
    max_features: int = 2048  # keypoints per frame for learned encoders


@dataclass(frozen=True)
class RectifyConfig:
    max_view_px: int = 1024  # longest side of the north-up view; larger footprints are cropped
    max_off_nadir_deg: float = 45.0  # frames looking further from straight down are skipped


@dataclass(frozen=True)
class RetrieveConfig:
    top_k: int = 5  # tiles re-ranked by local matching
    window_sigma: float = 3.0  # prior window radius in filter standard deviations ...
    window_margin_m: float = 40.0  # ... plus this margin
    global_after_s: float = 10.0  # search the whole pack after this long without a fix


@dataclass(frozen=True)
class MatchConfig:
    ratio: float = 0.85  # Lowe ratio for mutual nearest-neighbour matches
    ransac_px: float = 3.0  # MAGSAC threshold in view pixels
    min_inliers: int = 25  # fewer consistent matches -> rejected ("few_inliers")
    max_scale_err: float = 0.15  # |match scale - 1| above this -> rejected ("scale")
    max_rotation_deg: float = 8.0  # view-to-map rotation above this -> rejected ("heading")
    ambiguity_ratio: float = 0.8  # a distant second tile with this share of inliers -> "ambiguous"
    ambiguity_radius_m: float = 20.0  # second-best fixes closer than this agree, not compete
    attitude_sigma_deg: float = 0.5  # 1-sigma error of the autopilot's roll/pitch
    sigma_floor_m: float = 0.5  # smallest 1-sigma a fix may claim


@dataclass(frozen=True)
class FilterConfig:
    accel_sigma_mps2: float = 1.5  # white-acceleration process noise (constant-velocity model)
    nis_gate: float = 13.8  # chi-square, 2 dof, 99.9 %
    rate_hz: float = 10.0  # estimate output rate
    init_vel_sigma_mps: float = 10.0
    max_speed_mps: float = 40.0  # two fixes further apart than this allows cannot start the filter
    divergence_after_gated: int = 3  # this many gated fixes in a row -> filter reset, global search


@dataclass(frozen=True)
class OutputConfig:
    system_id: int = 1
    component_id: int = 191  # MAV_COMP_ID_ONBOARD_COMPUTER
    gps_id: int = 1  # GPS instance the autopilot expects (GPS2 -> 1)
    satellites: int = 10  # reported satellites_visible while we claim a fix
    lock_budget_s: float = 5.0  # after this long without a fix, fix_type drops to 0
    max_sigma_m: float = 50.0  # never claim a 3D fix with a larger 1-sigma


@dataclass(frozen=True)
class Config:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    rectify: RectifyConfig = field(default_factory=RectifyConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SkyfixError(f"config section '{where or 'top level'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise SkyfixError(f"unknown config key '{name}'")
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name)
    if isinstance(tp, types.UnionType):
        tp = next(t for t in typing.get_args(tp) if t is not type(None))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
        raise SkyfixError(f"config key '{name}' must be {tp.__name__}, got {value!r}")
    return value


def load_config(path: Path | None = None) -> Config:
    """The configuration in `path` (YAML), defaults for everything it leaves out."""
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        raise SkyfixError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SkyfixError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    return _build(Config, data, "")
