"""Records -> task samples: the images a model sees and the questions/answers about them.

This is the one place where a labelled record becomes text. It applies the view transform
(focal unification, or a fixed resize for the ablation) and hands the transformed record to the
task (``vlm3.tasks.base.Task.build``), which names pixels by text coordinates on the transformed
image. The same code serves training (packed conversations) and evaluation (one question at a
time, with ground truth kept for metrics).

The view transform keeps every label in view (``vlm3.data.unify``: ``size_multiple`` pads, never
crops). A label that still cannot be shown (lens distortion moves it off the canvas) is, in
evaluation, a :class:`NotAsked` of the sample, with its ground truth and reason, so that it is
scored as a failure, the same for every model; training simply never draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlm3.data.images import open_rgb, record_image_path
from vlm3.data.records import Record
from vlm3.data.unify import NOT_ASKED, UnifiedRecord, label_lists, resize_longest_record, resize_record, unify_record
from vlm3.settings import Settings
from vlm3.tasks.base import Query, Task, get_task


@dataclass
class NotAsked:
    """A label an evaluation wants that cannot be shown to the model, so it is never asked.

    ``query`` is the question the task would have built (its ``gt`` and ``fields`` are what
    scoring needs; it is never sent); ``reason`` is a code of :data:`vlm3.data.unify.NOT_ASKED`.
    """

    query: Query
    reason: str

    @property
    def label(self) -> int | None:
        return self.query.label

    @property
    def why(self) -> str:
        """The reason in words ("outside the undistorted image (...)")."""
        return NOT_ASKED.get(self.reason, self.reason)


@dataclass
class Sample:
    """Images (after the view transform) plus a training conversation and evaluation queries.

    ``not_asked`` (evaluation only) lists the wanted labels that cannot be shown to the model,
    in the order they were wanted, each with its ground truth and reason; they have no query.
    """

    record_id: str
    dataset: str
    task: str
    images: list[Image.Image]
    messages: list[dict]
    queries: list[Query]
    view: UnifiedRecord
    settings: Settings
    not_asked: list[NotAsked] = field(default_factory=list)

    @property
    def dropped(self) -> list[int | None]:
        """The labels of :attr:`not_asked`."""
        return [n.label for n in self.not_asked]

    def to_trl(self) -> dict[str, Any]:
        """The sample in TRL's vision format: prompt/completion when single-turn, else messages."""
        if len(self.messages) == 2:
            return {"images": self.images, "prompt": self.messages[:1], "completion": self.messages[1:]}
        return {"images": self.images, "messages": self.messages}


def load_images(record: Record, root: str | Path, *, max_pixels: int | None = None) -> list[np.ndarray]:
    """Decode the record's view images as RGB uint8 arrays (paths relative to ``root``).

    Evaluation, training and demos read records through here. Raises a
    :class:`vlm3.data.images.ImageError` (an OSError) naming the record: ``ImagePathError`` for a
    path that is absolute or leaves ``root``, ``ImageNotFoundError``, ``ImageTooLargeError`` (over
    ``max_pixels``, default :func:`vlm3.data.images.max_image_pixels`), ``UnreadableImageError``.
    """
    out = []
    for i, view in enumerate(record.views):
        where = f"record {record.id}: views[{i}].image"
        path = record_image_path(root, view.image, where=where)
        out.append(np.asarray(open_rgb(path, max_pixels=max_pixels, where=f"{path} ({where})")))
    return out


def transform_views(record: Record, images: list[np.ndarray], settings: Settings) -> UnifiedRecord:
    """Apply the view transform of ``settings``: unify the focal (both axes, or fx's scale for
    both), resize to a fixed size or to a longest side, or keep the native images."""
    if settings.unify:
        return unify_record(record, images, settings.focal, settings.size_multiple, axes=settings.focal_axes)
    if settings.resize_to is not None:
        return resize_record(record, images, *settings.resize_to)
    if settings.longest_side is not None:
        return resize_longest_record(record, images, settings.longest_side)
    return unify_record(record, images, settings.focal, enabled=False)


def build_sample(
    record: Record,
    images: list[np.ndarray],
    task: str | Task,
    settings: Settings,
    rng: np.random.Generator | None = None,
    *,
    labels: list[int] | None = None,
) -> Sample:
    """One sample of ``task`` from a record and its decoded images.

    Training passes ``rng`` and draws ``settings.points_per_sample`` labels; evaluation passes no
    ``rng`` and asks ``labels`` (indices into the task's labels of the record; None: all, in
    record order), one query each; a wanted label the view transform cannot show is in
    ``Sample.not_asked`` instead (:func:`not_asked_of`).
    """
    task = get_task(task)
    if not task.has_labels(record):
        raise ValueError(f"record {record.id} has no labels for task {task.name!r}")
    if rng is not None and labels is not None:
        raise ValueError("a training draw (rng) and a label list are exclusive")
    if len(record.views) > task.n_images:
        # A single-image question is about view 0 alone: the model must not see view 1.
        record = record.model_copy(update={"views": record.views[: task.n_images], "matches": None})
        images = images[: task.n_images]
    view = transform_views(record, images, settings)
    messages, queries = task.build(view, settings, rng, None if labels is None else [int(i) for i in labels])
    not_asked: list[NotAsked] = []
    if rng is None:
        wanted = [int(i) for i in labels] if labels is not None else list(range(task.n_labels(record) or 0))
        asked = {q.label for q in queries}
        not_asked = not_asked_of(task, view, settings, [i for i in wanted if i not in asked])
    pil = [Image.fromarray(im) for im in view.images]
    return Sample(record.id, record.dataset, task.name, pil, messages, queries, view, settings, not_asked)


def not_asked_of(task: Task, view: UnifiedRecord, settings: Settings, missing: list[int]) -> list[NotAsked]:
    """The labels of ``missing`` that the view transform left out (``view.not_asked``), each with
    the query the task builds for it on the view with every label kept (exact ground truth, e.g.
    range converted along the label's undistorted ray) and its reason, in ``missing`` order.

    A missing label the transform did not leave out is not returned (the caller's count then
    disagrees: the label list does not fit the record). The label field a task reads is found by
    building on a view where only that field keeps every label, so no task declares it.
    """
    found: dict[int, NotAsked] = {}
    if not missing or view.full is None:
        return []
    for name, reasons in view.not_asked.items():
        todo = [i for i in missing if i in reasons and i not in found]
        if not todo:
            continue
        n = len(label_lists(view.full)[name])
        probe = replace(view, record=view.record.model_copy(update={name: getattr(view.full, name)}), kept={**view.kept, name: np.arange(n)})
        for q in task.build(probe, settings, None, todo)[1]:
            if q.label in reasons and q.label in todo:
                found[q.label] = NotAsked(q, reasons[q.label])
    return [found[i] for i in missing if i in found]


def choose(kept: np.ndarray, k: int, rng: np.random.Generator | None, labels: list[int] | None) -> list[int]:
    """Positions (into the transformed record's labels) of the labels a sample asks about.

    ``kept[p]`` is the original label of position p. Training (``rng``): up to ``k`` positions at
    random, in sorted order; evaluation: the positions of ``labels`` (None: all) that survived.
    """
    if rng is not None:
        n = len(kept)
        return list(rng.permutation(n)) if n <= k else sorted(int(i) for i in rng.choice(n, size=k, replace=False))
    if labels is None:
        return list(range(len(kept)))
    where = {int(orig): pos for pos, orig in enumerate(kept)}
    return [where[i] for i in labels if i in where]
