"""Asking a model: one function for every caller (``vlm3 eval``, held-out curves, the demo, predict).

:func:`ask` sends a sample's questions to a backend in one ``query_many`` call (the local
backend encodes the images once and shares their KV cache) and reads every answer with the
task's parser into a typed prediction in the original image frame. A malformed or missing answer
is a counted failure (``parsed`` False, ``pred`` None), never an exception.

An answer cut off by the token limit (the backend's ``finish_reason`` is ``"length"``), or one
without the ``require``-d closing text, is ``truncated``: a counted failure too, never parsed
into a value, since the start of a cut-off answer (``"3"`` of ``"3.75"``) can read as a
plausible but wrong number.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from vlm3.models.backend import Backend, Completion, single_turn
from vlm3.profiles import max_new_tokens_for, task_profile
from vlm3.tasks.base import Query, get_task
from vlm3.tasks.samples import Sample


#: Why a truncated answer failed (``Answer.failure``; ``vlm3 predict`` prints and saves it).
TRUNCATED = "truncated at the token limit"
#: Why an answer that ended but could not be read failed.
UNPARSED = "the answer did not parse"
#: Why a question has no answer at all: the request failed after the backend's retries.
REQUEST_FAILED = "the request failed"


class AskError(RuntimeError):
    """The backend broke its contract (e.g. returned a different number of answers)."""


@dataclass
class Answer:
    """One answered query: the raw text and the typed prediction (None when it could not be read).

    ``truncated``: the answer was cut off by the token limit (or lacks the required closing
    text); it is then a failure (``pred`` None) whatever its start would parse to. ``error``: the
    request itself failed after the backend's retries (finish reason ``"error"``): a failure that
    ``vlm3 eval`` asks again when resumed.
    """

    query: Query
    raw: str
    pred: Any
    truncated: bool = False
    error: bool = False

    @property
    def parsed(self) -> bool:
        return self.pred is not None

    @property
    def failure(self) -> str | None:
        """Why the answer is a failure (:data:`REQUEST_FAILED`, :data:`TRUNCATED` or :data:`UNPARSED`), None when it parsed."""
        if self.error:
            return REQUEST_FAILED
        if self.truncated:
            return TRUNCATED
        return None if self.parsed else UNPARSED

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
            "truncated": self.truncated,
            **({"error": True} if self.error else {}),
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
    require: str | None = None,
) -> list[Answer]:
    """Ask ``sample``'s queries (or ``queries`` about its images), except labels in ``skip``.

    How is decided by the sample's prompt profile (``sample.settings.profile``, ``vlm3.profiles``):
    ``max_new_tokens`` defaults to its limit for the task, ``require`` to the text its complete
    answers contain (e.g. ``"</answer>"``), and a system prompt is sent if it has one. Answers come
    back in query order. An answer whose
    ``finish_reason`` is ``"length"`` (it hit ``max_new_tokens``) or that lacks ``require`` is
    ``truncated``: a failure with ``pred`` None, never parsed.

    Questions about the sample's images go to the backend in one ``query_many`` call (the image
    work is shared); a query with its own ``images`` (a marker drawn on them) is asked alone, and
    a query of several ``parts`` is asked part by part, its answers joined with newlines.
    """
    task = get_task(sample.task)
    pending = [q for q in (sample.queries if queries is None else queries) if q.label not in skip]
    if not pending:
        return []
    limit = max_new_tokens or max_new_tokens_for(sample.settings, task)
    asking = task_profile(sample.settings.profile, task)
    if require is None:
        require = asking.require
    asked = [(i, part) for i, q in enumerate(pending) for part in (q.parts or [q.question])]
    shared = [(i, part) for i, part in asked if pending[i].images is None]
    own = [(i, part) for i, part in asked if pending[i].images is not None]
    got: list[list[Completion | str]] = [[] for _ in pending]
    for group, call in (
        (shared, lambda: backend.query_many(sample.images, [part for _, part in shared], limit, asking.system)),
        (own, lambda: backend.complete([single_turn(pending[i].images, part, asking.system) for i, part in own], limit)),
    ):
        if not group:
            continue
        completions = call()
        if len(completions) != len(group):
            raise AskError(f"the backend gave {len(completions)} answers for {len(group)} questions (record {sample.record_id})")
        for (i, _), c in zip(group, completions):
            got[i].append(c)
    out = []
    for q, parts in zip(pending, got):
        texts, cut, failed = [], False, False
        for c in parts:
            # A plain string is accepted from backends written before query_many returned completions
            # (finish reason unknown); anything else that is not text is an empty, failed answer.
            if isinstance(c, Completion):
                text, finish = (c.text if isinstance(c.text, str) else ""), c.finish_reason
            else:
                text, finish = (c if isinstance(c, str) else ""), None
            texts.append(text)
            failed = failed or finish == "error"
            cut = cut or finish == "length" or (require is not None and require not in text)
        text = "\n".join(texts)
        pred = None
        if not (cut or failed):
            try:
                pred = task.read(text, q, sample)
            except Exception:  # a malformed answer is a failed prediction, never a crash
                pred = None
        out.append(Answer(q, text, pred, cut and not failed, failed))
    return out
