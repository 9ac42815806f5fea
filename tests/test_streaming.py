"""Training data that streams: shard offset indexes, the lazy record store, the lazy mixture plan
and the lazy training dataset (``vlm3.data.store``, ``vlm3.data.mixture.MixturePlan``,
``vlm3.train.dataset``).

- ``vlm3 prepare`` and ``vlm3 synth`` write each shard's index with it; a dataset without indexes
  (prepared before them) gets them on first use, in the cache folder when its own is read-only; an
  index whose shard changed, or that does not know the task, is rebuilt.
- ``store[i]`` is the i-th record of ``read_records`` the task can use, also in forked workers.
- The lazy plan equals ``make_plan`` / ``MixtureSampler.take`` row for row, across block boundaries.
- The lazy training dataset gives the examples the materialised plan gave.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from support import make_depthlm_source
from vlm3.data import store as S
from vlm3.data.io import read_records, shard_paths, write_manifest, write_shard
from vlm3.data.mixture import MixturePlan, MixtureSampler
from vlm3.data.prepare import PrepareOptions, prepare
from vlm3.data.records import Record
from vlm3.settings import Settings
from vlm3.tasks import task_names
from vlm3.train.dataset import LoadedDataset, SampleBuilder, _positions, load_datasets, plan_rows, training_dataset, usable_for


def make_plan(datasets, probs, n_rows, seed):
    """The eager reference: every plan row at once, as training drew them before plans were lazy."""
    sampler = MixtureSampler({d.name: len(d.records) for d in datasets}, probs, seed=seed)
    choice, index = sampler.take(n_rows)
    return {"dataset": _positions(datasets, sampler.names)[choice], "index": index, "draw": np.arange(n_rows, dtype=np.int64)}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Indexes of read-only datasets go to this test's own cache folder."""
    monkeypatch.setenv(S.CACHE_ENV, str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    """Two shards-worth of synthetic scenes with depth and pose labels (pose needs two views)."""
    from vlm3.data.synth import generate, get_family

    out = tmp_path_factory.mktemp("synth") / "scenes"
    return generate(get_family("fixed_rig"), 6, out, seed=3, tasks=("depth", "pose"), progress=False, overwrite=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """``vlm3 prepare depthlm-jsonl`` output in 5 shards (9 images, 2 per unit)."""
    root = tmp_path_factory.mktemp("prep")
    make_depthlm_source(root / "src", n_images=9)
    prepare("depthlm-jsonl", root / "src", root / "out", PrepareOptions(options={"chunk_size": "2"}), progress=False)
    return root / "out"


def line_starts(shard: Path) -> list[int]:
    starts, pos = [], 0
    for line in shard.read_bytes().splitlines(keepends=True):
        if line.strip():
            starts.append(pos)
        pos += len(line)
    return starts


def check_index(shard: Path) -> S.ShardIndex:
    """The shard's index holds its line offsets, a task bit per registered task and its size and time."""
    index = S.read_index(S.index_path(shard))
    assert index is not None, f"no index next to {shard}"
    assert index.tasks == task_names()
    assert index.offsets.tolist() == line_starts(shard)
    records = list(read_records_of(shard))
    for k, task in enumerate(index.tasks):
        assert index.usable(task).tolist() == [usable_for(r, task) for r in records], task
    assert not (index.flags & S.BAD_IMAGE).any()
    st = shard.stat()
    assert (index.size, index.mtime_ns) == (st.st_size, st.st_mtime_ns)
    return index


def read_records_of(shard: Path):
    from vlm3.data.io import read_shard

    return read_shard(shard)


def copy_dataset(src: Path, dst: Path) -> Path:
    """A copy of a prepared folder's manifest and shards (and image links), keeping shard times."""
    import shutil

    shutil.copytree(src, dst, copy_function=shutil.copy2, symlinks=True)
    return dst


# --- the index ---------------------------------------------------------------------------------


def test_prepare_and_synth_write_each_shards_index(prepared, synth_data):
    shards = shard_paths(prepared)
    assert len(shards) == 5
    for shard in shards:
        check_index(shard)
    (shard,) = shard_paths(synth_data)
    index = check_index(shard)
    assert index.usable("depth").all() and index.usable("pose").sum() >= 1  # two-view scenes carry a pose pair
    assert sorted(p.name for p in (prepared / "records").iterdir()) == sorted(
        [p.name for p in shards] + [S.index_path(p).name for p in shards]
    )


def test_an_old_dataset_gets_its_index_on_first_use_and_a_changed_shard_is_reindexed(prepared, tmp_path, monkeypatch):
    data = copy_dataset(prepared, tmp_path / "old")
    for p in (data / "records").glob("*" + S.INDEX_SUFFIX):
        p.unlink()
    built = []
    real_build = S.build_index
    monkeypatch.setattr(S, "build_index", lambda shard, **kw: built.append(Path(shard).name) or real_build(shard, **kw))

    store = S.RecordStore.open(data, "depth")
    assert sorted(built) == [p.name for p in shard_paths(data)]
    for shard in shard_paths(data):
        check_index(shard)
    assert [r.model_dump() for r in store] == [r.model_dump() for r in read_records(data)]

    built.clear()  # a second open reads the indexes
    assert len(S.RecordStore.open(data, "depth")) == len(store)
    assert built == []

    # One shard rewritten (one record fewer, no index written): only that shard is indexed again.
    shard = shard_paths(data)[2]
    kept = list(read_records_of(shard))[1:]
    write_shard(kept, shard, index=False)
    store = S.RecordStore.open(data, "depth")
    assert built == [shard.name]
    assert [r.id for r in store] == [r.id for r in read_records(data)] and len(store) == 9 - 1
    check_index(shard)

    # A store opened before its shard is replaced refuses to read the new file at the old offsets
    # (one that had the file open reads on in the file it indexed).
    data = copy_dataset(data, tmp_path / "again")
    stale = S.RecordStore.open(data, "depth")
    shard = shard_paths(data)[3]
    write_shard(list(read_records_of(shard))[::-1], shard)
    with pytest.raises(RuntimeError, match="changed after its dataset was opened"):
        stale[int(stale.starts[3])]


def test_a_read_only_dataset_keeps_its_index_in_the_cache_folder(prepared, tmp_path, monkeypatch):
    data = copy_dataset(prepared, tmp_path / "ro")
    for p in (data / "records").glob("*" + S.INDEX_SUFFIX):
        p.unlink()
    real_write = S.write_index

    def read_only(path, index, tmp=None):  # the dataset's folder refuses writes (root ignores chmod)
        if Path(path).is_relative_to(data):
            raise PermissionError(13, "Read-only file system", str(path))
        return real_write(path, index, tmp)

    monkeypatch.setattr(S, "write_index", read_only)
    store = S.RecordStore.open(data, "depth")
    assert not list((data / "records").glob("*" + S.INDEX_SUFFIX))
    cached = sorted(S.cache_dir().glob("*" + S.INDEX_SUFFIX))
    assert len(cached) == len(shard_paths(data)) and all(S.cached_index_path(p) in cached for p in shard_paths(data))
    monkeypatch.setattr(S, "build_index", lambda *a, **k: pytest.fail("the cached index should be used"))
    again = S.RecordStore.open(data, "depth")
    assert again.offsets.tolist() == store.offsets.tolist() and [r.id for r in again] == [r.id for r in read_records(data)]


def test_an_index_without_the_task_is_rebuilt(synth_data, tmp_path):
    data = copy_dataset(synth_data, tmp_path / "d")
    (shard,) = shard_paths(data)
    index = S.read_index(S.index_path(shard))
    keep = [k for k, t in enumerate(index.tasks) if t != "pose"]  # as if pose had been registered since
    bits = sum(((index.flags >> np.uint32(k)) & np.uint32(1)) << np.uint32(j) for j, k in enumerate(keep))
    S.write_index(S.index_path(shard), S.ShardIndex(index.offsets, bits.astype(np.uint32), [index.tasks[k] for k in keep], index.size, index.mtime_ns))
    assert "pose" not in S.read_index(S.index_path(shard)).tasks
    assert len(S.RecordStore.open(data, "depth")) == 6  # depth: the old index serves
    assert "pose" not in S.read_index(S.index_path(shard)).tasks
    pose = S.RecordStore.open(data, "pose")
    assert S.read_index(S.index_path(shard)).tasks == task_names()
    assert [r.id for r in pose] == [r.id for r in read_records(data) if usable_for(r, "pose")]


# --- the store ---------------------------------------------------------------------------------


def test_store_items_are_the_usable_records_in_order(synth_data, prepared, tmp_path):
    for data, task in ((synth_data, "depth"), (synth_data, "pose"), (prepared, "depth")):
        store = S.RecordStore.open(data, task)
        expected = [r for r in read_records(data) if usable_for(r, task)]
        assert len(store) == len(expected) > 0
        order = np.random.default_rng(0).permutation(len(store))
        for i in order:
            assert store[int(i)].model_dump() == expected[i].model_dump()
        assert store[-1].id == expected[-1].id and [r.id for r in store[1:3]] == [r.id for r in expected[1:3]]
        with pytest.raises(IndexError):
            store[len(store)]
        assert store.offsets.dtype == np.uint64 and store.offsets.nbytes == 8 * len(store)

    # Old shards: blank lines, a record longer than the first read, an empty shard, a last line
    # without its newline: indexed as read_shard reads them.
    records = list(read_records(prepared))[:4]
    long = records[1].model_copy(update={"meta": {"note": "x" * 20000}})
    folder = tmp_path / "blank"
    (folder / "records").mkdir(parents=True)
    lines = [r.model_dump_json(exclude_none=True) for r in (records[0], long, records[2], records[3])]
    (folder / "records" / "00000.jsonl").write_text("\n" + lines[0] + "\n\n" + lines[1] + "\n   \n" + lines[2] + "\n")
    (folder / "records" / "00001.jsonl").write_text("")
    (folder / "records" / "00002.jsonl").write_text(lines[3])
    (folder / "records" / "00003.jsonl").write_text("\n")
    store = S.RecordStore.open(folder, "depth")
    assert [r.model_dump() for r in store] == [r.model_dump() for r in read_records(folder)] and len(store) == 4
    assert store[1].meta["note"] == "x" * 20000 and store[3].id == records[3].id


def test_a_malformed_line_names_the_shard_and_line(tmp_path):
    shard = tmp_path / "bad" / "records" / "00000.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match=r"00000\.jsonl:1: invalid record field"):
        S.RecordStore.open(shard.parent.parent, "depth")


def _read_ids(store: S.RecordStore, order: list[int], queue) -> None:
    queue.put([store[i].id for i in order])


def test_store_reads_the_same_in_forked_and_spawned_workers(prepared):
    store = S.RecordStore.open(prepared, "depth")
    ids = [r.id for r in read_records(prepared)]
    assert store[3].id == ids[3]  # descriptors opened in the parent, then inherited
    order = [8, 0, 5, 3, 3, 1]
    for method in ("fork", "spawn"):
        ctx = mp.get_context(method)
        queue = ctx.Queue()
        procs = [ctx.Process(target=_read_ids, args=(store, order[k:] + order[:k], queue)) for k in range(2)]
        for p in procs:
            p.start()
        got = sorted(queue.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(60)
        assert got == sorted([ids[i] for i in order[k:] + order[:k]] for k in range(2)), method
    assert [store[i].id for i in order] == [ids[i] for i in order]  # the parent's reads are unaffected
    assert [r.id for r in pickle.loads(pickle.dumps(store))] == ids


def test_a_refused_image_path_fails_before_training_also_for_an_old_dataset(prepared, tmp_path):
    from vlm3.data.images import ImagePathError

    records = list(read_records(prepared))
    bad = records[4].model_copy(update={"id": "bad", "views": [records[4].views[0].model_copy(update={"image": "../x.png"})]})
    data = tmp_path / "d"
    write_shard(records[:4] + [bad], data / "records" / "00000.jsonl", index=False)  # no index: built on first use
    write_manifest(data, {"dataset": "t", "split": "train", "size": 5, "image_root": str(prepared)})
    with pytest.raises(ImagePathError, match=r"data.datasets\[0\].*record bad: views\[0\].image '\.\./x\.png' leaves the dataset root"):
        load_datasets([SimpleNamespace(path=str(data), name=None, weight=None)], "depth")
    index = S.read_index(S.index_path(data / "records" / "00000.jsonl"))
    assert ((index.flags & S.BAD_IMAGE) != 0).tolist() == [False] * 4 + [True]


# --- the lazy plan -----------------------------------------------------------------------------


def test_lazy_plan_equals_the_materialised_plan():
    rng = np.random.default_rng(12)
    cases = [({"a": 5}, 0), ({"a": 5, "b": 37, "c": 1000}, 4096), ({"x": 1, "y": 2}, 4097), ({"a": 3000, "b": 10}, 8191)]
    cases += [({f"d{k}": int(rng.integers(1, 5000)) for k in range(int(rng.integers(1, 6)))}, int(rng.integers(1, 20000))) for _ in range(8)]
    for sizes, n in cases:
        probs = {name: float(rng.random()) + 0.05 for name in sizes}
        seed = int(rng.integers(0, 10**6))
        choice, index = MixtureSampler(sizes, probs, seed=seed).take(n)
        plan = MixturePlan(sizes, probs, n, seed=seed)
        assert len(plan) == n
        if n == 0:
            continue
        boundaries = [g for b in range(1, n // 4096 + 1) for g in (4096 * b - 1, 4096 * b) if g < n]
        for g in (np.arange(n), rng.permutation(n)[:500], np.array(boundaries + [0, n - 1], dtype=np.int64)):
            c, i = plan.rows(g)
            assert (c == choice[g]).all() and (i == index[g]).all(), (sizes, n, seed)
        with pytest.raises(IndexError):
            plan.rows([n])

    # Through the datasets: plan_rows == make_plan (datasets listed in another order than their names).
    datasets = [LoadedDataset(name, Path(name), Path("."), [None] * size) for name, size in (("zeta", 7), ("alpha", 300), ("mid", 41))]
    probs = {"zeta": 0.2, "alpha": 0.5, "mid": 0.3}
    eager, lazy = make_plan(datasets, probs, 9000, seed=5), plan_rows(datasets, probs, 9000, seed=5)
    g = rng.permutation(9000)[:2000]
    assert all((lazy[g][k] == eager[k][g]).all() for k in ("dataset", "index", "draw"))


# --- the training dataset ----------------------------------------------------------------------


def test_the_lazy_training_dataset_gives_the_examples_of_the_materialised_plan(synth_data, prepared, tmp_path, monkeypatch):
    import datasets as hf

    entries = [SimpleNamespace(path=str(prepared), name="prep", weight=None), SimpleNamespace(path=str(synth_data), name=None, weight=2.0)]
    loaded = load_datasets(entries, "depth")
    assert [type(d.records) for d in loaded] == [S.RecordStore] * 2 and [len(d.records) for d in loaded] == [9, 6]
    settings = Settings(focal=60.0, points_per_sample=3)
    probs = {"prep": 0.4, "fixed_rig": 0.6}
    n_rows = 40
    lazy = training_dataset(SampleBuilder(loaded, "depth", settings, seed=1), probs, n_rows)
    assert isinstance(lazy, hf.Dataset) and len(lazy) == n_rows and lazy.data.nbytes == 0

    # The materialised plan with the builder as its transform: what training used before.
    as_lists = [LoadedDataset(d.name, d.path, d.root, list(d.records), d.weight) for d in loaded]
    old = hf.Dataset.from_dict(make_plan(as_lists, probs, n_rows, 1))
    old.set_transform(SampleBuilder(as_lists, "depth", settings, seed=1))

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and a["messages"] == b["messages"] and all(
            np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a["images"], b["images"], strict=True)
        )

    for g in range(8):
        assert same(lazy[g], old[g]), g
    rows = [17, 3, 39, 3]
    assert all(same(x, y) for x, y in zip(lazy.__getitems__(rows), old.__getitems__(rows), strict=True))
    assert same(lazy[-1], old[n_rows - 1]) and same(next(iter(lazy)), old[0])
    assert all(same(x, y) for x, y in zip(lazy.__getitems__(list(range(30, 34))), [old[g] for g in range(30, 34)], strict=True))
    with pytest.raises(IndexError):
        lazy[n_rows]

    # The row log: one line per row built, once the trainer sets the folder.
    lazy.builder.log_dir = str(tmp_path / "rows")
    lazy.__getitems__([5, 2, 11])
    assert (tmp_path / "rows" / "rows.rank0.txt").read_text() == "0 5\n0 2\n0 11\n"

    # A pickled plan dataset (spawned data-loader workers) reads the same rows.
    again = pickle.loads(pickle.dumps(lazy))
    again.builder.log_dir = None
    assert same(again[7], old[7]) and len(again) == n_rows


def test_trainer_data_loader_reads_the_lazy_dataset_in_the_sampler_order(synth_data):
    """The stock DataLoader path (sampler + ``__getitems__``), as the Trainer builds it, with two forked workers."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    loaded = load_datasets([SimpleNamespace(path=str(synth_data), name=None, weight=None)], "depth")
    ds = training_dataset(SampleBuilder(loaded, "depth", Settings(focal=60.0), seed=0), {"fixed_rig": 1.0}, 12)
    order = list(RandomSampler(ds, generator=torch.Generator().manual_seed(0)))
    got = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=4, sampler=order, num_workers=workers, collate_fn=lambda b: [x["messages"] for x in b],
                            multiprocessing_context="fork" if workers else None)
        got.append([m for batch in loader for m in batch])
    assert got[0] == got[1] == [ds[g]["messages"] for g in order]


def test_prepare_removes_the_indexes_of_units_that_no_longer_exist(prepared, tmp_path):
    from vlm3.data.prepare import _remove_stale

    out = copy_dataset(prepared, tmp_path / "out")
    assert len(list((out / "records").glob("*" + S.INDEX_SUFFIX))) == 5
    _remove_stale(out, 2)  # what a re-run does when the source has fewer units (shards 2.. are dropped)
    assert sorted(p.name for p in (out / "records").iterdir()) == ["00000.idx.npz", "00000.jsonl", "00001.idx.npz", "00001.jsonl"]
    assert len(S.RecordStore.open(out, "depth")) == 4
