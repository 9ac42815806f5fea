"""Supervised fine-tuning of any Hugging Face VLM with the VLM3 recipe, on TRL's SFTTrainer.

Plain next-token cross-entropy on the answers only (``assistant_only_loss`` for multi-turn packed
samples, ``completion_only_loss`` for single-turn ones), images first then text, AdamW with a
cosine schedule. Distributed runs use the stock launchers (``accelerate launch`` / ``torchrun``):
the Trainer shards the plan across ranks. Re-running the same command resumes from the last
checkpoint in ``train.output_dir`` with the same data order and schedule, and with every weight
of the checkpoint, read through the model's own key conversion (:func:`load_checkpoint_weights`);
a checkpoint whose weights do not all load is refused (:class:`CheckpointError`).

``final/`` is always a full transformers checkpoint with its processor, ``vlm3.json`` and vlm3's
model card (``README.md``, :mod:`vlm3.train.card`). A LoRA run (``model.lora``) merges its adapter
into it (:func:`merge_lora`) and keeps the adapter in ``final/adapter``; adapters (there and in
``checkpoint-N``) record their base as an absolute folder or a hub id, so
:func:`vlm3.models.hf.load_model_and_processor` loads them from any working directory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from vlm3.train.callbacks import LossLogger, PeriodicEval, RowLog, TimeLimit
from vlm3.train.collator import ChatMLCollator, is_chatml
from vlm3.train.config import Config, ConfigError
from vlm3.train.dataset import LoadedDataset, SampleBuilder, dataset_probs, load_datasets, training_dataset

console = Console(stderr=True)


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    global_step: int
    train_seconds: float
    resumed_from: str | None
    adapter_dir: Path | None = None  # LoRA runs: final/adapter (final/ holds the merged model)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def freeze_vision_tower(model) -> int:
    """Freeze the vision encoder (and its merger); returns the number of frozen parameters."""
    frozen = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("visual", "vision_tower", "vision_model"):
            for p in module.parameters():
                if p.requires_grad:
                    p.requires_grad_(False)
                    frozen += p.numel()
    if frozen == 0:
        raise ValueError(f"model.freeze_vision: found no vision tower in {type(model).__name__}")
    return frozen


def check_token_budget(processor, examples: list[dict], max_length: int | None, fx: float | None = None) -> dict[str, int]:
    """Render and process a few examples; clear errors instead of TRL's image-token mismatch.

    Checks that the processor keeps each image's size (otherwise the effective focal changes),
    that every image gets its image tokens, and that ``max_length`` (if set) does not cut them.
    """
    from vlm3.models.processor import resize_report

    longest, image_tokens = 0, 0
    for k, ex in enumerate(examples):
        for im in ex["images"]:
            report = resize_report(im.width, im.height, processor)
            if report.resized:
                raise ValueError(
                    f"training sample {k}: {report.describe(fx)}. Set data.size_multiple to the model's patch "
                    "multiple or adjust model.min_pixels / model.max_pixels."
                )
        messages = ex["messages"] if "messages" in ex else ex["prompt"] + ex["completion"]
        text = processor.apply_chat_template(messages, tokenize=False)
        batch = processor(text=[text], images=ex["images"], return_tensors="pt")
        n = int(batch["input_ids"].shape[1])
        pad_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        n_img = int((batch["input_ids"] == pad_id).sum())
        if n_img == 0:
            raise ValueError(f"training sample {k}: no image tokens after processing; check the chat template")
        longest, image_tokens = max(longest, n), max(image_tokens, n_img)
        if max_length is not None and n > max_length:
            raise ValueError(
                f"training sample {k} needs {n} tokens ({n_img} image tokens) but train.max_length = {max_length}; "
                "raise train.max_length, pack fewer points (data.points_per_sample) or lower model.max_pixels"
            )
    return {"longest_tokens": longest, "max_image_tokens": image_tokens}


class LengthGuard:
    """Wraps TRL's collator so that no sample is ever truncated to ``train.max_length``.

    Truncating a VLM sample either cuts image tokens (the model then fails with an image-token
    mismatch) or silently drops answers, so a batch with a longer sample is an error naming
    ``train.max_length`` instead.
    """

    def __init__(self, collator: Callable[[list[dict]], dict], max_length: int) -> None:
        self.collator = collator
        self.max_length = max_length
        if hasattr(collator, "max_length"):
            collator.max_length = None  # measure the full length; never truncate

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        lengths = batch["attention_mask"].sum(dim=1)
        longest = int(lengths.max())
        if longest > self.max_length:
            raise ConfigError(
                f"a training sample needs {longest} tokens but train.max_length = {self.max_length}; "
                "raise train.max_length, pack fewer points (data.points_per_sample) or lower model.max_pixels"
            )
        return batch


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder in ``output_dir``, or None.

    A run killed while saving leaves a folder without ``trainer_state.json`` (the Trainer writes it
    last); such folders are skipped, so re-running resumes from the previous complete checkpoint.
    """
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())["global_step"]
        except (OSError, ValueError, KeyError):
            continue
        return str(path)
    return None


class CheckpointError(ConfigError):
    """A checkpoint whose weights cannot all be restored into the model.

    Resuming from it would continue from (partly) untrained weights while the restored step,
    optimizer and schedule hide it, so training refuses; the message names the checkpoint, how
    many tensors were not restored and the first few of them.
    """


def checkpoint_weight_files(checkpoint: str | Path) -> list[Path]:
    """The full-model weight files of a Trainer checkpoint: ``model.safetensors``, its shards, or the
    ``pytorch_model.bin`` equivalents; empty for checkpoints without them (LoRA adapters, FSDP)."""
    folder = Path(checkpoint)
    for single, index in (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return [folder / name for name in shards]
    return []


def load_checkpoint_weights(model, checkpoint: str | Path) -> int:
    """Copy a checkpoint's weights into ``model`` in place, reading keys the way ``from_pretrained`` does.

    ``save_pretrained`` stores some families under their original hub key names (transformers 5
    reverts its key conversion on save: a Qwen2.5-VL's ``model.language_model.layers.0...`` is
    written as ``model.layers.0...`` and ``model.visual...`` as ``visual...``), so a plain
    ``load_state_dict`` of a checkpoint matches none of them. Here every checkpoint key goes through
    the model's own conversion mapping (``get_model_conversion_mapping``: the renamings and
    converters ``from_pretrained`` applies) and the result is copied into the existing tensors, so
    tied weights, ``requires_grad`` (a frozen vision tower) and devices are kept.

    Returns the number of model tensors restored. Raises :class:`CheckpointError` unless every
    tensor of ``model.state_dict()`` was restored with its shape (tied aliases count as restored
    with their source).
    """
    import contextlib
    from copy import deepcopy
    from functools import partial

    import torch
    from safetensors import safe_open
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    files = checkpoint_weight_files(checkpoint)
    if not files:
        raise CheckpointError(f"cannot resume from {checkpoint}: it holds no model weights (model.safetensors)")
    target = model.state_dict()  # detached views of the parameters and buffers: copy_ updates the model
    mapping = get_model_conversion_mapping(model)
    renamings = [t for t in mapping if isinstance(t, WeightRenaming)]
    converters = [t for t in mapping if isinstance(t, WeightConverter)]
    by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}

    def alias(t) -> tuple:  # tied weights share one tensor: restoring one restores all its names
        return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))

    restored: set[tuple] = set()
    unexpected: list[str] = []
    mismatched: list[str] = []
    with contextlib.ExitStack() as stack:
        loaders: dict[str, Callable[[], Any]] = {}  # checkpoint key -> reads the tensor (one at a time)
        for f in files:
            if f.suffix == ".safetensors":
                handle = stack.enter_context(safe_open(str(f), framework="pt", device="cpu"))
                loaders.update({k: partial(handle.get_tensor, k) for k in handle.keys()})
            else:
                state = torch.load(f, map_location="cpu", weights_only=True)
                loaders.update({k: partial(lambda v: v, v) for k, v in state.items()})
        groups: dict[str, Any] = {}  # model key -> the transform that produces it (as in from_pretrained)
        for key in sorted(loaders, key=dot_natural_key):
            name, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, target)
            if name not in target and key in target:
                name, pattern = key, None
            if name not in target:
                unexpected.append(key)
                continue
            if pattern is None:
                group, pattern = groups.setdefault(name, WeightRenaming(key, name)), key
            else:
                group = groups.setdefault(name, deepcopy(by_pattern[pattern]))
            group.add_tensor(name, key, pattern, loaders[key])
        with torch.no_grad():
            for first, group in groups.items():
                for name, value in group.convert(first, model=model, config=model.config).items():
                    value = value[0] if isinstance(value, list) else value
                    dest = target.get(name)
                    if dest is None:
                        unexpected.append(name)
                    elif tuple(value.shape) != tuple(dest.shape):
                        mismatched.append(f"{name} {tuple(value.shape)} != {tuple(dest.shape)}")
                    else:
                        dest.copy_(value)
                        restored.add(alias(dest))
    missing = [name for name, t in target.items() if alias(t) not in restored]
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(target)} model tensors were not restored (first: {', '.join(missing[:5])})")
        if mismatched:
            parts.append(f"{len(mismatched)} have another shape in the checkpoint ({', '.join(mismatched[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} checkpoint tensors match no model tensor (first: {', '.join(unexpected[:5])})")
        raise CheckpointError(
            f"cannot resume from {checkpoint}: " + "; ".join(parts) + ". Training on would start from weights the "
            "checkpoint does not hold: remove that checkpoint folder (the run then resumes from an earlier one) or "
            "set another train.output_dir"
        )
    return len(target) - len(missing)


class RestoreWeightsOnResume:
    """Trainer mixin: resuming restores every weight of the checkpoint, or refuses.

    The Trainer's own loader (``_load_from_checkpoint``) calls ``model.load_state_dict(strict=False)``
    on the checkpoint's raw keys and only logs what is missing, so a checkpoint whose keys the model
    does not use verbatim (Qwen2.5-VL under transformers 5) restores step, optimizer and schedule
    but no weight. Full-weight checkpoints go through :func:`load_checkpoint_weights` instead;
    LoRA adapters, FSDP and DeepSpeed checkpoints keep their own loaders (their files hold the
    model's own keys).
    """

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from transformers.trainer_utils import _is_peft_model

        target = self.model if model is None else model
        if (
            self.is_fsdp_enabled
            or self.is_deepspeed_enabled
            or _is_peft_model(target)
            or not checkpoint_weight_files(resume_from_checkpoint)
        ):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_weights(target, resume_from_checkpoint)


class NoTRLCard:
    """Trainer mixin: no TRL model card (it names no local base model: "fine-tuned version of
    [None]"); :func:`train` writes vlm3's own (:mod:`vlm3.train.card`) at the end."""

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        return None


ADAPTER_DIR = "adapter"  # a LoRA run's adapter, inside final/


def merge_lora(adapter_dir: str | Path, out_dir: str | Path, dtype: str = "auto") -> Path:
    """Save the base model of ``adapter_dir`` with the adapter merged in (peft ``merge_and_unload``)
    as a full transformers checkpoint in ``out_dir``; returns ``out_dir``.

    Loads through :func:`vlm3.models.hf.load_model_and_processor`, so the merged weights are
    exactly what loading the adapter folder gives. Adapter files a former run left at the top of
    ``out_dir`` are removed (they would make it look like an adapter folder).
    """
    from vlm3.models.hf import ADAPTER_CONFIG, load_model_and_processor

    out_dir = Path(out_dir)
    model, _ = load_model_and_processor(adapter_dir, dtype=dtype)  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (ADAPTER_CONFIG, "adapter_model.safetensors", "adapter_model.bin"):
        (out_dir / stale).unlink(missing_ok=True)
    model.save_pretrained(str(out_dir))
    return out_dir


def train(
    cfg: Config,
    *,
    resume: bool = True,
    eval_fn: Callable[[Any, Any, int, float], dict] | None = None,
    quiet: bool = False,
) -> TrainResult:
    """Run SFT as configured. ``eval_fn(model, processor, step, train_seconds)`` runs every
    ``train.eval_every_minutes`` of training time (the timer pauses during evaluation).

    Problems with the config's model, data or token budget raise :class:`ConfigError` (a
    ``ValueError``) with a message naming the field; ``resume`` continues from the newest complete
    checkpoint in ``train.output_dir``.
    """
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from vlm3.data.mixture import mixture_table
    from vlm3.models.hf import load_model_and_processor, model_reference, patch_multiple

    t, m = cfg.train, cfg.model
    torch.manual_seed(t.seed)
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_main = int(os.environ.get("RANK", "0")) == 0

    # Data first: opening the datasets reads their shard indexes only, so a wrong path fails before the model is loaded.
    try:
        datasets: list[LoadedDataset] = load_datasets(cfg.data.datasets, cfg.data.task, progress=is_main and not quiet)  # errors name the entry
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from e
    try:
        probs = dataset_probs(datasets, cfg.data.mixture)
    except ValueError as e:
        raise ConfigError(f"data.mixture: {e}") from e
    try:
        model, processor = load_model_and_processor(
            m.name_or_path, dtype=m.dtype, min_pixels=m.min_pixels, max_pixels=m.max_pixels, attn_implementation=m.attn_implementation
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name_or_path: {e}") from e
    settings = cfg.data.settings(size_multiple=patch_multiple(model))
    n_rows = t.max_steps * t.per_device_batch_size * t.gradient_accumulation_steps * world_size()
    if is_main and not quiet:
        mixture_table({d.name: len(d.records) for d in datasets}, probs, draws=n_rows, title="training mixture", console=console)

    builder = SampleBuilder(datasets, cfg.data.task, settings, cfg.data.seed)
    train_ds = training_dataset(builder, probs, n_rows)
    examples = [train_ds[i] for i in range(min(4, n_rows))]
    try:
        budget = check_token_budget(processor, examples, t.max_length, cfg.data.focal)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if is_main and not quiet:
        console.print(f"[dim]samples: up to {budget['longest_tokens']} tokens, {budget['max_image_tokens']} image tokens per image[/dim]")

    if m.freeze_vision:
        freeze_vision_tower(model)
    peft_config = None
    if m.lora:
        peft_config = LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=m.lora_target_modules, task_type="CAUSAL_LM")

    multi_turn = "messages" in examples[0]
    use_cpu = not torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(out),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of max_steps
        lr_scheduler_type=t.lr_scheduler_type,
        max_grad_norm=t.max_grad_norm,
        bf16=t.bf16,
        # The current name of gradient checkpointing (the old one is a deprecated alias whose
        # TRL default is True).
        activation_checkpointing=t.gradient_checkpointing,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        report_to=t.report_to,
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=t.max_length,
        assistant_only_loss=multi_turn,
        completion_only_loss=None if multi_turn else True,
        fsdp=t.fsdp,
        # Every vlm3 sample has images, so every parameter gets a gradient: DDP needs no search
        # for unused parameters (TRL turns it on for VLMs in case of text-only batches).
        ddp_find_unused_parameters=False,
        use_cpu=use_cpu,
        ddp_backend="gloo" if use_cpu and world_size() > 1 else None,
        disable_tqdm=quiet,
        log_level="warning",
    )
    callbacks = [LossLogger(out, is_main), TimeLimit(t.max_minutes, cfg, settings), RowLog(builder)]
    periodic = eval_fn is not None and (t.eval_every_minutes or t.eval_every_steps)
    if periodic:
        callbacks.append(PeriodicEval(eval_fn, processor, t.eval_every_minutes, t.eval_every_steps))
    collator = None
    if multi_turn and is_chatml(processor):
        collator = ChatMLCollator(processor)  # same labels as TRL's, without its per-token Python loop
    trainer_class = type("VLM3SFTTrainer", (NoTRLCard, RestoreWeightsOnResume, SFTTrainer), {})
    trainer = trainer_class(model=model, args=args, train_dataset=train_ds, processing_class=processor, peft_config=peft_config,
                            callbacks=callbacks, data_collator=collator)
    if t.max_length is not None:
        trainer.data_collator = LengthGuard(trainer.data_collator, t.max_length)

    last = last_checkpoint(out) if resume else None
    if last and is_main and not quiet:
        console.print(f"[yellow]resuming from {last}[/yellow]")
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - start

    final = out / "final"
    # Every rank takes part: under FSDP saving gathers the sharded weights; the Trainer writes
    # the files on the main process only. A LoRA run keeps its adapter in final/adapter (the base
    # recorded as an absolute folder or hub id: the loader set model.name_or_path so) and merges
    # it into a full checkpoint in final/, so final/ loads like any other checkpoint.
    adapter = final / ADAPTER_DIR if m.lora else None
    trainer.save_model(str(adapter or final))
    if is_main:
        if adapter is not None:
            cfg.save(adapter, settings)
            merge_lora(adapter, final, m.dtype)
        processor.save_pretrained(str(final))
        cfg.save(final, settings)
        _write_card(cfg, out, final, adapter, datasets, probs, trainer.state.global_step, model_reference(m.name_or_path))
    if periodic:
        callbacks[-1].final(trainer.model, trainer.state.global_step)
    trainer.accelerator.wait_for_everyone()  # final/ is complete when any rank returns
    return TrainResult(out, final, trainer.state.global_step, seconds, last, adapter)


def _write_card(
    cfg: Config,
    out: Path,
    final: Path,
    adapter: Path | None,
    datasets: list[LoadedDataset],
    probs: dict[str, float],
    global_step: int,
    base_model: str,
) -> None:
    """vlm3's model card as README.md in final/, the run folder and final/adapter (LoRA)."""
    from vlm3.train.card import MixtureRow, model_card, write_model_card

    rows = [MixtureRow(d.name, str(Path(d.path).absolute()), len(d.records), d.weight, probs.get(d.name, 0.0)) for d in datasets]
    card = model_card(cfg, final, rows, global_step=global_step, base_model=base_model, adapter_dir=adapter)
    write_model_card([final, out] + ([adapter] if adapter is not None else []), card)
