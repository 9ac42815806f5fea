"""Object-level task: predicates and quantities on hand-made boxes, phrasings, parsers, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from vlm3.tasks.object3d import (
    PREDICATES,
    QUANTITIES,
    Region,
    clock_difference,
    clock_hour,
    format_length,
    ground_frame,
    object_messages,
    object_metrics,
    object_qas,
    parse_clock,
    parse_object_answer,
    parse_yes_no,
    predicate_holds,
    qualitative_qa,
    quantitative_qa,
    quantity_value,
)

# A: 1 m wide, 2 m tall, lower, nearer, on the left.  B: a 0.5 m cube up, right and farther.
A = Region((0, 39, 652, 999), [0.0, 0.5, 3.0], [1.0, 2.0, 0.5])
B = Region((6, 380, 228, 562), [1.0, -0.5, 5.0], [0.5, 0.5, 0.5])


@pytest.mark.parametrize(
    ("predicate", "expected"),
    [
        ("above", False),
        ("below", True),
        ("left", True),
        ("right", False),
        ("big", True),
        ("small", False),
        ("tall", True),
        ("short", False),
        ("wide", True),
        ("thin", False),
        ("behind", False),
        ("front", True),
    ],
)
def test_predicates_on_hand_made_boxes(predicate: str, expected: bool) -> None:
    assert predicate_holds(predicate, A, B) is expected
    assert predicate_holds(predicate, B, A) is (not expected)


def test_quantities_on_hand_made_boxes() -> None:
    # B - A = (1, -1, 2): 1 right, 1 up, 2 forward.
    assert quantity_value("direct_distance", A, B) == pytest.approx(math.sqrt(6))
    assert quantity_value("horizontal_distance", A, B) == pytest.approx(math.sqrt(5))
    assert quantity_value("vertical_distance", A, B) == pytest.approx(1.0)
    assert quantity_value("width", A) == 1.0
    assert quantity_value("height", A) == 2.0
    assert quantity_value("direction", A, B) == 1  # atan2(1, 2) = 26.6 degrees
    with pytest.raises(ValueError):
        quantity_value("direct_distance", A)


def test_gravity_decides_up_and_horizontal() -> None:
    # The camera looks 30 degrees down: world down has a forward component in camera coordinates.
    pitch = math.radians(30)
    gravity = (0.0, math.cos(pitch), math.sin(pitch))
    far = Region((0, 0, 10, 10), [0, 0, 4], [1, 1, 1])
    near = Region((0, 0, 10, 10), [0, 0, 2], [1, 1, 1])
    assert predicate_holds("below", far, near, gravity)
    assert not predicate_holds("below", far, near)  # level camera: same height
    assert quantity_value("vertical_distance", far, near, gravity) == pytest.approx(1.0)
    assert quantity_value("horizontal_distance", far, near, gravity) == pytest.approx(math.sqrt(3))
    right, up, forward = ground_frame(gravity)
    assert up == pytest.approx(-np.array(gravity))
    assert right == pytest.approx([1, 0, 0]) and forward @ up == pytest.approx(0)


def test_ground_frame_looking_straight_down() -> None:
    right, up, forward = ground_frame((0, 0, 1))
    assert right == pytest.approx([1, 0, 0]) and up == pytest.approx([0, 0, -1])
    assert np.cross(right, -up) == pytest.approx(forward)


@pytest.mark.parametrize(
    ("vector", "hour"),
    [((0, 0, 1), 12), ((1, 0, 0), 3), ((0, 0, -1), 6), ((-1, 0, 0), 9), ((1, 0, 1.0 / math.sqrt(3)), 2), ((-0.1, 5, 1), 12), ((0, 1, 0), 12)],
)
def test_clock_hours(vector: tuple[float, float, float], hour: int) -> None:
    assert clock_hour(vector) == hour


def test_clock_difference_is_circular() -> None:
    assert clock_difference(12, 1) == 1
    assert clock_difference(11, 1) == 2
    assert clock_difference(3, 9) == 6


def test_box_geometry() -> None:
    R = Rotation.from_rotvec([0, math.radians(30), 0]).as_matrix()  # turned about the vertical
    box = Region((0, 0, 1, 1), [0, 0, 5], [2, 1, 4], R)
    corners = box.corners()
    assert corners.shape == (8, 3)
    assert corners.mean(axis=0) == pytest.approx([0, 0, 5])
    assert np.ptp(corners[:, 1]) == pytest.approx(1.0)  # height stays along gravity
    assert box.volume == 8.0 and box.region == "bounding box region (0, 0, 1, 1)"
    with pytest.raises(ValueError):
        Region((0, 0, 1, 1), [0, 0, 5], [2, 0, 4])
    with pytest.raises(ValueError):
        Region((0, 0, 1, 1), [0, 0, 5], [2, 1, 4], np.ones((3, 3)))


# --- questions and answers ----------------------------------------------------------------------


def test_reference_style_qualitative_answer() -> None:
    qa = qualitative_qa("small", A, B)
    assert qa.question == "Is bounding box region (0, 39, 652, 999) smaller than bounding box region (6, 380, 228, 562)?"
    assert qa.answer == (
        "Incorrect, bounding box region (0, 39, 652, 999) is not smaller than bounding box region (6, 380, 228, 562)."
    )
    assert (qa.kind, qa.category, qa.value) == ("qualitative", "big_small", False)
    assert qualitative_qa("big", A, B).answer.startswith("Correct, bounding box region (0, 39, 652, 999) is bigger")


def test_quantitative_answers() -> None:
    qa = quantitative_qa("direction", A, B)
    assert qa.answer == "Bounding box region (6, 380, 228, 562) is roughly at 1 o'clock from bounding box region (0, 39, 652, 999)."
    assert (qa.kind, qa.value) == ("direction", 1)
    qa = quantitative_qa("height", A)
    assert qa.answer == "Bounding box region (0, 39, 652, 999) is 2.00 meters tall."
    assert (qa.kind, qa.category) == ("quantitative", "height")


def test_several_phrasings_and_all_categories() -> None:
    questions = {qa.question for seed in range(30) for qa in object_qas(A, B, rng=np.random.default_rng(seed))}
    assert len(questions) >= 3 * (len(PREDICATES) + len(QUANTITIES))
    qas = object_qas(A, B)
    assert {qa.category for qa in qas} == {
        "below_above", "left_right", "big_small", "tall_short", "wide_thin", "behind_front", *QUANTITIES,
    }


def test_messages_attach_the_image_once() -> None:
    messages = object_messages(object_qas(A, B)[:3])
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert [sum(p["type"] == "image" for p in m["content"]) for m in messages] == [1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize(("metres", "text"), [(1.234, "1.23 meters"), (0.5, "0.50 meters")])
def test_format_length(metres: float, text: str) -> None:
    assert format_length(metres) == text


coords = st.floats(-10, 10)
sizes = st.floats(0.05, 5)
objects = st.builds(
    lambda c, s, yaw, box: Region(box, c, s, Rotation.from_rotvec([0, yaw, 0]).as_matrix()),
    st.tuples(coords, coords, st.floats(0.5, 20)),
    st.tuples(sizes, sizes, sizes),
    st.floats(-math.pi, math.pi),
    st.tuples(*[st.integers(0, 1999)] * 4),
)


@settings(max_examples=100, deadline=None)
@given(a=objects, b=objects, seed=st.integers(0, 2**32 - 1))
def test_round_trip(a: Region, b: Region, seed: int) -> None:
    for qa in object_qas(a, b, rng=np.random.default_rng(seed)):
        parsed = parse_object_answer(qa.answer, qa.kind)
        if qa.kind == "quantitative":
            assert parsed == pytest.approx(qa.value, abs=0.005 + 1e-9), qa.answer
        else:
            assert parsed == qa.value, qa.answer


# --- parsers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Yes.", True),
        ("no", False),
        ("Correct, it is above.", True),
        ("Incorrect, region (1, 2, 3, 4) is not above region (5, 6, 7, 8).", False),
        ("That is not correct.", False),
        ("True", True),
        ("The statement is false.", False),
        ("<think>yes?</think><answer>No</answer>", False),
        ("Indeed it is.", True),
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_parse_yes_no(text: str, value: bool | None) -> None:
    assert parse_yes_no(text) is value


@pytest.mark.parametrize(
    ("text", "hour"),
    [
        ("3 o'clock", 3),
        ("It is at three o’clock from A.", 3),
        ("B is at 11", 11),
        ("roughly at around 2.", 2),
        ("12 oclock", 12),
        ("10", 10),
        ("B is 3.5 meters away at 4 o'clock", 4),
        ("13 o'clock", None),
        ("at 3.5 meters", None),
        ("region (1, 2, 3, 4)", None),
    ],
)
def test_parse_clock(text: str, hour: int | None) -> None:
    assert parse_clock(text) == hour


def test_parse_quantitative_units() -> None:
    assert parse_object_answer("Region (0, 39, 652, 999) is 150 cm wide.", "quantitative") == pytest.approx(1.5)
    assert parse_object_answer("about 3 feet", "quantitative") == pytest.approx(0.9144)
    assert parse_object_answer("6 inches", "quantitative") == pytest.approx(0.1524)
    assert parse_object_answer("???", "quantitative") is None
    assert parse_object_answer("yes", "unknown kind") is None


@settings(max_examples=300, deadline=None)
@given(text=st.text(), kind=st.sampled_from(["qualitative", "quantitative", "direction"]))
def test_parsers_never_raise(text: str, kind: str) -> None:
    parse_object_answer(text, kind)
    parse_yes_no(text)
    parse_clock(text)


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_by_hand() -> None:
    preds = [True, parse_yes_no("Incorrect, no."), None, 1.0, 2.0, None, 12, 3]
    gts = [True, True, False, 1.2, 1.0, 1.0, 1, 5]
    kinds = ["qualitative"] * 3 + ["quantitative"] * 3 + ["direction"] * 2
    cats = ["below_above", "below_above", "left_right", "direct_distance", "width", "width", "direction", "direction"]
    m = object_metrics(preds, gts, kinds, cats)
    assert (m["n"], m["parsed"]) == (8, 6)
    assert m["qualitative_acc"] == pytest.approx(1 / 3)
    assert m["quantitative_success"] == pytest.approx(1 / 3)
    assert m["quantitative_abs_rel"] == pytest.approx((0.2 / 1.2 + 1.0) / 2)
    assert m["direction_success"] == pytest.approx(1 / 2)
    assert m["categories"]["below_above"] == {"kind": "qualitative", "n": 2, "parsed": 2, "score": 0.5}
    assert m["categories"]["left_right"]["score"] == 0.0
    assert m["categories"]["width"]["abs_rel"] == pytest.approx(1.0)
    assert m["categories"]["direction"]["score"] == 0.5


def test_success_band_is_inclusive() -> None:
    m = object_metrics([0.75, 1.25, 1.2501, 0.7499], [1.0] * 4, ["quantitative"] * 4)
    assert m["quantitative_success"] == pytest.approx(0.5)
    assert math.isnan(m["qualitative_acc"]) and math.isnan(m["direction_success"])


def test_metrics_input_errors() -> None:
    with pytest.raises(ValueError):
        object_metrics([True], [1.0], ["qualitative"])
    with pytest.raises(ValueError):
        object_metrics([1], [13], ["direction"])
    with pytest.raises(ValueError):
        object_metrics([1.0], [1.0], ["size"])
    with pytest.raises(ValueError):
        object_metrics([True, 1.0], [True, 1.0], ["qualitative", "quantitative"], ["same", "same"])
    # A prediction of the wrong type is a failure, not an error.
    assert object_metrics(["yes"], [True], ["qualitative"])["parsed"] == 0


def test_zero_and_sub_centimetre_lengths_score_exact_answers_as_successes() -> None:
    from vlm3.tasks.object3d import QUANT_TOLERANCE_M, format_length, parse_length

    gts = [0.0, 0.004, 0.012, 0.3, 2.5]
    exact = [parse_length(format_length(g)) for g in gts]  # what a perfect model writes: 2 decimals
    m = object_metrics(exact, gts, ["quantitative"] * len(gts))
    assert m["quantitative_success"] == 1.0
    # abs_rel leaves out the 0 m ground truth (no relative error) but keeps the others.
    assert m["quantitative_abs_rel"] == pytest.approx(np.mean([abs(p - g) / g for p, g in zip(exact[1:], gts[1:])]))
    # Beyond the 5 mm rounding tolerance and outside the 0.75-1.25 band: a miss.
    miss = object_metrics([QUANT_TOLERANCE_M + 0.002, 0.02], [0.0, 0.012], ["quantitative"] * 2)
    assert miss["quantitative_success"] == 0.0
    with pytest.raises(ValueError):
        object_metrics([0.0], [-0.1], ["quantitative"])
