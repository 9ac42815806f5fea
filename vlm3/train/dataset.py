"""The training dataset: a deterministic plan of mixture draws, turned into samples lazily.

The mixture sampler fixes, before training starts, which record every training example comes
from: row g of the plan is global draw g, ``(dataset, index)``. Nothing of size n_rows or of the
datasets' size is materialised on a rank:

- each dataset is a :class:`vlm3.data.store.RecordStore`: one uint64 file offset per record the
  task can use (from the shards' offset indexes, built once for datasets prepared before them),
  and ``records[i]`` parses that one line when a row needs it;
- the plan is a :class:`vlm3.data.mixture.MixturePlan`: rows are computed on demand from the
  sampler (per-block draw counts are its only state) and equal ``MixtureSampler.take(n_rows)``;
- the training dataset, :class:`PlanDataset`, is a map-style ``datasets.Dataset`` of n_rows rows
  whose only column holds no data (an Arrow null array); reading rows computes their plan entries
  and hands them to :class:`SampleBuilder`, which loads the images, applies the view transform and
  builds the conversation.

Because the plan is map-style, the stock Trainer machinery gives the rest: DDP ranks read disjoint
rows, and resuming from a checkpoint skips consumed batches at the index level without decoding
them, so a killed run continues with the same data order. Per-sample randomness (which labelled
points a sample packs) is seeded by (seed, draw), so a row always becomes the same sample.

Image paths are checked before training starts: the shard index flags records whose image path is
absolute or leaves the dataset root (string checks, made when the index is written or built), and
:func:`load_datasets` refuses a dataset with such a record usable for the task, naming it.

Setting the environment variable ``VLM3_LOG_ROWS=DIR`` makes every rank append one line
``RANK DRAW`` per plan row its data loader builds during training to ``DIR/rows.rank{RANK}.txt``:
an opt-in audit of which draws each rank trained on (used by the distributed and resume tests).
The log starts when training starts (``SampleBuilder.log_dir`` is set then), so rows built
earlier for checks are not in it. The data loader builds one batch ahead of the step being
trained, so a run that is killed can log rows it never trained on.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlm3.data.images import check_record_image
from vlm3.data.io import image_root, read_manifest
from vlm3.data.mixture import MixturePlan, mixture_probs
from vlm3.data.records import Record
from vlm3.data.store import RecordStore, usable_for
from vlm3.settings import Settings
from vlm3.tasks import get_task
from vlm3.tasks.samples import build_sample, load_images

LOG_ROWS_ENV = "VLM3_LOG_ROWS"  # opt-in row audit (see module doc)

__all__ = [  # PlanDataset too (module __getattr__: it subclasses datasets.Dataset, imported on first use)
    "LOG_ROWS_ENV", "LoadedDataset", "PlanRows", "SampleBuilder", "dataset_probs", "load_datasets", "log_rows",
    "plan_rows", "training_dataset", "usable_for",
]


@dataclass
class LoadedDataset:
    """A prepared dataset's records usable for the task (labels only; images are decoded on demand).

    ``records`` is a read-only sequence: a :class:`~vlm3.data.store.RecordStore` (one record parsed
    per access), or any list of records.
    """

    name: str
    path: Path
    root: Path
    records: Sequence[Record]
    weight: float | None = None


def load_datasets(entries: list[Any], task: str, *, progress: bool = False) -> list[LoadedDataset]:
    """Open every dataset of a ``DataConfig.datasets`` list as a store of the records usable for ``task``.

    Reads the shards' offset indexes (building them once, with a progress bar when ``progress``,
    for datasets prepared before indexes existed); no record is parsed except those the index
    flags with a refused image path, which raise here (before training starts).
    """
    if not entries:
        raise ValueError("data.datasets is empty: list at least one prepared dataset folder")
    out = []
    for i, entry in enumerate(entries):
        path = Path(entry.path)
        try:
            manifest = read_manifest(path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"data.datasets[{i}].path: {e}") from None
        records = RecordStore.open(path, task, progress=progress)
        if len(records.bad_image):
            _check_image_paths([records[int(records.bad_image[0])]], f"data.datasets[{i}] ({path})")
        name = entry.name or manifest.get("dataset") or manifest.get("name") or path.name
        if not len(records):
            raise ValueError(f"data.datasets[{i}] ({path}): no records with {task!r} labels")
        out.append(LoadedDataset(name, path, image_root(path, manifest), records, entry.weight))
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique, got {names}; set data.datasets[i].name")
    return out


def _check_image_paths(records: Iterable[Record], where: str) -> None:
    """Refuse, before training starts, a record whose image path is absolute or leaves the dataset
    root (``vlm3.data.images.check_record_image``: string checks only, no file access)."""
    for rec in records:
        for k, view in enumerate(rec.views):
            check_record_image(view.image, where=f"{where}: record {rec.id}: views[{k}].image")


def dataset_probs(datasets: list[LoadedDataset], policy: str) -> dict[str, float]:
    """Per-draw probabilities: the mixture policy over dataset sizes, explicit weights overriding."""
    sizes = {d.name: len(d.records) for d in datasets}
    overrides = {d.name: d.weight for d in datasets if d.weight is not None}
    return mixture_probs(sizes, policy, overrides)


def _positions(datasets: list[LoadedDataset], names: list[str]) -> np.ndarray:
    """Position in ``datasets`` of each sampler name (the sampler orders datasets by name)."""
    return np.array([next(i for i, d in enumerate(datasets) if d.name == name) for name in names], dtype=np.int64)


def plan_rows(datasets: list[LoadedDataset], probs: dict[str, float], n_rows: int, seed: int) -> "PlanRows":
    """The first ``n_rows`` mixture draws, computed on demand: ``plan_rows(...)[g]`` is row g of
    ``MixtureSampler(sizes, probs, seed).take(n_rows)``, with ``dataset`` as a position in ``datasets``."""
    return PlanRows(MixturePlan({d.name: len(d.records) for d in datasets}, probs, n_rows, seed=seed), datasets)


class PlanRows:
    """Rows of the mixture plan on demand: ``rows[g]`` (ints or an array) -> columns ``dataset``, ``index``, ``draw``."""

    def __init__(self, plan: MixturePlan, datasets: list[LoadedDataset]) -> None:
        self.plan = plan
        self._position = _positions(datasets, plan.names)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, g: Any) -> dict[str, np.ndarray]:
        g = np.atleast_1d(np.asarray(g, dtype=np.int64))
        choice, index = self.plan.rows(g)
        return {"dataset": self._position[choice], "index": index, "draw": g}


class SampleBuilder:
    """Turns plan rows into TRL examples (``images`` + ``messages`` or ``prompt``/``completion``)."""

    def __init__(self, datasets: list[LoadedDataset], task: str, settings: Settings, seed: int, cache_size: int = 256) -> None:
        self.datasets = datasets
        self.task, self.settings = get_task(task).name, settings
        self.seed = seed
        self._cache: OrderedDict[tuple[int, int], list[np.ndarray]] = OrderedDict()
        self._cache_size = cache_size
        self.failures = 0
        self.log_dir: str | None = None  # append "RANK DRAW" lines here (the VLM3_LOG_ROWS audit)

    def _images(self, d: int, i: int, record: Record) -> list[np.ndarray]:
        key = (d, i)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        images = load_images(record, self.datasets[d].root)
        self._cache[key] = images
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return images

    def example(self, d: int, i: int, draw: int) -> dict[str, Any]:
        """The TRL example of plan row (dataset d, record i, global draw)."""
        d, i, draw = int(d), int(i), int(draw)
        rng = np.random.default_rng([self.seed, draw])
        records = self.datasets[d].records
        n = len(records)
        # A record that cannot make a sample after its view transform (e.g. every label cropped
        # away) is replaced by the next record of the same dataset: deterministic, and rare.
        for k in range(min(n, 8)):
            j = (i + k) % n
            record = records[j]  # one line parsed (a RecordStore)
            try:
                return build_sample(record, self._images(d, j, record), self.task, self.settings, rng).to_trl()
            except ValueError:
                self.failures += 1
        raise ValueError(f"dataset {self.datasets[d].name}: records {i}..{i + 7} give no {self.task} samples")

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """``datasets`` transform: a batch of plan rows -> a batch of examples."""
        if self.log_dir:
            log_rows(self.log_dir, batch["draw"])
        examples = [self.example(d, i, g) for d, i, g in zip(batch["dataset"], batch["index"], batch["draw"])]
        keys = examples[0].keys()
        return {k: [ex[k] for ex in examples] for k in keys}


def log_rows(folder: str | Path, draws: list[int]) -> None:
    """Append ``RANK DRAW`` lines for ``draws`` to ``folder/rows.rank{RANK}.txt`` (see module doc)."""
    rank = int(os.environ.get("RANK", "0"))
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    # One write per batch in append mode: loader workers of the same rank never interleave lines.
    with open(path / f"rows.rank{rank}.txt", "a") as f:
        f.write("".join(f"{rank} {int(g)}\n" for g in draws))


def training_dataset(builder: SampleBuilder, probs: dict[str, float], n_rows: int) -> Any:
    """A :class:`PlanDataset` (a lazy ``datasets.Dataset``) of ``n_rows`` plan rows (mixture ``probs``)
    whose rows read as TRL examples built by ``builder``."""
    return _plan_dataset_class()(builder, plan_rows(builder.datasets, probs, n_rows, builder.seed))


def _plan_dataset_class() -> type:
    """:class:`PlanDataset`, defined on first use (importing ``datasets`` is slow)."""
    global _PlanDataset
    if _PlanDataset is not None:
        return _PlanDataset
    import datasets as hf
    import pyarrow as pa

    class PlanDataset(hf.Dataset):
        """The training plan as a map-style ``datasets.Dataset`` that holds no rows (module doc).

        Its one column, ``row``, is an Arrow null array (no buffer, whatever its length), so the
        dataset has ``n_rows`` rows at O(1) memory; reading rows (``ds[i]``, ``ds[[i, j]]``,
        ``ds[a:b]``, the data loader's ``__getitems__``, iteration) computes their plan entries
        and returns the examples ``builder`` makes of them, as the transform of a materialised
        plan did: one builder call (and one row-log write) per batch. Only row access is lazy:
        ``map``, ``filter``, ``select`` and the like see the empty column.
        """

        def __init__(self, builder: SampleBuilder, rows: PlanRows) -> None:
            fingerprint = f"vlm3-plan-{builder.seed}-{len(rows)}-{id(rows):x}"
            super().__init__(pa.table({"row": pa.nulls(len(rows))}), fingerprint=fingerprint)
            self.builder = builder
            self.rows = rows

        def _getitem(self, key: Any, **kwargs: Any) -> Any:
            if isinstance(key, str):
                return super()._getitem(key, **kwargs)
            if isinstance(key, bool):
                raise TypeError("dataset index must be int, slice or collection of int, not bool")
            n = len(self.rows)
            if isinstance(key, (int, np.integer)):
                g = int(key) + n if key < 0 else int(key)
                if not 0 <= g < n:
                    raise IndexError(f"Index {key} is out of range for dataset of size {n}.")
                batch = self.builder(_as_lists(self.rows[g]))
                return {k: v[0] for k, v in batch.items()}
            if isinstance(key, slice):
                g = np.arange(*key.indices(n), dtype=np.int64)
            else:
                g = np.asarray(key if isinstance(key, np.ndarray) else list(key), dtype=np.int64)
            if len(g) and (g.min() < -n or g.max() >= n):
                raise IndexError(f"Index {int(g.max()) if g.max() >= n else int(g.min())} is out of range for dataset of size {n}.")
            g = np.where(g < 0, g + n, g)
            if not len(g):
                return {}
            return self.builder(_as_lists(self.rows[g]))

        def __iter__(self) -> Iterator[dict[str, Any]]:
            for g in range(len(self.rows)):
                yield self._getitem(g)

        def __reduce__(self):  # pickled (spawned loader workers): rebuilt from its parts
            return (_new_plan_dataset, (self.builder, self.rows))

        def __repr__(self) -> str:
            return f"PlanDataset({len(self.rows):,} plan rows over {len(self.builder.datasets)} datasets)"

    PlanDataset.__qualname__ = "PlanDataset"
    _PlanDataset = PlanDataset
    return PlanDataset


_PlanDataset: type | None = None


def _new_plan_dataset(builder: SampleBuilder, rows: PlanRows) -> Any:
    return _plan_dataset_class()(builder, rows)


def __getattr__(name: str) -> Any:  # ``PlanDataset`` without importing ``datasets`` at module import
    if name == "PlanDataset":
        return _plan_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _as_lists(columns: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Plan columns as the plain int lists a ``datasets`` transform received."""
    return {k: [int(x) for x in v] for k, v in columns.items()}

