"""How the training data side scales with the number of records: time to open, first batch, memory.

For each size N a prepared dataset of N records is fabricated (see below), then a fresh Python
process measures what ``vlm3 train`` does with it before and at its first step:

- **open + plan**: ``load_datasets`` (reads the shards' offset indexes), ``dataset_probs``,
  ``SampleBuilder`` and ``training_dataset`` with a plan of N rows (one nominal epoch);
- **first batch**: reading the first batch the Trainer's RandomSampler would ask for (16 random
  plan rows, ``__getitems__``): plan rows -> records (one JSONL line parsed each) -> samples. The
  fabricated records name no real image, so **image decoding is stubbed**: ``load_images`` returns
  black arrays of the record's size (the view transform, conversation and PIL conversion still
  run). The record fetch alone (16 ``store[i]``) is timed too;
- **memory**: the process's RSS after minus before (torch, transformers, TRL, datasets and vlm3
  imported before the baseline) and the peak (VmHWM, reset to the baseline through
  ``/proc/self/clear_refs``) minus the baseline. "bytes/record" is (RSS(N) - RSS(smallest)) /
  (N - smallest): what each extra record costs a rank (target: ~10 bytes, at most ~30).

Fabrication. Records are cheap synthetic depth records (one view ``i.png`` 64x48, one labelled
pixel), written straight as JSONL shards of ``--shard`` lines (default 1M) from one template line
with numpy (every line the same length, ids fixed-width), and each shard's offset index is written
as ``vlm3 prepare`` writes it (``vlm3.data.store.write_index``: offsets, task bits, shard size and
time). Full shards live once in a pool shared by every size (a dataset of N records links the
first N // shard of them and adds its own remainder shard), so the disk needed is that of the
largest size: ~150 bytes per record (30M: ~4.6 GB) plus 12 bytes of index. Free space is checked
first. The pool is removed at the end unless ``--keep`` (a kept pool is reused by later runs).

    python benchmarks/data_scale.py [--sizes 1000,1000000,10000000,30000000] [--shard 1000000]
        [--dir DIR] [--keep] [--compare PATH]

``--compare PATH`` also measures another checkout of vlm3 (e.g. a worktree of the commit before
streaming, ``git worktree add /tmp/wt_base <commit>``) on the same folders, in the same way
(``PYTHONPATH=PATH``): only sensible at small N, since it parses every record into memory. Its
datasets then also get indexes (they are ignored by the old code).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16
ID_WIDTH = 12


# --- fabrication -------------------------------------------------------------------------------


def template() -> tuple[bytes, int]:
    """One record line with ``ID_WIDTH`` placeholder digits, and where they start."""
    from vlm3.data.records import Record

    rec = Record(
        id="r" + "0" * ID_WIDTH, dataset="fab", split="train",
        views=[{"image": "i.png", "intrinsics": [100.0, 100.0, 32.0, 24.0, 64, 48]}],
        depth={"pixels": [(10.5, 20.5)], "depth": [2.5], "depth_type": "z"},
    )
    line = (rec.model_dump_json(exclude_none=True) + "\n").encode()
    return line, line.index(b'"r' + b"0" * ID_WIDTH) + 2


def write_fabricated_shard(path: Path, first_id: int, n: int) -> None:
    """``n`` template lines with ids ``first_id ...`` as one shard, and its index as prepare writes it."""
    from vlm3.data.records import Record
    from vlm3.data.store import ShardIndex, current_tasks, index_path, record_flags, write_index

    line, at = template()
    width = len(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    chunk = 250_000
    with open(tmp, "wb") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            rows = np.tile(np.frombuffer(line, dtype=np.uint8), (m, 1))
            ids = np.arange(first_id + start, first_id + start + m, dtype=np.int64)
            for k in range(ID_WIDTH):
                rows[:, at + ID_WIDTH - 1 - k] = ord("0") + (ids // 10**k) % 10
            rows.tofile(f)
    os.replace(tmp, path)
    tasks = current_tasks()
    flags = record_flags(Record.model_validate_json(line), tasks)  # the same for every line
    st = path.stat()
    index = ShardIndex(np.arange(n, dtype=np.uint64) * np.uint64(width), np.full(n, flags, dtype=np.uint32), tasks, st.st_size, st.st_mtime_ns)
    write_index(index_path(path), index)


def fabricate(base: Path, sizes: list[int], shard: int, console) -> dict[int, Path]:
    """A dataset folder per size (module doc); full shards come from ``base/pool``, shared."""
    from vlm3.data.io import shard_path, write_manifest
    from vlm3.data.store import index_path

    pool = base / "pool"
    line_bytes = len(template()[0])
    full = max(sizes) // shard
    have = {p.name for p in pool.glob("*.jsonl")} if pool.is_dir() else set()
    needed = sum(shard for k in range(full) if f"{k:05d}.jsonl" not in have) + sum(n % shard for n in sizes)
    free = shutil.disk_usage(base if base.exists() else base.parent).free
    need_bytes = needed * (line_bytes + 12)
    console.print(f"fabricating {needed:,} records ({need_bytes / 1e9:.2f} GB, {line_bytes} bytes per line) in {base}; "
                  f"{free / 1e9:.1f} GB free")
    if need_bytes > 0.9 * free:
        raise SystemExit(f"not enough free space in {base}: need {need_bytes / 1e9:.1f} GB, {free / 1e9:.1f} GB free (--dir elsewhere)")
    t0 = time.perf_counter()
    for k in range(full):
        if f"{k:05d}.jsonl" not in have:
            write_fabricated_shard(pool / f"{k:05d}.jsonl", k * shard, shard)
    out = {}
    for n in sizes:
        folder = base / f"n{n}"
        if folder.exists():
            shutil.rmtree(folder)
        for k in range(n // shard):
            for name in (f"{k:05d}.jsonl", index_path(f"{k:05d}.jsonl").name):
                target = shard_path(folder, k).with_name(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(pool / name)
        if n % shard:
            write_fabricated_shard(shard_path(folder, n // shard), (n // shard) * shard, n % shard)
        write_manifest(folder, {"dataset": "fab", "split": "train", "size": n, "image_root": "."})
        out[n] = folder
    console.print(f"fabricated in {time.perf_counter() - t0:.1f} s")
    return out


def disk_bytes(folder: Path) -> int:
    return sum(p.resolve().stat().st_size for p in (folder / "records").iterdir())


# --- one measurement (a fresh process) ---------------------------------------------------------


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(folder: Path) -> dict:
    """Open the dataset and plan, build the first batch (image decoding stubbed); times and memory."""
    import gc

    import datasets  # noqa: F401  (imported before the baseline, as in training)
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import vlm3.train.dataset as D
    from vlm3.data.io import read_manifest
    from vlm3.settings import Settings
    from vlm3.tasks import samples  # noqa: F401

    def stub_images(record, root):  # no images exist: black arrays of each view's size
        return [np.zeros((int(v.intrinsics[5]), int(v.intrinsics[4]), 3), dtype=np.uint8) for v in record.views]

    D.load_images = stub_images
    n = int(read_manifest(folder)["size"])
    gc.collect()
    base = _status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        peak_reset = True
    except OSError:
        peak_reset = False

    t0 = time.perf_counter()
    entries = [type("Entry", (), {"path": str(folder), "name": None, "weight": None})()]
    loaded = D.load_datasets(entries, "depth")
    probs = D.dataset_probs(loaded, "size")
    builder = D.SampleBuilder(loaded, "depth", Settings(focal=100.0, points_per_sample=1), seed=0)
    ds = D.training_dataset(builder, probs, n)
    t_open = time.perf_counter() - t0

    rows = np.random.default_rng(0).permutation(n)[:BATCH].tolist() if n <= 10**6 else \
        np.unique(np.random.default_rng(0).integers(0, n, 4 * BATCH))[:BATCH].tolist()
    t0 = time.perf_counter()
    batch = ds.__getitems__(rows)
    t_batch = time.perf_counter() - t0
    records = loaded[0].records
    t0 = time.perf_counter()
    fetched = [records[i] for i in rows]
    t_fetch = time.perf_counter() - t0
    assert len(batch) == len(fetched) == len(rows) and all("images" in ex for ex in batch)
    del batch, fetched
    gc.collect()
    after = _status("VmRSS")
    peak = _status("VmHWM")
    return {
        "n": n, "open_s": t_open, "batch_s": t_batch, "fetch_s": t_fetch, "rss_base": base,
        "rss_delta": after - base, "peak_delta": peak - base if peak_reset else None,
    }


def run_measure(folder: Path, code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--measure", str(folder)], capture_output=True, text=True, env=env, cwd=code)
    if proc.returncode != 0:
        raise SystemExit(f"measuring {folder} with {code} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- report ------------------------------------------------------------------------------------


def report(results: dict[str, list[dict]], disks: dict[int, int], console) -> None:
    from rich.table import Table

    for label, rows in results.items():
        small = rows[0]
        t = Table(title=f"data side at scale ({label}); image decoding stubbed", show_lines=False)
        t.add_column("")
        for r in rows:
            t.add_column(f"N = {r['n']:,}", justify="right")
        t.add_column(f"ratio {rows[-1]['n'] // max(small['n'], 1):,}x N", justify="right")

        def row(name, values, fmt, ratio=True):
            cells = [fmt(v) if v is not None else "-" for v in values]
            last, first = values[-1], values[0]
            r = f"{last / first:.2f}x" if ratio and first and last is not None else ""
            t.add_row(name, *cells, r)

        row("disk (records + index)", [disks[r["n"]] / 1e6 for r in rows], lambda v: f"{v / 1e3:.2f} GB" if v >= 1e3 else f"{v:.2f} MB")
        row("open datasets + plan", [r["open_s"] for r in rows], lambda v: f"{v:.3f} s")
        row(f"first batch ({BATCH} rows)", [r["batch_s"] for r in rows], lambda v: f"{v * 1e3:.1f} ms")
        row(f"  of which: fetch {BATCH} records", [r["fetch_s"] for r in rows], lambda v: f"{v * 1e3:.2f} ms")
        row("RSS after - before", [r["rss_delta"] / 2**20 for r in rows], lambda v: f"{v:.1f} MiB")
        row("peak RSS - before", [None if r["peak_delta"] is None else r["peak_delta"] / 2**20 for r in rows], lambda v: f"{v:.1f} MiB")
        per = [None] + [(r["rss_delta"] - small["rss_delta"]) / (r["n"] - small["n"]) for r in rows[1:]]
        row("bytes/record (RSS, vs smallest)", per, lambda v: f"{v:.1f}", ratio=False)
        per_peak = [None] + [
            None if r["peak_delta"] is None else (r["peak_delta"] - small["peak_delta"]) / (r["n"] - small["n"]) for r in rows[1:]
        ]
        row("bytes/record (peak, vs smallest)", per_peak, lambda v: f"{v:.1f}", ratio=False)
        console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,1000000,10000000,30000000", help="record counts, comma-separated (smallest first)")
    ap.add_argument("--shard", type=int, default=1_000_000, help="lines per fabricated shard")
    ap.add_argument("--dir", default=None, help="where to fabricate (default: the system's temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the fabricated datasets (reused by later runs)")
    ap.add_argument("--compare", default=None, help="another vlm3 checkout to measure the same way (small N only)")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return

    from rich.console import Console

    console = Console()
    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    base = Path(args.dir or tempfile.gettempdir()) / "vlm3-data-scale"
    base.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    console.print(f"{cpus} CPUs, load average {os.getloadavg()[0]:.2f}; sizes {', '.join(f'{n:,}' for n in sizes)}")
    try:
        folders = fabricate(base, sizes, args.shard, console)
        disks = {n: disk_bytes(f) for n, f in folders.items()}
        results: dict[str, list[dict]] = {}
        codes = [("this checkout", ROOT)] + ([(f"--compare {args.compare}", Path(args.compare).resolve())] if args.compare else [])
        for label, code in codes:
            results[label] = []
            for n in sizes:
                r = run_measure(folders[n], code)
                console.print(f"[dim]{label}: N = {n:,}: open {r['open_s']:.3f} s, first batch {r['batch_s'] * 1e3:.1f} ms, "
                              f"RSS +{r['rss_delta'] / 2**20:.1f} MiB[/dim]")
                results[label].append(r)
        report(results, disks, console)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
