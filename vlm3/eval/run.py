"""``vlm3 eval``: ask a model a bench's questions, save every answer as it arrives, then report.

For each record of the bench's sample list (``vlm3.eval.bench``) the record becomes a sample
(``vlm3.tasks.samples.build_sample``: view transform, text coordinates, one question per label),
its questions go to ``backend.query_many`` in one call (the local backend encodes the image once
and shares its KV cache), and the answers are parsed and appended to ``OUT/predictions.jsonl``,
flushed and synced per record. A crashed or interrupted run is resumed by running the same
command again: every (record, label) key already in the file is reused and not asked again. A
torn last line (a kill in the middle of a write) is dropped and recomputed.

``OUT/run.json`` holds what the cached answers depend on (model, bench list hash, settings,
prompt templates, max_new_tokens); resuming into a folder made with different values is refused.

Each line of ``predictions.jsonl``: ``key`` ("<record id>#<label>"), ``record``, ``label``
(``d12`` = depth label 12 of the record, ``m3`` = match 3, ``q40`` = object question 40, ``pair``),
``dataset``, ``question``, ``raw`` (the model's answer), ``parsed`` (the parser found an answer),
``pred`` and ``gt`` (task units below), and task fields. Labels that fall outside the transformed
image (possible only when ``size_multiple`` crops) are written with ``skipped`` and left out.

- depth: ``gt``/``pred`` metres in ``settings.depth_type``; ``pixel`` (x, y) in the original image
  (corner-origin pixels, see README), ``coords`` the text coordinates asked.
- correspondence: ``pixel0`` in original image 1; ``gt``/``pred`` (x, y) in original image 2
  (EPE is in original pixels); ``pred_coords`` the parsed text coordinates.
- pose: ``gt`` = {R, t} of T_cam2_from_cam1; ``pred`` = {R, t, distance} (t has unit length
  without a distance); ``metric``.
- object: ``kind``, ``category``; ``gt``/``pred`` bool, metres or clock hour.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vlm3.data.records import DepthLabels, Matches, Record
from vlm3.eval.bench import (
    DEFAULT_MAX_NEW_TOKENS,
    Bench,
    BenchError,
    label_key,
    load_bench,
    load_records,
    resolve_data,
    resolve_settings,
    sample_list_for,
    settings_dict,
    default_cache,
)
from vlm3.models.backend import Backend
from vlm3.tasks.samples import SampleOptions, build_sample, load_images

PREDICTIONS = "predictions.jsonl"
RUN_HEADER = "run.json"
METRICS = "metrics.json"


class EvalError(RuntimeError):
    """An evaluation that cannot proceed; the message says why and what to do."""


@dataclass
class EvalResult:
    """What :func:`run_eval` did: the metrics.json content and the work done by this call."""

    out: Path
    metrics: dict[str, Any]
    n_queries: int
    n_cached: int
    backend_calls: int
    seconds: float


# --- model and settings -------------------------------------------------------------------------


def model_meta(spec: str | None, meta: str | Path | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The sample settings a model was trained with (``vlm3.json``) and where they were read.

    ``meta`` (a checkpoint folder or a ``vlm3.json`` file) wins; otherwise a local model folder
    (also ``vllm:FOLDER``) is looked in. HTTP models have none unless ``meta`` is given.
    """
    from vlm3.train.sft import VLM3_META, read_meta

    if meta is not None:
        path = Path(meta).expanduser()
        folder = path.parent if path.is_file() else path
        if not (folder / VLM3_META).is_file():
            raise EvalError(f"--meta {meta}: no {VLM3_META} there (give a trained checkpoint folder or its {VLM3_META})")
        try:
            return read_meta(folder), str(folder / VLM3_META)
        except (OSError, json.JSONDecodeError) as e:
            raise EvalError(f"{folder / VLM3_META}: cannot read ({e})") from None
    if spec is None or spec.startswith(("http://", "https://")):
        return None, None
    folder = Path(spec[len("vllm:"):] if spec.startswith("vllm:") else spec).expanduser()
    if folder.is_dir() and (folder / VLM3_META).is_file():
        try:
            return read_meta(folder), str(folder / VLM3_META)
        except (OSError, json.JSONDecodeError) as e:
            raise EvalError(f"{folder / VLM3_META}: cannot read ({e})") from None
    return None, None


def open_backend(spec: str, batch_size: int | None = None, *, device: str = "cpu", dtype: str | None = None) -> Backend:
    """A backend from a model spec (see ``vlm3.models.backend.make_backend``).

    ``batch_size`` is the local backend's batch, or the number of requests in flight for HTTP.
    """
    from vlm3.models.backend import make_backend

    if spec.startswith(("http://", "https://")):
        return make_backend(spec, **({"max_concurrency": batch_size} if batch_size else {}))
    if spec.startswith("vllm:"):
        return make_backend(spec)
    kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
    if batch_size:
        kwargs["batch_size"] = batch_size
    return make_backend(spec, **kwargs)


def prompt_template_hash(task: str) -> str:
    """Hash of the task's question templates (changes when the prompt wording changes)."""
    from vlm3.tasks import correspondence, depth, object3d, pose

    parts = {
        "depth": [depth.depth_question(0, 0, 1)],
        "pose": [pose.pose_prompt(True), pose.pose_prompt(False)],
        "correspondence": [correspondence.correspondence_question(0, 0)],
        "object": [*object3d.QUALITATIVE_QUESTIONS, json.dumps(object3d.PREDICATES, sort_keys=True), json.dumps({k: v[0] for k, v in object3d.QUANTITIES.items()}, sort_keys=True)],
    }[task]
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# --- one record's questions ---------------------------------------------------------------------


@dataclass
class _Item:
    """One question of a record: its key, the text, and the fields written with its answer."""

    label: str
    question: str
    fields: dict[str, Any]
    parse: Callable[[str], tuple[bool, Any, dict[str, Any]]]


@dataclass
class _RecordWork:
    items: list[_Item]
    skipped: list[str]  # labels outside the transformed image
    images: list[Any] = field(default_factory=list)


def record_work(task: str, record: Record, images: list[np.ndarray], opts: SampleOptions, labels: list[int] | None) -> _RecordWork:
    """The questions of one sample-list entry: its selected labels, asked one at a time."""
    builder = {"depth": _depth_work, "correspondence": _corr_work, "pose": _pose_work, "object": _object_work}[task]
    return builder(record, images, opts, labels)


def _depth_work(record: Record, images, opts: SampleOptions, labels: list[int] | None) -> _RecordWork:
    from vlm3.tasks.depth import parse_depth

    labels = list(labels or [])
    d = record.depth
    sub = record.model_copy(update={"depth": DepthLabels(pixels=[d.pixels[i] for i in labels], depth=[d.depth[i] for i in labels], depth_type=d.depth_type)})
    orig = np.asarray(sub.depth.pixels, dtype=np.float64).reshape(-1, 2)
    try:
        sample = build_sample(sub, images, opts, all_points=True)
    except ValueError as e:
        if "no depth labels inside" in str(e):
            return _RecordWork([], [label_key("depth", i) for i in labels])
        raise
    keep = np.flatnonzero(sample.view.record.views[0].K.contains(sample.view.transforms[0].forward(orig)))
    kept = {int(k) for k in keep}

    def parse(raw: str) -> tuple[bool, Any, dict]:
        value = parse_depth(raw)
        return value is not None, value, {}

    items = []
    for q in sample.queries:
        pos = int(keep[q.meta["index"]])
        items.append(_Item(label_key("depth", labels[pos]), q.question, {"gt": q.gt, "pixel": orig[pos].tolist(), "coords": q.meta["coords"]}, parse))
    skipped = [label_key("depth", labels[p]) for p in range(len(labels)) if p not in kept]
    return _RecordWork(items, skipped, sample.images)


def _corr_work(record: Record, images, opts: SampleOptions, labels: list[int] | None) -> _RecordWork:
    from vlm3.tasks.correspondence import parse_correspondence
    from vlm3.textref import decode_pixel

    labels = list(labels or [])
    m = record.matches
    sub = record.model_copy(update={"matches": Matches(pixels0=[m.pixels0[i] for i in labels], pixels1=[m.pixels1[i] for i in labels])})
    p0 = np.asarray(sub.matches.pixels0, dtype=np.float64).reshape(-1, 2)
    p1 = np.asarray(sub.matches.pixels1, dtype=np.float64).reshape(-1, 2)
    try:
        sample = build_sample(sub, images, opts, all_points=True)
    except ValueError as e:
        if "no correspondences inside" in str(e):
            return _RecordWork([], [label_key("correspondence", i) for i in labels])
        raise
    view = sample.view
    K0, K1 = view.record.views[0].K, view.record.views[1].K
    inside = K0.contains(view.transforms[0].forward(p0)) & K1.contains(view.transforms[1].forward(p1))
    keep = np.flatnonzero(inside)
    back = view.transforms[1].backward
    n = opts.n_coords

    def parse(raw: str) -> tuple[bool, Any, dict]:
        point = parse_correspondence(raw, n)
        if point is None:
            return False, None, {}
        xy = back(np.array([decode_pixel(point[0], point[1], K1.width, K1.height, n)]))[0]
        return True, [float(xy[0]), float(xy[1])], {"pred_coords": [point[0], point[1]]}

    items = []
    for q in sample.queries:
        pos = int(keep[q.meta["index"]])
        items.append(_Item(label_key("correspondence", labels[pos]), q.question, {"gt": q.gt, "pixel0": p0[pos].tolist(), "coords": q.meta["coords"]}, parse))
    skipped = [label_key("correspondence", labels[p]) for p in range(len(labels)) if not inside[p]]
    return _RecordWork(items, skipped, sample.images)


def _pose_work(record: Record, images, opts: SampleOptions, labels: list[int] | None) -> _RecordWork:
    from vlm3.tasks.pose import parse_pose

    sample = build_sample(record, images, opts, all_points=True)
    q = sample.queries[0]

    def parse(raw: str) -> tuple[bool, Any, dict]:
        p = parse_pose(raw)
        if p is None:
            return False, None, {}
        return True, {"R": np.asarray(p.R).tolist(), "t": np.asarray(p.t).tolist(), "distance": p.distance}, {}

    return _RecordWork([_Item("pair", q.question, {"gt": q.gt, "metric": q.meta["metric"]}, parse)], [], sample.images)


def _object_work(record: Record, images, opts: SampleOptions, labels: list[int] | None) -> _RecordWork:
    from vlm3.eval.bench import n_labels
    from vlm3.tasks.object3d import parse_object_answer

    sample = build_sample(record, images, opts, all_points=True)
    expected = n_labels(record, "object")
    if len(sample.queries) != expected:
        raise EvalError(f"record {record.id}: {len(sample.queries)} object questions but the sample list assumes {expected}")
    items = []
    for i in labels or []:
        q = sample.queries[i]
        kind = q.meta["kind"]

        def parse(raw: str, kind: str = kind) -> tuple[bool, Any, dict]:
            value = parse_object_answer(raw, kind)
            return value is not None, value, {}

        gt = bool(q.gt) if kind == "qualitative" else (int(q.gt) if kind == "direction" else float(q.gt))
        items.append(_Item(label_key("object", i), q.question, {"gt": gt, "kind": kind, "category": q.meta["category"]}, parse))
    return _RecordWork(items, [], sample.images)


# --- predictions file ---------------------------------------------------------------------------


def read_predictions(path: str | Path) -> dict[str, dict[str, Any]]:
    """Cached predictions by key. A torn last line (no newline: the writer was killed) is cut off."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
        data = data[:end]
    out: dict[str, dict[str, Any]] = {}
    for lineno, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            out[line["key"]] = line
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise EvalError(f"{path}:{lineno}: not a prediction line ({type(e).__name__}); remove the line or use --overwrite") from None
    return out


def _check_header(out: Path, header: dict[str, Any], overwrite: bool) -> None:
    path = out / RUN_HEADER
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text())
        diff = [k for k in header if old.get(k) != header[k]]
        if diff:
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {header[k]!r}" for k in diff[:3])
            raise EvalError(f"{out} holds predictions of a different run ({detail}); use another --out or --overwrite")
    if overwrite:
        for name in (PREDICTIONS, METRICS):
            (out / name).unlink(missing_ok=True)
    path.write_text(json.dumps(header, indent=2) + "\n")


# --- the run ------------------------------------------------------------------------------------


def run_eval(
    model: str | Backend,
    bench: str | Path | Bench,
    out: str | Path,
    *,
    batch_size: int | None = None,
    limit: int | None = None,
    limit_points: int | None = None,
    max_new_tokens: int | None = None,
    meta: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    device: str = "cpu",
    dtype: str | None = None,
    plots: bool = True,
) -> EvalResult:
    """Evaluate ``model`` (a spec string or a :class:`Backend`) on ``bench``; write ``out``.

    ``limit`` keeps the first N records of the sample list, ``limit_points`` the first N labels
    of each (both are uniform subsamples: the list is in seeded random order).
    """
    for name, value in (("batch_size", batch_size), ("limit", limit), ("limit_points", limit_points), ("max_new_tokens", max_new_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EvalError(f"{name} must be a positive integer, got {value!r}")
    from vlm3.data.io import image_root
    from vlm3.eval.report import write_report

    bench = bench if isinstance(bench, Bench) else load_bench(bench)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else default_cache(out)
    data_dir = resolve_data(bench, cache, progress=progress)
    records = load_records(data_dir)
    samples = sample_list_for(bench, records, cache)
    # A backend object made by from_pretrained is named after its folder: its vlm3.json counts too.
    spec = model if isinstance(model, str) else getattr(model, "name", None)
    meta_values, meta_source = model_meta(spec or None, meta)
    if meta_values is not None and meta_values.get("task") not in (None, bench.task):
        _warn(f"the model was trained for task {meta_values.get('task')!r}; bench {bench.name!r} is {bench.task!r}")
    opts, sources = resolve_settings(bench.task, meta_values, bench.settings)
    max_new = max_new_tokens or bench.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[bench.task]
    backend = open_backend(model, batch_size, device=device, dtype=dtype) if isinstance(model, str) else model
    if not isinstance(model, str) and batch_size is not None:
        _set_batch_size(backend, batch_size)
    model_name = _spec_name(model) if isinstance(model, str) else (backend.name or type(backend).__name__)

    header = {
        "model": model_name,
        "bench": bench.name,
        "task": bench.task,
        "samples_hash": samples.hash,
        "settings": settings_dict(opts),
        "prompt_template_hash": prompt_template_hash(bench.task),
        "max_new_tokens": max_new,
    }
    _check_header(out, header, overwrite)
    cached = read_predictions(out / PREDICTIONS)
    entries = samples.entries[:limit]
    root = image_root(data_dir)
    total = samples.n_queries(limit, limit_points)

    start = time.perf_counter()
    calls = computed = reused = 0
    bar = _progress(progress, total, f"eval {bench.name}")
    try:
        with open(out / PREDICTIONS, "a", encoding="utf-8") as f:
            for entry in entries:
                labels = entry.labels[:limit_points] if entry.labels is not None else None
                keys = [f"{entry.record}#{label_key(bench.task, i)}" for i in (labels if labels is not None else [None])]
                have = sum(k in cached for k in keys)
                reused += have
                if have == len(keys):
                    bar.advance(len(keys))
                    continue
                lines, asked = _answer_entry(backend, bench.task, records[entry.record], root, opts, labels, cached, max_new)
                calls += bool(asked)
                if lines:
                    f.write("".join(json.dumps(line) + "\n" for line in lines))
                    f.flush()
                    os.fsync(f.fileno())
                for line in lines:
                    cached[line["key"]] = line
                computed += asked
                bar.advance(len(keys) - have)
    finally:
        bar.stop()
    seconds = time.perf_counter() - start

    ordered = []
    for entry in entries:
        labels = entry.labels[:limit_points] if entry.labels is not None else [None]
        ordered += [cached[f"{entry.record}#{label_key(bench.task, i)}"] for i in labels]
    info = {
        "model": {"spec": model_name, "backend": type(backend).__name__, "settings_from": meta_source, "processor": processor_info(backend, [records[e.record] for e in entries], opts)},
        "bench": {
            "name": bench.name, "config": bench.source, "task": bench.task, "data": str(data_dir),
            "samples": str(samples.path) if samples.path else None, "samples_hash": samples.hash, "seed": samples.seed,
            "records": len(entries), "records_in_list": len(samples.entries), "limit": limit, "limit_points": limit_points,
        },
        "settings": settings_dict(opts),
        "settings_source": sources,
        "prompt_template_hash": header["prompt_template_hash"],
        "questions_hash": "sha256:" + hashlib.sha256("\n".join(l.get("question", "") for l in ordered).encode()).hexdigest()[:16],
        "max_new_tokens": max_new,
        "versions": versions(),
        "run": {
            "seconds": round(seconds, 3), "queries": len(ordered), "computed": computed, "cached": reused,
            "backend_calls": calls, "queries_per_s": round(computed / seconds, 3) if seconds > 0 and computed else None,
            "batch_size": batch_size,
        },
    }
    proc = info["model"]["processor"]
    if proc and proc["images_resized"]:
        _warn(
            f"the model's image processor resizes {proc['images_resized']} of {proc['images']} unified images, so the focal "
            f"length it sees is fx {proc['effective_fx'][0]:.1f}..{proc['effective_fx'][1]:.1f} px, not {opts.focal:g}; "
            f"use settings.size_multiple = {proc['patch_multiple']} and a pixel budget ({proc['min_pixels']}..{proc['max_pixels']}) that holds the images"
        )
    metrics = write_report(out, bench.task, ordered, info, records=records, image_root=root, plots=plots)
    return EvalResult(out, metrics, len(ordered), reused, calls, seconds)


def _answer_entry(
    backend: Backend,
    task: str,
    record: Record,
    root: Path,
    opts: SampleOptions,
    labels: list[int] | None,
    cached: dict[str, Any],
    max_new_tokens: int,
) -> tuple[list[dict[str, Any]], int]:
    """Prediction lines for the uncached questions of one record (one ``query_many`` call), and
    how many questions were asked."""
    images = load_images(record, root)
    try:
        work = record_work(task, record, images, opts, labels)
    except ValueError as e:
        raise EvalError(f"record {record.id}: {e}") from None
    pending = [it for it in work.items if f"{record.id}#{it.label}" not in cached]
    answers = backend.query_many(work.images, [it.question for it in pending], max_new_tokens) if pending else []
    if len(answers) != len(pending):
        raise EvalError(f"the backend gave {len(answers)} answers for {len(pending)} questions (record {record.id})")
    lines = [_line(record, it, raw) for it, raw in zip(pending, answers)]
    lines += [
        {"key": f"{record.id}#{lab}", "record": record.id, "label": lab, "dataset": record.dataset, "skipped": "outside the transformed image"}
        for lab in work.skipped
        if f"{record.id}#{lab}" not in cached
    ]
    return lines, len(pending)


def _line(record: Record, item: _Item, raw: Any) -> dict[str, Any]:
    text = raw if isinstance(raw, str) else ""
    try:
        parsed, pred, extra = item.parse(text)
    except Exception:  # a malformed answer is a failed prediction, never a crash
        parsed, pred, extra = False, None, {}
    return {
        "key": f"{record.id}#{item.label}",
        "record": record.id,
        "label": item.label,
        "dataset": record.dataset,
        "question": item.question,
        "raw": text,
        "parsed": bool(parsed),
        "pred": pred,
        **item.fields,
        **extra,
    }


def _spec_name(spec: str) -> str:
    """The model spec as recorded: local folders as absolute paths, so ./m and m are one model."""
    if spec.startswith(("http://", "https://", "vllm:")):
        return spec
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _set_batch_size(backend: Backend, batch_size: int) -> None:
    for attr in ("batch_size", "max_concurrency"):
        if hasattr(backend, attr):
            setattr(backend, attr, int(batch_size))


def seen_size(record: Record, opts: SampleOptions, view: int = 0) -> tuple[int, int, float, float]:
    """(width, height, fx, fy) of a record view as the model is shown it (before its processor)."""
    from vlm3.geometry.unify import unified_intrinsics

    K = record.views[view].K
    if opts.unify:
        U = unified_intrinsics(K, opts.focal, opts.size_multiple)
        return U.width, U.height, U.fx, U.fy
    if opts.resize_to is not None:
        w, h = opts.resize_to
        return w, h, K.fx * w / K.width, K.fy * h / K.height
    return K.width, K.height, K.fx, K.fy


def processor_info(backend: Backend, records: list[Record], opts: SampleOptions) -> dict[str, Any] | None:
    """The local model's pixel budget and what its processor's resize does to the bench images.

    None for backends whose processor is not visible here (HTTP servers, vLLM).
    """
    processor = getattr(backend, "processor", None)
    if processor is None:
        return None
    from vlm3.models.processor import patch_multiple_of, pixel_budget, resize_report

    try:
        lo, hi = pixel_budget(processor)
        multiple = patch_multiple_of(processor)
    except (TypeError, ValueError):
        return None
    n_views = 2 if opts.task in ("pose", "correspondence") else 1
    resized, fxs, fys, n = 0, [], [], 0
    for rec in records:
        for v in range(min(n_views, len(rec.views))):
            w, h, fx, fy = seen_size(rec, opts, v)
            report = resize_report(w, h, processor)
            n += 1
            resized += report.resized
            fxs.append(fx * report.scale_x)
            fys.append(fy * report.scale_y)
    return {
        "min_pixels": lo,
        "max_pixels": hi,
        "patch_multiple": multiple,
        "images": n,
        "images_resized": resized,
        "effective_fx": [min(fxs), max(fxs)] if fxs else None,
        "effective_fy": [min(fys), max(fys)] if fys else None,
    }


def versions() -> dict[str, str]:
    """Versions of vlm3 and the libraries that decide the numbers."""
    import platform

    import vlm3

    out = {"vlm3": vlm3.__version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


def _warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]warning:[/yellow] {message}", highlight=False)


class _NoBar:
    def advance(self, n: int) -> None:
        pass

    def stop(self) -> None:
        pass


class _Bar:
    """A rich progress bar over queries (cached ones count as done)."""

    def __init__(self, total: int, description: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("queries"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
        )
        self.task = self.progress.add_task(description, total=total)
        self.progress.start()

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def stop(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, total: int, description: str) -> _Bar | _NoBar:
    return _Bar(total, description) if enabled else _NoBar()


__all__ = [
    "EvalError",
    "EvalResult",
    "BenchError",
    "model_meta",
    "open_backend",
    "processor_info",
    "prompt_template_hash",
    "read_predictions",
    "record_work",
    "run_eval",
    "seen_size",
    "versions",
]
