"""Metric depth: "how far is this pixel from the camera?", answered in metres.

Pixels are named by text coordinates in [0, N) (``vlm3.textref``). Depth means Euclidean range
from the camera centre, in metres, written with 2 decimals.

Several points of one image are packed into one sample (the paper packs 10):

- ``"multi_turn"``: one user/assistant turn per point; the image is attached to the first
  user turn only, so later questions reuse its prefix.
- ``"single_turn"``: one user turn with numbered questions (each the exact single-point
  prompt, one per line) and one assistant turn with numbered answers, one per line. In the
  ``"depthlm"`` style the numbered sentences go in ``<think>`` and the numbered values in
  ``<answer>``. :func:`parse_packed` reads such an answer back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlm3.tasks.common import as_float, assistant_turn, extract_answer, mean_or_nan, parse_length, share, user_turn
from vlm3.textref import DEFAULT_N

STYLES: tuple[str, ...] = ("short", "sentence", "depthlm")
PACKINGS: tuple[str, ...] = ("multi_turn", "single_turn")

# "1. ", "2) ", "3: " at the start of a line; "2.35" alone is a value, not item 2.
_ITEM = re.compile(r"^[ \t]*(\d{1,4})[ \t]*(?:[.)][ \t]+|[.)]?[ \t]*:[ \t]*)", re.MULTILINE)


def depth_question(nx: int, ny: int, n: int = DEFAULT_N) -> str:
    """The paper's prompt for the pixel at text coordinates (nx, ny) in [0, n)."""
    return f"How far is the pixel at ({int(nx)}, {int(ny)}) from the camera? Both x and y are normalized to between [0, {int(n)})."


def _check_depth(depth_m: float) -> float:
    value = as_float(depth_m)
    if value is None or value <= 0:
        raise ValueError(f"depth label must be a positive finite number of metres, got {depth_m!r}")
    return value


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"answer style {style!r} must be one of {STYLES}")


def _sentence(depth_m: float) -> str:
    return f"The point is around {depth_m:.2f} meters away from the camera."


def depth_answer(depth_m: float, style: str = "depthlm") -> str:
    """Target answer for a depth in metres (2 decimals) in one of :data:`STYLES`."""
    _check_style(style)
    value = _check_depth(depth_m)
    if style == "short":
        return f"{value:.2f}"
    if style == "sentence":
        return _sentence(value)
    return f"<think> {_sentence(value)} </think>\n\n<answer> {value:.2f} </answer>"


def packed_question(points: Sequence[tuple[int, int]], n: int = DEFAULT_N) -> str:
    """Numbered single-turn question text for several text-coordinate points."""
    return "\n".join(f"{i}. {depth_question(nx, ny, n)}" for i, (nx, ny) in enumerate(points, start=1))


def packed_answer(depths_m: Sequence[float], style: str = "depthlm") -> str:
    """Numbered single-turn answer text for several depths in metres."""
    _check_style(style)
    values = [_check_depth(d) for d in depths_m]
    numbered_values = "\n".join(f"{i}. {v:.2f}" for i, v in enumerate(values, start=1))
    numbered_sentences = "\n".join(f"{i}. {_sentence(v)}" for i, v in enumerate(values, start=1))
    if style == "short":
        return numbered_values
    if style == "sentence":
        return numbered_sentences
    return f"<think> {numbered_sentences} </think>\n\n<answer> {numbered_values} </answer>"


def depth_messages(
    points: Sequence[tuple[int, int]],
    depths_m: Sequence[float],
    *,
    style: str = "depthlm",
    packing: str = "multi_turn",
    n: int = DEFAULT_N,
) -> list[dict]:
    """Chat messages (HF format) for one image and one or more labelled points.

    ``points`` are text coordinates (nx, ny) in [0, n); ``depths_m`` their ranges in metres.
    """
    if len(points) != len(depths_m) or not points:
        raise ValueError(f"need as many depths as points (>= 1), got {len(points)} points and {len(depths_m)} depths")
    if packing not in PACKINGS:
        raise ValueError(f"packing {packing!r} must be one of {PACKINGS}")
    if packing == "single_turn":
        return [user_turn(packed_question(points, n), n_images=1), assistant_turn(packed_answer(depths_m, style))]
    messages = []
    for i, ((nx, ny), depth) in enumerate(zip(points, depths_m)):
        messages.append(user_turn(depth_question(nx, ny, n), n_images=1 if i == 0 else 0))
        messages.append(assistant_turn(depth_answer(depth, style)))
    return messages


def parse_depth(text: Any) -> float | None:
    """Depth in metres from a raw model output, or None. Never raises.

    Reads the answer span (``<answer>`` content, else the text without ``<think>``), then the
    last number with a length unit (converted to metres), else the last number. A zero or
    negative value is returned as is: it is a parsed but invalid prediction.
    """
    try:
        return parse_length(extract_answer(text))
    except Exception:  # a parser must never take an evaluation down
        return None


def parse_packed(text: Any, k: int) -> list[float | None]:
    """Depths (metres) of a numbered single-turn answer with ``k`` items; None where missing.

    Items are lines starting with "i." / "i)" / "i:"; the first item with a given number
    wins. Without any numbering, exactly ``k`` non-empty lines are read in order.
    """
    k = max(int(k), 0)
    try:
        return _parse_items(extract_answer(text), k)
    except Exception:  # a parser must never take an evaluation down
        return [None] * k


def _parse_items(span: str, k: int) -> list[float | None]:
    out: list[float | None] = [None] * k
    marks = list(_ITEM.finditer(span))
    if marks:
        ends = [m.start() for m in marks[1:]] + [len(span)]
        for mark, end in zip(marks, ends):
            index = int(mark.group(1)) - 1
            if 0 <= index < k and out[index] is None:
                out[index] = parse_length(span[mark.end() : end])
        return out
    lines = [line for line in span.splitlines() if line.strip()]
    if len(lines) == k:
        return [parse_length(line) for line in lines]
    return out


def depth_metrics(pred: Sequence[float | None], gt: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Depth metrics over points; ``pred`` and ``gt`` in metres, ``pred`` None where unparsed.

    - ``n``: points; ``parsed``: predictions that are numbers; ``failed``: predictions that are
      missing or not positive (zero/negative depths count as failures).
    - ``delta1/2/3``: share of ALL n points with max(p/g, g/p) < 1.25^k; failures count as
      wrong (DepthLM's per-point delta1 with failures scored 0).
    - ``abs_rel`` mean |p-g|/g, ``sq_rel`` mean (p-g)^2/g, ``rmse`` sqrt(mean (p-g)^2),
      ``log10`` mean |log10 p - log10 g|: over valid (parsed, positive) points only; NaN when
      there are none.
    """
    g = np.asarray(gt, dtype=np.float64).reshape(-1)
    if len(pred) != g.size:
        raise ValueError(f"{len(pred)} predictions for {g.size} ground-truth depths")
    if not np.all(np.isfinite(g) & (g > 0)):
        raise ValueError("ground-truth depths must be positive and finite")
    values = [as_float(v) for v in pred]
    p = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    valid = np.isfinite(p) & (p > 0)
    n = g.size
    pv, gv = p[valid], g[valid]
    ratio = np.maximum(pv / gv, gv / pv)
    diff = pv - gv
    return {
        "n": n,
        "parsed": sum(v is not None for v in values),
        "failed": int(n - np.count_nonzero(valid)),
        "delta1": share(ratio < 1.25, n),
        "delta2": share(ratio < 1.25**2, n),
        "delta3": share(ratio < 1.25**3, n),
        "abs_rel": mean_or_nan(np.abs(diff) / gv),
        "sq_rel": mean_or_nan(diff**2 / gv),
        "rmse": float(np.sqrt(mean_or_nan(diff**2))),
        "log10": mean_or_nan(np.abs(np.log10(pv) - np.log10(gv))),
    }
