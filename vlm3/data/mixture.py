"""Data mixtures: per-draw probabilities over datasets and a deterministic sampler drawing training plans.

Probabilities
-------------
A policy gives every dataset a share (shares sum to 1):

- ``uniform``: equal shares;
- ``size``: proportional to the dataset's size (records) -- the paper's default;
- ``size^ALPHA``, e.g. ``size^0.5``: proportional to size ** ALPHA (``size^0`` = uniform, ``size^1`` = size);
- ``explicit`` (alias ``weights``): no policy share; every dataset needs an explicit weight.

Per-dataset overrides then adjust shares before renormalising: a number (or ``{weight: w}``)
replaces the dataset's share by ``w``; ``{scale: s}`` multiplies it by ``s`` (down-weight a small,
easily over-fitted set by hand). Weights may be any non-negative floats; only their ratios matter
once every dataset has one. The VLM3 depth weights are in ``vlm3/configs/mixture-paper-depth.yaml``.

Config file (``vlm3 mixture CONFIG.yaml``)::

    policy: size            # uniform | size | size^ALPHA | explicit
    draws: 32000000         # optional: draws to plan for (default: the sum of sizes)
    datasets:               # name: size in records (1M, 700K, 1.5B shorthands allowed)
      hm3d: 9M
      matterport3d: 190K
    overrides:              # optional: name: weight, or name: {weight: w} / {scale: s}
      matterport3d: 0.006

Sampler
-------
:meth:`MixtureSampler.take` draws ``(dataset, index)`` pairs. Global draw k picks a dataset by
inverse CDF of a uniform number that depends only on (seed, k); the c-th draw of a dataset of size n
takes element ``perm_e(c mod n)`` with e = c // n, where ``perm_e`` is a seeded pseudo-random
permutation of range(n) (a Feistel network, so no index array is stored even for 10M records). So
every record is visited exactly once per dataset-epoch, never sampled with replacement. Training
fixes its whole plan up front but never materialises it: :class:`MixturePlan` gives any row of
``take(n_rows)`` on demand; the Trainer shards and resumes that plan.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BeforeValidator, Field, model_validator

from vlm3.config import ConfigError, ConfigModel, load_yaml_model

if TYPE_CHECKING:
    from rich.table import Table

POLICIES = "uniform, size, size^ALPHA (e.g. size^0.5), explicit"
Override = float | Mapping[str, float]


class MixtureError(ValueError):
    """A mixture that cannot be built (bad policy, weight, size or config); the message names the field."""


# --- probabilities ---------------------------------------------------------------------------------


def parse_policy(policy: str) -> float | None:
    """The size exponent of a policy (uniform = 0, size = 1, size^a = a), or None for explicit weights."""
    if not isinstance(policy, str):
        raise MixtureError(f"policy must be a string ({POLICIES}), got {policy!r}")
    p = policy.strip().lower().replace(" ", "")
    if p == "uniform":
        return 0.0
    if p == "size":
        return 1.0
    if p in ("explicit", "weights"):
        return None
    m = re.fullmatch(r"size(?:\^|\*\*)([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)", p)
    if m:
        return float(m.group(1))
    raise MixtureError(f"policy {policy!r} is not one of {POLICIES}")


def mixture_weights(
    sizes: Mapping[str, int], policy: str = "size", overrides: Mapping[str, Override] | None = None
) -> dict[str, float]:
    """Unnormalised per-draw weights: policy shares (summing to 1) with the overrides applied."""
    sizes = _check_sizes(sizes)
    alpha = parse_policy(policy)
    parsed = _parse_overrides(overrides or {}, sizes)
    if alpha is None:
        missing = [n for n in sizes if parsed.get(n, ("", 0.0))[0] != "weight"]
        if missing:
            raise MixtureError(f"policy explicit needs a weight for every dataset; missing: {', '.join(missing)}")
        base = {n: 0.0 for n in sizes}
    else:
        raw = {n: float(s) ** alpha for n, s in sizes.items()}
        total = sum(raw.values())
        base = {n: v / total for n, v in raw.items()}
    out = {}
    for name, share in base.items():
        kind, value = parsed.get(name, ("", 0.0))
        out[name] = value if kind == "weight" else share * value if kind == "scale" else share
    if not sum(out.values()) > 0:
        raise MixtureError("all dataset weights are zero: nothing to sample")
    return out


def mixture_probs(
    sizes: Mapping[str, int], policy: str = "size", overrides: Mapping[str, Override] | None = None
) -> dict[str, float]:
    """Per-draw probabilities (sum to 1) of each dataset under ``policy`` and ``overrides``."""
    return normalize(mixture_weights(sizes, policy, overrides))


def normalize(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights -> probabilities summing to 1 (weights must be finite and >= 0, not all 0)."""
    for name, w in weights.items():
        if not (isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0):
            raise MixtureError(f"weight of {name!r} must be a finite number >= 0, got {w!r}")
    total = float(sum(weights.values()))
    if not total > 0:
        raise MixtureError("all dataset weights are zero: nothing to sample")
    return {n: float(w) / total for n, w in weights.items()}


def _check_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(sizes, Mapping) or not sizes:
        raise MixtureError("datasets: need at least one dataset with its size")
    out = {}
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise MixtureError(f"size of dataset {name!r} must be a positive integer (records), got {size!r}")
        out[str(name)] = int(size)
    return out


def _parse_overrides(overrides: Mapping[str, Override], sizes: Mapping[str, int]) -> dict[str, tuple[str, float]]:
    if not isinstance(overrides, Mapping):
        raise MixtureError(f"overrides must map dataset names to weights, got {overrides!r}")
    unknown = [n for n in overrides if n not in sizes]
    if unknown:
        raise MixtureError(f"overrides name unknown dataset(s) {', '.join(map(repr, unknown))}; known: {', '.join(sizes)}")
    out = {}
    for name, value in overrides.items():
        where = f"overrides.{name}"
        if isinstance(value, Mapping):
            keys = set(value)
            if len(keys) != 1 or not keys <= {"weight", "scale"}:
                raise MixtureError(f"{where} must be a number, {{weight: w}} or {{scale: s}}, got {dict(value)!r}")
            kind = keys.pop()
            number = value[kind]
            where += f".{kind}"
        else:
            kind, number = "weight", value
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise MixtureError(f"{where} must be a finite number, got {number!r}")
        if number < 0:
            raise MixtureError(f"{where} = {number} is negative; weights must be >= 0")
        out[name] = (kind, float(number))
    return out


# --- config files ----------------------------------------------------------------------------------


def parse_size(value: Any, where: str = "size") -> int:
    """A record count: an integer, or a string with a K/M/B suffix such as ``"700K"`` or ``"1.5M"``."""
    if isinstance(value, bool):
        raise MixtureError(f"{where} must be a positive integer, got {value!r}")
    if isinstance(value, (int, np.integer)):
        n = int(value)
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmbKMB]?)\s*", value.replace("_", "").replace(",", ""))
        if not m:
            raise MixtureError(f"{where} = {value!r} is not a count like 190000, 700K or 1.5M")
        n = round(float(m.group(1)) * {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}[m.group(2).lower()])
    else:
        raise MixtureError(f"{where} must be a positive integer, got {value!r}")
    if n < 1:
        raise MixtureError(f"{where} = {value!r} must be >= 1")
    return n


def _count(value: Any) -> int:
    try:
        return parse_size(value)
    except MixtureError:
        raise ValueError("must be a positive count of records like 190000, 700K or 1.5M") from None


Count = Annotated[int, BeforeValidator(_count)]


class MixtureConfig(ConfigModel):
    """A mixture as written in a YAML file (see module doc); ``datasets`` maps names to sizes."""

    policy: str = Field("size", description="uniform | size | size^ALPHA | explicit")
    draws: Count | None = Field(None, description="draws to plan for (default: the sum of sizes)")
    datasets: dict[str, Count] = Field(min_length=1, description="name: size in records (1M, 700K, 1.5B allowed)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="name: weight, {weight: w} or {scale: s}")

    @property
    def sizes(self) -> dict[str, int]:
        return self.datasets

    @model_validator(mode="after")
    def _check(self) -> "MixtureConfig":
        self.weights()  # policy and overrides, checked now so the file is named
        return self

    def weights(self, *, use_overrides: bool = True) -> dict[str, float]:
        return mixture_weights(self.sizes, self.policy, self.overrides if use_overrides else None)

    def probs(self, *, use_overrides: bool = True) -> dict[str, float]:
        return normalize(self.weights(use_overrides=use_overrides))


def load_mixture_config(path: str | Path) -> MixtureConfig:
    """Read and check a mixture YAML file, or a shipped one by name (``mixture-paper-depth``);
    errors name the file and the field."""
    from vlm3.paths import shipped_config

    try:
        return load_yaml_model(MixtureConfig, shipped_config(path))
    except ConfigError as e:
        raise MixtureError(str(e)) from None


def mixture_table(
    sizes: Mapping[str, int],
    probs: Mapping[str, float],
    *,
    weights: Mapping[str, float] | None = None,
    draws: int | None = None,
    title: str = "data mixture",
    console: Any = None,
    show: bool = True,
) -> Table:
    """Print (and return) a rich table: dataset, size, weight, probability, expected draws, passes.

    ``draws`` is the number of draws planned (default: the sum of sizes, i.e. one nominal epoch);
    "passes" = expected draws / size, how often each record is seen on average.
    """
    from rich.console import Console
    from rich.table import Table

    draws = int(draws if draws is not None else sum(sizes.values()))
    table = Table(title=f"{title} ({draws:,} draws)")
    for col in ("dataset", "size", "weight", "probability", "expected draws", "passes"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for name in sizes:
        p = float(probs.get(name, 0.0))
        w = "" if weights is None else f"{weights[name]:.4g}"
        table.add_row(name, f"{sizes[name]:,}", w, f"{p:.4f}", f"{p * draws:,.0f}", f"{p * draws / sizes[name]:.2f}")
    table.add_row("total", f"{sum(sizes.values()):,}", "", f"{sum(probs.values()):.4f}", f"{draws:,}", "", style="bold")
    if show:
        (console or Console()).print(table)
    return table


# --- sampler ---------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_BLOCK = 4096  # uniforms generated per seeded block


def _name_key(name: str) -> int:
    # Python's hash() is salted per process; a digest is the same on every rank and machine.
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _mix64_np(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (numpy wraps modulo 2**64): a well-mixing bijection."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def permute_indices(i: np.ndarray, n: int, keys: np.ndarray, rounds: int = 6) -> np.ndarray:
    """Element at positions ``i`` of pseudo-random permutations of ``range(n)`` chosen by ``keys``.

    A balanced Feistel network on the smallest even number of bits covering n, with cycle walking
    back into [0, n): a bijection on range(n) per key that needs O(1) memory.
    """
    i = np.asarray(i, dtype=np.uint64)
    if n == 1:
        return np.zeros(len(i), dtype=np.int64)
    bits = (n - 1).bit_length()
    half = (bits + 1) // 2
    mask = np.uint64((1 << half) - 1)
    keys = np.asarray(keys, dtype=np.uint64)
    out = np.empty(len(i), dtype=np.uint64)
    todo = np.arange(len(i))
    x = i.copy()
    with np.errstate(over="ignore"):
        while len(todo):
            k = keys[todo]
            left, right = x >> np.uint64(half), x & mask
            for r in range(rounds):
                rk = np.uint64((r * 0xD1B54A32D192ED03) & _MASK64)
                f = _mix64_np((k ^ rk) + right * np.uint64(0x9E3779B97F4A7C15)) & mask
                left, right = right, left ^ f
            x = (left << np.uint64(half)) | right
            done = x < np.uint64(n)
            out[todo[done]] = x[done]
            todo, x = todo[~done], x[~done]  # cycle walking: permute again until inside range(n)
    return out.astype(np.int64)


class MixtureSampler:
    """Deterministic ``(dataset, index)`` draws given the seed (see module doc).

    Args:
        sizes: records per dataset.
        probs: per-draw probability (or weight; normalised here) of each dataset, same keys.
        seed: fixes the whole sequence.
    """

    def __init__(self, sizes: Mapping[str, int], probs: Mapping[str, float], seed: int = 0) -> None:
        sizes = _check_sizes(sizes)
        if set(probs) != set(sizes):
            raise MixtureError(f"probs and sizes name different datasets: {sorted(set(probs) ^ set(sizes))}")
        p = normalize(probs)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise MixtureError(f"seed must be a non-negative integer, got {seed!r}")
        # A fixed (sorted) order, so the sequence does not depend on the mapping's insertion order.
        self.names: list[str] = sorted(sizes)
        self.sizes = np.array([sizes[n] for n in self.names], dtype=np.int64)
        self.probs = np.array([p[n] for n in self.names], dtype=np.float64)
        self._cdf = np.cumsum(self.probs)
        self._cdf[-1] = 1.0
        self.seed = int(seed)
        self._keys = _mix64_np(np.array([self.seed ^ _name_key(n) for n in self.names], dtype=np.uint64))
        self._draw = 0  # index of the next draw
        self._counts = np.zeros(len(self.names), dtype=np.int64)  # draws per dataset before _draw
        self._blocks: dict[int, np.ndarray] = {}

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` draws, as (dataset positions in ``self.names``, record indices).

        Vectorised: a plan of tens of millions of draws takes seconds. Consecutive calls continue
        the same sequence.
        """
        if n < 0:
            raise MixtureError(f"take(n) needs n >= 0, got {n}")
        choice = self.choices(self._uniforms(self._draw, n))
        index = np.empty(n, dtype=np.int64)
        for d in range(len(self.names)):
            where = np.flatnonzero(choice == d)
            if not len(where):
                continue
            index[where] = self.record_indices(d, self._counts[d] + np.arange(len(where), dtype=np.int64))
            self._counts[d] += len(where)
        self._draw += n
        return choice, index

    def choices(self, u: np.ndarray) -> np.ndarray:
        """Dataset positions (in ``self.names``) picked by uniforms ``u`` (inverse CDF)."""
        return np.minimum(np.searchsorted(self._cdf, u, side="right"), len(self.names) - 1).astype(np.int64)

    def record_indices(self, d: int, count: np.ndarray) -> np.ndarray:
        """Record indices of the ``count``-th draws (0-based) of dataset ``d``: ``perm_e(count mod n)``, e = count // n."""
        size = int(self.sizes[d])
        epoch, pos = np.divmod(np.asarray(count, dtype=np.int64), size)
        keys = _mix64_np(self._keys[d] + epoch.astype(np.uint64))
        return permute_indices(pos, size, keys)

    def block_uniforms(self, b: int) -> np.ndarray:
        """The uniforms of global draws ``b * 4096 ...`` (one seeded block; the same on every rank)."""
        return np.random.default_rng([self.seed, 0x6D6978, b]).random(_BLOCK)

    def _uniforms(self, start: int, n: int) -> np.ndarray:
        out = np.empty(n)
        k = start
        while k < start + n:
            b, off = divmod(k, _BLOCK)
            if b not in self._blocks:
                if len(self._blocks) > 4:
                    self._blocks.clear()
                self._blocks[b] = self.block_uniforms(b)
            take = min(_BLOCK - off, start + n - k)
            out[k - start : k - start + take] = self._blocks[b][off : off + take]
            k += take
        return out


class MixturePlan:
    """The first ``n_rows`` draws of a :class:`MixtureSampler`, computed on demand.

    ``plan.rows(g)`` gives exactly what ``MixtureSampler(sizes, probs, seed).take(n_rows)`` gives at
    positions ``g``, without holding the ``n_rows`` draws: one pass at construction counts, for
    every block of 4096 draws (the sampler's uniform blocks), how many draws of each dataset come
    before it (``n_blocks x n_datasets`` integers: ~4 KB per million draws for 2 datasets). A row
    then needs only its block's uniforms (to know its dataset and its rank among that dataset's
    draws in the block) and one permutation lookup. The last few blocks' choices are cached, so
    reading rows in order costs about what ``take`` costs.
    """

    def __init__(self, sizes: Mapping[str, int], probs: Mapping[str, float], n_rows: int, seed: int = 0, cache_blocks: int = 8) -> None:
        if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
            raise MixtureError(f"n_rows must be a non-negative integer, got {n_rows!r}")
        self.sampler = MixtureSampler(sizes, probs, seed=seed)
        self.names = self.sampler.names
        self.n_rows = int(n_rows)
        n_blocks = -(-self.n_rows // _BLOCK)
        n_sets = len(self.names)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_blocks = cache_blocks
        # counts[b, d]: draws of dataset d among global draws [0, b * 4096).
        self._counts = np.zeros((n_blocks + 1, n_sets), dtype=np.int64)
        for b in range(n_blocks):
            self._counts[b + 1] = self._counts[b] + np.bincount(self._block_choices(b, cache=False), minlength=n_sets)

    def __len__(self) -> int:
        return self.n_rows

    def _block_choices(self, b: int, cache: bool = True) -> np.ndarray:
        """Dataset positions of every draw of block ``b`` (the block's full 4096 draws)."""
        choice = self._cache.get(b)
        if choice is not None:
            self._cache.move_to_end(b)
            return choice
        choice = self.sampler.choices(self.sampler.block_uniforms(b))
        if cache:
            self._cache[b] = choice
            if len(self._cache) > self._cache_blocks:
                self._cache.popitem(last=False)
        return choice

    def rows(self, g: Any) -> tuple[np.ndarray, np.ndarray]:
        """(dataset positions in ``self.names``, record indices) of plan rows ``g`` (ints in [0, n_rows))."""
        g = np.atleast_1d(np.asarray(g, dtype=np.int64))
        if g.ndim != 1:
            raise MixtureError(f"rows(g) needs a 1-d array of row numbers, got shape {g.shape}")
        if len(g) and (g.min() < 0 or g.max() >= self.n_rows):
            raise IndexError(f"plan rows must be in [0, {self.n_rows}), got {int(g.min())}..{int(g.max())}")
        choice = np.empty(len(g), dtype=np.int64)
        count = np.empty(len(g), dtype=np.int64)  # how many draws of the row's dataset come before it
        blocks, offsets = np.divmod(g, _BLOCK)
        for b in np.unique(blocks):
            where = np.flatnonzero(blocks == b)
            block = self._block_choices(int(b))
            # Rank of each draw among the draws of its dataset within the block.
            rank = np.empty(_BLOCK, dtype=np.int64)
            for d in range(len(self.names)):
                mine = block == d
                rank[mine] = np.arange(int(np.count_nonzero(mine)), dtype=np.int64)
            off = offsets[where]
            choice[where] = block[off]
            count[where] = self._counts[b, block[off]] + rank[off]
        index = np.empty(len(g), dtype=np.int64)
        for d in range(len(self.names)):
            where = np.flatnonzero(choice == d)
            if len(where):
                index[where] = self.sampler.record_indices(d, count[where])
        return choice, index
