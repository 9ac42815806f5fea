"""The ground-truth answerer: a backend that answers every bench question with its target answer.

It checks a bench end to end without a model: data, unification, questions, parsing and scoring.
Asked through ``vlm3 eval --model ground-truth``, a correct bench scores perfectly (δ1 = 1,
AUC@30 = 1, EPE at the rounding of integer text coordinates, 100 % object accuracy); anything
less is a bug in the data or the pipeline, never in a model.

The answers are the ones training would teach (``Task.build``'s targets) for the bench's settings
and the chosen prompt profile. The backend publishes those settings like a server does
(``served_settings``), so ``vlm3 eval`` asks the questions the table was built for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlm3.models.backend import Backend, ChatRequest

SPEC = "ground-truth"
"""The model spec ``vlm3 eval --model`` takes for this backend."""


class GroundTruthBackend(Backend):
    """Answers each question of ``bench`` (asked with ``profile``) with its ground-truth answer.

    A question it was not built for (other settings, another bench) is an error naming it,
    never a made-up answer.
    """

    name = SPEC

    def __init__(self, bench: Any, cache_dir: str | Path, profile: str | None = None) -> None:
        from vlm3.settings import settings_for_model
        from vlm3.tasks.base import get_task

        self.bench, self.cache_dir = bench, Path(cache_dir)
        task = get_task(bench.task)
        self.settings, _, _ = settings_for_model(task, None, bench.settings, profile=profile or "vlm3", model_ids=[], model=SPEC)
        self._table: dict[tuple[str, str], str] | None = None

    def served_settings(self) -> dict[str, Any]:
        """The settings the answers were built for, as a model's ``vlm3.json`` says them."""
        return {"task": self.bench.task, **self.settings.model_dump(mode="json")}

    @staticmethod
    def _key(images: Sequence[Any]) -> str:
        return hashlib.sha1(b"".join(np.asarray(im).tobytes() for im in images)).hexdigest()

    def _build(self) -> dict[tuple[str, str], str]:
        from vlm3.data.io import image_root
        from vlm3.eval.bench import load_records, resolve_data
        from vlm3.tasks.base import get_task
        from vlm3.tasks.samples import build_sample, load_images

        task = get_task(self.bench.task)
        data = resolve_data(self.bench, self.cache_dir, progress=False)
        root = image_root(data)
        table: dict[tuple[str, str], str] = {}
        for rec in load_records(data).values():
            if not task.has_labels(rec):
                continue
            sample = build_sample(rec, load_images(rec, root), task, self.settings)
            for q in sample.queries:
                key = self._key(q.images if q.images is not None else sample.images)
                if q.parts is not None:
                    for part, answer in zip(q.parts, (q.answer or "").split("\n")):
                        table[(key, part)] = answer
                else:
                    table[(key, q.question)] = q.answer or ""
        return table

    def generate(self, requests: Sequence[ChatRequest], max_new_tokens: int = 64) -> list[str]:
        if self._table is None:
            self._table = self._build()
        out = []
        for r in requests:
            text = r.messages[-1]["content"][-1]["text"]
            try:
                out.append(self._table[(self._key(r.images), text)])
            except KeyError:
                raise KeyError(f"ground-truth answerer: no target for the question {text[:80]!r} on these images (bench {self.bench.name!r})") from None
        return out
