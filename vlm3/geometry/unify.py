"""Focal-length unification: resample an image so that fx = fy = target, and map labels exactly.

VLM3's first ingredient. Scaling the image by s = target / fx (and, when fx != fy, by target / fy
along y, which resamples to square pixels in the same step) makes every image look as if taken
with the same focal length, so the VLM can read metric scale from image size and content alone.
Metric depth, 3D distances and poses are unchanged; pixel labels move with u' = (u - cx) * sx + cx'.

The warp is one exact affine map in the corner-origin pixel convention (see ``camera.py``):
u' = sx * u, v' = sy * v, so the new focal lengths equal the target exactly (no rounding of the
scale to whole output sizes). The output canvas is round(W * sx) x round(H * sy) pixels (the
released checkpoints' sizes), or, with ``size_multiple``, the exact size W * sx x H * sy rounded
UP to that multiple (e.g. the VLM's patch size, so that its processor does not resize again):
the canvas is then padded (black) at the right and bottom only, never cropped, which leaves cx, cy
unchanged and keeps every pixel of the original image, so no label is ever lost to the rounding
(:func:`pad_to_multiple`). Without a multiple the canvas may fall short of the exact extent by
less than one pixel (rounding, or the truncation of ``axes="x"``); a label in that sliver is still
asked, at the last pixel (``vlm3.data.unify``). With lens distortion coefficients, OpenCV
undistorts in the same resampling (``cv2.initUndistortRectifyMap`` with the target camera as the
new camera matrix); the undistorted image can then reach beyond the canvas (barrel distortion),
and labels there cannot be shown to the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from vlm3.geometry.camera import Intrinsics

ImageLike = np.ndarray | Image.Image


@dataclass(frozen=True)
class FocalTransform:
    """Maps pixel labels between an original image (``src``) and its unified version (``dst``).

    All coordinates are continuous, corner-origin pixels (x = column, y = row).
    """

    src: Intrinsics
    dst: Intrinsics
    dist: tuple[float, ...] | None = field(default=None)

    @property
    def sx(self) -> float:
        """Scale along x (new pixels per old pixel)."""
        return self.dst.fx / self.src.fx

    @property
    def sy(self) -> float:
        """Scale along y (new pixels per old pixel)."""
        return self.dst.fy / self.src.fy

    def forward(self, uv: np.ndarray) -> np.ndarray:
        """Original-image pixels (N, 2) -> unified-image pixels (N, 2)."""
        uv = _as_points(uv)
        if self.dist is not None:
            pts = cv2.undistortPoints(
                uv.reshape(-1, 1, 2) - 0.5, _opencv_K(self.src), np.asarray(self.dist, np.float64)
            ).reshape(-1, 2)
            xn, yn = pts[:, 0], pts[:, 1]
        else:
            xn = (uv[:, 0] - self.src.cx) / self.src.fx
            yn = (uv[:, 1] - self.src.cy) / self.src.fy
        return np.stack([xn * self.dst.fx + self.dst.cx, yn * self.dst.fy + self.dst.cy], axis=1)

    def backward(self, uv: np.ndarray) -> np.ndarray:
        """Unified-image pixels (N, 2) -> original-image pixels (N, 2)."""
        uv = _as_points(uv)
        xn = (uv[:, 0] - self.dst.cx) / self.dst.fx
        yn = (uv[:, 1] - self.dst.cy) / self.dst.fy
        if self.dist is not None:
            pts = np.stack([xn, yn, np.ones_like(xn)], axis=1)
            out, _ = cv2.projectPoints(
                pts, np.zeros(3), np.zeros(3), _opencv_K(self.src), np.asarray(self.dist, np.float64)
            )
            return out.reshape(-1, 2) + 0.5
        return np.stack([xn * self.src.fx + self.src.cx, yn * self.src.fy + self.src.cy], axis=1)

    def boxes_forward(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (N, 4) as (x_min, y_min, x_max, y_max) in the original image -> unified image.

        Exact for undistorted cameras (an axis-aligned scale keeps boxes axis-aligned); with
        distortion the result is the bounding box of the four mapped corners.
        """
        return _map_boxes(np.asarray(boxes, dtype=np.float64), self.forward)

    def boxes_backward(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (N, 4) in the unified image -> original image."""
        return _map_boxes(np.asarray(boxes, dtype=np.float64), self.backward)


@dataclass(frozen=True)
class UnifiedImage:
    """Result of :func:`unify_focal`: the resampled image, its intrinsics and the label transform."""

    image: ImageLike
    K: Intrinsics
    transform: FocalTransform


def unified_intrinsics(K: Intrinsics, target: float, size_multiple: int | None = None, axes: str = "xy") -> Intrinsics:
    """Intrinsics of the unified image: fx = fy = target, cx, cy scaled, size rounded, or padded up
    to ``size_multiple`` (see module doc).

    ``axes="x"`` scales both axes by target / fx alone (fy becomes fy * target / fx) and truncates
    the sizes, as SpatialRGPT's object pipeline (and the released VLM3-object) does.
    """
    if not target > 0:
        raise ValueError(f"target focal must be > 0, got {target}")
    if axes not in ("xy", "x"):
        raise ValueError(f"axes must be 'xy' or 'x', got {axes!r}")
    if axes == "x":
        s = target / K.fx
        if size_multiple:
            raise ValueError("axes='x' keeps the released pipeline's truncated size: size_multiple does not apply")
        return K.scaled(s, s, width=max(1, int(K.width * s)), height=max(1, int(K.height * s)))
    sx, sy = target / K.fx, target / K.fy
    w, h = max(1, round(K.width * sx)), max(1, round(K.height * sy))
    if size_multiple:
        w, h = pad_to_multiple(K.width * sx, size_multiple), pad_to_multiple(K.height * sy, size_multiple)
    return Intrinsics(target, target, K.cx * sx, K.cy * sy, w, h)


def pad_to_multiple(extent: float, multiple: int) -> int:
    """The canvas side (pixels) for an exact scaled side of ``extent`` pixels: the smallest multiple
    of ``multiple`` that holds it (padding, never cropping), at least one multiple.

    An extent within 1e-6 px above a multiple (floating-point noise of W * target / fx) counts as
    that multiple. Example: 160.1 px at multiple 28 -> 168; 120.4 -> 140; 168.0 -> 168.
    """
    if isinstance(multiple, bool) or int(multiple) != multiple or multiple < 1:
        raise ValueError(f"size_multiple must be a whole number >= 1, got {multiple!r}")
    if not (math.isfinite(extent) and extent > 0):
        raise ValueError(f"image extent must be a positive number of pixels, got {extent!r}")
    m = int(multiple)
    return m * max(1, math.ceil(extent / m - 1e-6 / m))


def unify_focal(
    image: ImageLike,
    K: Intrinsics,
    target: float,
    *,
    dist: tuple[float, ...] | list[float] | None = None,
    size_multiple: int | None = None,
    antialias: bool = True,
    interpolation: str = "linear",
    axes: str = "xy",
) -> UnifiedImage:
    """Resample ``image`` (taken with intrinsics ``K``) so that fx = fy = ``target`` pixels.

    Args:
        image: H x W (x C) array or PIL image whose size must equal (K.width, K.height).
        K: intrinsics of ``image`` (corner-origin convention).
        target: the unified focal length in pixels (the paper's is ``vlm3.settings.DEFAULT_FOCAL_PX``).
        dist: optional OpenCV distortion coefficients (k1, k2, p1, p2[, k3, ...]) of ``image``;
            the unified image is then undistorted as well.
        size_multiple: pad the output size up to this multiple (at the right and bottom; see
            :func:`pad_to_multiple`): every pixel of ``image`` stays in view.
        antialias: Gaussian pre-filter when shrinking, so that downscaling does not alias.
        interpolation: ``"linear"``, ``"cubic"`` or ``"nearest"`` (use nearest for label maps;
            see :func:`warp_depth`).
        axes: ``"xy"`` (fx and fy both become ``target``) or ``"x"`` (see :func:`unified_intrinsics`).

    Returns:
        UnifiedImage with the new image (same type as the input), new intrinsics and the transform.
    """
    is_pil = isinstance(image, Image.Image)
    arr = np.asarray(image)
    h, w = arr.shape[:2]
    if (w, h) != (K.width, K.height):
        raise ValueError(f"image is {w}x{h} but intrinsics describe {K.width}x{K.height}")
    dst = unified_intrinsics(K, target, size_multiple, axes)
    dist_t = _clean_dist(dist)
    transform = FocalTransform(K, dst, dist_t)
    out = _resample(arr, transform, antialias=antialias, interpolation=interpolation)
    if is_pil:
        out = Image.fromarray(out, mode=image.mode if image.mode in ("L", "RGB", "RGBA") else None)
    return UnifiedImage(out, dst, transform)


def longest_side_intrinsics(K: Intrinsics, side: int) -> Intrinsics:
    """Intrinsics after one scale s = side / max(W, H) on both axes, sizes rounded (no focal change
    other than by s): the released VLM3-corr pipeline's view."""
    if isinstance(side, bool) or int(side) != side or side < 1:
        raise ValueError(f"longest side must be a positive whole number of pixels, got {side!r}")
    s = side / max(K.width, K.height)
    return K.scaled(s, s, width=max(1, round(K.width * s)), height=max(1, round(K.height * s)))


def resize_longest(image: ImageLike, K: Intrinsics, side: int, *, antialias: bool = True) -> UnifiedImage:
    """Resample ``image`` with one scale so that its longer side has ``side`` pixels (labels move exactly)."""
    _check_image(image, K)
    return _rescale(image, K, longest_side_intrinsics(K, side), antialias)


def resize_exact(image: ImageLike, K: Intrinsics, width: int, height: int, *, antialias: bool = True) -> UnifiedImage:
    """Resample ``image`` to exactly ``width`` x ``height`` (no focal unification; x and y scale apart).

    The "no unification" arm of the recipe's ablation: every image gets the same pixel size
    whatever its focal length. Labels still move exactly (u' = u * width / W).
    """
    _check_image(image, K)
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    return _rescale(image, K, K.scaled(width / K.width, height / K.height, width=width, height=height), antialias)


def _check_image(image: ImageLike, K: Intrinsics) -> None:
    h, w = np.asarray(image).shape[:2] if not isinstance(image, Image.Image) else (image.height, image.width)
    if (w, h) != (K.width, K.height):
        raise ValueError(f"image is {w}x{h} but intrinsics describe {K.width}x{K.height}")


def _rescale(image: ImageLike, K: Intrinsics, dst: Intrinsics, antialias: bool) -> UnifiedImage:
    """Resample ``image`` (intrinsics ``K``) to the pinhole view ``dst`` (an axis-aligned scale)."""
    transform = FocalTransform(K, dst, None)
    out = _resample(np.asarray(image), transform, antialias=antialias, interpolation="linear")
    return UnifiedImage(Image.fromarray(out) if isinstance(image, Image.Image) else out, dst, transform)


def warp_depth(depth: np.ndarray, transform: FocalTransform) -> np.ndarray:
    """Resample a dense depth (or any label) map into the unified image, nearest neighbour.

    Depth values are metric and unchanged by the resize; pixels that map outside the source
    (padding) become NaN.
    """
    depth = np.asarray(depth, dtype=np.float32)
    return _resample(depth, transform, antialias=False, interpolation="nearest", fill=np.nan)


# --- internals ---------------------------------------------------------------------------------

_INTERP = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


def _as_points(uv: np.ndarray) -> np.ndarray:
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim == 1:
        uv = uv.reshape(1, 2)
    if uv.shape[-1] != 2:
        raise ValueError(f"pixel arrays must have shape (N, 2), got {uv.shape}")
    return uv.reshape(-1, 2)


def _opencv_K(K: Intrinsics) -> np.ndarray:
    """OpenCV uses the pixel-centre origin: shift the principal point by -0.5."""
    return np.array([[K.fx, 0, K.cx - 0.5], [0, K.fy, K.cy - 0.5], [0, 0, 1]], dtype=np.float64)


def _clean_dist(dist: tuple[float, ...] | list[float] | None) -> tuple[float, ...] | None:
    if dist is None:
        return None
    d = tuple(float(x) for x in dist)
    if len(d) not in (4, 5, 8, 12, 14):
        raise ValueError(f"distortion must have 4, 5, 8, 12 or 14 coefficients (OpenCV), got {len(d)}")
    if not all(np.isfinite(d)):
        raise ValueError(f"distortion coefficients must be finite, got {d}")
    return None if not any(d) else d


def _map_boxes(boxes: np.ndarray, fn) -> np.ndarray:
    if boxes.ndim == 1:
        boxes = boxes.reshape(1, 4)
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as (x_min, y_min, x_max, y_max), got {boxes.shape}")
    x0, y0, x1, y1 = boxes.T
    corners = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x0, y1], 1), np.stack([x1, y1], 1)], 1)
    mapped = fn(corners.reshape(-1, 2)).reshape(-1, 4, 2)
    return np.concatenate([mapped.min(axis=1), mapped.max(axis=1)], axis=1)


def _resample(arr: np.ndarray, t: FocalTransform, *, antialias: bool, interpolation: str, fill: float = 0.0) -> np.ndarray:
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {interpolation!r}")
    src = arr
    if antialias and interpolation != "nearest" and (t.sx < 1 or t.sy < 1):
        # Same pre-filter width as skimage.transform.rescale(anti_aliasing=True).
        sig_x, sig_y = max(0.0, (1 / t.sx - 1) / 2), max(0.0, (1 / t.sy - 1) / 2)
        src = cv2.GaussianBlur(arr, (0, 0), sigmaX=sig_x if sig_x > 0 else 1e-6, sigmaY=sig_y if sig_y > 0 else 1e-6)
    dw, dh = t.dst.width, t.dst.height
    flags = _INTERP[interpolation]
    if t.dist is None:
        # Corner-origin u' = sx*u becomes, in OpenCV's centre-origin coordinates, x' = sx*x + (sx - 1)/2.
        M = np.array([[t.sx, 0.0, (t.sx - 1) / 2], [0.0, t.sy, (t.sy - 1) / 2]])
        out = cv2.warpAffine(src, M, (dw, dh), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    else:
        map1, map2 = cv2.initUndistortRectifyMap(
            _opencv_K(t.src), np.asarray(t.dist), None, _opencv_K(t.dst), (dw, dh), cv2.CV_32FC1
        )
        out = cv2.remap(src, map1, map2, interpolation=flags, borderMode=cv2.BORDER_REPLICATE)
    # Replicated borders cover the sub-pixel edge of the content; anything further is padding.
    content_w = int(np.ceil(t.src.width * t.sx - 1e-9))
    content_h = int(np.ceil(t.src.height * t.sy - 1e-9))
    if out.dtype.kind == "f" or fill == 0.0:
        if content_w < dw:
            out[:, content_w:] = fill
        if content_h < dh:
            out[content_h:] = fill
    return out
