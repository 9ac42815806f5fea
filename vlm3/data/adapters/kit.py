"""Readers shared by adapters: image sizes, matrix text files, uint16 depth PNGs, COLMAP models.

They raise :class:`~vlm3.data.scenes.FrameError` (reason of ``base.REASONS``) for bad files, or
ValueError naming the file where noted. Option getters live in ``base``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from vlm3.data.images import ImageError, ImageTooLargeError
from vlm3.data.images import image_size as header_size
from vlm3.data.scenes import FrameError


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header; FrameError when missing, unreadable or over
    the pixel cap (``image_too_large``, :func:`vlm3.data.images.image_size`)."""
    if not path.is_file():
        raise FrameError("missing_file", f"{path} does not exist")
    try:
        return header_size(path)
    except ImageTooLargeError as e:
        raise FrameError("image_too_large", str(e)) from None
    except ImageError as e:
        raise FrameError("unreadable_file", str(e)) from None
    except Exception as e:  # PIL raises several types for corrupt files
        raise FrameError("unreadable_file", f"{path}: {e}") from None


def read_matrix(path: Path, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """A whitespace-separated matrix text file; FileNotFoundError / ValueError naming the file."""
    try:
        values = np.array([float(x) for x in path.read_text().split()], dtype=np.float64)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except ValueError as e:
        raise ValueError(f"{path}: not a numeric matrix ({e})") from None
    if values.size != shape[0] * shape[1]:
        raise ValueError(f"{path}: expected {shape[0]}x{shape[1]} = {shape[0] * shape[1]} numbers, found {values.size}")
    return values.reshape(shape)


def read_depth_png(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A uint16 depth PNG (0 = invalid; the caller converts units), checked against ``shape`` (H, W).

    FrameError: missing_file, unreadable_file (not a single-channel uint16 PNG), size_mismatch,
    no_valid_depth (every pixel 0).
    """
    if not path.is_file():
        raise FrameError("missing_file", f"{path} does not exist")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FrameError("unreadable_file", f"{path}: not a readable PNG")
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise FrameError("unreadable_file", f"{path}: expected a single-channel uint16 PNG, got {raw.dtype} with shape {raw.shape}")
    if shape is not None and raw.shape != tuple(shape):
        raise FrameError("size_mismatch", f"{path}: {raw.shape[1]}x{raw.shape[0]}, expected {shape[1]}x{shape[0]}")
    if not (raw > 0).any():
        raise FrameError("no_valid_depth", f"{path}: every pixel is 0 (invalid)")
    return raw


def load_reconstruction(path: Path):
    """pycolmap reconstruction of a COLMAP model folder (binary or text); ValueError naming it."""
    import pycolmap

    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return pycolmap.Reconstruction(str(path))
    except Exception as e:  # pycolmap raises ValueError/RuntimeError with its own check message
        raise ValueError(f"{path}: not a readable COLMAP model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def cam_from_world(image) -> np.ndarray:
    """4x4 camera-from-world of a pycolmap image (COLMAP stores this direction)."""
    T = np.eye(4)
    T[:3, :] = image.cam_from_world().matrix()
    return T
