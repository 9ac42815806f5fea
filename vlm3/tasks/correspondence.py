"""Pixel correspondence between two images, named by text coordinates in [0, N).

The question gives a pixel of image 1, the answer the matching pixel of image 2, both as text
coordinates (``vlm3.textref``). Metrics are in pixels of image 2 at a resolution the caller
states: decode predicted text coordinates with ``vlm3.textref.decode_pixel`` first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlm3 import plotting
from vlm3.settings import DEFAULT_N_COORDS
from vlm3.tasks.base import Query, ScoreLine, Task, register
from vlm3.tasks.common import assistant_turn, extract_answer, mean_or_nan, share, user_turn
from vlm3.tasks.samples import choose
from vlm3.textref import decode_pixel, encode_pixels, format_point, parse_point

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


# --- the task -----------------------------------------------------------------------------------


class CorrespondenceTask(Task):
    """The pixel of image 2 showing the same point as a pixel of image 1 (record field ``matches``).

    Predictions and ground truth are (x, y) in pixels of the ORIGINAL image 2, so end-point
    errors compare across view transforms.
    """

    name = "correspondence"
    aliases = ("corr",)
    description = "the pixel of image 2 matching a pixel of image 1, as text coordinates"
    n_images = 2
    label_prefix = "m"
    headline = "epe"
    max_new_tokens = 32
    score_format = '{"pred": [x, y] | answer text | null, "gt": [x, y], "width"?, "height"?} (pixels of image 2; text needs its size)'

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
        q = encode_pixels(p0[idx], K0.width, K0.height, settings.n_coords)
        t = encode_pixels(p1[idx], K1.width, K1.height, settings.n_coords)
        source = view.source.matches
        messages, queries = [], []
        for j, i in enumerate(idx):
            asked = correspondence_question(int(q[j, 0]), int(q[j, 1]))
            answer = correspondence_answer(int(t[j, 0]), int(t[j, 1]))
            trained = asked if rng is None else correspondence_question(int(q[j, 0]), int(q[j, 1]), rng=rng)
            messages += [user_turn(trained, n_images=2 if j == 0 else 0), assistant_turn(answer)]
            o = int(kept[i])
            fields = {"pixel0": list(source.pixels0[o]), "coords": [int(v) for v in q[j]]}
            # Ground truth in pixels of the ORIGINAL second image, so EPE is comparable across transforms.
            queries.append(Query(asked, answer, list(source.pixels1[o]), o, fields))
        return messages, queries

    def prompts(self, settings) -> list[str]:
        return [*(t.format(point=format_point(0, 0)) for t in QUESTION_TEMPLATES), correspondence_answer(0, 0)]

    def read(self, raw, query, sample):
        K1 = sample.view.record.views[1].K
        n = sample.settings.n_coords
        point = parse_correspondence(raw, n)
        if point is None:
            return None
        xy = sample.view.transforms[1].backward(np.array([decode_pixel(point[0], point[1], K1.width, K1.height, n)]))[0]
        return [float(xy[0]), float(xy[1])]

    def metrics(self, lines):
        m = correspondence_metrics([None if line["pred"] is None else tuple(line["pred"]) for line in lines], [line["gt"] for line in lines])
        return {**m, "failed": m["n"] - m["parsed"]}

    def score_line(self, line: ScoreLine, n_coords: int) -> dict[str, Any]:
        pred = line.get("pred")
        if isinstance(pred, str):
            if "width" not in line.data or "height" not in line.data:
                raise line.error('"pred" is text, so the line must give "width" and "height" of image 2')
            width, height = line.number("width", positive=True), line.number("height", positive=True)
            point = parse_correspondence(pred, n_coords)
            value = None if point is None else list(decode_pixel(*point, width, height, n_coords))
        elif pred is None:
            value = None
        else:
            value = line.array("pred", (2,)).tolist()
        return {"pred": value, "gt": line.array("gt", (2,)).tolist(), "parsed": value is not None}

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
