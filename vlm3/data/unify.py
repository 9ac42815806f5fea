"""Apply focal-length unification to a record: resample its images and move every pixel label.

Depth values, 3D boxes and poses are metric and do not change; pixels, 2D boxes (``Object3D.box2d``
and the regions of ``Record.qa``, by the same rule) and intrinsics do.

No label is lost to the view transform itself: ``size_multiple`` pads the canvas up to the
multiple (``vlm3.geometry.unify.pad_to_multiple``), and a label in the sub-pixel sliver that
rounding a size without a multiple cuts off (less than 1 px at the right or bottom) is kept at its
exact position and asked at the last column/row (its text coordinate is N - 1, as quantisation
gives any position there). A label is **not asked** only when its transformed position truly lies
outside what the model is shown: not finite, left of / above the canvas, or one pixel or more
beyond its right / bottom edge. The reason (:data:`NOT_ASKED`) depends on the record and the
settings alone, never on a model:

- ``outside_undistorted_image``: the view has lens distortion and the label's undistorted
  position falls outside the unified canvas (barrel distortion pushes corners outwards);
- ``outside_image``: without distortion, only for a label outside its own source image.

A match is asked only when both of its pixels can be shown. Not-asked labels are left out of
``UnifiedRecord.record`` and listed with their reason in ``UnifiedRecord.not_asked``;
``UnifiedRecord.full`` keeps every label (exact transformed positions) so that evaluation can
still score them, as failures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vlm3.data.records import DepthLabels, Matches, Record, View
from vlm3.geometry.camera import Intrinsics
from vlm3.geometry.unify import FocalTransform, UnifiedImage, resize_exact, resize_longest, unify_focal

#: Why a label is not asked (reason code -> what ``vlm3 predict`` and the eval report say).
NOT_ASKED: dict[str, str] = {
    "outside_undistorted_image": "outside the undistorted image (lens distortion moves it beyond the unified canvas)",
    "outside_image": "outside the transformed image",
}


@dataclass
class UnifiedRecord:
    """A record whose views are unified, their images in memory, and the transforms used.

    ``record`` holds the labels that can be asked; ``kept[field]`` ("depth", "matches") maps each
    of them to its index in the input record. ``not_asked[field]`` maps the input index of every
    other label to its reason code (:data:`NOT_ASKED`), and ``dropped_labels`` counts them.
    ``full`` is ``record`` with every label, at exact transformed positions (some outside the
    canvas); None when nothing is left out.
    """

    record: Record
    images: list[np.ndarray]
    transforms: list[FocalTransform]
    dropped_labels: int = 0
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    source: Record | None = None  # the record before the transform (original pixels)
    not_asked: dict[str, dict[int, str]] = field(default_factory=dict)
    full: Record | None = None


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
        kept = {name: np.arange(len(labels)) for name, labels in label_lists(record).items()}
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
    full: dict = {}
    kept: dict[str, np.ndarray] = {}
    not_asked: dict[str, dict[int, str]] = {}
    if record.depth is not None:
        px, why = _forward(transforms[0], new_views[0].K, record.depth.pixels)
        keep = why == ""
        kept["depth"] = np.flatnonzero(keep)
        not_asked["depth"] = {int(i): str(why[i]) for i in np.flatnonzero(~keep)}
        full["depth"] = record.depth.model_copy(update={"pixels": [tuple(p) for p in px.tolist()]})
        update["depth"] = DepthLabels(
            pixels=[tuple(p) for p in px[keep].tolist()],
            depth=[d for d, k in zip(record.depth.depth, keep) if k],
            depth_type=record.depth.depth_type,
        )
    if record.matches is not None:
        p0, why0 = _forward(transforms[0], new_views[0].K, record.matches.pixels0)
        p1, why1 = _forward(transforms[1], new_views[1].K, record.matches.pixels1)
        why = np.where(why0 != "", why0, why1)
        keep = why == ""
        kept["matches"] = np.flatnonzero(keep)
        not_asked["matches"] = {int(i): str(why[i]) for i in np.flatnonzero(~keep)}
        full["matches"] = Matches(pixels0=[tuple(p) for p in p0.tolist()], pixels1=[tuple(p) for p in p1.tolist()])
        update["matches"] = Matches(pixels0=[tuple(p) for p in p0[keep].tolist()], pixels1=[tuple(p) for p in p1[keep].tolist()])
    if record.objects:
        objs = []
        for obj in record.objects:
            if obj.box2d is None:
                objs.append(obj.model_copy())
                continue
            objs.append(obj.model_copy(update={"box2d": _map_box(transforms[0], new_views[0].K, obj.box2d)}))
        update["objects"] = objs
    if record.qa:
        # Region boxes of questions asked as written move exactly like Object3D.box2d.
        update["qa"] = [
            qa.model_copy(update={"regions": [_map_box(transforms[0], new_views[0].K, box) for box in qa.regions]})
            for qa in record.qa
        ]
    update["meta"] = dict(record.meta)
    dropped = sum(len(v) for v in not_asked.values())
    out = record.model_copy(update=update, deep=True)
    whole = out.model_copy(update=full, deep=True) if dropped else None
    return UnifiedRecord(out, new_images, transforms, dropped, kept, record, not_asked, whole)


def _map_box(transform: FocalTransform, K: Intrinsics, box) -> tuple[float, float, float, float]:
    """A 2D box (x_min, y_min, x_max, y_max) of the source view in the transformed view, clipped to
    its canvas (the same rule for ``Object3D.box2d`` and ``RegionQA.regions``)."""
    out = transform.boxes_forward(np.asarray(box, dtype=np.float64))[0]
    out = np.clip(out, 0, [K.width, K.height, K.width, K.height])
    return tuple(float(v) for v in out)


def not_asked_reasons(transform: FocalTransform, K: Intrinsics, pixels: np.ndarray) -> np.ndarray:
    """Per transformed pixel (N, 2) of a view with canvas ``K``: "" when it can be asked, else the
    reason code (:data:`NOT_ASKED`). Depends on the geometry alone.

    A pixel can be asked when it is finite and lies inside the canvas or less than one pixel
    beyond its right / bottom edge: the sliver that rounding (or truncating) a size without a
    multiple cuts off is always narrower, and such a pixel is asked at the last column / row.
    """
    uv = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    eps = 1e-6  # floating-point noise of the forward map at the left/top edge (u = 0)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(uv).all(axis=1) & (uv[:, 0] >= -eps) & (uv[:, 0] < K.width + 1) & (uv[:, 1] >= -eps) & (uv[:, 1] < K.height + 1)
    reason = "outside_undistorted_image" if transform.dist is not None else "outside_image"
    return np.where(ok, "", reason).astype(object)


def _forward(transform: FocalTransform, K: Intrinsics, pixels: list) -> tuple[np.ndarray, np.ndarray]:
    """Transformed positions (N, 2) of original pixels and their :func:`not_asked_reasons`. A pixel
    the undistortion cannot place (non-finite) is not asked and keeps its pinhole position, used
    only to convert its ground truth."""
    uv = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    px = transform.forward(uv)
    why = not_asked_reasons(transform, K, px)
    bad = ~np.isfinite(px).all(axis=1)
    if bad.any():
        px[bad] = FocalTransform(transform.src, transform.dst, None).forward(uv[bad])
    return px, why


def label_lists(record: Record) -> dict[str, list]:
    """The per-label pixel lists of a record by field ("depth": depth pixels, "matches": pixels0)."""
    out: dict[str, list] = {}
    if record.depth is not None:
        out["depth"] = record.depth.pixels
    if record.matches is not None:
        out["matches"] = record.matches.pixels0
    return out
