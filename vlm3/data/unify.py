"""Apply focal-length unification to a record: resample its images and move every pixel label.

Depth values, 3D boxes and poses are metric and do not change; pixels, 2D boxes and intrinsics do.
Labels that leave the image (possible only with ``size_multiple`` cropping) are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vlm3.data.records import DepthLabels, Matches, Record, View
from vlm3.geometry.unify import FocalTransform, UnifiedImage, resize_exact, resize_longest, unify_focal


@dataclass
class UnifiedRecord:
    """A record whose views are unified, their images in memory, and the transforms used."""

    record: Record
    images: list[np.ndarray]
    transforms: list[FocalTransform]
    dropped_labels: int = 0
    # For "depth" and "matches": index in the input record of each label kept in ``record``.
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    source: Record | None = None  # the record before the transform (original pixels)


def unify_record(
    record: Record,
    images: list[np.ndarray],
    target: float,
    size_multiple: int | None = None,
    *,
    enabled: bool = True,
    axes: str = "xy",
) -> UnifiedRecord:
    """Unify every view of ``record`` to focal ``target`` (pixels); ``images`` are its decoded views.

    With ``enabled=False`` the images are left alone (the "no unification" ablation) but the
    record still passes through the same code path, so both arms see identical labels otherwise.
    """
    if not enabled:
        _check_count(record, images)
        ident = [FocalTransform(v.K, v.K, None) for v in record.views]
        kept = {name: np.arange(len(labels)) for name, labels in _label_lists(record).items()}
        return UnifiedRecord(record.model_copy(deep=True), list(images), ident, 0, kept, record)
    out = transform_record(record, images, lambda img, view: unify_focal(img, view.K, target, dist=view.dist, size_multiple=size_multiple, axes=axes))
    out.record.meta["unified_focal"] = float(target)
    return out


def resize_record(record: Record, images: list[np.ndarray], width: int, height: int) -> UnifiedRecord:
    """Resample every view to exactly ``width`` x ``height`` pixels (no unification), moving labels."""
    for view in record.views:
        if view.dist is not None and any(view.dist):
            raise ValueError(f"record {record.id}: resize_record does not undistort; unify instead")
    return transform_record(record, images, lambda img, view: resize_exact(img, view.K, width, height))


def resize_longest_record(record: Record, images: list[np.ndarray], side: int) -> UnifiedRecord:
    """Resample every view with one scale so that its longer side is ``side`` pixels, moving labels."""
    for view in record.views:
        if view.dist is not None and any(view.dist):
            raise ValueError(f"record {record.id}: a longest-side resize does not undistort; unify instead")
    return transform_record(record, images, lambda img, view: resize_longest(img, view.K, side))


def _check_count(record: Record, images: list[np.ndarray]) -> None:
    if len(images) != len(record.views):
        raise ValueError(f"record {record.id}: {len(images)} images for {len(record.views)} views")


def transform_record(record: Record, images: list[np.ndarray], view_fn: Callable[[np.ndarray, View], UnifiedImage]) -> UnifiedRecord:
    """Resample each view with ``view_fn(image, view)`` and move every pixel label accordingly."""
    _check_count(record, images)
    new_views, new_images, transforms = [], [], []
    for view, image in zip(record.views, images):
        out = view_fn(image, view)
        new_views.append(view.model_copy(update={"intrinsics": out.K.to_list(), "dist": None}))
        new_images.append(np.asarray(out.image))
        transforms.append(out.transform)

    update: dict = {"views": new_views}
    kept: dict[str, np.ndarray] = {}
    dropped = 0
    if record.depth is not None:
        px = transforms[0].forward(np.asarray(record.depth.pixels, dtype=np.float64).reshape(-1, 2))
        keep = new_views[0].K.contains(px)
        dropped += int((~keep).sum())
        kept["depth"] = np.flatnonzero(keep)
        update["depth"] = DepthLabels(
            pixels=[tuple(p) for p in px[keep].tolist()],
            depth=[d for d, k in zip(record.depth.depth, keep) if k],
            depth_type=record.depth.depth_type,
        )
    if record.matches is not None:
        p0 = transforms[0].forward(np.asarray(record.matches.pixels0, dtype=np.float64).reshape(-1, 2))
        p1 = transforms[1].forward(np.asarray(record.matches.pixels1, dtype=np.float64).reshape(-1, 2))
        keep = new_views[0].K.contains(p0) & new_views[1].K.contains(p1)
        dropped += int((~keep).sum())
        kept["matches"] = np.flatnonzero(keep)
        update["matches"] = Matches(pixels0=[tuple(p) for p in p0[keep].tolist()], pixels1=[tuple(p) for p in p1[keep].tolist()])
    if record.objects:
        objs = []
        for obj in record.objects:
            if obj.box2d is None:
                objs.append(obj.model_copy())
                continue
            box = transforms[0].boxes_forward(np.asarray(obj.box2d))[0]
            K = new_views[0].K
            box = np.clip(box, 0, [K.width, K.height, K.width, K.height])
            objs.append(obj.model_copy(update={"box2d": tuple(float(v) for v in box)}))
        update["objects"] = objs
    update["meta"] = dict(record.meta)
    return UnifiedRecord(record.model_copy(update=update, deep=True), new_images, transforms, dropped, kept, record)


def _label_lists(record: Record) -> dict[str, list]:
    out: dict[str, list] = {}
    if record.depth is not None:
        out["depth"] = record.depth.pixels
    if record.matches is not None:
        out["matches"] = record.matches.pixels0
    return out
