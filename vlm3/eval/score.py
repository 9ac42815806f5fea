"""Score pre-paired predictions of any model from a JSONL file, without running a model.

One JSON object per line (blank lines are skipped); a string ``pred`` is raw model output and
goes through the task's parser, ``null`` is a failure. Each task states its fields
(``Task.score_format``; ``vlm3 score --help`` lists them): e.g. depth ``{"pred": number |
string | null, "gt": metres}``. The task turns every line into a prediction line
(``Task.score_line``) and scores them with the same ``Task.metrics`` as ``vlm3 eval``, with the
options ``n_coords`` (``--n-coords``) and, for pose, ``pair_order`` (``--pair-order``).

Any problem with the file is a :class:`ScoreInputError` whose message is one line naming the
file and, where it applies, the line number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vlm3.settings import DEFAULT_N_COORDS
from vlm3.tasks.base import ScoreInputError, ScoreLine, Task, UnknownTask, get_task


def read_jsonl(path: str | Path) -> list[ScoreLine]:
    """The non-blank lines of a JSONL file as objects; ScoreInputError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ScoreInputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScoreInputError(f"{path}: cannot read as UTF-8 text ({exc.__class__.__name__})") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ScoreInputError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        except (ValueError, RecursionError):
            raise ScoreInputError(f"{path}:{number}: invalid JSON (too deeply nested or too large)") from None
        if not isinstance(data, dict):
            raise ScoreInputError(f"{path}:{number}: expected a JSON object, got {type(data).__name__}")
        lines.append(ScoreLine(path, number, data))
    if not lines:
        raise ScoreInputError(f"{path}: no predictions (the file is empty)")
    return lines


def score_file(task: str | Task, path: str | Path, n_coords: int = DEFAULT_N_COORDS, pair_order: str | None = None) -> dict:
    """Metrics for a JSONL file of pre-paired predictions (see module doc for the format).

    ``pair_order`` (pose only; None: the task's default ``"cam2_from_cam1"``) is the relative
    transform the pairs are compared in: ``"cam1_from_cam2"`` is VGGT's evaluation order
    (``vlm3.tasks.pose.pair_in_order``).
    """
    from vlm3.tasks.pose import PAIR_ORDERS

    try:
        task = get_task(task)
    except UnknownTask as e:
        raise ScoreInputError(str(e)) from None
    if int(n_coords) != n_coords or n_coords < 2:
        raise ScoreInputError(f"--n-coords must be an integer >= 2, got {n_coords}")
    if pair_order is not None and pair_order not in PAIR_ORDERS:
        raise ScoreInputError(f"--pair-order must be one of {', '.join(PAIR_ORDERS)}, got {pair_order!r}")
    if pair_order is not None and "pair_order" not in task.scoring_options:
        raise ScoreInputError(f"--pair-order is not a scoring option of task {task.name!r}")
    lines = read_jsonl(path)
    predictions = [task.score_line(line, int(n_coords)) for line in lines]
    options: dict[str, Any] = {"n_coords": int(n_coords)}
    if pair_order is not None:
        options["pair_order"] = pair_order
    try:
        return task.metrics(predictions, options=options)
    except ValueError as exc:
        raise ScoreInputError(f"{lines[0].path}: {exc}") from None


# --- output -------------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """``value`` with NaN / infinity replaced by None and numpy scalars made plain."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def flat_metrics(result: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(name, value) rows of a possibly nested metrics dict, nested names joined with "/"."""
    rows: list[tuple[str, Any]] = []
    for key, value in result.items():
        if isinstance(value, dict):
            rows += flat_metrics(value, f"{prefix}{key}/")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _format_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def print_table(task: str, path: str | Path, result: dict) -> None:
    """Print the metrics as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{task}: {path}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in flat_metrics(result):
        table.add_row(name, _format_value(value))
    Console().print(table)


def run(task: str, path: str | Path, *, as_json: bool = False, n_coords: int = DEFAULT_N_COORDS, pair_order: str | None = None) -> int:
    """The ``vlm3 score`` command: print the metrics, return the exit code (1 on bad input)."""
    import typer

    try:
        result = score_file(task, path, n_coords, pair_order)
    except ScoreInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    if as_json:
        typer.echo(json.dumps(json_safe(result), allow_nan=False))
    else:
        print_table(task, path, result)
    return 0
