"""Answer spans, numbers with units, chat turns."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import message_text
from vlm3.tasks.common import (
    as_float,
    assistant_turn,
    extract_answer,
    find_quantities,
    format_signed,
    parse_length,
    strip_tuples,
    user_turn,
)


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("<think> The point is around 2.35 meters away. </think>\n\n<answer> 2.35 </answer>", "2.35"),
        ("<answer>1</answer> then <answer> 2 </answer>", "2"),
        ("<ANSWER> 4.5", "4.5"),
        ("<think>about 3 m</think> 4 m", "4 m"),
        ("reasoning that starts in the prompt</think>\n7.1", "7.1"),
        ("<think> truncated reasoning 3 m", "truncated reasoning 3 m"),
        ("plain 2.0", "plain 2.0"),
        ("", ""),
    ],
)
def test_extract_answer(text: str, span: str) -> None:
    assert extract_answer(text) == span


@pytest.mark.parametrize("value", [None, 3, 2.5, ["a"], b"bytes"])
def test_extract_answer_non_string(value: object) -> None:
    assert extract_answer(value) == ""


@pytest.mark.parametrize(
    ("text", "metres"),
    [
        ("2.35", 2.35),
        ("2.35 m", 2.35),
        ("2.35m.", 2.35),
        ("about 2 meters away", 2.0),
        ("3 metres", 3.0),
        ("1 meter", 1.0),
        ("235 cm", 2.35),
        ("235 centimeters", 2.35),
        ("2350 mm", 2.35),
        ("1.5 km", 1500.0),
        ("10 ft", 3.048),
        ("10 feet", 3.048),
        ("1 foot", 0.3048),
        ("12 in", 0.3048),
        ("12 inches", 0.3048),
        ("1 inch", 0.0254),
        ("6'", 6 * 0.3048),
        ('12"', 12 * 0.0254),
        ("5'3\"", 5 * 0.3048 + 3 * 0.0254),
        ("5 ft 3 in", 5 * 0.3048 + 3 * 0.0254),
        ("1,234.5 m", 1234.5),
        ("-2.0 m", -2.0),
        ("−1.5 m", -1.5),
        ("+4", 4.0),
        (".5 m", 0.5),
        ("It is 2.35!!!", 2.35),
        ("The point (812, 430) is 2.1 away", 2.1),
        ("2.1 is the depth at (812, 430)", 2.1),
        ("2 in the image, 3.5", 3.5),
        ('The value is "2.35".', 2.35),
        ("about 2.35 m (7.7 feet)", 7.7 * 0.3048),
        ("3e-1 m", 0.3),
    ],
)
def test_parse_length(text: str, metres: float) -> None:
    assert parse_length(text) == pytest.approx(metres)


@pytest.mark.parametrize("text", ["", "no number here", "(1, 2)", "1e999 m", "m cm"])
def test_parse_length_none(text: str) -> None:
    assert parse_length(text) is None


def test_unit_wins_over_later_plain_number() -> None:
    assert parse_length("about 2.35 meters, 10 percent uncertain") == pytest.approx(2.35)


def test_quantities_keep_reading_order_and_units() -> None:
    found = find_quantities("1 m then 20 cm then 3")
    assert [(q.value, q.unit) for q in found] == [(1.0, "m"), (20.0, "cm"), (3.0, None)]
    assert found[1].metres == pytest.approx(0.2)


def test_strip_tuples_keeps_length() -> None:
    text = "box (0, 39, 652, 999) is 2 m"
    assert len(strip_tuples(text)) == len(text)
    assert "652" not in strip_tuples(text)


_UNITS = {"m": 1.0, "meters": 1.0, "cm": 0.01, "mm": 0.001, "km": 1000.0, "ft": 0.3048, "feet": 0.3048, "inches": 0.0254}


@settings(max_examples=300, deadline=None)
@given(value=st.floats(0.001, 1e5), unit=st.sampled_from(sorted(_UNITS)), prose=st.sampled_from(["{}", "about {}.", "It is {} away!"]))
def test_length_round_trip(value: float, unit: str, prose: str) -> None:
    text = prose.format(f"{value:.3f} {unit}")
    assert parse_length(text) == pytest.approx(round(value, 3) * _UNITS[unit], rel=1e-9)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_parsers_never_raise(text: str) -> None:
    extract_answer(text)
    find_quantities(text)
    value = parse_length(text)
    assert value is None or math.isfinite(value)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789.,+-−eE mcftin'\"()<>/answerthk ", max_size=40))
def test_parsers_never_raise_on_number_like_text(text: str) -> None:
    parse_length(text)
    parse_length(extract_answer(text))


def test_as_float() -> None:
    assert as_float("2.5") == 2.5
    assert as_float(3) == 3.0
    for bad in (None, True, float("nan"), float("inf"), "x", [1]):
        assert as_float(bad) is None


def test_format_signed_has_no_negative_zero() -> None:
    assert format_signed(-0.001, 2) == "+0.00"
    assert format_signed(0.5, 2) == "+0.50"
    assert format_signed(-0.69, 2) == "-0.69"


def test_chat_turns_put_images_first() -> None:
    user = user_turn("question", n_images=2)
    assert user == {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "question"}]}
    assert assistant_turn("answer") == {"role": "assistant", "content": [{"type": "text", "text": "answer"}]}
    assert message_text(user) == "question"
