"""Benchmarks defined in YAML: which data, which labelled points, and how questions are asked.

A bench config::

    name: ibims1
    task: depth                       # depth | pose | correspondence | object
    data:                             # exactly one of records / prepare / synth
      prepare:                        # converted once with `vlm3 prepare` into a cache folder
        adapter: depthlm-jsonl
        root: ${VLM3_IBIMS1:-../../../shared/data/ibims1}   # env vars; relative to this file
        options: {depth_type: z}
      # records: path/to/prepared     # a folder written by `vlm3 prepare` / `vlm3 synth`
      # synth: {family: fixed_rig, scenes: 16, seed: 1000, points: 10, matches: 20}
    samples: ibims1.samples.json      # the versioned sample list (default: <config stem>.samples.json)
    seed: 0                           # seeds the sample list the first time it is made
    limits: {records: null, points: null}   # records in the list, labelled points per record
    settings: {focal: 1000, n_coords: 2000, depth_type: range}   # see resolve_settings
    max_new_tokens: 32

The sample list names the records and the labelled points of each (indices into the record's
labels) in a seeded random order, so that any prefix (``--limit`` records, ``--limit-points``
points) is itself a uniform sample. It is made once from ``seed``, written next to the config
(or into the cache for configs without a file), and then always reused: evaluation never
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
import yaml

from vlm3.data.records import Record
from vlm3.data.sampling import item_rng
from vlm3.tasks.samples import SampleOptions

TASKS: tuple[str, ...] = ("depth", "pose", "correspondence", "object")
TASK_ALIASES = {"corr": "correspondence", "correspondences": "correspondence", "objects": "object"}
SAMPLES_FORMAT = "vlm3-bench-samples"
SAMPLES_VERSION = 1
DEFAULT_MAX_NEW_TOKENS = {"depth": 32, "pose": 96, "correspondence": 32, "object": 64}
CACHE_DIRNAME = ".vlm3-bench-cache"
# Bench keys, data keys and the sample settings a bench may set.
_BENCH_KEYS = {"name", "task", "data", "samples", "seed", "limits", "settings", "max_new_tokens", "description"}
_DATA_KEYS = {"records", "prepare", "synth"}
_PREPARE_KEYS = {"adapter", "root", "options", "points", "seed", "split"}
_SYNTH_KEYS = {"family", "scenes", "seed", "points", "matches", "overrides"}
_LIMIT_KEYS = {"records", "points"}
SETTING_KEYS: tuple[str, ...] = ("unify", "focal", "size_multiple", "resize_to", "n_coords", "depth_type", "answer_style")
# The defaults when neither the model (vlm3.json) nor the bench sets a value. "range" is what the
# prompt asks ("how far ... from the camera"); records of z-depth are converted to it.
DEFAULT_SETTINGS: dict[str, Any] = {
    "unify": True,
    "focal": 1000.0,
    "size_multiple": None,
    "resize_to": None,
    "n_coords": 2000,
    "depth_type": "range",
    "answer_style": "short",
}


class BenchError(ValueError):
    """A bad bench config or sample list; the message names the file, field and value."""


# --- config -----------------------------------------------------------------------------------


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

    def spec_hash(self) -> str:
        """Hash of the data source: names the cache folder it is prepared into."""
        return _sha(json.dumps(self.data, sort_keys=True, default=str))[:12]


def bench_dir() -> Path:
    """The repository's ``configs/bench`` folder (where named benches live)."""
    return Path(__file__).resolve().parents[2] / "configs" / "bench"


def find_bench(name_or_path: str | Path) -> Path:
    """A bench config file from a path, or a name looked up in ``configs/bench``."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    for candidate in (bench_dir() / f"{name_or_path}.yaml", Path("configs/bench") / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in bench_dir().glob("*.yaml")) if bench_dir().is_dir() else []
    raise BenchError(f"bench {str(name_or_path)!r}: no such file and no configs/bench/{name_or_path}.yaml (known: {', '.join(known) or 'none'})")


def load_bench(name_or_path: str | Path) -> Bench:
    """Read and check a bench config file (or a name in ``configs/bench``)."""
    path = find_bench(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BenchError(f"{path}: invalid YAML ({e})") from None
    return bench_from_dict(raw, path)


def bench_from_dict(raw: Any, path: str | Path | None = None) -> Bench:
    """A :class:`Bench` from a config mapping; relative paths are taken from ``path``'s folder."""
    where = str(path) if path is not None else "<bench config>"
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    if not isinstance(raw, dict):
        raise BenchError(f"{where}: a bench config is a mapping with name, task and data")
    _unknown(raw, _BENCH_KEYS, where, "")
    for key in ("name", "task", "data"):
        if key not in raw:
            raise BenchError(f"{where}: missing field '{key}'")
    name = raw["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise BenchError(f"{where}: name = {name!r} must be a word of letters, digits, '_', '-', '.'")
    task = TASK_ALIASES.get(raw["task"], raw["task"])
    if task not in TASKS:
        raise BenchError(f"{where}: task = {raw['task']!r} must be one of {', '.join(TASKS)}")
    data = _check_data(raw["data"], base, where)
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BenchError(f"{where}: seed = {seed!r} must be a non-negative integer")
    limits = raw.get("limits") or {}
    if not isinstance(limits, dict):
        raise BenchError(f"{where}: limits = {limits!r} must be a mapping with records and/or points")
    _unknown(limits, _LIMIT_KEYS, where, "limits.")
    max_records = _opt_positive(limits.get("records"), where, "limits.records")
    max_points = _opt_positive(limits.get("points"), where, "limits.points")
    settings = raw.get("settings") or {}
    if not isinstance(settings, dict):
        raise BenchError(f"{where}: settings = {settings!r} must be a mapping")
    _unknown(settings, set(SETTING_KEYS), where, "settings.")
    check_settings(settings, f"{where}: settings")
    samples = raw.get("samples")
    if samples is None:
        samples_path = base / f"{Path(path).stem}.samples.json" if path is not None else None
    elif isinstance(samples, str) and samples:
        samples_path = (base / _expand(samples, where, "samples")).resolve()
    else:
        raise BenchError(f"{where}: samples = {samples!r} must be a file name")
    max_new = _opt_positive(raw.get("max_new_tokens"), where, "max_new_tokens")
    return Bench(name, task, data, samples_path, seed, max_records, max_points, dict(settings), max_new, where)


def _check_data(data: Any, base: Path, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or len(set(data) & _DATA_KEYS) != 1:
        raise BenchError(f"{where}: data must have exactly one of {', '.join(sorted(_DATA_KEYS))}, got {data!r}")
    _unknown(data, _DATA_KEYS, where, "data.")
    if "records" in data:
        value = data["records"]
        if not isinstance(value, str) or not value:
            raise BenchError(f"{where}: data.records = {value!r} must be a folder path")
        return {"records": str((base / _expand(value, where, "data.records")).resolve())}
    if "prepare" in data:
        spec = data["prepare"]
        if not isinstance(spec, dict):
            raise BenchError(f"{where}: data.prepare must be a mapping with adapter and root")
        _unknown(spec, _PREPARE_KEYS, where, "data.prepare.")
        for key in ("adapter", "root"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise BenchError(f"{where}: data.prepare.{key} = {spec.get(key)!r} must be a non-empty string")
        options = spec.get("options") or {}
        if not isinstance(options, dict):
            raise BenchError(f"{where}: data.prepare.options = {options!r} must be a mapping")
        root = (base / _expand(spec["root"], where, "data.prepare.root")).resolve()
        out = {"adapter": spec["adapter"], "root": str(root), "options": {str(k): str(v) for k, v in options.items()}}
        out["points"] = _opt_positive(spec.get("points"), where, "data.prepare.points")
        out["seed"] = int(spec.get("seed", 0))
        out["split"] = str(spec.get("split", "test"))
        return {"prepare": out}
    spec = data["synth"]
    if not isinstance(spec, dict):
        raise BenchError(f"{where}: data.synth must be a mapping with family and scenes")
    _unknown(spec, _SYNTH_KEYS, where, "data.synth.")
    scenes = _opt_positive(spec.get("scenes"), where, "data.synth.scenes")
    if scenes is None:
        raise BenchError(f"{where}: data.synth.scenes must be a positive integer")
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise BenchError(f"{where}: data.synth.overrides = {overrides!r} must be a mapping of family parameters")
    return {
        "synth": {
            "family": str(spec.get("family", "fixed_rig")),
            "scenes": scenes,
            "seed": int(spec.get("seed", 0)),
            "points": int(spec.get("points", 10)),
            "matches": int(spec.get("matches", 20)),
            "overrides": overrides,
        }
    }


def check_settings(settings: dict[str, Any], where: str) -> None:
    """Type-check sample settings (keys of :data:`SETTING_KEYS`); BenchError naming the field."""
    checks = {
        "unify": lambda v: isinstance(v, bool),
        "focal": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
        "size_multiple": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
        "resize_to": lambda v: v is None or (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v)),
        "n_coords": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2,
        "depth_type": lambda v: v in ("z", "range"),
        "answer_style": lambda v: isinstance(v, str),
    }
    for key, value in settings.items():
        if key in checks and not checks[key](value):
            raise BenchError(f"{where}.{key} = {value!r} is not valid")


def _unknown(mapping: dict, known: set[str], where: str, prefix: str) -> None:
    extra = sorted(set(mapping) - known)
    if extra:
        raise BenchError(f"{where}: unknown field(s) {', '.join(prefix + k for k in extra)}; known: {', '.join(sorted(known))}")


def _opt_positive(value: Any, where: str, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BenchError(f"{where}: {name} = {value!r} must be a positive integer (or null)")
    return value


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(text: str, where: str, name: str) -> str:
    """``${NAME}`` / ``${NAME:-default}`` from the environment, then ``~``."""

    def sub(match: re.Match) -> str:
        value = os.environ.get(match.group(1))
        if value is None and match.group(2) is None:
            raise BenchError(f"{where}: {name} uses ${{{match.group(1)}}}, which is not set")
        return value if value is not None else match.group(2)

    return os.path.expanduser(_VAR.sub(sub, text))


# --- settings ---------------------------------------------------------------------------------


def resolve_settings(task: str, model_meta: dict[str, Any] | None, bench_settings: dict[str, Any] | None = None) -> tuple[SampleOptions, dict[str, str]]:
    """Sample settings for evaluation and where each came from.

    Per key, in order: the model's ``vlm3.json`` (how it was trained to be asked), the bench
    config, :data:`DEFAULT_SETTINGS`. Returns the options and ``{key: "model" | "bench" | "default"}``.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in SETTING_KEYS:
        if model_meta is not None and key in model_meta and (model_meta[key] is not None or key in ("size_multiple", "resize_to")):
            values[key], sources[key] = model_meta[key], "model"
        elif bench_settings and key in bench_settings:
            values[key], sources[key] = bench_settings[key], "bench"
        else:
            values[key], sources[key] = DEFAULT_SETTINGS[key], "default"
    check_settings(values, "settings")
    resize_to = tuple(values["resize_to"]) if values["resize_to"] else None
    opts = SampleOptions(
        task=task,  # type: ignore[arg-type]
        unify=bool(values["unify"]),
        focal=float(values["focal"]),
        size_multiple=values["size_multiple"],
        resize_to=resize_to,  # type: ignore[arg-type]
        n_coords=int(values["n_coords"]),
        answer_style=str(values["answer_style"]),
        depth_type=values["depth_type"],
    )
    return opts, sources


def settings_dict(opts: SampleOptions) -> dict[str, Any]:
    """The evaluation-relevant fields of ``opts`` as plain JSON values."""
    return {
        "task": opts.task,
        "unify": opts.unify,
        "focal": opts.focal,
        "size_multiple": opts.size_multiple,
        "resize_to": list(opts.resize_to) if opts.resize_to else None,
        "n_coords": opts.n_coords,
        "depth_type": opts.depth_type,
        "answer_style": opts.answer_style,
    }


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
            raise BenchError(f"{bench.source}: data.records = {folder} is not a prepared dataset (no {MANIFEST})")
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
        raise BenchError(f"{bench.source}: data.prepare.root = {spec['root']} does not exist")
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
    tasks = "correspondence" if bench.task == "correspondence" else bench.task
    generate(
        family, spec["scenes"], folder, seed=spec["seed"], tasks=tasks, points=spec["points"], matches=spec["matches"],
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


def label_key(task: str, label: int | None) -> str:
    """The key of one query within its record: ``d12`` (depth label 12), ``m3`` (match), ``q40`` (object question), ``pair``."""
    if label is None:
        return "pair"
    return {"depth": "d", "correspondence": "m", "object": "q"}[task] + str(int(label))


def entries_hash(task: str, entries: list[Entry]) -> str:
    text = json.dumps({"task": task, "entries": [[e.record, e.labels] for e in entries]}, separators=(",", ":"))
    return "sha256:" + _sha(text)


def n_labels(record: Record, task: str) -> int | None:
    """How many labels of ``task`` a record has (None for pose: one question per pair)."""
    if task == "depth":
        return len(record.depth.pixels) if record.depth else 0
    if task == "correspondence":
        return len(record.matches.pixels0) if record.matches else 0
    if task == "object":
        from vlm3.tasks.object3d import PREDICATES, QUANTITIES

        # build_sample asks every predicate and quantity for every ordered pair of boxed objects.
        k = sum(1 for o in record.objects or [] if o.box2d is not None)
        return k * (k - 1) * (len(PREDICATES) + len(QUANTITIES)) if k >= 2 else 0
    return None


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
    usable = sorted(rid for rid, rec in records.items() if bench.task in rec.tasks())
    if not usable:
        raise BenchError(f"{bench.source}: no record of the data has {bench.task} labels")
    order = np.random.default_rng(bench.seed).permutation(len(usable))
    chosen = [usable[i] for i in order[: bench.max_records]]
    entries: list[Entry] = []
    for rid in chosen:
        n = n_labels(records[rid], bench.task)
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
