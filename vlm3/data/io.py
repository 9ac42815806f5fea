"""Reading and writing record datasets: JSONL shards plus a manifest.

Layout of a prepared dataset folder::

    DST/
      manifest.json            # dataset name, split, sizes, label conventions, source, shards
      records/00000.jsonl      # one Record per line (``vlm3.data.records.Record``), UTF-8
      records/00000.idx.npz    # its offset index: where each line starts, which tasks can use it
      records/00001.jsonl
      records/00001.idx.npz
      images/...               # optional: materialised (e.g. focal-unified) images

Image paths inside records are relative to ``manifest["image_root"]``: relative to the manifest's
folder as ``vlm3 prepare`` writes it (``"."`` for images inside DST, ``"../src"`` for a source
beside it), so a prepared folder can be moved or shared (together with its source when the root
points outside it); absolute in manifests written before. A record's image path must itself be
relative and without ``..`` (``vlm3.data.images.record_image_path`` joins it with the root and
refuses it otherwise). Shards are plain JSONL; ``vlm3.data.hf.load_prepared`` reads any number of
prepared folders into one ``datasets.Dataset`` (one schema, images as ``datasets.Image``).

:func:`write_shard` writes each shard's offset index with it (``vlm3.data.store``: training reads
records one at a time through it, never the whole dataset); folders written before indexes
existed get theirs on first use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vlm3.data.records import SCHEMA_VERSION, Record, parse_record

MANIFEST = "manifest.json"
RECORDS_DIR = "records"


def shard_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / RECORDS_DIR / f"{index:05d}.jsonl"


def write_shard(records: Iterable[Record], path: str | Path, *, index: bool = True) -> int:
    """Write records to one JSONL shard atomically (temp file + rename). Returns the count.

    With ``index`` (the default) the shard's offset index (``vlm3.data.store``) is written next to
    it from the records in hand, after the shard, also atomically; a shard left without one (a
    run killed in between) gets it on first use.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    if index:
        from vlm3.data.store import ShardIndex, current_tasks, index_path, record_flags, write_index

        tasks = current_tasks()
    offsets: list[int] = []
    flags: list[int] = []
    offset = 0
    with open(tmp, "wb") as f:
        for rec in records:
            line = (rec.model_dump_json(exclude_none=True) + "\n").encode("utf-8")
            f.write(line)
            offsets.append(offset)
            if index:
                flags.append(record_flags(rec, tasks))
            offset += len(line)
    os.replace(tmp, path)
    if index:
        st = path.stat()
        shard_index = ShardIndex(np.array(offsets, dtype=np.uint64), np.array(flags, dtype=np.uint32), tasks, st.st_size, st.st_mtime_ns)
        where = index_path(path)
        write_index(where, shard_index, tmp=where.with_name(where.name + ".tmp"))
    return len(offsets)


def read_shard(path: str | Path) -> Iterator[Record]:
    """Yield records of one shard; a malformed line raises ValueError naming file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            yield parse_record(line, f"{path}:{lineno}")


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (adds ``schema_version``)."""
    path = Path(out_dir) / MANIFEST
    data = {"schema_version": SCHEMA_VERSION, **manifest}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {data_dir}: not a prepared vlm3 dataset (run `vlm3 prepare` or `vlm3 synth`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def image_root(data_dir: str | Path, manifest: dict[str, Any] | None = None) -> Path:
    """Folder that record image paths are relative to: ``manifest["image_root"]``, relative to
    ``data_dir`` (or absolute, as older manifests store it).

    A relative root that no longer exists (``data_dir`` moved without its source) falls back to
    the absolute ``source.root`` the manifest recorded, when that folder still exists.
    """
    manifest = read_manifest(data_dir) if manifest is None else manifest
    root = Path(manifest.get("image_root", "."))
    if root.is_absolute():
        return root
    resolved = (Path(data_dir) / root).resolve()
    if resolved.is_dir() or root == Path("."):
        return resolved
    source = manifest.get("source")
    recorded = Path(source["root"]) if isinstance(source, dict) and isinstance(source.get("root"), str) else None
    return recorded if recorded is not None and recorded.is_absolute() and recorded.is_dir() else resolved


def shard_paths(data_dir: str | Path) -> list[Path]:
    return sorted((Path(data_dir) / RECORDS_DIR).glob("*.jsonl"))


def read_records(data_dir: str | Path) -> Iterator[Record]:
    """Yield every record of a prepared dataset, shard by shard, in order."""
    paths = shard_paths(data_dir)
    if not paths:
        raise FileNotFoundError(f"no record shards in {Path(data_dir) / RECORDS_DIR}")
    for p in paths:
        yield from read_shard(p)
