"""SpatialRGPT's own training QA (Open Spatial Dataset): region questions asked as written, one
record per image entry with every usable turn of its conversation.

Source: the Hugging Face dataset ``a8cheng/OpenSpatialDataset``, a single file
``result_10_depth_convs.json`` (31.9 GB, a JSON list), and the OpenImages V7 train images it names.
SpatialRGPT trains on it as ``spatialrgpt_ft`` (github.com/AnjieCheng/SpatialRGPT,
``llava/data/datasets_mixture.py``: data_path ``result_10_depth_convs.json``, image_path
``Openimages/train``, "900K SFT data ... w/ depth (template+LLaMa rephrased)"), read by
``LazySupervisedSpatialDataset`` in ``llava/data/dataset.py``. The VLM3 paper trains on the same
questions with every region named by its box in text instead of SpatialRGPT's mask tokens.

Expected tree (``ROOT`` = the folder given with ``--root``)::

    ROOT/
      result_10_depth_convs.json   # a JSON list of entries (JSON lines, one entry a line, also read)
      images/<filename>.jpg        # the OpenImages train images (option images=DIR: another folder
                                   # under ROOT, e.g. images=train; images=. for ROOT itself)

One entry (the fields SpatialRGPT's loader reads)::

    {"filename": "0a1b2c3d4e5f6a7b",                       # image <filename>.jpg (depth <filename>.png)
     "conversations": [
        {"from": "human", "value": "<image>\\nDoes <mask> <depth> have a greater width compared to <mask> <depth>?"},
        {"from": "gpt", "value": "In fact, Region [0] might be narrower than Region [1]."},
        {"from": "human", "value": "Which of these two, <mask> <depth> or <mask> <depth>, stands taller?"},
        {"from": "gpt", "value": "Standing taller between the two is Region [0]."}, ...],
     "rle": [{"size": [h, w], "counts": "..."}, ...],      # one COCO RLE mask per <mask> token
     "bbox": [[x1, y1, x2, y2], ...]}                      # one box per <mask> token

Conventions and how each is converted
-------------------------------------
Which mask a region is. SpatialRGPT replaces the k-th ``<mask>`` token of the whole tokenised
conversation by the k-th mask's feature (``llava/model/llava_arch.py``,
``prepare_inputs_labels_for_multimodal``: ``mask_embed[:num_mask]`` written at the ``<mask>``
positions in order; ``llava/mm_utils.py`` ``process_masks`` builds one mask per list entry). So the
mask list has one entry per ``<mask>`` occurrence, in reading order over all turns (an object asked
about in several turns appears once per turn). Each answer names the regions of its own question:
"Region [K]" is the K-th ``<mask>`` of that turn's human message (the generator's templates put
[A] first and [B] second, ``dataset_pipeline/osdsynth/processor/prompt.py``); a published
inspection of the release reports exactly this (mask count = box count = ``<mask>`` count in every
entry it sampled, region numbers restarting in every turn: github.com/kasohrab/theworld,
``docs/spatial-bbox-correspondence.md``). An entry with fewer masks than ``<mask>`` tokens is a
rejection (``invalid_record``); masks beyond the last token are ignored, as SpatialRGPT does
(``meta["masks_unused"]``).

Text. Each human message with its gpt answer becomes one ``RegionQA``: the ``<image>`` token (and
the whitespace after it) is removed, the turn's j-th ``<mask>`` (with the ``<depth>`` token after
it, and a "Region [j]" before it as SpatialRGPT-Bench writes questions) becomes ``{rj}``, and every
"Region [K]" of the answer becomes ``{rK}``; nothing else of SpatialRGPT's wording changes (the
object task writes its box text there, "bounding box region (x0, y0, x1, y1)", capitalising a
sentence that starts with it, as "Region [0] is ..." was). A turn naming a region its question does
not have, or whose answer holds a mask token, is dropped.

Regions. A region is the tight corner-origin box of its mask (x_min = first mask column,
x_max = last column + 1; rows alike; the same rule as ``spatialrgpt-bench``), computed from the
RLE runs directly (:func:`rle_box`, equal to the box of the decoded mask; COCO RLE as
``spatialrgpt_bench.rle_counts`` reads it, compressed string or list). An RLE of another size than
the image with the same aspect ratio (within 1 %) is the image resampled (SpatialRGPT resizes mask
and image to the same grid, ``image_aspect_ratio="resize"``): its box is scaled to the image
(``meta["masks_rescaled"]``); another aspect ratio is a ``size_mismatch``. An entry without
``rle`` uses ``bbox`` as SpatialRGPT's loader fills it (clamped to the image, truncated to int;
``spatialrgpt_bench.bbox_box``); ``meta["regions_from"]`` says which. SpatialRGPT's relative depth
maps (``<filename>.png``, min-max normalised to 0..255) are not read: they carry no metric label.

Kinds and categories. The release stores no category. A question equal to one of the generator's
question templates (``dataset_pipeline/osdsynth/processor/prompt_template.py``; the regions in
order, case and spacing ignored) gets that template's category, named as SpatialRGPT-Bench names
it (``left_predicate``, ..., ``tall_choice``, ``distance_data``, ``vertical_distance_data``,
``horizontal_distance_data``, ``width_data``, ``height_data``, ``direction``) and the bench's kind
(predicate -> qualitative, choice -> choice, ``*_data`` -> quantitative, ``direction`` ->
direction). Any other question (the LLM-rephrased part of the release) is category
``untemplated`` and its kind is read from the answer's form: a leading verdict word (yes / no /
indeed / correct / incorrect / that is true|false) -> qualitative, an "o'clock" -> direction, a
length with a unit (or "no ... distance / gap", as the parser reads it) -> quantitative, a region
named by a question about two or more regions -> choice (``meta["turns_untemplated"]`` counts
them).

Ground truth. Parsed from the answer with the object task's parser
(``vlm3.tasks.object3d.region_qa_gt``, the same as for SpatialRGPT-Bench and model answers). A
turn whose answer does not parse (e.g. the generator's "[A] and [B] overlap, so it's hard to tell
how far apart they are vertically."), or that the rules above drop, is counted in
``meta["turns_dropped"]`` with the first reason in ``meta["dropped_reason"]``; an entry with no
usable turn is a rejection listing the reasons. Nothing is guessed.

Intrinsics. None in the source: each image gets the placeholder of ``hpatches.py`` (f = image
diagonal in pixels, principal point at the centre, ``meta["intrinsics_estimated"] = True``). The
questions are referenced by 2D boxes and their answers are fixed text, so the focal length only
sets how much focal-length unification scales the image; no label depends on it.
``metric_scale`` is True (SpatialRGPT's lengths are metric: ``human_like_distance``).

Streaming and units. The file is never loaded whole: :meth:`SpatialRGPTTrainAdapter.units` reads
it once in 64 MiB blocks and finds where each entry starts (``json.JSONDecoder.raw_decode`` over
the bytes read as Latin-1, so character offsets are byte offsets; every entry is parsed once,
which also checks the file is valid JSON; ~200 MB/s on one core, so about 3 minutes for the
release, at every ``vlm3 prepare`` run). A unit is ``chunk_size`` consecutive entries named
``<first entry index>:<first byte>-<end byte>`` (zero-padded, so names sort in file order);
converting a unit reads only its byte range. Records are ``spatialrgpt-train/<entry index>``
(``meta["filename"]`` names the image, ``meta["entry_id"]`` the entry's own ``id`` when it has
one).

Options (``--option key=value``): ``file`` (default ``result_10_depth_convs.json``), ``images``
(default ``images``), ``chunk_size`` (entries per unit; default 256, fewer for a file of under
32 x 256 entries so that it still splits into 32 units).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, LayoutError, Rejection, option_int, register
from vlm3.data.adapters.depthlm_jsonl import auto_chunk_size
from vlm3.data.adapters.hpatches import placeholder_intrinsics
from vlm3.data.adapters.kit import image_size
from vlm3.data.adapters.spatialrgpt_bench import bbox_box, rle_counts
from vlm3.data.records import Record
from vlm3.data.scenes import FrameError
from vlm3.data.validate import make_record

TRAIN_JSON = "result_10_depth_convs.json"
IMAGES_DIR = "images"
IMAGE_SUFFIX = ".jpg"  # LazySupervisedSpatialDataset: f"{filename}.jpg"
OPTION_KEYS = ("file", "images", "chunk_size")
BLOCK = 1 << 26  # bytes read at a time while finding entries
MAX_ENTRY_BYTES = 1 << 28  # an entry this large is not SpatialRGPT's (they are ~35 kB); stop reading
ASPECT_TOLERANCE = 0.01
UNTEMPLATED = "untemplated"

_WS = re.compile(r"[ \t\n\r]*")
_IMAGE_TOKEN = re.compile(r"<image>\s*", re.IGNORECASE)
_MASK_TOKEN = re.compile(r"(?:\bRegion\s*\[\s*(\d+)\s*\]\s*)?<mask>(?:\s*<depth>)?", re.IGNORECASE)
_DEPTH_TOKEN = re.compile(r"\s*<depth>", re.IGNORECASE)
_REGION = re.compile(r"\bRegion\s*\[\s*(\d+)\s*\]", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{r\d+\}")
_LEADING_VERDICT = re.compile(r"^\W*(?:yes|no|indeed|correct|incorrect|that\s+is\s+(?:true|false))\b", re.IGNORECASE)
_OCLOCK = re.compile(r"\bo\s*['’`]?\s*clock\b", re.IGNORECASE)


# --- the generator's question templates (dataset_pipeline/osdsynth/processor/prompt_template.py) ---
# [A] / [B] are the turn's first / second region. Categories as SpatialRGPT-Bench names them.

_PREDICATE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "left": ("Is [A] to the left of [B] from the viewer's perspective?", "Does [A] appear on the left side of [B]?",
             "Can you confirm if [A] is positioned to the left of [B]?"),
    "right": ("Is [A] to the right of [B] from the viewer's perspective?", "Does [A] appear on the right side of [B]?",
              "Can you confirm if [A] is positioned to the right of [B]?"),
    "above": ("Is [A] above [B]?", "Does [A] appear over [B]?", "Can you confirm if [A] is positioned above [B]?"),
    "below": ("Is [A] below [B]?", "Does [A] appear under [B]?", "Can you confirm if [A] is positioned below [B]?"),
    "wide": ("Is [A] wider than [B]?", "Does [A] have a greater width compared to [B]?", "Can you confirm if [A] is wider than [B]?"),
    "big": ("Is [A] bigger than [B]?", "Does [A] have a larger size compared to [B]?", "Can you confirm if [A] is bigger than [B]?"),
    "tall": ("Is [A] taller than [B]?", "Does [A] have a greater height compared to [B]?", "Can you confirm if [A] is taller than [B]?"),
    "short": ("Is [A] shorter than [B]?", "Does [A] have a lesser height compared to [B]?", "Can you confirm if [A] is shorter than [B]?"),
    "thin": ("Is [A] thinner than [B]?", "Does [A] have a lesser width compared to [B]?", "Can you confirm if [A] is thinner than [B]?"),
    "small": ("Is [A] smaller than [B]?", "Does [A] have a smaller size compared to [B]?", "Can you confirm if [A] is smaller than [B]?"),
    "behind": ("Is [A] behind [B]?", "Is the position of [A] more distant than that of [B]?", "Does [A] lie behind [B]?",
               "Is [A] positioned behind [B]?", "Is [A] further to camera compared to [B]?", "Does [A] come behind [B]?",
               "Is [A] positioned at the back of [B]?", "Is [A] further to the viewer compared to [B]?"),
    "front": ("Is [A] in front of [B]?", "Is the position of [A] less distant than that of [B]?", "Does [A] lie in front of [B]?",
              "Is [A] positioned in front of [B]?", "Is [A] closer to camera compared to [B]?", "Does [A] come in front of [B]?",
              "Is [A] positioned before [B]?", "Is [A] closer to the viewer compared to [B]?"),
}
_CHOICE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "left": ("Which is more to the left, [A] or [B]?", "Between [A] and [B], which one appears on the left side from the viewer's perspective?",
             "Who is positioned more to the left, [A] or [B]?"),
    "right": ("Which is more to the right, [A] or [B]?", "Between [A] and [B], which one appears on the right side from the viewer's perspective?",
              "Who is positioned more to the right, [A] or [B]?"),
    "above": ("Which is above, [A] or [B]?", "Between [A] and [B], which one is positioned higher?", "Who is higher up, [A] or [B]?"),
    "below": ("Which is below, [A] or [B]?", "Between [A] and [B], which one is positioned lower?", "Who is lower down, [A] or [B]?"),
    "front": ("Which is in front, [A] or [B]?", "Between [A] and [B], which one is positioned in front?", "Who is more forward, [A] or [B]?"),
    "behind": ("Which is behind, [A] or [B]?", "Between [A] and [B], which one is positioned behind?", "Who is more backward, [A] or [B]?"),
    "tall": ("Who is taller, [A] or [B]?", "Between [A] and [B], which one has more height?", "Which of these two, [A] or [B], stands taller?"),
    "short": ("Who is shorter, [A] or [B]?", "Between [A] and [B], which one has less height?", "Which of these two, [A] or [B], stands shorter?"),
}
_QUANTITY_QUESTIONS: dict[str, tuple[str, ...]] = {
    "distance_data": (
        "What is the distance between [A] and [B]?", "How far apart are [A] and [B]?", "How distant is [A] from [B]?",
        "How far is [A] from [B]?", "How close is [A] from [B]?", "Could you measure the distance between [A] and [B]?",
        "Can you tell me the distance of [A] from [B]?", "How far away is [A] from [B]?",
        "Can you provide the distance measurement between [A] and [B]?", "Can you give me an estimation of the distance between [A] and [B]?",
        "Could you provide the distance between [A] and [B]?", "How much distance is there between [A] and [B]?",
        "Tell me the distance between [A] and [B].", "Give me the distance from [A] to [B].", "Measure the distance from [A] to [B].",
        "Measure the distance between [A] and [B]."),
    "vertical_distance_data": (
        "What is the vertical distance between [A] and [B]?", "How far apart are [A] and [B] vertically?",
        "How distant is [A] from [B] vertically?", "How far is [A] from [B] vertically?",
        "Could you measure the vertical distance between [A] and [B]?", "Can you tell me the vertical distance between [A] and [B]?",
        "How far away is [A] from [B] vertically?", "Estimate the vertical distance between [A] and [B].",
        "Could you provide the vertical distance between [A] and [B]?", "How much distance is there between [A] and [B] vertically?",
        "Tell me the distance between [A] and [B] vertically.", "Give me the vertical distance from [A] to [B].",
        "Measure the vertical distance from [A] to [B].", "Measure the distance between [A] and [B] vertically."),
    "horizontal_distance_data": (
        "What is the horizontal distance between [A] and [B]?", "How far apart are [A] and [B] horizontally?",
        "How distant is [A] from [B] horizontally?", "How far is [A] from [B] horizontally?",
        "Could you measure the horizontal distance between [A] and [B]?", "Can you tell me the horizontal distance of [A] from [B]?",
        "Can you give me an estimation of the horizontal distance between [A] and [B]?",
        "Could you provide the horizontal distance between [A] and [B]?", "How much distance is there between [A] and [B] horizontally?",
        "Tell me the distance between [A] and [B] horizontally.", "Give me the horizontal distance from [A] to [B].",
        "Horizontal gap between [A] and [B].", "Measure the horizontal distance from [A] to [B].",
        "Measure the distance between [A] and [B] horizontally."),
    "width_data": (
        "Measure the width of [A].", "Determine the horizontal dimensions of [A].", "Find out how wide [A] is.",
        "What is the width of [A]?", "How wide is [A]?", "What are the dimensions of [A] in terms of width?",
        "Could you tell me the horizontal size of [A]?", "What is the approximate width of [A]?",
        "How much space does [A] occupy horizontally?", "How big is [A] in terms of width?", "What is the radius of [A]?"),
    "height_data": (
        "Measure the height of [A].", "Determine the vertical dimensions of [A].", "Find out how tall [A] is.",
        "What is the height of [A]?", "How tall is [A]?", "What are the dimensions of [A] in terms of height?",
        "Could you tell me the vericall size of [A]?", "What is the approximate height of [A]?",
        "How much space does [A] occupy vertically?", "How tall is [A] in terms of height?"),
    "direction": ("If you are at [A], where will you find [B]?",),
}


def _canonical(text: str) -> str:
    """A question with its regions as ``[R]``, lower case, spaces collapsed (template lookup key)."""
    return re.sub(r"\s+", " ", _PLACEHOLDER.sub("[R]", text)).strip().lower()


def _build_templates() -> dict[str, str]:
    table: dict[str, str] = {}
    groups = [(f"{p}_predicate", qs) for p, qs in _PREDICATE_QUESTIONS.items()]
    groups += [(f"{p}_choice", qs) for p, qs in _CHOICE_QUESTIONS.items()]
    groups += list(_QUANTITY_QUESTIONS.items())
    for category, questions in groups:
        for q in questions:
            key = _canonical(q.replace("[A]", "{r0}").replace("[B]", "{r1}"))
            if table.setdefault(key, category) != category:  # a programming error in the tables
                raise ValueError(f"question template {q!r} is in both {table[key]} and {category}")
    return table


QUESTION_TEMPLATES: dict[str, str] = _build_templates()
"""Canonical question (:func:`_canonical`) -> category, for every template of the generator."""


def category_kind(category: str) -> str:
    """The RegionQA kind of a template category (see module doc)."""
    if category == "direction":
        return "direction"
    if category.endswith("_choice"):
        return "choice"
    if category.endswith("_predicate"):
        return "qualitative"
    return "quantitative"


def answer_kind(answer: str, n_regions: int) -> str | None:
    """The kind an answer's form shows, for a question no template matches (see module doc)."""
    from vlm3.tasks.common import find_quantities
    from vlm3.tasks.object3d import parse_distance, region_mentions, spell_out_numbers

    if _LEADING_VERDICT.search(answer):
        return "qualitative"
    if _OCLOCK.search(answer):
        return "direction"
    if parse_distance(answer) is not None:
        numbers = find_quantities(spell_out_numbers(answer))
        if any(q.unit is not None for q in numbers) or not numbers:
            return "quantitative"
    if n_regions >= 2 and region_mentions(answer):
        return "choice"
    return None


# --- COCO RLE -> tight box without decoding the mask ------------------------------------------------


def rle_box(rle: dict) -> tuple[tuple[int, int], tuple[float, float, float, float] | None]:
    """((h, w), tight corner-origin box) of a COCO RLE ``{"size": [h, w], "counts": ...}``.

    Equal to ``spatialrgpt_bench.mask_box(decode_rle(rle))`` but from the runs alone (column-major,
    starting with background): a foreground run covering pixels s .. e of the flattened mask spans
    columns s // h .. e // h, and rows s % h .. e % h unless it crosses a column (then every row
    from 0 to h - 1 is covered by it). Box None for an empty mask; ValueError when invalid.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE mask needs 'size' and 'counts'")
    h, w = (int(v) for v in rle["size"])
    if h <= 0 or w <= 0:
        raise ValueError(f"RLE size {h}x{w} is not positive")
    runs = np.asarray(rle_counts(rle["counts"]), dtype=np.int64)
    if (runs.size and runs.min() < 0) or int(runs.sum()) != h * w:
        raise ValueError(f"RLE runs sum to {int(runs.sum())}, expected h*w = {h * w} (size {h}x{w})")
    ends = np.cumsum(runs)
    starts = ends - runs
    fg = np.arange(runs.size) % 2 == 1
    s, e = starts[fg], ends[fg] - 1  # inclusive flat indices of each foreground run
    keep = runs[fg] > 0
    s, e = s[keep], e[keep]
    if s.size == 0:
        return (h, w), None
    crosses = s // h != e // h
    y_min = int(np.where(crosses, 0, s % h).min())
    y_max = int(np.where(crosses, h - 1, e % h).max())
    return (h, w), (float(s[0] // h), float(y_min), float(e[-1] // h + 1), float(y_max + 1))


# --- JSON list / JSON lines, entry by entry ------------------------------------------------------


def _iter_values(text: str, start: int = 0) -> Iterator[tuple[int, int, Any]]:
    """(start, end, value) of each top-level value of ``text`` from ``start``: values separated by
    whitespace or commas, ending at a closing ``]`` or the end. ValueError when one is not JSON."""
    decoder = json.JSONDecoder()
    pos, n = start, len(text)
    while True:
        pos = _WS.match(text, pos).end()
        if pos < n and text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
        if pos >= n or text[pos] == "]":
            return
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON at character {e.pos}: {e.msg}") from None
        yield pos, end, value
        pos = end


def scan_entries(path: Path, block: int = BLOCK) -> tuple[array, int]:
    """Byte offsets where each entry of a JSON list (or JSON lines file) starts, and the byte where
    the last one ends; reads ``block`` bytes at a time. LayoutError when the file is not that."""
    decoder = json.JSONDecoder()
    starts = array("q")
    last_end = 0
    with open(path, "rb") as f:
        buf, base, eof = "", 0, False

        def more() -> bool:
            nonlocal buf, eof
            chunk = f.read(block)
            eof = len(chunk) < block
            buf += chunk.decode("latin-1")  # one character per byte: offsets are byte offsets
            return bool(chunk)

        more()
        pos = _WS.match(buf, 0).end()
        while pos >= len(buf) and not eof:
            more()
            pos = _WS.match(buf, pos).end()
        if pos >= len(buf) or buf[pos] not in "[{":
            what = "empty" if pos >= len(buf) else f"starts with {buf[pos]!r}"
            raise LayoutError(f"{path}: not a JSON list of entries (nor JSON lines): the file is {what}")
        listed = buf[pos] == "["
        pos += listed
        closed = False
        while True:
            pos = _WS.match(buf, pos).end()
            if listed and starts and pos < len(buf) and buf[pos] == ",":
                pos = _WS.match(buf, pos + 1).end()
            if pos >= len(buf):
                if eof:
                    break
                buf, base, pos = buf[pos:], base + pos, 0
                more()
                continue
            if listed and buf[pos] == "]":
                closed = True
                break
            try:
                _, end = decoder.raw_decode(buf, pos)
                complete = end < len(buf) or eof
                error = None
            except json.JSONDecodeError as e:
                complete, error = False, e
            if not complete:
                if eof or len(buf) - pos > MAX_ENTRY_BYTES:
                    detail = f"{error.msg} at byte {base + error.pos}" if error is not None else "it is cut off"
                    raise LayoutError(f"{path}: entry {len(starts)} (byte {base + pos}) is not valid JSON ({detail})")
                buf, base, pos = buf[pos:], base + pos, 0
                more()
                continue
            starts.append(base + pos)
            last_end = base + end
            pos = end
    if listed and not closed:
        raise LayoutError(f"{path}: the JSON list is not closed (the file is cut off after {len(starts)} entries)")
    return starts, last_end


# --- the adapter ------------------------------------------------------------------------------------


@register
class SpatialRGPTTrainAdapter(Adapter):
    """SpatialRGPT's Open Spatial Dataset -> one record per image entry (``qa``: its usable turns,
    regions as tight mask boxes)."""

    name: ClassVar[str] = "spatialrgpt-train"
    description: ClassVar[str] = (
        "SpatialRGPT's training QA (a8cheng/OpenSpatialDataset, OpenImages): multi-turn region questions, masks as COCO RLE"
    )
    layout: ClassVar[str] = (
        f"ROOT/{TRAIN_JSON}   JSON list (or JSON lines): filename, conversations (<mask> tokens), rle and/or bbox per <mask>\n"
        f"ROOT/{IMAGES_DIR}/<filename>{IMAGE_SUFFIX}          the OpenImages train images\n"
        "options: file=NAME (the JSON), images=DIR (under ROOT; . = ROOT), chunk_size=N (entries per unit)"
    )
    labels: ClassVar[tuple[str, ...]] = ("qa",)

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        extra = dict(self.options.extra)
        unknown = sorted(set(extra) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; known: {', '.join(OPTION_KEYS)}")
        self.file = extra.get("file", TRAIN_JSON)
        self.images = extra.get("images", IMAGES_DIR).strip("/") or "."
        self.chunk_size = option_int(self.options, "chunk_size", None, minimum=1)

    @property
    def path(self) -> Path:
        return self.root / self.file

    def _image_rel(self, filename: str) -> str:
        name = f"{filename}{IMAGE_SUFFIX}"
        return name if self.images == "." else f"{self.images}/{name}"

    def units(self) -> list[str]:
        if not self.path.is_file():
            raise LayoutError(f"{self.root}: no {self.file} found; expected:\n{self.layout}")
        if not (self.root / self.images).is_dir():
            raise LayoutError(f"{self.root}: no {self.images}/ folder for the images; expected:\n{self.layout}")
        starts, end = scan_entries(self.path)
        if not starts:
            raise LayoutError(f"{self.path}: holds no entries")
        with open(self.path, "rb") as f:  # the first entry must look like SpatialRGPT's
            f.seek(starts[0])
            head = f.read((starts[1] if len(starts) > 1 else end) - starts[0])
        first_entry = next(_iter_values(head.decode("utf-8", errors="replace")), (0, 0, None))[2]
        if not isinstance(first_entry, dict) or "conversations" not in first_entry or "filename" not in first_entry:
            raise LayoutError(f"{self.path}: its first entry has no 'filename' and 'conversations'; expected:\n{self.layout}")
        size = self.chunk_size or auto_chunk_size(len(starts))
        out = []
        for first in range(0, len(starts), size):
            stop = starts[first + size] if first + size < len(starts) else end
            out.append(f"{first:09d}:{starts[first]:013d}-{stop:013d}")
        return out

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        try:
            head, span = unit.split(":")
            first = int(head)
            start, stop = (int(v) for v in span.split("-"))
        except ValueError:
            raise ValueError(f"{self.name}: bad unit {unit!r}, expected 'ENTRY:FIRST_BYTE-END_BYTE'") from None
        if not (0 <= start < stop):
            raise ValueError(f"{self.name}: unit {unit!r} has an empty byte range")
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(stop - start)
        if len(data) != stop - start:
            raise ValueError(f"{self.name}: unit {unit!r} reaches past the end of {self.path} (the file changed?)")
        try:
            text = data.decode("utf-8")
            entries: Iterator[Any] = (value for _, _, value in _iter_values(text))
        except UnicodeDecodeError:  # find the entries byte-wise; the bad one becomes a rejection
            entries = self._entries_bytewise(data)
        for k, entry in enumerate(entries):
            yield self._entry(first + k, entry)

    @staticmethod
    def _entries_bytewise(data: bytes) -> Iterator[Any]:
        for s, e, _ in _iter_values(data.decode("latin-1")):
            try:
                yield json.loads(data[s:e])
            except (UnicodeDecodeError, ValueError) as err:
                yield ValueError(f"not UTF-8 JSON ({err})")

    # --- one entry ---------------------------------------------------------------------------------
    def _entry(self, index: int, entry: Any) -> Record | Rejection:
        source = f"{self.file}[{index}]"
        if isinstance(entry, ValueError):
            return Rejection(source, "unreadable_file", str(entry))
        if not isinstance(entry, dict):
            return Rejection(source, "invalid_record", f"entry is a {type(entry).__name__}, not an object")
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            return Rejection(source, "invalid_record", "missing 'filename'")
        source = f"{self.file}[{index}] ({filename})"
        conv = entry.get("conversations")
        if not isinstance(conv, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in conv):
            return Rejection(source, "invalid_record", "conversations must be a list of {from, value} turns")
        rles, bboxes = entry.get("rle"), entry.get("bbox")
        masks, regions_from = (rles, "rle") if isinstance(rles, list) and rles else (bboxes, "bbox")
        if not isinstance(masks, list) or not masks:
            return Rejection(source, "invalid_record", "no region masks (rle) or boxes (bbox)")
        n_tokens = sum(len(_MASK_TOKEN.findall(t["value"])) for t in conv)
        if len(masks) < n_tokens:
            return Rejection(source, "invalid_record", f"{n_tokens} <mask> tokens but {len(masks)} {regions_from} entries")

        rel = self._image_rel(filename)
        try:
            width, height = image_size(self.root / rel)
        except FrameError as e:
            return Rejection(source, e.reason, e.detail)

        boxes: dict[int, tuple[tuple[float, float, float, float] | None, str, str]] = {}
        rescaled = False

        def region(k: int) -> tuple[tuple[float, float, float, float] | None, str, str]:
            """(box, reason, detail) of mask k; box None when unusable."""
            nonlocal rescaled
            if k not in boxes:
                boxes[k] = self._region(masks[k], regions_from, k, width, height)
                rescaled |= boxes[k][1] == "rescaled"
            return boxes[k]

        from vlm3.tasks.object3d import region_qa_gt  # the task's parser; imported late (tasks import records)

        qas: list[dict] = []
        dropped: list[tuple[str, str]] = []  # (reason, detail) per dropped turn
        turns = untemplated = 0
        cursor = 0  # index of the next mask: one per <mask> token, in reading order
        i = 0
        while i < len(conv):
            speaker = str(conv[i].get("from", "")).lower()
            if speaker != "human" or i + 1 >= len(conv) or str(conv[i + 1].get("from", "")).lower() != "gpt":
                cursor += len(_MASK_TOKEN.findall(conv[i]["value"]))
                if speaker == "human":
                    turns += 1
                    dropped.append(("invalid_record", f"conversations[{i}]: a human message without a gpt answer after it"))
                i += 1
                continue
            turns += 1
            q_raw, a_raw = conv[i]["value"], conv[i + 1]["value"]
            n = len(_MASK_TOKEN.findall(q_raw))
            used = list(range(cursor, cursor + n))
            cursor += n + len(_MASK_TOKEN.findall(a_raw))
            i += 2
            texts = turn_texts(q_raw, a_raw)
            if isinstance(texts, str):
                dropped.append(("invalid_record", f"conversations[{i - 2}]: {texts}"))
                continue
            question, answer, _ = texts
            got = [region(k) for k in used]
            bad = next(((k, r, d) for k, (box, r, d) in zip(used, got) if box is None), None)
            if bad is not None:
                dropped.append((bad[1], f"conversations[{i - 2}]: {regions_from}[{bad[0]}] {bad[2]}"))
                continue
            category = QUESTION_TEMPLATES.get(_canonical(question))
            if category is not None:
                kind = category_kind(category)
            else:
                kind = answer_kind(answer, n)
                if kind is None:
                    dropped.append(("invalid_record", f"conversations[{i - 2}]: answer {a_raw!r} has no recognisable form (the question matches no template)"))
                    continue
                category = UNTEMPLATED
            gt = region_qa_gt(kind, category, question, answer)
            if gt is None or (kind == "choice" and not (0 <= gt < n)) or (kind == "quantitative" and not (math.isfinite(gt) and gt >= 0)):
                dropped.append(("invalid_record", f"conversations[{i - 2}]: answer {a_raw!r} does not parse as a {kind} answer ({category})"))
                continue
            untemplated += category == UNTEMPLATED
            qas.append({"category": category, "kind": kind, "question": question, "answer": answer, "gt": gt,
                        "regions": [box for box, _, _ in got]})
        if not qas:
            reasons = "; ".join(d for _, d in dropped[:3]) + (f"; ... ({len(dropped)} turns)" if len(dropped) > 3 else "")
            reason = dropped[0][0] if dropped else "no_labels"
            return Rejection(source, reason, f"no usable turn: {reasons}" if dropped else "no question turns")
        K = placeholder_intrinsics(width, height)
        entry_id = entry.get("id")
        return make_record(
            source,
            id=f"{self.name}/{index:09d}",
            dataset=self.name,
            split=self.options.split,
            views=[{"image": rel, "intrinsics": K.to_list()}],
            qa=qas,
            meta={
                "source": source,
                "entry": index,
                "entry_id": entry_id if isinstance(entry_id, (str, int)) and not isinstance(entry_id, bool) else None,
                "filename": filename,
                "turns": turns,
                "turns_dropped": len(dropped),
                "dropped_reason": dropped[0][1] if dropped else None,
                "turns_untemplated": untemplated,
                "regions_from": regions_from,
                "masks_unused": len(masks) - n_tokens,
                "masks_rescaled": rescaled,
                "intrinsics_estimated": True,
            },
        )

    @staticmethod
    def _region(mask: Any, regions_from: str, k: int, width: int, height: int) -> tuple[tuple[float, float, float, float] | None, str, str]:
        """(box in image pixels, status, detail): status "ok" / "rescaled", or a rejection reason."""
        if regions_from == "bbox":
            try:
                box = bbox_box(mask, width, height)
            except (TypeError, ValueError):
                box = None
            if box is None or not all(math.isfinite(v) for v in box):
                return None, "invalid_record", f"= {mask!r} is not a box inside the {width}x{height} image"
            return box, "ok", ""
        try:
            (h, w), box = rle_box(mask)
        except (ValueError, TypeError) as e:
            return None, "invalid_record", f"is not a COCO RLE mask ({e})"
        if box is None:
            return None, "invalid_record", "is an empty mask"
        if (w, h) == (width, height):
            return box, "ok", ""
        if abs((w / h) / (width / height) - 1) > ASPECT_TOLERANCE:
            return None, "size_mismatch", f"is {w}x{h}, the image {width}x{height} (another aspect ratio)"
        sx, sy = width / w, height / h
        return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy), "rescaled", ""

    def manifest_info(self) -> dict:
        return {
            "source": f"a8cheng/OpenSpatialDataset {self.file}",
            "source_version": self._fingerprint(),
            "regions": "tight corner-origin boxes of the COCO RLE masks (bbox when an entry has no rle), one per <mask> token",
            "gt": "parsed from the answers (vlm3.tasks.object3d.region_qa_gt); unparsable turns dropped and counted in meta",
            "intrinsics": "placeholder: f = image diagonal, principal point at the centre (meta.intrinsics_estimated)",
        }

    def _fingerprint(self) -> str | None:
        """sha256 over the file's name, size and first/last MiB (cheap for a 32 GB file)."""
        if not self.path.is_file():
            return None
        h = hashlib.sha256()
        size = self.path.stat().st_size
        h.update(f"{self.file}\0{size}\0".encode())
        with open(self.path, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read())
        return "sha256:" + h.hexdigest()[:16]


def turn_texts(question_raw: str, answer_raw: str) -> tuple[str, str, int] | str:
    """(question, answer, n regions) with regions as ``{rK}`` (see module doc), or why the turn is dropped."""
    question = _IMAGE_TOKEN.sub("", question_raw)
    count = 0
    mismatch: list[str] = []

    def mask(m: re.Match) -> str:
        nonlocal count
        k = count
        count += 1
        if m.group(1) is not None and int(m.group(1)) != k:
            mismatch.append(f"the question's mask {k} is labelled Region [{m.group(1)}]")
        return "{r" + str(k) + "}"

    question = _DEPTH_TOKEN.sub("", _MASK_TOKEN.sub(mask, question))
    if mismatch:
        return mismatch[0]
    if count == 0:
        return "the question names no region (no <mask> token)"
    if re.search(r"<(?:image|mask)>", answer_raw, re.IGNORECASE):
        return "the answer holds an <image> or <mask> token"
    out = []
    for name, text in (("question", question), ("answer", _DEPTH_TOKEN.sub("", answer_raw))):
        beyond = [int(m.group(1)) for m in _REGION.finditer(text) if int(m.group(1)) >= count]
        if beyond:
            return f"the {name} names Region [{beyond[0]}] but its question has {count} region(s)"
        text = _REGION.sub(lambda m: "{r" + str(int(m.group(1))) + "}", text).strip()
        if not text:
            return f"the {name} is empty"
        out.append(text)
    return out[0], out[1], count
