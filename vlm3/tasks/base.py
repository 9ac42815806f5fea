"""A task is one object: its prompt, sample builder, parser, metrics and report, in one module.

Every stage looks tasks up here by name: ``vlm3.tasks.samples.build_sample`` (training and
evaluation samples), ``vlm3.ask.ask`` (parsing answers), ``vlm3 eval`` (labels, generation limit,
report), ``vlm3 score``. Adding a task is writing one :class:`Task` subclass and calling
:func:`register` on an instance; nothing else changes.

Prediction lines (``predictions.jsonl`` of ``vlm3 eval``, and what ``vlm3 score`` builds from its
input) are plain JSON objects with at least ``pred`` (the typed answer in the original image
frame, or None when it could not be read), ``gt`` and ``parsed``, plus the task's own fields;
:meth:`Task.metrics` scores a list of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vlm3.profiles import TaskProfile
from vlm3.tasks.common import as_float

if TYPE_CHECKING:
    from vlm3.data.records import Record
    from vlm3.data.unify import UnifiedRecord
    from vlm3.settings import Settings
    from vlm3.tasks.samples import Sample


@dataclass
class Query:
    """One question asked alone: its text, target answer, ground truth and where it points.

    ``label`` is the index of the record label it asks about (None: one question per record);
    ``fields`` are JSON values written beside the answer (pixels in the original image, text
    coordinates asked, question kind); ``context`` is what the parser needs and is not saved.
    ``parts``: when set, the question is asked as these separate single-turn questions and the
    answers are joined with newlines, in order, before parsing (a profile that asks a pose as four
    questions); ``question`` is then their newline-joined text. ``images``: this question's own
    images (DepthLM's marker drawn on a copy), else the sample's; not saved.
    """

    question: str
    answer: str | None
    gt: Any
    label: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    context: Any = None
    parts: list[str] | None = None
    images: list[Any] | None = None


Built = tuple[list[dict], list[Query]]


class Task:
    """One task. Subclasses set the class attributes and implement the methods marked so.

    Units and frames: pixels are continuous (x, y) in the ORIGINAL image (corner origin, README
    conventions); predictions returned by :meth:`read` are in those units too.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    n_images: ClassVar[int] = 1  # images shown per question (1: view 1 of a pair is dropped)
    label_prefix: ClassVar[str] = "q"  # prediction key of label i: f"{prefix}{i}"; one question per record: prefix
    headline: ClassVar[str]  # the metric a report leads with
    max_new_tokens: ClassVar[int] = 32  # default generation limit per question
    answer_styles: ClassVar[tuple[str, ...]] = ("short",)  # values of Settings.answer_style it knows
    score_format: ClassVar[str] = ""  # one line for ``vlm3 score --help``: the JSONL fields
    scoring_options: ClassVar[tuple[str, ...]] = ()  # options of :meth:`metrics` a bench's ``scoring`` / the CLI may set
    # The prompt profiles (vlm3.profiles) this task speaks besides vlm3's own, and what each fixes;
    # build / prompts / read branch on ``settings.profile``.
    profiles: ClassVar[dict[str, TaskProfile]] = {}

    # --- data -----------------------------------------------------------------------------------

    def has_labels(self, record: Record) -> bool:
        """Whether ``record`` can give samples of this task. Must be implemented."""
        raise NotImplementedError

    def n_labels(self, record: Record) -> int | None:
        """How many questions an evaluation can ask about ``record`` (None: one per record)."""
        return None

    def label_key(self, label: int | None) -> str:
        """The key of one question within its record: ``d12`` (label 12), ``pair`` (the only one)."""
        return self.label_prefix if label is None else f"{self.label_prefix}{int(label)}"

    # --- samples --------------------------------------------------------------------------------

    def build(self, view: UnifiedRecord, settings: Settings, rng: np.random.Generator | None, labels: list[int] | None) -> Built:
        """Training messages and evaluation queries for one transformed record. Must be implemented.

        Training (``rng`` given, ``labels`` None) draws ``settings.points_per_sample`` labels;
        evaluation (``rng`` None) asks ``labels`` (None: all) in the given order, one query each,
        leaving out those that fell outside the transformed image (the caller reports them).
        ``view.kept[field]`` maps labels of ``view.record`` to the original record's.
        """
        raise NotImplementedError

    def prompts(self, settings: Settings) -> list[str]:
        """Every question template, rendered with placeholder values (prompt snapshot and hash). Must be implemented."""
        raise NotImplementedError

    # --- answers --------------------------------------------------------------------------------

    def read(self, raw: str, query: Query, sample: Sample) -> Any:
        """The typed answer of a raw model output (JSON values, original image frame), or None.

        Must be implemented; never raises on model output.
        """
        raise NotImplementedError

    def metrics(self, lines: list[dict[str, Any]], options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Metrics of prediction lines; must include ``n``, ``parsed`` and ``failed``. Must be implemented.

        ``options`` are scoring options and context, each optional; a task reads the keys it knows
        and ignores the rest: ``pair_order`` (pose: which relative transform is compared),
        ``n_coords`` (the text-coordinate range N the questions used), ``views`` (evaluation:
        ``{record id: [[width, height, sx, sy] per view]}``, each view's size as the model was
        shown it and its scale from the original image).
        """
        raise NotImplementedError

    def score_line(self, line: ScoreLine, n_coords: int) -> dict[str, Any]:
        """A prediction line (``pred``, ``gt``, ``parsed``, task fields) from one ``vlm3 score`` input line."""
        raise NotImplementedError(f"task {self.name!r} cannot score files")

    # --- report ---------------------------------------------------------------------------------

    def plots(self, folder: Path, lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """Draw summary plots of scored lines into ``folder``; returns (file name, title) pairs."""
        return []

    def example(self, record: Record, images: list[np.ndarray], lines: list[dict[str, Any]]) -> Any:
        """A matplotlib Figure showing one record's answers on its original images, or None."""
        return None


# --- the registry -------------------------------------------------------------------------------

_REGISTRY: dict[str, Task] = {}
_ALIASES: dict[str, str] = {}


class UnknownTask(ValueError):
    """A task name that is not registered; the message lists the known ones."""


def register(task: Task) -> Task:
    """Add ``task`` to the registry (a name or alias already taken by another task is an error)."""
    for key in (task.name, *task.aliases):
        owner = _ALIASES.get(key)
        if owner is not None and owner != task.name:
            raise ValueError(f"task name {key!r} is already used by task {owner!r}")
    _REGISTRY[task.name] = task
    for key in (task.name, *task.aliases):
        _ALIASES[key] = task.name
    return task


def unregister(name: str) -> None:
    """Remove a task and its aliases (tests register toy tasks and take them away again)."""
    task = _REGISTRY.pop(name, None)
    if task is not None:
        for key in (task.name, *task.aliases):
            _ALIASES.pop(key, None)


def get_task(name: str | Task) -> Task:
    """The registered task called ``name`` (or one of its aliases)."""
    if isinstance(name, Task):
        return name
    key = _ALIASES.get(str(name))
    if key is None:
        raise UnknownTask(f"unknown task {name!r}: choose one of {', '.join(task_names())}")
    return _REGISTRY[key]


def task_names() -> list[str]:
    """The registered tasks' names, in registration order."""
    return list(_REGISTRY)


def tasks_of(record: Record) -> list[str]:
    """The names of the tasks ``record`` has labels for."""
    return [t.name for t in _REGISTRY.values() if t.has_labels(record)]


# --- score input lines --------------------------------------------------------------------------


class ScoreInputError(ValueError):
    """A bad ``vlm3 score`` input; the message is one line naming the file (and line)."""


class ScoreLine:
    """One JSON object of a ``vlm3 score`` file, with getters that fail naming file and line."""

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
        number = as_float(value) if is_numeric(value) else None
        if number is None or (positive and number <= 0):
            kind = "a positive number" if positive else "a finite number"
            raise self.error(f'"{key}" must be {kind}, got {short(value)}')
        return number

    def array(self, key: str, shape: tuple[int, ...], value: Any = None) -> np.ndarray:
        value = self.get(key) if value is None else value
        arr = None
        if is_numeric(value):
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                arr = None
        if arr is None or arr.shape != shape or not np.all(np.isfinite(arr)):
            dims = "x".join(str(d) for d in shape)
            raise self.error(f'"{key}" must be a finite {dims} array of numbers, got {short(value)}')
        return arr


def is_numeric(value: Any, depth: int = 0) -> bool:
    """A JSON number, or nested lists of them (bools and strings are not numbers)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    return isinstance(value, list) and depth < 4 and all(is_numeric(v, depth + 1) for v in value)


def short(value: Any, limit: int = 60) -> str:
    """A JSON value shortened for an error message."""
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
