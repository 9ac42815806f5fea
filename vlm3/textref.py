"""Text pixel references: pixels and boxes as integer coordinates normalised to [0, N).

VLM3's second ingredient. A pixel is named in the prompt by text, not by a marker drawn on the
image: nx = round(x / W * N), ny = round(y / H * N), with (x, y) continuous corner-origin pixel
coordinates of the (unified) image of size W x H (see ``vlm3.geometry.camera``), and N =
``vlm3.settings.DEFAULT_N_COORDS`` by default (some released checkpoints use 1000). A pixel with integer array index i is at its centre
x = i + 0.5. A value that rounds to N (only possible within half a unit of the right or bottom
edge) is clamped to N - 1.

Decoding returns the continuous position x = nx / N * W (so encode -> decode is within half a
normalised unit, W / (2N) pixels); :func:`decode_pixel_index` snaps to the pixel containing it.
Out-of-range input is an error (``ValueError``) unless ``clamp=True`` is asked for explicitly.

Boxes are written ``(xMin, yMin, xMax, yMax)`` in the same normalised space.
"""

from __future__ import annotations

import re

import numpy as np

from vlm3.settings import DEFAULT_N_COORDS


def _check_n(n: int) -> None:
    if int(n) != n or n < 2:
        raise ValueError(f"normalisation range N must be an integer >= 2, got {n!r}")


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got {width}x{height}")


def encode_pixel(x: float, y: float, width: int, height: int, n: int = DEFAULT_N_COORDS, *, clamp: bool = False) -> tuple[int, int]:
    """Continuous pixel (x = column, y = row) of a W x H image -> integer text coordinates in [0, n).

    Raises ValueError for pixels outside [0, W] x [0, H] unless ``clamp`` is True.
    """
    out = encode_pixels(np.array([[x, y]], dtype=np.float64), width, height, n, clamp=clamp)
    return int(out[0, 0]), int(out[0, 1])


def encode_pixels(xy: np.ndarray, width: int, height: int, n: int = DEFAULT_N_COORDS, *, clamp: bool = False) -> np.ndarray:
    """Vectorised :func:`encode_pixel`: (N, 2) continuous pixels -> (N, 2) int64 text coordinates."""
    _check_n(n)
    _check_size(width, height)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(xy)):
        raise ValueError("pixel coordinates must be finite")
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] >= 0) & (xy[:, 1] <= height)
    if not clamp and not inside.all():
        bad = xy[~inside][0]
        raise ValueError(f"pixel ({bad[0]:.3f}, {bad[1]:.3f}) lies outside the {width}x{height} image")
    scaled = np.stack([xy[:, 0] / width * n, xy[:, 1] / height * n], axis=1)
    # np.round is half-to-even; the paper's Python round() is too, so ties match its samples.
    return np.clip(np.round(scaled), 0, n - 1).astype(np.int64)


def decode_pixel(nx: float, ny: float, width: int, height: int, n: int = DEFAULT_N_COORDS, *, clamp: bool = False) -> tuple[float, float]:
    """Text coordinates -> continuous pixel position (x, y) in a W x H image.

    Raises ValueError for values outside [0, n) unless ``clamp`` is True (then they are clipped).
    """
    _check_n(n)
    _check_size(width, height)
    values = np.array([nx, ny], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"text coordinates must be finite, got ({nx}, {ny})")
    if not clamp and (values.min() < 0 or values.max() >= n):
        raise ValueError(f"text coordinates ({nx}, {ny}) are outside [0, {n})")
    values = np.clip(values, 0, n - 1)
    return float(values[0] / n * width), float(values[1] / n * height)


def decode_pixel_index(nx: float, ny: float, width: int, height: int, n: int = DEFAULT_N_COORDS, *, clamp: bool = False) -> tuple[int, int]:
    """Text coordinates -> integer array index (col, row) of the pixel containing the decoded point."""
    x, y = decode_pixel(nx, ny, width, height, n, clamp=clamp)
    return min(int(x), width - 1), min(int(y), height - 1)


def format_point(nx: int, ny: int) -> str:
    """Text form of a point: ``(nx, ny)``."""
    return f"({int(nx)}, {int(ny)})"


def encode_box(box: tuple[float, float, float, float], width: int, height: int, n: int = DEFAULT_N_COORDS, *, clamp: bool = False) -> tuple[int, int, int, int]:
    """Box (x_min, y_min, x_max, y_max) in continuous pixels -> normalised integer box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {box} has max < min")
    pts = encode_pixels(np.array([[x0, y0], [x1, y1]]), width, height, n, clamp=clamp)
    return int(pts[0, 0]), int(pts[0, 1]), int(pts[1, 0]), int(pts[1, 1])


def decode_box(box: tuple[float, float, float, float], width: int, height: int, n: int = DEFAULT_N_COORDS, *, clamp: bool = False) -> tuple[float, float, float, float]:
    """Normalised box -> (x_min, y_min, x_max, y_max) in continuous pixels."""
    x0, y0 = decode_pixel(box[0], box[1], width, height, n, clamp=clamp)
    x1, y1 = decode_pixel(box[2], box[3], width, height, n, clamp=clamp)
    return x0, y0, x1, y1


def format_box(box: tuple[int, int, int, int]) -> str:
    """Text form of a box: ``(xMin, yMin, xMax, yMax)``."""
    return "(" + ", ".join(str(int(v)) for v in box) + ")"


_POINT_RE = re.compile(r"\(\s*([+-]?\d+(?:\.\d+)?)\s*,\s*([+-]?\d+(?:\.\d+)?)\s*\)")


def parse_point(text: str) -> tuple[float, float] | None:
    """The last ``(a, b)`` pair of numbers in ``text``, or None. Never raises."""
    if not isinstance(text, str):
        return None
    matches = _POINT_RE.findall(text)
    if not matches:
        return None
    a, b = matches[-1]
    return float(a), float(b)
