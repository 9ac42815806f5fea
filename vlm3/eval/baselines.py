"""Baselines that use no image content, to print beside every learning figure.

A small model can score well by learning where answers usually are rather than by reading the
image: on a fixed camera rig, depth is mostly a function of the queried row. These lookups are
fitted on the training labels and read only what the prompt and the image *size* give away:

- ``constant median``: the median training depth, whatever the question;
- ``row-only``: the median training depth of the queried text row (binned);
- ``row + image size``: the same, per image size (after the view transform) — the model knows the
  size from its number of image tokens, and after focal unification size encodes field of view.

Pose and correspondence get the analogous content-free answers: identity rotation with the mean
training direction, and zero flow (the query pixel itself).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DepthItem:
    """One depth question as a lookup sees it: text coordinates, image size and the answer (m)."""

    nx: int
    ny: int
    width: int
    height: int
    depth: float


def _bin(ny: int, n_coords: int, bins: int) -> int:
    return min(bins - 1, int(ny * bins / n_coords))


class DepthLookups:
    """Median-depth lookups fitted on training items (see module doc)."""

    NAMES = ("constant median", "row-only", "row + image size")

    def __init__(self, train: Sequence[DepthItem], n_coords: int, bins: int = 40) -> None:
        # n_coords has no default on purpose: binning rows of [0, 100) as if they were the default range
        # would silently collapse the row lookups into two bins and flatter the model beside them.
        if not train:
            raise ValueError("depth lookups need at least one training item")
        top = max(it.ny for it in train)
        if top >= n_coords:
            raise ValueError(f"text row {top} is outside [0, n_coords={n_coords}): lookups need the coordinate range used")
        self.n_coords, self.bins = n_coords, bins
        depths = np.array([it.depth for it in train])
        self.median = float(np.median(depths))
        by_row: dict[int, list[float]] = defaultdict(list)
        by_row_size: dict[tuple[int, int, int], list[float]] = defaultdict(list)
        for it in train:
            b = _bin(it.ny, n_coords, bins)
            by_row[b].append(it.depth)
            by_row_size[(b, it.width, it.height)].append(it.depth)
        self.row = {k: float(np.median(v)) for k, v in by_row.items()}
        self.row_size = {k: float(np.median(v)) for k, v in by_row_size.items()}

    def predict(self, name: str, item: DepthItem) -> float:
        """Prediction of lookup ``name`` for one item; unseen cells fall back to coarser lookups."""
        b = _bin(item.ny, self.n_coords, self.bins)
        if name == "constant median":
            return self.median
        if name == "row-only":
            return self.row.get(b, self.median)
        if name == "row + image size":
            return self.row_size.get((b, item.width, item.height), self.row.get(b, self.median))
        raise KeyError(f"unknown lookup {name!r}; known: {self.NAMES}")

    def predict_all(self, items: Sequence[DepthItem]) -> dict[str, list[float]]:
        return {name: [self.predict(name, it) for it in items] for name in self.NAMES}


def identity_pose_direction(train_directions: Sequence[Sequence[float]]) -> np.ndarray:
    """Content-free pose answer: identity rotation and the mean training motion direction (unit)."""
    d = np.asarray(train_directions, dtype=np.float64).reshape(-1, 3)
    mean = d.mean(axis=0) if len(d) else np.array([0.0, 0.0, 1.0])
    norm = np.linalg.norm(mean)
    return mean / norm if norm > 0 else np.array([0.0, 0.0, 1.0])
