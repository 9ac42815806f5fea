"""Records -> task samples: the images a model sees and the questions/answers about them.

This is the one place where a labelled record becomes text. It applies the view transform
(focal unification, or a fixed resize for the ablation), names pixels by text coordinates on the
transformed image, and asks the task codec for prompts and answers. The same code serves training
(packed conversations) and evaluation (one question at a time, with ground truth kept for metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vlm3.data.records import Record
from vlm3.data.unify import UnifiedRecord, resize_record, unify_record
from vlm3.geometry.camera import convert_depth
from vlm3.geometry.pose import relative_pose
from vlm3.tasks import correspondence as corr_task
from vlm3.tasks import depth as depth_task
from vlm3.tasks import object3d as object_task
from vlm3.tasks import pose as pose_task
from vlm3.tasks.common import assistant_turn, user_turn
from vlm3.textref import encode_box, encode_pixels

Task = Literal["depth", "pose", "correspondence", "object"]
SINGLE_IMAGE_TASKS = ("depth", "object")


@dataclass
class SampleOptions:
    """How records become samples (mirrors ``DataConfig``; see ``vlm3/train/config.py``)."""

    task: Task = "depth"
    unify: bool = True
    focal: float = 1000.0
    size_multiple: int | None = None
    resize_to: tuple[int, int] | None = None  # (W, H) when unify is False; None keeps native size
    n_coords: int = 2000
    points_per_sample: int = 10
    packing: Literal["multi_turn", "single_turn"] = "multi_turn"
    answer_style: str = "short"
    depth_type: Literal["z", "range"] = "range"

    @classmethod
    def from_data_config(cls, data: Any, size_multiple: int | None = None) -> "SampleOptions":
        return cls(
            task=data.task,
            unify=data.unify,
            focal=data.focal,
            size_multiple=data.size_multiple if data.size_multiple is not None else size_multiple,
            resize_to=tuple(data.resize_to) if data.resize_to else None,
            n_coords=data.n_coords,
            points_per_sample=data.points_per_sample,
            packing=data.packing,
            answer_style=data.answer_style,
            depth_type=data.depth_type,
        )


@dataclass
class Query:
    """One question asked alone, its target answer and the ground truth for metrics."""

    question: str
    answer: str
    gt: Any
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """Images (after the view transform) plus a training conversation and evaluation queries."""

    record_id: str
    dataset: str
    task: str
    images: list[Image.Image]
    messages: list[dict]
    queries: list[Query]
    view: UnifiedRecord

    def to_trl(self) -> dict[str, Any]:
        """The sample in TRL's vision format: prompt/completion when single-turn, else messages."""
        if len(self.messages) == 2:
            return {"images": self.images, "prompt": self.messages[:1], "completion": self.messages[1:]}
        return {"images": self.images, "messages": self.messages}


def load_images(record: Record, root: str | Path) -> list[np.ndarray]:
    """Decode the record's view images as RGB uint8 arrays (paths relative to ``root``)."""
    out = []
    for view in record.views:
        path = Path(root) / view.image
        try:
            with Image.open(path) as im:
                out.append(np.asarray(im.convert("RGB")))
        except FileNotFoundError:
            raise FileNotFoundError(f"record {record.id}: image {path} does not exist") from None
        except OSError as e:
            raise OSError(f"record {record.id}: cannot read image {path}: {e}") from None
    return out


def transform_views(record: Record, images: list[np.ndarray], opts: SampleOptions) -> UnifiedRecord:
    """Apply the recipe's view transform: unify the focal, resize to a fixed size, or keep native."""
    if opts.unify:
        return unify_record(record, images, opts.focal, opts.size_multiple)
    if opts.resize_to is not None:
        return resize_record(record, images, *opts.resize_to)
    return unify_record(record, images, enabled=False)


def build_sample(
    record: Record,
    images: list[np.ndarray],
    opts: SampleOptions,
    rng: np.random.Generator | None = None,
    *,
    all_points: bool = False,
) -> Sample:
    """One sample of ``opts.task`` from a record and its decoded images.

    Training draws ``opts.points_per_sample`` labels with ``rng``; ``all_points=True`` (evaluation)
    keeps every label in record order, one query each.
    """
    if opts.task not in record.tasks():
        raise ValueError(f"record {record.id} has no labels for task {opts.task!r} (it has {record.tasks()})")
    rng = rng if rng is not None else np.random.default_rng(0)
    if opts.task in SINGLE_IMAGE_TASKS and len(record.views) > 1:
        # Depth and object questions are about view 0 alone; the model must not see view 1.
        record = record.model_copy(update={"views": record.views[:1], "matches": None})
        images = images[:1]
    view = transform_views(record, images, opts)
    builders = {"depth": _depth, "pose": _pose, "correspondence": _correspondence, "object": _object}
    messages, queries = builders[opts.task](view, opts, rng, all_points)
    pil = [Image.fromarray(im) for im in view.images]
    return Sample(record.id, record.dataset, opts.task, pil, messages, queries, view)


def _choose(n: int, k: int, rng: np.random.Generator, all_points: bool) -> np.ndarray:
    if all_points or n <= k:
        return np.arange(n) if all_points else rng.permutation(n)
    return np.sort(rng.choice(n, size=k, replace=False))


def _depth(view: UnifiedRecord, opts: SampleOptions, rng, all_points: bool):
    rec = view.record
    K = rec.views[0].K
    pixels = np.asarray(rec.depth.pixels, dtype=np.float64).reshape(-1, 2)
    if len(pixels) == 0:
        raise ValueError(f"record {rec.id}: no depth labels inside the transformed image")
    depth = convert_depth(K, pixels, np.asarray(rec.depth.depth), rec.depth.depth_type, opts.depth_type)
    idx = _choose(len(pixels), opts.points_per_sample, rng, all_points)
    coords = encode_pixels(pixels[idx], K.width, K.height, opts.n_coords)
    points = [tuple(int(v) for v in c) for c in coords]
    values = [float(depth[i]) for i in idx]
    messages = depth_task.depth_messages(points, values, style=opts.answer_style, packing=opts.packing, n=opts.n_coords)
    queries = [
        Query(
            depth_task.depth_question(nx, ny, opts.n_coords),
            depth_task.depth_answer(d, opts.answer_style),
            d,
            {"pixel": pixels[i].tolist(), "coords": [nx, ny], "index": int(i)},
        )
        for (nx, ny), d, i in zip(points, values, idx)
    ]
    return messages, queries


def _pose(view: UnifiedRecord, opts: SampleOptions, rng, all_points: bool):
    rec = view.record
    T = relative_pose(rec.views[0].pose, rec.views[1].pose)
    messages = pose_task.pose_messages(T, rec.metric_scale)
    query = Query(pose_task.pose_prompt(rec.metric_scale), pose_task.pose_answer(T, rec.metric_scale), {"R": T[:3, :3].tolist(), "t": T[:3, 3].tolist()}, {"metric": rec.metric_scale})
    return messages, [query]


def _correspondence(view: UnifiedRecord, opts: SampleOptions, rng, all_points: bool):
    rec = view.record
    K0, K1 = rec.views[0].K, rec.views[1].K
    p0 = np.asarray(rec.matches.pixels0, dtype=np.float64).reshape(-1, 2)
    p1 = np.asarray(rec.matches.pixels1, dtype=np.float64).reshape(-1, 2)
    if len(p0) == 0:
        raise ValueError(f"record {rec.id}: no correspondences inside the transformed images")
    idx = _choose(len(p0), opts.points_per_sample, rng, all_points)
    q = encode_pixels(p0[idx], K0.width, K0.height, opts.n_coords)
    t = encode_pixels(p1[idx], K1.width, K1.height, opts.n_coords)
    # Ground truth in pixels of the ORIGINAL second image, so EPE is comparable across transforms.
    gt_orig = view.transforms[1].backward(p1[idx])
    messages, queries = [], []
    for j, i in enumerate(idx):
        question = corr_task.correspondence_question(int(q[j, 0]), int(q[j, 1]), rng=None if all_points else rng)
        answer = corr_task.correspondence_answer(int(t[j, 0]), int(t[j, 1]))
        messages.append(user_turn(question, n_images=2 if j == 0 else 0))
        messages.append(assistant_turn(answer))
        queries.append(Query(corr_task.correspondence_question(int(q[j, 0]), int(q[j, 1])), answer, gt_orig[j].tolist(), {"pixel0": p0[i].tolist(), "coords": q[j].tolist(), "index": int(i)}))
    if opts.packing == "single_turn" and len(idx) > 1:
        raise ValueError("correspondence samples pack as multi_turn only")
    return messages, queries


def _object(view: UnifiedRecord, opts: SampleOptions, rng, all_points: bool):
    rec = view.record
    K = rec.views[0].K
    objs = [o for o in rec.objects if o.box2d is not None]
    if len(objs) < 2:
        raise ValueError(f"record {rec.id}: object questions need two objects with 2D boxes, found {len(objs)}")
    gravity = rec.gravity_cam or (0.0, 1.0, 0.0)
    boxes = [object_task.Object3D(encode_box(o.box2d, K.width, K.height, opts.n_coords, clamp=True), np.asarray(o.center), np.asarray(o.size), np.asarray(o.R_cam_from_box), o.name) for o in objs]
    pairs = [(i, j) for i in range(len(boxes)) for j in range(len(boxes)) if i != j]
    order = np.arange(len(pairs)) if all_points else rng.permutation(len(pairs))
    qas = []
    for k in order:
        i, j = pairs[k]
        qas += object_task.object_qas(boxes[i], boxes[j], gravity=gravity, rng=None if all_points else rng)
    if not all_points:
        pick = rng.choice(len(qas), size=min(opts.points_per_sample, len(qas)), replace=False)
        qas = [qas[int(p)] for p in pick]
    messages = object_task.object_messages(qas)
    queries = [Query(qa.question, qa.answer, qa.value, {"kind": qa.kind, "category": qa.category}) for qa in qas]
    return messages, queries
