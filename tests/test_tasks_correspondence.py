"""Correspondence task: phrasings, answers, parser, EPE / PCK."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm3.tasks.correspondence import (
    QUESTION_TEMPLATES,
    correspondence_answer,
    correspondence_metrics,
    correspondence_question,
    parse_correspondence,
)
from vlm3.textref import decode_pixel, encode_pixel


def test_paper_prompt_and_answer() -> None:
    assert correspondence_question(812, 430) == (
        "Given these two images, what pixel in the second image corresponds to pixel (812, 430) in the first "
        "image? Report the answer as (x2, y2)."
    )
    assert correspondence_answer(97, 1503) == "The corresponding pixel is (97, 1503)."


def test_seeded_phrasings() -> None:
    pick = [correspondence_question(1, 2, rng=np.random.default_rng(seed)) for seed in range(40)]
    again = [correspondence_question(1, 2, rng=np.random.default_rng(seed)) for seed in range(40)]
    assert pick == again
    assert len(set(pick)) == len(QUESTION_TEMPLATES) >= 3
    assert all("(1, 2)" in q and q.endswith("Report the answer as (x2, y2).") for q in pick)


def test_answer_text() -> None:
    assert correspondence_answer(3, 4) == "The corresponding pixel is (3, 4)."


@settings(max_examples=300, deadline=None)
@given(nx=st.integers(0, 1999), ny=st.integers(0, 1999))
def test_round_trip(nx: int, ny: int) -> None:
    assert parse_correspondence(correspondence_answer(nx, ny)) == (nx, ny)


@pytest.mark.parametrize(
    ("text", "point"),
    [
        ("<think>(1, 1) maybe</think><answer>(812, 430)</answer>", (812.0, 430.0)),
        ("It matches (10,20). Final: (30, 40).", (30.0, 40.0)),
        ("The corresponding pixel is (812.5, 430)!", (812.5, 430.0)),
        ("(2000, 10)", None),
        ("(-1, 10)", None),
        ("no point", None),
        ("", None),
    ],
)
def test_parse(text: str, point: tuple[float, float] | None) -> None:
    assert parse_correspondence(text) == point


def test_parse_range_follows_n() -> None:
    assert parse_correspondence("(1500, 10)", n=1000) is None
    assert parse_correspondence("(999, 10)", n=1000) == (999.0, 10.0)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_parser_never_raises(text: str) -> None:
    parse_correspondence(text)


def test_metrics_by_hand() -> None:
    gt = [(10, 10), (10, 10), (10, 10), (10, 10), (0, 0)]
    preds = [(10, 10), (13, 14), None, (10, 12), (1, 0)]
    m = correspondence_metrics(preds, gt)
    assert (m["n"], m["parsed"]) == (5, 4)
    assert m["epe"] == pytest.approx((0 + 5 + 2 + 1) / 4)
    assert m["epe_median"] == pytest.approx(1.5)
    assert m["pck1"] == pytest.approx(2 / 5)  # 0 and exactly 1 px
    assert m["pck3"] == pytest.approx(3 / 5)
    assert m["pck5"] == pytest.approx(4 / 5)  # exactly 5 px counts; the failure does not


def test_metrics_nothing_parsed_and_errors() -> None:
    m = correspondence_metrics([None, (np.nan, 1.0)], [(0, 0), (1, 1)])
    assert m["parsed"] == 0 and m["pck5"] == 0.0
    assert math.isnan(m["epe"]) and math.isnan(m["epe_median"])
    with pytest.raises(ValueError):
        correspondence_metrics([None], [(0, 0), (1, 1)])


def test_text_coordinates_decode_to_pixels() -> None:
    width, height = 640, 480
    gt = (321.7, 100.2)
    answer = correspondence_answer(*encode_pixel(*gt, width, height))
    pred = decode_pixel(*parse_correspondence(answer), width, height)
    m = correspondence_metrics([pred], [gt])
    assert m["epe"] <= math.hypot(width / 4000, height / 4000) + 1e-9
    assert m["pck1"] == 1.0
