"""Metrics, ``metrics.json``, ``report.md`` and plots of an evaluation's prediction lines.

Metrics come from the task modules (``depth_metrics``, ``pose_metrics``, ``correspondence_metrics``,
``object_metrics``) on the parsed predictions; every task's result has ``n`` (questions scored),
``parsed`` (the parser found an answer), ``failed`` (no usable prediction: unparsed, or for depth a
non-positive value; failures count as wrong in every share) and ``skipped`` (labels outside the
transformed image, not scored). With several datasets in one bench, ``by_dataset`` repeats the
metrics per dataset.

Plots (``plots/``, PNG, drawn with matplotlib's object API so no global pyplot state is touched):
depth: delta1 per ground-truth depth bin and a histogram of log(pred / gt); pose: cumulative
error curves; correspondence: end-point-error histogram; object: score per category; every task:
a few examples drawn on the original images.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vlm3.eval.score import flat_metrics, json_safe

METRICS = "metrics.json"
REPORT = "report.md"
PLOTS = "plots"
DEPTH_BINS_M: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, math.inf)
N_EXAMPLES = 3
HEADLINE = {"depth": "delta1", "pose": "auc30", "correspondence": "epe", "object": "qualitative_acc"}


# --- metrics ------------------------------------------------------------------------------------


def compute_metrics(task: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Task metrics of prediction lines (skipped lines are counted, not scored)."""
    scored = [line for line in lines if "skipped" not in line]
    out = _task_metrics(task, scored)
    out["skipped"] = len(lines) - len(scored)
    datasets = sorted({line.get("dataset", "") for line in scored})
    if len(datasets) > 1:
        out["by_dataset"] = {d: _task_metrics(task, [line for line in scored if line.get("dataset", "") == d]) for d in datasets}
    return out


def _task_metrics(task: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
    if not lines:
        return {"n": 0, "parsed": 0, "failed": 0}
    if task == "depth":
        from vlm3.tasks.depth import depth_metrics

        return depth_metrics([line["pred"] for line in lines], [line["gt"] for line in lines])
    if task == "correspondence":
        from vlm3.tasks.correspondence import correspondence_metrics

        m = correspondence_metrics([None if line["pred"] is None else tuple(line["pred"]) for line in lines], [line["gt"] for line in lines])
        return {**m, "failed": m["n"] - m["parsed"]}
    if task == "pose":
        from vlm3.tasks.pose import PosePrediction, pose_metrics

        preds = [None if line["pred"] is None else PosePrediction(np.asarray(line["pred"]["R"]), np.asarray(line["pred"]["t"]), line["pred"].get("distance")) for line in lines]
        m = pose_metrics(preds, [line["gt"]["R"] for line in lines], [line["gt"]["t"] for line in lines])
        return {**m, "failed": m["n"] - m["parsed"]}
    from vlm3.tasks.object3d import object_metrics

    m = object_metrics([line["pred"] for line in lines], [line["gt"] for line in lines], [line["kind"] for line in lines], [line["category"] for line in lines])
    return {**m, "failed": m["n"] - m["parsed"]}


# --- report -------------------------------------------------------------------------------------


def write_report(
    out: str | Path,
    task: str,
    lines: list[dict[str, Any]],
    info: dict[str, Any],
    *,
    records: dict[str, Any] | None = None,
    image_root: str | Path | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``report.md`` and ``plots/`` into ``out``; returns the metrics.json content."""
    out = Path(out)
    metrics = compute_metrics(task, lines)
    content = json_safe({"task": task, "metrics": metrics, **info})
    tmp = out / (METRICS + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, out / METRICS)
    figures: list[tuple[str, str]] = []
    if plots:
        figures = make_plots(out / PLOTS, task, lines, records=records, image_root=image_root)
    (out / REPORT).write_text(report_markdown(task, content, lines, figures))
    return content


def report_markdown(task: str, content: dict[str, Any], lines: list[dict[str, Any]], figures: list[tuple[str, str]]) -> str:
    """The human-readable report."""
    m = content["metrics"]
    bench, model, run = content.get("bench", {}), content.get("model", {}), content.get("run", {})
    key = HEADLINE[task]
    md = [f"# {bench.get('name', task)}: {task}", ""]
    md.append(f"**{key} = {_fmt(m.get(key))}** on {m.get('n', 0)} questions; {m.get('parsed', 0)} parsed, "
              f"{m.get('failed', 0)} failed (counted wrong), {m.get('skipped', 0)} skipped.")
    md += ["", f"- model: `{model.get('spec')}` ({model.get('backend')}), settings from: {model.get('settings_from') or 'bench config / defaults'}"]
    md.append(f"- bench list: `{bench.get('samples')}` ({bench.get('samples_hash')}), seed {bench.get('seed')}, "
              f"{bench.get('records')} of {bench.get('records_in_list')} records" + (f", first {bench.get('limit_points')} points each" if bench.get("limit_points") else ""))
    md.append(f"- prompt template {content.get('prompt_template_hash')}, questions {content.get('questions_hash')}, max_new_tokens {content.get('max_new_tokens')}")
    proc = model.get("processor")
    if proc:
        md.append(f"- processor: pixels {proc['min_pixels']}..{proc['max_pixels']}, patch multiple {proc['patch_multiple']}; "
                  f"{proc['images_resized']} of {proc['images']} images resized by it (effective fx {_range(proc.get('effective_fx'))}, fy {_range(proc.get('effective_fy'))})")
    v = content.get("versions", {})
    md.append(f"- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    if run:
        md.append(f"- run: {run.get('computed')} questions asked in {run.get('seconds')} s ({run.get('queries_per_s')} / s), {run.get('cached')} reused, {run.get('backend_calls')} backend calls")
    md += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    md += [f"| {name} | {_fmt(value)} |" for name, value in flat_metrics(m) if not name.startswith("by_dataset/")]
    if "by_dataset" in m:
        md += ["", "### By dataset", "", "| dataset | n | " + key + " |", "|---|---|---|"]
        md += [f"| {d} | {dm.get('n')} | {_fmt(dm.get(key))} |" for d, dm in m["by_dataset"].items()]
    md += ["", "## Settings", "", "| setting | value | from |", "|---|---|---|"]
    sources = content.get("settings_source", {})
    md += [f"| {k} | {val} | {sources.get(k, '')} |" for k, val in content.get("settings", {}).items() if k != "task"]
    failed = [line for line in lines if "skipped" not in line and not line.get("parsed")]
    if failed:
        md += ["", f"## Unparsed answers ({len(failed)})", ""]
        md += [f"- `{line['key']}`: {json.dumps(line.get('raw', '')[:120])}" for line in failed[:5]]
    if figures:
        md += ["", "## Figures", ""]
        md += [f"![{title}]({PLOTS}/{name})" for name, title in figures]
    return "\n".join(md) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return "n/a" if value is None else str(value)


def _range(values: list[float] | None) -> str:
    if not values:
        return "n/a"
    lo, hi = values
    return f"{lo:.1f}" if abs(hi - lo) < 0.05 else f"{lo:.1f}..{hi:.1f}"


# --- plots --------------------------------------------------------------------------------------


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / name)
    return name


def make_plots(folder: str | Path, task: str, lines: list[dict[str, Any]], *, records: dict[str, Any] | None = None, image_root: str | Path | None = None) -> list[tuple[str, str]]:
    """Draw the task's plots into ``folder``; returns (file name, title) pairs."""
    folder = Path(folder)
    scored = [line for line in lines if "skipped" not in line]
    if not scored:
        return []
    drawers = {"depth": _depth_plots, "pose": _pose_plots, "correspondence": _corr_plots, "object": _object_plots}
    figures = drawers[task](folder, scored)
    if records is not None and image_root is not None:
        figures += _examples(folder, task, scored, records, Path(image_root))
    return figures


def _depth_arrays(lines: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    gt = np.array([line["gt"] for line in lines], dtype=np.float64)
    pred = np.array([np.nan if line["pred"] is None else float(line["pred"]) for line in lines], dtype=np.float64)
    return gt, pred


def _depth_plots(folder: Path, lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    gt, pred = _depth_arrays(lines)
    valid = np.isfinite(pred) & (pred > 0)
    ok = np.zeros_like(valid)
    ok[valid] = np.maximum(pred[valid] / gt[valid], gt[valid] / pred[valid]) < 1.25
    edges = np.array(DEPTH_BINS_M)
    which = np.digitize(gt, edges[1:-1])
    labels, shares, counts = [], [], []
    for b in range(len(edges) - 1):
        mask = which == b
        if not mask.any():
            continue
        hi = "" if math.isinf(edges[b + 1]) else f"{edges[b + 1]:g}"
        labels.append(f"{edges[b]:g}-{hi}" if hi else f">{edges[b]:g}")
        shares.append(ok[mask].mean())
        counts.append(int(mask.sum()))
    fig = _figure()
    ax = fig.add_subplot()
    bars = ax.bar(labels, shares, color="tab:blue")
    for bar, n in zip(bars, counts):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"n={n}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("ground-truth depth bin (m)")
    ax.set_ylabel("delta1 (failures count wrong)")
    ax.set_title(f"delta1 by depth: {ok.mean():.3f} overall, {int((~valid).sum())} failed of {len(gt)}")
    out = [(_save(fig, folder, "depth_delta1_by_bin.png"), "delta1 by ground-truth depth")]

    fig = _figure()
    ax = fig.add_subplot()
    if valid.any():
        err = np.log(pred[valid] / gt[valid])
        ax.hist(np.clip(err, -2, 2), bins=60, color="tab:blue")
        for x in (-math.log(1.25), math.log(1.25)):
            ax.axvline(x, color="k", ls="--", lw=1)
        ax.set_title(f"log(pred / gt) over {int(valid.sum())} valid predictions (dashed: delta1 bounds; clipped to +-2)")
    else:
        ax.text(0.5, 0.5, "no valid prediction", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("log(pred / gt)")
    ax.set_xlabel("log(pred / gt)")
    ax.set_ylabel("points")
    out.append((_save(fig, folder, "depth_log_ratio_hist.png"), "histogram of log(pred / gt)"))
    return out


def _pose_errors(lines: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    from vlm3.tasks.pose import PosePrediction, pair_errors

    rot, trans = [], []
    for line in lines:
        p = line["pred"]
        pred = None if p is None else PosePrediction(np.asarray(p["R"]), np.asarray(p["t"]), p.get("distance"))
        r, t, _ = pair_errors(pred, np.asarray(line["gt"]["R"]), np.asarray(line["gt"]["t"]))
        rot.append(r)
        trans.append(t)
    return np.array(rot), np.array(trans)


def _pose_plots(folder: Path, lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    rot, trans = _pose_errors(lines)
    fig = _figure()
    ax = fig.add_subplot()
    x = np.linspace(0, 180, 721)
    for values, name in ((rot, "rotation"), (trans, "translation direction (sign-free)"), (np.maximum(rot, trans), "max (AUC)")):
        ax.plot(x, [(values <= t).mean() for t in x], label=name)
    ax.axvline(30, color="k", ls="--", lw=1)
    ax.set_xlabel("error (degrees; failures at 180)")
    ax.set_ylabel("share of pairs")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.set_title(f"pose error CDF over {len(lines)} pairs")
    return [(_save(fig, folder, "pose_error_cdf.png"), "pose error CDF")]


def _corr_plots(folder: Path, lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    epe = np.array([np.hypot(*(np.asarray(line["pred"]) - np.asarray(line["gt"]))) for line in lines if line["pred"] is not None])
    fig = _figure()
    ax = fig.add_subplot()
    if epe.size:
        ax.hist(epe, bins=np.logspace(np.log10(max(epe.min(), 0.1)), np.log10(max(epe.max(), 1.0)) + 1e-6, 40), color="tab:blue")
        ax.set_xscale("log")
        for k in (1, 3, 5):
            ax.axvline(k, color="k", ls="--", lw=1)
    else:
        ax.text(0.5, 0.5, "no parsed prediction", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("end-point error (pixels of the original image 2; dashed: 1, 3, 5)")
    ax.set_ylabel("matches")
    ax.set_title(f"EPE over {epe.size} parsed of {len(lines)} queries")
    return [(_save(fig, folder, "correspondence_epe_hist.png"), "EPE histogram")]


def _object_plots(folder: Path, lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    from vlm3.tasks.object3d import object_metrics

    m = object_metrics([l["pred"] for l in lines], [l["gt"] for l in lines], [l["kind"] for l in lines], [l["category"] for l in lines])
    cats = m["categories"]
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    names = list(cats)
    ax.bar(names, [cats[c]["score"] for c in names], color=["tab:blue" if cats[c]["kind"] == "qualitative" else "tab:orange" for c in names])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy / success")
    ax.tick_params(axis="x", labelrotation=60, labelsize=8)
    ax.set_title("object questions by category (blue: qualitative, orange: quantitative)")
    return [(_save(fig, folder, "object_by_category.png"), "object score by category")]


# --- examples on images -------------------------------------------------------------------------


def _load(records: dict[str, Any], record_id: str, root: Path) -> list[np.ndarray] | None:
    from vlm3.tasks.samples import load_images

    try:
        return load_images(records[record_id], root)
    except (KeyError, OSError):
        return None


def _example_ids(lines: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(line["record"] for line in lines))[:N_EXAMPLES]


def _examples(folder: Path, task: str, lines: list[dict[str, Any]], records: dict[str, Any], root: Path) -> list[tuple[str, str]]:
    out = []
    for k, rid in enumerate(_example_ids(lines)):
        images = _load(records, rid, root)
        if images is None:
            continue
        mine = [line for line in lines if line["record"] == rid]
        fig = {"depth": _depth_example, "correspondence": _corr_example, "pose": _pose_example, "object": _object_example}[task](rid, images, mine, records[rid])
        out.append((_save(fig, folder, f"example_{k}.png"), f"example {k}: {rid}"))
    return out


def _depth_example(rid: str, images, lines, record):
    gt, pred = _depth_arrays(lines)
    px = np.array([line["pixel"] for line in lines])
    fig = _figure(6, 6 * images[0].shape[0] / images[0].shape[1] + 0.6)
    ax = fig.add_subplot()
    ax.imshow(images[0], extent=(0, images[0].shape[1], images[0].shape[0], 0))
    valid = np.isfinite(pred) & (pred > 0)
    ratio = np.full_like(gt, np.inf)
    ratio[valid] = np.maximum(pred[valid] / gt[valid], gt[valid] / pred[valid])
    colours = np.where(ratio < 1.25, "lime", np.where(ratio < 1.25**2, "orange", "red"))
    ax.scatter(px[valid, 0], px[valid, 1], c=colours[valid], s=18, edgecolors="k", linewidths=0.5)
    ax.scatter(px[~valid, 0], px[~valid, 1], c="white", marker="x", s=18)
    for i in np.flatnonzero(valid)[:6]:
        ax.annotate(f"{pred[i]:.2f}/{gt[i]:.2f}", px[i], fontsize=7, color="yellow", xytext=(3, 3), textcoords="offset points")
    ax.set_axis_off()
    ax.set_title(f"{rid}: pred/gt m; green delta1, orange delta2, red worse, x failed", fontsize=8)
    return fig


def _side_by_side(images):
    h = max(im.shape[0] for im in images)
    canvas = np.zeros((h, sum(im.shape[1] for im in images), 3), dtype=np.uint8)
    x = 0
    for im in images:
        canvas[: im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1]
    return canvas


def _corr_example(rid: str, images, lines, record):
    canvas = _side_by_side(images)
    w0 = images[0].shape[1]
    fig = _figure(8, 8 * canvas.shape[0] / canvas.shape[1] + 0.6)
    ax = fig.add_subplot()
    ax.imshow(canvas, extent=(0, canvas.shape[1], canvas.shape[0], 0))
    for line in lines[:12]:
        p0, g = line["pixel0"], line["gt"]
        ax.plot([p0[0], g[0] + w0], [p0[1], g[1]], color="lime", lw=0.8)
        if line["pred"] is not None:
            q = line["pred"]
            ax.plot([p0[0], q[0] + w0], [p0[1], q[1]], color="red", lw=0.8, ls="--")
        else:
            ax.plot(p0[0], p0[1], "wx")
    ax.set_axis_off()
    ax.set_title(f"{rid}: green ground truth, red dashed prediction, x unparsed", fontsize=8)
    return fig


def _pose_example(rid: str, images, lines, record):
    from vlm3.geometry.pose import rotation_to_ypr

    canvas = _side_by_side(images)
    fig = _figure(8, 8 * canvas.shape[0] / canvas.shape[1] + 0.9)
    ax = fig.add_subplot()
    ax.imshow(canvas)
    ax.set_axis_off()
    line = lines[0]
    g = rotation_to_ypr(np.asarray(line["gt"]["R"]).T)
    R, t = np.asarray(line["gt"]["R"]), np.asarray(line["gt"]["t"])
    text = f"gt yaw/pitch/roll {g[0]:+.1f}/{g[1]:+.1f}/{g[2]:+.1f} deg, distance {np.linalg.norm(R.T @ t):.2f} m"
    if line["pred"] is not None:
        p = rotation_to_ypr(np.asarray(line["pred"]["R"]).T)
        d = line["pred"].get("distance")
        text += f"; pred {p[0]:+.1f}/{p[1]:+.1f}/{p[2]:+.1f} deg" + (f", {d:.2f} m" if d is not None else "")
    else:
        text += "; pred unparsed"
    ax.set_title(f"{rid}\n{text}", fontsize=8)
    return fig


def _object_example(rid: str, images, lines, record):
    fig = _figure(6, 6 * images[0].shape[0] / images[0].shape[1] + 1.5)
    ax = fig.add_subplot()
    ax.imshow(images[0], extent=(0, images[0].shape[1], images[0].shape[0], 0))
    for obj in record.objects or []:
        if obj.box2d is None:
            continue
        x0, y0, x1, y1 = obj.box2d
        ax.add_patch(_rect(x0, y0, x1, y1))
        ax.text(x0, y0, obj.name, color="yellow", fontsize=7, va="bottom")
    ax.set_axis_off()
    counts = Counter((line["pred"] is not None) for line in lines)
    first = lines[0]
    ax.set_title(f"{rid}: {counts[True]} of {len(lines)} answers parsed\n{first['question'][:90]}\n-> {first.get('raw', '')[:60]!r} (gt {first['gt']})", fontsize=7)
    return fig


def _rect(x0: float, y0: float, x1: float, y1: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", lw=1)
