"""Where vlm3 finds its shipped configs and the datasets users bring.

Configs ship inside the package (``vlm3/configs``: training recipes, mixtures, accelerate
launchers, ``bench/`` configs with their sample lists), so an installed wheel finds them wherever
it runs. Datasets come from one setting:

- ``VLM3_DATA``: the folder that holds the datasets by name (``$VLM3_DATA/ibims1`` is iBims-1).
  Unset, a source checkout uses ``<repository>/../shared/data``; an installed vlm3 has no default.

The iBims-1 bench (``${VLM3_DATA}/ibims1`` in ``vlm3/configs/bench/ibims1.yaml``) and the demo's real
data rows read the same setting. Importing this module imports nothing heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "VLM3_DATA"
PACKAGE_DIR = Path(__file__).resolve().parent
CONFIGS_DIR = PACKAGE_DIR / "configs"
BENCH_DIR = CONFIGS_DIR / "bench"


class DataPathError(FileNotFoundError):
    """A dataset folder that the data setting does not lead to; the message names the setting and path."""


def configs_dir() -> Path:
    """The shipped configs folder (``vlm3/configs`` inside the installed package)."""
    return CONFIGS_DIR


def list_configs() -> list[Path]:
    """Every shipped YAML config (recipes, mixtures, accelerate launchers, benches), sorted."""
    return sorted(CONFIGS_DIR.rglob("*.yaml"))


def shipped_config(spec: str | Path) -> Path:
    """``spec`` when it is a file, else the shipped config of that name (``tiny-cpu`` or
    ``tiny-cpu.yaml`` -> ``vlm3/configs/tiny-cpu.yaml``; ``accelerate/cpu-2proc`` works too).

    A name found nowhere is returned unchanged, so the reader's own "does not exist" error names it.
    """
    path = Path(spec)
    if path.is_file() or path.is_absolute():
        return path
    for candidate in (CONFIGS_DIR / path, CONFIGS_DIR / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    return path


def checkout_root() -> Path | None:
    """The repository folder when vlm3 runs from a source checkout (editable install), else None."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "vlm3" / "__init__.py").is_file() else None


def default_data_dir() -> Path | None:
    """``<repository>/../shared/data`` for a source checkout (whether or not it exists), else None."""
    root = checkout_root()
    return None if root is None else (root.parent / "shared" / "data").resolve()


def data_dir() -> Path:
    """The folder holding the datasets: ``$VLM3_DATA``, else the source checkout's default.

    Raises :class:`DataPathError` when ``VLM3_DATA`` is unset and vlm3 is not a source checkout.
    """
    value = os.environ.get(DATA_ENV)
    if value:
        return Path(value).expanduser().resolve()
    default = default_data_dir()
    if default is None:
        raise DataPathError(f"{DATA_ENV} is not set; set it to the folder that holds the datasets (e.g. ${DATA_ENV}/ibims1)")
    return default


def describe_data_dir() -> str:
    """Where :func:`data_dir` comes from, for messages: ``VLM3_DATA=/x`` or the default it used."""
    value = os.environ.get(DATA_ENV)
    if value:
        return f"{DATA_ENV}={value}"
    default = default_data_dir()
    if default is None:
        return f"{DATA_ENV} unset, no default outside a source checkout"
    return f"{DATA_ENV} unset, default {default} (the source checkout's ../shared/data)"


def dataset_dir(name: str, marker: str | None = None) -> Path:
    """``data_dir() / name``, checked to exist (and to contain ``marker`` when given).

    Raises :class:`DataPathError` naming ``VLM3_DATA`` and the path tried.
    """
    path = data_dir() / name
    tried = path / marker if marker else path
    if not (tried.is_file() if marker else path.is_dir()):
        raise DataPathError(f"dataset {name!r}: {tried} does not exist ({describe_data_dir()}); set {DATA_ENV} to the folder that holds {name}/")
    return path
