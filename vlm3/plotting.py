"""Small matplotlib helpers shared by reports (object API only: no global pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def figure(width: float = 6.0, height: float = 4.0) -> Any:
    """A new Figure with a constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save(fig: Any, folder: Path, name: str) -> str:
    """Write ``fig`` as ``folder/name`` (PNG); returns ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / name)
    return name


def side_by_side(images: list[np.ndarray]) -> np.ndarray:
    """Images placed left to right on a black canvas (top-aligned)."""
    h = max(im.shape[0] for im in images)
    canvas = np.zeros((h, sum(im.shape[1] for im in images), 3), dtype=np.uint8)
    x = 0
    for im in images:
        canvas[: im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1]
    return canvas


def image_axes(image: np.ndarray, width: float = 6.0, extra_height: float = 0.6) -> tuple[Any, Any]:
    """A figure with one axis showing ``image`` in pixel coordinates (corner origin), axes off."""
    fig = figure(width, width * image.shape[0] / image.shape[1] + extra_height)
    ax = fig.add_subplot()
    ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
    ax.set_axis_off()
    return fig, ax


def no_data(ax: Any, text: str) -> None:
    """Write ``text`` in the middle of an empty axis."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
