"""Pixel correspondence between two images, named by text coordinates in [0, N).

The question gives a pixel of image 1, the answer the matching pixel of image 2, both as text
coordinates (``vlm3.textref``). Metrics are in pixels of image 2 at a resolution the caller
states: decode predicted text coordinates with ``vlm3.textref.decode_pixel`` first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlm3.tasks.common import assistant_turn, extract_answer, mean_or_nan, share, user_turn
from vlm3.textref import DEFAULT_N, format_point, parse_point

# The paper's phrasing first; the others are used only when a generator picks a phrasing.
QUESTION_TEMPLATES: tuple[str, ...] = (
    "Given these two images, what pixel in the second image corresponds to pixel {point} in the first image? "
    "Report the answer as (x2, y2).",
    "Which pixel in the second image shows the same point as pixel {point} in the first image? "
    "Report the answer as (x2, y2).",
    "Find the pixel in the second image that matches pixel {point} of the first image. "
    "Report the answer as (x2, y2).",
    "Pixel {point} in the first image shows a point of the scene. Where does that point appear in the second "
    "image? Report the answer as (x2, y2).",
)
PCK_THRESHOLDS: tuple[int, ...] = (1, 3, 5)


def correspondence_question(nx: int, ny: int, rng: np.random.Generator | None = None) -> str:
    """Question for text-coordinate pixel (nx, ny) of image 1.

    Without ``rng`` the paper's phrasing; with a (seeded) generator, one of
    :data:`QUESTION_TEMPLATES` drawn uniformly.
    """
    index = 0 if rng is None else int(rng.integers(len(QUESTION_TEMPLATES)))
    return QUESTION_TEMPLATES[index].format(point=format_point(nx, ny))


def correspondence_answer(nx: int, ny: int) -> str:
    """"The corresponding pixel is (x2, y2)." with text coordinates of image 2."""
    return f"The corresponding pixel is {format_point(nx, ny)}."


def correspondence_messages(
    query: tuple[int, int], target: tuple[int, int], rng: np.random.Generator | None = None
) -> list[dict]:
    """Chat messages (HF format): both images, the question, and the answer."""
    return [
        user_turn(correspondence_question(*query, rng=rng), n_images=2),
        assistant_turn(correspondence_answer(*target)),
    ]


def parse_correspondence(text: Any, n: int = DEFAULT_N) -> tuple[float, float] | None:
    """Text coordinates (nx, ny) of image 2 from a raw answer, or None. Never raises.

    Reads the last ``(a, b)`` of the answer span; a pair outside [0, n) is not a valid answer
    and gives None.
    """
    try:
        point = parse_point(extract_answer(text))
        if point is None:
            return None
        nx, ny = point
        if all(math.isfinite(v) and 0 <= v < n for v in (nx, ny)):
            return nx, ny
        return None
    except Exception:  # a parser must never take an evaluation down
        return None


def correspondence_metrics(
    pred_px: Sequence[tuple[float, float] | None], gt_px: Sequence[tuple[float, float]] | np.ndarray
) -> dict[str, float]:
    """End-point error and PCK in pixels of image 2 (at whatever resolution both are given).

    ``pred_px`` holds (x, y) pixels or None for unparsed answers. ``epe`` (mean) and
    ``epe_median`` are over parsed points only (NaN when none); ``pck1/3/5`` are the share of ALL
    points with error <= 1, 3, 5 px, failures counted wrong.
    """
    gt = np.asarray(gt_px, dtype=np.float64).reshape(-1, 2)
    n = gt.shape[0]
    if len(pred_px) != n:
        raise ValueError(f"{len(pred_px)} predictions for {n} ground-truth points")
    errors = np.full(n, np.inf)
    parsed = 0
    for i, p in enumerate(pred_px):
        if p is None:
            continue
        xy = np.asarray(p, dtype=np.float64).reshape(-1)
        if xy.size != 2 or not np.all(np.isfinite(xy)):
            continue
        parsed += 1
        errors[i] = float(np.hypot(*(xy - gt[i])))
    finite = errors[np.isfinite(errors)]
    out: dict[str, float] = {"n": n, "parsed": parsed, "epe": mean_or_nan(finite)}
    for k in PCK_THRESHOLDS:
        out[f"pck{k}"] = share(errors <= k, n)
    out["epe_median"] = float(np.median(finite)) if finite.size else float("nan")
    return out
