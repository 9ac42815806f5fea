"""SpatialRGPT's training QA (adapter ``spatialrgpt-train``) turned into object-task samples.

The fixture is built in the release's original layout (a8cheng/OpenSpatialDataset): one JSON list
``result_10_depth_convs.json`` whose entries hold ``filename``, a multi-turn ``conversations`` with
``<image>`` / ``<mask> <depth>`` tokens and answers naming "Region [K]" (K-th mask of the turn),
and one COCO RLE mask (both RLE forms) and box per ``<mask>`` token; images at
``images/<filename>.jpg``. Mask extents are computed here with numpy from the masks the RLE was
written from; box text is decoded back to pixels with ``vlm3.textref``.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from support import assert_round_trip, rle_encode, rle_string, run_adapter

from vlm3.data.adapters import AdapterOptions, LayoutError, Rejection, get_adapter
from vlm3.data.adapters.spatialrgpt_bench import decode_rle, mask_box
from vlm3.data.adapters.spatialrgpt_train import QUESTION_TEMPLATES, TRAIN_JSON, rle_box, scan_entries
from vlm3.data.records import Record

W, H = 64, 48


def extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(first column, first row, last column + 1, last row + 1) of the mask's pixels."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def blob(h: int, w: int, cx: float, cy: float, rx: float, ry: float, notch: bool = True) -> np.ndarray:
    jj, ii = np.mgrid[0:h, 0:w]
    mask = ((ii + 0.5 - cx) / rx) ** 2 + ((jj + 0.5 - cy) / ry) ** 2 <= 1
    if notch:
        mask &= ~((ii > cx) & (jj > cy + ry / 3))
    return mask


MASKS = {  # objects of the fixture image, none touching the right or bottom border
    "table": blob(H, W, 16, 20, 11, 8),
    "chair": blob(H, W, 40, 30, 8, 9),
    "lamp": blob(H, W, 54, 12, 2.5, 9, notch=False),
}

# (human message, gpt answer, objects of the question's <mask> tokens in order, expected (category, kind, gt) or None = dropped)
TURNS = [
    ("<image>\nDoes <mask> <depth> have a greater width compared to <mask> <depth>?",
     "In fact, Region [0] might be narrower than Region [1].", ["table", "chair"], ("wide_predicate", "qualitative", False)),
    ("Which of these two, <mask> <depth> or <mask> <depth>, stands taller?",
     "Standing taller between the two is Region [0].", ["lamp", "chair"], ("tall_choice", "choice", 0)),
    ("How tall is <mask> <depth>?", "Region [0] is 1.52 meters tall.", ["lamp"], ("height_data", "quantitative", 1.52)),
    ("If you are at <mask> <depth>, where will you find <mask> <depth>?",
     "Region [1] is roughly at 3 o'clock from Region [0].", ["chair", "table"], ("direction", "direction", 3)),
    ("How far apart are <mask> <depth> and <mask> <depth> vertically?",  # the generator's "overlap" answer: no value
     "Region [0] and Region [1] overlap, so it's hard to tell how far apart they are vertically.", ["table", "lamp"], None),
    ("Could you tell me whether <mask> <depth> sits to the left of <mask> <depth> in this picture’s layout?",  # LLM-rephrased
     "Yes, Region [0] sits to the left of Region [1].", ["table", "chair"], ("untemplated", "qualitative", True)),
    ("What is the distance between <mask> <depth> and <mask> <depth>?",
     "Region [0] and Region [1] are 37.4 centimeters apart.", ["chair", "lamp"], ("distance_data", "quantitative", 0.374)),
]


def conversation(turns) -> list[dict]:
    out = []
    for human, gpt, *_ in turns:
        out += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return out


def rles(objects: list[str], size: tuple[int, int] = (H, W), masks=MASKS) -> list[dict]:
    out = []
    for k, name in enumerate(objects):
        counts = rle_encode(masks[name])
        out.append({"size": list(size), "counts": counts if k % 3 == 0 else rle_string(counts)})  # both RLE forms
    return out


def make_release(root, *, jsonl: bool = False, name: str = TRAIN_JSON) -> list[dict]:
    """The release's layout under ``root``; returns the entries written."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for stem in ("0001a2b3c4d5e6f7", "00aa11bb22cc33dd", "00ffee00ffee00ff", "0badc0ffee000000", "0abcdef012345678"):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.jpg", quality=90)
    objects = [o for *_, objs, _ in TURNS for o in objs]
    half = {k: m[::2, ::2] for k, m in MASKS.items()}  # an RLE at half the image's resolution
    entries = [
        {"id": 7, "filename": "0001a2b3c4d5e6f7", "conversations": conversation(TURNS), "rle": rles(objects),
         "bbox": [[0, 0, 1, 1]] * len(objects)},  # rle wins over bbox
        {"filename": "00aa11bb22cc33dd", "bbox": [[4.7, 3.2, 20.9, 15.5], [30.0, 20.0, 99.0, 40.0]],
         "conversations": conversation([("<image>\nIs <mask> <depth> above <mask> <depth>?", "Yes, Region [0] is above Region [1].")])},
        {"filename": "00ffee00ffee00ff", "rle": rles(["table", "lamp"]),
         "conversations": conversation([("<image>\nHow far is <mask> <depth> from <mask> <depth> vertically?",
                                         "Overlapping Region [0] and Region [1] makes it challenging to determine their vertical distance.")])},
        {"filename": "0badc0ffee000000", "rle": rles(["table"]),
         "conversations": conversation([("<image>\nIs <mask> <depth> bigger than <mask> <depth>?", "No, Region [0] is not bigger than Region [1].")])},
        {"filename": "0abcdef012345678", "rle": rles(["chair", "table"], size=(H // 2, W // 2), masks=half),
         "conversations": conversation([("<image>\nDoes Region [0] <mask> appear on the right side of Region [1] <mask>?",
                                         "Yes, Region [0] is to the right of Region [1].")])},
        {"filename": "0missing00000000", "rle": rles(["table"]), "conversations": conversation([("<image>\nHow wide is <mask>?", "It is 2.1 feet.")])},
    ]
    parts = [json.dumps(e, ensure_ascii=False, indent=None if jsonl else 1) for e in entries]
    text = "\n".join(parts) + "\n" if jsonl else "[\n" + ",\n".join(parts) + "\n]\n"
    (root / name).write_text(text, encoding="utf-8")
    return entries


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "osd"
    return root, make_release(root)


def expected_texts(turn, boxes_text: list[str]) -> tuple[str, str]:
    """SpatialRGPT's wording with <image> removed, the turn's k-th <mask> <depth> and "Region [k]"
    replaced by ``boxes_text[k]``, capitalised where a sentence starts with it."""
    human, gpt = turn[0], turn[1]
    question = human.replace("<image>\n", "")
    for text in boxes_text:
        question = question.replace("<mask> <depth>", text, 1)
    answer = re.sub(r"Region \[(\d+)\]", lambda m: boxes_text[int(m.group(1))], gpt)
    cap = lambda s: s[0].upper() + s[1:]  # noqa: E731
    return cap(question), cap(answer)


# --- the adapter ---------------------------------------------------------------------------------


def test_rle_box_equals_the_decoded_mask_extent():
    rng = np.random.default_rng(3)
    for _ in range(40):
        h, w = int(rng.integers(3, 30)), int(rng.integers(3, 30))
        mask = rng.random((h, w)) < rng.uniform(0.001, 0.3)
        counts = rle_encode(mask)
        for form in (counts, rle_string(counts)):
            size, box = rle_box({"size": [h, w], "counts": form})
            assert size == (h, w)
            assert box == (None if not mask.any() else tuple(float(v) for v in extent(mask)))
            assert box == mask_box(decode_rle({"size": [h, w], "counts": form}))
    with pytest.raises(ValueError, match="sum"):
        rle_box({"size": [4, 4], "counts": [3, 2]})


def test_entries_become_records_of_their_usable_turns(release, tmp_path):
    root, entries = release
    records, rejections = run_adapter("spatialrgpt-train", root)
    assert [r.id for r in records] == ["spatialrgpt-train/000000000", "spatialrgpt-train/000000001", "spatialrgpt-train/000000004"]
    assert_round_trip(records, tmp_path)

    rec = records[0]
    assert rec.views[0].image == "images/0001a2b3c4d5e6f7.jpg" and rec.views[0].intrinsics[4:] == [W, H]
    kept = [t for t in TURNS if t[3] is not None]
    assert len(rec.qa) == len(kept) == 6
    assert rec.meta["turns"] == 7 and rec.meta["turns_dropped"] == 1 and "overlap" in rec.meta["dropped_reason"]
    assert rec.meta["turns_untemplated"] == 1 and rec.meta["regions_from"] == "rle" and rec.meta["entry_id"] == 7
    for qa, (human, gpt, objs, (category, kind, gt)) in zip(rec.qa, kept):
        assert (qa.category, qa.kind) == (category, kind)
        assert qa.gt == pytest.approx(gt) and type(qa.gt) is type(gt)
        assert qa.regions == [tuple(float(v) for v in extent(MASKS[o])) for o in objs]  # the turn's own masks, in order
        q, a = expected_texts((human, gpt), [f"{{r{k}}}" for k in range(len(objs))])
        assert (qa.question[0].upper() + qa.question[1:], qa.answer[0].upper() + qa.answer[1:]) == (q, a)
    assert rec.qa[0].question == "Does {r0} have a greater width compared to {r1}?"

    boxed = records[1]  # no rle: SpatialRGPT's bbox fill (clamped to the image, truncated)
    assert boxed.meta["regions_from"] == "bbox" and boxed.qa[0].regions == [(4.0, 3.0, 20.0, 15.0), (30.0, 20.0, 64.0, 40.0)]
    assert boxed.qa[0].category == "above_predicate" and boxed.qa[0].gt is True

    scaled = records[2]  # RLE at half resolution: boxes scaled to the image; "Region [K] <mask>" questions (the bench's form)
    assert scaled.meta["masks_rescaled"] is True
    half_boxes = [extent(MASKS[o][::2, ::2]) for o in ("chair", "table")]
    assert scaled.qa[0].regions == [tuple(2.0 * v for v in b) for b in half_boxes]
    assert scaled.qa[0].question == "Does {r0} appear on the right side of {r1}?" and scaled.qa[0].gt is True
    assert scaled.qa[0].category == "right_predicate" and scaled.meta["turns_untemplated"] == 0

    by_source = {r.source.split(" ")[0]: r for r in rejections}
    assert set(by_source) == {f"{TRAIN_JSON}[2]", f"{TRAIN_JSON}[3]", f"{TRAIN_JSON}[5]"}
    assert by_source[f"{TRAIN_JSON}[2]"].reason == "invalid_record" and "no usable turn" in by_source[f"{TRAIN_JSON}[2]"].detail
    assert "2 <mask> tokens but 1 rle" in by_source[f"{TRAIN_JSON}[3]"].detail
    assert by_source[f"{TRAIN_JSON}[5]"].reason == "missing_file"


def test_streaming_units_are_byte_ranges_and_any_chunking_gives_the_same_records(release, tmp_path):
    root, entries = release
    path = root / TRAIN_JSON
    data = path.read_bytes()
    starts, end = scan_entries(path, block=7)  # tiny blocks: entries straddle many reads
    expected = []
    for k, e in enumerate(entries):  # where each entry's text begins, in bytes (the file has a non-ASCII ’)
        expected.append(data.index(json.dumps(e, ensure_ascii=False, indent=1).encode("utf-8"), expected[-1] + 1 if expected else 0))
    assert list(starts) == expected and end == data.rindex(b"}") + 1
    assert scan_entries(path) == (starts, end)

    adapter = get_adapter("spatialrgpt-train")
    units = adapter(root, AdapterOptions(extra={"chunk_size": "2"})).units()
    assert units == sorted(units) and len(units) == 3 and units[1].startswith("000000002:")
    base = [r.model_dump() if isinstance(r, Record) else r for r in run_adapter("spatialrgpt-train", root)[0]]
    for chunk in ("1", "4"):
        again = run_adapter("spatialrgpt-train", root, extra={"chunk_size": chunk})[0]
        assert [r.model_dump() for r in again] == base

    lines = tmp_path / "jsonl"
    make_release(lines, jsonl=True, name="train.jsonl")
    jl = run_adapter("spatialrgpt-train", lines, extra={"file": "train.jsonl"})[0]
    assert [r.qa for r in jl] == [Record(**b).qa for b in base]


def test_wrong_root_is_a_layout_error(release, tmp_path):
    root, _ = release
    adapter = get_adapter("spatialrgpt-train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match=TRAIN_JSON):
        adapter(empty, None).units()
    bench_like = tmp_path / "bench"  # a JSON list that is not SpatialRGPT's training entries
    (bench_like / "images").mkdir(parents=True)
    (bench_like / TRAIN_JSON).write_text(json.dumps([{"id": "x", "text_q": "?"}]))
    with pytest.raises(LayoutError, match="filename"):
        adapter(bench_like, None).units()
    (bench_like / TRAIN_JSON).write_text('[{"filename": "a", "conversations": []}, {"filename": ')
    with pytest.raises(LayoutError, match="not valid JSON|cut off"):
        adapter(bench_like, None).units()
    (bench_like / TRAIN_JSON).write_text('"just a string"')
    with pytest.raises(LayoutError, match="not a JSON list"):
        adapter(bench_like, None).units()
    import shutil

    shutil.rmtree(root / "images")
    with pytest.raises(LayoutError, match="images/"):
        adapter(root, None).units()


def test_every_generator_question_template_is_known():
    assert QUESTION_TEMPLATES["does [r] have a greater width compared to [r]?"] == "wide_predicate"
    assert QUESTION_TEMPLATES["how far is [r] from [r] vertically?"] == "vertical_distance_data"
    assert QUESTION_TEMPLATES["how far is [r] from [r]?"] == "distance_data"
    assert len(set(QUESTION_TEMPLATES.values())) == 12 + 8 + 6


# --- training samples of the object task -----------------------------------------------------------


def test_training_samples_keep_the_wording_with_box_text_around_the_masks(release):
    from vlm3.settings import make_settings
    from vlm3.tasks.samples import build_sample
    from vlm3.textref import decode_box

    root, _ = release
    rec = run_adapter("spatialrgpt-train", root)[0][0]
    image = np.asarray(Image.open(root / rec.views[0].image).convert("RGB"))
    kept = [t for t in TURNS if t[3] is not None]

    # Native pixels and 192 text units: x -> 3x, y -> 4y exactly, so the box text is computed by hand.
    exact = make_settings({"unify": False, "n_coords": 192, "points_per_sample": len(kept)})
    sample = build_sample(rec, [image], "object", exact, np.random.default_rng(5))
    assert sorted(q.label for q in sample.queries) == list(range(len(kept)))
    assert [q.label for q in sample.queries] != list(range(len(kept)))  # the draw's order
    texts = [m["content"][-1]["text"] for m in sample.messages]
    assert texts == [t for q in sample.queries for t in (q.question, q.answer)]
    for q in sample.queries:
        human, gpt, objs, (_, kind, gt) = kept[q.label]
        boxes = []
        for o in objs:
            x0, y0, x1, y1 = extent(MASKS[o])
            boxes.append(f"bounding box region ({3 * x0}, {4 * y0}, {3 * x1}, {4 * y1})")
        assert (q.question, q.answer) == expected_texts((human, gpt), boxes)
        assert q.gt == pytest.approx(gt) and q.fields["kind"] == kind
        for text, o in zip(re.findall(r"\((\d+), (\d+), (\d+), (\d+)\)", q.question), objs):
            assert decode_box(tuple(int(v) for v in text), W, H, 192) == tuple(float(v) for v in extent(MASKS[o]))

    # The recipe (focal-length unification, default text range): the decoded box contains the
    # mask's pixels, up to the text coordinates' rounding (half a unit).
    recipe = make_settings({"points_per_sample": 3})
    sample = build_sample(rec, [image], "object", recipe, np.random.default_rng(1))
    K0, K1 = rec.views[0].K, sample.view.record.views[0].K
    n = recipe.n_coords
    tol_x, tol_y = K1.width / (2 * n) + 1e-9, K1.height / (2 * n) + 1e-9
    assert len(sample.queries) == 3
    for q in sample.queries:
        objs = kept[q.label][2]
        found = re.findall(r"bounding box region \((\d+), (\d+), (\d+), (\d+)\)", q.question)
        assert len(found) == len(objs)
        for text, o in zip(found, objs):
            bx0, by0, bx1, by1 = decode_box(tuple(int(v) for v in text), K1.width, K1.height, n)
            x0, y0, x1, y1 = extent(MASKS[o])
            ux0, ux1 = ((x - K0.cx) / K0.fx * K1.fx + K1.cx for x in (x0, x1))
            uy0, uy1 = ((y - K0.cy) / K0.fy * K1.fy + K1.cy for y in (y0, y1))
            assert bx0 <= ux0 + tol_x and by0 <= uy0 + tol_y and bx1 >= ux1 - tol_x and by1 >= uy1 - tol_y
            assert abs(bx0 - ux0) <= tol_x and abs(bx1 - ux1) <= tol_x and abs(by0 - uy0) <= tol_y and abs(by1 - uy1) <= tol_y


def test_rejections_name_the_entry(release):
    root, _ = release
    out = list(get_adapter("spatialrgpt-train")(root, None).convert_all())
    rejected = [r for r in out if isinstance(r, Rejection)]
    assert all(r.source.startswith(f"{TRAIN_JSON}[") for r in rejected) and len(rejected) == 3
