"""Supervised fine-tuning of any Hugging Face VLM with the VLM3 recipe, on TRL's SFTTrainer.

Plain next-token cross-entropy on the answers only (``assistant_only_loss`` for multi-turn packed
samples, ``completion_only_loss`` for single-turn ones), images first then text, AdamW with a
cosine schedule. Distributed runs use the stock launchers (``accelerate launch`` / ``torchrun``):
the Trainer shards the plan across ranks. Re-running the same command resumes from the last
checkpoint in ``train.output_dir`` with the same data order and schedule.
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
    from vlm3.models.hf import load_model_and_processor, patch_multiple

    t, m = cfg.train, cfg.model
    torch.manual_seed(t.seed)
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_main = int(os.environ.get("RANK", "0")) == 0

    # Data first: reading labels is cheap, so a wrong path fails before the model is loaded.
    try:
        datasets: list[LoadedDataset] = load_datasets(cfg.data.datasets, cfg.data.task)  # errors name the entry
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
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=processor, peft_config=peft_config,
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
    # the files on the main process only.
    trainer.save_model(str(final))
    if is_main:
        processor.save_pretrained(str(final))
        cfg.save(final, settings)
    if periodic:
        callbacks[-1].final(trainer.model, trainer.state.global_step)
    trainer.accelerator.wait_for_everyone()  # final/ is complete when any rank returns
    return TrainResult(out, final, trainer.state.global_step, seconds, last)

