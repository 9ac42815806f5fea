"""``vlm3 eval``: ask a model a bench's questions, save every answer as it arrives, then report.

For each record of the bench's sample list (``vlm3.eval.bench``) the record becomes a sample
(``vlm3.tasks.samples.build_sample``: view transform, text coordinates, one question per label),
:func:`vlm3.ask.ask` puts its questions to the model in one call and reads the answers, and the
prediction lines are appended to ``OUT/predictions.jsonl``, flushed and synced per record. A crashed or interrupted run is resumed by running the same
command again: every (record, label) key already in the file is reused and not asked again. A
torn last line (a kill in the middle of a write) is dropped and recomputed.

``OUT/run.json`` holds what the cached answers depend on (model, bench list hash, settings,
prompt templates, max_new_tokens); resuming into a folder made with different values is refused.

Each line of ``predictions.jsonl``: ``key`` ("<record id>#<label>"), ``record``, ``label``
(the task's label key: ``d12`` = depth label 12 of the record, ``m3`` = match 3, ``q40`` = object
question 40, ``pair``), ``dataset``, ``question``, ``raw`` (the model's answer), ``parsed``,
``truncated`` (the answer was cut off at max_new_tokens: a failure, ``pred`` null; see
:mod:`vlm3.ask`), ``pred`` and ``gt`` (in the task's units, original image frame; see each task
class in ``vlm3.tasks``), and the task's fields.

Every label of the sample list is scored, for every model. A label the view transform cannot show
(``vlm3.data.unify``: only lens distortion moving it off the canvas; ``size_multiple`` pads) is
never asked: its line has ``not_asked`` (the reason code, ``vlm3.data.unify.NOT_ASKED``), ``pred``
null, ``parsed`` false, its ``gt`` and the task's fields, and it counts as a failure in every
metric. Which labels are not asked depends on the data and the settings only, so two models asked
with the same settings are scored on the same labels.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlm3.ask import AskError, ask
from vlm3.data.records import Record
from vlm3.eval.bench import Bench, BenchError, default_cache, load_bench, load_records, resolve_data, sample_list_for
from vlm3.models.backend import Backend, open_backend, spec_name
from vlm3.models.truth import SPEC as TRUTH_SPEC, GroundTruthBackend
from vlm3.profiles import ProfileError, model_ids, profile_hash, task_profile
from vlm3.settings import Settings, SettingsError, model_settings_for, served_settings, settings_for_model
from vlm3.tasks.base import Task, get_task
from vlm3.tasks.object3d import OBJECT
from vlm3.tasks.samples import NotAsked, Sample, build_sample, load_images

PREDICTIONS = "predictions.jsonl"
RUN_HEADER = "run.json"
METRICS = "metrics.json"
#: How a unified canvas meets ``size_multiple`` (``run.json``): padded up, never cropped.
CANVAS = "padded up to size_multiple"


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


def prompt_template_hash(task: Task, settings: Settings) -> str:
    """Hash of the task's question templates (changes when the prompt wording changes)."""
    return "sha256:" + hashlib.sha256("\n".join(task.prompts(settings)).encode()).hexdigest()[:16]


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
    backend_options: dict[str, Any] | None = None,
    pair_order: str | None = None,
    profile: str | None = None,
    judge: dict[str, Any] | None = None,
) -> EvalResult:
    """Evaluate ``model`` (a spec string or a :class:`Backend`) on ``bench``; write ``out``.

    ``limit`` keeps the first N records of the sample list, ``limit_points`` the first N labels
    of each (both are uniform subsamples: the list is in seeded random order). The model's
    settings come from ``meta``, its folder's ``vlm3.json``, or what its server publishes.
    ``backend_options`` go to the backend (e.g. ``api_key``, ``model`` for HTTP). ``profile``
    (``--profile``) says how to ask a model that has no ``vlm3.json`` and is not a known checkpoint
    (:func:`vlm3.settings.settings_for_model`).
    ``pair_order`` (pose benches) overrides the bench's ``scoring.pair_order``; scoring options
    change no question, so cached answers are reused and only the metrics change.
    ``judge`` (object benches; ``--judge``): ``{"base_url", "model", "api_key_env"}`` of an
    OpenAI-compatible endpoint that re-scores every answer with SpatialRGPT-Bench's official LLM-judge
    protocol (:mod:`vlm3.eval.judge`); its scores and its agreement with vlm3's rules go into
    ``metrics.json`` as ``judge``.
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
    task = get_task(bench.task)
    scoring = _scoring(bench, task, pair_order)
    if judge is not None and task.name != OBJECT.name:
        raise EvalError(f"--judge re-scores object answers; bench {bench.name!r} is a {task.name} bench")
    if model == TRUTH_SPEC:  # the ground-truth answerer (vlm3.models.truth): checks the bench, not a model
        backend: Backend = GroundTruthBackend(bench, cache, profile)
    elif isinstance(model, str):
        backend = open_backend(model, batch_size, device=device, dtype=dtype, **(backend_options or {}))
    else:
        backend = model
    if not isinstance(model, str) and batch_size is not None:
        _set_batch_size(backend, batch_size)
    try:
        try:
            trained = model_settings_for(spec or None, meta) or served_settings(backend)
        except SettingsError as e:
            raise EvalError(str(e)) from None
        if trained is not None and trained.task not in (None, task.name):
            _warn(f"the model was trained for task {trained.task!r}; bench {bench.name!r} is {task.name!r}")
        try:
            settings, sources, profile_from = settings_for_model(
                task, trained, bench.settings, profile=profile, model_ids=model_ids(spec, backend), model=str(spec or type(backend).__name__)
            )
            fixed_limit = task_profile(settings.profile, task).max_new_tokens
        except (ProfileError, SettingsError) as e:
            raise EvalError(str(e)) from None
        # A profile's own limit beats the bench's (bench limits fit vlm3's short answers).
        max_new = max_new_tokens or fixed_limit or bench.max_new_tokens or task.max_new_tokens
        model_name = spec_name(model) if isinstance(model, str) else (backend.name or type(backend).__name__)

        header = {
            "model": model_name,
            "bench": bench.name,
            "task": task.name,
            "samples_hash": samples.hash,
            "settings": settings.model_dump(mode="json"),
            "prompt_template_hash": prompt_template_hash(task, settings),
            "profile": {"name": settings.profile, "hash": profile_hash(settings, task)},
            "max_new_tokens": max_new,
        }
        if settings.unify and settings.size_multiple:
            # Older vlm3 cropped such canvases (other text coordinates): their answers are not reused.
            header["canvas"] = CANVAS
        _check_header(out, header, overwrite)
        # A question whose request failed (the server was down) is asked again, not kept; so is a
        # label an older vlm3 "skipped" without scoring it (it is now asked, or scored as not asked).
        cached = {k: line for k, line in read_predictions(out / PREDICTIONS).items() if not line.get("error") and "skipped" not in line}
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
                    keys = [f"{entry.record}#{task.label_key(i)}" for i in (labels if labels is not None else [None])]
                    have = sum(k in cached for k in keys)
                    reused += have
                    if have == len(keys):
                        bar.advance(len(keys))
                        continue
                    lines, asked = _answer_entry(backend, task, records[entry.record], root, settings, labels, cached, max_new)
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
            ordered += [cached[f"{entry.record}#{task.label_key(i)}"] for i in labels]
        info = {
            "model": {"spec": model_name, "backend": type(backend).__name__, "settings_from": None if trained is None else trained.path, "processor": processor_info(backend, [records[e.record] for e in entries], task, settings)},
            "bench": {
                "name": bench.name, "config": bench.source, "task": bench.task, "data": str(data_dir),
                "samples": str(samples.path) if samples.path else None, "samples_hash": samples.hash, "seed": samples.seed,
                "records": len(entries), "records_in_list": len(samples.entries), "limit": limit, "limit_points": limit_points,
            },
            "settings": header["settings"],
            "settings_source": sources,
            "profile": {**header["profile"], "from": profile_from, "require": task_profile(settings.profile, task).require},
            "prompt_template_hash": header["prompt_template_hash"],
            "questions_hash": "sha256:" + hashlib.sha256("\n".join(l.get("question", "") for l in ordered).encode()).hexdigest()[:16],
            "max_new_tokens": max_new,
            "scoring": scoring,
            "versions": versions(),
            "run": {
                "seconds": round(seconds, 3), "queries": len(ordered), "computed": computed, "cached": reused,
                "backend_calls": calls, "queries_per_s": round(computed / seconds, 3) if seconds > 0 and computed else None,
                "batch_size": batch_size if batch_size is not None else _batch_setting(backend),
            },
        }
        proc = info["model"]["processor"]
        if proc and proc["images_resized"]:
            _warn(
                f"the model's image processor resizes {proc['images_resized']} of {proc['images']} unified images, so the focal "
                f"length it sees is fx {proc['effective_fx'][0]:.1f}..{proc['effective_fx'][1]:.1f} px, not {settings.focal:g}; "
                f"use settings.size_multiple = {proc['patch_multiple']} and a pixel budget ({proc['min_pixels']}..{proc['max_pixels']}) that holds the images"
            )
        # Metrics options: the bench's scoring, the text-coordinate range, and each view as shown.
        if judge is not None:
            from vlm3.eval.judge import JudgeError, judge_run, make_client

            try:
                client = make_client(judge.get("base_url"), judge.get("api_key_env") or "OPENAI_API_KEY")
                info["judge"] = judge_run(out, ordered, client, judge["model"], base_url=judge.get("base_url"))
            except JudgeError as e:
                raise EvalError(f"--judge: {e}") from None
            except Exception as e:  # a refused key, unknown model or unreachable URL: one line
                raise EvalError(f"--judge {judge.get('base_url') or 'OpenAI'} ({judge['model']}): {type(e).__name__}: {e}") from None
        options = {**scoring, "n_coords": settings.n_coords, "views": view_frames([records[e.record] for e in entries], task, settings)}
        metrics = write_report(out, task, ordered, info, records=records, image_root=root, plots=plots, options=options)
        return EvalResult(out, metrics, len(ordered), reused, calls, seconds)
    finally:
        if isinstance(model, str):  # opened here: close its connections / engine
            backend.close()


def _scoring(bench: Bench, task: Task, pair_order: str | None) -> dict[str, Any]:
    """The bench's scoring options with a ``pair_order`` override (tasks that have the option: pose)."""
    from vlm3.tasks.pose import PAIR_ORDERS

    scoring = dict(bench.scoring)
    if pair_order is not None:
        if "pair_order" not in task.scoring_options:
            raise EvalError(f"pair_order is not a scoring option of task {task.name!r} (bench {bench.name!r})")
        if pair_order not in PAIR_ORDERS:
            raise EvalError(f"pair_order must be one of {', '.join(PAIR_ORDERS)}, got {pair_order!r}")
        scoring["pair_order"] = pair_order
    return scoring


def view_frames(records: list[Record], task: Task, settings: Settings) -> dict[str, list[list[float]]]:
    """``{record id: [[width, height, sx, sy] per view the task shows]}``: each view as the model is
    shown it (:func:`seen_size`) and its scale from the original image (the metrics option ``views``)."""
    out: dict[str, list[list[float]]] = {}
    for rec in records:
        frames = []
        for v in range(min(task.n_images, len(rec.views))):
            w, h, fx, fy = seen_size(rec, settings, v)
            K = rec.views[v].K
            frames.append([float(w), float(h), fx / K.fx, fy / K.fy])
        out[rec.id] = frames
    return out


def _answer_entry(
    backend: Backend,
    task: Task,
    record: Record,
    root: Path,
    settings: Settings,
    labels: list[int] | None,
    cached: dict[str, Any],
    max_new_tokens: int,
) -> tuple[list[dict[str, Any]], int]:
    """Prediction lines for the uncached questions of one record (one backend call), and how
    many questions were asked."""
    images = load_images(record, root)
    try:
        sample = build_sample(record, images, task, settings, labels=labels)
    except ValueError as e:
        raise EvalError(f"record {record.id}: {e}") from None
    if labels is not None and len(sample.queries) + len(sample.not_asked) != len(labels):
        raise EvalError(f"record {record.id}: {len(sample.queries)} questions for {len(labels)} listed labels; the sample list does not fit the data")
    done = {q.label for q in sample.queries if f"{record.id}#{task.label_key(q.label)}" in cached}
    try:
        answers = ask(backend, sample, max_new_tokens=max_new_tokens, skip=done)
    except AskError as e:
        raise EvalError(str(e)) from None
    lines = [a.line(sample) for a in answers]
    lines += [line for line in (not_asked_line(sample, item) for item in sample.not_asked) if line["key"] not in cached]
    return lines, len(answers)


def not_asked_line(sample: Sample, item: NotAsked) -> dict[str, Any]:
    """The prediction line of a label that was never asked: a failure (``pred`` null) with its
    ground truth, the task's fields and ``not_asked`` = the reason code."""
    task = get_task(sample.task)
    key = task.label_key(item.label)
    return {
        "key": f"{sample.record_id}#{key}", "record": sample.record_id, "label": key, "dataset": sample.dataset,
        "not_asked": item.reason, "parsed": False, "truncated": False, "pred": None, "gt": item.query.gt, **item.query.fields,
    }


#: Backend attributes that hold ``--batch-size``: a local batch, or HTTP requests in flight.
_BATCH_ATTRS = ("batch_size", "max_concurrency")


def _batch_setting(backend: Backend) -> int | str | None:
    """The backend's batch when none was asked for: its fixed batch or requests in flight, or
    "auto" (a local model's ``query_many`` chooses it from memory per image)."""
    for attr in _BATCH_ATTRS:
        value = getattr(backend, attr, None)
        if isinstance(value, int):
            return value
    return "auto" if hasattr(backend, "query_batch_size") else None


def _set_batch_size(backend: Backend, batch_size: int) -> None:
    for attr in _BATCH_ATTRS:
        if hasattr(backend, attr):
            setattr(backend, attr, int(batch_size))


def seen_size(record: Record, settings: Settings, view: int = 0) -> tuple[int, int, float, float]:
    """(width, height, fx, fy) of a record view as the model is shown it (before its processor)."""
    from vlm3.geometry.unify import longest_side_intrinsics, unified_intrinsics

    K = record.views[view].K
    if settings.unify:
        U = unified_intrinsics(K, settings.focal, settings.size_multiple, settings.focal_axes)
        return U.width, U.height, U.fx, U.fy
    if settings.resize_to is not None:
        w, h = settings.resize_to
        return w, h, K.fx * w / K.width, K.fy * h / K.height
    if settings.longest_side is not None:
        U = longest_side_intrinsics(K, settings.longest_side)
        return U.width, U.height, U.fx, U.fy
    return K.width, K.height, K.fx, K.fy


def processor_info(backend: Backend, records: list[Record], task: Task, settings: Settings) -> dict[str, Any] | None:
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
    n_views = task.n_images
    resized, fxs, fys, n = 0, [], [], 0
    for rec in records:
        for v in range(min(n_views, len(rec.views))):
            w, h, fx, fy = seen_size(rec, settings, v)
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
    """Versions of vlm3 and the libraries that decide the numbers (read without importing them)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import vlm3

    out = {"vlm3": vlm3.__version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
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


__all__ = ["BenchError", "EvalError", "EvalResult", "processor_info", "prompt_template_hash", "read_predictions", "run_eval", "seen_size", "versions"]
