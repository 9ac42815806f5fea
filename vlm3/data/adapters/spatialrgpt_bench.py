"""SpatialRGPT-Bench: region-referenced spatial questions with reference answers (1,406 entries).

Source: the annotation file of the Hugging Face dataset ``a8cheng/SpatialRGPT-Bench``
(``SpatialRGPT-Bench_v1.json``) and its images, as used by ``scripts/srgpt/eval/srgpt_bench.sh``
and ``llava/eval/eval_spatial.py`` of github.com/AnjieCheng/SpatialRGPT (README, "SpatialRGPT-Bench
Evaluation": images from Omni3D, annotations from the Hugging Face dataset).

Expected tree (``ROOT`` = the folder given with ``--root``)::

    ROOT/
      SpatialRGPT-Bench_v1.json      # a JSON list, one entry per question
      images/<image_info.file_path>  # the dataset's images/ folder (Omni3D images: SUNRGBD/...,
                                     # ARKitScenes/..., hypersim/..., KITTI_object/..., nuScenes/...)
      (or ROOT/<image_info.file_path> directly: ROOT = Omni3D's datasets/ folder, the
       --image-folder of srgpt_bench.sh, with the JSON copied into it)

One entry (fields read by ``eval_spatial.py``)::

    {"id": "qualitative_3TrgWgKqnf",                 # qualitative_* / quantitative_*
     "image_info": {"file_path": "SUNRGBD/.../0000103.jpg", "width": 730, "height": 530},
     "text_q": "Is Region [0] smaller than Region [1]?",
     "conversations": [{"from": "human", "value": "<image>\\nIs Region [0] <mask> smaller ..."},
                       {"from": "gpt", "value": "Incorrect, Region [0] is not smaller in size than Region [1]."}],
     "rle": [{"size": [h, w], "counts": "..."}, ...],  # one COCO RLE mask per region
     "bbox": [[x1, y1, x2, y2], ...],                  # used by the scorer when rle is absent
     "qa_info": {"type": "qualitative", "category": "small_predicate"}}

Conventions and how each is converted
-------------------------------------
Regions. "Region [K]" in the question and answer is the K-th mask of ``rle``. The masks are COCO
run-length encodings (column-major runs starting with background; ``counts`` either the
compressed string of ``pycocotools.mask.encode`` or a plain list), decoded here with numpy
(:func:`decode_rle`; pycocotools is not needed). Each region becomes the tight box around its
mask, as the VLM3 paper names regions ("bounding box region (x0, y0, x1, y1)"): x_min = first
mask column, x_max = last mask column + 1 (continuous corner-origin pixels, so the box covers
the mask's pixels exactly, like ``Object3D.box2d``); same for rows. Without ``rle`` the scorer
fills ``mask[y1:y2, x1:x2]`` from ``bbox`` after clamping it to the image (``eval_spatial.py``,
``clamp_box`` then ``int``), and so does this adapter. Text: "Region [K]" becomes ``{rK}`` in
``RegionQA.question`` / ``answer`` (the task writes its own box text there); ``<image>``,
``<mask>`` and ``<depth>`` tokens are dropped (``text_q`` has none).

Kinds and categories (``qa_info``; the official scorer is
``scripts/srgpt/eval/evaluate_spatial_with_gpt4.py``). ``category`` is kept as the bench names it:
``{left,right,above,below,big,small,tall,short,wide,thin,behind,front}_predicate`` -> kind
qualitative (gt: does the question's claim hold); ``{left,right,above,below,tall,short}_choice``
-> kind choice (gt: index of the region the reference answer names; the scorer counts choices as
qualitative, in the predicate's group); ``distance_data``, ``horizontal_distance_data``,
``vertical_distance_data``, ``width_data``, ``height_data`` -> quantitative (gt: metres);
``direction`` (type quantitative in the file) -> direction (gt: clock hour; the scorer counts
it as quantitative, success within 1 hour).

Ground truth. The bench stores only answer text; the gt of every entry is parsed from its
reference answer at prepare time with the same parser as model answers
(``vlm3.tasks.object3d.region_qa_gt``): the answer templates of
``dataset_pipeline/osdsynth/processor/prompt_template.py`` ("Yes/Indeed/Correct, ...",
"No/Incorrect, ...", "In fact, A is to the right of B." / "Actually, A might be smaller than B."
= false, "That is True/False.", "[X] is more to the left.", "[B] is roughly at [X] o'clock from
[A]."), lengths as ``human_like_distance`` writes them (``pointcloud.py``: "<value> centimeters /
inches / meters / feet", value rounded to 2 decimals; so sub-centimetre and "0.0 inches"
ground truths occur). An answer that does not parse is a rejection ``invalid_record`` naming the
entry; nothing is guessed.

Intrinsics. The annotation file has no calibration (when an entry's ``image_info`` carries an
Omni3D-style 3x3 ``K`` it is used, ``intrinsics_estimated`` False). Otherwise each image gets the
placeholder of ``hpatches.py``: f = image diagonal in pixels, principal point at the centre,
``meta["intrinsics_estimated"] = True``. The questions are referenced by 2D boxes and their
answers are fixed text, so the focal length only sets how much focal-length unification scales
the image; no label depends on it. ``metric_scale`` is True (answers are in metres).

Units. One unit per 100 consecutive entries of the JSON list (``00000``, ``00100``, ...); a record
per entry, id ``spatialrgpt-bench/<entry id>``. Entries sharing an image become separate records.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, LayoutError, Rejection, register
from vlm3.data.adapters.hpatches import placeholder_intrinsics
from vlm3.data.adapters.kit import image_size
from vlm3.data.records import Record
from vlm3.data.scenes import FrameError
from vlm3.data.validate import make_record
from vlm3.geometry.camera import Intrinsics

BENCH_JSON = "SpatialRGPT-Bench_v1.json"
IMAGES_DIR = "images"
CHUNK = 100

_REGION = re.compile(r"\bRegion\s*\[\s*(\d+)\s*\]", re.IGNORECASE)
_TOKENS = re.compile(r"<(?:image|mask|depth)>", re.IGNORECASE)


# --- COCO run-length encoding ---------------------------------------------------------------------


def rle_counts(counts: str | list[int]) -> list[int]:
    """Run lengths of a COCO RLE ``counts``: a list as is, or the compressed string of
    ``pycocotools`` (``rleFrString``: 5-bit groups, 0x20 = more, 0x10 = sign, offset 48, runs after
    the second stored as differences to the run two before)."""
    if isinstance(counts, list):
        return [int(c) for c in counts]
    if not isinstance(counts, str):
        raise ValueError(f"RLE counts must be a string or a list, got {type(counts).__name__}")
    out: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            if p >= len(counts):
                raise ValueError("RLE counts string ends inside a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE counts string has an invalid character {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_rle(rle: dict) -> np.ndarray:
    """A COCO RLE ``{"size": [h, w], "counts": ...}`` -> bool mask (h, w); ValueError when invalid."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE mask needs 'size' and 'counts'")
    h, w = (int(v) for v in rle["size"])
    counts = rle_counts(rle["counts"])
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise ValueError(f"RLE runs sum to {sum(counts)}, expected h*w = {h * w} (size {h}x{w})")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True  # runs alternate background, foreground, ...
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")  # column-major, as COCO stores masks


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight corner-origin box (x_min, y_min, x_max, y_max) around a mask's pixels; None if empty."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def bbox_box(bbox: Any, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The scorer's box fallback: clamp to the image, truncate to int, fill [y1:y2, x1:x2]."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    x1, x2 = (int(max(min(width, v), 0)) for v in (x1, x2))
    y1, y2 = (int(max(min(height, v), 0)) for v in (y1, y2))
    return (float(x1), float(y1), float(x2), float(y2)) if x2 > x1 and y2 > y1 else None


# --- text -----------------------------------------------------------------------------------------


def to_template(text: str) -> str:
    """Bench text -> RegionQA text: "Region [K]" -> "{rK}", special tokens dropped, spaces collapsed."""
    text = _TOKENS.sub(" ", text)
    text = _REGION.sub(lambda m: "{r" + m.group(1) + "}", text)
    return re.sub(r"\s+", " ", text).strip()


def qa_kind(qa_type: str, category: str) -> str | None:
    """The RegionQA kind of an entry's ``qa_info`` (see module doc), or None when unknown."""
    if category == "direction":
        return "direction"
    if category.endswith("_choice"):
        return "choice"
    if qa_type in ("qualitative", "quantitative"):
        return qa_type
    return None


def _as_dict(value: Any) -> Any:
    """Hugging Face exports serialise nested fields as Python-literal strings; accept those too."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _intrinsics(info: dict, width: int, height: int) -> tuple[Intrinsics, bool]:
    """(intrinsics, estimated): Omni3D's ``K`` when the entry has a valid one, else the placeholder."""
    K = info.get("K")
    try:
        M = np.asarray(K, dtype=np.float64)
        if M.shape == (3, 3) and np.all(np.isfinite(M)) and M[0, 0] > 0 and M[1, 1] > 0:
            return Intrinsics(float(M[0, 0]), float(M[1, 1]), float(M[0, 2]), float(M[1, 2]), width, height), False
    except (TypeError, ValueError):
        pass
    return placeholder_intrinsics(width, height), True


@register
class SpatialRGPTBenchAdapter(Adapter):
    """SpatialRGPT-Bench entries -> one record per question (``qa``: regions as tight mask boxes)."""

    name: ClassVar[str] = "spatialrgpt-bench"
    description: ClassVar[str] = (
        "SpatialRGPT-Bench (a8cheng/SpatialRGPT-Bench): 1,406 region questions with reference answers, masks as COCO RLE"
    )
    layout: ClassVar[str] = (
        f"ROOT/{BENCH_JSON}                 JSON list: id, image_info.file_path, text_q, conversations, rle, bbox, qa_info\n"
        f"ROOT/{IMAGES_DIR}/<image_info.file_path>   the images (or ROOT/<file_path>: ROOT = Omni3D's datasets/ folder)"
    )
    labels: ClassVar[tuple[str, ...]] = ("qa",)

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        if self.options.extra:
            raise ValueError(f"{self.name}: takes no options, got {sorted(self.options.extra)}")
        self._entries: list | None = None

    def entries(self) -> list:
        """The annotation list; LayoutError when the file is missing or not a JSON list."""
        if self._entries is None:
            path = self.root / BENCH_JSON
            if not path.is_file():
                raise LayoutError(f"{self.root}: no {BENCH_JSON} found; expected:\n{self.layout}")
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise LayoutError(f"{path}: not readable JSON ({e}); expected:\n{self.layout}") from None
            if not isinstance(data, list) or not data:
                raise LayoutError(f"{path}: expected a non-empty JSON list of entries; expected:\n{self.layout}")
            self._entries = data
        return self._entries

    def units(self) -> list[str]:
        entries = self.entries()
        first = entries[0].get("image_info") if isinstance(entries[0], dict) else None
        first = _as_dict(first)
        path = first.get("file_path") if isinstance(first, dict) else None
        if not (self.root / IMAGES_DIR).is_dir() and not (isinstance(path, str) and (self.root / path).is_file()):
            raise LayoutError(f"{self.root}: no {IMAGES_DIR}/ folder (and the first entry's image {path!r} is not under the root); expected:\n{self.layout}")
        return [f"{start:05d}" for start in range(0, len(entries), CHUNK)]

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        entries = self.entries()
        start = int(unit)
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                seen.setdefault(entry["id"], i)
        for index in range(start, min(start + CHUNK, len(entries))):
            yield self._entry(index, entries[index], seen)

    def _entry(self, index: int, entry: Any, first_index: dict[str, int]) -> Record | Rejection:
        source = f"{BENCH_JSON}[{index}]"
        if not isinstance(entry, dict):
            return Rejection(source, "invalid_record", f"entry is a {type(entry).__name__}, not an object")
        entry_id = entry.get("id")
        if not isinstance(entry_id, str) or not entry_id:
            return Rejection(source, "invalid_record", "missing 'id'")
        source = f"{BENCH_JSON}[{index}] ({entry_id})"
        if first_index.get(entry_id) != index:
            return Rejection(source, "invalid_record", f"duplicate id (first at entry {first_index.get(entry_id)})")
        info, qa_info = _as_dict(entry.get("image_info")), _as_dict(entry.get("qa_info"))
        if not isinstance(info, dict) or not isinstance(info.get("file_path"), str):
            return Rejection(source, "invalid_record", "missing image_info.file_path")
        if not isinstance(qa_info, dict) or not isinstance(qa_info.get("category"), str):
            return Rejection(source, "invalid_record", "missing qa_info.category")
        category = qa_info["category"]
        kind = qa_kind(str(qa_info.get("type")), category)
        if kind is None:
            return Rejection(source, "invalid_record", f"unknown qa_info.type {qa_info.get('type')!r} for category {category!r}")
        conversations = _as_dict(entry.get("conversations"))
        try:
            answer_raw = conversations[1]["value"]
            question_raw = entry.get("text_q") or conversations[0]["value"]
        except (TypeError, KeyError, IndexError):
            return Rejection(source, "invalid_record", "conversations must hold the question and the reference answer")
        if not isinstance(question_raw, str) or not isinstance(answer_raw, str):
            return Rejection(source, "invalid_record", "question and answer must be text")
        question, answer = to_template(question_raw), to_template(answer_raw)

        file_path = info["file_path"]
        rel = f"{IMAGES_DIR}/{file_path}"
        if not (self.root / rel).is_file() and (self.root / file_path).is_file():
            rel = file_path
        try:
            width, height = image_size(self.root / rel)
        except FrameError as e:
            detail = e.detail if e.reason != "missing_file" else f"image not found at {IMAGES_DIR}/{file_path} or {file_path}"
            return Rejection(source, e.reason, detail)
        stated = (info.get("width"), info.get("height"))
        if all(isinstance(v, int) for v in stated) and stated != (width, height):
            return Rejection(source, "size_mismatch", f"{rel} is {width}x{height}, image_info says {stated[0]}x{stated[1]}")

        regions, problem = self._regions(entry, width, height)
        if problem is not None:
            return Rejection(source, *problem)
        from vlm3.tasks.object3d import region_qa_gt  # the task's parser; imported late (tasks import records)

        gt = region_qa_gt(kind, category, question, answer)
        if gt is None:
            return Rejection(source, "invalid_record", f"reference answer {answer_raw!r} does not parse as a {kind} answer ({category})")
        K, estimated = _intrinsics(info, width, height)
        return make_record(
            source,
            id=f"{self.name}/{entry_id}",
            dataset=self.name,
            split=self.options.split,
            views=[{"image": rel, "intrinsics": K.to_list()}],
            qa=[{"category": category, "kind": kind, "question": question, "answer": answer, "gt": gt, "regions": regions}],
            meta={"source": source, "entry": entry_id, "intrinsics_estimated": estimated, "image": file_path},
        )

    def _regions(self, entry: dict, width: int, height: int) -> tuple[list, tuple[str, str] | None]:
        """Tight boxes of the entry's masks (or its clamped bbox list), or a rejection reason."""
        rles, bboxes = _as_dict(entry.get("rle")), _as_dict(entry.get("bbox"))
        boxes = []
        if rles:
            if not isinstance(rles, list):
                return [], ("invalid_record", "rle must be a list of masks")
            for k, rle in enumerate(rles):
                try:
                    mask = decode_rle(rle)
                except (ValueError, TypeError) as e:
                    return [], ("invalid_record", f"rle[{k}]: {e}")
                if mask.shape != (height, width):
                    return [], ("size_mismatch", f"rle[{k}] is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
                box = mask_box(mask)
                if box is None:
                    return [], ("invalid_record", f"rle[{k}] is an empty mask")
                boxes.append(box)
        elif bboxes:
            for k, bbox in enumerate(bboxes if isinstance(bboxes, list) else []):
                try:
                    box = bbox_box(bbox, width, height)
                except (TypeError, ValueError):
                    box = None
                if box is None or not all(math.isfinite(v) for v in box):
                    return [], ("invalid_record", f"bbox[{k}] = {bbox!r} is not a box inside the image")
                boxes.append(box)
        if not boxes:
            return [], ("invalid_record", "no region masks (rle) or boxes (bbox)")
        return boxes, None

    def manifest_info(self) -> dict:
        return {
            "source": f"a8cheng/SpatialRGPT-Bench {BENCH_JSON}",
            "regions": "tight corner-origin boxes around the decoded COCO RLE masks",
            "gt": "parsed from the reference answers (vlm3.tasks.object3d.region_qa_gt)",
            "intrinsics": "placeholder unless image_info has K: f = image diagonal, principal point at the centre (meta.intrinsics_estimated)",
        }
