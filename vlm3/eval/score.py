"""Score pre-paired predictions of any model from a JSONL file, without running a model.

One JSON object per line (blank lines are skipped); a string ``pred`` is raw model output and
goes through the task's parser, ``null`` is a failure:

- ``depth``: ``{"pred": number | string | null, "gt": metres}``
- ``pose``: ``{"pred": string | {"R": 3x3, "t": [3], "distance"?: metres} | null, "R_gt": 3x3,
  "t_gt": [3]}`` where R, t are T_cam2_from_cam1 (camera 2 relative to camera 1, OpenCV axes)
- ``corr``: ``{"pred": string | [x, y] | null, "gt": [x, y]}`` in pixels of image 2; a string
  pred holds text coordinates in [0, N) and the line must then give ``"width"`` and
  ``"height"`` of image 2 to decode it
- ``object``: ``{"pred": string | bool | number | null, "gt": bool | metres | hour,
  "kind": "qualitative" | "quantitative" | "direction", "category"?: name}``

Any problem with the file is a :class:`ScoreInputError` whose message is one line naming the
file and, where it applies, the line number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vlm3.tasks.common import as_float
from vlm3.textref import DEFAULT_N, decode_pixel

TASKS: tuple[str, ...] = ("depth", "pose", "corr", "object")


class ScoreInputError(ValueError):
    """A bad score input; the message is one line naming the file (and line)."""


class _Line:
    """One parsed JSONL line with helpers that fail with a message naming file and line."""

    def __init__(self, path: Path, lineno: int, data: dict) -> None:
        self.path, self.lineno, self.data = path, lineno, data

    def error(self, message: str) -> ScoreInputError:
        return ScoreInputError(f"{self.path}:{self.lineno}: {message}")

    def get(self, key: str) -> Any:
        if key not in self.data:
            raise self.error(f'missing key "{key}"')
        return self.data[key]

    def number(self, key: str, *, positive: bool = False) -> float:
        value = self.get(key)
        number = as_float(value) if _is_numeric(value) else None
        if number is None or (positive and number <= 0):
            kind = "a positive number" if positive else "a finite number"
            raise self.error(f'"{key}" must be {kind}, got {_short(value)}')
        return number

    def array(self, key: str, shape: tuple[int, ...], value: Any = None) -> np.ndarray:
        value = self.get(key) if value is None else value
        arr = None
        if _is_numeric(value):
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                arr = None
        if arr is None or arr.shape != shape or not np.all(np.isfinite(arr)):
            dims = "x".join(str(d) for d in shape)
            raise self.error(f'"{key}" must be a finite {dims} array of numbers, got {_short(value)}')
        return arr


def _is_numeric(value: Any, depth: int = 0) -> bool:
    """A JSON number, or nested lists of them (bools and strings are not numbers)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    return isinstance(value, list) and depth < 4 and all(_is_numeric(v, depth + 1) for v in value)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_jsonl(path: str | Path) -> list[_Line]:
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
        lines.append(_Line(path, number, data))
    if not lines:
        raise ScoreInputError(f"{path}: no predictions (the file is empty)")
    return lines


# --- one reader per task ------------------------------------------------------------------------


def _score_depth(lines: list[_Line], n_coords: int) -> dict:
    from vlm3.tasks.depth import depth_metrics, parse_depth

    preds, gts = [], []
    for line in lines:
        pred = line.get("pred")
        if isinstance(pred, str):
            preds.append(parse_depth(pred))
        elif pred is None or _is_numeric(pred) and not isinstance(pred, list):
            preds.append(as_float(pred))
        else:
            raise line.error(f'"pred" must be a number, a string or null, got {_short(pred)}')
        gts.append(line.number("gt", positive=True))
    return depth_metrics(preds, gts)


def _score_pose(lines: list[_Line], n_coords: int) -> dict:
    from vlm3.tasks.pose import PosePrediction, parse_pose, pose_metrics

    preds, R_gt, t_gt = [], [], []
    for line in lines:
        pred = line.get("pred")
        if isinstance(pred, str):
            preds.append(parse_pose(pred))
        elif pred is None:
            preds.append(None)
        elif isinstance(pred, dict):
            for key in ("R", "t"):
                if key not in pred:
                    raise line.error(f'"pred" object is missing key "{key}"')
            distance = pred.get("distance")
            if distance is not None and (as_float(distance) is None or not _is_numeric(distance)):
                raise line.error(f'"pred.distance" must be a finite number, got {_short(distance)}')
            preds.append(
                PosePrediction(
                    R=line.array("pred.R", (3, 3), pred["R"]),
                    t=line.array("pred.t", (3,), pred["t"]),
                    distance=None if distance is None else as_float(distance),
                )
            )
        else:
            raise line.error(f'"pred" must be answer text, an object {{"R", "t"}} or null, got {_short(pred)}')
        R_gt.append(line.array("R_gt", (3, 3)))
        t_gt.append(line.array("t_gt", (3,)))
    return pose_metrics(preds, np.array(R_gt), np.array(t_gt))


def _score_corr(lines: list[_Line], n_coords: int) -> dict:
    from vlm3.tasks.correspondence import correspondence_metrics, parse_correspondence

    preds, gts = [], []
    for line in lines:
        pred = line.get("pred")
        if isinstance(pred, str):
            if "width" not in line.data or "height" not in line.data:
                raise line.error('"pred" is text, so the line must give "width" and "height" of image 2')
            width, height = line.number("width", positive=True), line.number("height", positive=True)
            point = parse_correspondence(pred, n_coords)
            preds.append(None if point is None else decode_pixel(*point, width, height, n_coords))
        elif pred is None:
            preds.append(None)
        else:
            preds.append(tuple(line.array("pred", (2,))))
        gts.append(line.array("gt", (2,)))
    return correspondence_metrics(preds, np.array(gts))


def _score_object(lines: list[_Line], n_coords: int) -> dict:
    from vlm3.tasks.object3d import KINDS, check_gt, object_metrics, parse_object_answer

    preds, gts, kinds, categories = [], [], [], []
    for line in lines:
        kind = line.get("kind")
        if kind not in KINDS:
            raise line.error(f'"kind" must be one of {", ".join(KINDS)}, got {_short(kind)}')
        gt = line.get("gt")
        try:
            check_gt(kind, gt)
        except ValueError:
            raise line.error(f'"gt" {_short(gt)} is not valid for a {kind} question') from None
        pred = line.get("pred")
        if isinstance(pred, str):
            pred = parse_object_answer(pred, kind)
        elif pred is not None:
            wanted_bool = kind == "qualitative"
            if isinstance(pred, bool) != wanted_bool or not isinstance(pred, (bool, int, float)):
                wanted = "true/false" if wanted_bool else "a number"
                raise line.error(f'"pred" must be text, {wanted} or null for a {kind} question, got {_short(pred)}')
        category = line.data.get("category", kind)
        if not isinstance(category, str):
            raise line.error(f'"category" must be a string, got {_short(category)}')
        preds.append(pred)
        gts.append(bool(gt) if kind == "qualitative" else (int(gt) if kind == "direction" else float(gt)))
        kinds.append(kind)
        categories.append(category)
    try:
        return object_metrics(preds, gts, kinds, categories)
    except ValueError as exc:
        raise ScoreInputError(f"{lines[0].path}: {exc}") from None


_SCORERS: dict[str, Callable[[list[_Line], int], dict]] = {
    "depth": _score_depth,
    "pose": _score_pose,
    "corr": _score_corr,
    "object": _score_object,
}


def score_file(task: str, path: str | Path, n_coords: int = DEFAULT_N) -> dict:
    """Metrics for a JSONL file of pre-paired predictions (see module doc for the format)."""
    if task not in _SCORERS:
        raise ScoreInputError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if int(n_coords) != n_coords or n_coords < 2:
        raise ScoreInputError(f"--n-coords must be an integer >= 2, got {n_coords}")
    return _SCORERS[task](read_jsonl(path), int(n_coords))


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


def run(task: str, path: str | Path, *, as_json: bool = False, n_coords: int = DEFAULT_N) -> int:
    """The ``vlm3 score`` command: print the metrics, return the exit code (1 on bad input)."""
    import typer

    try:
        result = score_file(task, path, n_coords)
    except ScoreInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    if as_json:
        typer.echo(json.dumps(json_safe(result), allow_nan=False))
    else:
        print_table(task, path, result)
    return 0
