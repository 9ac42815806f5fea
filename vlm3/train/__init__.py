"""Supervised fine-tuning with the VLM3 recipe.

``load_config`` reads and validates a YAML config (e.g. ``vlm3/configs/*.yaml``); ``train`` runs it on TRL's
``SFTTrainer`` and resumes from the newest complete checkpoint when re-run::

    from vlm3.train import load_config, train
    result = train(load_config("vlm3/configs/tiny-cpu.yaml", ["train.max_steps=100"]))
    print(result.final_dir)

The config names import nothing heavy; the training names (``train``, ``TrainResult``, ...) load
torch, transformers and TRL on first use, so validating a config stays fast.
"""

from __future__ import annotations

from typing import Any

from vlm3.train.config import Config, ConfigError, DataConfig, DatasetEntry, ModelConfig, TrainConfig, load_config, parse_config

_FROM_SFT = ("TrainResult", "last_checkpoint", "train")

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DatasetEntry",
    "ModelConfig",
    "TrainConfig",
    "load_config",
    "parse_config",
    *_FROM_SFT,
]


def __getattr__(name: str) -> Any:
    if name in _FROM_SFT:
        from vlm3.train import sft

        return getattr(sft, name)
    raise AttributeError(f"module 'vlm3.train' has no attribute {name!r}")
