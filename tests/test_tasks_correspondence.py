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
    text_frame,
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


# --- EPE in text units (epe_norm) ---------------------------------------------------------------


def test_epe_norm_by_hand_and_without_a_frame() -> None:
    gt = [(10, 20), (0, 0), (100, 100)]
    preds = [(13, 24), None, (100, 100)]
    m = correspondence_metrics(preds, gt, [(640, 480)] * 3, n_coords=1000)
    assert m["n_coords"] == 1000 and m["epe"] == pytest.approx(2.5)  # pixels unchanged
    one = math.hypot(3 * 1000 / 640, 4 * 1000 / 480)
    assert m["epe_norm"] == pytest.approx(one / 2) and m["epe_norm_median"] == pytest.approx(one / 2)
    # A parsed point without a frame makes the text-unit means unknown, not a mean over fewer points.
    m = correspondence_metrics(preds, gt, [(640, 480), (640, 480), None], n_coords=1000)
    assert math.isnan(m["epe_norm"]) and m["epe"] == pytest.approx(2.5)
    # An unparsed point needs no frame; without n_coords there are no text-unit keys.
    assert correspondence_metrics(preds, gt, [(640, 480), None, (640, 480)], n_coords=1000)["epe_norm"] == pytest.approx(one / 2)
    assert "epe_norm" not in correspondence_metrics(preds, gt) and "n_coords" not in correspondence_metrics(preds, gt)


def test_epe_norm_is_exact_in_the_transformed_image_the_question_used() -> None:
    """The error in the text units of the unified image 2 (size rounded to a multiple of 28, so
    W' != sx * W): from the answered text coordinates and the unrounded target, directly."""
    from vlm3.geometry.camera import Intrinsics
    from vlm3.geometry.unify import FocalTransform, unified_intrinsics

    n = 2000
    K = Intrinsics(500.0, 520.0, 320.0, 240.0, 640, 480)
    U = unified_intrinsics(K, 140.0, 28)
    t = FocalTransform(K, U)
    assert abs(U.width - K.width * t.sx) > 5  # the canvas is cropped: the original size is not the frame
    gt = np.array([321.7, 100.2])
    gt_text = t.forward(gt[None])[0] / [U.width, U.height] * n  # continuous text coordinates of the target
    answer = np.round(gt_text) + [9, 0]  # what a model said
    pred = t.backward(np.array([decode_pixel(*answer, U.width, U.height, n)]))[0]
    frame = text_frame({"record": "r"}, {"r": [[1, 1, 1, 1], [U.width, U.height, t.sx, t.sy]]})
    m = correspondence_metrics([tuple(pred)], [tuple(gt)], [frame], n_coords=n)
    assert m["epe_norm"] == pytest.approx(float(np.hypot(*(answer - gt_text))), rel=1e-9)
    approx_original = float(np.hypot(*((pred - gt) * n / [K.width, K.height])))
    assert abs(approx_original / m["epe_norm"] - 1) > 0.01  # the original-size formula would be off here


def test_text_frame_sources() -> None:
    views = {"r": [[10, 10, 1, 1], [300, 200, 0.5, 0.25]]}
    assert text_frame({"record": "r"}, views) == (600.0, 800.0)
    assert text_frame({"record": "r", "size2": [100, 50], "scale2": [0.5, 0.5]}, views) == (200.0, 100.0)  # the line wins
    assert text_frame({"record": "other", "width": 64, "height": 48}, views) == (64.0, 48.0)  # vlm3 score lines
    assert text_frame({"record": "other"}, views) is None and text_frame({"record": "r"}) is None
