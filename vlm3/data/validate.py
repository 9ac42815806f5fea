"""Turning candidate inputs into records or rejections, and checking records against their images.

Adapters build records with :func:`make_record` instead of calling ``Record(...)`` directly: a
schema violation then becomes a :class:`~vlm3.data.adapters.base.Rejection` with a short reason
category and the detail, instead of an exception that would stop the whole conversion. Pass
nested labels (``depth``, ``matches``, ``objects``, ``views``) as plain dicts/lists so that their
validation happens inside :func:`make_record` too.

:func:`check_images` (and :func:`load_images`, which also returns the decoded pixels) checks a
record against the files it names. ``vlm3 prepare`` runs it on every record of every adapter, so
adapters do not need to open images themselves.

Rejection reasons are the fixed vocabulary ``vlm3.data.adapters.base.REASONS``. A rejection's ``source`` names the input (e.g. ``"ibims1_val.jsonl:17"``); records can carry it
in ``meta["source"]`` so that image checks done later name the same place.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydantic import ValidationError

from vlm3.data.images import ImageError, ImagePathError, ImageTooLargeError, image_size, open_image, record_image_path
from vlm3.data.records import Record, check_pixels_inside

if TYPE_CHECKING:
    from vlm3.data.adapters.base import Rejection

def make_record(source: str, **fields: Any) -> Record | Rejection:
    """Build a :class:`Record` from keyword fields, or a :class:`Rejection` saying why not.

    ``source`` names the input for the rejection (e.g. ``"file.jsonl:17"``). Besides the schema,
    labelled pixels must be finite (``nonfinite_pixel``) and distortion coefficients usable by
    OpenCV (``bad_calibration``). Image files are not touched here.
    """
    try:
        record = Record(**fields)
    except ValidationError as e:
        reason, detail = _classify(e)
        return _reject(source, reason, detail)
    bad = _first_nonfinite_pixel(record)
    if bad is not None:
        return _reject(source, "pixel_outside_image", bad)
    for i, view in enumerate(record.views):
        # OpenCV's distortion models take 4, 5, 8, 12 or 14 finite coefficients.
        if view.dist is not None and (len(view.dist) not in (4, 5, 8, 12, 14) or not all(map(math.isfinite, view.dist))):
            return _reject(source, "bad_calibration", f"views.{i}.dist = {view.dist} is not 4, 5, 8, 12 or 14 finite coefficients")
    return record


def check_images(
    record: Record, root: str | Path, *, source: str | None = None, decode: bool = True, max_pixels: int | None = None
) -> Rejection | None:
    """Check every view's image file under ``root`` and the labelled pixels; None if all is well.

    Checks, in order: the record's image path stays inside ``root`` (``image_outside_root``: no
    absolute path, no ``..``; ``vlm3.data.images.record_image_path``), the file exists
    (``missing_file``), its header's width x height is within the pixel cap (``image_too_large``;
    ``max_pixels``, default ``vlm3.data.images.max_image_pixels()``), it decodes
    (``unreadable_file``; with ``decode=False`` only the header is read, which misses truncated
    files), its size equals the intrinsics' width x height (``size_mismatch``), and labelled pixels
    lie inside their image (``pixel_outside_image``, via ``records.check_pixels_inside``).
    """
    out = _inspect(record, Path(root), source, decode=decode, keep=False, max_pixels=max_pixels)
    return None if isinstance(out, list) else out


def load_images(
    record: Record, root: str | Path, *, source: str | None = None, max_pixels: int | None = None
) -> list[np.ndarray] | Rejection:
    """Decode every view's image (uint8 RGB (H, W, 3) or grey (H, W)) after the :func:`check_images` checks.

    Returns the arrays in view order, or the :class:`Rejection` of the first failed check.
    """
    return _inspect(record, Path(root), source, decode=True, keep=True, max_pixels=max_pixels)


def image_path(root: str | Path, image: str) -> Path:
    """Location of a record's image under the dataset root; ImagePathError (an OSError) for an
    absolute path or one with ``..`` (``vlm3.data.images.record_image_path``)."""
    return record_image_path(root, image)


# --- internals ---------------------------------------------------------------------------------


def _reject(source: str, reason: str, detail: str) -> Rejection:
    # Imported here, not at module level: importing the adapters package imports every adapter,
    # and adapters import this module, so a top-level import would be circular.
    from vlm3.data.adapters.base import Rejection

    return Rejection(source, reason, detail)


def _inspect(
    record: Record, root: Path, source: str | None, *, decode: bool, keep: bool, max_pixels: int | None = None
) -> list[np.ndarray] | Rejection:
    src = source or str(record.meta.get("source") or record.id)
    arrays: list[np.ndarray] = []
    for i, view in enumerate(record.views):
        where = f"views[{i}].image = {view.image!r}"
        try:
            path = record_image_path(root, view.image, where=f"views[{i}].image")
        except ImagePathError as e:
            return _reject(src, "image_outside_root", str(e))
        if not path.is_file():
            return _reject(src, "missing_file", f"{where}: no file {path}")
        try:
            if decode:
                im = open_image(path, max_pixels=max_pixels)  # pixel cap from the header, then a full decode
                size = im.size
                if keep:
                    arrays.append(_to_array(im))
            else:
                size = image_size(path, max_pixels=max_pixels)
        except ImageTooLargeError as e:
            return _reject(src, "image_too_large", f"{where}: {e}")
        except ImageError as e:  # not an image, truncated, garbled
            return _reject(src, "unreadable_file", f"{where}: {e}")
        K = view.K
        if size != (K.width, K.height):
            return _reject(
                src, "size_mismatch", f"{where}: image is {size[0]}x{size[1]} but intrinsics say {K.width}x{K.height}"
            )
    problems = check_pixels_inside(record)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return _reject(src, "pixel_outside_image", problems[0] + more)
    return arrays


def _to_array(im: Image.Image) -> np.ndarray:
    # Keep 8-bit grey and RGB as they are; everything else (palette, RGBA, CMYK, 16-bit) becomes RGB.
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    return np.asarray(im)


def _first_nonfinite_pixel(record: Record) -> str | None:
    groups = []
    if record.depth is not None:
        groups.append(("depth.pixels", record.depth.pixels))
    if record.matches is not None:
        groups += [("matches.pixels0", record.matches.pixels0), ("matches.pixels1", record.matches.pixels1)]
    for name, pixels in groups:
        for i, (x, y) in enumerate(pixels):
            if not (math.isfinite(x) and math.isfinite(y)):
                return f"{name}[{i}] = ({x}, {y}) is not finite"
    return None


def _classify(err: ValidationError) -> tuple[str, str]:
    """Map the first pydantic error to a reason category; the detail names the field and value."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    where = ".".join(str(x) for x in loc) or "record"
    msg = str(first["msg"]).removeprefix("Value error, ")
    detail = f"{where}: {msg}"
    if len(err.errors()) > 1:
        detail += f" (+{len(err.errors()) - 1} more)"
    kind = first["type"]
    top = loc[0] if loc else None
    if top == "views" and len(loc) >= 3 and loc[2] in ("intrinsics", "dist"):
        return "bad_calibration", detail
    if top == "views" and len(loc) >= 3 and loc[2] == "T_cam_from_world":
        return "bad_pose", detail
    if top == "depth" and kind == "value_error" and "finite positive" in msg:
        return "bad_depth", detail
    return "invalid_record", detail  # missing or mistyped fields, unequal label lists, bad objects, ...
