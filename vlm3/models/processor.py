"""The VLM processor's own resize, made explicit so that focal unification is not silently undone.

Qwen-VL image processors resize every image before patching (``smart_resize``): each side is
rounded to a multiple of the *patch multiple* (vision patch size x spatial merge: 28 px for
Qwen2.5-VL, 32 px for Qwen3-VL), and the whole image is scaled down or up to fit the pixel budget
``[min_pixels, max_pixels]``. The resize is a plain stretch of the full image (no crop or pad), so
in vlm3's corner-origin pixel convention (see ``vlm3.geometry.camera``) it is the pure scale
u' = (new_w / w) * u, v' = (new_h / h) * v, and the intrinsics the model actually sees are K scaled
by those two factors. Width and height are rounded separately, so the two factors generally
differ and fx != fy afterwards.

vlm3 chooses the unified image size so that the processor does not resize at all
(``size_multiple`` = the patch multiple gives such sizes when they are inside the pixel budget);
:func:`resize_report` says what the processor would do to a size, and training refuses samples it
would resize. All functions accept the full processor (``AutoProcessor``) or its ``image_processor``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ResizeReport:
    """What the image processor does to an image of ``width x height`` pixels.

    ``scale_x`` / ``scale_y`` are new pixels per old pixel; an intrinsic focal fx becomes
    fx * scale_x (fy * scale_y).
    """

    width: int
    height: int
    new_width: int
    new_height: int
    patch_multiple: int
    min_pixels: int
    max_pixels: int

    @property
    def resized(self) -> bool:
        return (self.new_width, self.new_height) != (self.width, self.height)

    @property
    def scale_x(self) -> float:
        return self.new_width / self.width

    @property
    def scale_y(self) -> float:
        return self.new_height / self.height

    def describe(self, fx: float | None = None, fy: float | None = None) -> str:
        """One human-readable sentence; with ``fx`` / ``fy`` it also states the focal change in pixels."""
        if not self.resized:
            return f"{self.width}x{self.height} is kept as is by the image processor"
        text = (
            f"the image processor resizes {self.width}x{self.height} to {self.new_width}x{self.new_height} "
            f"(x{self.scale_x:.4f} horizontally, x{self.scale_y:.4f} vertically), so the effective focal "
            f"length changes by {100 * (self.scale_x - 1):+.2f}% in x and {100 * (self.scale_y - 1):+.2f}% in y"
        )
        if fx is not None:
            fy = fx if fy is None else fy
            text += f" (fx {fx:.2f} -> {fx * self.scale_x:.2f} px, fy {fy:.2f} -> {fy * self.scale_y:.2f} px)"
        ok = self.min_pixels <= self.width * self.height <= self.max_pixels
        text += (
            f"; sizes that are kept as is are multiples of {self.patch_multiple} px with "
            f"{self.min_pixels} <= width * height <= {self.max_pixels}"
        )
        if not ok:
            text += f" (this image has {self.width * self.height} pixels, outside that budget)"
        return text


def image_processor_of(processor):
    """The image processor of a processor (or the argument itself if it is one)."""
    ip = getattr(processor, "image_processor", None) or processor
    if not hasattr(ip, "patch_size") or not hasattr(ip, "merge_size"):
        raise TypeError(
            f"{type(processor).__name__} has no Qwen-VL style image processor (patch_size and merge_size); "
            "vlm3's resize control supports the Qwen2-VL / Qwen2.5-VL / Qwen3-VL processors"
        )
    return ip


def patch_multiple_of(processor) -> int:
    """Side multiple the processor snaps images to: patch size x merge size (28 / 32 for Qwen2.5 / Qwen3-VL)."""
    ip = image_processor_of(processor)
    return int(ip.patch_size) * int(ip.merge_size)


def pixel_budget(processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) the processor resizes images into."""
    ip = image_processor_of(processor)
    size = getattr(ip, "size", None)
    lo = _get(size, "shortest_edge")
    hi = _get(size, "longest_edge")
    # Older saves keep the budget as separate attributes.
    lo = getattr(ip, "min_pixels", None) if lo is None else lo
    hi = getattr(ip, "max_pixels", None) if hi is None else hi
    if lo is None or hi is None:
        raise ValueError(f"cannot read the pixel budget of {type(ip).__name__} (size={size!r})")
    return int(lo), int(hi)


def set_pixel_budget(processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Pin the processor's pixel budget (in place). ``None`` keeps the current bound."""
    ip = image_processor_of(processor)
    lo, hi = pixel_budget(ip)
    lo = lo if min_pixels is None else int(min_pixels)
    hi = hi if max_pixels is None else int(max_pixels)
    if not 0 < lo <= hi:
        raise ValueError(f"pixel budget must satisfy 0 < min_pixels <= max_pixels, got {lo}, {hi}")
    ip.size = {"shortest_edge": lo, "longest_edge": hi}
    for name, value in (("min_pixels", lo), ("max_pixels", hi)):
        if hasattr(ip, name):  # keep legacy mirrors consistent
            setattr(ip, name, value)


def resize_report(width: int, height: int, processor) -> ResizeReport:
    """What the processor does to a ``width x height`` image: exactly its own ``smart_resize``
    with its patch multiple and pixel budget (``image_grid_thw[1:] * patch_size``)."""
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive integers, got {width}x{height}")
    width, height = int(width), int(height)
    ip = image_processor_of(processor)
    multiple = patch_multiple_of(ip)
    lo, hi = pixel_budget(ip)
    if getattr(ip, "do_resize", True):
        new_h, new_w = _smart_resize_for(ip)(height, width, factor=multiple, min_pixels=lo, max_pixels=hi)
    else:
        # Without resizing the patchifier needs exact multiples; report the size unchanged.
        if width % multiple or height % multiple:
            raise ValueError(
                f"the image processor has do_resize=False, so {width}x{height} must be multiples of {multiple} px"
            )
        new_h, new_w = height, width
    return ResizeReport(width, height, int(new_w), int(new_h), multiple, lo, hi)


# --- internals ---------------------------------------------------------------------------------


def _get(size, key: str):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _smart_resize_for(ip):
    """The ``smart_resize`` of the image processor's own module (all Qwen-VL variants define one)."""
    module = importlib.import_module(type(ip).__module__)
    fn = getattr(module, "smart_resize", None)
    if fn is None:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as fn
    return fn
