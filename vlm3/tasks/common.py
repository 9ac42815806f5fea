"""Helpers shared by the task modules: answer spans, numbers with length units, chat turns.

Parsing is tolerant and total: every ``parse_*`` function here and in the task modules accepts
any input and returns None (or an empty result) instead of raising.

Answer span: the content of the last ``<answer>…</answer>`` block when there is one (an
unclosed last ``<answer>`` runs to the end of the text); otherwise the text with reasoning
removed: complete ``<think>…</think>`` blocks, everything before a lone ``</think>`` (chat
templates that open the think block in the prompt), and stray tags.

Chat messages follow the Hugging Face format, images first, then text::

    {"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": ...}]}
    {"role": "assistant", "content": [{"type": "text", "text": ...}]}
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# --- answer span --------------------------------------------------------------------------------

_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_STRAY_TAG = re.compile(r"</?(?:think|answer)>", re.IGNORECASE)


def _drop_think_blocks(text: str) -> str:
    # A scan rather than one non-greedy regex: many unclosed "<think>" would make that quadratic.
    parts, pos = [], 0
    while (opening := _THINK_OPEN.search(text, pos)) and (closing := _THINK_CLOSE.search(text, opening.end())):
        parts += [text[pos : opening.start()], " "]
        pos = closing.end()
    parts.append(text[pos:])
    return "".join(parts)


def extract_answer(text: Any) -> str:
    """The answer span of a raw model output (see module doc); "" for non-string input."""
    if not isinstance(text, str):
        return ""
    opens = list(_ANSWER_OPEN.finditer(text))
    if opens:
        body = text[opens[-1].end() :]
        close = _ANSWER_CLOSE.search(body)
        return (body[: close.start()] if close else body).strip()
    text = _drop_think_blocks(text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    return _STRAY_TAG.sub(" ", text).strip()


# --- numbers and lengths ------------------------------------------------------------------------

# A number not glued to a word or another number: "1,234.5", "-0.69", "+2", ".5", "3e-2".
_NUMBER = r"(?<![\w.])[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][+-]?\d+)?|(?<![\w.])[+-]?\.\d+(?:[eE][+-]?\d+)?"

UNIT_TO_METRES: dict[str, float] = {
    "km": 1000.0,
    "m": 1.0,
    "cm": 0.01,
    "mm": 0.001,
    "mi": 1609.344,
    "yd": 0.9144,
    "ft": 0.3048,
    "in": 0.0254,
}

_UNIT_WORDS = {
    "km": r"kilomet(?:er|re)s?|km",
    "cm": r"centimet(?:er|re)s?|cm",
    "mm": r"millimet(?:er|re)s?|mm",
    "m": r"met(?:er|re)s?|m",
    "mi": r"miles?",
    "yd": r"yards?|yds?",
    "ft": r"feet|foot|ft",
    # "in" only when no word follows, so "2 in the image" is not two inches.
    "in": r"inch(?:es)?|in(?!\s+[^\W\d_])",
}
_UNIT_PATTERN = "|".join(f"(?P<u_{key}>{words})" for key, words in _UNIT_WORDS.items())
_QUANTITY = re.compile(
    rf"(?P<num>{_NUMBER})(?:(?P<quote>['\"′″’”])|\s*(?:{_UNIT_PATTERN})(?![^\W\d_]))?",
)
_QUOTE_UNIT = {"'": "ft", "′": "ft", "’": "ft", '"': "in", "″": "in", "”": "in"}
_OPENING_QUOTES = {"'": "'‘", "′": "′", "’": "‘’'", '"': '"“', "″": "″", "”": '“”"'}
# Parenthesised groups of two or more numbers are coordinates or boxes, never the answer value.
_TUPLE = re.compile(r"[(\[]\s*[+-]?[\d.]+(?:\s*,\s*[+-]?[\d.]+)+\s*[)\]]")
_FEET_INCH_GAP = re.compile(r"\s*(?:,|and)?\s*$")


@dataclass(frozen=True)
class Quantity:
    """A number found in text, with its length unit key (see ``UNIT_TO_METRES``) or None."""

    value: float
    unit: str | None
    start: int
    end: int

    @property
    def metres(self) -> float:
        """The value in metres (a unitless number is taken as metres)."""
        return self.value * UNIT_TO_METRES.get(self.unit or "m", 1.0)


def to_number(token: str) -> float | None:
    """A number token ("1,234.5", "-0.69", "3e-2") -> float, or None."""
    try:
        return float(token.replace(",", ""))
    except (ValueError, OverflowError):
        return None


def find_quantities(text: Any) -> list[Quantity]:
    """All numbers in ``text`` in reading order, each with its length unit if one follows."""
    if not isinstance(text, str):
        return []
    text = normalise_text(text)
    found = []
    for match in _QUANTITY.finditer(text):
        value = to_number(match.group("num"))
        if value is None:
            continue
        unit = next((key for key in _UNIT_WORDS if match.group(f"u_{key}")), None)
        quote = match.group("quote")
        if quote is not None:
            start = match.start("num")
            # A quoted number ("2.35") is not in inches or feet.
            if start > 0 and text[start - 1] in _OPENING_QUOTES[quote]:
                found.append(Quantity(value, None, match.start(), match.end("num")))
                continue
            unit = _QUOTE_UNIT[quote]
        found.append(Quantity(value, unit, match.start(), match.end()))
    return found


def normalise_text(text: str) -> str:
    """Unicode minus and non-breaking spaces to ASCII so numbers parse."""
    return text.replace("−", "-").replace("\u00a0", " ").replace("\u202f", " ")


def strip_tuples(text: str) -> str:
    """``text`` with parenthesised coordinate tuples such as ``(812, 430)`` blanked out."""
    return _TUPLE.sub(lambda m: " " * len(m.group(0)), text)


def _merge_feet_inches(text: str, quantities: list[Quantity]) -> list[Quantity]:
    """Join "5 ft 3 in" / 5'3\" into one length in metres (unit "m")."""
    merged: list[Quantity] = []
    i = 0
    while i < len(quantities):
        q = quantities[i]
        nxt = quantities[i + 1] if i + 1 < len(quantities) else None
        if q.unit == "ft" and nxt is not None and nxt.unit == "in" and _FEET_INCH_GAP.match(text[q.end : nxt.start]):
            merged.append(Quantity(q.metres + nxt.metres, "m", q.start, nxt.end))
            i += 2
            continue
        merged.append(q)
        i += 1
    return merged


def parse_length(text: Any) -> float | None:
    """A length in metres from free text, or None.

    The last number followed by a length unit wins (converted to metres); without any unit,
    the last number outside coordinate tuples, read as metres. The sign is kept: callers decide
    whether a non-positive value is valid. Non-finite values (``1e999``) give None.
    """
    if not isinstance(text, str):
        return None
    text = strip_tuples(normalise_text(text))
    quantities = _merge_feet_inches(text, find_quantities(text))
    with_unit = [q for q in quantities if q.unit is not None]
    chosen = with_unit[-1] if with_unit else (quantities[-1] if quantities else None)
    if chosen is None:
        return None
    value = chosen.metres
    return value if math.isfinite(value) else None


# --- values and metrics helpers -----------------------------------------------------------------


def as_float(value: Any) -> float | None:
    """A finite float from a number-like value (bools excluded), else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def mean_or_nan(values: Sequence[float] | np.ndarray) -> float:
    """Mean of ``values`` as a float; NaN for an empty input."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()) if arr.size else float("nan")


def share(mask: Sequence[bool] | np.ndarray, n: int) -> float:
    """Count of True in ``mask`` divided by ``n``; NaN when ``n`` is 0."""
    return float(np.count_nonzero(mask)) / n if n else float("nan")


def format_signed(value: float, decimals: int) -> str:
    """``+1.25`` / ``-0.50`` with a fixed number of decimals; zero is always ``+0.00``."""
    rounded = round(float(value), decimals)
    if rounded == 0:
        rounded = 0.0
    return f"{rounded:+.{decimals}f}"


# --- chat turns ---------------------------------------------------------------------------------


def user_turn(text: str, n_images: int = 0) -> dict:
    """A user message: ``n_images`` image placeholders first, then the text."""
    content: list[dict] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def assistant_turn(text: str) -> dict:
    """An assistant message holding one text part."""
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}



# --- text coordinates of a transformed view -----------------------------------------------------


def view_text_coords(view: Any, index: int, pixels: np.ndarray, settings: Any) -> np.ndarray:
    """Normalised text coordinates (N, 2) floats, unrounded, of pixels of view ``index`` of a
    transformed record (``vlm3.data.unify.UnifiedRecord``), in [0, ``settings.n_coords``).

    ``settings.pixel_convention``: ``"center"`` (vlm3, ``vlm3.textref``): x / W * N with x the
    continuous corner-origin position; ``"index"`` (the released checkpoints): the original integer
    pixel index scaled with the image, (x - s_x / 2) / W * N, so an original pixel centre i + 0.5
    gives i * s_x / W * N.
    """
    K = view.record.views[index].K
    xy = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    if settings.pixel_convention == "index":
        t = view.transforms[index]
        xy = xy - np.array([0.5 * t.sx, 0.5 * t.sy])
    return np.stack([xy[:, 0] / K.width, xy[:, 1] / K.height], axis=1) * settings.n_coords


def encode_view_pixels(view: Any, index: int, pixels: np.ndarray, settings: Any) -> np.ndarray:
    """Integer text coordinates (N, 2) of transformed-view pixels: :func:`view_text_coords`
    rounded half-to-even (Python's ``round``, as the released code does) and kept in [0, N).

    A pixel in the sub-pixel sliver beyond the canvas's right / bottom edge that a rounded size
    cuts off (``vlm3.data.unify.not_asked_reasons``) gets N - 1, the last column / row."""
    from vlm3.textref import encode_pixels

    if settings.pixel_convention == "center":
        K = view.record.views[index].K
        return encode_pixels(pixels, K.width, K.height, settings.n_coords, clamp=True)
    coords = np.round(view_text_coords(view, index, pixels, settings))
    return np.clip(coords, 0, settings.n_coords - 1).astype(np.int64)


def original_pixel(view: Any, index: int, coords: Sequence[float], settings: Any) -> list[float]:
    """The ORIGINAL-image pixel (x, y) that text coordinates ``coords`` of view ``index`` name
    (the inverse of :func:`view_text_coords`; no range check: a point off the image is a
    prediction with a large error, not an unreadable one)."""
    K = view.record.views[index].K
    n = settings.n_coords
    xy = np.array([[float(coords[0]) / n * K.width, float(coords[1]) / n * K.height]])
    if settings.pixel_convention == "index":
        t = view.transforms[index]
        xy = xy + np.array([0.5 * t.sx, 0.5 * t.sy])
    out = view.transforms[index].backward(xy)[0]
    return [float(out[0]), float(out[1])]
