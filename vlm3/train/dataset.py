"""The training dataset: a deterministic plan of mixture draws, turned into samples lazily.

The mixture sampler fixes, before training starts, which record every training example comes
from: row g of the plan is global draw g, ``(dataset, index)``. The plan is a map-style
``datasets.Dataset`` whose transform loads the images, applies the view transform and builds the
conversation only when the trainer asks for the row. Because the plan is map-style, the stock
Trainer machinery gives the rest: DDP ranks read disjoint rows, and resuming from a checkpoint
skips consumed batches at the index level without decoding them, so a killed run continues with
the same data order. Per-sample randomness (which labelled points a sample packs) is seeded by
(seed, draw), so a row always becomes the same sample.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlm3.data.images import check_record_image
from vlm3.data.io import image_root, read_manifest, read_records
from vlm3.data.mixture import MixtureSampler, mixture_probs
from vlm3.data.records import Record
from vlm3.settings import Settings
from vlm3.tasks import get_task
from vlm3.tasks.samples import build_sample, load_images

LOG_ROWS_ENV = "VLM3_LOG_ROWS"  # opt-in row audit (see module doc)


@dataclass
class LoadedDataset:
    """A prepared dataset's records (labels only; images are decoded on demand)."""

    name: str
    path: Path
    root: Path
    records: list[Record]
    weight: float | None = None


def usable_for(record: Record, task: str) -> bool:
    """Cheap check that a record can produce a sample of ``task`` (no image decoding)."""
    t = get_task(task)
    return t.has_labels(record) and t.n_labels(record) != 0


def load_datasets(entries: list[Any], task: str) -> list[LoadedDataset]:
    """Read every dataset of a ``DataConfig.datasets`` list, keeping records usable for ``task``."""
    if not entries:
        raise ValueError("data.datasets is empty: list at least one prepared dataset folder")
    out = []
    for i, entry in enumerate(entries):
        path = Path(entry.path)
        try:
            manifest = read_manifest(path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"data.datasets[{i}].path: {e}") from None
        records = [r for r in read_records(path) if usable_for(r, task)]
        _check_image_paths(records, f"data.datasets[{i}] ({path})")
        name = entry.name or manifest.get("dataset") or manifest.get("name") or path.name
        if not records:
            raise ValueError(f"data.datasets[{i}] ({path}): no records with {task!r} labels")
        out.append(LoadedDataset(name, path, image_root(path, manifest), records, entry.weight))
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique, got {names}; set data.datasets[i].name")
    return out


def _check_image_paths(records: list[Record], where: str) -> None:
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


def make_plan(datasets: list[LoadedDataset], probs: dict[str, float], n_rows: int, seed: int) -> dict[str, np.ndarray]:
    """The first ``n_rows`` mixture draws as columns ``dataset`` (position in ``datasets``), ``index``, ``draw``."""
    sampler = MixtureSampler({d.name: len(d.records) for d in datasets}, probs, seed=seed)
    choice, index = sampler.take(n_rows)
    # The sampler orders datasets by name; map back to positions in ``datasets``.
    position = np.array([next(i for i, d in enumerate(datasets) if d.name == name) for name in sampler.names], dtype=np.int64)
    return {"dataset": position[choice], "index": index, "draw": np.arange(n_rows, dtype=np.int64)}


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

    def _images(self, d: int, i: int) -> list[np.ndarray]:
        key = (d, i)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        ds = self.datasets[d]
        images = load_images(ds.records[i], ds.root)
        self._cache[key] = images
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return images

    def example(self, d: int, i: int, draw: int) -> dict[str, Any]:
        """The TRL example of plan row (dataset d, record i, global draw)."""
        rng = np.random.default_rng([self.seed, draw])
        n = len(self.datasets[d].records)
        # A record that cannot make a sample after its view transform (e.g. every label cropped
        # away) is replaced by the next record of the same dataset: deterministic, and rare.
        for k in range(min(n, 8)):
            j = (i + k) % n
            try:
                return build_sample(self.datasets[d].records[j], self._images(d, j), self.task, self.settings, rng).to_trl()
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


def training_dataset(builder: SampleBuilder, probs: dict[str, float], n_rows: int):
    """A ``datasets.Dataset`` of ``n_rows`` plan rows (mixture ``probs``) whose rows read as TRL examples built by ``builder``."""
    import datasets as hf

    plan = hf.Dataset.from_dict(make_plan(builder.datasets, probs, n_rows, builder.seed))
    plan.set_transform(builder)
    return plan
