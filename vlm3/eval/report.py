"""Metrics, ``metrics.json``, ``report.md`` and plots of an evaluation's prediction lines.

Metrics come from the task (``Task.metrics``) on the prediction lines of ALL labels; every task's
result has ``n`` (labels scored: every label of the list), ``parsed`` (the parser found an
answer), ``failed`` (no usable prediction: not asked, unparsed, or for depth a non-positive value),
``truncated`` (answers cut off at the token limit, or lacking the required closing text: never
parsed, so part of ``failed``), and the label accounting: ``labels`` (= ``n``), ``asked`` (put to
the model), ``not_asked`` (never asked: the view transform cannot show them, see
``vlm3.data.unify``; part of ``failed``) and ``not_asked_reasons`` ({reason code: count}).

A label that was not asked is scored exactly like an answer that did not parse (``pred`` null):
depth δ1/δ2/δ3 count it as a miss (the shares are over all labels), while AbsRel / SqRel / RMSE /
log10 average over usable answers only, so they leave it out (it is in ``failed``: read them
together); correspondence PCK@k counts it as a miss and EPE (a mean of finite errors) leaves it
out. Pose pairs and object questions are always asked (their boxes are clipped to the canvas).
With several datasets in one bench, ``by_dataset`` repeats the metrics and counts per dataset.

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
    """Task metrics of the prediction lines of all labels, not-asked ones scored as failures.

    ``options`` go to ``Task.metrics`` (e.g. ``pair_order``, ``n_coords``, ``views``). A line an
    older vlm3 wrote as ``skipped`` has no ground truth: it is not scored (``labels`` and
    ``not_asked`` still count it, under reason ``skipped``); ``vlm3 eval`` asks such labels again.
    """
    task = get_task(task)
    scored = [line for line in lines if "skipped" not in line]
    out = _task_metrics(task, scored, options)
    out.update(label_counts(lines))
    datasets = sorted({line.get("dataset", "") for line in lines})
    if len(datasets) > 1:
        out["by_dataset"] = {}
        for d in datasets:
            sub = [line for line in lines if line.get("dataset", "") == d]
            out["by_dataset"][d] = {**_task_metrics(task, sub, options), **label_counts(sub)}
    return out


def label_counts(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """``labels``, ``asked``, ``not_asked`` and ``not_asked_reasons`` ({reason code: count}) of prediction lines."""
    reasons: dict[str, int] = {}
    for line in lines:
        why = line.get("not_asked") or ("skipped" if "skipped" in line else None)
        if why is not None:
            reasons[str(why)] = reasons.get(str(why), 0) + 1
    missing = sum(reasons.values())
    return {"labels": len(lines), "asked": len(lines) - missing, "not_asked": missing, "not_asked_reasons": dict(sorted(reasons.items()))}


def _task_metrics(task: Task, lines: list[dict[str, Any]], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task's metrics with ``truncated`` (lines marked so; older lines lack the key) after ``failed``."""
    lines = [line for line in lines if "skipped" not in line]
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
    md.append(f"**{key} = {_fmt(m.get(key))}** over all {m.get('labels', m.get('n', 0))} labels: {m.get('asked', m.get('n', 0))} asked, "
              f"{not_asked_text(m)}; {m.get('parsed', 0)} parsed, "
              f"{m.get('failed', 0)} failed (counted wrong; {m.get('truncated', 0)} of them truncated at the token limit"
              f"{', ' + str(m.get('not_asked')) + ' of them not asked' if m.get('not_asked') else ''}).")
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
        md += ["", "### By dataset", "", "| dataset | labels | not asked | failed | truncated | " + key + " |", "|---|---|---|---|---|---|"]
        md += [f"| {d} | {dm.get('labels', dm.get('n'))} | {dm.get('not_asked', 0)} | {dm.get('failed')} | {dm.get('truncated', 0)} | {_fmt(dm.get(key))} |"
               for d, dm in m["by_dataset"].items()]
    md += ["", "## Settings", "", "| setting | value | from |", "|---|---|---|"]
    sources = content.get("settings_source", {})
    md += [f"| {k} | {val} | {sources.get(k, '')} |" for k, val in content.get("settings", {}).items() if k != "task"]
    failed = [line for line in lines if "skipped" not in line and "not_asked" not in line and not line.get("parsed")]
    if failed:
        md += ["", f"## Unparsed answers ({len(failed)})", ""]
        md += [f"- `{line['key']}`" + (" (truncated at the token limit)" if line.get("truncated") else "") + f": {json.dumps(line.get('raw', '')[:120])}"
               for line in failed[:5]]
    unasked = [line for line in lines if "not_asked" in line]
    if unasked:
        from vlm3.data.unify import NOT_ASKED

        md += ["", f"## Labels not asked ({len(unasked)}; scored as failures, the same for every model)", ""]
        md += [f"- `{line['key']}`: {NOT_ASKED.get(line['not_asked'], line['not_asked'])}" for line in unasked[:5]]
    judge = content.get("judge")
    if judge:
        a = judge["agreement"]
        md += ["", f"## LLM judge ({judge['model']} at {judge.get('base_url') or 'OpenAI'}; SpatialRGPT-Bench's official protocol)", ""]
        md += [f"- {kind}: {_fmt(score)}" for kind, score in judge["scores"].items()]
        md += [f"- agrees with vlm3's rules on {a['agree']} of {a['judged']} judged answers ({_fmt(a['share_agreeing'])}); "
               f"{a['unjudged']} unjudged (counted wrong, as the official script does); verdicts in `{judge['file']}`"]
    if figures:
        md += ["", "## Figures", ""]
        md += [f"![{title}]({PLOTS}/{name})" for name, title in figures]
    return "\n".join(md) + "\n"


def not_asked_text(m: dict[str, Any]) -> str:
    """"0 not asked" or "3 not asked (3 outside the undistorted image (...))" for a metrics dict."""
    from vlm3.data.unify import NOT_ASKED

    reasons = m.get("not_asked_reasons") or {}
    detail = ", ".join(f"{n} {NOT_ASKED.get(code, code)}" for code, n in reasons.items())
    return f"{m.get('not_asked', 0)} not asked" + (f" ({detail})" if detail else "")


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
