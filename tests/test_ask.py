"""vlm3.ask.ask: answers cut off at the token limit, or without the required closing text, are
counted failures (``truncated``), never parsed into a value."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vlm3.ask import TRUNCATED, UNPARSED, ask
from vlm3.data.records import Record, View
from vlm3.geometry.camera import Intrinsics
from vlm3.models.backend import Backend, Completion
from vlm3.settings import Settings
from vlm3.tasks.base import Query
from vlm3.tasks.depth import DEPTH
from vlm3.tasks.samples import Sample, transform_views


class Scripted(Backend):
    """Answers each question with its scripted (text, finish_reason)."""

    name = "scripted"

    def __init__(self, script: dict[str, tuple[str, str]]) -> None:
        self.script = script

    def generate(self, requests, max_new_tokens=64):
        return [c.text for c in self.complete(requests, max_new_tokens)]

    def complete(self, requests, max_new_tokens=64):
        answers = [self.script[r.messages[-1]["content"][-1]["text"]] for r in requests]
        return [Completion(text, finish_reason=finish) for text, finish in answers]


def depth_sample(questions: list[str]) -> Sample:
    """A depth sample of one random 64x48 image (the recipe's view transform) asking ``questions``."""
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    K = Intrinsics(50.0, 50.0, 32.0, 24.0, 64, 48)
    record = Record(id="r", dataset="d", views=[View(image="r.png", intrinsics=K.to_list())])
    settings = Settings()
    view = transform_views(record, [img], settings)
    queries = [Query(q, None, 2.5, i) for i, q in enumerate(questions)]
    return Sample("r", "d", DEPTH.name, [Image.fromarray(im) for im in view.images], [], queries, view, settings)


SCRIPT = {
    "closed": ("<answer>2.5</answer>", "stop"),
    "open": ("<answer>2.5", "stop"),  # ended, but without the closing tag
    "bare": ("2.5 m", "stop"),
    "cut": ("<answer>2.5</answer>", "length"),  # the whole answer, but the token limit was reached
    "garbled": ("<answer>far</answer>", "stop"),
}


def test_require_makes_an_answer_without_the_tag_truncated():
    sample = depth_sample(list(SCRIPT))
    answers = {a.query.question: a for a in ask(Scripted(SCRIPT), sample, require="</answer>")}
    assert {q: (a.truncated, a.pred) for q, a in answers.items()} == {
        "closed": (False, 2.5), "open": (True, None), "bare": (True, None), "cut": (True, None), "garbled": (False, None),
    }
    assert answers["open"].raw == "<answer>2.5" and answers["open"].failure == TRUNCATED
    assert answers["garbled"].failure == UNPARSED and answers["closed"].failure is None
    line = answers["open"].line(sample)
    assert line["truncated"] is True and line["parsed"] is False and line["pred"] is None and line["raw"] == "<answer>2.5"
    assert answers["closed"].line(sample)["truncated"] is False


def test_without_require_only_the_token_limit_truncates():
    sample = depth_sample(list(SCRIPT))
    answers = {a.query.question: a for a in ask(Scripted(SCRIPT), sample)}
    assert {q: (a.truncated, a.pred) for q, a in answers.items()} == {
        "closed": (False, 2.5), "open": (False, 2.5), "bare": (False, 2.5), "cut": (True, None), "garbled": (False, None),
    }
