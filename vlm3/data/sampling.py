"""Seeded, uniform sampling of query pixels over the valid pixels of a label map.

Every adapter picks the pixels it labels through :func:`sample_pixels`, so the same seed gives the
same points on every machine and in every worker order. Use :func:`item_rng` to derive one
generator per item (image, pair) from the run seed and a stable item key: the result then does not
depend on which other items were converted before it.

Returned pixels are continuous corner-origin coordinates (x = column, y = row) of pixel *centres*,
i.e. array index (row j, col i) -> (i + 0.5, j + 0.5), as everywhere in vlm3.
"""

from __future__ import annotations

import hashlib

import numpy as np

SeedLike = int | np.random.Generator

DEFAULT_POINTS = 100  # query pixels per image (or per pair) when AdapterOptions.points is None


def resolve_count(points: int | None, default: int = DEFAULT_POINTS) -> int:
    """The number of pixels to sample: ``points`` if given (must be > 0), else ``default``."""
    if points is None:
        return default
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points <= 0:
        raise ValueError(f"points must be a positive int (or None for the default {default}), got {points!r}")
    return int(points)


def item_rng(seed: int, key: str) -> np.random.Generator:
    """A generator determined by ``(seed, key)`` only (stable across processes and Python runs).

    ``key`` names the item, e.g. ``"kitti/2011_09_26_drive_0001_sync/image_02/0000000005"``.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    # Python's hash() is salted per process; a cryptographic digest is stable everywhere.
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode()).digest()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(digest[:8], "little")])


def _as_rng(rng: SeedLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def sample_pixels(valid_mask: np.ndarray, n: int, rng: SeedLike) -> np.ndarray:
    """Sample ``n`` distinct valid pixels uniformly; returns their centres as an (N, 2) float64 array.

    ``valid_mask`` is a boolean (H, W) array (True = the pixel has a usable label). Sampling is
    without replacement; when fewer than ``n`` pixels are valid, all of them are returned (N < n,
    no duplicates). Order is random (any prefix of the result is itself a uniform sample) and
    fully determined by ``rng`` (a ``numpy.random.Generator`` or an int seed).
    """
    mask = np.asarray(valid_mask)
    if mask.ndim != 2:
        raise ValueError(f"valid_mask must be a 2-D (H, W) array, got shape {mask.shape}")
    if mask.dtype != np.bool_:
        raise TypeError(f"valid_mask must be boolean (True = valid), got dtype {mask.dtype}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"number of pixels n must be a non-negative int, got {n!r}")
    gen = _as_rng(rng)
    flat = np.flatnonzero(mask)  # raster order: a fixed enumeration of the candidates
    k = min(int(n), flat.size)
    if k == 0:
        return np.zeros((0, 2), dtype=np.float64)
    chosen = flat[gen.choice(flat.size, size=k, replace=False)]
    rows, cols = np.divmod(chosen, mask.shape[1])
    return np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float64)


def values_at(array: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Values of an (H, W, ...) array at continuous pixels (N, 2): the pixel containing each point."""
    px = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    cols = np.floor(px[:, 0]).astype(np.int64)
    rows = np.floor(px[:, 1]).astype(np.int64)
    h, w = array.shape[:2]
    bad = (cols < 0) | (cols >= w) | (rows < 0) | (rows >= h)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"pixel {tuple(px[i])} is outside the {w}x{h} array")
    return np.asarray(array)[rows, cols]
