"""Throughput of ``vlm3 prepare``: bookkeeping per unit, workers, and the materialisation choices.

Three measurements, each printed as one table with its ratios:

1. Bookkeeping per work unit at 1k, 4k and 16k units. Units are fabricated and cheap (a JSONL of
   one-line units, ``-o chunk_size=1``, every line naming the same 8x8 PNG), so the time per unit
   is the engine's own: convert, check, shard and done file, progress, report, manifest. It must
   stay flat (16k vs 1k within 1.3x); the re-run (every unit already done: the resume scan and
   the report) is timed too. Each count runs ``--repeat`` times; the best run counts. Its files
   go to the system's temporary folder, or ``--tmp`` (``/dev/shm`` keeps disk noise out).
2. The README's example ``vlm3 prepare depthlm-jsonl --root ibims1 --out DST --workers 2`` on the
   100 real iBims-1 images with the default unit size, 1 vs 2 workers; the same with
   ``--write-images jpeg`` (unify and encode: the part workers share best). Best of ``--repeat``.
3. The materialisation choices on iBims-1 (unified to f = ``--focal``, 1 worker): prepare time,
   size of DST/images, and reading one image back as training does. For ``none`` reading back
   means decoding the original and unifying it at sample time; for ``jpeg``/``png`` decoding the
   materialised image. JPEG's PSNR against the lossless unified image is shown.

    python benchmarks/prepare_throughput.py [--data DIR] [--units 1000,4000,16000] [--repeat 2]
        [--tmp DIR] [--focal 1000] [--threads N] [--only scaling|workers|formats]

``--threads`` sets the OpenCV/torch threads of this process (the 1-worker runs) as ``vlm3 prepare
--threads`` does; by default the ``vlm3.threads`` policy chooses (pool workers always use 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ibims1"
IBIMS_IMAGES = 100


def _load() -> str:
    """The 1-minute load average and core count, to print beside timings."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpus} CPUs, load average {os.getloadavg()[0]:.2f}"


def fabricate_units(root: Path, n: int) -> None:
    """A depthlm-jsonl dataset of ``n`` one-line units naming one tiny image (cheap per unit)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(root / "tiny.png")
    line = json.dumps({"image": "tiny.png", "intrinsics": [8.0, 8.0, 3.5, 3.5, 8, 8], "pixel_coords": [[1, 2]], "depth": [1.5]})
    (root / "units.jsonl").write_text((line + "\n") * n)


def scaling(sizes: list[int], repeat: int, console, tmp_dir: Path | None = None) -> bool:
    """Per-unit time of a first run and of a re-run at each size (best of ``repeat``); True when flat within 1.3x."""
    from rich.table import Table

    from vlm3.data.prepare import PrepareOptions, prepare

    rows = []
    for n in sizes:
        best = (float("inf"), float("inf"))
        for _ in range(repeat):  # the best run: file-system noise from other processes only ever adds time
            with tempfile.TemporaryDirectory(prefix="vlm3-bench-units-", dir=tmp_dir) as tmp:
                src, out = Path(tmp) / "src", Path(tmp) / "out"
                fabricate_units(src, n)
                opts = PrepareOptions(options={"chunk_size": "1"})
                t0 = time.perf_counter()
                first = prepare("depthlm-jsonl", src, out, opts, progress=False)
                t1 = time.perf_counter()
                again = prepare("depthlm-jsonl", src, out, opts, progress=False)
                t2 = time.perf_counter()
            if (first.units_total, first.records, again.units_skipped) != (n, n, n):
                console.print(f"unexpected result at {n} units: {first.units_total} units, {first.records} records, {again.units_skipped} skipped")
                return False
            best = (min(best[0], t1 - t0), min(best[1], t2 - t1))
        rows.append((n, *best))
    where = f", in {tmp_dir}" if tmp_dir else ""
    table = Table(title=f"prepare bookkeeping: fabricated one-line units, 1 worker, best of {repeat}{where} ({_load()})")
    for col in ("units", "first run s", "ms / unit", "re-run s", "re-run ms / unit"):
        table.add_column(col, justify="right")
    for n, a, b in rows:
        table.add_row(f"{n:,}", f"{a:.2f}", f"{1e3 * a / n:.3f}", f"{b:.2f}", f"{1e3 * b / n:.3f}")
    console.print(table)
    (n0, a0, b0), (n1, a1, b1) = rows[0], rows[-1]
    ratio, ratio_rerun = (a1 / n1) / (a0 / n0), (b1 / n1) / (b0 / n0)
    flat = ratio <= 1.3 and ratio_rerun <= 1.3
    console.print(
        f"per-unit time {n1:,} vs {n0:,} units: first run {ratio:.2f}x, re-run {ratio_rerun:.2f}x "
        f"({'flat' if flat else 'NOT flat'}: limit 1.3x)"
    )
    return flat


def _prepare_ibims(data: Path, out: Path, **kw):
    from vlm3.data.prepare import PrepareOptions, prepare

    report = prepare("depthlm-jsonl", data, out, PrepareOptions(**kw), progress=False)
    if report.records != IBIMS_IMAGES or report.rejected:
        raise SystemExit(f"unexpected result: {report.records} records, rejected {report.rejected}")
    return report


def workers(data: Path, focal: float, repeat: int, console) -> None:
    """The README's iBims-1 example (and its JPEG-materialising variant) with 1 and 2 workers (best of ``repeat``)."""
    from rich.table import Table

    table = Table(title=f"vlm3 prepare depthlm-jsonl on iBims-1 ({IBIMS_IMAGES} images), default unit size, best of {repeat} ({_load()})")
    for col in ("command", "units", "1 worker s", "2 workers s", "speed-up"):
        table.add_column(col, justify="right" if col != "command" else "left")
    for label, kw in (("--workers N (README)", {}), (f"--write-images jpeg --focal {focal:g} --workers N", {"write_images": "jpeg", "focal": focal})):
        seconds, units = {}, 0
        for _ in range(repeat):
            for w in (1, 2):
                with tempfile.TemporaryDirectory(prefix="vlm3-bench-") as tmp:
                    t0 = time.perf_counter()  # wall clock: includes starting the worker processes
                    report = _prepare_ibims(data, Path(tmp) / "out", workers=w, **kw)
                    seconds[w] = min(seconds.get(w, float("inf")), time.perf_counter() - t0)
                    units = report.units_total
        table.add_row(label, str(units), f"{seconds[1]:.2f}", f"{seconds[2]:.2f}", f"{seconds[1] / seconds[2]:.2f}x")
    console.print(table)


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def formats(data: Path, focal: float, console) -> None:
    """none / jpeg:95 / png: prepare time, image bytes, read-back time per image, JPEG's PSNR."""
    from rich.table import Table

    from vlm3.data.io import image_root, read_manifest, read_records
    from vlm3.data.unify import unify_record
    from vlm3.tasks.samples import load_images

    choices = ("none", "jpeg:95", "png")
    rows: dict[str, tuple[float, int, float]] = {}
    unified: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="vlm3-bench-") as tmp:
        for choice in choices:
            out = Path(tmp) / choice.replace(":", "-")
            t0 = time.perf_counter()
            _prepare_ibims(data, out, write_images=choice, focal=focal)
            seconds = time.perf_counter() - t0
            root, records = image_root(out, read_manifest(out)), list(read_records(out))
            t0 = time.perf_counter()
            images = []
            for rec in records:  # what a training or evaluation sample costs before the model
                loaded = load_images(rec, root)
                images.append(unify_record(rec, loaded, focal).images[0] if choice == "none" else loaded[0])
            read_ms = 1e3 * (time.perf_counter() - t0) / len(records)
            unified[choice] = images
            size = _dir_bytes(out / "images") if (out / "images").is_dir() else 0
            rows[choice] = (seconds, size, read_ms)
    psnr = []
    for a, b in zip(unified["jpeg:95"], unified["png"]):
        mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
        psnr.append(10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf"))
    table = Table(title=f"materialisation on iBims-1, unified to f = {focal:g} px, 1 worker ({_load()})")
    for col in ("--write-images", "prepare s", "vs png", "images MB", "vs png", "read back ms/image", "vs png", "quality"):
        table.add_column(col, justify="right")
    ps, pb, pr = rows["png"]
    for choice in choices:
        s, b, r = rows[choice]
        quality = "source images, exact" if choice == "none" else ("lossless" if choice == "png" else f"{np.mean(psnr):.1f} dB PSNR (min {np.min(psnr):.1f})")
        read = f"{r:.1f}" + (" (decode + unify)" if choice == "none" else "")
        table.add_row(choice, f"{s:.2f}", f"{ps / s:.2f}x", f"{b / 1e6:.1f}", f"{pb / b:.1f}x" if b else "-", read, f"{pr / r:.2f}x", quality)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="iBims-1 sample folder")
    parser.add_argument("--units", default="1000,4000,16000", help="unit counts of the bookkeeping measurement")
    parser.add_argument("--focal", type=float, default=1000.0, help="unified focal length (pixels)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement of 1. and 2. (the best counts)")
    parser.add_argument("--only", choices=("scaling", "workers", "formats"), help="run one measurement")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the bookkeeping runs (e.g. /dev/shm: no disk noise)")
    parser.add_argument("--threads", type=int, default=None, help="threads of this process (default: the vlm3.threads policy)")
    args = parser.parse_args(argv)

    from rich.console import Console

    from vlm3.threads import apply_threads, choose_threads

    console = Console(width=150)
    choice = choose_threads(args.threads)
    apply_threads(choice)
    console.print(f"threads of this process: {choice.describe()}; {_load()}")
    ok = True
    if args.only in (None, "scaling"):
        ok = scaling([int(x) for x in args.units.split(",")], args.repeat, console, args.tmp)
    if args.only in (None, "workers", "formats"):
        if not (args.data / "ibims1_val.jsonl").is_file():
            console.print(f"skipped: no iBims-1 sample at {args.data}")
            return 0 if ok else 1
        if args.only in (None, "workers"):
            workers(args.data, args.focal, args.repeat, console)
        if args.only in (None, "formats"):
            formats(args.data, args.focal, console)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
