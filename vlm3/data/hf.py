"""Prepared datasets as one Hugging Face ``datasets.Dataset``: one schema, images as ``Image``.

``datasets.load_dataset("json", ...)`` over the shards of two prepared datasets fails (their
records fill different label fields, so the inferred columns differ) and gives image paths as
strings. :func:`load_prepared` reads any number of prepared folders (``vlm3 prepare`` /
``vlm3 synth``, any tasks) into one :class:`datasets.Dataset` with the fixed schema
:data:`FEATURES`:

- one column per :class:`~vlm3.data.records.Record` field, typed (absent labels are None): ``id``,
  ``dataset``, ``split``, ``views``, ``metric_scale``, ``gravity_cam``, ``depth``, ``matches``,
  ``objects``, ``covisibility``, ``schema_version``; ``meta`` (free-form) as a JSON string;
- ``tasks``: the tasks the record has labels for (``vlm3.tasks.tasks_of``);
- ``images``: the record's images, one per view, as ``datasets.Image`` (decoded to PIL on access,
  read from the prepared folder's image root; ``push_to_hub`` uploads the bytes).

Datasets loaded separately concatenate (``datasets.concatenate_datasets``), and
:func:`to_record` turns a row back into a Record::

    from vlm3.data.hf import load_prepared, to_record

    ds = load_prepared(["data/fixed_rig", "data/ibims1"])
    ds[0]["images"][0]                       # PIL image of view 0
    rec = to_record(ds[0])                   # the vlm3 Record
    ds.push_to_hub("me/vlm3-depth", private=True)   # uploads the image bytes (embed_external_files)
    embed_images(ds).to_parquet("depth.parquet")    # the same, as one self-contained local file

Rows are written to the ``datasets`` cache (``cache_dir``) under a fingerprint of the folders'
contents, so a changed dataset is read afresh and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm3.data.io import MANIFEST, image_root, read_manifest, read_shard, shard_paths
from vlm3.data.records import Record

if TYPE_CHECKING:
    import datasets

# Bump when FEATURES or the row layout changes: it is part of every cache fingerprint.
HF_FORMAT_VERSION = 1


def features() -> "datasets.Features":
    """The one schema of every dataset :func:`load_prepared` returns."""
    from datasets import Features, Image, List, Value

    f64 = Value("float64")
    point2 = List(f64, length=2)
    point3 = List(f64, length=3)
    return Features(
        {
            "id": Value("string"),
            "dataset": Value("string"),
            "split": Value("string"),
            "tasks": List(Value("string")),
            "images": List(Image()),
            "views": List(
                {
                    "image": Value("string"),
                    "intrinsics": List(f64, length=6),
                    "dist": List(f64),
                    "T_cam_from_world": List(List(f64, length=4), length=4),
                }
            ),
            "metric_scale": Value("bool"),
            "gravity_cam": point3,
            "depth": {"pixels": List(point2), "depth": List(f64), "depth_type": Value("string")},
            "matches": {"pixels0": List(point2), "pixels1": List(point2)},
            "objects": List(
                {
                    "name": Value("string"),
                    "center": point3,
                    "size": point3,
                    "R_cam_from_box": List(List(f64, length=3), length=3),
                    "box2d": List(f64, length=4),
                    "color": Value("string"),
                }
            ),
            "qa": List(
                {
                    "category": Value("string"),
                    "kind": Value("string"),
                    "question": Value("string"),
                    "answer": Value("string"),
                    "gt": f64,  # one column type: a bool as 1.0 / 0.0, an hour or region index as a whole number
                    "regions": List(List(f64, length=4)),
                }
            ),
            "covisibility": f64,
            "meta": Value("string"),
            "schema_version": Value("int32"),
        }
    )


# Columns that are not Record fields (dropped by to_record).
EXTRA_COLUMNS = ("tasks", "images")


def record_row(record: Record, root: str | Path) -> dict[str, Any]:
    """The row of ``record`` under :func:`features`; its images are files under ``root``."""
    from vlm3.data.images import record_image_path
    from vlm3.tasks import tasks_of

    data = record.model_dump(mode="json")
    views = [{"dist": None, "T_cam_from_world": None, **v} for v in data["views"]]
    objects = data["objects"]
    if objects is not None:
        objects = [{"box2d": None, "color": None, **o} for o in objects]
    if data.get("qa") is not None:
        data["qa"] = [{**q, "gt": float(q["gt"])} for q in data["qa"]]
    images = [str(record_image_path(root, v.image, where=f"record {record.id}")) for v in record.views]
    return {
        **data, "views": views, "objects": objects, "meta": json.dumps(data["meta"], sort_keys=True),
        "tasks": tasks_of(record), "images": images,
    }


def to_record(row: dict[str, Any]) -> Record:
    """The :class:`Record` a row of :func:`load_prepared` was made from (images stay paths)."""
    fields = {k: v for k, v in row.items() if k not in EXTRA_COLUMNS and v is not None}
    try:
        fields["meta"] = json.loads(fields.get("meta", "{}"))
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"row {row.get('id')!r}: meta is not a JSON object string ({e})") from None
    fields["views"] = [{k: v for k, v in view.items() if v is not None} for view in fields.get("views", [])]
    if "objects" in fields:
        fields["objects"] = [{k: v for k, v in obj.items() if v is not None} for obj in fields["objects"]]
    if "qa" in fields:  # gt back to its kind's type (the column holds float64)
        typed = {"qualitative": bool, "quantitative": float, "direction": int, "choice": int}
        fields["qa"] = [{**q, "gt": typed[q["kind"]](q["gt"]) if q["kind"] in typed else q["gt"]} for q in fields["qa"]]
    return Record.model_validate(fields)


def load_prepared(
    folders: str | Path | Sequence[str | Path],
    *,
    cache_dir: str | Path | None = None,
    keep_in_memory: bool = False,
) -> "datasets.Dataset":
    """Every record of the prepared ``folders`` as one ``datasets.Dataset`` (schema :func:`features`).

    Records keep their order, folder by folder. Raises FileNotFoundError / ValueError naming the
    folder, shard and line of a missing or malformed dataset.
    """
    from datasets import Dataset

    paths = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
    if not paths:
        raise ValueError("load_prepared: no folders given")
    for path in paths:
        read_manifest(path)  # a clear error for a folder that is not a prepared dataset
        if not shard_paths(path):
            raise FileNotFoundError(f"{path}: no record shards in {path / 'records'}")
    names = [str(p.resolve()) for p in paths]
    return Dataset.from_generator(
        _rows,
        features=features(),
        cache_dir=None if cache_dir is None else str(cache_dir),
        keep_in_memory=keep_in_memory,
        gen_kwargs={"folders": names},
        fingerprint=_fingerprint(names),
    )


def embed_images(ds: "datasets.Dataset") -> "datasets.Dataset":
    """``ds`` with its image files read into the table (what ``push_to_hub`` does before upload),
    so that ``to_parquet`` / ``save_to_disk`` output no longer needs the prepared folders."""
    from datasets.table import embed_table_storage

    fmt = ds.format
    embedded = ds.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
    return embedded.with_format(**{k: fmt[k] for k in ("type", "columns", "output_all_columns")}, **fmt["format_kwargs"])


def _rows(folders: list[str]) -> Iterator[dict[str, Any]]:
    for folder in folders:
        root = image_root(folder)
        for shard in shard_paths(folder):
            for record in read_shard(shard):
                yield record_row(record, root)


def _fingerprint(folders: list[str]) -> str:
    """Hash of the folders' manifests, shard files (size, mtime) and image roots."""
    h = hashlib.sha256(f"vlm3-hf-{HF_FORMAT_VERSION}".encode())
    for folder in folders:
        h.update(folder.encode())
        h.update((Path(folder) / MANIFEST).read_bytes())
        h.update(str(image_root(folder)).encode())
        for shard in shard_paths(folder):
            st = shard.stat()
            h.update(f"{shard.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]
