"""Asking a model: one function for every caller (``vlm3 eval``, held-out curves, the demo, predict).

:func:`ask` sends a sample's questions to a backend in one ``query_many`` call (the local
backend encodes the images once and shares their KV cache) and reads every answer with the
task's parser into a typed prediction in the original image frame. A malformed or missing answer
is a counted failure (``parsed`` False, ``pred`` None), never an exception.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from vlm3.models.backend import Backend
from vlm3.tasks.base import Query, get_task
from vlm3.tasks.samples import Sample


class AskError(RuntimeError):
    """The backend broke its contract (e.g. returned a different number of answers)."""


@dataclass
class Answer:
    """One answered query: the raw text and the typed prediction (None when it could not be read)."""

    query: Query
    raw: str
    pred: Any

    @property
    def parsed(self) -> bool:
        return self.pred is not None

    def line(self, sample: Sample) -> dict[str, Any]:
        """The prediction line (``predictions.jsonl``) of this answer."""
        task = get_task(sample.task)
        q = self.query
        return {
            "key": f"{sample.record_id}#{task.label_key(q.label)}",
            "record": sample.record_id,
            "label": task.label_key(q.label),
            "dataset": sample.dataset,
            "question": q.question,
            "raw": self.raw,
            "parsed": self.parsed,
            "pred": self.pred,
            "gt": q.gt,
            **q.fields,
        }


def ask(
    backend: Backend,
    sample: Sample,
    *,
    max_new_tokens: int | None = None,
    skip: Container[int | None] = (),
    queries: list[Query] | None = None,
) -> list[Answer]:
    """Ask ``sample``'s queries (or ``queries`` about its images), except labels in ``skip``.

    ``max_new_tokens`` defaults to the task's limit. Answers come back in query order.
    """
    task = get_task(sample.task)
    pending = [q for q in (sample.queries if queries is None else queries) if q.label not in skip]
    if not pending:
        return []
    raws = backend.query_many(sample.images, [q.question for q in pending], max_new_tokens or task.max_new_tokens)
    if len(raws) != len(pending):
        raise AskError(f"the backend gave {len(raws)} answers for {len(pending)} questions (record {sample.record_id})")
    out = []
    for q, raw in zip(pending, raws):
        text = raw if isinstance(raw, str) else ""
        try:
            pred = task.read(text, q, sample)
        except Exception:  # a malformed answer is a failed prediction, never a crash
            pred = None
        out.append(Answer(q, text, pred))
    return out
