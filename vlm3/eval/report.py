"""Metrics, ``metrics.json``, ``report.md`` and plots of an evaluation's prediction lines.

Metrics come from the task (``Task.metrics``) on the prediction lines; every task's result has
``n`` (questions scored), ``parsed`` (the parser found an answer), ``failed`` (no usable
prediction: unparsed, or for depth a non-positive value; failures count as wrong in every share),
``truncated`` (answers cut off at the token limit, or lacking the required closing text: never
parsed, so part of ``failed``) and ``skipped`` (labels outside the transformed image, not
scored). With several datasets in one bench, ``by_dataset`` repeats the metrics per dataset.

Plots (``plots/``, PNG, drawn with matplotlib's object API so no global pyplot state is touched):
the task's own summary plots (``Task.plots``) and a few examples drawn on the original images
(``Task.example``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from vlm3 import plotting
from vlm3.eval.score import flat_metrics, json_safe
from vlm3.tasks.base import Task, get_task

METRICS = "metrics.json"
REPORT = "report.md"
PLOTS = "plots"
N_EXAMPLES = 3


# --- metrics ------------------------------------------------------------------------------------


def compute_metrics(task: str | Task, lines: list[dict[str, Any]], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Task metrics of prediction lines (skipped lines are counted, not scored).

    ``options`` go to ``Task.metrics`` (e.g. ``pair_order``, ``n_coords``, ``views``).
    """
    task = get_task(task)
    scored = [line for line in lines if "skipped" not in line]
    out = _task_metrics(task, scored, options)
    out["skipped"] = len(lines) - len(scored)
    datasets = sorted({line.get("dataset", "") for line in scored})
    if len(datasets) > 1:
        out["by_dataset"] = {d: _task_metrics(task, [line for line in scored if line.get("dataset", "") == d], options) for d in datasets}
    return out


def _task_metrics(task: Task, lines: list[dict[str, Any]], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task's metrics with ``truncated`` (lines marked so; older lines lack the key) after ``failed``."""
    m = task.metrics(lines, options=options) if lines else {"n": 0, "parsed": 0, "failed": 0}
    truncated = sum(bool(line.get("truncated")) for line in lines)
    out: dict[str, Any] = {}
    for key, value in m.items():
        out[key] = value
        if key == "failed":
            out["truncated"] = truncated
    out.setdefault("truncated", truncated)
    return out


# --- report -------------------------------------------------------------------------------------


def write_report(
    out: str | Path,
    task: str | Task,
    lines: list[dict[str, Any]],
    info: dict[str, Any],
    *,
    records: dict[str, Any] | None = None,
    image_root: str | Path | None = None,
    plots: bool = True,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``report.md`` and ``plots/`` into ``out``; returns the metrics.json content.

    ``options`` are the scoring options of ``Task.metrics`` (:func:`compute_metrics`).
    """
    out = Path(out)
    task = get_task(task)
    metrics = compute_metrics(task, lines, options)
    content = json_safe({"task": task.name, "metrics": metrics, **info})
    tmp = out / (METRICS + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, out / METRICS)
    figures: list[tuple[str, str]] = []
    if plots:
        figures = make_plots(out / PLOTS, task, lines, records=records, image_root=image_root)
    (out / REPORT).write_text(report_markdown(task, content, lines, figures))
    return content


def report_markdown(task: str | Task, content: dict[str, Any], lines: list[dict[str, Any]], figures: list[tuple[str, str]]) -> str:
    """The human-readable report."""
    m = content["metrics"]
    bench, model, run = content.get("bench", {}), content.get("model", {}), content.get("run", {})
    task = get_task(task)
    key = task.headline
    md = [f"# {bench.get('name', task.name)}: {task.name}", ""]
    md.append(f"**{key} = {_fmt(m.get(key))}** on {m.get('n', 0)} questions; {m.get('parsed', 0)} parsed, "
              f"{m.get('failed', 0)} failed (counted wrong; {m.get('truncated', 0)} of them truncated at the token limit), "
              f"{m.get('skipped', 0)} skipped.")
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
        md += ["", "### By dataset", "", "| dataset | n | failed | truncated | " + key + " |", "|---|---|---|---|---|"]
        md += [f"| {d} | {dm.get('n')} | {dm.get('failed')} | {dm.get('truncated', 0)} | {_fmt(dm.get(key))} |" for d, dm in m["by_dataset"].items()]
    md += ["", "## Settings", "", "| setting | value | from |", "|---|---|---|"]
    sources = content.get("settings_source", {})
    md += [f"| {k} | {val} | {sources.get(k, '')} |" for k, val in content.get("settings", {}).items() if k != "task"]
    failed = [line for line in lines if "skipped" not in line and not line.get("parsed")]
    if failed:
        md += ["", f"## Unparsed answers ({len(failed)})", ""]
        md += [f"- `{line['key']}`" + (" (truncated at the token limit)" if line.get("truncated") else "") + f": {json.dumps(line.get('raw', '')[:120])}"
               for line in failed[:5]]
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


def make_plots(folder: str | Path, task: str | Task, lines: list[dict[str, Any]], *, records: dict[str, Any] | None = None, image_root: str | Path | None = None) -> list[tuple[str, str]]:
    """Draw the task's plots and a few examples into ``folder``; returns (file name, title) pairs."""
    from vlm3.tasks.samples import load_images

    task = get_task(task)
    folder = Path(folder)
    scored = [line for line in lines if "skipped" not in line]
    if not scored:
        return []
    figures = task.plots(folder, scored)
    if records is None or image_root is None:
        return figures
    for k, rid in enumerate(list(dict.fromkeys(line["record"] for line in scored))[:N_EXAMPLES]):
        try:
            images = load_images(records[rid], Path(image_root))
        except (KeyError, OSError):
            continue
        fig = task.example(records[rid], images, [line for line in scored if line["record"] == rid])
        if fig is not None:
            figures.append((plotting.save(fig, folder, f"example_{k}.png"), f"example {k}: {rid}"))
    return figures
