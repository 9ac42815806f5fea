"""Prepared datasets as one Hugging Face ``datasets.Dataset`` (``vlm3.data.hf``): one schema across
datasets and tasks, images as ``Image`` features, rows back to Records, images embedded for upload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from vlm3.data.hf import EXTRA_COLUMNS, embed_images, features, load_prepared, to_record
from vlm3.data.io import image_root, read_records
from vlm3.data.records import Record


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """A depth-only dataset, a pose + correspondence pair dataset and an object dataset."""
    from vlm3.data.synth import generate, get_family

    root = tmp_path_factory.mktemp("prepared")
    jobs = {"depth": ("fixed_rig", ("depth",)), "pairs": ("random_rig", ("pose", "correspondence")), "objects": ("cluttered", ("object",))}
    return {
        name: generate(get_family(family), 3, root / name, seed=i, tasks=tasks, progress=False, overwrite=True)
        for i, (name, (family, tasks)) in enumerate(jobs.items())
    }


def test_plain_json_loading_is_what_fails(prepared, tmp_path):
    # The problem this module solves: the shards of a depth and a pair dataset do not share columns.
    files = [str(p) for name in ("depth", "pairs") for p in sorted((prepared[name] / "records").glob("*.jsonl"))]
    with pytest.raises(datasets.exceptions.DatasetGenerationError):
        datasets.load_dataset("json", data_files=files, split="train", cache_dir=str(tmp_path))


def test_two_prepared_datasets_share_one_schema_and_concatenate(prepared, tmp_path):
    depth = load_prepared(prepared["depth"], cache_dir=tmp_path)
    pairs = load_prepared(prepared["pairs"], cache_dir=tmp_path)
    assert depth.features == pairs.features == features()
    both = datasets.concatenate_datasets([depth, pairs])
    assert len(both) == len(depth) + len(pairs) == 6
    assert [r["tasks"] for r in both] == [["depth"]] * 3 + [["pose", "correspondence"]] * 3
    # Absent labels are None, not missing columns.
    assert both[0]["matches"] is None and both[0]["depth"]["depth_type"] in ("z", "range")
    assert both[3]["depth"] is None and len(both[3]["matches"]["pixels0"]) > 0
    # The one-call form gives the same rows.
    together = load_prepared([prepared["depth"], prepared["pairs"]], cache_dir=tmp_path)
    assert together.features == features() and together["id"] == both["id"]


def test_images_decode_to_pil_one_per_view(prepared, tmp_path):
    ds = load_prepared([prepared["depth"], prepared["pairs"]], cache_dir=tmp_path)
    assert ds.features["images"] == datasets.List(datasets.Image())
    for row, rec in zip(ds, [*read_records(prepared["depth"]), *read_records(prepared["pairs"])]):
        assert len(row["images"]) == len(rec.views)
        for img, view in zip(row["images"], rec.views):
            assert isinstance(img, Image.Image) and img.size == (view.K.width, view.K.height)
    first = next(read_records(prepared["pairs"]))
    expected = Image.open(image_root(prepared["pairs"]) / first.views[1].image).convert("RGB")
    assert np.array_equal(np.asarray(ds[3]["images"][1].convert("RGB")), np.asarray(expected))


def test_rows_round_trip_to_records(prepared, tmp_path):
    names = ["depth", "pairs", "objects"]
    ds = load_prepared([prepared[n] for n in names], cache_dir=tmp_path)
    originals = [rec for n in names for rec in read_records(prepared[n])]
    assert len(ds) == len(originals) == 9
    for row, rec in zip(ds, originals):
        back = to_record(row)
        assert isinstance(back, Record) and back.model_dump() == rec.model_dump(), rec.id
    assert json.loads(ds[0]["meta"]) == originals[0].meta


def test_the_schema_covers_every_record_field():
    # A field added to Record must get a column here, or it would be lost on export.
    assert set(Record.model_fields) == set(features()) - set(EXTRA_COLUMNS)


def test_questions_as_written_survive_the_table(tmp_path):
    # RegionQA.gt is bool, metres, an hour or a region index; the column holds float64.
    from vlm3.data.hf import record_row, to_record
    from vlm3.data.records import RegionQA

    (tmp_path / "a.png").write_bytes(b"")
    qa = [
        RegionQA(category="left_predicate", kind="qualitative", question="Is {r0} left of {r1}?", answer="No.", gt=False, regions=[(1, 2, 3, 4), (5, 6, 7, 8)]),
        RegionQA(category="width_data", kind="quantitative", question="How wide is {r0}?", answer="{r0} is 2 m wide.", gt=2.0, regions=[(1, 2, 3, 4)]),
        RegionQA(category="direction", kind="direction", question="Where is {r1}?", answer="3 o'clock.", gt=3, regions=[(1, 2, 3, 4), (5, 6, 7, 8)]),
        RegionQA(category="left_choice", kind="choice", question="Which is left, {r0} or {r1}?", answer="{r1}.", gt=1, regions=[(1, 2, 3, 4), (5, 6, 7, 8)]),
    ]
    record = Record(id="q", dataset="d", views=[{"image": "a.png", "intrinsics": [10, 10, 5, 5, 10, 10]}], qa=qa)
    back = to_record(record_row(record, tmp_path))
    assert back == record and [type(q.gt) for q in back.qa] == [bool, float, int, int]


def test_a_changed_dataset_is_read_afresh(prepared, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(prepared["depth"], folder)
    assert len(load_prepared(folder, cache_dir=tmp_path / "cache")) == 3
    shard = sorted((folder / "records").glob("*.jsonl"))[0]
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:1]))
    assert len(load_prepared(folder, cache_dir=tmp_path / "cache")) == 1


def test_embedded_images_need_no_prepared_folder(prepared, tmp_path):
    # What push_to_hub uploads (embed_external_files): the image bytes, not local paths.
    folder = tmp_path / "depth"
    shutil.copytree(prepared["depth"], folder)
    ds = embed_images(load_prepared(folder, cache_dir=tmp_path / "cache"))
    ds.to_parquet(tmp_path / "depth.parquet")
    shutil.rmtree(folder)
    back = datasets.Dataset.from_parquet(str(tmp_path / "depth.parquet"), cache_dir=str(tmp_path / "cache2"))
    assert back.features == features()
    assert back[0]["images"][0].size == (back[0]["views"][0]["intrinsics"][4], back[0]["views"][0]["intrinsics"][5])


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json in .*nowhere"):
        load_prepared(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no folders given"):
        load_prepared([])
