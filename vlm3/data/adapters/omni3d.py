"""Omni3D (facebookresearch/omni3d) JSON annotations -> object records (3D boxes, camera frame).

Expected tree (``ROOT`` is Omni3D's ``datasets/`` folder: the JSON files from
``Omni3D_json.zip`` in ``Omni3D/``, each source's images where ``DATA.md`` puts them)::

    ROOT/Omni3D/<Dataset>_<split>.json    # e.g. KITTI_train.json, SUNRGBD_val.json, ARKitScenes_test.json
    ROOT/<image file_path>                # e.g. ROOT/KITTI_object/training/image_2/000007.png

One unit per JSON file. ``options.split`` selects the files named ``*_<split>.json`` (``"all"``:
every file); ``options.extra["json"]`` replaces the pattern ``Omni3D/*.json`` (relative to ROOT).
Omni3D's loader joins ``file_path`` to ``datasets/`` (``cubercnn/data/datasets.py``:
``path_to_image_root = 'datasets'``), so record image paths are ``file_path`` as written.

Format (``DATA.md``, COCO-like): ``images`` [{id, width, height, file_path, K (3x3), ...}],
``annotations`` [{image_id, category_name, valid3D, bbox2D_tight / _proj / _trunc [x1, y1, x2, y2],
bbox3D_cam (8x3), center_cam, dimensions [width, height, length], R_cam (3x3), behind_camera,
visibility, truncation, segmentation_pts, lidar_pts, depth_error}], ``categories``. Unavailable
values are -1.

Conventions, with sources:

- Camera frame (``DATA.md``, "Coordinate System"): +x right, +y down, +z toward the screen,
  metres: vlm3's camera frame, no change.
- ``center_cam`` is the box's geometric centre: ``get_cuboid_verts_faces``
  (``cubercnn/util/math_util.py``) puts the 8 corners symmetrically around it.
- ``dimensions`` = [width, height, length] and ``R_cam`` rotates box coordinates into the camera
  frame (object -> camera): ``get_cuboid_verts_faces([X Y Z W H L], R)`` builds corners
  ``R @ (UNIT_CUBE * [L, H, W]) + center``: the LENGTH is along the box's x axis, the height
  along y (the vertical axis; the top face is at -H/2, y down like the camera) and the WIDTH
  along z. ``bbox3D_cam`` lists them in the order of Omni3D's ``UNIT_CUBE``: v0 (-,-,-), v1 (+,-,-), v2 (+,+,-),
  v3 (-,+,-), v4 (-,-,+), v5 (+,-,+), v6 (+,+,+), v7 (-,+,+) in (x·L, y·H, z·W) half-sizes (the
  ``DATA.md`` drawing). Checked on a published indoor Omni3D annotation (the tests): this order fits
  to 1e-7 m, taking the width along x misses by 10 cm.
- vlm3 box (:func:`omni3d_object`, shared with kitti-objects: ``kit.length_x_box``): size =
  (width, height, length) = dimensions as given, R_cam_from_box = R_cam @ ``LENGTH_X_TO_VLM3``
  (vlm3 x = -Omni3D z, y = Omni3D y, z = Omni3D x): the same 8 corners. ``R_cam`` is projected
  onto the nearest rotation (JSON rounding); one that is not a rotation within 1e-3 is skipped.
- Intrinsics: ``K`` as given, pixels with the centre of the top-left pixel at (0, 0) (OpenCV; the
  sources' calibrations: KITTI's P2, SUN RGB-D, ARKitScenes, Objectron), converted to vlm3's corner
  origin (+0.5); ``options.extra["pixel_origin"] = "corner"`` takes K and the 2D boxes as they are.
  Omni3D does not state the origin; half a pixel is below its annotation noise.
- 2D box (names the object in questions): ``bbox2D_tight`` (annotated) when available, else
  ``bbox2D_trunc`` (projected, cut to the image), else ``bbox2D_proj`` cut to the image; in K's
  pixels, so shifted like K. An object without a usable 2D box is skipped (``no_box2d``).

Skipped annotations (counted per record in ``meta.skipped`` and ``meta.skipped_<reason>``;
Omni3D's own ``is_ignore`` with its default thresholds, minus the 2D-height ones):
``behind_camera``, ``invalid_3d`` (valid3D false), ``ignore`` (an ``ignore`` flag, present in
processed copies), ``bad_dimensions`` (not all > 0), ``no_points`` (lidar_pts or
segmentation_pts == 0), ``depth_error`` (> 0.5 m, ``extra["max_depth_error"]``), ``truncated`` (truncation >= 0.99),
``invisible`` (0 <= visibility <= 0.01), ``bad_rotation``, ``bad_center`` (not 3 finite numbers),
``no_box2d``. Annotations of an image id
not in ``images`` are one ``invalid_record`` rejection per file.

Gravity. Omni3D stores no gravity. Default (``extra["gravity"] = "camera"``): ``gravity_cam`` is
left unset, so the object task measures with camera Y as down ((0, 1, 0); Omni3D's images are
upright, ``src_90_rotate`` undone, but a tilted camera tilts "vertical"). ``"boxes"``: the mean of
the kept boxes' vertical axes (R_cam's y column, signed to point down the image), used when every
box's axis lies within 10° of it (objects standing upright), else left unset
(``meta.gravity`` says which).

Options (``options.extra``): ``min_objects`` (default 2, what an object question needs; an image
with fewer kept objects is rejected as ``no_labels``), ``max_depth_error``, ``json``, ``pixel_origin``,
``gravity``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, LayoutError, Rejection, option_float, option_int, register
from vlm3.data.adapters.kit import length_x_box, nearest_rotation
from vlm3.data.records import Record
from vlm3.data.validate import make_record
from vlm3.geometry.camera import Intrinsics

GRAVITY_AGREEMENT_DEG = 10.0
SKIP_REASONS = ("behind_camera", "invalid_3d", "ignore", "bad_dimensions", "no_points", "depth_error",
                "truncated", "invisible", "bad_rotation", "bad_center", "no_box2d")


def _num(anno: dict, key: str, default: float = -1.0) -> float:
    value = anno.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def skip_reason(anno: dict, max_depth_error: float = 0.5) -> str | None:
    """Why Omni3D would ignore this annotation (see the module doc), or None to keep it."""
    if bool(anno.get("behind_camera", False)):
        return "behind_camera"
    if not bool(anno.get("valid3D", True)):
        return "invalid_3d"
    if bool(anno.get("ignore", False)):
        return "ignore"
    dims = anno.get("dimensions")
    if not (_is_finite_list(dims, 3) and min(dims) > 0):
        return "bad_dimensions"
    if _num(anno, "lidar_pts") == 0 or _num(anno, "segmentation_pts") == 0:
        return "no_points"
    if _num(anno, "depth_error") > max_depth_error:
        return "depth_error"
    if _num(anno, "truncation") >= 0.99:
        return "truncated"
    if 0 <= _num(anno, "visibility") <= 0.01:
        return "invisible"
    return None


def omni3d_box2d(anno: dict, width: int, height: int, shift: float) -> tuple[float, float, float, float] | None:
    """The object's 2D box in vlm3 pixels: tight, else trunc, else proj cut to the image, + ``shift``."""
    for key in ("bbox2D_tight", "bbox2D_trunc", "bbox2D_proj"):
        box = anno.get(key)
        if not _is_finite_list(box, 4) or all(v == -1 for v in box):
            continue
        x0, y0, x1, y1 = (float(v) + shift for v in box)
        x0, x1 = max(x0, 0.0), min(x1, float(width))
        y0, y1 = max(y0, 0.0), min(y1, float(height))
        if x0 < x1 and y0 < y1:
            return (x0, y0, x1, y1)
    return None


def omni3d_object(anno: dict, box2d: tuple[float, float, float, float], R_cam: np.ndarray) -> dict:
    """An ``Object3D`` dict of a kept annotation (``R_cam`` already a proper rotation)."""
    w, h, l = (float(v) for v in anno["dimensions"])
    size, R = length_x_box(R_cam, l, h, w)
    return {
        "name": str(anno.get("category_name") or f"category {anno.get('category_id', '?')}"),
        "center": tuple(float(c) for c in anno["center_cam"]),
        "size": size,
        "R_cam_from_box": R.tolist(),
        "box2d": box2d,
    }


def gravity_from_boxes(rotations: list[np.ndarray], max_deg: float = GRAVITY_AGREEMENT_DEG) -> tuple[float, float, float] | None:
    """Mean vertical (y) box axis, signed to point down the image (+camera Y), when all agree within
    ``max_deg``; else None."""
    if not rotations:
        return None
    ys = np.array([R[:, 1] * (1.0 if R[1, 1] >= 0 else -1.0) for R in rotations])
    mean = ys.mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm < 1e-9:
        return None
    mean /= norm
    if np.degrees(np.arccos(np.clip(ys @ mean, -1.0, 1.0))).max() > max_deg:
        return None
    return tuple(float(v) for v in mean)


@register
class Omni3DAdapter(Adapter):
    """Omni3D JSON (KITTI, nuScenes, Objectron, SUN RGB-D, ARKitScenes, Hypersim) -> object records."""

    name: ClassVar[str] = "omni3d"
    description: ClassVar[str] = "Omni3D 3D boxes (6 sources, indoor and outdoor; camera-frame boxes in metres)"
    layout: ClassVar[str] = (
        "ROOT/Omni3D/<Dataset>_<split>.json   (COCO-like: images with K, annotations with center_cam, dimensions [w h l], R_cam)\n"
        "ROOT/<file_path>                     (images, e.g. ROOT/KITTI_object/training/image_2/000007.png)"
    )
    labels: ClassVar[tuple[str, ...]] = ("objects",)

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        self.pattern = self.options.extra.get("json", "Omni3D/*.json")
        self.min_objects = option_int(self.options, "min_objects", 2, minimum=1)
        self.max_depth_error = option_float(self.options, "max_depth_error", 0.5)
        origin = self.options.extra.get("pixel_origin", "center")
        if origin not in ("center", "corner"):
            raise ValueError(f"{self.name}: extra pixel_origin={origin!r}; use 'center' (OpenCV, default) or 'corner'")
        self.shift = 0.5 if origin == "center" else 0.0
        self.gravity = self.options.extra.get("gravity", "camera")
        if self.gravity not in ("camera", "boxes"):
            raise ValueError(f"{self.name}: extra gravity={self.gravity!r}; use 'camera' (default) or 'boxes'")

    def units(self) -> list[str]:
        """The JSON files (paths relative to ROOT) of the split."""
        files = sorted(p for p in self.root.glob(self.pattern) if p.is_file())
        if not files:
            raise LayoutError(f"{self.root}: no file matches {self.pattern!r}; expected:\n{self.layout}")
        if self.options.split != "all":
            files = [p for p in files if p.stem.endswith(f"_{self.options.split}")]
            if not files:
                raise LayoutError(f"{self.root}: no {self.pattern!r} file named *_{self.options.split}.json (split={self.options.split!r}; or use 'all')")
        return [str(p.relative_to(self.root)) for p in files]

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        path = self.root / unit
        try:
            data = json.loads(path.read_text())
            images, annotations = data["images"], data["annotations"]
            if not isinstance(images, list) or not isinstance(annotations, list):
                raise TypeError("'images' and 'annotations' must be lists")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            yield Rejection(unit, "unreadable_file", f"not an Omni3D JSON ({type(e).__name__}: {e})")
            return
        stem = path.stem
        split = stem.rsplit("_", 1)[1] if "_" in stem else self.options.split
        by_image: dict[Any, list[dict]] = {}
        for anno in annotations:
            if isinstance(anno, dict):
                by_image.setdefault(anno.get("image_id"), []).append(anno)
        known = {img.get("id") for img in images if isinstance(img, dict)}
        orphans = sum(len(v) for k, v in by_image.items() if k not in known)
        if orphans:
            yield Rejection(unit, "invalid_record", f"{orphans} annotation(s) name an image id not in 'images'")
        for img in images:
            yield self._record(unit, stem, split, img, by_image.get(img.get("id") if isinstance(img, dict) else None, []))

    def _record(self, unit: str, stem: str, split: str, img: Any, annos: list[dict]) -> Record | Rejection:
        if not isinstance(img, dict) or "id" not in img:
            return Rejection(unit, "invalid_record", f"image entry without an id: {str(img)[:80]}")
        source = f"{unit}:image {img['id']}"
        try:
            width, height = int(img["width"]), int(img["height"])
            K = np.asarray(img["K"], dtype=np.float64)
            file_path = str(img["file_path"])
        except (KeyError, TypeError, ValueError) as e:
            return Rejection(source, "invalid_record", f"image entry lacks width/height/K/file_path ({e})")
        try:
            if K.shape != (3, 3) or np.abs(K[2] - [0, 0, 1]).max() > 1e-9 or abs(K[1, 0]) > 1e-9:
                raise ValueError(f"K = {K.tolist()} is not a pinhole matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
            base = Intrinsics.from_matrix(K, width, height)
            intr = Intrinsics(base.fx, base.fy, base.cx + self.shift, base.cy + self.shift, width, height)
        except ValueError as e:
            return Rejection(source, "bad_calibration", str(e))
        objects, rotations, skipped = [], [], Counter()
        for anno in annos:
            reason = skip_reason(anno, self.max_depth_error)
            R = None
            if reason is None:
                R = nearest_rotation(np.asarray(anno["R_cam"], dtype=np.float64)) if _is_matrix(anno.get("R_cam")) else None
                if R is None:
                    reason = "bad_rotation"
                elif not _is_finite_list(anno.get("center_cam"), 3):
                    reason = "bad_center"
            box2d = omni3d_box2d(anno, width, height, self.shift) if reason is None else None
            if reason is None and box2d is None:
                reason = "no_box2d"
            if reason is not None:
                skipped[reason] += 1
                continue
            objects.append(omni3d_object(anno, box2d, R))
            rotations.append(R)
        counts = {f"skipped_{k}": v for k, v in sorted(skipped.items())}
        if len(objects) < self.min_objects:
            detail = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"
            return Rejection(source, "no_labels", f"{len(objects)} kept object(s), fewer than min_objects={self.min_objects} (skipped: {detail})")
        gravity, how = None, "camera"
        if self.gravity == "boxes":
            gravity = gravity_from_boxes(rotations)
            how = "boxes" if gravity is not None else "camera (boxes disagree)"
        return make_record(
            source,
            id=f"{self.name}/{stem}/{img['id']}",
            dataset=self.name,
            split=split,
            views=[{"image": file_path, "intrinsics": intr.to_list()}],
            gravity_cam=gravity,
            objects=objects,
            meta={"source": source, "image_id": img["id"] if isinstance(img["id"], (int, str)) else str(img["id"]),
                  "gravity": how, "skipped": sum(skipped.values()), **counts},
        )

    def manifest_info(self) -> dict:
        return {
            "source": "Omni3D JSON (facebookresearch/omni3d DATA.md)",
            "frame": "camera: X right, Y down, Z forward, metres (as Omni3D)",
            "boxes": "center_cam; size = dimensions (w, h, l); R = R_cam @ LENGTH_X_TO_VLM3 (Omni3D length along box x)",
            "intrinsics": f"K, pixel origin {'centre (+0.5)' if self.shift else 'corner (as given)'}",
            "gravity_cam": self.gravity,
        }


def _is_finite_list(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)


def _is_matrix(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(_is_finite_list(row, 3) for row in value)
