"""Record shards read lazily: a per-shard offset index and a store that parses one record when asked.

The offset index
----------------
Next to every shard ``records/NNNNN.jsonl`` sits ``records/NNNNN.idx.npz`` (numpy arrays, no pickle):

- ``offsets`` (uint64): the byte offset of each record's line (blank lines are not records);
- ``flags`` (uint32): bit k set when the record can make a sample of ``tasks[k]``
  (:func:`usable_for`: the task has labels for it and at least one of them), and bit 31
  (:data:`BAD_IMAGE`) when one of its image paths is refused (absolute, or leaving the dataset
  root: :func:`vlm3.data.images.check_record_image`, string checks only);
- ``tasks``: the registered task names (``vlm3.tasks.task_names()``) the bits stand for, and
  ``counts`` (int64): how many records each task can use;
- ``shard`` (int64): the shard's size and modification time (ns) when the index was made, and
  ``version``: :data:`INDEX_VERSION`.

:func:`vlm3.data.io.write_shard` writes the index with the shard (``vlm3 prepare`` and
``vlm3 synth`` write every shard through it, with the records already in hand: nothing is parsed
twice). A dataset prepared before indexes existed gets them on first use (:func:`shard_index`
parses each shard once, with a progress bar), written next to the shards, or, when the dataset
folder is read-only, into ``$XDG_CACHE_HOME/vlm3/index`` (default ``~/.cache/vlm3/index``). An
index is used only while its shard's size and modification time are those it recorded and it
knows the task asked for; otherwise it is rebuilt (a task registered since, a rewritten shard).
``INDEX_VERSION`` changes when what the bits mean changes. Under a multi-process launch every
rank builds a missing index at the same time (the same file, written atomically); indexing such a
dataset once beforehand avoids that: ``python -m vlm3.data.store DATASET_DIR...``.

The store
---------
:class:`RecordStore` is a read-only sequence of the records of a prepared dataset that a task can
use: ``len(store)`` is their number and ``store[i]`` reads and parses the i-th of them (in shard
order, as :func:`vlm3.data.io.read_records` yields them) with one ``os.pread`` at its offset. It
holds one uint64 offset per usable record (8 bytes) plus a few integers per shard; no record
stays in memory. Descriptors are opened on first use and kept (at most :data:`MAX_OPEN` per
process, least recently used closed first). ``pread`` never moves a file offset, so a store is
safe to share with forked data-loader workers (they inherit the descriptors and read at their own
offsets) and with threads; a pickled store (spawned workers) reopens its files.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from vlm3.data.records import Record, parse_record

INDEX_VERSION = 1
INDEX_SUFFIX = ".idx.npz"
BAD_IMAGE = np.uint32(1 << 31)  # flags bit: an image path of the record is refused
MAX_TASKS = 31
MAX_OPEN = 64  # shard descriptors kept open per process
CACHE_ENV = "XDG_CACHE_HOME"


# --- what a record is usable for ---------------------------------------------------------------


def usable_for(record: Record, task: str) -> bool:
    """Cheap check that a record can produce a sample of ``task`` (no image decoding)."""
    from vlm3.tasks import get_task

    t = get_task(task)
    return t.has_labels(record) and t.n_labels(record) != 0


def record_flags(record: Record, tasks: Sequence[str]) -> int:
    """The index flags of ``record``: bit k for ``usable_for(record, tasks[k])``, :data:`BAD_IMAGE` for a refused image path."""
    from vlm3.data.images import ImagePathError, check_record_image

    flags = 0
    for k, task in enumerate(tasks):
        if usable_for(record, task):
            flags |= 1 << k
    for view in record.views:
        try:
            check_record_image(view.image)
        except ImagePathError:
            flags |= int(BAD_IMAGE)
            break
    return flags


def current_tasks() -> list[str]:
    """The registered task names, in registration order (the bits of a new index)."""
    from vlm3.tasks import task_names

    tasks = task_names()
    if len(tasks) > MAX_TASKS:
        raise ValueError(f"the record index holds at most {MAX_TASKS} task bits; {len(tasks)} tasks are registered")
    return tasks


# --- index files -------------------------------------------------------------------------------


@dataclass
class ShardIndex:
    """The offset index of one shard (see module doc)."""

    offsets: np.ndarray  # uint64, one per record line
    flags: np.ndarray  # uint32
    tasks: list[str]
    size: int  # shard size (bytes) and mtime (ns) the index was made for
    mtime_ns: int

    def __len__(self) -> int:
        return len(self.offsets)

    def bit(self, task: str) -> np.uint32:
        return np.uint32(1 << self.tasks.index(task))

    def usable(self, task: str) -> np.ndarray:
        """Boolean mask of the records ``task`` can use."""
        return (self.flags & self.bit(task)) != 0

    def counts(self) -> np.ndarray:
        return np.array([int(np.count_nonzero(self.usable(t))) for t in self.tasks], dtype=np.int64)


def index_path(shard: str | Path) -> Path:
    """Where the index of ``shard`` lives in the dataset: ``records/NNNNN.idx.npz``."""
    shard = Path(shard)
    return shard.with_name(shard.name.removesuffix(".jsonl") + INDEX_SUFFIX)


def cache_dir() -> Path:
    """The cache folder for indexes of read-only datasets: ``$XDG_CACHE_HOME/vlm3/index`` (default ``~/.cache``)."""
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache")
    return Path(base) / "vlm3" / "index"


def cached_index_path(shard: str | Path) -> Path:
    """The cache-folder index of ``shard`` (named by a digest of its absolute path)."""
    key = hashlib.sha256(str(Path(shard).resolve()).encode()).hexdigest()[:24]
    return cache_dir() / f"{key}-{Path(shard).name.removesuffix('.jsonl')}{INDEX_SUFFIX}"


def write_index(path: str | Path, index: ShardIndex, tmp: str | Path | None = None) -> Path:
    """Write ``index`` to ``path`` atomically (``tmp`` then rename; default: a hidden per-process temporary)."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    buf = io.BytesIO()
    np.savez(
        buf,
        version=np.array(INDEX_VERSION, dtype=np.int64),
        tasks=np.array(index.tasks, dtype=np.str_),
        offsets=np.asarray(index.offsets, dtype=np.uint64),
        flags=np.asarray(index.flags, dtype=np.uint32),
        counts=index.counts(),
        shard=np.array([index.size, index.mtime_ns], dtype=np.int64),
    )
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_index(path: str | Path, *, arrays: bool = True) -> ShardIndex | None:
    """The index at ``path``, or None when it is missing or unreadable (it is then rebuilt).

    ``arrays=False`` reads only the header (tasks, shard size and time): ``offsets`` and ``flags``
    are then empty.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != INDEX_VERSION:
                return None
            size, mtime_ns = (int(x) for x in z["shard"])
            tasks = [str(t) for t in z["tasks"]]
            if arrays:
                offsets, flags = z["offsets"], z["flags"]
                if offsets.shape != flags.shape or offsets.ndim != 1:
                    return None
            else:
                offsets, flags = np.zeros(0, np.uint64), np.zeros(0, np.uint32)
            return ShardIndex(offsets.astype(np.uint64, copy=False), flags.astype(np.uint32, copy=False), tasks, size, mtime_ns)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None


def _fresh(index: ShardIndex | None, st: os.stat_result, task: str | None) -> bool:
    return index is not None and index.size == st.st_size and index.mtime_ns == st.st_mtime_ns and (task is None or task in index.tasks)


def build_index(shard: str | Path, tasks: Sequence[str] | None = None, advance: Callable[[int], None] | None = None) -> ShardIndex:
    """Parse every line of ``shard`` once and index it; ``advance(bytes)`` reports progress.

    A malformed line raises ValueError naming the file and line (as :func:`vlm3.data.io.read_shard`).
    """
    tasks = list(current_tasks() if tasks is None else tasks)
    shard = Path(shard)
    st = shard.stat()
    offsets, flags = array("Q"), array("I")  # 8 and 4 bytes a line while building
    pos = 0
    with open(shard, "rb") as f:
        for lineno, line in enumerate(f, 1):
            start, pos = pos, pos + len(line)
            if advance is not None:
                advance(len(line))
            if not line.strip():
                continue
            offsets.append(start)
            flags.append(record_flags(parse_record(line, f"{shard}:{lineno}"), tasks))
    after = shard.stat()
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise RuntimeError(f"{shard} changed while it was being indexed; run again")
    return ShardIndex(np.frombuffer(offsets, dtype=np.uint64).copy(), np.frombuffer(flags, dtype=np.uint32).copy(), tasks, st.st_size, st.st_mtime_ns)


def find_index(shard: str | Path, task: str | None = None) -> ShardIndex | None:
    """The up-to-date index of ``shard`` (next to it, else in the cache folder) that knows ``task``, or None."""
    st = Path(shard).stat()
    for path in (index_path(shard), cached_index_path(shard)):
        index = read_index(path) if path.is_file() else None
        if _fresh(index, st, task):
            return index
    return None


def save_index(shard: str | Path, index: ShardIndex) -> Path | None:
    """Write a built index next to ``shard``, else (read-only dataset) into the cache folder; None if neither is writable."""
    for path in (index_path(shard), cached_index_path(shard)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return write_index(path, index)
        except OSError:
            continue
    return None


def shard_index(shard: str | Path, task: str | None = None, advance: Callable[[int], None] | None = None) -> ShardIndex:
    """The index of ``shard`` for ``task``: read when up to date, else built (and saved, see :func:`save_index`)."""
    index = find_index(shard, task)
    if index is None:
        index = build_index(shard, advance=advance)
        save_index(shard, index)
    return index


# --- the store ---------------------------------------------------------------------------------


class _Descriptors:
    """Open shard descriptors of this process, least recently used closed beyond ``MAX_OPEN``.

    Keyed by path, size and modification time: a descriptor is opened only on the shard its store
    indexed (a shard replaced since is refused, never read at stale offsets).
    """

    def __init__(self) -> None:
        self.fds: OrderedDict[tuple[str, int, int], int] = OrderedDict()

    def get(self, path: str, size: int, mtime_ns: int) -> int:
        # A forked child inherits this table: its descriptors stay valid there, and pread reads at
        # the offset given, never at a file position shared with the parent.
        key = (path, size, mtime_ns)
        fd = self.fds.get(key)
        if fd is not None:
            self.fds.move_to_end(key)
            return fd
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            os.close(fd)
            raise RuntimeError(f"{path} changed after its dataset was opened for training; open it again")
        self.fds[key] = fd
        while len(self.fds) > MAX_OPEN:
            _, old = self.fds.popitem(last=False)
            os.close(old)
        return fd


_DESCRIPTORS = _Descriptors()


class RecordStore(Sequence[Record]):
    """The records of a prepared dataset that ``task`` can use, read one at a time (module doc).

    Build with :meth:`open`. ``store[i]`` parses one line; ``store.bad_image`` lists the store
    positions whose image paths the index refused (checked by :func:`vlm3.train.dataset.load_datasets`
    before training starts).
    """

    def __init__(
        self, shards: list[Path], stamps: list[tuple[int, int]], starts: np.ndarray, offsets: np.ndarray, bad_image: np.ndarray | None = None
    ) -> None:
        self.shards = [str(p) for p in shards]
        self.stamps = [(int(size), int(mtime)) for size, mtime in stamps]  # (size, mtime_ns) each shard was indexed at
        self.starts = np.asarray(starts, dtype=np.int64)  # store position of each shard's first record; last = len
        self.offsets = np.asarray(offsets, dtype=np.uint64)
        self.bad_image = np.zeros(0, dtype=np.int64) if bad_image is None else np.asarray(bad_image, dtype=np.int64)
        self._chunk = 8192  # first read size; grows to the longest line seen

    @classmethod
    def open(cls, data_dir: str | Path, task: str, *, progress: bool = False, console: Any = None) -> "RecordStore":
        """The store of ``data_dir``'s records usable for ``task``: indexes are read, or built once (module doc)."""
        from vlm3.data.io import RECORDS_DIR, shard_paths
        from vlm3.tasks import get_task

        task = get_task(task).name
        shards = shard_paths(data_dir)
        if not shards:
            raise FileNotFoundError(f"no record shards in {Path(data_dir) / RECORDS_DIR}")
        located = [_locate(p, task) for p in shards]
        missing = [p for p, path in zip(shards, located) if path is None]
        if missing:
            _build_missing(missing, Path(data_dir), progress, console)
            located = [path or _locate(p, task) for p, path in zip(shards, located)]
        # Pass 1: usable counts per shard, from the small ``counts`` arrays; pass 2: fill one array.
        counts = []
        for p, path in zip(shards, located):
            if path is None:
                raise RuntimeError(f"{p}: its index was written but cannot be read back")
            with np.load(path, allow_pickle=False) as z:
                counts.append(int(z["counts"][[str(t) for t in z["tasks"]].index(task)]))
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        offsets = np.empty(int(starts[-1]), dtype=np.uint64)
        bad: list[np.ndarray] = []
        stamps = []
        for k, (p, path) in enumerate(zip(shards, located)):
            index = read_index(path)  # type: ignore[arg-type]
            if index is None or not _fresh(index, p.stat(), task) or int(np.count_nonzero(index.usable(task))) != counts[k]:
                raise RuntimeError(f"{p} changed while its index was being read; run again")
            usable = index.usable(task)
            offsets[starts[k] : starts[k + 1]] = index.offsets[usable]
            stamps.append((index.size, index.mtime_ns))
            refused = np.flatnonzero((index.flags[usable] & BAD_IMAGE) != 0)
            if len(refused):
                bad.append(refused + starts[k])
            del index, usable
        return cls(shards, stamps, starts, offsets, np.concatenate(bad) if bad else None)

    def __len__(self) -> int:
        return len(self.offsets)

    @overload
    def __getitem__(self, i: int) -> Record: ...

    @overload
    def __getitem__(self, i: slice) -> list[Record]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range ({n} records)")
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        offset = int(self.offsets[i])
        return parse_record(self._line(k, offset), f"{self.shards[k]}:byte {offset}")

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self[i]

    def _line(self, k: int, offset: int) -> bytes:
        fd = _DESCRIPTORS.get(self.shards[k], *self.stamps[k])
        data = os.pread(fd, self._chunk, offset)
        end = data.find(b"\n")
        while end < 0 and len(data) == self._chunk:  # a longer line: read on, and start bigger next time
            self._chunk *= 2
            data = os.pread(fd, self._chunk, offset)
            end = data.find(b"\n")
        return data if end < 0 else data[:end]

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)  # no descriptors inside: the process-wide table opens them again

    def __repr__(self) -> str:
        return f"RecordStore({len(self):,} records in {len(self.shards)} shards)"


def _locate(shard: Path, task: str) -> Path | None:
    """The path of an up-to-date index of ``shard`` that knows ``task`` (next to it, else cached), or None."""
    st = shard.stat()
    for path in (index_path(shard), cached_index_path(shard)):
        if path.is_file() and _fresh(read_index(path, arrays=False), st, task):
            return path
    return None


def _build_missing(shards: list[Path], data_dir: Path, progress: bool, console: Any) -> None:
    """Build (and save) the indexes of ``shards``, one parse each, with a progress bar over their bytes."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    total = sum(p.stat().st_size for p in shards)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True), disable=not progress, transient=False) as bar:
        job = bar.add_task(f"indexing {data_dir.name} ({len(shards)} shards, once)", total=total)
        for p in shards:
            index = build_index(p, advance=lambda n: bar.advance(job, n))
            if save_index(p, index) is None:
                raise OSError(f"cannot write the record index of {p} next to it nor in {cache_dir()}; set {CACHE_ENV} to a writable folder")


def index_dataset(data_dir: str | Path, *, progress: bool = True, console: Any = None) -> int:
    """Build the missing or out-of-date indexes of a prepared dataset's shards; returns how many were built."""
    from vlm3.data.io import RECORDS_DIR, shard_paths

    shards = shard_paths(data_dir)
    if not shards:
        raise FileNotFoundError(f"no record shards in {Path(data_dir) / RECORDS_DIR}")
    tasks = current_tasks()
    missing = [p for p in shards if any(_locate(p, t) is None for t in tasks)]
    if missing:
        _build_missing(missing, Path(data_dir), progress, console)
    return len(missing)


if __name__ == "__main__":  # python -m vlm3.data.store DATASET_DIR...: index prepared datasets once
    import sys

    for folder in sys.argv[1:]:
        print(f"{folder}: {index_dataset(folder)} shard index(es) built")
