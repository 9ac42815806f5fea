"""The adapter interface: read one public dataset's original layout and yield records.

An adapter splits its dataset into *units* (an image list chunk, a scene, a sequence) so that
``vlm3 prepare`` can convert units in parallel workers and skip finished ones when resumed. For
each unit it yields :class:`~vlm3.data.records.Record` objects, or :class:`Rejection` objects
naming why an input could not become a record (missing image, NaN depth, ...). Nothing valid is
dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from vlm3.data.records import Record


REASONS: dict[str, str] = {
    "missing_file": "a file the input names or needs does not exist (image, depth, pose, calibration, ...)",
    "unreadable_file": "a file cannot be read or decoded, or has the wrong format (e.g. depth not uint16)",
    "image_too_large": "an image has more pixels than the cap (vlm3.data.images: 64 Mpx, VLM3_MAX_IMAGE_PIXELS); checked before decoding",
    "image_outside_root": "a record's image path is absolute or leaves the dataset root ('..')",
    "size_mismatch": "an image or depth map has another size than its calibration or its partner",
    "bad_calibration": "intrinsics or distortion are invalid, unsupported or missing for this camera",
    "bad_pose": "a camera pose (or homography) is not a finite rigid transform, or is missing for this frame",
    "bad_depth": "a depth value is NaN, infinite, zero or negative",
    "no_valid_depth": "no pixel with a valid depth (inside the image)",
    "pixel_outside_image": "a labelled pixel is not finite or lies outside its image",
    "no_labels": "nothing to learn from: no depth points, pose pair, matches or objects",
    "invalid_record": "the input does not give a valid record (bad JSON, missing or mistyped fields, unequal label lists)",
}
"""The fixed rejection reasons, so reports compare across datasets; the detail says the rest."""


class LayoutError(ValueError):
    """The dataset root does not hold the adapter's layout; the message names what was missing.

    ``vlm3 prepare`` adds the expected tree (``Adapter.layout``) to it.
    """


@dataclass(frozen=True)
class Rejection:
    """An input that did not become a record: a reason of :data:`REASONS`, and details."""

    source: str  # e.g. "ibims1_val.jsonl:17" or an image path
    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REASONS:  # a programming error in an adapter, not bad data
            raise ValueError(f"unknown rejection reason {self.reason!r}; use one of {', '.join(REASONS)}")


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
    labels: ClassVar[tuple[str, ...]] = ()  # record label fields filled: depth, poses, matches, objects

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        self.root = Path(root)
        self.options = options or AdapterOptions()
        if not self.root.exists():
            raise FileNotFoundError(f"{self.name}: dataset root {self.root} does not exist")

    def units(self) -> list[str]:
        """Stable, sorted list of work-unit names; :class:`LayoutError` when ``root`` does not hold the layout."""
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


def option_flag(options: AdapterOptions, key: str, default: bool) -> bool:
    """Boolean adapter option ``options.extra[key]`` (true/false, yes/no, 1/0), with a clear error."""
    raw = options.extra.get(key)
    if raw is None:
        return default
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"option extra[{key!r}]={raw!r} is not a boolean (use true/false)")


def option_int(options: AdapterOptions, key: str, default: int | None, *, minimum: int = 0) -> int | None:
    """Integer adapter option ``options.extra[key]`` ("none" = None), with a clear error."""
    raw = options.extra.get(key)
    if raw is None:
        return default
    if str(raw).strip().lower() == "none":
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError(f"option extra[{key!r}]={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"option extra[{key!r}]={value} must be >= {minimum}")
    return value


def option_float(options: AdapterOptions, key: str, default: float, *, positive: bool = True) -> float:
    """Float adapter option ``options.extra[key]``, with a clear error."""
    raw = options.extra.get(key)
    if raw is None:
        return default
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ValueError(f"option extra[{key!r}]={raw!r} is not a number") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"option extra[{key!r}]={value} must be a finite positive number")
    return value


ADAPTERS: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator adding an adapter to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    ADAPTERS[cls.name] = cls
    return cls


def get_adapter(name: str) -> type[Adapter]:
    """Look up an adapter by name (importing the built-in adapters first)."""
    import importlib
    import pkgutil

    import vlm3.data.adapters as package

    for mod in pkgutil.iter_modules(package.__path__):  # registers the built-ins
        importlib.import_module(f"{package.__name__}.{mod.name}")
    if name not in ADAPTERS:
        raise KeyError(f"unknown adapter {name!r}; available: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]


AdapterFactory = Callable[[str | Path, AdapterOptions], Adapter]
