"""Object-level 3D questions (SpatialRGPT-Bench style), with regions named by 2D boxes.

An object is a 3D box in the camera frame (X right, Y down, Z forward, metres): centre, size
(width, height, length) along the box's own axes (the columns of ``R_cam_from_box``, the height
axis along gravity), plus its 2D box as normalised text coordinates ``(xMin, yMin, xMax, yMax)``
(``vlm3.textref``) and an optional name. Questions call it "bounding box region (…)".

Geometry is measured in a gravity-aligned frame built from the gravity direction in camera
coordinates (default (0, 1, 0): camera Y is down): up = -gravity, forward = camera Z made
horizontal, right = down x forward (camera X when the camera is level).

Qualitative predicates "A <predicate> B" compare, strictly:
    above/below: height of the centres along up;  left/right: centres along right;
    behind/front: centres along forward (behind = farther from the camera);
    big/small: volumes;  tall/short: heights;  wide/thin: widths.
Quantitative values: direct distance between centres, horizontal distance (perpendicular to
gravity), vertical distance (along gravity), width and height of A (metres), and the direction
of B from A as a clock hour in the ground plane (12 = camera forward, 3 = right, 1..12).

Questions asked as written (``Record.qa``, e.g. SpatialRGPT-Bench, adapter ``spatialrgpt-bench``):
the record's own question and reference answer, ``{rK}`` replaced by region K's box text. Kinds:
qualitative (yes/no), quantitative (metres), direction (clock hour) and choice (which region).
Reading an answer (:func:`parse_region_answer`; the bench's reference answers are read the same
way at prepare time, :func:`region_qa_gt`):

- yes/no: the first verdict word ("Yes", "Indeed", "Correct", "That is True" / "No", "Incorrect",
  "That is False"); without one, the relation the answer states about the question's subject
  (:func:`parse_relation`: "In fact, A is to the right of B." answers "Is A to the left of B?"
  with no; a negation or B as the sentence's subject flips it);
- lengths (:func:`parse_distance`): the last number with a unit (m, cm, mm, km, inches, feet,
  yards, 5'3"), spelled-out numbers ("five feet", "half a meter", "one and a half meters",
  "a foot"), and a range ("between 1 and 2 meters", "1-2 m", "3 to 4 feet") counts as its
  midpoint; "no vertical distance / gap" without any number is 0 m;
- clock hours: "3 o'clock", "at 3", "three o'clock";
- choice: the first region the answer names, by its box text (equal, else IoU >= 0.5 with one
  region's box), "Region [K]" or "{rK}".

Success rules: yes/no and choices exact; lengths within 0.75..1.25 x gt, or within
:data:`QUANT_TOLERANCE_M` (5 mm) of it, so 0 m and sub-centimetre ground truths can be met
(SpatialRGPT's scorer has only the ratio band: a 0 m gt then needs exactly 0); directions within
1 hour, circularly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlm3 import plotting
from vlm3.geometry.pose import is_rotation
from vlm3.profiles import ZERO_SHOT_SETTINGS, ZERO_SHOT_SYSTEM, TaskProfile
from vlm3.settings import DEFAULT_FOCAL_PX
from vlm3.tasks.base import Query, ScoreLine, Task, is_numeric, register, short
from vlm3.tasks.common import (
    UNIT_TO_METRES,
    as_float,
    assistant_turn,
    extract_answer,
    find_quantities,
    mean_or_nan,
    normalise_text,
    parse_length,
    share,
    strip_tuples,
    user_turn,
)
from vlm3.data.records import fill_regions, region_placeholders
from vlm3.textref import encode_box, format_box

DEFAULT_GRAVITY: tuple[float, float, float] = (0.0, 1.0, 0.0)
KINDS: tuple[str, ...] = ("qualitative", "quantitative", "direction", "choice")
"""Question kinds. ``choice`` ("Which is more to the left, A or B?") comes only from questions asked
as written (``Record.qa``); its ground truth is the index of the region that is the answer."""

# predicate -> (category, relation phrase)
PREDICATES: dict[str, tuple[str, str]] = {
    "above": ("below_above", "above"),
    "below": ("below_above", "below"),
    "left": ("left_right", "to the left of"),
    "right": ("left_right", "to the right of"),
    "big": ("big_small", "bigger than"),
    "small": ("big_small", "smaller than"),
    "tall": ("tall_short", "taller than"),
    "short": ("tall_short", "shorter than"),
    "wide": ("wide_thin", "wider than"),
    "thin": ("wide_thin", "thinner than"),
    "behind": ("behind_front", "behind"),
    "front": ("behind_front", "in front of"),
}

QUALITATIVE_QUESTIONS: tuple[str, ...] = (
    "Is {a} {rel} {b}?",
    "Can you confirm if {a} is {rel} {b}?",
    "Would you say that {a} is {rel} {b}?",
    "Is it true that {a} is {rel} {b}?",
)
TRUE_ANSWERS: tuple[str, ...] = (
    "Correct, {a} is {rel} {b}.",
    "Yes, {a} is {rel} {b}.",
    "That is true, {a} is {rel} {b}.",
)
FALSE_ANSWERS: tuple[str, ...] = (
    "Incorrect, {a} is not {rel} {b}.",
    "No, {a} is not {rel} {b}.",
    "That is false, {a} is not {rel} {b}.",
)

# quantity -> (question templates, answer templates); {x} is the formatted value.
QUANTITIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "direct_distance": (
        ("What is the direct distance between {a} and {b}?", "How far apart are {a} and {b}?", "How far is {a} from {b}?"),
        ("The direct distance between {a} and {b} is {x}.", "{a} and {b} are {x} apart.", "{a} is {x} away from {b}."),
    ),
    "horizontal_distance": (
        (
            "What is the horizontal distance between {a} and {b}?",
            "How far apart are {a} and {b} horizontally?",
            "Measure the horizontal distance from {a} to {b}.",
        ),
        (
            "The horizontal distance between {a} and {b} is {x}.",
            "{a} and {b} are {x} apart horizontally.",
            "Horizontally, {a} is {x} from {b}.",
        ),
    ),
    "vertical_distance": (
        (
            "What is the vertical distance between {a} and {b}?",
            "How far apart are {a} and {b} vertically?",
            "Measure the vertical distance from {a} to {b}.",
        ),
        (
            "The vertical distance between {a} and {b} is {x}.",
            "{a} and {b} are {x} apart vertically.",
            "Vertically, {a} is {x} from {b}.",
        ),
    ),
    "width": (
        ("How wide is {a}?", "What is the width of {a}?", "Measure the width of {a}."),
        ("{a} is {x} wide.", "The width of {a} is {x}.", "{a} measures {x} across."),
    ),
    "height": (
        ("How tall is {a}?", "What is the height of {a}?", "Measure the height of {a}."),
        ("{a} is {x} tall.", "The height of {a} is {x}.", "{a} stands {x} tall."),
    ),
    "direction": (
        (
            "If you are at {a}, where will you find {b}?",
            "In which clock direction is {b} as seen from {a}?",
            "Standing at {a}, in which direction is {b}?",
        ),
        (
            "{b} is roughly at {x} o'clock from {a}.",
            "{b} is at {x} o'clock as seen from {a}.",
            "From {a}, {b} is around {x} o'clock.",
        ),
    ),
}
SINGLE_OBJECT_QUANTITIES: frozenset[str] = frozenset({"width", "height"})


# --- objects and the ground frame ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Region:
    """A labelled object: 2D text box, 3D box in the camera frame (metres), optional name."""

    box2d: tuple[int, int, int, int]
    center: np.ndarray
    size: np.ndarray  # (width, height, length) along the box axes
    R_cam_from_box: np.ndarray = field(default_factory=lambda: np.eye(3))
    name: str = ""

    def __post_init__(self) -> None:
        center = np.asarray(self.center, dtype=np.float64).reshape(-1)
        size = np.asarray(self.size, dtype=np.float64).reshape(-1)
        R = np.asarray(self.R_cam_from_box, dtype=np.float64)
        if center.size != 3 or not np.all(np.isfinite(center)):
            raise ValueError(f"object centre must be 3 finite numbers, got {self.center!r}")
        if size.size != 3 or not np.all(np.isfinite(size)) or np.any(size <= 0):
            raise ValueError(f"object size (width, height, length) must be 3 positive numbers, got {self.size!r}")
        if not is_rotation(R):
            raise ValueError("R_cam_from_box must be a 3x3 rotation matrix")
        if len(self.box2d) != 4:
            raise ValueError(f"box2d must be (xMin, yMin, xMax, yMax), got {self.box2d!r}")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "R_cam_from_box", R)
        object.__setattr__(self, "box2d", tuple(int(v) for v in self.box2d))

    @property
    def width(self) -> float:
        return float(self.size[0])

    @property
    def height(self) -> float:
        return float(self.size[1])

    @property
    def volume(self) -> float:
        return float(np.prod(self.size))

    @property
    def region(self) -> str:
        """How questions name the object: ``bounding box region (xMin, yMin, xMax, yMax)``."""
        return f"bounding box region {format_box(self.box2d)}"

    def corners(self) -> np.ndarray:
        """The 8 box corners in the camera frame, (8, 3)."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        return self.center + (signs * self.size / 2) @ self.R_cam_from_box.T


def ground_frame(gravity: Sequence[float] = DEFAULT_GRAVITY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, up, forward) unit axes in camera coordinates for a gravity direction (down)."""
    down = np.asarray(gravity, dtype=np.float64).reshape(3)
    norm = np.linalg.norm(down)
    if not (np.isfinite(norm) and norm > 0):
        raise ValueError(f"gravity must be a non-zero finite 3-vector, got {gravity!r}")
    down = down / norm
    z = np.array([0.0, 0.0, 1.0])
    forward = z - (z @ down) * down
    if np.linalg.norm(forward) > 1e-6:
        forward /= np.linalg.norm(forward)
        right = np.cross(down, forward)
    else:  # camera looking straight along gravity: take right from camera X instead
        x = np.array([1.0, 0.0, 0.0])
        right = x - (x @ down) * down
        right /= np.linalg.norm(right)
        forward = np.cross(right, down)
    return right, -down, forward


def _coords(point: np.ndarray, gravity: Sequence[float]) -> np.ndarray:
    """(right, up, forward) coordinates of a camera-frame point or vector."""
    right, up, forward = ground_frame(gravity)
    return np.array([right @ point, up @ point, forward @ point])


def predicate_holds(predicate: str, a: Region, b: Region, gravity: Sequence[float] = DEFAULT_GRAVITY) -> bool:
    """Truth of "A <predicate> B" (see module doc for the definitions)."""
    if predicate not in PREDICATES:
        raise ValueError(f"predicate {predicate!r} must be one of {tuple(PREDICATES)}")
    ca, cb = _coords(a.center, gravity), _coords(b.center, gravity)
    comparisons = {
        "above": ca[1] > cb[1],
        "below": ca[1] < cb[1],
        "left": ca[0] < cb[0],
        "right": ca[0] > cb[0],
        "behind": ca[2] > cb[2],
        "front": ca[2] < cb[2],
        "big": a.volume > b.volume,
        "small": a.volume < b.volume,
        "tall": a.height > b.height,
        "short": a.height < b.height,
        "wide": a.width > b.width,
        "thin": a.width < b.width,
    }
    return bool(comparisons[predicate])


def clock_hour(vector: Sequence[float], gravity: Sequence[float] = DEFAULT_GRAVITY) -> int:
    """Clock hour 1..12 of a camera-frame vector on the ground plane (12 = forward, 3 = right).

    A vertical vector (no horizontal part) is 12.
    """
    right, _, forward = _coords(np.asarray(vector, dtype=np.float64).reshape(3), gravity)
    if math.hypot(right, forward) < 1e-12:
        return 12
    hour = round(math.degrees(math.atan2(right, forward)) / 30.0) % 12
    return 12 if hour == 0 else int(hour)


def quantity_value(
    quantity: str, a: Region, b: Region | None = None, gravity: Sequence[float] = DEFAULT_GRAVITY
) -> float | int:
    """Labelled value of a quantitative question: metres, or a clock hour for ``"direction"``."""
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity {quantity!r} must be one of {tuple(QUANTITIES)}")
    if quantity == "width":
        return a.width
    if quantity == "height":
        return a.height
    if b is None:
        raise ValueError(f"quantity {quantity!r} needs two objects")
    delta = b.center - a.center
    if quantity == "direction":
        return clock_hour(delta, gravity)
    right, up, forward = _coords(delta, gravity)
    if quantity == "direct_distance":
        return float(np.linalg.norm(delta))
    if quantity == "horizontal_distance":
        return float(math.hypot(right, forward))
    return float(abs(up))


# --- questions and answers ----------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectQA:
    """One question/answer pair with its labelled value.

    ``value`` is a bool (qualitative), metres (quantitative) or a clock hour (direction).
    """

    question: str
    answer: str
    kind: str
    category: str
    value: bool | float | int


def _pick(options: Sequence[str], rng: np.random.Generator | None) -> str:
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _sentence(template: str, **parts: str) -> str:
    text = template.format(**parts)
    return text[:1].upper() + text[1:]


def format_length(metres: float, rng: np.random.Generator | None = None) -> str:
    """A length for an answer: "1.25 meters" by default; with ``rng`` also feet, and below 1 m
    centimeters or inches, as people write them."""
    units = [("meters", 1.0, 2), ("feet", 0.3048, 2)]
    if metres < 1.0:
        units += [("centimeters", 0.01, 1), ("inches", 0.0254, 1)]
    name, scale, decimals = units[0] if rng is None else units[int(rng.integers(len(units)))]
    return f"{metres / scale:.{decimals}f} {name}"


def qualitative_qa(
    predicate: str,
    a: Region,
    b: Region,
    *,
    gravity: Sequence[float] = DEFAULT_GRAVITY,
    rng: np.random.Generator | None = None,
) -> ObjectQA:
    """"Is A <predicate> B?" with a Correct/Incorrect style answer; phrasing drawn by ``rng``."""
    holds = predicate_holds(predicate, a, b, gravity)
    category, rel = PREDICATES[predicate]
    parts = {"a": a.region, "b": b.region, "rel": rel}
    question = _sentence(_pick(QUALITATIVE_QUESTIONS, rng), **parts)
    answer = _sentence(_pick(TRUE_ANSWERS if holds else FALSE_ANSWERS, rng), **parts)
    return ObjectQA(question, answer, "qualitative", category, holds)


def quantitative_qa(
    quantity: str,
    a: Region,
    b: Region | None = None,
    *,
    gravity: Sequence[float] = DEFAULT_GRAVITY,
    rng: np.random.Generator | None = None,
) -> ObjectQA:
    """A distance / size / clock-direction question about A (and B) with its answer."""
    value = quantity_value(quantity, a, b, gravity)
    questions, answers = QUANTITIES[quantity]
    x = str(value) if quantity == "direction" else format_length(float(value), rng)
    parts = {"a": a.region, "b": b.region if b is not None else "", "x": x}
    kind = "direction" if quantity == "direction" else "quantitative"
    return ObjectQA(_sentence(_pick(questions, rng), **parts), _sentence(_pick(answers, rng), **parts), kind, quantity, value)


def object_qas(
    a: Region,
    b: Region,
    *,
    gravity: Sequence[float] = DEFAULT_GRAVITY,
    rng: np.random.Generator | None = None,
    predicates: Sequence[str] = tuple(PREDICATES),
    quantities: Sequence[str] = tuple(QUANTITIES),
) -> list[ObjectQA]:
    """All requested qualitative and quantitative pairs for objects A and B (size ones about A)."""
    qas = [qualitative_qa(p, a, b, gravity=gravity, rng=rng) for p in predicates]
    qas += [quantitative_qa(q, a, None if q in SINGLE_OBJECT_QUANTITIES else b, gravity=gravity, rng=rng) for q in quantities]
    return qas


ZERO_SHOT_SUFFIX = (
    " Bounding box regions are (xMin, yMin, xMax, yMax), normalised to [0, {n}) across the image width and height "
    "with (0, 0) at the top-left corner. {how}"
)
ZERO_SHOT_ANSWER: dict[str, str] = {
    "qualitative": "Start your answer with yes or no.",
    "quantitative": "Give the length in meters.",
    "direction": "Give the direction as a clock hour (12 = straight ahead, 3 = to the right).",
    "choice": "Answer with the bounding box region you choose, written as in the question.",
}


def profile_qa(qa: ObjectQA, settings: Any) -> ObjectQA:
    """``qa`` in the wording of ``settings.profile``: vlm3's and the released checkpoint's are the
    same SpatialRGPT-style sentences; zero-shot adds the box format and the answer form."""
    if settings.profile != "zero-shot":
        return qa
    suffix = ZERO_SHOT_SUFFIX.format(n=settings.n_coords, how=ZERO_SHOT_ANSWER[qa.kind])
    return ObjectQA(qa.question + suffix, qa.answer, qa.kind, qa.category, qa.value)


def object_messages(qas: Sequence[ObjectQA]) -> list[dict]:
    """Chat messages (HF format): one turn per pair, the image in the first user turn only."""
    messages = []
    for i, qa in enumerate(qas):
        messages.append(user_turn(qa.question, n_images=1 if i == 0 else 0))
        messages.append(assistant_turn(qa.answer))
    return messages


# --- parsing ------------------------------------------------------------------------------------

_VERDICT = re.compile(
    r"\b(?:(?P<no>not\s+(?:correct|true|right)|incorrect|false|no|nope|wrong)"
    r"|(?P<yes>yes|yep|yeah|correct|true|indeed))\b",
    re.IGNORECASE,
)
_HOUR_WORDS = {
    w: i
    for i, w in enumerate(
        ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"), start=1
    )
}
_HOUR = r"(\d{1,2}|" + "|".join(_HOUR_WORDS) + r")"
_CLOCK = re.compile(rf"(?<![\w.]){_HOUR}\s*o\s*['’`]?\s*clock", re.IGNORECASE)
_AT_HOUR = re.compile(rf"\bat\s+(?:around\s+|about\s+)?{_HOUR}(?![\w.,]\d|\w)", re.IGNORECASE)
_BARE_HOUR = re.compile(rf"^\W*{_HOUR}\W*$", re.IGNORECASE)


def parse_yes_no(text: Any) -> bool | None:
    """True/False from the first verdict word (correct/incorrect, yes/no, true/false), or None."""
    try:
        match = _VERDICT.search(extract_answer(text))
        if match is None:
            return None
        return match.group("yes") is not None
    except Exception:  # a parser must never take an evaluation down
        return None


def _hour(token: str) -> int | None:
    value = _HOUR_WORDS.get(token.lower()) or (int(token) if token.isdigit() else None)
    return value if value is not None and 1 <= value <= 12 else None


def parse_clock(text: Any) -> int | None:
    """Clock hour 1..12 from "3 o'clock", "at 11", "three o'clock" or a bare "3", or None."""
    try:
        span = normalise_text(extract_answer(text))
        for pattern in (_CLOCK, _AT_HOUR, _BARE_HOUR):
            matches = pattern.findall(span)
            if matches:
                return _hour(matches[-1])
        return None
    except Exception:  # a parser must never take an evaluation down
        return None


def parse_object_answer(text: Any, kind: str) -> bool | float | int | None:
    """Parse an answer of a ``kind`` in :data:`KINDS`: bool, metres (:func:`parse_distance`), clock hour,
    or region index ("Region [1]" / "{r1}"; with boxes use :func:`parse_region_answer`); None on failure."""
    if kind == "qualitative":
        return parse_yes_no(text)
    if kind == "quantitative":
        return parse_distance(text)
    if kind == "direction":
        return parse_clock(text)
    if kind == "choice":
        return parse_choice(text)
    return None


# --- questions asked as written (Record.qa): regions, relations, choices, spelled-out lengths ----

# SpatialRGPT-Bench categories (qa_info.category) -> the group its official scorer reports them in
# (scripts/srgpt/eval/evaluate_spatial_with_gpt4.py: "Qual_left/right_acc" pools left/right predicates
# and choices, "Quan_width_acc", ...), named like vlm3's own object categories ("left_right").
SRGPT_GROUPS: dict[str, str] = {
    **{f"{p}_{form}": category for p, (category, _) in PREDICATES.items() for form in ("predicate", "choice")},
    "distance_data": "direct_distance",
    "horizontal_distance_data": "horizontal_distance",
    "vertical_distance_data": "vertical_distance",
    "width_data": "width",
    "height_data": "height",
    "direction": "direction",
}

OPPOSITE: dict[str, str] = {
    "left": "right", "right": "left", "above": "below", "below": "above", "big": "small", "small": "big",
    "tall": "short", "short": "tall", "wide": "thin", "thin": "wide", "behind": "front", "front": "behind",
}

# Phrases that state "A <predicate> B" in an answer without a verdict word ("In fact, A is to the
# right of B.", "Actually, A is below B.", "A might be narrower than B"). The opposite predicate's
# phrases state the negation. Matched case-insensitively on word boundaries, longest first.
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to the left", "on the left", "left"),
    "right": ("to the right", "on the right", "right"),
    "above": ("above", "over", "higher", "on top of", "atop"),
    "below": ("below", "under", "underneath", "beneath", "lower"),
    "big": ("bigger", "larger", "greater size", "larger size", "more space"),
    "small": ("smaller", "smaller size", "lesser size", "less space"),
    "tall": ("taller", "greater height", "more height"),
    "short": ("shorter", "lesser height", "less height", "not as tall"),
    "wide": ("wider", "broader", "greater width", "larger width", "more width"),
    "thin": ("thinner", "narrower", "lesser width", "less width", "not as wide"),
    "behind": ("behind", "further", "farther", "more distant", "at the back", "more backward"),
    "front": ("in front", "closer", "nearer", "less distant", "more forward", "before"),
}
_NEGATIONS = frozenset({"not", "never", "isn't", "isnt", "aren't", "doesn't", "don't", "cannot", "can't"})


def _relation_pattern(predicate: str) -> re.Pattern[str]:
    phrases = [(p, True) for p in RELATION_PHRASES[predicate]] + [(p, False) for p in RELATION_PHRASES[OPPOSITE[predicate]]]
    phrases.sort(key=lambda item: -len(item[0]))
    parts = []
    for i, (text, holds) in enumerate(phrases):
        words = r"\s+".join(re.escape(w) for w in text.split())
        parts.append(f"(?P<{'p' if holds else 'o'}{i}>{words})")
    alternation = "|".join(parts)
    return re.compile(rf"\b(?:{alternation})\b", re.IGNORECASE)


_RELATION_RE: dict[str, re.Pattern[str]] = {p: _relation_pattern(p) for p in PREDICATES}

# A region named in text: the task's box text "(12, 40, 300, 511)", the bench's "Region [1]", or a
# "{r1}" placeholder of an unfilled template.
_REGION_MENTION = re.compile(
    r"\{r(?P<ph>\d+)\}|\bregion\s*\[\s*(?P<idx>\d+)\s*\]"
    r"|[(\[]\s*(?P<x0>[+-]?\d+(?:\.\d+)?)\s*,\s*(?P<y0>[+-]?\d+(?:\.\d+)?)\s*,"
    r"\s*(?P<x1>[+-]?\d+(?:\.\d+)?)\s*,\s*(?P<y1>[+-]?\d+(?:\.\d+)?)\s*[)\]]",
    re.IGNORECASE,
)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_region(box: Sequence[float], boxes: Sequence[Sequence[float]]) -> int | None:
    """Index of the region whose text box is ``box``: the one equal to it (None if several are),
    else the one it overlaps most with IoU >= 0.5, else None."""
    equal = [i for i, b in enumerate(boxes) if tuple(float(v) for v in b) == tuple(float(v) for v in box)]
    if equal:
        return equal[0] if len(equal) == 1 else None
    scores = [_iou(box, b) for b in boxes]
    best = int(np.argmax(scores)) if scores else -1
    return best if best >= 0 and scores[best] >= 0.5 else None


def region_mentions(text: Any, boxes: Sequence[Sequence[float]] | None = None) -> list[int]:
    """Indices of the regions named in ``text``, in reading order (with repeats).

    A region is named by ``{rK}``, by ``Region [K]`` (the bench's own text), or by a box
    ``(x0, y0, x1, y1)`` matched to ``boxes`` (the text boxes the question used,
    :func:`match_region`). With ``boxes`` given, indices outside them are ignored.
    """
    if not isinstance(text, str):
        return []
    out = []
    for m in _REGION_MENTION.finditer(text):
        if m.group("ph") is not None or m.group("idx") is not None:
            k = int(m.group("ph") if m.group("ph") is not None else m.group("idx"))
            if boxes is not None and k >= len(boxes):
                continue
        else:
            if boxes is None:
                continue
            found = match_region([float(m.group(g)) for g in ("x0", "y0", "x1", "y1")], boxes)
            if found is None:
                continue
            k = found
        out.append(k)
    return out


def parse_relation(text: Any, predicate: str, boxes: Sequence[Sequence[float]] | None = None, subject: int = 0) -> bool | None:
    """Whether an answer without a verdict word states "subject <predicate> other" (True) or the
    opposite (False), or None.

    The first relation phrase (:data:`RELATION_PHRASES`, the predicate's or its opposite's) decides;
    a negation among the three words before it flips it ("is not above"), and so does a sentence
    whose first region named before the phrase is not the question's subject ("B is in front of A").
    """
    try:
        span = normalise_text(extract_answer(text))
        match = _RELATION_RE[predicate].search(span)
        if match is None:
            return None
        holds = any(name.startswith("p") for name, value in match.groupdict().items() if value is not None)
        before = span[: match.start()]
        if any(w.strip(",.;:!?").lower() in _NEGATIONS or w.lower().endswith("n't") for w in before.split()[-3:]):
            holds = not holds
        named = region_mentions(before, boxes)
        if named and named[0] != subject:
            holds = not holds
        return holds
    except Exception:  # a parser must never take an evaluation down
        return None


def parse_qualitative(text: Any, predicate: str | None = None, boxes: Sequence[Sequence[float]] | None = None, subject: int = 0) -> bool | None:
    """A yes/no answer: the first verdict word (:func:`parse_yes_no`: "Yes", "Indeed", "Correct",
    "That is True" / "No", "Incorrect", "That is False"); without one, and with the question's
    ``predicate`` known, the relation the answer states (:func:`parse_relation`: SpatialRGPT-Bench's
    "In fact, A is to the right of B." / "Actually, A might be smaller than B." answer "no")."""
    verdict = parse_yes_no(text)
    if verdict is not None or predicate not in PREDICATES:
        return verdict
    return parse_relation(text, predicate, boxes, subject)


def parse_choice(text: Any, boxes: Sequence[Sequence[float]] | None = None) -> int | None:
    """The region an answer chooses: the first region it names (:func:`region_mentions`), or None.
    "[X] is more to the left.", "Positioned higher is [X]." name only the answer."""
    try:
        named = region_mentions(extract_answer(text), boxes)
        return named[0] if named else None
    except Exception:  # a parser must never take an evaluation down
        return None


_SMALL_NUMBERS = {
    w: i for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_NUMBER_WORD = "|".join(sorted([*_SMALL_NUMBERS, *_TENS, "hundred", "thousand"], key=len, reverse=True))
_NUMBER_WORDS = re.compile(rf"\b(?:{_NUMBER_WORD})(?:(?:\s+|-)(?:{_NUMBER_WORD}))*\b", re.IGNORECASE)
# Full unit words only: "a m" or "half an in" are not lengths.
_UNIT_WORD = r"(?:(?:kilo|centi|milli)?met(?:er|re)s?|feet|foot|inch(?:es)?|yards?)\b"
_DIGITS = r"\d+(?:\.\d+)?"
_ZERO_DISTANCE = re.compile(
    r"\b(?:no|zero)\s+(?:\w+\s+){0,2}?(?:distance|gap|separation|space)\b|\bin\s+(?:immediate\s+)?(?:vertical\s+)?contact\b",
    re.IGNORECASE,
)


def _words_value(words: str) -> int:
    total = current = 0
    for w in re.split(r"[\s-]+", words.lower()):
        if w in _SMALL_NUMBERS:
            current += _SMALL_NUMBERS[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w == "hundred":
            current = (current or 1) * 100
        elif w == "thousand":
            total += (current or 1) * 1000
            current = 0
    return total + current


def spell_out_numbers(text: str) -> str:
    """``text`` with spelled-out lengths in digits: "five feet" -> "5 feet", "twenty-five" -> "25",
    "one and a half meters" -> "1.5 meters", "half a meter" / "a half meter" -> "0.5 meter",
    "a quarter of a meter" -> "0.25 meter", "a foot" -> "1 foot", "1 1/2 feet" -> "1.5 feet",
    "3/4 inch" -> "0.75 inch"."""
    text = _NUMBER_WORDS.sub(lambda m: str(_words_value(m.group(0))), text)
    text = re.sub(rf"\b(?:a|an)\s+({_UNIT_WORD})\s+and\s+a\s+half\b", r"1.5 \1", text, flags=re.IGNORECASE)
    text = re.sub(rf"({_DIGITS})\s+({_UNIT_WORD})\s+and\s+a\s+half\b", lambda m: f"{float(m.group(1)) + 0.5:g} {m.group(2)}", text, flags=re.IGNORECASE)
    for words, add in (("a half", 0.5), ("one half", 0.5), ("a quarter", 0.25), ("three quarters", 0.75)):
        text = re.sub(rf"({_DIGITS})\s+and\s+{words}\b", lambda m, add=add: f"{float(m.group(1)) + add:g}", text, flags=re.IGNORECASE)
    text = re.sub(r"(?<![\d.])(\d+)\s+(\d+)\s*/\s*(\d+)(?![\d.])", lambda m: f"{int(m.group(1)) + int(m.group(2)) / max(int(m.group(3)), 1):g}", text)
    text = re.sub(r"(?<![\d./])(\d+)\s*/\s*(\d+)(?![\d./])", lambda m: f"{int(m.group(1)) / max(int(m.group(2)), 1):g}", text)
    text = re.sub(rf"\b(?:a\s+)?half\s+(?:of\s+)?(?:(?:a|an|one|1)\s+)?(?={_UNIT_WORD})", "0.5 ", text, flags=re.IGNORECASE)
    text = re.sub(rf"\b(?:a\s+)?quarter\s+(?:of\s+)?(?:(?:a|an|one|1)\s+)?(?={_UNIT_WORD})", "0.25 ", text, flags=re.IGNORECASE)
    return re.sub(rf"\b(?:a|an)\s+(?={_UNIT_WORD})", "1 ", text, flags=re.IGNORECASE)


def merge_ranges(text: str) -> str:
    """``text`` with every length range replaced by its midpoint in metres: "between 1 and 2
    meters", "1-2 m", "1 to 2 feet", "from 50 cm to 1 m" -> "1.5 m" / ... A range needs a unit
    after its second number; a first number without one takes that unit."""
    quantities = find_quantities(text)
    out, pos = [], 0
    i = 0
    while i < len(quantities) - 1:
        q1, q2 = quantities[i], quantities[i + 1]
        gap = text[q1.end : q2.start]
        dash = re.fullmatch(r"\s*(?:-|–|—|to)\s*", gap) is not None
        between = re.fullmatch(r"\s*and\s*", gap) is not None and re.search(r"\bbetween\s*$", text[: q1.start], re.IGNORECASE)
        if q2.unit is not None and (dash or between) and q1.value >= 0 and q2.value >= 0:
            first = q1.value * UNIT_TO_METRES[q1.unit or q2.unit]
            out += [text[pos : q1.start], f"{(first + q2.metres) / 2!r} m"]
            pos = q2.end
            i += 2
            continue
        i += 1
    out.append(text[pos:])
    return "".join(out)


def parse_distance(text: Any) -> float | None:
    """A length in metres from an answer, or None: :func:`vlm3.tasks.common.parse_length` (the last
    number with a unit wins; m, cm, mm, km, inches, feet, yards; box tuples ignored) after spelled-out
    numbers become digits (:func:`spell_out_numbers`) and ranges their midpoints
    (:func:`merge_ranges`); an answer with no number that says there is no distance / gap / vertical
    separation (or that they are in contact) is 0 m."""
    try:
        span = strip_tuples(normalise_text(extract_answer(text)))
        value = parse_length(merge_ranges(spell_out_numbers(span)))
        if value is None and _ZERO_DISTANCE.search(span) and not find_quantities(span):
            return 0.0
        return value
    except Exception:  # a parser must never take an evaluation down
        return None


def predicate_of(category: str) -> str | None:
    """The predicate of a qualitative category: "left_predicate" / "left_choice" -> "left"."""
    head = str(category).split("_", 1)[0]
    return head if head in PREDICATES else None


@dataclass(frozen=True)
class RegionContext:
    """What the parser of a question asked as written needs: its kind, the predicate of a
    yes/no question, the text boxes of its regions (as asked) and the question's subject region."""

    kind: str
    predicate: str | None = None
    boxes: tuple[tuple[float, float, float, float], ...] | None = None
    subject: int = 0


def parse_region_answer(text: Any, context: RegionContext) -> bool | float | int | None:
    """Parse an answer to a question asked as written, by kind: bool, metres, clock hour, region index."""
    kind, boxes = context.kind, context.boxes
    if kind == "qualitative":
        return parse_qualitative(text, context.predicate, boxes, context.subject)
    if kind == "quantitative":
        return parse_distance(text)
    if kind == "direction":
        return parse_clock(strip_tuples(text)) if isinstance(text, str) else None
    if kind == "choice":
        return parse_choice(text, boxes)
    return None


def region_qa_gt(qa_kind: str, category: str, question: str, answer: str) -> bool | float | int | None:
    """The ground truth a reference answer states (regions as ``{rK}``), parsed with the same
    parser as model answers; None when it does not parse."""
    placeholders = region_placeholders(question)
    context = RegionContext(qa_kind, predicate_of(category), None, placeholders[0] if placeholders else 0)
    return parse_region_answer(answer, context)


# --- metrics ------------------------------------------------------------------------------------


QUANT_TOLERANCE_M = 0.005
"""Quantitative answers within this many metres of the ground truth succeed whatever the ratio:
half the 1 cm resolution of a length written in metres with 2 decimals (vlm3's answers), so an
exact answer always succeeds, including a ground truth of 0 m (two objects at the same height) or
under ~2 cm, where the 0.75-1.25 x band is narrower than the answer's rounding."""


def check_gt(kind: str, gt: Any) -> None:
    """Raise ValueError unless ``gt`` is a bool / metres >= 0 / hour 1..12 / region index >= 0 for its ``kind``."""
    if kind == "qualitative" and isinstance(gt, (bool, np.bool_)):
        return
    if kind == "quantitative" and (value := as_float(gt)) is not None and value >= 0:
        return
    if kind == "direction" and (value := as_float(gt)) is not None and value == int(value) and 1 <= value <= 12:
        return
    if kind == "choice" and (value := as_float(gt)) is not None and value == int(value) and value >= 0:
        return
    raise ValueError(f"ground truth {gt!r} is not valid for a {kind!r} question")


def _valid_pred(kind: str, pred: Any) -> bool | float | int | None:
    """The prediction if it has the type of its kind, else None (counted as a failure)."""
    if kind == "qualitative":
        return bool(pred) if isinstance(pred, (bool, np.bool_)) else None
    if kind == "quantitative":
        return as_float(pred)
    value = as_float(pred)
    if kind == "choice":
        return int(value) if value is not None and value == int(value) and value >= 0 else None
    return int(value) if value is not None and value == int(value) and 1 <= value <= 12 else None


def clock_difference(h1: int, h2: int) -> int:
    """Circular distance between two clock hours (12 and 1 differ by 1)."""
    d = abs(int(h1) - int(h2)) % 12
    return min(d, 12 - d)


def _correct(kind: str, pred: Any, gt: Any) -> bool:
    if pred is None:
        return False
    if kind == "qualitative":
        return pred == bool(gt)
    if kind == "quantitative":
        return 0.75 * gt <= pred <= 1.25 * gt or abs(pred - gt) <= QUANT_TOLERANCE_M + 1e-9
    if kind == "choice":
        return int(pred) == int(gt)
    return clock_difference(pred, gt) <= 1


def line_correct(line: dict[str, Any]) -> bool:
    """vlm3's verdict on one object prediction line (``pred``, ``gt``, ``kind``): the rules of
    :func:`object_metrics`; an unparsed or unasked answer is wrong."""
    kind = line["kind"]
    return _correct(kind, _valid_pred(kind, line.get("pred")), _typed_gt(kind, line["gt"]))


def object_metrics(
    preds: Sequence[bool | float | int | None],
    gts: Sequence[bool | float | int],
    kinds: Sequence[str],
    categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Object-level metrics; predictions already parsed (None = failure, counted wrong).

    - ``qualitative_acc``: share of correct yes/no answers and region choices (SpatialRGPT-Bench's
      official scorer counts its ``*_choice`` questions as qualitative); ``choice_acc``: the
      choices alone;
    - ``quantitative_success``: share with 0.75·gt <= pred <= 1.25·gt or |pred - gt| <=
      :data:`QUANT_TOLERANCE_M` (5 mm, the rounding of a 2-decimal answer); ``quantitative_abs_rel``:
      mean |pred - gt| / gt over parsed answers whose gt is not 0 m;
    - ``direction_success``: share within 1 clock hour (circular);
    - ``categories``: per category (default: the kind) ``kind``, ``n``, ``parsed``, ``score``
      (the kind's accuracy / success rate) and, for quantitative ones, ``abs_rel``;
    - ``groups`` (only when SpatialRGPT-Bench categories occur, :data:`SRGPT_GROUPS`): per group of
      its official scorer ("left_right" = its "Left/Right": left/right predicates and choices;
      "direct_distance", "width", ..., "direction") ``n`` and ``score``, plus ``quantitative_overall`` = success over distances, sizes AND directions
      (its "Quan Overall Acc"; vlm3's ``quantitative_success`` leaves directions out).
    Each share is NaN when the kind does not occur.
    """
    n = len(preds)
    categories = list(kinds) if categories is None else list(categories)
    if not (len(gts) == len(kinds) == len(categories) == n):
        raise ValueError("preds, gts, kinds and categories must have the same length")
    for kind, gt in zip(kinds, gts):
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} must be one of {KINDS}")
        check_gt(kind, gt)
    values = [_valid_pred(k, p) for k, p in zip(kinds, preds)]
    correct = np.array([_correct(k, v, g) for k, v, g in zip(kinds, values, gts)], dtype=bool)
    parsed = np.array([v is not None for v in values], dtype=bool)
    kinds_arr = np.array(kinds, dtype=object)

    def abs_rel(mask: np.ndarray) -> float:
        return mean_or_nan([abs(values[i] - gts[i]) / gts[i] for i in np.flatnonzero(mask & parsed) if gts[i] > 0])

    out: dict[str, Any] = {"n": n, "parsed": int(parsed.sum())}
    for kinds_of, key in (
        (("qualitative", "choice"), "qualitative_acc"),
        (("quantitative",), "quantitative_success"),
        (("direction",), "direction_success"),
        (("choice",), "choice_acc"),
    ):
        mask = np.isin(kinds_arr, kinds_of)
        if key == "choice_acc" and not mask.any():
            continue  # only questions asked as written have choices
        out[key] = share(correct[mask], int(mask.sum()))
        if key == "quantitative_success":
            out["quantitative_abs_rel"] = abs_rel(mask)
    per_category: dict[str, dict[str, Any]] = {}
    for category in dict.fromkeys(categories):
        mask = np.array([c == category for c in categories], dtype=bool)
        category_kinds = set(kinds_arr[mask])
        if len(category_kinds) > 1:
            raise ValueError(f"category {category!r} mixes kinds {sorted(category_kinds)}")
        kind = category_kinds.pop()
        entry: dict[str, Any] = {
            "kind": kind,
            "n": int(mask.sum()),
            "parsed": int(parsed[mask].sum()),
            "score": share(correct[mask], int(mask.sum())),
        }
        if kind == "quantitative":
            entry["abs_rel"] = abs_rel(mask)
        per_category[category] = entry
    out["categories"] = per_category
    groups = [SRGPT_GROUPS.get(c) for c in categories]
    if any(g is not None for g in groups):
        grouped: dict[str, Any] = {}
        for group in dict.fromkeys(g for g in SRGPT_GROUPS.values()):
            mask = np.array([g == group for g in groups], dtype=bool)
            if mask.any():
                grouped[group] = {"n": int(mask.sum()), "score": share(correct[mask], int(mask.sum()))}
        mask = np.array([g is not None for g in groups], dtype=bool) & np.isin(kinds_arr, ("quantitative", "direction"))
        grouped["quantitative_overall"] = {"n": int(mask.sum()), "score": share(correct[mask], int(mask.sum()))}
        out["groups"] = grouped
    return out


# --- the task -----------------------------------------------------------------------------------


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _typed_gt(kind: str, gt: Any) -> bool | float | int:
    return bool(gt) if kind == "qualitative" else (int(gt) if kind in ("direction", "choice") else float(gt))


class ObjectTask(Task):
    """Questions about pairs of 3D-boxed objects of one image (record field ``objects``), or a
    benchmark's own questions asked as written (record field ``qa``).

    Objects: an evaluation asks every predicate and quantity of every ordered pair of objects with
    a 2D box, in a fixed order; label i is question i of that list.

    ``qa`` (a record with it is asked only those): label i is ``qa[i]``, its ``{rK}`` replaced by
    region K's box as the profile writes boxes ("bounding box region (12, 40, 300, 511)", text
    coordinates of the image shown; the vlm3-release profile normalises the original box by the
    original size, as for objects); the target answer is the reference answer with the same
    replacement. Answers are read by kind (:func:`parse_region_answer`): yes/no (verdict word, else
    the relation stated), metres (:func:`parse_distance`), clock hour, or the region chosen (the
    first region named). Prediction lines carry ``kind``, ``category`` (the bench's own name) and
    ``reference`` (the reference answer as asked), so a judge can re-score them
    (:mod:`vlm3.eval.judge`).
    """

    name = "object"
    profiles = {
        # inference.ipynb / spatialrgpt_labels.json: one scale 1000 / fx for both axes (fy not
        # forced), sizes truncated, boxes in [0, 1000] of the original size, 512 new tokens.
        "vlm3-release": TaskProfile(
            {"unify": True, "focal": DEFAULT_FOCAL_PX, "focal_axes": "x", "size_multiple": None,
             "n_coords": 1000},
            max_new_tokens=512,
        ),
        "zero-shot": TaskProfile(ZERO_SHOT_SETTINGS, max_new_tokens=256, system=ZERO_SHOT_SYSTEM),
    }
    description = "SpatialRGPT-style questions about objects named by 2D boxes: relations, distances, sizes"
    label_prefix = "q"
    headline = "qualitative_acc"
    max_new_tokens = 64
    score_format = '{"pred": answer text | bool | number | null, "gt": bool | metres | hour | region index, "kind": qualitative | quantitative | direction | choice, "category"?, "regions"?: [[x0, y0, x1, y1] as asked]}'

    def has_labels(self, record) -> bool:
        return bool(record.objects) or bool(record.qa)

    def n_labels(self, record) -> int:
        if record.qa:
            return len(record.qa)
        k = sum(1 for o in record.objects or [] if o.box2d is not None)
        return k * (k - 1) * (len(PREDICATES) + len(QUANTITIES)) if k >= 2 else 0

    def build(self, view, settings, rng, labels):
        rec = view.record
        if rec.qa:
            return self._build_qa(view, settings, rng, labels)
        K = rec.views[0].K
        objs = [o for o in rec.objects if o.box2d is not None]
        if len(objs) < 2:
            if rng is None:
                return [], []
            raise ValueError(f"record {rec.id}: object questions need two objects with 2D boxes, found {len(objs)}")
        gravity = rec.gravity_cam or DEFAULT_GRAVITY
        if settings.profile == "vlm3-release":
            # SpatialRGPT's pipeline normalises the ORIGINAL box by the original size (the same
            # fraction of the image as after its one-scale resize, without the truncated size).
            K0 = view.source.views[0].K
            boxes = [encode_box(o.box2d, K0.width, K0.height, settings.n_coords, clamp=True) for o in view.source.objects if o.box2d is not None]
        else:
            boxes = [encode_box(o.box2d, K.width, K.height, settings.n_coords, clamp=True) for o in objs]
        regions = [Region(box, np.asarray(o.center), np.asarray(o.size), np.asarray(o.R_cam_from_box), o.name) for box, o in zip(boxes, objs)]
        pairs = [(i, j) for i in range(len(regions)) for j in range(len(regions)) if i != j]
        order = np.arange(len(pairs)) if rng is None else rng.permutation(len(pairs))
        qas = []
        for k in order:
            i, j = pairs[k]
            qas += object_qas(regions[i], regions[j], gravity=gravity, rng=rng)
        if rng is not None:
            pick = rng.choice(len(qas), size=min(settings.points_per_sample, len(qas)), replace=False)
            chosen = [int(p) for p in pick]
        else:
            chosen = list(range(len(qas))) if labels is None else [i for i in labels if 0 <= i < len(qas)]
        picked = [profile_qa(qa, settings) for qa in (qas[i] for i in chosen)]
        queries = [
            Query(qa.question, qa.answer, _typed_gt(qa.kind, qa.value), i, {"kind": qa.kind, "category": qa.category, "reference": qa.answer}, qa.kind)
            for i, qa in zip(chosen, picked)
        ]
        return object_messages(picked), queries

    def _build_qa(self, view, settings, rng, labels):
        """Messages and queries of a record's questions asked as written (see class doc)."""
        rec = view.record
        if settings.profile == "vlm3-release" and view.source is not None and view.source.qa:
            K0 = view.source.views[0].K  # as for objects: the original box, normalised by the original size
            regions = [qa.regions for qa in view.source.qa]
        else:
            K0 = rec.views[0].K
            regions = [qa.regions for qa in rec.qa]
        n = len(rec.qa)
        if rng is not None:
            chosen = [int(p) for p in rng.choice(n, size=min(settings.points_per_sample, n), replace=False)]
        else:
            chosen = list(range(n)) if labels is None else [i for i in labels if 0 <= i < n]
        picked, queries = [], []
        for i in chosen:
            qa = rec.qa[i]
            boxes = tuple(encode_box(b, K0.width, K0.height, settings.n_coords, clamp=True) for b in regions[i])
            names = [f"bounding box region {format_box(b)}" for b in boxes]
            question = _capitalise(fill_regions(qa.question, names))
            answer = _capitalise(fill_regions(qa.answer, names))
            placeholders = region_placeholders(qa.question)
            context = RegionContext(qa.kind, predicate_of(qa.category) if qa.kind == "qualitative" else None,
                                    tuple(tuple(float(v) for v in b) for b in boxes), placeholders[0] if placeholders else 0)
            one = profile_qa(ObjectQA(question, answer, qa.kind, qa.category, qa.gt), settings)
            picked.append(one)
            queries.append(Query(one.question, one.answer, _typed_gt(qa.kind, qa.gt), i,
                                 {"kind": qa.kind, "category": qa.category, "reference": answer}, context))
        return object_messages(picked), queries

    def prompts(self, settings) -> list[str]:
        if settings.profile == "zero-shot":
            return [ZERO_SHOT_SUFFIX.format(n=settings.n_coords, how=how) for how in ZERO_SHOT_ANSWER.values()]
        a, b = (f"bounding box region {format_box(box)}" for box in ((0, 39, 652, 999), (6, 380, 228, 562)))
        out = [_sentence(t, a=a, b=b, rel=rel) for _, rel in PREDICATES.values() for t in (*QUALITATIVE_QUESTIONS, *TRUE_ANSWERS, *FALSE_ANSWERS)]
        for quantity, (questions, answers) in QUANTITIES.items():
            values = ("3",) if quantity == "direction" else ("1.25 meters", "4.10 feet", "50.0 centimeters", "19.7 inches")
            out += [_sentence(t, a=a, b=b, x=x) for t in (*questions, *answers) for x in values]
        return list(dict.fromkeys(out))

    def read(self, raw, query, sample):
        if isinstance(query.context, RegionContext):
            return parse_region_answer(raw, query.context)
        return parse_object_answer(raw, query.context)

    def metrics(self, lines, options=None):
        m = object_metrics([line["pred"] for line in lines], [line["gt"] for line in lines], [line["kind"] for line in lines], [line["category"] for line in lines])
        return {**m, "failed": m["n"] - m["parsed"]}

    def score_line(self, line: ScoreLine, n_coords: int) -> dict[str, Any]:
        kind = line.get("kind")
        if kind not in KINDS:
            raise line.error(f'"kind" must be one of {", ".join(KINDS)}, got {short(kind)}')
        gt = line.get("gt")
        try:
            check_gt(kind, gt)
        except ValueError:
            raise line.error(f'"gt" {short(gt)} is not valid for a {kind} question') from None
        category = line.data.get("category", kind)
        if not isinstance(category, str):
            raise line.error(f'"category" must be a string, got {short(category)}')
        boxes = line.data.get("regions")
        if boxes is not None and not (isinstance(boxes, list) and all(isinstance(b, list) and len(b) == 4 and is_numeric(b) for b in boxes)):
            raise line.error(f'"regions" must be a list of [x0, y0, x1, y1] boxes as asked, got {short(boxes)}')
        pred = line.get("pred")
        if isinstance(pred, str):
            if kind == "choice" or (kind == "qualitative" and category in SRGPT_GROUPS):
                pred = parse_region_answer(pred, RegionContext(kind, predicate_of(category) if kind == "qualitative" else None, None if boxes is None else tuple(tuple(b) for b in boxes)))
            else:
                pred = parse_object_answer(pred, kind)
        elif pred is not None:
            wanted_bool = kind == "qualitative"
            if isinstance(pred, bool) != wanted_bool or not isinstance(pred, (bool, int, float)):
                wanted = "true/false" if wanted_bool else "a number"
                raise line.error(f'"pred" must be text, {wanted} or null for a {kind} question, got {short(pred)}')
        return {"pred": pred, "gt": _typed_gt(kind, gt), "parsed": pred is not None, "kind": kind, "category": category}

    def plots(self, folder, lines):
        cats = self.metrics(lines)["categories"]
        fig = plotting.figure(7, 4)
        ax = fig.add_subplot()
        names = list(cats)
        ax.bar(names, [cats[c]["score"] for c in names], color=["tab:blue" if cats[c]["kind"] in ("qualitative", "choice") else "tab:orange" for c in names])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy / success")
        ax.tick_params(axis="x", labelrotation=60, labelsize=8)
        ax.set_title("object questions by category (blue: qualitative and choice, orange: quantitative)")
        return [(plotting.save(fig, folder, "object_by_category.png"), "object score by category")]

    def example(self, record, images, lines):
        from matplotlib.patches import Rectangle

        fig, ax = plotting.image_axes(images[0], extra_height=1.5)
        for obj in record.objects or []:
            if obj.box2d is None:
                continue
            x0, y0, x1, y1 = obj.box2d
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", lw=1))
            ax.text(x0, y0, obj.name, color="yellow", fontsize=7, va="bottom")
        for qa in record.qa or []:
            for k, (x0, y0, x1, y1) in enumerate(qa.regions):
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", lw=1))
                ax.text(x0, y0, f"r{k}", color="yellow", fontsize=7, va="bottom")
        parsed = sum(line["pred"] is not None for line in lines)
        first = lines[0]
        ax.set_title(f"{record.id}: {parsed} of {len(lines)} answers parsed\n{first['question'][:90]}\n-> {first.get('raw', '')[:60]!r} (gt {first['gt']})", fontsize=7)
        return fig


OBJECT = register(ObjectTask())
