"""Pixel correspondence between two images, named by text coordinates in [0, N).

The question gives a pixel of image 1, the answer the matching pixel of image 2, both as text
coordinates (``vlm3.textref``). Metrics are in pixels of image 2 at a resolution the caller
states: decode predicted text coordinates with ``vlm3.textref.decode_pixel`` first.

The end-point error is also given in the text units the model was asked in (``epe_norm``): text
coordinates are x' / W' * N on the transformed image 2 (W' x H' as the model saw it, x' = sx * x
for an original pixel x; ``vlm3.geometry.unify``), so an error (dx, dy) in original pixels is
hypot(dx * sx * N / W', dy * sy * N / H') text units = hypot(dx * N / Wn, dy * N / Hn) with
(Wn, Hn) = (W' / sx, H' / sy), the extent of the text-coordinate frame in original pixels. That
is exact for undistorted views; it is the original size up to the canvas rounding (W' =
round(W * sx), or a multiple of ``size_multiple``), and exactly the original size without a view
transform (``vlm3 score``). With lens distortion it is the scale of the unification, not the
local scale of the undistortion.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlm3 import plotting
from vlm3.settings import DEFAULT_N_COORDS
from vlm3.profiles import ZERO_SHOT_SETTINGS, ZERO_SHOT_SYSTEM, TaskProfile
from vlm3.tasks.base import Query, ScoreLine, Task, register
from vlm3.tasks.common import assistant_turn, encode_view_pixels, extract_answer, mean_or_nan, original_pixel, share, user_turn
from vlm3.tasks.samples import choose
from vlm3.textref import decode_pixel, format_point, parse_point

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


# The released VLM3-corr prompt and thinking suffix (facebookresearch/VLM3
# sample_data/pixel_corr_labels.json, verbatim; inference.ipynb uses the suffix by default).
RELEASE_QUESTION = (
    "Given these two images, what pixel in the second image corresponds to pixel ({x1}, {y1}) in the first image? "
    "Report the answer as (x, y)."
)
RELEASE_THINK = ' Please think step by step and follow the format: "<think> [think process] </think>\n\n[answer]".'
# inference.ipynb's parser: the first "(x, y)" (parentheses optional) after removing <think> blocks.
_RELEASE_POINT = re.compile(r"\(?\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)?")
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)

ZERO_SHOT_QUESTION = (
    "The two images show the same scene. Which pixel in the second image shows the same point as pixel ({x1}, {y1}) "
    "in the first image? Pixels are (column, row) normalised to [0, {n}) across each image's width and height, with "
    "(0, 0) at the top-left corner. Answer with the pixel as (x, y) only."
)


def profile_question(nx: int, ny: int, settings: Any) -> str:
    """The question for text coordinates (nx, ny) of image 1 in the wording of ``settings.profile``."""
    if settings.profile == "vlm3-release":
        return RELEASE_QUESTION.format(x1=int(nx), y1=int(ny)) + RELEASE_THINK
    if settings.profile == "zero-shot":
        return ZERO_SHOT_QUESTION.format(x1=int(nx), y1=int(ny), n=settings.n_coords)
    return correspondence_question(nx, ny)


def profile_answer(nx: int, ny: int, settings: Any) -> str:
    """The target answer for text coordinates (nx, ny) of image 2 in the format of ``settings.profile``."""
    if settings.profile == "vlm3-release":
        return f"<think> The matching pixel is {format_point(nx, ny)}. </think>\n\n{format_point(nx, ny)}"
    if settings.profile == "zero-shot":
        return format_point(nx, ny)
    return correspondence_answer(nx, ny)


def parse_release_point(text: Any) -> tuple[float, float] | None:
    """The released notebook's parser: the first number pair outside ``<think>`` blocks, or None."""
    if not isinstance(text, str):
        return None
    m = _RELEASE_POINT.search(_THINK_BLOCK.sub("", text).strip())
    return (float(m.group(1)), float(m.group(2))) if m else None


def correspondence_answer(nx: int, ny: int) -> str:
    """"The corresponding pixel is (x2, y2)." with text coordinates of image 2."""
    return f"The corresponding pixel is {format_point(nx, ny)}."


def parse_correspondence(text: Any, n: int = DEFAULT_N_COORDS) -> tuple[float, float] | None:
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
    pred_px: Sequence[tuple[float, float] | None],
    gt_px: Sequence[tuple[float, float]] | np.ndarray,
    frames: Sequence[tuple[float, float] | None] | None = None,
    n_coords: int | None = None,
) -> dict[str, Any]:
    """End-point error and PCK in pixels of image 2 (at whatever resolution both are given).

    ``pred_px`` holds (x, y) pixels or None for unparsed answers. ``epe`` (mean) and
    ``epe_median`` are over parsed points only (NaN when none); ``pck1/3/5`` are the share of ALL
    points with error <= 1, 3, 5 px, failures counted wrong.

    With ``n_coords`` (N) the result also has ``n_coords`` and ``epe_norm`` / ``epe_norm_median``,
    the same errors in text units: hypot(dx * N / Wn, dy * N / Hn), where ``frames[i]`` = (Wn, Hn)
    is the extent of point i's text-coordinate frame in the pixels ``pred_px`` and ``gt_px`` are
    given in (see module doc). They are NaN when a parsed point has no frame (None).
    """
    gt = np.asarray(gt_px, dtype=np.float64).reshape(-1, 2)
    n = gt.shape[0]
    if len(pred_px) != n:
        raise ValueError(f"{len(pred_px)} predictions for {n} ground-truth points")
    if frames is not None and len(frames) != n:
        raise ValueError(f"{len(frames)} image frames for {n} ground-truth points")
    if n_coords is not None and (int(n_coords) != n_coords or n_coords < 2):
        raise ValueError(f"n_coords must be an integer >= 2, got {n_coords!r}")
    errors = np.full(n, np.inf)
    errors_norm = np.full(n, np.inf)
    parsed = 0
    for i, p in enumerate(pred_px):
        if p is None:
            continue
        xy = np.asarray(p, dtype=np.float64).reshape(-1)
        if xy.size != 2 or not np.all(np.isfinite(xy)):
            continue
        parsed += 1
        d = xy - gt[i]
        errors[i] = float(np.hypot(*d))
        frame = None if frames is None else frames[i]
        if n_coords is not None and frame is not None:
            wn, hn = (float(v) for v in frame)
            errors_norm[i] = float(np.hypot(d[0] * n_coords / wn, d[1] * n_coords / hn)) if wn > 0 and hn > 0 else np.nan
        else:
            errors_norm[i] = np.nan  # parsed, but no frame to convert with
    finite = errors[np.isfinite(errors)]
    out: dict[str, Any] = {"n": n, "parsed": parsed, "epe": mean_or_nan(finite)}
    if n_coords is not None:
        scored = errors_norm[np.isfinite(errors)]
        complete = scored.size > 0 and not np.any(np.isnan(scored))
        out["epe_norm"] = float(np.mean(scored)) if complete else float("nan")
        out["n_coords"] = int(n_coords)
    for k in PCK_THRESHOLDS:
        out[f"pck{k}"] = share(errors <= k, n)
    out["epe_median"] = float(np.median(finite)) if finite.size else float("nan")
    if n_coords is not None:
        out["epe_norm_median"] = float(np.median(scored)) if complete else float("nan")
    return out


def text_frame(line: dict[str, Any], views: dict[str, Any] | None = None) -> tuple[float, float] | None:
    """(Wn, Hn): the extent, in original pixels of image 2, of the text coordinates [0, N) of a line.

    From, in order: the line's ``size2`` ([W', H'], image 2 as the model saw it) with ``scale2``
    ([sx, sy], its pixels per original pixel), giving (W' / sx, H' / sy); the same from
    ``views[record][1]`` (``[W', H', sx, sy]``, what ``vlm3 eval`` passes); the line's ``width``
    and ``height`` (``vlm3 score``: no view transform). None when none is there.
    """
    size, scale = line.get("size2"), line.get("scale2")
    if size is None and views is not None:
        shown = views.get(line.get("record"))
        if shown is not None and len(shown) > 1:
            size, scale = shown[1][:2], shown[1][2:4]
    if size is not None and scale is not None:
        return float(size[0]) / float(scale[0]), float(size[1]) / float(scale[1])
    if line.get("width") is not None and line.get("height") is not None:
        return float(line["width"]), float(line["height"])
    return None


# --- the task -----------------------------------------------------------------------------------


class CorrespondenceTask(Task):
    """The pixel of image 2 showing the same point as a pixel of image 1 (record field ``matches``).

    Predictions and ground truth are (x, y) in pixels of the ORIGINAL image 2, so end-point
    errors compare across view transforms.
    """

    name = "correspondence"
    profiles = {
        # inference.ipynb: no focal step, both images resized so the longer side is 1024 px, integer
        # pixels i named by i * s / W * 1000 (rounded in the prompt), the thinking suffix on, 2048
        # new tokens; the answer must close its <think> block.
        "vlm3-release": TaskProfile(
            {"unify": False, "resize_to": None, "longest_side": 1024, "n_coords": 1000, "pixel_convention": "index"},
            max_new_tokens=2048,
            require="</think>",
        ),
        "zero-shot": TaskProfile(ZERO_SHOT_SETTINGS, max_new_tokens=256, system=ZERO_SHOT_SYSTEM),
    }
    aliases = ("corr",)
    description = "the pixel of image 2 matching a pixel of image 1, as text coordinates"
    n_images = 2
    label_prefix = "m"
    headline = "epe"
    max_new_tokens = 32
    score_format = '{"pred": [x, y] | answer text | null, "gt": [x, y], "width"?, "height"?} (pixels of image 2; text needs its size, epe_norm needs it too)'

    def has_labels(self, record) -> bool:
        return record.matches is not None and len(record.matches.pixels0) > 0

    def n_labels(self, record) -> int:
        return len(record.matches.pixels0) if record.matches else 0

    def build(self, view, settings, rng, labels):
        rec = view.record
        K0, K1 = rec.views[0].K, rec.views[1].K
        p0 = np.asarray(rec.matches.pixels0, dtype=np.float64).reshape(-1, 2)
        p1 = np.asarray(rec.matches.pixels1, dtype=np.float64).reshape(-1, 2)
        if rng is not None and len(p0) == 0:
            raise ValueError(f"record {rec.id}: no correspondences inside the transformed images")
        if rng is not None and settings.packing == "single_turn" and min(len(p0), settings.points_per_sample) > 1:
            raise ValueError("correspondence samples pack as multi_turn only")
        kept = view.kept["matches"]
        idx = choose(kept, settings.points_per_sample, rng, labels)
        if not idx:
            return [], []
        q = encode_view_pixels(view, 0, p0[idx], settings)
        t = encode_view_pixels(view, 1, p1[idx], settings)
        source = view.source.matches
        messages, queries = [], []
        for j, i in enumerate(idx):
            asked = profile_question(int(q[j, 0]), int(q[j, 1]), settings)
            answer = profile_answer(int(t[j, 0]), int(t[j, 1]), settings)
            vary = rng is not None and settings.profile == "vlm3"
            trained = correspondence_question(int(q[j, 0]), int(q[j, 1]), rng=rng) if vary else asked
            messages += [user_turn(trained, n_images=2 if j == 0 else 0), assistant_turn(answer)]
            o = int(kept[i])
            t1 = view.transforms[1]
            fields = {"pixel0": list(source.pixels0[o]), "coords": [int(v) for v in q[j]], "size2": [K1.width, K1.height], "scale2": [t1.sx, t1.sy]}
            # Ground truth in pixels of the ORIGINAL second image, so EPE is comparable across transforms.
            queries.append(Query(asked, answer, list(source.pixels1[o]), o, fields))
        return messages, queries

    def prompts(self, settings) -> list[str]:
        if settings.profile != "vlm3":
            return [profile_question(0, 0, settings), profile_answer(0, 0, settings)]
        return [*(t.format(point=format_point(0, 0)) for t in QUESTION_TEMPLATES), correspondence_answer(0, 0)]

    def read(self, raw, query, sample):
        K1 = sample.view.record.views[1].K
        n = sample.settings.n_coords
        if sample.settings.profile == "vlm3-release":
            point = parse_release_point(raw)
            return None if point is None else original_pixel(sample.view, 1, point, sample.settings)
        point = parse_correspondence(raw, n)
        if point is None:
            return None
        xy = sample.view.transforms[1].backward(np.array([decode_pixel(point[0], point[1], K1.width, K1.height, n)]))[0]
        return [float(xy[0]), float(xy[1])]

    def metrics(self, lines, options=None):
        """EPE and PCK in original pixels of image 2; with ``options["n_coords"]`` also ``epe_norm``
        in text units, each line's frame from :func:`text_frame` (``options["views"]`` in eval)."""
        options = options or {}
        views = options.get("views")
        m = correspondence_metrics(
            [None if line["pred"] is None else tuple(line["pred"]) for line in lines],
            [line["gt"] for line in lines],
            [text_frame(line, views) for line in lines],
            options.get("n_coords"),
        )
        return {**m, "failed": m["n"] - m["parsed"]}

    def score_line(self, line: ScoreLine, n_coords: int) -> dict[str, Any]:
        pred = line.get("pred")
        sized = "width" in line.data or "height" in line.data
        if isinstance(pred, str) and not sized:
            raise line.error('"pred" is text, so the line must give "width" and "height" of image 2')
        if sized and ("width" not in line.data or "height" not in line.data):
            raise line.error('give both "width" and "height" of image 2, or neither')
        size = {"width": line.number("width", positive=True), "height": line.number("height", positive=True)} if sized else {}
        if isinstance(pred, str):
            point = parse_correspondence(pred, n_coords)
            value = None if point is None else list(decode_pixel(*point, size["width"], size["height"], n_coords))
        elif pred is None:
            value = None
        else:
            value = line.array("pred", (2,)).tolist()
        # The size stays on the line: it is the frame of epe_norm (text_frame).
        return {"pred": value, "gt": line.array("gt", (2,)).tolist(), "parsed": value is not None, **size}

    def plots(self, folder: Path, lines):
        epe = np.array([np.hypot(*(np.asarray(line["pred"]) - np.asarray(line["gt"]))) for line in lines if line["pred"] is not None])
        fig = plotting.figure()
        ax = fig.add_subplot()
        if epe.size:
            ax.hist(epe, bins=np.logspace(np.log10(max(epe.min(), 0.1)), np.log10(max(epe.max(), 1.0)) + 1e-6, 40), color="tab:blue")
            ax.set_xscale("log")
            for k in PCK_THRESHOLDS:
                ax.axvline(k, color="k", ls="--", lw=1)
        else:
            plotting.no_data(ax, "no parsed prediction")
        ax.set_xlabel("end-point error (pixels of the original image 2; dashed: 1, 3, 5)")
        ax.set_ylabel("matches")
        ax.set_title(f"EPE over {epe.size} parsed of {len(lines)} queries")
        return [(plotting.save(fig, folder, "correspondence_epe_hist.png"), "EPE histogram")]

    def example(self, record, images, lines):
        canvas = plotting.side_by_side(images)
        w0 = images[0].shape[1]
        fig, ax = plotting.image_axes(canvas, width=8)
        for line in lines[:12]:
            p0, g = line["pixel0"], line["gt"]
            ax.plot([p0[0], g[0] + w0], [p0[1], g[1]], color="lime", lw=0.8)
            if line["pred"] is not None:
                q = line["pred"]
                ax.plot([p0[0], q[0] + w0], [p0[1], q[1]], color="red", lw=0.8, ls="--")
            else:
                ax.plot(p0[0], p0[1], "wx")
        ax.set_title(f"{record.id}: green ground truth, red dashed prediction, x unparsed", fontsize=8)
        return fig


CORRESPONDENCE = register(CorrespondenceTask())
