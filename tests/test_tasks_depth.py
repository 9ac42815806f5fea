"""Depth task: prompt, answer styles, packing, parser, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import message_text
from vlm3.tasks.depth import (
    STYLES,
    depth_answer,
    depth_messages,
    depth_metrics,
    depth_question,
    packed_answer,
    packed_question,
    parse_depth,
    parse_packed,
)

depths = st.floats(0.01, 500.0, allow_nan=False)


def test_paper_prompt() -> None:
    assert depth_question(812, 430) == (
        "How far is the pixel at (812, 430) from the camera? Both x and y are normalized to between [0, 2000)."
    )
    assert depth_question(5, 6, n=1000).endswith("normalized to between [0, 1000).")


def test_answer_styles() -> None:
    assert depth_answer(2.349, "short") == "2.35"
    assert depth_answer(2.35, "sentence") == "The point is around 2.35 meters away from the camera."
    assert depth_answer(2.35, "depthlm") == (
        "<think> The point is around 2.35 meters away from the camera. </think>\n\n<answer> 2.35 </answer>"
    )


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), None])
def test_answer_rejects_invalid_labels(bad: object) -> None:
    with pytest.raises(ValueError):
        depth_answer(bad)  # type: ignore[arg-type]


def test_unknown_style_or_packing() -> None:
    with pytest.raises(ValueError):
        depth_answer(1.0, "long")
    with pytest.raises(ValueError):
        depth_messages([(1, 2)], [1.0], packing="zip")
    with pytest.raises(ValueError):
        depth_messages([(1, 2)], [1.0, 2.0])


@settings(max_examples=300, deadline=None)
@given(depth=depths, style=st.sampled_from(STYLES))
def test_round_trip(depth: float, style: str) -> None:
    assert parse_depth(depth_answer(depth, style)) == pytest.approx(depth, abs=0.005 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(depths, min_size=1, max_size=12), style=st.sampled_from(STYLES))
def test_packed_round_trip(values: list[float], style: str) -> None:
    parsed = parse_packed(packed_answer(values, style), len(values))
    assert parsed == pytest.approx(values, abs=0.005 + 1e-9)


def test_multi_turn_messages_attach_the_image_once() -> None:
    points, values = [(10, 20), (30, 40), (50, 60)], [1.0, 2.0, 3.0]
    messages = depth_messages(points, values, style="short", packing="multi_turn")
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    images = [sum(part["type"] == "image" for part in m["content"]) for m in messages]
    assert images == [1, 0, 0, 0, 0, 0]
    assert messages[0]["content"][0] == {"type": "image"}
    assert message_text(messages[2]) == depth_question(30, 40)
    assert [parse_depth(message_text(m)) for m in messages[1::2]] == values


def test_single_turn_messages() -> None:
    points, values = [(10, 20), (30, 40)], [1.234, 20.0]
    user, assistant = depth_messages(points, values, style="depthlm", packing="single_turn")
    assert user["content"][0] == {"type": "image"}
    assert message_text(user) == packed_question(points)
    assert message_text(user).splitlines() == [f"1. {depth_question(10, 20)}", f"2. {depth_question(30, 40)}"]
    text = message_text(assistant)
    assert text == (
        "<think> 1. The point is around 1.23 meters away from the camera.\n"
        "2. The point is around 20.00 meters away from the camera. </think>\n\n"
        "<answer> 1. 1.23\n2. 20.00 </answer>"
    )
    assert parse_packed(text, 2) == [1.23, 20.0]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("<think> around 9 meters </think><answer> 2.35 </answer>", 2.35),
        ("<answer>1,234.5</answer>", 1234.5),
        ("The point is around 350 cm away from the camera.", 3.5),
        ("The pixel (812, 430) is 12 feet away.", 12 * 0.3048),
        ("Distance: 4.2. Confidence 80", 80.0),
        ("Depth: -2.0", -2.0),
        ("0", 0.0),
        ("no idea", None),
        ("", None),
    ],
)
def test_parse_depth(text: str, value: float | None) -> None:
    got = parse_depth(text)
    assert got == (None if value is None else pytest.approx(value))


def test_parse_packed_tolerates_gaps_and_extra_items() -> None:
    text = "Here are the depths:\n1. 2.0 m\n3) 4 meters\n3: 9\n7. 1.0"
    assert parse_packed(text, 3) == [2.0, None, 4.0]
    assert parse_packed("2.1\n3.3", 2) == [2.1, 3.3]
    assert parse_packed("2.1\n3.3", 3) == [None, None, None]
    assert parse_packed(None, 2) == [None, None]


@settings(max_examples=500, deadline=None)
@given(text=st.text(), k=st.integers(0, 12))
def test_parsers_never_raise(text: str, k: int) -> None:
    value = parse_depth(text)
    assert value is None or math.isfinite(value)
    assert len(parse_packed(text, k)) == k


# --- metrics against a direct reimplementation of DepthLM's per-point delta1 ---------------------


def depthlm_delta1(outputs: list[str | None], gts: list[float]) -> float:
    """Per point: 1 if max(p/g, g/p) < 1.25, else 0; an unusable prediction scores 0."""
    scores = []
    for text, gt in zip(outputs, gts):
        try:
            pred = float(text)  # type: ignore[arg-type]
            if not pred > 0:
                raise ValueError
            scores.append(1.0 if max(pred / gt, gt / pred) < 1.25 else 0.0)
        except (TypeError, ValueError):
            scores.append(0.0)
    return sum(scores) / len(scores)


CASES = [
    (["2.0", "3.0", "4.0"], [2.0, 3.0, 4.0]),
    (["1.0", None, "-2", "0", "5.0"], [1.1, 2.0, 2.0, 3.0, 4.5]),
    (["1.24", "1.26", "0.81", "0.79"], [1.0, 1.0, 1.0, 1.0]),
    (["10", "x", "100"], [9.0, 1.0, 50.0]),
]


@pytest.mark.parametrize(("outputs", "gts"), CASES)
def test_delta1_matches_depthlm(outputs: list[str | None], gts: list[float]) -> None:
    metrics = depth_metrics([parse_depth(o) for o in outputs], gts)
    assert metrics["delta1"] == pytest.approx(depthlm_delta1(outputs, gts))
    assert metrics["n"] == len(gts)


def test_metrics_by_hand() -> None:
    preds = [1.0, None, -1.0, 2.6, 2.0]
    gts = [1.0, 2.0, 3.0, 2.0, 4.0]
    m = depth_metrics(preds, gts)
    assert (m["n"], m["parsed"], m["failed"]) == (5, 4, 2)
    # valid: (1, 1) ratio 1; (2.6, 2) ratio 1.3; (2, 4) ratio 2
    assert m["delta1"] == pytest.approx(1 / 5)
    assert m["delta2"] == pytest.approx(2 / 5)  # 1.3 < 1.5625
    assert m["delta3"] == pytest.approx(2 / 5)  # 2 > 1.953
    assert m["abs_rel"] == pytest.approx((0 + 0.3 + 0.5) / 3)
    assert m["sq_rel"] == pytest.approx((0 + 0.36 / 2 + 4 / 4) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 0.36 + 4) / 3))
    assert m["log10"] == pytest.approx((0 + abs(math.log10(1.3)) + abs(math.log10(0.5))) / 3)


def test_metrics_with_nothing_parsed() -> None:
    m = depth_metrics([None, 0.0], [1.0, 2.0])
    assert (m["parsed"], m["failed"], m["delta1"]) == (1, 2, 0.0)
    assert all(math.isnan(m[k]) for k in ("abs_rel", "sq_rel", "rmse", "log10"))


def test_metrics_input_errors() -> None:
    with pytest.raises(ValueError):
        depth_metrics([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        depth_metrics([1.0], [0.0])
    assert depth_metrics([], np.zeros(0))["n"] == 0
