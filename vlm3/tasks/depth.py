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

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlm3 import plotting
from vlm3.geometry.camera import convert_depth
from vlm3.profiles import ZERO_SHOT_SETTINGS, ZERO_SHOT_SYSTEM, TaskProfile
from vlm3.settings import DEFAULT_FOCAL_PX, DEFAULT_N_COORDS, Settings
from vlm3.tasks.base import Query, ScoreLine, Task, is_numeric, register, short
from vlm3.tasks.common import (
    as_float,
    assistant_turn,
    encode_view_pixels,
    extract_answer,
    mean_or_nan,
    parse_length,
    share,
    user_turn,
)
from vlm3.tasks.samples import choose

STYLES: tuple[str, ...] = ("short", "sentence", "depthlm")
PACKINGS: tuple[str, ...] = ("multi_turn", "single_turn")

# "1. ", "2) ", "3: " at the start of a line; "2.35" alone is a value, not item 2.
_ITEM = re.compile(r"^[ \t]*(\d{1,4})[ \t]*(?:[.)][ \t]+|[.)]?[ \t]*:[ \t]*)", re.MULTILINE)


def depth_question(nx: int, ny: int, n: int = DEFAULT_N_COORDS) -> str:
    """The paper's prompt for the pixel at text coordinates (nx, ny) in [0, n)."""
    return f"How far is the pixel at ({int(nx)}, {int(ny)}) from the camera? Both x and y are normalized to between [0, {int(n)})."


# The released VLM3-depth prompt (facebookresearch/VLM3, README and inference.ipynb), verbatim but
# for the range, and its parser: a bare number between <answer> tags, else no prediction.
RELEASE_DEPTH_QUESTION = (
    "Given this image, how far is the point at coordinates ({nx}, {ny}) from the camera? The coordinates are in "
    "normalised [0, {n}] format relative to image width and height. Output the thinking process in <think> </think> "
    "and final answer (the meter number only, without the unit) in <answer> </answer> tags."
)
_RELEASE_ANSWER = re.compile(r"<answer>\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*</answer>")

ZERO_SHOT_DEPTH_QUESTION = (
    "How far from the camera is the point at ({nx}, {ny}) in this image? The coordinates are the point's column "
    "and row, normalised to [0, {n}) across the image width and height, with (0, 0) at the top-left corner. "
    "Give {what} in meters. Answer with the number only, for example 2.35."
)
_ZERO_SHOT_WHAT = {
    "range": "the straight-line distance from the camera centre to the point",
    "z": "the depth of the point along the camera's viewing direction",
}


# DepthLM's prompt (facebookresearch/DepthLM_Official utils/datasets.py), verbatim: the pixel is the
# one a red arrow drawn on the image points at (:func:`draw_marker`).
DEPTHLM_QUESTION = (
    "Given this image, how far is the point pointed by the red arrow from the camera? Output the thinking process "
    "in <think> </think> and final answer (the meter number only, without the unit) in <answer> </answer> tags."
)
MARKER_RGB = (255, 0, 0)
MARKER_ARM_PX = 5


def draw_marker(image: Image.Image, col: int, row: int) -> Image.Image:
    """A copy of ``image`` with DepthLM's marker pointing at integer pixel (col, row).

    DepthLM's marker is nine single red pixels forming a right-pointing arrow "-->": the shaft at
    (col-5 .. col-1, row) and the head at (col-2, row±1), (col-3, row±2); the pixel itself is left
    untouched. DepthLM drops points within 5 px of the border; here such points are asked with the
    arrow's off-image pixels left out, so that every label is scored.
    """
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    painted = [(col - k, row) for k in range(1, MARKER_ARM_PX + 1)]
    for k in range(1, MARKER_ARM_PX // 2 + 1):
        painted += [(col - k - 1, row - k), (col - k - 1, row + k)]
    for x, y in painted:
        if 0 <= x < out.width and 0 <= y < out.height:
            out.putpixel((x, y), MARKER_RGB)
    return out


def marker_pixels(view: Any, pixels: np.ndarray) -> np.ndarray:
    """DepthLM's integer pixels (N, 2) of view 0 of a transformed record: the original integer
    index i scaled with the image and truncated, int(i * s) (``pixels`` are transformed-image
    positions of original pixel centres, i + 0.5 scaled by s)."""
    t = view.transforms[0]
    xy = np.asarray(pixels, dtype=np.float64).reshape(-1, 2) - np.array([0.5 * t.sx, 0.5 * t.sy])
    K = view.record.views[0].K
    return np.clip(np.trunc(xy), 0, [K.width - 1, K.height - 1]).astype(np.int64)


def profile_depth_question(nx: int, ny: int, settings: Settings) -> str:
    """The depth question for text coordinates (nx, ny) in the wording of ``settings.profile``."""
    n = settings.n_coords
    if settings.profile == "vlm3-release":
        return RELEASE_DEPTH_QUESTION.format(nx=int(nx), ny=int(ny), n=n)
    if settings.profile == "depthlm":
        return DEPTHLM_QUESTION
    if settings.profile == "zero-shot":
        return ZERO_SHOT_DEPTH_QUESTION.format(nx=int(nx), ny=int(ny), n=n, what=_ZERO_SHOT_WHAT[settings.depth_type])
    return depth_question(nx, ny, n)


def profile_depth_answer(depth_m: float, settings: Settings) -> str:
    """The target answer for a depth in metres in the format of ``settings.profile``."""
    if settings.profile in ("vlm3-release", "depthlm"):
        return depth_answer(depth_m, "depthlm")
    if settings.profile == "zero-shot":
        return depth_answer(depth_m, "short")
    return depth_answer(depth_m, settings.answer_style)


def parse_release_depth(text: Any) -> float | None:
    """The released notebook's parser: the number between ``<answer>`` tags, else None."""
    m = _RELEASE_ANSWER.search(text) if isinstance(text, str) else None
    return float(m.group(1)) if m else None


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


def packed_question(points: Sequence[tuple[int, int]], n: int = DEFAULT_N_COORDS) -> str:
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
    n: int = DEFAULT_N_COORDS,
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


# --- the task -----------------------------------------------------------------------------------

DEPTH_BINS_M: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, math.inf)


class DepthTask(Task):
    """Metric depth of labelled pixels of one image (record field ``depth``)."""

    name = "depth"
    description = "metric depth of a pixel named by text coordinates, in metres"
    label_prefix = "d"
    headline = "delta1"
    max_new_tokens = 32
    answer_styles = STYLES
    score_format = '{"pred": number | answer text | null, "gt": metres}'
    profiles = {
        # inference.ipynb: the image already at f = 1000 (fx and fy), integer pixels i of it named
        # round(i / W * N); 256 new tokens; the answer must close its <answer> tag.
        "vlm3-release": TaskProfile(
            {"unify": True, "focal": DEFAULT_FOCAL_PX, "focal_axes": "xy", "size_multiple": None, "n_coords": DEFAULT_N_COORDS, "pixel_convention": "index"},
            max_new_tokens=256,
            require="</answer>",
        ),
        # DepthLM_Official eval.py / utils/datasets.py: one scale 750 / fx for both axes, sizes
        # truncated, the red arrow drawn at int(i * s), DepthLM's prompt, up to 4096 new tokens.
        "depthlm": TaskProfile({"unify": True, "focal": 750.0, "focal_axes": "x", "size_multiple": None, "pixel_convention": "index"}, max_new_tokens=4096),
        "zero-shot": TaskProfile(ZERO_SHOT_SETTINGS, max_new_tokens=256, system=ZERO_SHOT_SYSTEM),
    }

    def has_labels(self, record) -> bool:
        return record.depth is not None and len(record.depth.pixels) > 0

    def n_labels(self, record) -> int:
        return len(record.depth.pixels) if record.depth else 0

    def build(self, view, settings, rng, labels):
        rec = view.record
        K = rec.views[0].K
        pixels = np.asarray(rec.depth.pixels, dtype=np.float64).reshape(-1, 2)
        if rng is not None and len(pixels) == 0:
            raise ValueError(f"record {rec.id}: no depth labels inside the transformed image")
        depth = convert_depth(K, pixels, np.asarray(rec.depth.depth), rec.depth.depth_type, settings.depth_type)
        kept = view.kept["depth"]
        idx = choose(kept, settings.points_per_sample, rng, labels)
        if not idx:
            return [], []
        if settings.profile == "depthlm":
            return [], self._marker_queries(view, settings, rng, idx, pixels, depth)
        coords = encode_view_pixels(view, 0, pixels[idx], settings)
        points = [(int(c[0]), int(c[1])) for c in coords]
        values = [float(depth[i]) for i in idx]
        if settings.profile == "vlm3":
            messages = depth_messages(points, values, style=settings.answer_style, packing=settings.packing, n=settings.n_coords)
        else:  # other profiles' checkpoints were trained one point per turn
            messages = []
            for j, ((nx, ny), d) in enumerate(zip(points, values)):
                messages += [user_turn(profile_depth_question(nx, ny, settings), n_images=int(j == 0)), assistant_turn(profile_depth_answer(d, settings))]
        original = view.source.depth.pixels
        queries = [
            Query(
                profile_depth_question(nx, ny, settings),
                profile_depth_answer(d, settings),
                d,
                int(kept[i]),
                {"pixel": list(original[kept[i]]), "coords": [nx, ny]},
            )
            for (nx, ny), d, i in zip(points, values, idx)
        ]
        return messages, queries

    def _marker_queries(self, view, settings, rng, idx, pixels, depth) -> list[Query]:
        """DepthLM's way: one image per point with the marker drawn on it (evaluation only)."""
        if rng is not None:
            raise ValueError("the depthlm profile asks with a marker drawn per point; vlm3 trains with text references (profile vlm3)")
        kept = view.kept["depth"]
        original = view.source.depth.pixels
        base = Image.fromarray(view.images[0])
        queries = []
        for i, (col, row) in zip(idx, marker_pixels(view, pixels[idx])):
            d = float(depth[i])
            fields = {"pixel": list(original[kept[i]]), "marker": [int(col), int(row)]}
            queries.append(Query(DEPTHLM_QUESTION, depth_answer(d, "depthlm"), d, int(kept[i]), fields, images=[draw_marker(base, int(col), int(row))]))
        return queries

    def prompts(self, settings) -> list[str]:
        if settings.profile != "vlm3":
            return [profile_depth_question(0, 0, settings), profile_depth_answer(1.0, settings)]
        return [depth_question(0, 0, settings.n_coords), depth_answer(1.0, settings.answer_style), packed_answer([1.0, 2.5], settings.answer_style)]

    def read(self, raw, query, sample):
        if sample.settings.profile == "vlm3-release":
            return parse_release_depth(raw)
        return parse_depth(raw)

    def metrics(self, lines, options=None):
        return depth_metrics([line["pred"] for line in lines], [line["gt"] for line in lines])

    def score_line(self, line: ScoreLine, n_coords: int) -> dict[str, Any]:
        pred = line.get("pred")
        if isinstance(pred, str):
            value = parse_depth(pred)
        elif pred is None or (is_numeric(pred) and not isinstance(pred, list)):
            value = as_float(pred)
        else:
            raise line.error(f'"pred" must be a number, a string or null, got {short(pred)}')
        return {"pred": value, "gt": line.number("gt", positive=True), "parsed": value is not None}

    def plots(self, folder: Path, lines):
        gt, pred = _arrays(lines)
        valid = np.isfinite(pred) & (pred > 0)
        ok = np.zeros_like(valid)
        ok[valid] = np.maximum(pred[valid] / gt[valid], gt[valid] / pred[valid]) < 1.25
        edges = np.array(DEPTH_BINS_M)
        which = np.digitize(gt, edges[1:-1])
        names, shares, counts = [], [], []
        for b in range(len(edges) - 1):
            mask = which == b
            if not mask.any():
                continue
            hi = "" if math.isinf(edges[b + 1]) else f"{edges[b + 1]:g}"
            names.append(f"{edges[b]:g}-{hi}" if hi else f">{edges[b]:g}")
            shares.append(ok[mask].mean())
            counts.append(int(mask.sum()))
        fig = plotting.figure()
        ax = fig.add_subplot()
        bars = ax.bar(names, shares, color="tab:blue")
        for bar, n in zip(bars, counts):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"n={n}", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_xlabel("ground-truth depth bin (m)")
        ax.set_ylabel("delta1 (failures count wrong)")
        ax.set_title(f"delta1 by depth: {ok.mean():.3f} overall, {int((~valid).sum())} failed of {len(gt)}")
        out = [(plotting.save(fig, folder, "depth_delta1_by_bin.png"), "delta1 by ground-truth depth")]

        fig = plotting.figure()
        ax = fig.add_subplot()
        if valid.any():
            err = np.log(pred[valid] / gt[valid])
            ax.hist(np.clip(err, -2, 2), bins=60, color="tab:blue")
            for x in (-math.log(1.25), math.log(1.25)):
                ax.axvline(x, color="k", ls="--", lw=1)
            ax.set_title(f"log(pred / gt) over {int(valid.sum())} valid predictions (dashed: delta1 bounds; clipped to +-2)")
        else:
            plotting.no_data(ax, "no valid prediction")
            ax.set_title("log(pred / gt)")
        ax.set_xlabel("log(pred / gt)")
        ax.set_ylabel("points")
        out.append((plotting.save(fig, folder, "depth_log_ratio_hist.png"), "histogram of log(pred / gt)"))
        return out

    def example(self, record, images, lines):
        gt, pred = _arrays(lines)
        px = np.array([line["pixel"] for line in lines])
        fig, ax = plotting.image_axes(images[0])
        valid = np.isfinite(pred) & (pred > 0)
        ratio = np.full_like(gt, np.inf)
        ratio[valid] = np.maximum(pred[valid] / gt[valid], gt[valid] / pred[valid])
        colours = np.where(ratio < 1.25, "lime", np.where(ratio < 1.25**2, "orange", "red"))
        ax.scatter(px[valid, 0], px[valid, 1], c=colours[valid], s=18, edgecolors="k", linewidths=0.5)
        ax.scatter(px[~valid, 0], px[~valid, 1], c="white", marker="x", s=18)
        for i in np.flatnonzero(valid)[:6]:
            ax.annotate(f"{pred[i]:.2f}/{gt[i]:.2f}", px[i], fontsize=7, color="yellow", xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"{record.id}: pred/gt m; green delta1, orange delta2, red worse, x failed", fontsize=8)
        return fig


def _arrays(lines: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    gt = np.array([line["gt"] for line in lines], dtype=np.float64)
    pred = np.array([np.nan if line["pred"] is None else float(line["pred"]) for line in lines], dtype=np.float64)
    return gt, pred


DEPTH = register(DepthTask())
