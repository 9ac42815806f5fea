"""Training configuration: YAML files validated into dataclasses.

A config has three sections, ``model``, ``data`` and ``train``; every field is documented below
and unknown keys are errors (a typo never silently falls back to a default). Values can be
overridden from the command line with ``--set section.field=value``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

TASKS = ("depth", "pose", "correspondence", "object")


@dataclass
class ModelConfig:
    """Which VLM to fine-tune and how it sees images."""

    name_or_path: str = ""  # local folder or hub id, loaded with AutoModelForImageTextToText
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str | None = None  # e.g. "flash_attention_2" on GPUs
    min_pixels: int | None = None  # processor pixel budget; None keeps the checkpoint's
    max_pixels: int | None = None
    freeze_vision: bool = False  # keep the vision tower (and its merger) fixed
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str = "all-linear"


@dataclass
class DatasetEntry:
    """One prepared dataset (a folder written by ``vlm3 prepare`` or ``vlm3 synth``)."""

    path: str
    name: str | None = None  # defaults to the manifest's dataset name
    weight: float | None = None  # explicit mixture weight (overrides the policy for this dataset)


@dataclass
class DataConfig:
    """What the model is trained on and how samples are formed."""

    task: Literal["depth", "pose", "correspondence", "object"] = "depth"
    datasets: list[DatasetEntry] = field(default_factory=list)
    mixture: str = "size"  # uniform | size | size^alpha | weights
    unify: bool = True  # focal-length unification (the recipe); False = the ablation
    focal: float = 1000.0  # unified focal length in pixels
    size_multiple: int | None = None  # None = the model's patch multiple (no processor resize)
    resize_to: list[int] | None = None  # [W, H] fixed size for every image when unify is False
    n_coords: int = 2000  # text coordinates in [0, n_coords)
    points_per_sample: int = 10  # questions packed per sample (paper: 10 for depth)
    packing: Literal["multi_turn", "single_turn"] = "multi_turn"
    answer_style: str = "short"  # task-specific answer style (depth: short | sentence | depthlm)
    depth_type: Literal["z", "range"] = "range"  # what "how far from the camera" means
    seed: int = 0


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping (maps onto TRL's SFTConfig)."""

    output_dir: str = "runs/vlm3"
    max_steps: int = 1000
    max_minutes: float | None = None  # stop after this much wall-clock training time
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float = 0.02
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_steps: int = 500
    save_total_limit: int | None = 2
    logging_steps: int = 10
    eval_every_minutes: float | None = None  # periodic held-out evaluation by training time (benchmarks)
    eval_every_steps: int | None = None  # ... or by optimizer steps (reproducible)
    max_length: int | None = None
    dataloader_num_workers: int = 0
    report_to: list[str] | str = "none"
    # transformers' own FSDP switch (deprecated string form, FSDP2: "full_shard auto_wrap" only). Clusters
    # leave it empty and launch with an accelerate config: configs/accelerate/fsdp-hybrid.yaml.
    fsdp: str = ""
    seed: int = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (message names the field)."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def parse_config(data: dict[str, Any], overrides: list[str] | None = None, source: str = "config") -> Config:
    """Validate a config mapping (plus ``section.field=value`` overrides) into a :class:`Config`."""
    data = {k: dict(v or {}) for k, v in (data or {}).items()}
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = yaml.safe_load(raw)
    try:
        cfg = _build(Config, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    _check(cfg, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping with model/data/train sections")
    cfg = parse_config(data, overrides, source=str(path))
    # Relative dataset paths are relative to the config file's folder.
    for entry in cfg.data.datasets:
        p = Path(entry.path)
        if not p.is_absolute() and not p.exists() and (path.parent / p).exists():
            entry.path = str((path.parent / p).resolve())
    return cfg


def _check(cfg: Config, source: str) -> None:
    d, t = cfg.data, cfg.train
    problems = []
    if d.focal <= 0:
        problems.append(f"data.focal must be > 0, got {d.focal}")
    if d.n_coords < 2:
        problems.append(f"data.n_coords must be >= 2, got {d.n_coords}")
    if d.points_per_sample < 1:
        problems.append(f"data.points_per_sample must be >= 1, got {d.points_per_sample}")
    if d.resize_to is not None and (len(d.resize_to) != 2 or min(d.resize_to) < 1):
        problems.append(f"data.resize_to must be [width, height], got {d.resize_to}")
    for i, e in enumerate(d.datasets):
        if e.weight is not None and e.weight < 0:
            problems.append(f"data.datasets[{i}].weight must be >= 0, got {e.weight}")
    if t.learning_rate <= 0:
        problems.append(f"train.learning_rate must be > 0, got {t.learning_rate}")
    if t.per_device_batch_size < 1 or t.gradient_accumulation_steps < 1:
        problems.append("train.per_device_batch_size and gradient_accumulation_steps must be >= 1")
    if not 0 <= t.warmup_ratio < 1:
        problems.append(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
