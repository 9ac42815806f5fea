"""Benchmarks defined in YAML: which data, which labelled points, and how questions are asked.

A bench config::

    name: ibims1
    task: depth                       # a registered task (vlm3.tasks.task_names())
    data:                             # exactly one of records / prepare / synth
      prepare:                        # converted once with `vlm3 prepare` into a cache folder
        adapter: depthlm-jsonl
        root: ${VLM3_DATA}/ibims1     # env vars (VLM3_DATA: vlm3.paths); relative to this file
        options: {depth_type: z}
      # records: path/to/prepared     # a folder written by `vlm3 prepare` / `vlm3 synth`
      # synth: {family: fixed_rig, scenes: 16, seed: 1000, points: 10, matches: 20}
    samples: ibims1.samples.json      # the versioned sample list (default: <config stem>.samples.json)
    seed: 0                           # seeds the sample list the first time it is made
    limits: {records: null, points: null}   # records in the list, labelled points per record
    settings: {focal: 750, depth_type: range}    # vlm3.settings.Settings fields; the model's vlm3.json wins
    max_new_tokens: 32                # default: the task's
    scoring: {pair_order: cam2_from_cam1}   # pose only: or cam1_from_cam2 (VGGT's evaluation order)
    description: one line: what it is and its protocol
    questions: 10000                  # how many questions the protocol asks (`vlm3 bench list` before the data is here)
    get: |                            # how to get the data; printed when it is missing
      ...

The sample list names the records and the labelled points of each (indices into the record's
labels) in a seeded random order, so that any prefix (``--limit`` records, ``--limit-points``
points) is itself a uniform sample. It is made once from ``seed``, written next to the config
(or into the cache for configs without a file, and for shipped benches whose data is not part of
vlm3: their list depends on the user's copy of the data), and then always reused: evaluation never
re-samples. It carries a content hash of its entries and a fingerprint of the labelled records,
and loading fails with a clear message when either no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, PositiveInt, ValidationError, ValidationInfo, field_validator, model_validator

from vlm3.config import ConfigError, ConfigModel, read_yaml
from vlm3.data.records import Record
from vlm3.data.sampling import item_rng
from vlm3.paths import BENCH_DIR, DATA_ENV, DataPathError, data_dir, describe_data_dir
from vlm3.settings import ASK_FIELDS, Settings, validation_message
from vlm3.tasks.base import UnknownTask, get_task
from vlm3.tasks.pose import DEFAULT_PAIR_ORDER, PAIR_ORDERS

SAMPLES_FORMAT = "vlm3-bench-samples"
SAMPLES_VERSION = 1
CACHE_DIRNAME = ".vlm3-bench-cache"


class BenchError(ValueError):
    """A bad bench config or sample list; the message names the file, field and value."""


# --- config -----------------------------------------------------------------------------------


class PrepareSource(ConfigModel):
    """Data converted once with ``vlm3 prepare`` (``root`` relative to the config file)."""

    adapter: str = Field(min_length=1)
    root: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)
    points: PositiveInt | None = None
    seed: int = Field(0, ge=0)
    split: str = "test"


class SynthSource(ConfigModel):
    """Synthetic scenes rendered once (``vlm3.data.synth``)."""

    family: str = "fixed_rig"
    scenes: PositiveInt
    seed: int = Field(0, ge=0)
    points: PositiveInt = 10
    matches: PositiveInt = 20
    overrides: dict[str, Any] = Field(default_factory=dict)


class DataSource(ConfigModel):
    """Exactly one of: a prepared folder, an adapter run, synthetic scenes."""

    records: str | None = Field(None, min_length=1)
    prepare: PrepareSource | None = None
    synth: SynthSource | None = None

    @model_validator(mode="after")
    def _one(self) -> "DataSource":
        if sum(v is not None for v in (self.records, self.prepare, self.synth)) != 1:
            raise ValueError("give exactly one of records, prepare, synth")
        return self


class Limits(ConfigModel):
    records: PositiveInt | None = None
    points: PositiveInt | None = None


class Scoring(ConfigModel):
    """How answers are scored: options of ``Task.metrics``, which change no question or answer.

    ``pair_order`` (pose): the relative transform the metrics compare,
    ``cam2_from_cam1`` (vlm3's default: T_cam2_from_cam1 as labelled) or ``cam1_from_cam2`` (its
    inverse, VGGT's evaluation order; ``vlm3.tasks.pose.pair_in_order``).
    """

    pair_order: str = DEFAULT_PAIR_ORDER

    @field_validator("pair_order")
    @classmethod
    def _pair_order(cls, value: str) -> str:
        if value not in PAIR_ORDERS:
            raise ValueError(f"choose one of {', '.join(PAIR_ORDERS)}")
        return value


class BenchConfig(ConfigModel):
    """A bench config file (see module doc)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: str
    data: DataSource
    samples: str | None = Field(None, min_length=1)
    seed: int = Field(0, ge=0)
    limits: Limits = Field(default_factory=Limits)
    settings: dict[str, Any] = Field(default_factory=dict)
    max_new_tokens: PositiveInt | None = None
    scoring: Scoring = Field(default_factory=Scoring)
    description: str | None = None
    questions: PositiveInt | None = None
    get: str | None = None

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        try:
            return get_task(value).name
        except UnknownTask as e:
            raise ValueError(str(e)) from None

    @field_validator("settings")
    @classmethod
    def _settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(ASK_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join('settings.' + k for k in unknown)}; known: {', '.join(ASK_FIELDS)}")
        return value

    @field_validator("scoring")
    @classmethod
    def _scoring_fits_task(cls, value: Scoring, info: ValidationInfo) -> Scoring:
        task = info.data.get("task")
        if task is None:  # the task itself is wrong: that error is enough
            return value
        known = get_task(task).scoring_options
        extra = sorted(value.model_fields_set - set(known))
        if extra:
            raise ValueError(f"{', '.join(extra)}: not a scoring option of task {task!r} (its options: {', '.join(known) or 'none'})")
        return value


@dataclass
class Bench:
    """A parsed bench config (see module doc). Paths are absolute."""

    name: str
    task: str
    data: dict[str, Any]
    samples_path: Path | None = None
    seed: int = 0
    max_records: int | None = None
    max_points: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int | None = None
    source: str = "<dict>"  # the config file, for messages
    scoring: dict[str, Any] = field(default_factory=dict)  # Task.metrics options (Scoring fields)
    data_setting: str | None = None  # where ${VLM3_DATA} in a data path came from, for messages
    description: str | None = None
    questions: int | None = None  # the protocol's question count (config field ``questions``)
    get: str | None = None  # how to get the data (config field ``get``)

    def spec_hash(self) -> str:
        """Hash of the data source: names the cache folder it is prepared into."""
        return _sha(json.dumps(self.data, sort_keys=True, default=str))[:12]


def bench_dir() -> Path:
    """The shipped bench configs (``vlm3/configs/bench`` inside the package, where named benches live)."""
    return BENCH_DIR


def find_bench(name_or_path: str | Path) -> Path:
    """A bench config file from a path, else a name: ``NAME.yaml`` among the shipped benches, then
    in ``./configs/bench`` (a project's own)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    for candidate in (bench_dir() / f"{name_or_path}.yaml", Path("configs/bench") / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in bench_dir().glob("*.yaml")) if bench_dir().is_dir() else []
    raise BenchError(
        f"bench {str(name_or_path)!r}: no such file, no shipped bench of that name in {bench_dir()} "
        f"and no configs/bench/{name_or_path}.yaml here (known: {', '.join(known) or 'none'})"
    )


def load_bench(name_or_path: str | Path) -> Bench:
    """Read and check a bench config file (or a bench name, see :func:`find_bench`)."""
    path = find_bench(name_or_path)
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        raise BenchError(str(e)) from None
    return bench_from_dict(raw, path)


def bench_from_dict(raw: Any, path: str | Path | None = None) -> Bench:
    """A :class:`Bench` from a config mapping; relative paths are taken from ``path``'s folder."""
    where = str(path) if path is not None else "<bench config>"
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    try:
        cfg = BenchConfig.model_validate(raw)
        Settings.model_validate(cfg.settings)
    except ValidationError as e:
        prefix = "settings." if e.title == Settings.__name__ else ""
        raise BenchError(f"{where}: {validation_message(e, prefix)}") from None

    def resolve(value: str, name: str) -> str:
        return str((base / _expand(value, where, name)).resolve())

    d = cfg.data
    raw_paths = [d.records, d.prepare.root if d.prepare is not None else None]
    data_setting = None
    if any(p is not None and _uses_var(p, DATA_ENV) for p in raw_paths):
        data_setting = describe_data_dir()
    if d.records is not None:
        data: dict[str, Any] = {"records": resolve(d.records, "data.records")}
    elif d.prepare is not None:
        p = d.prepare
        data = {"prepare": {"adapter": p.adapter, "root": resolve(p.root, "data.prepare.root"), "options": {str(k): str(v) for k, v in p.options.items()}, "points": p.points, "seed": p.seed, "split": p.split}}
    else:
        data = {"synth": d.synth.model_dump()}
    samples_path: Path | None = None
    if cfg.samples is not None:
        samples_path = Path(resolve(cfg.samples, "samples"))
    elif path is not None:
        samples_path = base / f"{Path(path).stem}.samples.json"
        if base == bench_dir().resolve() and not samples_path.is_file():
            samples_path = None  # a shipped bench on the user's data: its list is drawn into the cache
    scoring = {k: v for k, v in cfg.scoring.model_dump().items() if k in get_task(cfg.task).scoring_options}
    return Bench(
        cfg.name, cfg.task, data, samples_path, cfg.seed, cfg.limits.records, cfg.limits.points, dict(cfg.settings),
        cfg.max_new_tokens, where, scoring, data_setting, cfg.description, cfg.questions, cfg.get,
    )


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _uses_var(text: str, var: str) -> bool:
    return any(m.group(1) == var for m in _VAR.finditer(text))


def _expand(text: str, where: str, name: str) -> str:
    """``${NAME}`` / ``${NAME:-default}`` from the environment, then ``~``. ``${VLM3_DATA}``
    unset takes :func:`vlm3.paths.data_dir`'s default."""

    def sub(match: re.Match) -> str:
        value = os.environ.get(match.group(1))
        if value is None and match.group(1) == DATA_ENV and match.group(2) is None:
            try:
                return str(data_dir())
            except DataPathError as e:
                raise BenchError(f"{where}: {name} uses ${{{DATA_ENV}}}: {e}") from None
        if value is None and match.group(2) is None:
            raise BenchError(f"{where}: {name} uses ${{{match.group(1)}}}, which is not set")
        return value if value is not None else match.group(2)

    return os.path.expanduser(_VAR.sub(sub, text))


def bench_names() -> list[str]:
    """The shipped benches' names, sorted."""
    return sorted(p.stem for p in bench_dir().glob("*.yaml"))


def data_missing(bench: Bench) -> str | None:
    """Why ``bench``'s data is not here (None when it is): the missing folder and where
    ``${VLM3_DATA}`` points. Synthetic benches are always here."""
    from vlm3.data.io import MANIFEST

    hint = f" ({bench.data_setting})" if bench.data_setting else ""
    if "records" in bench.data:
        folder = Path(bench.data["records"])
        return None if (folder / MANIFEST).is_file() else f"{folder} is not a prepared dataset{hint}"
    if "prepare" in bench.data:
        root = Path(bench.data["prepare"]["root"])
        return None if root.is_dir() else f"{root} does not exist{hint}"
    return None


# --- data -------------------------------------------------------------------------------------


def default_cache(out: str | Path) -> Path:
    """Where prepared bench data is cached by default: next to the output folder."""
    return Path(out).resolve().parent / CACHE_DIRNAME


def resolve_data(bench: Bench, cache_dir: str | Path, *, progress: bool = True) -> Path:
    """The prepared records folder of ``bench``, preparing it into ``cache_dir`` the first time."""
    from vlm3.data.io import MANIFEST

    if "records" in bench.data:
        folder = Path(bench.data["records"])
        if not (folder / MANIFEST).is_file():
            hint = f" ({bench.data_setting})" if bench.data_setting else ""
            raise BenchError(f"{bench.source}: data.records = {folder} is not a prepared dataset (no {MANIFEST}){hint}")
        return folder
    folder = Path(cache_dir) / f"{bench.name}-{bench.spec_hash()}"
    if (folder / MANIFEST).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    if "prepare" in bench.data:
        _prepare(bench, folder, progress)
    else:
        _synth(bench, folder, progress)
    return folder


def _prepare(bench: Bench, folder: Path, progress: bool) -> None:
    from rich.console import Console

    from vlm3.data.prepare import PrepareError, PrepareOptions, prepare

    spec = bench.data["prepare"]
    if not Path(spec["root"]).exists():
        hint = f" ({bench.data_setting}; set {DATA_ENV} to the folder that holds the data)" if bench.data_setting else ""
        get = f"\nTo get it:\n{bench.get.rstrip()}" if bench.get else ""
        raise BenchError(f"{bench.source}: data.prepare.root = {spec['root']} does not exist{hint}{get}")
    opts = PrepareOptions(points=spec["points"], seed=spec["seed"], split=spec["split"], options=dict(spec["options"]))
    try:
        report = prepare(spec["adapter"], spec["root"], folder, opts, progress=progress, console=Console(stderr=True))
    except PrepareError as e:
        raise BenchError(f"{bench.source}: preparing data.prepare ({spec['adapter']} on {spec['root']}) failed: {e}") from None
    if not report.complete:
        raise BenchError(f"{bench.source}: preparing {spec['root']} did not finish; see {folder / 'prepare_report.json'}")


def _synth(bench: Bench, folder: Path, progress: bool) -> None:
    from vlm3.data.synth import generate, get_family

    spec = bench.data["synth"]
    try:
        family = get_family(spec["family"], **_synth_overrides(spec["overrides"]))
    except (KeyError, ValueError, TypeError) as e:
        raise BenchError(f"{bench.source}: data.synth: {e}") from None
    generate(
        family, spec["scenes"], folder, seed=spec["seed"], tasks=bench.task, points=spec["points"], matches=spec["matches"],
        split="test", overwrite=True, progress=progress,
    )


def _synth_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    # YAML lists become the tuples that family range parameters are.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def load_records(data_dir: str | Path) -> dict[str, Record]:
    """Every record of a prepared dataset by id (ids must be unique)."""
    from vlm3.data.io import read_records

    out: dict[str, Record] = {}
    for rec in read_records(data_dir):
        if rec.id in out:
            raise BenchError(f"{data_dir}: record id {rec.id!r} occurs twice")
        out[rec.id] = rec
    return out


# --- the sample list ----------------------------------------------------------------------------


@dataclass
class Entry:
    """One record of the list and the labels asked about (indices into its labels; None = the pair)."""

    record: str
    labels: list[int] | None


@dataclass
class SampleList:
    """The fixed list of what a bench evaluates (see module doc)."""

    bench: str
    task: str
    seed: int
    entries: list[Entry]
    data_fingerprint: str
    max_records: int | None
    max_points: int | None
    path: Path | None = None

    @property
    def hash(self) -> str:
        return entries_hash(self.task, self.entries)

    def n_queries(self, limit: int | None = None, limit_points: int | None = None) -> int:
        return sum(1 if e.labels is None else len(e.labels[:limit_points]) for e in self.entries[:limit])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SAMPLES_FORMAT,
            "version": SAMPLES_VERSION,
            "bench": self.bench,
            "task": self.task,
            "seed": self.seed,
            "limits": {"records": self.max_records, "points": self.max_points},
            "data_fingerprint": self.data_fingerprint,
            "hash": self.hash,
            "entries": [{"record": e.record, "labels": e.labels} for e in self.entries],
        }


def entries_hash(task: str, entries: list[Entry]) -> str:
    text = json.dumps({"task": task, "entries": [[e.record, e.labels] for e in entries]}, separators=(",", ":"))
    return "sha256:" + _sha(text)


def records_fingerprint(records: list[Record]) -> str:
    """Hash of the labelled content of ``records`` (everything but ``meta``), in order."""
    h = hashlib.sha256()
    for rec in records:
        h.update(json.dumps(rec.model_dump(exclude={"meta"}, exclude_none=True), sort_keys=True).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def make_sample_list(bench: Bench, records: dict[str, Record]) -> SampleList:
    """Draw the list from ``bench.seed``: records in a seeded order, each record's labels in a
    seeded order (from ``(seed, record id)`` alone), cut to the bench limits."""
    task = get_task(bench.task)
    usable = sorted(rid for rid, rec in records.items() if task.has_labels(rec))
    if not usable:
        raise BenchError(f"{bench.source}: no record of the data has {bench.task} labels")
    order = np.random.default_rng(bench.seed).permutation(len(usable))
    chosen = [usable[i] for i in order[: bench.max_records]]
    entries: list[Entry] = []
    for rid in chosen:
        n = task.n_labels(records[rid])
        if n == 0:
            continue  # e.g. an image with a single boxed object: nothing to ask
        if n is None:
            entries.append(Entry(rid, None))
            continue
        perm = item_rng(bench.seed, rid).permutation(n)[: bench.max_points]
        entries.append(Entry(rid, [int(i) for i in perm]))
    fingerprint = records_fingerprint([records[e.record] for e in entries])
    return SampleList(bench.name, bench.task, bench.seed, entries, fingerprint, bench.max_records, bench.max_points)


def write_sample_list(samples: SampleList, path: str | Path) -> Path:
    """Write the list as JSON, one entry per line (diff-friendly), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = samples.to_dict()
    entries = head.pop("entries")
    lines = ",\n".join("    " + json.dumps(e, separators=(", ", ": ")) for e in entries)
    body = json.dumps(head, indent=2)[:-2] + ',\n  "entries": [\n' + lines + "\n  ]\n}\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(body)
    os.replace(tmp, path)
    samples.path = path
    return path


def read_sample_list(path: str | Path) -> SampleList:
    """Read and verify a sample list file (format, version, content hash)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BenchError(f"{path}: cannot read the sample list ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != SAMPLES_FORMAT:
        raise BenchError(f"{path}: not a vlm3 sample list (format must be {SAMPLES_FORMAT!r})")
    if raw.get("version") != SAMPLES_VERSION:
        raise BenchError(f"{path}: sample list version {raw.get('version')!r} is not supported (expected {SAMPLES_VERSION})")
    try:
        entries = [Entry(str(e["record"]), None if e["labels"] is None else [int(i) for i in e["labels"]]) for e in raw["entries"]]
        limits = raw.get("limits") or {}
        samples = SampleList(
            str(raw["bench"]), str(raw["task"]), int(raw["seed"]), entries, str(raw["data_fingerprint"]),
            limits.get("records"), limits.get("points"), path,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BenchError(f"{path}: malformed sample list ({type(e).__name__}: {e})") from None
    if raw.get("hash") != samples.hash:
        raise BenchError(f"{path}: content hash {raw.get('hash')!r} does not match its entries ({samples.hash}); the file was edited")
    return samples


def sample_list_for(bench: Bench, records: dict[str, Record], cache_folder: Path | None = None) -> SampleList:
    """The bench's sample list: read when it exists (and checked against the bench and data),
    else drawn once and written next to the config (or into ``cache_folder``)."""
    path = bench.samples_path or (cache_folder / f"{bench.name}.samples.json" if cache_folder is not None else None)
    if path is None:
        raise BenchError(f"{bench.source}: no place to keep the sample list (give samples: FILE or a cache folder)")
    if path.is_file():
        samples = read_sample_list(path)
        if samples.task != bench.task:
            raise BenchError(f"{path}: sample list is for task {samples.task!r} but bench {bench.name!r} is {bench.task!r}")
        if (samples.seed, samples.max_records, samples.max_points) != (bench.seed, bench.max_records, bench.max_points):
            raise BenchError(
                f"{path}: made with seed={samples.seed}, limits records={samples.max_records} points={samples.max_points}, "
                f"but {bench.source} now says seed={bench.seed}, records={bench.max_records}, points={bench.max_points}; "
                "delete the list to draw a new one (results will not be comparable with earlier runs)"
            )
        missing = [e.record for e in samples.entries if e.record not in records]
        if missing:
            raise BenchError(f"{path}: {len(missing)} listed record(s) are not in the data, e.g. {missing[0]!r}")
        fingerprint = records_fingerprint([records[e.record] for e in samples.entries])
        if fingerprint != samples.data_fingerprint:
            raise BenchError(
                f"{path}: the listed records' labels differ from when the list was made "
                f"(fingerprint {fingerprint[:23]}... vs {samples.data_fingerprint[:23]}...); the data or its preparation changed"
            )
        return samples
    samples = make_sample_list(bench, records)
    write_sample_list(samples, path)
    return samples


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
