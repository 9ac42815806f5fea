"""``vlm3 prepare``: convert a dataset's original layout into vlm3 records, in parallel and resumably.

For every work unit of the adapter (``Adapter.units()``: an image-list chunk, a scene, ...):

1. ``adapter.convert(unit)`` yields records and rejections;
2. every record is checked against its image files (``vlm3.data.validate``: image path absolute
   or leaving the dataset root, missing, over the pixel cap (``vlm3.data.images``, checked from the
   header before decoding), corrupt, wrong size, labelled pixel outside the image) and must carry a
   label (``no_labels``); each failure is a rejection counted by reason in the report;
3. ``--write-images`` chooses whether and how unified images are stored (manifest: ``write_images``):

   - ``none`` (the default, and the cheapest correct choice): records keep the original images and
     intrinsics and ``image_root`` is ``SRC``; training and evaluation unify each image when they
     sample it. Nothing is encoded or stored, and the result is exact. For upscaled sets such as
     iBims-1 (f ~ 560 -> 1000) unifying at sample time is even cheaper than reading a
     materialised PNG back (``benchmarks/prepare_throughput.py``: 15.7 vs 16.8 ms per image).
   - ``jpeg[:Q]`` (Q from 1 to 100, default 95): the record is focal-unified
     (``vlm3.data.unify.unify_record``, fx = fy = ``--focal``) and its images are written as JPEG
     under ``DST/images``; records then name those images and the unified intrinsics, and
     ``image_root`` is ``DST``. The choice when images should be materialised: on iBims-1 at Q 95
     it prepares ~2x faster than PNG, is ~5.7x smaller and reads back ~3x faster (PSNR 46 dB).
   - ``png``: as ``jpeg``, lossless; the slowest (encoding is over half of a PNG run).
     ``--materialize`` (the older flag) means ``png``.

   Arrays that are not 8-bit images (depth maps, should an adapter hand one over) are always
   written as lossless PNG;
4. the unit's records go to one JSONL shard ``DST/records/NNNNN.jsonl`` (NNNNN = the unit's index
   in ``units()``), written atomically with its offset index ``DST/records/NNNNN.idx.npz`` (where
   each line starts and which tasks can use it: ``vlm3.data.store``; made from the records in hand),
   then ``DST/done/NNNNN.json`` records that the shard is complete, with its counts and rejections.

Output::

    DST/manifest.json          written once every unit is done (vlm3.data.io.write_manifest)
    DST/prepare_report.json    counts, rejections by reason with examples, timing
    DST/prepare_settings.json  the settings that determine the output (checked when resuming)
    DST/records/NNNNN.jsonl    one shard per unit
    DST/records/NNNNN.idx.npz  its offset index (training reads records one at a time through it)
    DST/done/NNNNN.json        per-shard completion marker with its counts
    DST/images/...             unified images (with --write-images jpeg or png)

Resuming. Re-running the same command skips units whose shard and done file exist (the report
still counts them, from the done files), so an interrupted run continues where it stopped and
gives the same final output. Running with different settings into the same DST is refused.
Files are written to a temporary name and renamed, so a killed run leaves no half-written file
under its real name; the temporaries it leaves (``*.tmp``) are removed by the next run that owns
them (see :func:`_remove_stale_tmp`). Workers exit as soon as the main process is gone, even one
killed with SIGKILL: they watch a pipe only the main process can write to.

Scaling out. ``--num-shards N --shard-index I`` converts only units with ``index % N == I``, so N
copies of the same command (e.g. a SLURM array, ``--shard-index $SLURM_ARRAY_TASK_ID``) split the
work disjointly into one shared DST. The run that finds every unit done writes the manifest; to be
sure, run the command once more without ``--num-shards`` when all tasks have finished (it converts
nothing and writes the manifest and the merged report). Within one machine the engine is a
process pool (``--workers``) that shares out the units, so even a small dataset should come in
several units per worker (``depthlm-jsonl`` without ``chunk_size``: at least 32). A unit's size
depends on the data alone, never on ``--workers``: output and resuming are the same for any count.
The bookkeeping is linear in the number of units (running totals; each done file is read once).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vlm3.settings import DEFAULT_FOCAL_PX
from vlm3.data.adapters.base import Adapter, AdapterOptions, LayoutError, Rejection, get_adapter
from vlm3.data.io import MANIFEST, RECORDS_DIR, shard_path, write_manifest, write_shard
from vlm3.data.records import Record
from vlm3.data.store import INDEX_SUFFIX

DONE_DIR = "done"
IMAGES_DIR = "images"
REPORT = "prepare_report.json"
SETTINGS = "prepare_settings.json"
EXAMPLES_PER_REASON = 3
JPEG_QUALITY = 95  # --write-images jpeg: PSNR 46 dB against the lossless image on iBims-1


class PrepareError(RuntimeError):
    """A preparation that cannot proceed (bad settings, a failing unit); the message says why."""


@dataclass
class PrepareOptions:
    """Settings of one ``prepare`` run (units: pixels for focal and sizes)."""

    focal: float = DEFAULT_FOCAL_PX  # target focal length (pixels) when materialising
    size_multiple: int | None = None  # round unified image sizes to this multiple (e.g. the patch size)
    points: int | None = None  # labelled pixels kept per record (None = adapter default)
    workers: int = 1
    seed: int = 0
    split: str = "train"
    materialize: bool = False  # write unified images; True alone means write_images="png" (the older flag)
    num_shards: int = 1
    shard_index: int = 0
    options: dict[str, str] = field(default_factory=dict)  # adapter options (AdapterOptions fields or extra)
    write_images: str | None = None  # none | jpeg[:Q] | png (module doc); None: png with materialize, else none

    def __post_init__(self) -> None:
        """Settle ``write_images`` to ``none``, ``png`` or ``jpeg:Q`` and ``materialize`` to match it."""
        if self.write_images is None:
            self.write_images = "png" if self.materialize else "none"
            return
        self.write_images = parse_write_images(self.write_images)
        if self.materialize and self.write_images == "none":
            raise PrepareError("--materialize writes unified images, --write-images none writes none: give one of them")
        self.materialize = self.write_images != "none"


@dataclass
class PrepareReport:
    """What a run produced: totals over all done units, plus this run's timing."""

    adapter: str
    dataset: str
    out: str
    units_total: int
    units_done: int  # done in total (this run + earlier runs / other shards)
    units_converted: int  # converted by this run
    units_skipped: int  # already done when this run started
    records: int
    depth_points: int
    matches: int
    objects: int
    rejected: dict[str, int]
    examples: dict[str, list[str]]
    dropped_labels: int  # labels --materialize left out: outside the undistorted image (vlm3.data.unify.NOT_ASKED)
    records_this_run: int
    images_this_run: int
    seconds: float
    records_per_s: float
    images_per_s: float
    complete: bool
    manifest: str | None
    threads: int = 1  # OpenCV threads of each converting process (vlm3.threads; pool workers use 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare(
    adapter: str,
    root: str | Path,
    out: str | Path,
    opts: PrepareOptions | None = None,
    *,
    progress: bool = True,
    console: Any = None,
) -> PrepareReport:
    """Convert dataset ``root`` with adapter ``adapter`` into records under ``out`` (see module doc)."""
    opts = opts or PrepareOptions()
    _check_options(opts)
    if opts.workers > 1:
        _start_fork_server()
    root, out = Path(root), Path(out)
    adapter_opts = make_adapter_options(opts)
    try:
        cls = get_adapter(adapter)
        ad = cls(root, adapter_opts)
    except KeyError as e:
        raise PrepareError(str(e.args[0])) from None
    except LayoutError as e:
        raise PrepareError(_layout_message(cls, str(e))) from None
    except (OSError, ValueError) as e:
        raise PrepareError(str(e)) from None
    try:
        units = list(ad.units())
    except LayoutError as e:
        raise PrepareError(_layout_message(cls, str(e))) from None
    if not units:
        raise PrepareError(_layout_message(cls, f"{root}: the {adapter} adapter found nothing to convert there"))
    if len(set(units)) != len(units):
        raise PrepareError(f"adapter {adapter} returned duplicate unit names")
    info = ad.manifest_info()
    settings = _settings(adapter, root, opts, adapter_opts, info.get("source_version"))
    _claim_out_dir(out, settings, _tmp_owner(opts))
    _remove_stale(out, len(units))
    _remove_stale_tmp(out, opts)

    # Each done file is read at most once and no done record is kept: they go into running totals.
    mine = [(i, u) for i, u in enumerate(units) if i % opts.num_shards == opts.shard_index]
    totals = _Totals()
    for i, d in _scan_done(out, mine, settings["hash"]):
        totals.add(i, d)
    todo = [(i, u) for i, u in mine if i not in totals.records_by_unit]
    skipped = len(mine) - len(todo)

    t0 = time.perf_counter()
    _run(ad, adapter_opts, out, settings, opts, todo, progress, console, len(mine), skipped, totals)
    seconds = time.perf_counter() - t0

    if opts.num_shards > 1:  # the other jobs' units, done meanwhile perhaps
        for i, d in _scan_done(out, [(i, u) for i, u in enumerate(units) if i % opts.num_shards != opts.shard_index], settings["hash"]):
            totals.add(i, d)
    report = _report(ad, info, out, units, totals, skipped, seconds)
    if report.complete and report.records == 0 and not report.rejected:
        raise PrepareError(_layout_message(cls, f"{root}: {len(units)} unit(s) of the {adapter} adapter gave no record and no rejection"))
    report.threads = 1 if opts.workers > 1 and len(todo) > 1 else _cv2_threads()
    if report.complete:
        write_manifest(out, _manifest(ad, info, root, out, opts, adapter_opts, units, totals, report))
        report.manifest = str(out / MANIFEST)
    _write_json(out / REPORT, report.to_dict(), _tmp_owner(opts))
    return report


def _layout_message(cls: type[Adapter], problem: str) -> str:
    """A wrong-layout error: the problem, then the tree the adapter expects (``--help-adapter``)."""
    layout = cls.layout.strip()
    if not layout or layout in problem:
        return f"{problem.rstrip()}\n(it does not look like a {cls.name} dataset; vlm3 prepare {cls.name} --help-adapter shows the layout)"
    return f"{problem}; it does not look like a {cls.name} dataset. Expected (vlm3 prepare {cls.name} --help-adapter):\n{layout}"


def parse_write_images(value: str) -> str:
    """``--write-images`` value -> ``none``, ``png`` or ``jpeg:Q`` (``jpeg``/``jpg`` alone: Q = 95); PrepareError otherwise."""
    kind, colon, quality = value.strip().lower().partition(":")
    if kind in ("none", "png") and not colon:
        return kind
    if kind in ("jpeg", "jpg"):
        if not colon:
            return f"jpeg:{JPEG_QUALITY}"
        if quality.isdigit() and 1 <= int(quality) <= 100:
            return f"jpeg:{int(quality)}"
    raise PrepareError(f"--write-images {value!r}: expected none, jpeg[:Q] (Q from 1 to 100, default {JPEG_QUALITY}) or png")


def make_adapter_options(opts: PrepareOptions) -> AdapterOptions:
    """AdapterOptions from prepare settings; ``options`` keys naming AdapterOptions fields are typed."""
    ao = AdapterOptions(points=opts.points, seed=opts.seed, split=opts.split)
    typed = {"pairs_per_scene": int, "min_covisibility": float}
    for key, value in opts.options.items():
        if key in ("points", "seed", "split"):
            raise PrepareError(f"option {key}={value!r}: use --{key} instead of --option")
        if key in typed:
            try:
                setattr(ao, key, typed[key](value))
            except ValueError:
                raise PrepareError(f"option {key}={value!r} must be a {typed[key].__name__}") from None
        else:
            ao.extra[key] = str(value)
    return ao


def parse_option_pairs(pairs: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` (from ``--option``) -> dict; a malformed item raises PrepareError naming it."""
    out: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PrepareError(f"--option {item!r} must look like key=value")
        out[key.strip()] = value.strip()
    return out


def print_report(report: PrepareReport, console: Any = None) -> None:
    """Print the final report as rich tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    # Paths and rejection details are data, not rich markup: escape their brackets.
    t = Table(title=escape(f"vlm3 prepare {report.adapter} -> {report.out}"), show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    t.add_row("dataset", escape(report.dataset))
    t.add_row("units done", f"{report.units_done} / {report.units_total} ({report.units_converted} now, {report.units_skipped} skipped)")
    t.add_row("records written", f"{report.records:,}")
    t.add_row("depth points", f"{report.depth_points:,}")
    t.add_row("matches", f"{report.matches:,}")
    t.add_row("objects", f"{report.objects:,}")
    t.add_row("rejected", f"{sum(report.rejected.values()):,}")
    if report.dropped_labels:
        t.add_row("labels left out (outside the undistorted image)", f"{report.dropped_labels:,}")
    t.add_row("time", f"{report.seconds:.1f} s")
    t.add_row("records/s (this run)", f"{report.records_per_s:.1f}")
    if report.images_this_run:
        t.add_row("images/s (this run)", f"{report.images_per_s:.1f}")
    t.add_row("manifest", escape(report.manifest or "not yet (units pending)"))
    console.print(t)
    if report.rejected:
        r = Table(title="rejected by reason")
        r.add_column("reason")
        r.add_column("count", justify="right")
        r.add_column("examples")
        for reason, n in sorted(report.rejected.items(), key=lambda kv: (-kv[1], kv[0])):
            r.add_row(escape(reason), f"{n:,}", escape("\n".join(report.examples.get(reason, []))))
        console.print(r)


# --- one unit ------------------------------------------------------------------------------------


class _UnitConverter:
    """Converts units of one adapter into shards; lives in the main process or in one worker."""

    def __init__(self, adapter: Adapter, out: Path, settings: dict[str, Any], opts: PrepareOptions) -> None:
        self.adapter = adapter
        self.out = out
        self.settings = settings
        self.opts = opts
        self.owner = _tmp_owner(opts)

    def run(self, index: int, unit: str) -> dict[str, Any]:
        from vlm3.data.validate import check_images, load_images
        from vlm3.tasks import tasks_of

        t0 = time.perf_counter()
        root = self.adapter.root
        records: list[Record] = []
        rejected: Counter[str] = Counter()
        examples: dict[str, list[str]] = {}
        tasks: Counter[str] = Counter()
        depth_types: Counter[str] = Counter()
        datasets: Counter[str] = Counter()
        dropped = images = 0

        def reject(r: Rejection) -> None:
            rejected[r.reason] += 1
            ex = examples.setdefault(r.reason, [])
            if len(ex) < EXAMPLES_PER_REASON:
                ex.append(f"{r.source}: {r.detail}" if r.detail else r.source)

        for item in self.adapter.convert(unit):
            if isinstance(item, Rejection):
                reject(item)
                continue
            if not isinstance(item, Record):
                raise TypeError(f"adapter yielded {type(item).__name__}, expected Record or Rejection")
            rec = item
            src = str(rec.meta.get("source") or rec.id)
            if not tasks_of(rec):
                reject(Rejection(src, "no_labels", "no depth points, pose pair, matches or objects"))
                continue
            if self.opts.materialize:
                loaded = load_images(rec, root, source=src)
                if isinstance(loaded, Rejection):
                    reject(loaded)
                    continue
                try:
                    rec, n_dropped = self._materialize(rec, loaded)
                except ValueError as e:  # e.g. distortion coefficients OpenCV cannot use
                    reject(Rejection(src, "bad_calibration", f"cannot unify: {e}"))
                    continue
                dropped += n_dropped
                images += len(loaded)
                if not tasks_of(rec):
                    reject(Rejection(src, "no_labels", "no label left inside the unified image"))
                    continue
            else:
                problem = check_images(rec, root, source=src)
                if problem is not None:
                    reject(problem)
                    continue
            records.append(rec)
            tasks.update(tasks_of(rec))
            datasets[rec.dataset] += 1
            if rec.depth is not None:
                depth_types[rec.depth.depth_type] += 1

        write_shard(records, shard_path(self.out, index))
        result = {
            "unit": unit,
            "settings": self.settings["hash"],
            "records": len(records),
            "depth_points": sum(len(r.depth.pixels) for r in records if r.depth is not None),
            "matches": sum(len(r.matches.pixels0) for r in records if r.matches is not None),
            "objects": sum(len(r.objects) for r in records if r.objects),
            "rejected": dict(rejected),
            "examples": examples,
            "tasks": dict(tasks),
            "depth_types": dict(depth_types),
            "datasets": dict(datasets),
            "dropped_labels": dropped,
            "images": images,
            "seconds": round(time.perf_counter() - t0, 4),
        }
        # Written last: a shard without its done file (a run killed in between) is redone.
        _write_json(_done_path(self.out, index), result, self.owner)
        return result

    def _materialize(self, rec: Record, images: list[np.ndarray]) -> tuple[Record, int]:
        from vlm3.data.unify import unify_record

        u = unify_record(rec, images, self.opts.focal, self.opts.size_multiple)
        views, meta = [], dict(u.record.meta)
        for k, (view, orig, img) in enumerate(zip(u.record.views, rec.views, u.images)):
            fmt = self.opts.write_images if _is_8bit_image(img) else "png"  # anything else stays lossless
            rel = unified_image_name(orig.image, ".png" if fmt == "png" else ".jpg")
            path = self.out / rel
            # Same source image -> same unified image (settings are fixed per DST), so skip rewrites.
            if not path.is_file():
                _write_image(path, img, fmt, self.owner)
            views.append(view.model_copy(update={"image": rel}))
            meta["source_image" if k == 0 else f"source_image{k}"] = orig.image
        return u.record.model_copy(update={"views": views, "meta": meta}), u.dropped_labels


def unified_image_name(image: str, suffix: str = ".png") -> str:
    """Where the unified copy of a source image goes, relative to DST: ``images/<path>`` with the
    written format's ``suffix`` (``.png`` or ``.jpg``).

    A source with another suffix keeps it (``rgb/a.jpg`` -> ``images/rgb/a.jpg.png``; as JPEG
    ``rgb/a.png`` -> ``images/rgb/a.png.jpg``), so that two sources differing only in their
    suffix never share a unified file.
    """
    parts = [p for p in PurePosixPath(image.replace("\\", "/")).parts if p not in ("/", "..", ".")]
    rel = str(PurePosixPath(IMAGES_DIR, *parts))
    same = (".jpg", ".jpeg") if suffix == ".jpg" else (suffix,)
    return rel if rel.lower().endswith(same) else rel + suffix


def _png_params() -> list[int]:
    import cv2

    # PNG encoding dominates --materialize. The Up filter with Huffman-only deflate is lossless like
    # any PNG, ~2x faster than zlib level 1 with OpenCV's default filters, and files are ~5% smaller.
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        return [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    return [cv2.IMWRITE_PNG_COMPRESSION, 1]


def _is_8bit_image(image: np.ndarray) -> bool:
    """uint8 grey or RGB: what JPEG can hold. Depth maps and other arrays are written as PNG."""
    return image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3)))


def _write_image(path: Path, image: np.ndarray, fmt: str, owner: str) -> None:
    """Encode ``image`` (RGB or grey) as ``fmt`` (``png`` or ``jpeg:Q``) and write it atomically to ``path``."""
    import cv2

    arr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
    if fmt == "png":
        ok, buf = cv2.imencode(".png", arr, _png_params())
    else:
        ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, int(fmt.partition(":")[2])])
    if not ok:
        raise OSError(f"cannot encode {path} as {fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path, owner)
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)  # atomic: readers and resumed runs never see half an image


# --- running units (inline or in a process pool) -----------------------------------------------

_WORKER: dict[str, _UnitConverter] = {}


def _init_worker(
    adapter: type[Adapter], root: Path, adapter_opts: AdapterOptions, out: Path, settings: dict, opts: PrepareOptions, lifeline: Any = None
) -> None:
    import signal

    import cv2

    if lifeline is not None:
        _exit_with_main_process(lifeline)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the main process
    cv2.setNumThreads(1)  # parallelism comes from the processes; threads would oversubscribe the cores
    _WORKER["conv"] = _UnitConverter(adapter(root, adapter_opts), out, settings, opts)


def _run_in_worker(index: int, unit: str) -> dict[str, Any]:
    return _WORKER["conv"].run(index, unit)


def _exit_with_main_process(lifeline: Any) -> None:
    """End this worker as soon as the main process is gone, however it ended (SIGKILL included).

    ``lifeline`` is the read end of a pipe whose write end only the main process holds: when that
    process dies the kernel closes it and the read end reports end-of-file. A parent-death signal
    (``PR_SET_PDEATHSIG``) would not do: a worker's parent is the fork server, not the main
    process, and the fork server itself only exits once every worker has. Neither would waiting
    for the pool's queues: each worker holds both of their ends, so they never close. The watch is
    a daemon thread blocked in ``poll``; the worker exits with ``os._exit`` (no cleanup: a unit
    half done is redone by the next run, and its temporary files removed).
    """
    import threading

    def watch() -> None:
        try:
            lifeline.poll(None)  # nothing is ever sent: returns only at end-of-file
        except (OSError, EOFError, ValueError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="vlm3-prepare-lifeline", daemon=True).start()


def _cv2_threads() -> int:
    import cv2

    return max(1, cv2.getNumThreads())


def _start_fork_server() -> None:
    """Start the fork server now (it returns at once): it imports vlm3 (~0.5 s) while this process
    opens the dataset and scans its done files, so the pool's workers are ready sooner."""
    if _mp_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _mp_context() -> Any:
    """forkserver where available, else spawn; never a plain fork of this process.

    A forked child inherits thread pools (OpenCV's, the progress display's) whose threads do not
    exist in the child and can deadlock. The fork server is a fresh single-threaded process that
    has imported vlm3 once, so workers still start in milliseconds. The adapter class travels to
    the workers by reference (module + name), so adapters defined outside vlm3 work too.
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["vlm3.data.prepare"])
        return ctx
    return mp.get_context("spawn")


def _run(
    ad: Adapter,
    adapter_opts: AdapterOptions,
    out: Path,
    settings: dict,
    opts: PrepareOptions,
    todo: list[tuple[int, str]],
    progress: bool,
    console: Any,
    n_mine: int,
    skipped: int,
    totals: _Totals,
) -> None:
    """Convert ``todo`` (inline, or in a pool of ``opts.workers`` processes), adding each unit's result to ``totals``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if not todo:
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("units  {task.fields[records]:,} records  {task.fields[rejected]:,} rejected"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=not progress,
    )
    task = bar.add_task(f"prepare {ad.name}", total=n_mine, completed=skipped, records=0, rejected=0)

    def advance(index: int, res: dict[str, Any]) -> None:  # O(1) per unit, whatever the number of units
        totals.add(index, res, this_run=True)
        bar.update(task, advance=1, records=totals.this_run["records"], rejected=totals.this_run["rejected"])

    def fail(index: int, unit: str, e: BaseException) -> PrepareError:
        return PrepareError(
            f"unit {unit!r} (shard {index}) failed: {type(e).__name__}: {e}. "
            "Finished units are kept; fix the cause and re-run the same command to resume."
        )

    if opts.workers <= 1 or len(todo) == 1:
        conv = _UnitConverter(ad, out, settings, opts)
        with bar:
            for index, unit in todo:
                try:
                    res = conv.run(index, unit)
                except (KeyboardInterrupt, PrepareError):
                    raise
                except Exception as e:
                    raise fail(index, unit, e) from e
                advance(index, res)
        return

    ctx = _mp_context()
    # Workers exit when the main process dies: they watch the read end; only this process holds the
    # write end (see _exit_with_main_process).
    lifeline, lifeline_w = ctx.Pipe(duplex=False)
    pool = ProcessPoolExecutor(
        max_workers=min(opts.workers, len(todo)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(type(ad), ad.root, adapter_opts, out, settings, opts, lifeline),
    )
    try:
        futures = {pool.submit(_run_in_worker, index, unit): (index, unit) for index, unit in todo}
        with bar:
            for fut in as_completed(futures):
                index, unit = futures[fut]
                try:
                    res = fut.result()
                except Exception as e:
                    raise fail(index, unit, e) from e
                advance(index, res)
    except BaseException:
        # Stop now: units still running are simply redone by the next run (their writes are atomic).
        workers = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.join(5)
        lifeline.close()
        lifeline_w.close()
        raise
    pool.shutdown(wait=True)
    lifeline.close()
    lifeline_w.close()


# --- settings, done files, report, manifest -----------------------------------------------------


def _check_options(opts: PrepareOptions) -> None:
    problems = []
    if not opts.focal > 0:
        problems.append(f"focal must be > 0 pixels, got {opts.focal}")
    if opts.size_multiple is not None and opts.size_multiple < 1:
        problems.append(f"size-multiple must be >= 1, got {opts.size_multiple}")
    if opts.points is not None and opts.points < 1:
        problems.append(f"points must be >= 1, got {opts.points}")
    if opts.workers < 1:
        problems.append(f"workers must be >= 1, got {opts.workers}")
    if opts.num_shards < 1:
        problems.append(f"num-shards must be >= 1, got {opts.num_shards}")
    if not 0 <= opts.shard_index < max(opts.num_shards, 1):
        problems.append(f"shard-index must be in [0, {opts.num_shards}), got {opts.shard_index}")
    if problems:
        raise PrepareError("; ".join(problems))


def _settings(adapter: str, root: Path, opts: PrepareOptions, ao: AdapterOptions, source_version: Any) -> dict[str, Any]:
    """Everything that determines the output (not workers or sharding), plus its hash."""
    s: dict[str, Any] = {
        "adapter": adapter,
        "root": str(root.resolve()),
        "source_version": source_version,  # a changed source must not be mixed with old shards
        "materialize": opts.materialize,
        "focal": opts.focal if opts.materialize else None,
        "size_multiple": opts.size_multiple if opts.materialize else None,
        "points": opts.points,
        "seed": opts.seed,
        "split": opts.split,
        "adapter_options": {
            "pairs_per_scene": ao.pairs_per_scene,
            "min_covisibility": ao.min_covisibility,
            "extra": dict(sorted(ao.extra.items())),
        },
    }
    if opts.write_images not in ("none", "png"):  # none and png: materialize says it (as before JPEG existed)
        s["write_images"] = opts.write_images
    s["hash"] = hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:16]
    return s


def _claim_out_dir(out: Path, settings: dict[str, Any], owner: str) -> None:
    path = out / SETTINGS
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise PrepareError(f"{path} is not valid JSON; delete {out} to start over") from None
        if old.get("hash") != settings["hash"]:
            keys = [k for k in {**old, **settings} if k != "hash"]  # a key only one side has counts too
            diff = [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in keys if old.get(k) != settings.get(k)]
            raise PrepareError(
                f"{out} was prepared with other settings ({'; '.join(diff)}); use another --out or delete it"
            )
        return
    # Hidden names are temporary files of a concurrent run (another --shard-index) claiming the folder.
    if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise PrepareError(f"--out {out} is not empty and holds no {SETTINGS}: refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, settings, owner)


def _remove_stale(out: Path, n_units: int) -> None:
    """Drop shards (and their indexes) of units that no longer exist (the source shrank), so readers never see them."""
    for folder, suffix in ((out / RECORDS_DIR, ".jsonl"), (out / RECORDS_DIR, INDEX_SUFFIX), (out / DONE_DIR, ".json")):
        if not folder.is_dir():
            continue
        for p in folder.glob(f"*{suffix}"):
            stem = p.name.removesuffix(suffix)
            if stem.isdigit() and int(stem) >= n_units:
                p.unlink()


def _tmp_owner(opts: PrepareOptions) -> str:
    """The tag in this run's temporary file names (``sIofN``): which later run may remove them."""
    return f"s{opts.shard_index}of{opts.num_shards}"


def _tmp_path(path: Path, owner: str) -> Path:
    """The hidden temporary that becomes ``path`` when complete: ``.NAME.OWNER.PID.tmp``."""
    return path.with_name(f".{path.name}.{owner}.{os.getpid()}.tmp")


_OWNED_TMP = re.compile(r"^\..+\.(s\d+of\d+)\.\d+\.tmp$")  # written by _tmp_path
_SHARD_TMP = re.compile(r"^(\d+)\.(?:jsonl|idx\.npz)\.tmp$")  # vlm3.data.io.write_shard's temporaries of shard NNNNN (and its index)


def _remove_stale_tmp(out: Path, opts: PrepareOptions) -> int:
    """Remove the temporary files a killed run left in ``out`` that this run owns; returns how many.

    A run without ``--num-shards`` owns all of ``out`` (runs writing into one DST at the same time
    split it with ``--num-shards``; the closing unsharded run comes after them), so it removes every
    ``*.tmp`` file there. A sharded run removes only what no other shard's run can be writing at
    the same moment: temporaries tagged with its own ``sIofN`` and the shard temporaries
    (``records/NNNNN.jsonl.tmp``, ``records/NNNNN.idx.npz.tmp``) of its own units.
    """
    owner = _tmp_owner(opts)
    removed = 0
    for folder, _, files in os.walk(out):
        for name in files:
            if not name.endswith(".tmp"):
                continue
            if opts.num_shards > 1:
                tagged, shard = _OWNED_TMP.match(name), _SHARD_TMP.match(name)
                mine = (tagged is not None and tagged.group(1) == owner) or (
                    shard is not None and Path(folder) == out / RECORDS_DIR and int(shard.group(1)) % opts.num_shards == opts.shard_index
                )
                if not mine:
                    continue
            try:
                os.unlink(os.path.join(folder, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _done_path(out: Path, index: int) -> Path:
    return out / DONE_DIR / f"{index:05d}.json"


def _scan_done(out: Path, units: list[tuple[int, str]], settings_hash: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, done record)`` of the finished ones of the ``(index, unit)`` pairs: one listing of
    the done and shard folders, then one read per unit whose done file and shard both exist."""
    names = {folder: set(os.listdir(out / folder)) if (out / folder).is_dir() else set() for folder in (DONE_DIR, RECORDS_DIR)}
    for index, unit in units:
        path = _done_path(out, index)
        if path.name in names[DONE_DIR] and shard_path(out, index).name in names[RECORDS_DIR]:
            d = _read_done(path, unit, settings_hash)
            if d is not None:
                yield index, d


def _read_done(path: Path, unit: str, settings_hash: str) -> dict[str, Any] | None:
    """The done record at ``path`` if it belongs to ``unit`` under these settings, else None (redo the unit)."""
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if not isinstance(d, dict) or d.get("unit") != unit or d.get("settings") != settings_hash:
        return None
    return d


def _write_json(path: Path, data: Any, owner: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path, owner)
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


class _Totals:
    """Running totals over the done records of units, added in any order (each unit once): what the
    report and the manifest need, without keeping the done records themselves (memory and time
    stay linear in the number of units, whatever order workers finish in)."""

    def __init__(self) -> None:
        self.records_by_unit: dict[int, int] = {}  # unit index -> records in its shard
        self.counts: Counter[str] = Counter()  # records, depth_points, matches, objects, dropped_labels
        self.this_run: Counter[str] = Counter()  # units, records, images converted by this run
        self.rejected: Counter[str] = Counter()
        self.tasks: Counter[str] = Counter()
        self.depth_types: Counter[str] = Counter()
        self._datasets: dict[str, list[Any]] = {}  # name -> [records, (unit index, position) first seen]
        self._examples: dict[str, list[tuple[int, int, str]]] = {}  # reason -> first examples by (unit, position)

    def add(self, index: int, done: dict[str, Any], *, this_run: bool = False) -> None:
        self.records_by_unit[index] = done["records"]
        for key in ("records", "depth_points", "matches", "objects"):
            self.counts[key] += done[key]
        self.counts["dropped_labels"] += done.get("dropped_labels", 0)
        self.rejected.update(done.get("rejected", {}))
        self.tasks.update(done.get("tasks", {}))
        self.depth_types.update(done.get("depth_types", {}))
        for k, (name, n) in enumerate(done.get("datasets", {}).items()):
            seen = self._datasets.setdefault(name, [0, (index, k)])
            seen[0] += n
            seen[1] = min(seen[1], (index, k))
        for reason, examples in done.get("examples", {}).items():
            kept = self._examples.setdefault(reason, [])
            kept.extend((index, k, text) for k, text in enumerate(examples[:EXAMPLES_PER_REASON]))
            if len(kept) > EXAMPLES_PER_REASON:
                kept.sort()
                del kept[EXAMPLES_PER_REASON:]
        if this_run:
            self.this_run.update(units=1, records=done["records"], images=done.get("images", 0), rejected=sum(done.get("rejected", {}).values()))

    def examples(self) -> dict[str, list[str]]:
        """Up to EXAMPLES_PER_REASON examples per reason, the first in unit order."""
        return {reason: [text for _, _, text in sorted(kept)] for reason, kept in sorted(self._examples.items())}

    def most_common_dataset(self) -> str | None:
        """The dataset with most records; a tie goes to the one seen first in unit order."""
        if not self._datasets:
            return None
        return min(self._datasets.items(), key=lambda kv: (-kv[1][0], kv[1][1]))[0]


def _dataset_name(ad: Adapter, info: dict, totals: _Totals) -> str:
    return str(info.get("dataset") or totals.most_common_dataset() or ad.name)


def _report(ad: Adapter, info: dict, out: Path, units: list[str], totals: _Totals, skipped: int, seconds: float) -> PrepareReport:
    rec_now, img_now = totals.this_run["records"], totals.this_run["images"]
    return PrepareReport(
        adapter=ad.name,
        dataset=_dataset_name(ad, info, totals),
        out=str(out),
        units_total=len(units),
        units_done=len(totals.records_by_unit),
        units_converted=totals.this_run["units"],
        units_skipped=skipped,
        records=totals.counts["records"],
        depth_points=totals.counts["depth_points"],
        matches=totals.counts["matches"],
        objects=totals.counts["objects"],
        rejected=dict(sorted(totals.rejected.items())),
        examples=totals.examples(),
        dropped_labels=totals.counts["dropped_labels"],
        records_this_run=rec_now,
        images_this_run=img_now,
        seconds=round(seconds, 3),
        records_per_s=round(rec_now / seconds, 2) if seconds > 0 else 0.0,
        images_per_s=round(img_now / seconds, 2) if seconds > 0 else 0.0,
        complete=len(totals.records_by_unit) == len(units),
        manifest=None,
    )


def _manifest(
    ad: Adapter, info: dict, root: Path, out: Path, opts: PrepareOptions, ao: AdapterOptions, units: list[str], totals: _Totals, report: PrepareReport
) -> dict[str, Any]:
    from vlm3 import __version__

    return {
        "dataset": report.dataset,
        "split": opts.split,
        "size": report.records,
        "tasks": dict(sorted(totals.tasks.items())),
        "depth_points": report.depth_points,
        "matches": report.matches,
        "objects": report.objects,
        # Images inside DST (materialised, or rendered there by the synth adapter) keep DST relocatable.
        "image_root": "." if opts.materialize else os.path.relpath(root.resolve(), out.resolve()),  # relative to DST (vlm3.data.io.image_root)
        "unified": opts.materialize,
        "focal": opts.focal if opts.materialize else None,
        "size_multiple": opts.size_multiple if opts.materialize else None,
        "write_images": opts.write_images,  # none (source images, unified when sampled), png or jpeg:Q
        "label_conventions": {
            "pixels": "continuous, origin at the top-left corner of the top-left pixel; x = column, y = row; "
            "pixel (i, j) has its centre at (i + 0.5, j + 0.5)",
            "intrinsics": "[fx, fy, cx, cy, width, height] in the same pixel convention",
            "depth": "metres; convention per record in depth.depth_type ('z' or 'range')",
            "depth_types": dict(sorted(totals.depth_types.items())),
            "camera_axes": "X right, Y down, Z forward",
            "poses": "views[].T_cam_from_world (camera-from-world, 4x4)",
        },
        "source": {
            "adapter": ad.name,
            "root": str(root.resolve()),
            "version": info.get("source_version"),
            "options": {"points": ao.points, "pairs_per_scene": ao.pairs_per_scene, "min_covisibility": ao.min_covisibility, **ao.extra},
            "info": info,
        },
        "source_version": info.get("source_version"),
        "seed": opts.seed,
        "rejected": report.rejected,
        "shards": [
            {"path": f"{RECORDS_DIR}/{shard_path(out, i).name}", "unit": units[i], "records": n} for i, n in sorted(totals.records_by_unit.items())
        ],
        "created_by": f"vlm3 {__version__} prepare",
    }
