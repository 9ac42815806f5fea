"""The adapter interface: read one public dataset's original layout and yield records.

An adapter splits its dataset into *units* (an image list chunk, a scene, a sequence) so that
``vlm3 prepare`` can convert units in parallel workers and skip finished ones when resumed. For
each unit it yields :class:`~vlm3.data.records.Record` objects, or :class:`Rejection` objects
naming why an input could not become a record (missing image, NaN depth, ...). Nothing valid is
dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from vlm3.data.records import Record


@dataclass(frozen=True)
class Rejection:
    """An input that did not become a record, with a short machine-readable reason and details."""

    source: str  # e.g. "ibims1_val.jsonl:17" or an image path
    reason: str  # short category, e.g. "missing_image", "nonfinite_depth", "pixel_outside_image"
    detail: str = ""


@dataclass
class AdapterOptions:
    """Options common to adapters; adapter-specific ones go in ``extra``."""

    points: int | None = None  # pixels sampled per image (None = adapter default / all labelled)
    pairs_per_scene: int | None = None
    min_covisibility: float = 0.25
    seed: int = 0
    split: str = "train"
    extra: dict[str, str] = field(default_factory=dict)


class Adapter:
    """Base class; subclasses set ``name``, ``description``, ``layout`` and implement the two methods."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    layout: ClassVar[str] = ""  # the expected folder tree, shown by `vlm3 prepare --help-adapter`
    tasks: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        self.root = Path(root)
        self.options = options or AdapterOptions()
        if not self.root.exists():
            raise FileNotFoundError(f"{self.name}: dataset root {self.root} does not exist")

    def units(self) -> list[str]:
        """Stable, sorted list of work-unit names."""
        raise NotImplementedError

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        """Records (and rejections) of one unit; deterministic given ``options.seed``."""
        raise NotImplementedError

    def convert_all(self) -> Iterator[Record | Rejection]:
        """Every unit's records and rejections in unit order, in this process.

        ``vlm3 prepare`` converts units in parallel and writes shards; this is the in-memory path.
        """
        for unit in self.units():
            yield from self.convert(unit)

    def manifest_info(self) -> dict:
        """Extra manifest fields (source version, label conventions)."""
        return {}


ADAPTERS: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator adding an adapter to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    ADAPTERS[cls.name] = cls
    return cls


def get_adapter(name: str) -> type[Adapter]:
    """Look up an adapter by name (importing the built-in adapters first)."""
    import vlm3.data.adapters  # noqa: F401  (registers built-ins)

    if name not in ADAPTERS:
        raise KeyError(f"unknown adapter {name!r}; available: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]


AdapterFactory = Callable[[str | Path, AdapterOptions], Adapter]
