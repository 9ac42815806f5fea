"""Mixture probabilities, config files, the resumable DDP-aware sampler, HF interleaving and the CLI."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.data.mixture import (
    MixtureError,
    MixtureSampler,
    interleave,
    load_mixture_config,
    mixture_probs,
    mixture_table,
    mixture_weights,
    parse_size,
    permute_index,
)

PAPER = Path(__file__).resolve().parents[1] / "configs" / "mixture-paper-depth.yaml"
SIZES = {"a": 1000, "b": 3000, "c": 6000}
runner = CliRunner()


# --- probabilities ------------------------------------------------------------------------------


def test_size_policy_gives_size_shares():
    assert mixture_probs(SIZES, "size") == pytest.approx({"a": 0.1, "b": 0.3, "c": 0.6})


def test_uniform_and_power_policies():
    assert mixture_probs(SIZES, "uniform") == pytest.approx({k: 1 / 3 for k in SIZES})
    p = mixture_probs(SIZES, "size^0.5")
    roots = {k: v**0.5 for k, v in SIZES.items()}
    assert p == pytest.approx({k: v / sum(roots.values()) for k, v in roots.items()})
    assert mixture_probs(SIZES, "size^0") == pytest.approx(mixture_probs(SIZES, "uniform"))


def test_explicit_weights_are_normalised():
    p = mixture_probs(SIZES, "explicit", {"a": 0.5, "b": 1.5, "c": 2})
    assert p == pytest.approx({"a": 0.125, "b": 0.375, "c": 0.5})
    assert sum(p.values()) == pytest.approx(1.0)


def test_overrides_replace_or_scale_a_share():
    w = mixture_weights(SIZES, "size", {"a": 0.5, "c": {"scale": 0.5}})
    assert w == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.3})
    assert mixture_probs(SIZES, "size", {"c": 0}) == pytest.approx({"a": 0.25, "b": 0.75, "c": 0.0})


@pytest.mark.parametrize(
    "policy, overrides, match",
    [
        ("sizes", None, "policy 'sizes' is not one of"),
        ("size^-1", None, "is not one of"),
        ("size", {"a": -0.1}, r"overrides\.a = -0\.1 is negative"),
        ("size", {"d": 1.0}, "unknown dataset.*'d'"),
        ("size", {"a": 0, "b": 0, "c": 0}, "all dataset weights are zero"),
        ("explicit", {"a": 1.0}, "missing: b, c"),
        ("size", {"a": {"weight": 1, "scale": 2}}, r"overrides\.a must be"),
        ("size", {"a": "heavy"}, r"overrides\.a must be a finite number"),
    ],
)
def test_bad_mixtures_name_the_field(policy, overrides, match):
    with pytest.raises(MixtureError, match=match):
        mixture_probs(SIZES, policy, overrides)


def test_bad_sizes():
    with pytest.raises(MixtureError, match="size of dataset 'a'"):
        mixture_probs({"a": 0, "b": 3})
    assert parse_size("700K") == 700_000 and parse_size("1.5M") == 1_500_000 and parse_size(190000) == 190_000
    with pytest.raises(MixtureError, match="lots"):
        parse_size("lots")


def test_paper_config():
    cfg = load_mixture_config(PAPER)
    assert cfg.sizes["hm3d"] == 9_000_000 and cfg.sizes["matterport3d"] == 190_000 and cfg.draws == 32_000_000
    weights = {"argoverse2": 0.21, "waymo": 0.04, "nuscenes": 0.01, "scannetpp": 0.01, "taskonomy": 0.51,
               "hm3d": 0.78, "matterport3d": 0.006, "internal": 1.0}
    total = sum(weights.values())
    assert cfg.probs() == pytest.approx({k: w / total for k, w in weights.items()})
    sizes_total = sum(cfg.sizes.values())
    assert cfg.probs(use_overrides=False) == pytest.approx({k: s / sizes_total for k, s in cfg.sizes.items()})


# --- sampler ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 600), key=st.integers(0, 2**64 - 1))
def test_permutation_is_a_bijection(n, key):
    assert sorted(permute_index(i, n, key) for i in range(n)) == list(range(n))


def take(sampler, n):
    return list(itertools.islice(sampler, n))


def test_sampler_is_deterministic_and_follows_probs():
    probs = {"a": 0.2, "b": 0.3, "c": 0.5}
    x = take(MixtureSampler(SIZES, probs, seed=7), 6000)
    assert x == take(MixtureSampler(dict(reversed(list(SIZES.items()))), probs, seed=7), 6000)  # order-free
    assert x != take(MixtureSampler(SIZES, probs, seed=8), 6000)
    freq = Counter(d for d, _ in x)
    for name, p in probs.items():  # binomial sd <= 0.0065 at n = 6000; allow 4 sd
        assert freq[name] / 6000 == pytest.approx(p, abs=0.026)
    assert all(0 <= i < SIZES[d] for d, i in x)


def test_every_record_once_per_dataset_epoch():
    sizes = {"small": 7, "big": 10_000}
    seq = take(MixtureSampler(sizes, {"small": 0.5, "big": 0.5}, seed=3), 200)
    small = [i for d, i in seq if d == "small"]
    epochs = [small[k : k + 7] for k in range(0, len(small) - 6, 7)]
    assert len(epochs) >= 5
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # a fresh permutation per epoch
    big = [i for d, i in seq if d == "big"]
    assert len(set(big)) == len(big)


def test_resumed_sampler_continues_the_same_sequence():
    probs = mixture_probs(SIZES)
    full = take(MixtureSampler(SIZES, probs, seed=11), 500)
    s = MixtureSampler(SIZES, probs, seed=11)
    head = take(s, 123)
    state = json.loads(json.dumps(s.state_dict()))  # survives a checkpoint file
    resumed = MixtureSampler(SIZES, probs, seed=11)
    resumed.load_state_dict(state)
    assert head + take(resumed, 377) == full


def test_state_of_another_mixture_is_refused():
    s = MixtureSampler(SIZES, mixture_probs(SIZES), seed=1)
    take(s, 10)
    with pytest.raises(MixtureError, match="different mixture: seed 1 != 2"):
        MixtureSampler(SIZES, mixture_probs(SIZES), seed=2).load_state_dict(s.state_dict())
    with pytest.raises(MixtureError, match="probabilities differ"):
        MixtureSampler(SIZES, mixture_probs(SIZES, "uniform"), seed=1).load_state_dict(s.state_dict())


def test_ranks_see_disjoint_draws_whose_union_is_the_single_rank_sequence():
    sizes = {"a": 5000, "b": 8000, "c": 20000}
    probs = mixture_probs(sizes, "uniform")
    single = take(MixtureSampler(sizes, probs, seed=5), 3000)
    world = 3
    ranks = [take(MixtureSampler(sizes, probs, seed=5, rank=r, world_size=world), 1000) for r in range(world)]
    assert Counter(itertools.chain(*ranks)) == Counter(single)
    sets = [set(r) for r in ranks]
    assert all(len(s) == 1000 for s in sets)  # no duplicates within a rank (no dataset finished an epoch)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert [ranks[k % world][k // world] for k in range(3000)] == single  # draw k went to rank k % world


def test_resume_with_another_world_size_continues_globally():
    probs = mixture_probs(SIZES)
    single = take(MixtureSampler(SIZES, probs, seed=2), 100)
    r0 = MixtureSampler(SIZES, probs, seed=2, rank=0, world_size=4)
    take(r0, 10)  # 40 global draws consumed by the 4 ranks
    state = r0.state_dict()
    after = []
    for rank in range(2):
        s = MixtureSampler(SIZES, probs, seed=2, rank=rank, world_size=2)
        s.load_state_dict(state)
        after.append(take(s, 30))
    assert [after[k % 2][k // 2] for k in range(60)] == single[40:100]


# --- HF interleave, table, CLI ------------------------------------------------------------------


def test_interleave_hf_datasets():
    import datasets

    hf = {
        "a": datasets.Dataset.from_dict({"x": [f"a{i}" for i in range(20)]}),
        "b": datasets.Dataset.from_dict({"x": [f"b{i}" for i in range(60)]}),
        "z": datasets.Dataset.from_dict({"x": ["z0"]}),
    }
    mixed = interleave(hf, {"a": 1, "b": 3, "z": 0}, seed=0)
    xs = mixed["x"]
    assert xs == interleave(hf, {"a": 1, "b": 3, "z": 0}, seed=0)["x"]
    assert not any(x.startswith("z") for x in xs)
    assert {f"a{i}" for i in range(20)} | {f"b{i}" for i in range(60)} <= set(xs)  # all_exhausted


def test_mixture_table_rows():
    table = mixture_table(SIZES, mixture_probs(SIZES), draws=20_000, show=False)
    assert table.row_count == 4
    cells = [list(c.cells) for c in table.columns]
    assert cells[0][:3] == ["a", "b", "c"] and cells[3][2] == "0.6000" and cells[4][2] == "12,000"


def test_cli_prints_the_paper_mixture():
    res = runner.invoke(app, ["mixture", str(PAPER)])
    assert res.exit_code == 0, res.output
    assert "hm3d" in res.output and "0.3040" in res.output  # 0.78 / 2.566
    res = runner.invoke(app, ["mixture", str(PAPER), "--no-overrides", "--policy", "uniform"])
    assert res.exit_code == 0 and res.output.count("0.1250") == 8


@pytest.mark.parametrize(
    "text, match",
    [
        ("policy: sized\ndatasets: {a: 10}\n", "policy 'sized'"),
        ("datasets: {a: 10, b: 5}\noverrides: {a: -1}\n", "overrides.a = -1 is negative"),
        ("datasets: {a: 10}\noverrides: {c: 1}\n", "unknown dataset(s) 'c'"),
        ("datasets: {a: 10, b: 5}\noverrides: {a: 0, b: 0}\n", "all dataset weights are zero"),
        ("datasets: {a: many}\n", "datasets.a = 'many'"),
        ("dataset: {a: 10}\n", "unknown field(s) ['dataset']"),
        ("datasets: [a, b\n", "invalid YAML"),
    ],
)
def test_cli_bad_configs_fail_cleanly(tmp_path, text, match):
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(text)
    res = runner.invoke(app, ["mixture", str(cfg)])
    assert res.exit_code == 2
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    assert match in res.output and "mix.yaml" in res.output


def test_cli_missing_config():
    res = runner.invoke(app, ["mixture", "no/such.yaml"])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_take_equals_next_sequence() -> None:
    """The vectorised plan draw is the same sequence as the iterator, also across epochs and resumes."""
    from vlm3.data.mixture import MixtureSampler, permute_index, permute_indices

    sizes = {"big": 1000, "small": 7, "one": 1, "mid": 130}
    probs = {"big": 0.5, "small": 0.2, "one": 0.05, "mid": 0.25}
    it = MixtureSampler(sizes, probs, seed=5)
    expected = [next(it) for _ in range(9000)]
    vec = MixtureSampler(sizes, probs, seed=5)
    choice, index = vec.take(4000)
    c2, i2 = vec.take(5000)  # continues where the first call stopped
    got = [(vec.names[c], int(i)) for c, i in zip(list(choice) + list(c2), list(index) + list(i2))]
    assert got == expected
    assert vec.state_dict() == it.state_dict()
    keys = np.arange(50, dtype=np.uint64) * np.uint64(977)
    assert permute_indices(np.arange(50) % 37, 37, keys).tolist() == [permute_index(i % 37, 37, int(k)) for i, k in enumerate(keys)]
    with pytest.raises(MixtureError, match="world_size=1"):
        MixtureSampler(sizes, probs, seed=5, rank=0, world_size=2).take(3)
