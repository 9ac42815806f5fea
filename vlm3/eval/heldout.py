"""Held-out depth evaluation of an in-memory model, and learning curves over training time.

Used by ``benchmarks/learn_depth.py`` and ``vlm3 demo``: train one arm of an experiment while
scoring it every few minutes on unseen scenes, with the content-free lookups beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlm3.ask import ask
from vlm3.data.io import image_root, read_records
from vlm3.eval.baselines import DepthItem, DepthLookups
from vlm3.settings import Settings
from vlm3.tasks.depth import DEPTH, depth_metrics
from vlm3.tasks.samples import Sample, build_sample, load_images


@dataclass
class HeldOut:
    """Depth samples (all labelled points as queries) of unseen scenes under one arm's settings."""

    samples: list[Sample]
    settings: Settings

    @property
    def items(self) -> list[DepthItem]:
        return [
            DepthItem(q.fields["coords"][0], q.fields["coords"][1], s.images[0].width, s.images[0].height, float(q.gt))
            for s in self.samples
            for q in s.queries
        ]

    @property
    def gt(self) -> list[float]:
        return [float(q.gt) for s in self.samples for q in s.queries]


def build_heldout(data_dir: str | Path, settings: Settings, max_points: int | None = None, limit: int | None = None) -> HeldOut:
    """Every record of a prepared dataset as an evaluation sample (first ``max_points`` points each)."""
    root = image_root(data_dir)
    samples = []
    for i, rec in enumerate(read_records(data_dir)):
        if limit is not None and i >= limit:
            break
        if not DEPTH.has_labels(rec):
            continue
        s = build_sample(rec, load_images(rec, root), DEPTH, settings)
        if max_points is not None:
            s.queries = s.queries[:max_points]
        samples.append(s)
    if not samples:
        raise ValueError(f"{data_dir}: no depth records to evaluate")
    return HeldOut(samples, settings)


def common_points(heldouts: Sequence[HeldOut]) -> list[HeldOut]:
    """The same held-out sets restricted to the labels that every one of them kept.

    Unification pads rather than crops (``geometry/unify.py``), so arms normally keep every label;
    only a label that distortion moves off the canvas is not asked, and that can differ between
    arms with different view transforms. Comparing arms on different points would not be fair, so
    each is scored on the shared labels only (a no-op when every arm asked every label).
    """
    keys = [{(s.record_id, q.label) for s in h.samples for q in s.queries} for h in heldouts]
    shared = set.intersection(*keys) if keys else set()
    out = []
    for h in heldouts:
        samples = []
        for s in h.samples:
            queries = [q for q in s.queries if (s.record_id, q.label) in shared]
            if queries:
                samples.append(replace(s, queries=queries))
        out.append(HeldOut(samples, h.settings))
    return out


def training_items(data_dir: str | Path, settings: Settings, limit: int | None = None) -> list[DepthItem]:
    """The training labels as lookups see them (all points of every record under ``settings``)."""
    return build_heldout(data_dir, settings, limit=limit).items


def evaluate_depth(backend: Any, heldout: HeldOut, max_new_tokens: int = 12) -> dict[str, Any]:
    """Ask every held-out question (one at a time, prefix-cached per image) and score it.

    ``metrics["truncated"]`` counts answers cut off at ``max_new_tokens`` (failures, in ``failed``).
    """
    preds: list[float | None] = []
    raw: list[str] = []
    truncated = 0
    for s in heldout.samples:
        answers = ask(backend, s, max_new_tokens=max_new_tokens)
        raw += [a.raw for a in answers]
        preds += [a.pred for a in answers]
        truncated += sum(a.truncated for a in answers)
    metrics = {**depth_metrics(preds, heldout.gt), "truncated": truncated}
    return {"metrics": metrics, "preds": preds, "raw": raw}


def lookup_metrics(lookups: DepthLookups, heldout: HeldOut) -> dict[str, dict[str, float]]:
    """Metrics of each content-free lookup on the held-out questions."""
    items = heldout.items
    gt = [it.depth for it in items]
    return {name: depth_metrics(p, gt) for name, p in lookups.predict_all(items).items()}


@dataclass
class Curve:
    """Held-out metrics of one training run at several training times."""

    name: str
    points: list[dict[str, Any]] = field(default_factory=list)  # step, train_seconds, delta1, abs_rel, parsed...

    def at_minutes(self, minutes: float, slack_seconds: float = 10.0) -> dict[str, Any] | None:
        """The last point taken by ``minutes`` of training (None if none yet).

        A periodic evaluation runs at the first step *after* its mark, so a point logged at 60.4 s
        belongs to the 1-minute mark: ``slack_seconds`` (about a few steps) absorbs that.
        """
        done = [p for p in self.points if p["train_seconds"] <= minutes * 60 + slack_seconds]
        return done[-1] if done else None


def make_eval_fn(heldout: HeldOut, curve: Curve, batch_size: int = 64, log: Any = None):
    """An ``eval_fn`` for :func:`vlm3.train.sft.train` that appends held-out δ1 to ``curve``."""
    from vlm3.models.local import LocalBackend

    def fn(model, processor, step: int, train_seconds: float) -> dict[str, Any]:
        backend = LocalBackend(model, processor, batch_size=batch_size)
        out = evaluate_depth(backend, heldout)
        m = out["metrics"]
        point = {"step": step, "train_seconds": round(train_seconds, 1), "delta1": m["delta1"], "abs_rel": m["abs_rel"], "parsed": m["parsed"], "n": m["n"]}
        curve.points.append(point)
        if log is not None:
            log(f"{curve.name}: step {step}, {train_seconds / 60:.1f} min: delta1 {m['delta1']:.3f}, AbsRel {m['abs_rel']:.3f}, parsed {m['parsed']}/{m['n']}")
        return point

    return fn

