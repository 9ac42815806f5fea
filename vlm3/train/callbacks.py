"""Trainer callbacks: loss curves on disk, a wall-clock budget, periodic held-out evaluation."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class LossLogger(TrainerCallback):
    """Appends every log line to ``loss.csv`` and redraws ``loss.png`` at the end of training."""

    FIELDS = ("step", "loss", "learning_rate", "grad_norm", "epoch", "seconds")

    def __init__(self, output_dir: str | Path, enabled: bool = True) -> None:
        self.path = Path(output_dir) / "loss.csv"
        self.enabled = enabled
        self._start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run repeats the steps after its checkpoint, and a fresh run in an old folder
        # starts at 0: keep only the rows up to where this run starts, so no step appears twice.
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= state.global_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.enabled or not logs or "loss" not in logs:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            if new:
                w.writeheader()
            row = {k: logs.get(k) for k in self.FIELDS}
            row.update(step=state.global_step, seconds=round(time.perf_counter() - self._start, 2))
            w.writerow(row)

    def on_train_end(self, args, state, control, **kwargs):
        if self.enabled and self.path.exists():
            plot_loss(self.path, self.path.with_suffix(".png"))


def plot_loss(csv_path: str | Path, png_path: str | Path) -> None:
    """Training loss against step, from ``loss.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [], []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if row["loss"]:
                steps.append(int(row["step"]))
                losses.append(float(row["loss"]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def rank0_decides(flag: bool, device: Any = "cpu") -> bool:
    """``flag`` as rank 0 sees it, on every rank (``flag`` itself outside distributed runs)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


class TimeLimit(TrainerCallback):
    """Stops (and saves) after ``max_minutes`` of training; writes vlm3 metadata into checkpoints."""

    def __init__(self, max_minutes: float | None, config: Any, settings: Any) -> None:
        self.max_seconds = None if max_minutes is None else 60.0 * max_minutes
        self.config, self.settings = config, settings  # a vlm3.train.Config and the Settings trained with
        self._start: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.max_seconds is None:
            return
        # Ranks must stop at the same step (one rank waiting in a collective for the others would
        # hang), so rank 0's clock decides for all.
        if rank0_decides(time.perf_counter() - self._start >= self.max_seconds, args.device):
            control.should_training_stop = True
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.config.save(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.settings)


class RowLog(TrainerCallback):
    """Starts the optional row audit (``VLM3_LOG_ROWS=DIR``, see :mod:`vlm3.train.dataset`) when training starts.

    Rows built before that (TRL's format check, the token-budget check) are not logged, so the
    log holds exactly the rows the data loader produced for training.
    """

    def __init__(self, builder: Any) -> None:
        self.builder = builder

    def on_train_begin(self, args, state, control, **kwargs):
        from vlm3.train.dataset import LOG_ROWS_ENV

        self.builder.log_dir = os.environ.get(LOG_ROWS_ENV) or None


class PeriodicEval(TrainerCallback):
    """Calls ``fn(model, processor, step, train_seconds)`` every ``every_minutes`` of training time
    or every ``every_steps`` optimizer steps (steps are reproducible; minutes depend on the machine).

    The evaluation's own time is not counted as training time, so curves over wall-clock compare
    runs fairly whatever their evaluation cost.
    """

    def __init__(self, fn: Callable[[Any, Any, int, float], dict], processor, every_minutes: float | None = None, every_steps: int | None = None) -> None:
        if (every_minutes is None) == (every_steps is None):
            raise ValueError("PeriodicEval needs exactly one of every_minutes and every_steps")
        self.fn, self.processor = fn, processor
        self.every = None if every_minutes is None else 60.0 * every_minutes
        self.every_steps = every_steps
        self.train_seconds = 0.0
        self._last: float | None = None
        self._next = self.every
        self.results: list[dict] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.train_seconds += time.perf_counter() - self._last
        if self.every_steps is not None:
            if state.global_step % self.every_steps == 0:
                self._run(model, state.global_step)
        elif self.train_seconds >= self._next:
            self._run(model, state.global_step)
            self._next += self.every

    def _run(self, model, step: int) -> None:
        import torch

        was_training = model.training
        model.eval()
        with torch.inference_mode():
            result = self.fn(model, self.processor, step, self.train_seconds)
        if was_training:
            model.train()
        self.results.append({"step": step, "train_seconds": self.train_seconds, **(result or {})})

    def final(self, model, step: int) -> None:
        """Evaluate once more at the end unless the last step was just evaluated."""
        if not self.results or self.results[-1]["step"] != step:
            self._run(model, step)
