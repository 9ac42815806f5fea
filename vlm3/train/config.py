"""Training configuration: a YAML file with sections ``model``, ``data`` and ``train``.

Every field is documented below (its description is its help); unknown keys are errors (a typo
never silently falls back to a default). The ``data`` section is :class:`vlm3.settings.Settings`
(what the model is shown and asked, with the defaults defined there) plus the task and the
datasets. Values can be overridden from the command line with ``--set section.field=value``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, field_validator

from vlm3.config import ConfigError, ConfigModel, apply_overrides, read_yaml, validate
from vlm3.settings import Settings, write_model_settings
from vlm3.tasks import get_task, task_names

__all__ = ["Config", "ConfigError", "DataConfig", "DatasetEntry", "ModelConfig", "TrainConfig", "load_config", "parse_config"]


class ModelConfig(ConfigModel):
    """Which VLM to fine-tune and how it sees images."""

    name_or_path: str = Field("", description="local folder or hub id, loaded with AutoModelForImageTextToText")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights dtype when loading")
    attn_implementation: str | None = Field(None, description='e.g. "flash_attention_2" on GPUs')
    min_pixels: int | None = Field(None, ge=1, description="processor pixel budget; None keeps the checkpoint's")
    max_pixels: int | None = Field(None, ge=1, description="processor pixel budget (upper); None keeps the checkpoint's")
    freeze_vision: bool = Field(False, description="keep the vision tower (and its merger) fixed")
    lora: bool = Field(False, description="train LoRA adapters (peft) instead of every weight; final/ holds them merged, final/adapter the adapter")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, gt=0, description="LoRA scaling alpha")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA path")
    lora_target_modules: list[str] | str = Field("all-linear", description="modules that get adapters (peft syntax)")


class DatasetEntry(ConfigModel):
    """One prepared dataset (a folder written by ``vlm3 prepare`` or ``vlm3 synth``)."""

    path: str = Field(description="folder written by vlm3 prepare / vlm3 synth (relative to the config file)")
    name: str | None = Field(None, description="defaults to the manifest's dataset name")
    weight: float | None = Field(None, ge=0, description="explicit mixture weight (overrides the policy for this dataset)")


class DataConfig(Settings):
    """What the model is trained on: the task, the datasets and their mixture, and the sample settings."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    task: str = Field(default_factory=lambda: task_names()[0], description="the task to train (a registered name or alias; default: the first registered)")
    datasets: list[DatasetEntry] = Field(default_factory=list, description="prepared dataset folders")
    mixture: str = Field("size", description="uniform | size | size^alpha | weights")
    seed: int = Field(0, description="seeds the mixture plan and the per-sample label draws")

    @field_validator("task")
    @classmethod
    def _canonical_task(cls, value: str) -> str:
        return get_task(value).name

    def settings(self, size_multiple: int | None = None) -> Settings:
        """The sample settings; ``size_multiple`` (the model's patch multiple) fills an unset one."""
        values = {k: getattr(self, k) for k in Settings.model_fields}
        if values["size_multiple"] is None:
            values["size_multiple"] = size_multiple
        return Settings(**values)


class TrainConfig(ConfigModel):
    """Optimisation and bookkeeping (maps onto TRL's SFTConfig)."""

    output_dir: str = Field("runs/vlm3", description="checkpoints, the final model and logs")
    max_steps: int = Field(1000, ge=1, description="optimizer steps (the schedule's length)")
    max_minutes: float | None = Field(None, gt=0, description="stop after this much wall-clock training time")
    per_device_batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lr_scheduler_type: str = Field("cosine", description="a transformers scheduler name")
    max_grad_norm: float = Field(0.02, ge=0, description="gradient clipping (the paper's 0.02; 0 = none)")
    bf16: bool = Field(False, description="bfloat16 mixed precision (GPUs)")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    save_steps: int = Field(500, ge=1, description="checkpoint every this many steps (resume point)")
    save_total_limit: int | None = Field(2, ge=1, description="checkpoints kept; None keeps all")
    logging_steps: int = Field(10, ge=1, description="log the loss every this many steps")
    eval_every_minutes: float | None = Field(None, gt=0, description="periodic held-out evaluation by training time (benchmarks)")
    eval_every_steps: int | None = Field(None, ge=1, description="... or by optimizer steps (reproducible)")
    max_length: int | None = Field(None, ge=1, description="token budget per sample (checked on probe samples before training starts)")
    dataloader_num_workers: int = Field(0, ge=0, description="processes building samples")
    report_to: list[str] | str = Field("none", description="transformers loggers, e.g. tensorboard, wandb")
    fsdp: str = Field("", description='transformers\' own FSDP switch ("full_shard auto_wrap" only); clusters leave it '
                      "empty and launch with an accelerate config: vlm3/configs/accelerate/fsdp-hybrid.yaml")
    seed: int = Field(0, description="model initialisation and dropout")


class Config(ConfigModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, folder: str | Path, settings: Settings) -> None:
        """Write what a checkpoint carries: ``vlm3.json`` (task and the ``settings`` trained with) and this config."""
        from vlm3.profiles import profile_hash
        from vlm3.tasks import get_task

        write_model_settings(folder, self.data.task, settings, profile_hash(settings, get_task(self.data.task)))
        (Path(folder) / "vlm3_config.yaml").write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def parse_config(data: dict[str, Any], overrides: list[str] | None = None, source: str = "config") -> Config:
    """Validate a config mapping (plus ``section.field=value`` overrides) into a :class:`Config`."""
    data = {k: {} if v is None else v for k, v in (data or {}).items()}  # an empty YAML section
    return validate(Config, apply_overrides(data, overrides or [], min_depth=2), source)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file, or a shipped one by name (``tiny-cpu``, see ``vlm3.paths``); errors
    name the file and the field."""
    from vlm3.paths import shipped_config

    path = shipped_config(path)
    cfg = parse_config(read_yaml(path), overrides, source=str(path))
    # Relative dataset paths are relative to the config file's folder.
    for entry in cfg.data.datasets:
        p = Path(entry.path)
        if not p.is_absolute() and not p.exists() and (path.parent / p).exists():
            entry.path = str((path.parent / p).resolve())
    return cfg
