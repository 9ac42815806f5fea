"""Text pixel references: encoding, decoding, boxes, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm3.textref import (
    decode_box,
    decode_pixel,
    decode_pixel_index,
    encode_box,
    encode_pixel,
    encode_pixels,
    format_box,
    format_point,
    parse_point,
)


@settings(max_examples=500, deadline=None)
@given(w=st.integers(1, 5000), h=st.integers(1, 5000), n=st.sampled_from([1000, 2000]), fx=st.floats(0, 1), fy=st.floats(0, 1))
def test_round_trip_within_half_unit(w: int, h: int, n: int, fx: float, fy: float) -> None:
    x, y = fx * w, fy * h
    nx, ny = encode_pixel(x, y, w, h, n)
    assert 0 <= nx < n and 0 <= ny < n
    x2, y2 = decode_pixel(nx, ny, w, h, n)
    # Half a normalised unit is w / (2n) pixels; the clamp at n - 1 can add up to one more unit.
    tol_x = w / (2 * n) + (w / n if nx == n - 1 else 0) + 1e-9
    tol_y = h / (2 * n) + (h / n if ny == n - 1 else 0) + 1e-9
    assert abs(x2 - x) <= tol_x and abs(y2 - y) <= tol_y


def test_paper_formula() -> None:
    # nx = round(x / W * N) on the continuous coordinate.
    assert encode_pixel(320.0, 240.0, 640, 480) == (1000, 1000)
    assert encode_pixel(519.5, 129.5, 640, 480) == (round(519.5 / 640 * 2000), round(129.5 / 480 * 2000))
    assert encode_pixel(0.0, 0.0, 640, 480, 1000) == (0, 0)
    assert encode_pixel(640.0, 480.0, 640, 480) == (1999, 1999)  # clamped, never N


def test_vectorised_matches_scalar() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1, (100, 2)) * [333, 251]
    out = encode_pixels(xy, 333, 251)
    assert [tuple(r) for r in out.tolist()] == [encode_pixel(x, y, 333, 251) for x, y in xy]


def test_errors_and_clamp() -> None:
    with pytest.raises(ValueError, match="outside the 640x480 image"):
        encode_pixel(700, 10, 640, 480)
    assert encode_pixel(700, -3, 640, 480, clamp=True) == (1999, 0)
    with pytest.raises(ValueError, match=r"outside \[0, 2000\)"):
        decode_pixel(2000, 5, 640, 480)
    with pytest.raises(ValueError, match="outside"):
        decode_pixel(-1, 5, 640, 480)
    assert decode_pixel(2500, -5, 640, 480, clamp=True) == pytest.approx((1999 / 2000 * 640, 0.0))
    with pytest.raises(ValueError, match="N must be"):
        encode_pixel(1, 1, 10, 10, n=1)
    with pytest.raises(ValueError, match="image size"):
        encode_pixel(1, 1, 0, 10)


def test_decode_pixel_index() -> None:
    # The centre of pixel (10, 20) encodes and decodes back into that pixel for N >> W.
    for w, h in [(64, 48), (640, 480), (1000, 1000)]:
        for i, j in [(0, 0), (10, 20), (w - 1, h - 1)]:
            nx, ny = encode_pixel(i + 0.5, j + 0.5, w, h)
            assert decode_pixel_index(nx, ny, w, h) == (i, j)


def test_boxes() -> None:
    box = encode_box((0.0, 19.5, 326.0, 479.5), 640, 480)
    assert format_box(box) == "(0, 81, 1019, 1998)"
    x0, y0, x1, y1 = decode_box(box, 640, 480)
    assert x0 == 0 and x1 == pytest.approx(326.08) and y1 == pytest.approx(479.52)
    with pytest.raises(ValueError, match="max < min"):
        encode_box((10, 10, 5, 20), 640, 480)
    assert format_point(12, 1999) == "(12, 1999)"


@given(st.text())
def test_parse_point_never_raises(text: str) -> None:
    out = parse_point(text)
    assert out is None or len(out) == 2


def test_parse_point() -> None:
    assert parse_point("The corresponding pixel is (1234, 56).") == (1234.0, 56.0)
    assert parse_point("from (1, 2) to ( 300 , -4 )") == (300.0, -4.0)
    assert parse_point("no point") is None
    assert parse_point(None) is None  # type: ignore[arg-type]
