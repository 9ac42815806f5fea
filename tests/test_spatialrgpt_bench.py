"""SpatialRGPT-Bench (adapter, object task questions asked as written, bench spatialrgpt-bench).

The fixture is built in the bench's original layout: ``SpatialRGPT-Bench_v1.json`` (entries with
``text_q``, ``conversations``, COCO RLE masks, ``qa_info``) and ``images/<file_path>``. It has an
entry for every category of the bench and every answer template of SpatialRGPT's generator
(``dataset_pipeline/osdsynth/processor/prompt_template.py``), lengths as its ``human_like_distance``
writes them, a 0 m vertical distance and a sub-centimetre width. Region boxes are checked against
boxes computed here from the masks, every reference answer against the gt it was written from, and
the bench is run end to end with the ground-truth answerer.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from PIL import Image
from support import assert_round_trip, rle_encode, rle_string, run_adapter

from vlm3.data.adapters import LayoutError, get_adapter
from vlm3.data.adapters.spatialrgpt_bench import BENCH_JSON, decode_rle, rle_counts
from vlm3.data.records import Object3D, Record, RegionQA
from vlm3.data.unify import unify_record
from vlm3.tasks.object3d import (
    SRGPT_GROUPS,
    RegionContext,
    object_metrics,
    parse_distance,
    parse_region_answer,
    region_qa_gt,
)

W, H = 64, 48
N_IMAGES = 6
FT, INCH, CM = 0.3048, 0.0254, 0.01

# --- the generator's templates (prompt_template.py), "[A]"/"[B]"/"[X]" as there ---------------------

PREDICATE_QUESTIONS = {
    "left": "Is [A] to the left of [B] from the viewer's perspective?",
    "right": "Does [A] appear on the right side of [B]?",
    "above": "Is [A] above [B]?",
    "below": "Can you confirm if [A] is positioned below [B]?",
    "wide": "Is [A] wider than [B]?",
    "big": "Does [A] have a larger size compared to [B]?",
    "tall": "Is [A] taller than [B]?",
    "short": "Can you confirm if [A] is shorter than [B]?",
    "thin": "Is [A] thinner than [B]?",
    "small": "Is [A] smaller than [B]?",
    "behind": "Is [A] further to camera compared to [B]?",
    "front": "Is [A] closer to the viewer compared to [B]?",
}
TRUE_ANSWERS = {
    "left": ["Yes, [A] is to the left of [B].", "Indeed, [A] is positioned on the left side of [B].", "Correct, you'll find [A] to the left of [B]."],
    "right": ["Yes, [A] is to the right of [B].", "Indeed, [A] is positioned on the right side of [B].", "Correct, you'll find [A] to the right of [B]."],
    "above": ["Yes, [A] is above [B].", "Indeed, [A] is positioned over [B].", "Correct, [A] is located above [B]."],
    "below": ["Yes, [A] is below [B].", "Indeed, [A] is positioned under [B].", "Correct, [A] is located below [B]."],
    "wide": ["Yes, [A] is wider than [B].", "Indeed, [A] has a greater width compared to [B].", "Correct, the width of [A] exceeds that of [B]."],
    "big": ["Yes, [A] is bigger than [B].", "Indeed, [A] has a larger size compared to [B].", "Correct, [A] is larger in size than [B]."],
    "tall": ["Yes, [A] is taller than [B].", "Indeed, [A] has a greater height compared to [B].", "Correct, [A] is much taller as [B]."],
    "short": ["Yes, [A] is shorter than [B].", "Indeed, [A] has a lesser height compared to [B].", "Correct, [A] is not as tall as [B]."],
    "thin": ["Yes, [A] is thinner than [B].", "Indeed, [A] has a lesser width compared to [B].", "Correct, [A]'s width is less than [B]'s."],
    "small": ["Yes, [A] is smaller than [B].", "Indeed, [A] has a smaller size compared to [B].", "Correct, [A] occupies less space than [B]."],
    "behind": ["Yes.", "Yes, it is.", "Yes, it is behind [B].", "That is True.", "Yes, [A] is further from the viewer.", "Yes, [A] is behind [B]."],
    "front": ["Yes.", "Yes, it is.", "Yes, it is in front of [B].", "That is True.", "Yes, [A] is closer to the viewer.", "Yes, [A] is in front of [B]."],
}
FALSE_ANSWERS = {
    "left": ["No, [A] is not to the left of [B].", "In fact, [A] is to the right of [B].", "Incorrect, [A] is not on the left side of [B]."],
    "right": ["No, [A] is not to the right of [B].", "In fact, [A] is to the left of [B].", "Incorrect, [A] is not on the right side of [B]."],
    "above": ["No, [A] is not above [B].", "Actually, [A] is below [B].", "Incorrect, [A] is not positioned above [B]."],
    "below": ["No, [A] is not below [B].", "Actually, [A] is above [B].", "Incorrect, [A] is not positioned below [B]."],
    "wide": ["No, [A] is not wider than [B].", "In fact, [A] might be narrower than [B].", "Incorrect, [A]'s width does not surpass [B]'s."],
    "big": ["No, [A] is not bigger than [B].", "Actually, [A] might be smaller than [B].", "Incorrect, [A] is not larger than [B]."],
    "tall": ["No, [A] is not taller than [B].", "In fact, [A] may be shorter than [B].", "Incorrect, [A]'s height is not larger of [B]'s."],
    "short": ["No, [A] is not shorter than [B].", "In fact, [A] may be taller than [B].", "Incorrect, [A]'s height does not fall short of [B]'s."],
    "thin": ["No, [A] is not thinner than [B].", "In fact, [A] might be wider than [B].", "Incorrect, [A]'s width is not less than [B]'s."],
    "small": ["No, [A] is not smaller than [B].", "Actually, [A] might be larger than [B].", "Incorrect, [A] is not smaller in size than [B]."],
    "behind": ["No.", "No, it is not.", "No, it is in front of [B].", "That is False.", "No, [A] is closer to the viewer.", "No, [B] is in front of [A]."],
    "front": ["No.", "No, it is not.", "No, it is behind [B].", "That is False.", "No, [A] is further to the viewer.", "No, [A] is behind [B]."],
}
CHOICES = {  # category -> (question, answer templates)
    "left_choice": ("Which is more to the left, [A] or [B]?", ["[X] is more to the left.", "From the viewer's perspective, [X] appears more on the left side.", "Positioned to the left is [X]."]),
    "right_choice": ("Between [A] and [B], which one appears on the right side from the viewer's perspective?", ["[X] is more to the right.", "From the viewer's perspective, [X] appears more on the right side.", "Positioned to the right is [X]."]),
    "above_choice": ("Who is higher up, [A] or [B]?", ["[X] is above.", "Positioned higher is [X].", "[X] is higher up."]),
    "below_choice": ("Which is below, [A] or [B]?", ["[X] is below.", "Positioned lower is [X].", "[X] is lower down."]),
    "tall_choice": ("Who is taller, [A] or [B]?", ["[X] is taller.", "With more height is [X].", "Standing taller between the two is [X]."]),
    "short_choice": ("Between [A] and [B], which one has less height?", ["[X] is shorter.", "With less height is [X].", "Standing shorter between the two is [X]."]),
}
# (category, question, answer templates, single region)
QUANTITIES = [
    ("distance_data", "How far apart are [A] and [B]?", ["[X]", "[A] and [B] are [X] apart.", "[A] is [X] away from [B].", "A distance of [X] exists between [A] and [B].",
                                                         "[A] is [X] from [B].", "[A] and [B] are [X] apart from each other.", "They are [X] apart.", "The distance of [A] from [B] is [X]."], False),
    ("vertical_distance_data", "What is the vertical distance between [A] and [B]?", ["[X]", "[A] and [B] are [X] apart vertically.", "[A] is [X] away from [B] vertically.",
        "A vertical distance of [X] exists between [A] and [B].", "[A] is [X] from [B] vertically.", "[A] and [B] are [X] apart vertically from each other.",
        "Vertically, They are [X] apart.", "The vertical distance of [A] from [B] is [X].", "They are [X] apart.", "It is approximately [X]."], False),
    ("horizontal_distance_data", "How far is [A] from [B] horizontally?", ["[X]", "[A] and [B] are [X] apart horizontally.", "[A] is [X] away from [B] horizontally.",
        "A horizontal distance of [X] exists between [A] and [B].", "[A] is [X] from [B] horizontally.", "[A] and [B] are [X] apart horizontally from each other.",
        "Horizontally, They are [X] apart.", "The horizontal distance of [A] from [B] is [X].", "They are [X] apart.", "It is approximately [X]."], False),
    ("width_data", "What is the radius of [A]?", ["[X]", "The width of [A] is [X].", "[A] is [X] wide.", "[A] is [X] in width.", "It is [X]."], True),
    ("height_data", "How tall is [A]?", ["[X]", "The height of [A] is [X].", "[A] is [X] tall.", "[A] is [X] in height.", "It is [X]."], True),
]
# Lengths as human_like_distance (pointcloud.py) writes them: (text, metres). Includes a 0 m and a
# sub-centimetre value.
LENGTHS = [("0.0 inches", 0.0), ("0.42 centimeters", 0.0042), ("1.52 meters", 1.52), ("4.99 feet", 4.99 * FT),
           ("37.4 centimeters", 0.374), ("14.72 inches", 14.72 * INCH), ("6.3 meters", 6.3), ("23.01 feet", 23.01 * FT)]
DIRECTIONS = ["[B] is roughly at [X] o'clock from [A].", "[A] will find [B] around the [X] o'clock direction."]


def random_mask(rng: np.random.Generator) -> np.ndarray:
    """An irregular blob (ellipse with a notch) at a random place."""
    cx, cy = rng.uniform(8, W - 8), rng.uniform(8, H - 8)
    rx, ry = rng.uniform(2.5, 12), rng.uniform(2.5, 10)
    jj, ii = np.mgrid[0:H, 0:W]
    mask = ((ii + 0.5 - cx) / rx) ** 2 + ((jj + 0.5 - cy) / ry) ** 2 <= 1
    mask &= ~((ii > cx) & (jj > cy + ry / 3))
    if not mask.any():
        mask[int(cy), int(cx)] = True
    return mask


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


# --- the fixture -----------------------------------------------------------------------------------


def bench_text(template: str, x: str | None = None) -> str:
    return template.replace("[A]", "Region [0]").replace("[B]", "Region [1]").replace("[X]", x if x is not None else "[X]")


def make_bench(root, seed: int = 0) -> list[dict]:
    """SpatialRGPT-Bench_v1.json + images/ under ``root``; returns the expected value of each entry:
    id, category, kind, gt, masks, question, answer (bench text)."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(N_IMAGES):
        rel = f"SUNRGBD/kv2/scene_{k}/image/{k:07d}.jpg"
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path, quality=95)
        images.append(rel)
    items: list[tuple[str, str, str, str, object]] = []  # (category, kind, question, answer, gt)
    for pred, question in PREDICATE_QUESTIONS.items():
        for holds, answers in ((True, TRUE_ANSWERS[pred]), (False, FALSE_ANSWERS[pred])):
            items += [(f"{pred}_predicate", "qualitative", bench_text(question), bench_text(a), holds) for a in answers]
    for category, (question, answers) in CHOICES.items():
        items += [(category, "choice", bench_text(question), bench_text(a, f"Region [{i % 2}]"), i % 2) for i, a in enumerate(answers)]
    for category, question, answers, _ in QUANTITIES:
        for i, a in enumerate(answers):
            text, metres = LENGTHS[i % len(LENGTHS)]
            if category == "vertical_distance_data" and i == 0:
                text, metres = "0.0 centimeters", 0.0  # two regions at the same height
            if category == "width_data" and i == 0:
                text, metres = "0.42 centimeters", 0.0042  # sub-centimetre
            items.append((category, "quantitative", bench_text(question), bench_text(a, text), metres))
    for i, a in enumerate(DIRECTIONS * 2):
        hour = (3, 12, 7, 1)[i]
        items.append(("direction", "direction", bench_text("If you are at [A], where will you find [B]?"), bench_text(a, str(hour)), hour))

    entries, expected = [], []
    for n, (category, kind, question, answer, gt) in enumerate(items):
        n_regions = 1 if category in ("width_data", "height_data") else 2
        masks = [random_mask(rng) for _ in range(n_regions)]
        counts = [rle_encode(m) for m in masks]
        rle = [{"size": [H, W], "counts": c if n % 5 == 0 else rle_string(c)} for c in counts]  # both RLE forms
        image = images[n % N_IMAGES]
        info = {"file_path": image, "height": H, "width": W}
        if n % 4:  # Omni3D-style intrinsics on most entries (fx = 1000 px: unification keeps the size)
            info["K"] = [[1000.0, 0.0, W / 2], [0.0, 1000.0, H / 2], [0.0, 0.0, 1.0]]
        qtype = "quantitative" if kind in ("quantitative", "direction") else "qualitative"
        entry_id = f"{qtype}_{n:04d}x{rng.integers(1 << 30):08x}"
        masked_q = question.replace("Region [0]", "Region [0] <mask>").replace("Region [1]", "Region [1] <mask>")
        entries.append({
            "id": entry_id,
            "image_info": info,
            "text_q": question,
            "conversations": [{"from": "human", "value": "<image>\n" + masked_q}, {"from": "gpt", "value": answer}],
            "rle": rle,
            "bbox": [list(tight_box(m)) for m in masks],
            "qa_info": {"type": qtype, "category": category},
        })
        expected.append({"id": entry_id, "category": category, "kind": kind, "gt": gt, "masks": masks, "question": question,
                         "answer": answer, "estimated": "K" not in info, "image": image})
    (root / BENCH_JSON).write_text(json.dumps(entries))
    return expected


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "spatialrgpt-bench"
    expected = make_bench(root)
    return root, expected


# --- the adapter -----------------------------------------------------------------------------------


def test_fixture_covers_every_category_and_kind(bench_root):
    _, expected = bench_root
    categories = {e["category"] for e in expected}
    assert categories == set(SRGPT_GROUPS) - {"big_choice", "small_choice", "wide_choice", "thin_choice", "behind_choice", "front_choice"}
    assert len(categories) == 24  # the bench's categories (qa_info.category)
    assert {e["kind"] for e in expected} == {"qualitative", "quantitative", "direction", "choice"}


def test_rle_decoder_reads_both_counts_forms():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = rng.random((H, W)) < 0.3
        counts = rle_encode(mask)
        assert rle_counts(rle_string(counts)) == counts
        for c in (counts, rle_string(counts)):
            np.testing.assert_array_equal(decode_rle({"size": [H, W], "counts": c}), mask)
    with pytest.raises(ValueError, match="sum"):
        decode_rle({"size": [H, W], "counts": [5, 3]})


def test_records_carry_tight_mask_boxes_and_the_written_gt(bench_root, tmp_path):
    root, expected = bench_root
    records, rejections = run_adapter("spatialrgpt-bench", root)
    assert rejections == []
    assert len(records) == len(expected)
    by_id = {r.meta["entry"]: r for r in records}
    for e in expected:
        rec = by_id[e["id"]]
        assert rec.id == f"spatialrgpt-bench/{e['id']}" and rec.views[0].image == f"images/{e['image']}"
        (qa,) = rec.qa
        assert (qa.category, qa.kind) == (e["category"], e["kind"])
        assert qa.regions == [tight_box(m) for m in e["masks"]], e["id"]
        if e["kind"] == "quantitative":
            assert qa.gt == pytest.approx(e["gt"], abs=1e-12), (e["answer"], qa.gt)
        else:
            assert qa.gt == e["gt"] and type(qa.gt) is type(e["gt"]), (e["answer"], qa.gt)
        assert "Region [" not in qa.question + qa.answer and "<" not in qa.question
        assert qa.question == e["question"].replace("Region [0]", "{r0}").replace("Region [1]", "{r1}")
        assert rec.meta["intrinsics_estimated"] is e["estimated"]
        K = rec.views[0].K
        if e["estimated"]:  # hpatches' placeholder: f = diagonal, principal point at the centre
            assert (K.fx, K.cx, K.cy) == (pytest.approx(math.hypot(W, H)), W / 2, H / 2)
        else:
            assert (K.fx, K.fy) == (1000.0, 1000.0)
    assert_round_trip(records, tmp_path)


def test_unparsable_answer_and_missing_image_are_rejected_by_name(tmp_path):
    root = tmp_path / "bench"
    make_bench(root)
    entries = json.loads((root / BENCH_JSON).read_text())
    vertical = next(e for e in entries if e["qa_info"]["category"] == "vertical_distance_data")
    vertical["conversations"][1]["value"] = "Region [0] and Region [1] overlap, so it's hard to tell how far apart they are vertically."
    entries[1]["image_info"]["file_path"] = "SUNRGBD/missing.jpg"
    (root / BENCH_JSON).write_text(json.dumps(entries))
    records, rejections = run_adapter("spatialrgpt-bench", root)
    assert len(records) == len(entries) - 2
    reasons = {r.reason: r for r in rejections}
    assert set(reasons) == {"invalid_record", "missing_file"}
    assert vertical["id"] in reasons["invalid_record"].source and "does not parse" in reasons["invalid_record"].detail
    assert entries[1]["id"] in reasons["missing_file"].source


def test_wrong_root_is_a_layout_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(LayoutError, match="expected:") as e:
        get_adapter("spatialrgpt-bench")(tmp_path, None).units()
    assert BENCH_JSON in str(e.value) and get_adapter("spatialrgpt-bench").layout in str(e.value)


def test_unification_moves_region_boxes_like_object_boxes():
    box = (3.0, 5.0, 41.0, 30.0)
    qa = RegionQA(category="width_data", kind="quantitative", question="How wide is {r0}?", answer="{r0} is 1 m wide.", gt=1.0, regions=[box])
    obj = Object3D(name="o", center=(0, 0, 3), size=(1, 1, 1), R_cam_from_box=np.eye(3).tolist(), box2d=box)
    rec = Record(id="r", dataset="d", views=[{"image": "x.png", "intrinsics": [400, 380, 30, 25, W, H]}], objects=[obj], qa=[qa])
    image = np.zeros((H, W, 3), dtype=np.uint8)
    for target, multiple in ((1000.0, None), (250.0, 28)):
        out = unify_record(rec, [image], target, multiple).record
        assert out.qa[0].regions[0] == out.objects[0].box2d != box


# --- parsing model answers -------------------------------------------------------------------------

BOXES = ((100, 200, 400, 900), (1200, 300, 1900, 1000))
A, B = (f"bounding box region ({', '.join(map(str, b))})" for b in BOXES)


@pytest.mark.parametrize(("text", "metres"), [
    ("It is five feet tall.", 5 * FT),
    ("About half a meter.", 0.5),
    ("one and a half meters", 1.5),
    ("Roughly twenty-five centimeters wide.", 0.25),
    ("a foot and a half", 1.5 * FT),
    ("between 1 and 2 meters", 1.5),
    ("1-2 m apart", 1.5),
    ("from 50 cm to 1 m", 0.75),
    ("3 yards", 3 * 0.9144),
    ("12 mm", 0.012),
    ("7 inches", 7 * INCH),
    (f"{A} and {B} are 2.5 m apart.", 2.5),
    ("There is no vertical gap, as the table is directly beneath and supporting the lamp.", 0.0),
])
def test_distance_answers(text, metres):
    got = parse_distance(text)
    assert got == (None if metres is None else pytest.approx(metres))


@pytest.mark.parametrize(("text", "category", "expected"), [
    (f"Yes, {A} is to the left of {B}.", "left_predicate", True),
    (f"In fact, {A} is to the right of {B}.", "left_predicate", False),
    (f"{A} is to the right of {B}.", "left_predicate", False),
    (f"{B} is to the right of {A}.", "left_predicate", True),  # subject swapped
    (f"{A} is not below {B}.", "above_predicate", True),  # negated opposite
    (f"Actually, {A} might be smaller than {B}.", "big_predicate", False),
    ("The answer is unclear.", "big_predicate", None),
])
def test_yes_no_answers_without_verdict_words(text, category, expected):
    ctx = RegionContext("qualitative", category.split("_")[0], BOXES, 0)
    assert parse_region_answer(text, ctx) is expected


def test_choice_answers_name_a_region_by_box():
    ctx = RegionContext("choice", None, BOXES, 0)
    assert parse_region_answer(f"{B[0].upper()}{B[1:]} is more to the left.", ctx) == 1
    assert parse_region_answer(f"Positioned higher is {A}.", ctx) == 0
    assert parse_region_answer("The one at (1190, 310, 1900, 990).", ctx) == 1  # near box: IoU >= 0.5
    assert parse_region_answer("Region [1].", ctx) == 1
    assert parse_region_answer("The left one.", ctx) is None


def test_reference_answers_parse_with_placeholders():
    assert region_qa_gt("choice", "left_choice", "Which is more to the left, {r0} or {r1}?", "Positioned to the left is {r1}.") == 1
    assert region_qa_gt("qualitative", "front_predicate", "Is {r0} in front of {r1}?", "No, {r1} is in front of {r0}.") is False
    assert region_qa_gt("direction", "direction", "If you are at {r0}, where will you find {r1}?", "{r1} is roughly at 11 o'clock from {r0}.") == 11


def test_choices_count_as_qualitative_and_groups_follow_the_official_scorer():
    m = object_metrics([1, 0, True, 2.0, 5], [1, 1, True, 2.2, 6], ["choice", "choice", "qualitative", "quantitative", "direction"],
                       ["left_choice", "tall_choice", "right_predicate", "width_data", "direction"])
    assert m["qualitative_acc"] == pytest.approx(2 / 3) and m["choice_acc"] == 0.5
    assert m["groups"]["left_right"] == {"n": 2, "score": 1.0} and m["groups"]["tall_short"] == {"n": 1, "score": 0.0}
    assert m["groups"]["quantitative_overall"] == {"n": 2, "score": 1.0}  # direction included, as the official "Quan Overall"
    assert "groups" not in object_metrics([True], [True], ["qualitative"], ["left_right"])


# --- the bench, end to end ---------------------------------------------------------------------------


def test_bench_scores_perfectly_with_the_ground_truth(bench_root, tmp_path, monkeypatch):
    from vlm3.eval.bench import load_bench
    from vlm3.eval.run import PREDICTIONS, run_eval
    from vlm3.models.truth import GroundTruthBackend

    root, expected = bench_root
    monkeypatch.setenv("VLM3_DATA", str(root.parent))
    bench = load_bench("spatialrgpt-bench")
    assert bench.settings == {"focal": 1000, "n_coords": 2000}
    cache = tmp_path / "cache"
    result = run_eval(GroundTruthBackend(bench, cache), bench, tmp_path / "gt", cache_dir=cache, progress=False, plots=False)
    m = result.metrics["metrics"]
    assert m["n"] == m["parsed"] == len(expected) and m["failed"] == 0
    assert m["qualitative_acc"] == m["quantitative_success"] == m["direction_success"] == m["choice_acc"] == 1.0
    assert set(m["categories"]) == {e["category"] for e in expected}
    assert all(c["score"] == 1.0 for c in m["categories"].values())
    assert all(g["score"] == 1.0 for g in m["groups"].values())
    lines = [json.loads(x) for x in (tmp_path / "gt" / PREDICTIONS).read_text().splitlines()]
    for line in lines:
        assert line["raw"] == line["reference"] and "bounding box region (" in line["question"]
        assert line["kind"] in ("qualitative", "quantitative", "direction", "choice")


# --- the LLM judge (vlm3.eval.judge) over a fake OpenAI-compatible endpoint --------------------------


def fake_judge(requests: list):
    """An httpx handler playing the judge: it reads the "Your Turn" block and answers as a careful
    judge would for these simple texts (first verdict word, first box, number + unit, clock hour)."""
    import httpx

    units = {"meters": 1.0, "m": 1.0, "feet": FT, "inches": INCH, "centimeters": CM}

    def metres(text):
        m = re.search(r"(\d+(?:\.\d+)?)\s*(meters|feet|inches|centimeters|m)\b", text)
        return float(m.group(1)) * units[m.group(2)]

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append(body)
        prompt = body["messages"][-1]["content"]
        turn = prompt.split("Your Turn:")[1]
        answer = re.search(r"\nAnswer: (.*)\n", turn).group(1)
        response = re.search(r"\nResponse: (.*)\n", turn).group(1)
        if "GARBLE" in response:
            content = "I cannot say."
        elif "answer_in_meters" in prompt:
            content = json.dumps({"answer_in_meters": metres(answer), "response_in_meters": metres(response)})
        elif "answer_direction" in prompt:
            hour = lambda t: int(re.search(r"(\d+) o'clock", t).group(1))  # noqa: E731
            content = json.dumps({"answer_direction": hour(answer), "response_direction": hour(response)})
        elif "which" in turn.lower().split("answer:")[0] or "who is" in turn.lower():
            box = lambda t: re.search(r"\([\d, ]+\)", t).group(0)  # noqa: E731
            content = '"your_mark": ' + str(int(box(answer) == box(response)))  # the examples' bare form
        else:
            yes = lambda t: t.split(",")[0].split(".")[0].lower() in ("yes", "indeed", "correct")  # noqa: E731
            content = json.dumps({"your_mark": int(yes(answer) == yes(response))})
        reply = {"id": "j", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
        return httpx.Response(200, json=reply)

    return handler


def judge_client(requests: list):
    import httpx
    import openai

    http = httpx.Client(transport=httpx.MockTransport(fake_judge(requests)))
    return openai.OpenAI(base_url="http://judge.test/v1", api_key="test", http_client=http, max_retries=0)


def judged_lines() -> list[dict]:
    """Prediction lines as the object task writes them: (line, expected judge verdict)."""
    from vlm3.tasks.object3d import parse_region_answer

    q_left = f"Is {A} to the left of {B} from the viewer's perspective?"
    q_choice = f"Which is more to the left, {A} or {B}?"
    q_dist = f"How far apart are {A} and {B}?"
    q_dir = f"If you are at {A}, where will you find {B}?"
    rows = [
        ("qualitative", "left_predicate", q_left, f"Incorrect, {A} is not on the left side of {B}.", False, f"No, {A} is not to the left of {B}.", True),
        ("qualitative", "left_predicate", q_left, f"Yes, {A} is to the left of {B}.", True, f"Incorrect, {A} is not to the left of {B}.", False),
        ("choice", "left_choice", q_choice, f"{B[0].upper()}{B[1:]} is more to the left.", 1, f"Positioned to the left is {B}.", True),
        ("choice", "left_choice", q_choice, f"{B[0].upper()}{B[1:]} is more to the left.", 1, f"{A[0].upper()}{A[1:]} is more to the left.", False),
        ("quantitative", "distance_data", q_dist, "They are 2.0 meters apart.", 2.0, "They are 7.2 feet apart.", True),  # 2.19 m
        ("quantitative", "distance_data", q_dist, "They are 2.0 meters apart.", 2.0, "About 120 centimeters.", False),
        ("direction", "direction", q_dir, f"{B} is roughly at 12 o'clock from {A}.", 12, f"{B} is at 1 o'clock from {A}.", True),
        ("direction", "direction", q_dir, f"{B} is roughly at 12 o'clock from {A}.", 12, f"{B} is at 3 o'clock from {A}.", False),
    ]
    lines = []
    for i, (kind, category, question, reference, gt, raw, judged) in enumerate(rows):
        ctx = RegionContext(kind, category.split("_")[0] if kind == "qualitative" else None, BOXES, 0)
        line = {"key": f"r#q{i}", "question": question, "reference": reference, "raw": raw, "kind": kind, "category": category,
                "gt": gt, "pred": parse_region_answer(raw, ctx)}
        lines.append((line, judged))
    return lines


def test_judge_replays_the_official_protocol_and_agrees_with_the_rules():
    from vlm3.eval.judge import SYSTEM, agreement, judge_lines, rule_verdicts

    requests: list = []
    rows = judged_lines()
    lines = [line for line, _ in rows]
    verdicts = judge_lines(lines, judge_client(requests), "judge-model", workers=1)
    assert verdicts == [judged for _, judged in rows]
    assert len(requests) == len(lines)
    for body, line in zip(requests, lines):
        assert body["model"] == "judge-model" and body["response_format"] == {"type": "json_object"} and body["temperature"] == 0
        assert body["messages"][0] == {"role": "system", "content": SYSTEM}
        prompt = body["messages"][1]["content"]
        assert f"Question: {line['question']}\nAnswer: {line['reference']}\nResponse: {line['raw']}" in prompt
    left, choice = requests[0]["messages"][1]["content"], requests[2]["messages"][1]["content"]
    assert "In fact, Region [0] is to the right of Region [1]." in left and left.count(f"Question: {lines[0]['question']}") == 6
    assert "With less height is Region [1]." in choice and "to the right of" not in choice
    assert "1 foot = 0.3048 meters" in requests[4]["messages"][1]["content"]
    rules = rule_verdicts(lines)
    assert rules == verdicts
    a = agreement(rules, verdicts)
    assert (a["n"], a["judged"], a["agree"], a["share_agreeing"]) == (8, 8, 8, 1.0)
    assert a["both_correct"] == 4 and a["both_wrong"] == 4 and a["rule_acc"] == a["judge_acc"] == 0.5


def test_judge_failures_are_none_and_counted_apart():
    from vlm3.eval.judge import JudgeError, agreement, judge_lines

    requests: list = []
    (good, _), (bad, _) = judged_lines()[:2]
    unreadable = {**bad, "raw": "GARBLE"}
    unasked = {**good, "not_asked": "outside_image", "raw": None}
    assert judge_lines([good, unreadable, unasked], judge_client(requests), "m", workers=2) == [True, None, None]
    assert len(requests) == 2  # the unasked line is never sent
    a = agreement([True, False, False], [True, None, None])
    assert (a["judged"], a["unjudged"], a["agree"], a["share_agreeing"]) == (1, 2, 1, 1.0)
    with pytest.raises(JudgeError, match="reference"):
        judge_lines([{k: v for k, v in good.items() if k != "reference"}], judge_client(requests), "m")
    with pytest.raises(ValueError):
        agreement([True], [])


def test_eval_judge_flag_scores_with_the_official_protocol_and_resumes(bench_root, tmp_path, monkeypatch):
    """`vlm3 eval --judge URL` over a real HTTP endpoint: the judge's scores and its agreement with
    the rules go into metrics.json and report.md; a re-run sends nothing again."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from typer.testing import CliRunner

    from support import serve_in_thread
    from vlm3.cli import app as cli

    root, expected = bench_root
    monkeypatch.setenv("VLM3_DATA", str(root.parent))
    monkeypatch.setenv("JUDGE_KEY", "secret")
    requests: list = []
    handler = fake_judge(requests)
    async def complete(request):
        if request.headers.get("authorization") != "Bearer secret":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        reply = handler(httpx.Request("POST", "http://judge/v1/chat/completions", content=await request.body()))
        return JSONResponse(reply.json())

    judge_app = Starlette(routes=[Route("/v1/chat/completions", complete, methods=["POST"])])

    out = tmp_path / "gt"
    with serve_in_thread(judge_app) as url:
        args = ["eval", "--model", "ground-truth", "--bench", "spatialrgpt-bench", "--out", str(out), "--limit", "20", "--no-plots",
                "--judge", f"{url}/v1", "--judge-model", "fake-judge", "--judge-api-key-env", "JUDGE_KEY"]
        first = CliRunner().invoke(cli, args)
        assert first.exit_code == 0, first.output
        sent = len(requests)
        again = CliRunner().invoke(cli, args)
        assert again.exit_code == 0, again.output
    metrics = json.loads((out / "metrics.json").read_text())
    judge = metrics["judge"]
    n = metrics["metrics"]["n"]
    assert sent == n and len(requests) == sent  # every answer judged once; the re-run reused the verdicts
    assert judge["model"] == "fake-judge" and judge["agreement"]["judged"] == n and judge["agreement"]["share_agreeing"] == 1.0
    assert all(score == 1.0 for score in judge["scores"].values())
    assert "agrees with the rules on" in first.output and "## LLM judge (fake-judge" in (out / "report.md").read_text()


def test_eval_judge_that_cannot_be_reached_is_one_line(bench_root, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vlm3.cli import app as cli

    root, _ = bench_root
    monkeypatch.setenv("VLM3_DATA", str(root.parent))
    printed = CliRunner().invoke(cli, ["eval", "--model", "ground-truth", "--bench", "spatialrgpt-bench", "--out", str(tmp_path / "o"), "--limit", "2",
                                       "--no-plots", "--judge", "http://127.0.0.1:9/v1"])
    assert printed.exit_code == 1 and "Error: --judge: the judge gave no readable verdict for any of" in printed.output, printed.output


def test_paper_object_suite_fills_every_column_from_the_bench(bench_root, tmp_path, monkeypatch):
    """The suite's columns name real metric keys: the ground truth fills each with 100 % (AbsRel 0)."""
    from typer.testing import CliRunner

    from vlm3.cli import app as cli

    root, _ = bench_root
    monkeypatch.setenv("VLM3_DATA", str(root.parent))
    out = tmp_path / "suite"
    printed = CliRunner().invoke(cli, ["eval", "--model", "ground-truth", "--suite", "paper-object", "--out", str(out), "--no-plots"])
    assert printed.exit_code == 0, printed.output
    tables = json.loads((out / "suite.json").read_text())["tables"]
    assert [t["rows"][-1]["model"] for t in tables] == ["ground-truth (this run)"] * 3
    success, abs_rel = tables[:2], tables[2]
    for table in success:
        assert table["rows"][-1]["values"] == [100.0] * len(table["headers"]), table
    assert abs_rel["rows"][-1]["values"] == [0.0] * len(abs_rel["headers"])
    assert "| VLM3-4B | 97.84 |" in printed.output


def test_eval_judge_is_refused_on_other_tasks(tmp_path):
    from typer.testing import CliRunner

    from vlm3.cli import app as cli

    printed = CliRunner().invoke(cli, ["eval", "--model", "ground-truth", "--bench", "synth-depth", "--out", str(tmp_path / "o"), "--judge", "http://127.0.0.1:9/v1"])
    assert printed.exit_code == 1 and "--judge re-scores object answers; bench 'synth-depth' is a depth bench" in printed.output


# --- samples of questions asked as written: training, profiles, score files ---------------------------


def qa_record() -> Record:
    qas = [
        RegionQA(category="left_choice", kind="choice", question="Which is more to the left, {r0} or {r1}?",
                 answer="{r1} is more to the left.", gt=1, regions=[(10, 4, 30, 20), (40, 8, 60, 40)]),
        RegionQA(category="height_data", kind="quantitative", question="How tall is {r0}?", answer="{r0} is 3.5 feet tall.",
                 gt=3.5 * FT, regions=[(10, 4, 30, 20)]),
        RegionQA(category="below_predicate", kind="qualitative", question="Is {r0} below {r1}?", answer="Actually, {r0} is above {r1}.",
                 gt=False, regions=[(10, 4, 30, 20), (40, 8, 60, 40)]),
    ]
    return Record(id="r", dataset="d", views=[{"image": "x.png", "intrinsics": [500, 500, W / 2, H / 2, W, H]}], qa=qas)


def test_questions_as_written_in_training_and_profiles():
    from vlm3.profiles import profile_settings
    from vlm3.settings import make_settings
    from vlm3.tasks.base import get_task
    from vlm3.tasks.samples import build_sample
    from vlm3.textref import encode_box, format_box

    task, rec, image = get_task("object"), qa_record(), np.zeros((H, W, 3), dtype=np.uint8)
    assert task.has_labels(rec) and task.n_labels(rec) == 3
    settings = make_settings({"focal": 1000, "n_coords": 2000, "points_per_sample": 2})
    sample = build_sample(rec, [image], task, settings, np.random.default_rng(0))
    users = [m for m in sample.messages if m["role"] == "user"]
    assert len(users) == 2 and users[0]["content"][0] == {"type": "image"} and len(users[1]["content"]) == 1
    # vlm3 profile: boxes in text coordinates of the unified image (fx 500 -> 1000: twice the size)
    q = build_sample(rec, [image], task, settings).queries
    assert [x.label for x in q] == [0, 1, 2]
    b0 = format_box(encode_box((20, 8, 60, 40), 2 * W, 2 * H, 2000))
    assert q[0].question == f"Which is more to the left, bounding box region {b0} or bounding box region {format_box(encode_box((80, 16, 120, 80), 2 * W, 2 * H, 2000))}?"
    assert q[1].answer == f"Bounding box region {b0} is 3.5 feet tall." and q[1].fields["reference"] == q[1].answer
    assert [task.read(x.answer, x, sample) for x in q] == [1, pytest.approx(3.5 * FT), False] == [x.gt for x in q]
    # the released checkpoint's profile: the original box over the original size, in [0, 1000]
    release = make_settings(profile_settings("vlm3-release", task))
    q = build_sample(rec, [image], task, release).queries
    assert format_box(encode_box((10, 4, 30, 20), W, H, 1000)) in q[1].question
    # zero-shot: the box format and the answer form are spelled out, per kind
    zero = make_settings(profile_settings("zero-shot", task))
    q = build_sample(rec, [image], task, zero).queries
    assert "Answer with the bounding box region" in q[0].question and "in meters" in q[1].question and "yes or no" in q[2].question


def test_score_files_read_choices_with_their_regions(tmp_path):
    from vlm3.tasks.base import ScoreLine, get_task

    task = get_task("object")
    line = ScoreLine(tmp_path / "in.jsonl", 1, {"pred": f"Positioned to the left is {B}.", "gt": 1, "kind": "choice",
                                                 "category": "left_choice", "regions": [list(b) for b in BOXES]})
    assert task.score_line(line, 2000)["pred"] == 1
    line = ScoreLine(tmp_path / "in.jsonl", 2, {"pred": "In fact, Region [0] is to the right of Region [1].", "gt": False,
                                                 "kind": "qualitative", "category": "left_predicate"})
    assert task.score_line(line, 2000)["pred"] is False


def test_images_missing_entirely_is_a_layout_error(tmp_path):
    root = tmp_path / "bench"
    make_bench(root)
    import shutil

    shutil.rmtree(root / "images")
    with pytest.raises(LayoutError, match="images/"):
        get_adapter("spatialrgpt-bench")(root, None).units()
