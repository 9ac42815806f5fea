"""Suites: several benches run as one evaluation, reported in a paper's table layout.

A suite config (``vlm3/configs/suites/<name>.yaml``; ``vlm3 eval --suite NAME``)::

    name: paper-depth
    task: depth
    source: "arXiv 2605.30561v1, Table 1"      # where the published rows come from
    tables:
      - title: "Metric depth, δ1 (Table 1)"
        higher_is_better: true
        scale: 1          # vlm3's metric times this = the paper's units (100 for percentages)
        digits: 3         # decimals printed
        columns:          # the paper's columns: a bench and a key of its metrics.json "metrics" (dots go deeper)
          - {title: Argoverse2, bench: argoverse2, metric: delta1}
        summary:          # columns computed from the columns above, the paper's way
          - {title: Avg, of: [Argoverse2, ...], how: mean}
        rows:             # published rows: one value per column, then per summary column; null = not reported
          - {model: VLM3-4B, values: [0.9, ...]}

Running a suite evaluates every member bench whose data is present (each into ``OUT/<bench>``, the
same as ``vlm3 eval --bench``), lists the missing ones with how to get them, and writes
``OUT/suite.md`` (each table: the published rows, then the evaluated model), ``OUT/suite.json``
and ``OUT/suite.png``. A summary column is computed only when all its columns were evaluated, as
the paper computes it; otherwise the table adds the same summary over the evaluated columns for
every row (published ones included), so the comparison stays like for like.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from vlm3.config import ConfigError, ConfigModel, read_yaml
from vlm3.eval.bench import Bench, BenchError, data_missing, load_bench
from vlm3.paths import CONFIGS_DIR
from vlm3.settings import validation_message
from vlm3.tasks.base import UnknownTask, get_task

SUITE_DIR = CONFIGS_DIR / "suites"


class SuiteError(ValueError):
    """A bad suite config; the message names the file and field."""


class Column(ConfigModel):
    title: str = Field(min_length=1)
    bench: str = Field(min_length=1)
    metric: str = Field(min_length=1)


class Summary(ConfigModel):
    title: str = Field(min_length=1)
    of: list[str] = Field(min_length=1)
    how: Literal["mean"] = "mean"


class Row(ConfigModel):
    model: str = Field(min_length=1)
    values: list[float | None]
    note: str | None = None


class Table(ConfigModel):
    title: str = Field(min_length=1)
    higher_is_better: bool = True
    scale: float = Field(1.0, gt=0)
    digits: int = Field(3, ge=0, le=6)
    columns: list[Column] = Field(min_length=1)
    summary: list[Summary] = Field(default_factory=list)
    rows: list[Row] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "Table":
        titles = [c.title for c in self.columns]
        if len(set(titles)) != len(titles):
            raise ValueError(f"table {self.title!r}: column titles repeat")
        for s in self.summary:
            unknown = [t for t in s.of if t not in titles]
            if unknown:
                raise ValueError(f"table {self.title!r}: summary {s.title!r} averages unknown column(s) {unknown}")
        width = len(self.columns) + len(self.summary)
        for row in self.rows:
            if len(row.values) != width:
                raise ValueError(f"table {self.title!r}: row {row.model!r} has {len(row.values)} values for {width} columns (+ summaries)")
        return self


class SuiteConfig(ConfigModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: str
    source: str = Field(min_length=1)
    description: str | None = None
    tables: list[Table] = Field(min_length=1)


@dataclass
class Suite:
    """A parsed suite config (see module doc)."""

    name: str
    task: str
    source: str
    tables: list[Table]
    path: Path
    description: str | None = None

    @property
    def benches(self) -> list[str]:
        """Member bench names, in first-column order."""
        return list(dict.fromkeys(c.bench for table in self.tables for c in table.columns))


def suite_names() -> list[str]:
    """The shipped suites' names, sorted."""
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def load_suite(name_or_path: str | Path) -> Suite:
    """A suite from a YAML path or a shipped suite name (``vlm3/configs/suites``)."""
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        path = SUITE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise SuiteError(f"suite {str(name_or_path)!r}: no such file and no shipped suite of that name (known: {', '.join(suite_names()) or 'none'})")
    try:
        cfg = SuiteConfig.model_validate(read_yaml(path))
        task = get_task(cfg.task).name
    except ConfigError as e:
        raise SuiteError(str(e)) from None
    except ValidationError as e:
        raise SuiteError(f"{path}: {validation_message(e)}") from None
    except UnknownTask as e:
        raise SuiteError(f"{path}: task: {e}") from None
    return Suite(cfg.name, task, cfg.source, cfg.tables, path, cfg.description)


# --- running -------------------------------------------------------------------------------------


@dataclass
class SuiteResult:
    """What a suite run gave: each evaluated bench's metrics.json, and the missing ones with why."""

    suite: Suite
    out: Path
    model: str
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # bench -> metrics.json content
    missing: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # bench -> (why, how to get it)


def run_suite(
    suite: Suite,
    out: str | Path,
    evaluate: Callable[[Bench, Path], dict[str, Any]],
    *,
    model: str,
    plots: bool = True,
) -> SuiteResult:
    """Evaluate every member bench whose data is present with ``evaluate(bench, folder)`` (which
    returns its metrics.json content), then write the suite report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = SuiteResult(suite, out, model)
    benches: list[Bench] = []
    for name in suite.benches:
        try:
            bench = load_bench(name)
        except BenchError as e:  # ${VLM3_DATA} unset and no default: the bench cannot even say where
            result.missing[name] = (str(e), None)
            continue
        if bench.task != suite.task:
            raise SuiteError(f"{suite.path}: bench {name!r} is a {bench.task} bench, the suite is {suite.task}")
        why = data_missing(bench)
        if why is not None:
            result.missing[name] = (why, bench.get)
        else:
            benches.append(bench)
    for bench in benches:
        result.metrics[bench.name] = evaluate(bench, out / bench.name)
    write_suite_report(result, plots=plots)
    return result


# --- the report ----------------------------------------------------------------------------------


def metric_value(metrics: dict[str, Any], key: str) -> float | None:
    """``metrics[key]`` with dots going into nested mappings; None when absent or not a finite number."""
    value: Any = metrics
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]


@dataclass
class TableView:
    """One table as printed: headers and rows of numbers (None = not reported / not evaluated)."""

    title: str
    headers: list[str]
    rows: list[tuple[str, list[float | None]]]
    digits: int
    higher_is_better: bool
    partial: list[str] = field(default_factory=list)  # the evaluated columns a partial summary averages


def _means(titles: list[str], values: list[float | None], summaries: list[Summary]) -> list[float | None]:
    """Each summary's mean over its columns of ``values`` (None when one of them is None)."""
    by = dict(zip(titles, values))
    return [_mean([by[t] for t in s.of]) for s in summaries]


def table_view(table: Table, metrics: dict[str, dict[str, Any]], model: str) -> TableView:
    """The published rows and the model's row of ``table``, in the paper's units; summaries the
    paper's way, plus like-for-like partial summaries when columns were not evaluated."""
    titles = [c.title for c in table.columns]
    mine: list[float | None] = []
    for c in table.columns:
        value = metric_value(metrics[c.bench].get("metrics", {}), c.metric) if c.bench in metrics else None
        mine.append(None if value is None else value * table.scale)
    evaluated = [t for t, v in zip(titles, mine) if v is not None]
    partial_cols: list[str] = []
    partial: list[Summary] = []
    for s in table.summary:
        present = [t for t in s.of if t in evaluated]
        if present and len(present) < len(s.of):
            partial.append(Summary(title=f"{s.title} ({len(present)} of {len(s.of)})", of=present))
            partial_cols = present
    headers = titles + [s.title for s in table.summary] + [s.title for s in partial]
    rows: list[tuple[str, list[float | None]]] = []
    for row in table.rows:  # published: their own summaries as printed, then the partial ones
        rows.append((row.model, list(row.values) + _means(titles, row.values[: len(titles)], partial)))
    rows.append((f"{model} (this run)", mine + _means(titles, mine, table.summary) + _means(titles, mine, partial)))
    return TableView(table.title, headers, rows, table.digits, table.higher_is_better, partial_cols)


def markdown_table(view: TableView) -> str:
    """A Markdown table: model, then the columns; '—' where there is no number."""
    head = "| model | " + " | ".join(view.headers) + " |"
    rule = "|---|" + "---:|" * len(view.headers)
    lines = [head, rule]
    for model, values in view.rows:
        cells = ["—" if v is None else f"{v:.{view.digits}f}" for v in values]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_suite_report(result: SuiteResult, *, plots: bool = True) -> None:
    """``suite.md``, ``suite.json`` and (with ``plots``) ``suite.png`` in ``result.out``."""
    suite = result.suite
    views = [table_view(t, result.metrics, result.model) for t in suite.tables]
    lines = [f"# Suite {suite.name}: {result.model}", "", f"Published rows: {suite.source}.", ""]
    lines.append(f"Evaluated: {', '.join(result.metrics) or 'none'}; missing: {', '.join(result.missing) or 'none'}.")
    lines.append("")
    for view in views:
        arrow = "higher is better" if view.higher_is_better else "lower is better"
        lines += [f"## {view.title} ({arrow})", "", markdown_table(view), ""]
        if view.partial:
            lines += [f"A summary over all columns needs every bench; the partial column averages the evaluated ones ({', '.join(view.partial)}) for every row.", ""]
    if result.missing:
        lines += ["## Missing data", ""]
        for name, (why, get) in result.missing.items():
            lines.append(f"- **{name}**: {why}")
            if get:
                lines += ["", "  " + get.rstrip().replace("\n", "\n  "), ""]
    (result.out / "suite.md").write_text("\n".join(lines) + "\n")
    payload = {
        "suite": suite.name, "task": suite.task, "source": suite.source, "model": result.model,
        "evaluated": {name: {"metrics": m.get("metrics", {}), "folder": str(result.out / name)} for name, m in result.metrics.items()},
        "missing": {name: {"why": why, "get": get} for name, (why, get) in result.missing.items()},
        "tables": [{"title": v.title, "headers": v.headers, "rows": [{"model": m, "values": vals} for m, vals in v.rows]} for v in views],
    }
    (result.out / "suite.json").write_text(json.dumps(payload, indent=2) + "\n")
    if plots:
        _plot(views, result.out)


def _plot(views: list[TableView], out: Path) -> None:
    """One panel per table: a bar per row in each column (missing numbers leave gaps)."""
    import numpy as np

    from vlm3 import plotting

    fig = plotting.figure(max(6.0, 1.2 * max(len(v.headers) for v in views) + 2), 3.6 * len(views))
    for k, view in enumerate(views):
        ax = fig.add_subplot(len(views), 1, k + 1)
        n = len(view.rows)
        width = 0.8 / max(n, 1)
        x = np.arange(len(view.headers))
        for i, (model, values) in enumerate(view.rows):
            heights = [np.nan if v is None else v for v in values]
            this_run = i == n - 1
            ax.bar(x + (i - (n - 1) / 2) * width, heights, width, label=model, edgecolor="black" if this_run else None, linewidth=1.2 if this_run else 0)
        ax.set_xticks(x, view.headers, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{view.title} ({'higher' if view.higher_is_better else 'lower'} is better)", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
    plotting.save(fig, out, "suite.png")
