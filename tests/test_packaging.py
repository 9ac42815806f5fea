"""Packaging: pyproject.toml gives ranges, constraints.txt the exact tested versions; the shipped
configs are package data, found by an installed wheel from any folder.

`make install` and CI install with `-c constraints.txt`, so the pins decide what is tested; the
ranges in pyproject.toml decide what `pip install vlm3` may pick next to other packages. The pins
must satisfy the ranges, and no direct dependency may be an exact pin (an exact pin in
pyproject.toml is what made `pip install 'vlm3[vllm]'` unresolvable).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# The extras `make install` (and so CI) installs: `pip install -c constraints.txt -e '.[test,colmap]'`.
INSTALLED_EXTRAS = ("test", "colmap")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def direct_requirements(extras: tuple[str, ...] | None = None) -> list[Requirement]:
    """`dependencies` plus the given extras (all extras when None)."""
    p = project()
    optional = p.get("optional-dependencies", {})
    names = optional if extras is None else extras
    reqs = [Requirement(s) for s in p["dependencies"]]
    for extra in names:
        reqs += [Requirement(s) for s in optional[extra]]
    return reqs


def constraint_pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for n, raw in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # one clause per line
        assert spec.operator == "==", f"constraints.txt:{n}: {raw!r} is not an exact pin"
        name = canonicalize_name(req.name)
        assert name not in pins, f"constraints.txt:{n}: {req.name} pinned twice"
        pins[name] = Version(spec.version)
    return pins


def test_direct_dependencies_are_ranges_not_exact_pins():
    for req in direct_requirements():
        exact = [s for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
        assert not exact, f"pyproject.toml pins {req} exactly; give a range and keep the pin in constraints.txt"


def test_every_installed_direct_dependency_is_pinned_in_constraints():
    pins = constraint_pins()
    missing = [str(r) for r in direct_requirements(INSTALLED_EXTRAS) if canonicalize_name(r.name) not in pins]
    assert not missing, f"not pinned in constraints.txt (CI would float them): {missing}"


def test_pins_satisfy_pyproject_ranges():
    pins = constraint_pins()
    for req in direct_requirements():
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            continue
        assert req.specifier.contains(pinned, prereleases=True), (
            f"constraints.txt pins {req.name}=={pinned}, outside pyproject.toml's {req}"
        )


def test_makefile_torch_pins_match_constraints():
    # The Makefile installs torch/torchvision first, by exact version, so pip takes them from the
    # local wheel cache; those versions must be the ones constraints.txt pins.
    pins = constraint_pins()
    makefile = (ROOT / "Makefile").read_text()
    found = re.findall(r"\b(torch|torchvision)==([\w.+]+)", makefile)
    assert {name for name, _ in found} == {"torch", "torchvision"}
    for name, version in found:
        assert Version(version) == pins[name], f"Makefile installs {name}=={version}, constraints.txt pins {pins[name]}"


# vLLM releases and what each requires, from the wheels' METADATA (Requires-Dist) on the package
# registry, read with `pip install --dry-run --no-deps --report` on 2026-12-01 (0.33.0 was the
# newest release then). Every release pins torch exactly; 0.31.0 and later also cap transformers.
# Older releases fit even less: 0.11.2-0.18.1 require transformers<5 (torch 2.9.x/2.10.0), 0.10.0-0.11.0
# torch 2.7.1/2.8.0.
VLLM_RELEASES = {
    # version: (torch pin, torchvision pin, transformers requirement)
    "0.33.0": ("2.14.0", "0.29.0", ">=5.16.1,<5.21.0"),
    "0.32.0": ("2.13.0", "0.28.0", ">=5.16.1,<5.20.0"),
    "0.31.0": ("2.13.0", "0.28.0", ">=5.10.4,<5.18.0"),
    "0.30.0": ("2.13.0", "0.28.0", ">=5.10.4"),
    "0.29.0": ("2.13.0", "0.28.0", ">=5.10.4"),
    "0.28.0": ("2.13.0", "0.28.0", ">=5.5.3"),
    "0.27.1": ("2.13.0", "0.28.0", ">=5.5.3"),
    "0.27.0": ("2.13.0", "0.28.0", ">=5.5.3"),
    "0.26.0": ("2.11.0", "0.26.0", ">=5.5.3"),
    "0.25.1": ("2.11.0", "0.26.0", ">=5.5.3"),
    "0.25.0": ("2.11.0", "0.26.0", ">=5.5.3"),
    "0.24.0": ("2.11.0", "0.26.0", ">=5.5.3"),
    "0.23.0": ("2.11.0", "0.26.0", ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0"),
    "0.22.1": ("2.11.0", "0.26.0", ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0"),
    "0.22.0": ("2.11.0", "0.26.0", ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0"),
    "0.21.0": ("2.11.0", "0.26.0", ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0"),
    "0.20.2": ("2.11.0", "0.26.0", ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0"),
    "0.20.1": ("2.11.0", "0.26.0", ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0"),
    "0.20.0": ("2.11.0", "0.26.0", ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0"),
    "0.19.1": ("2.10.0", "0.25.0", ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0"),
    "0.19.0": ("2.10.0", "0.25.0", ">=4.56.0,<5"),
}
# transformers 5.x releases on the registry on 2026-12-01 (`pip index versions transformers`).
TRANSFORMERS_5 = (
    "5.0.0 5.1.0 5.2.0 5.3.0 5.4.0 5.5.0 5.5.1 5.5.2 5.5.3 5.5.4 5.6.0 5.6.1 5.6.2 5.7.0 5.8.0 5.8.1 "
    "5.9.0 5.10.1 5.10.2 5.10.4 5.11.0 5.12.0 5.12.1 5.13.0 5.13.1 5.14.0 5.14.1 5.15.0 5.15.1 "
    "5.16.0 5.16.1 5.17.0 5.18.0 5.19.0 5.20.0 5.20.1 5.20.2 5.21.0 5.21.1 5.22.0 5.22.1 5.22.2 "
    "5.23.0 5.24.0"
).split()


def test_no_vllm_release_fits_the_ranges_so_vllm_stays_out_of_the_environment():
    # README "vLLM: a separate environment" says no vLLM release installs beside vlm3 and that
    # vLLM therefore runs in its own environment. If the ranges or the facts above change so that
    # a release fits, this fails: add a `vllm>=A,<B` extra and update the README instead.
    ours = {canonicalize_name(r.name): r.specifier for r in direct_requirements()}
    fitting = []
    for version, (torch, torchvision, transformers) in VLLM_RELEASES.items():
        shared_transformers = [v for v in TRANSFORMERS_5 if v in ours["transformers"] and v in SpecifierSet(transformers)]
        if Version(torch) in ours["torch"] and Version(torchvision) in ours["torchvision"] and shared_transformers:
            fitting.append(version)
    assert not fitting, f"vllm {fitting} would resolve beside vlm3's ranges"
    assert "vllm" not in project().get("optional-dependencies", {}), (
        "pyproject.toml has a `vllm` extra, but no recorded vLLM release resolves with vlm3's ranges"
    )


# --- shipped configs: package data, found from an installed wheel ------------------------------

def package_data_globs() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vlm3"]


def test_every_shipped_config_is_package_data():
    # setuptools copies into the wheel only what these globs match: a config in a deeper folder
    # (or of another suffix) would be missing from every installed vlm3.
    configs = ROOT / "vlm3" / "configs"
    files = [p.relative_to(ROOT / "vlm3").as_posix() for p in configs.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files, "no configs in vlm3/configs"
    missed = [f for f in files if not any(fnmatch.fnmatchcase(f, g) and f.count("/") == g.count("/") for g in package_data_globs())]
    assert not missed, f"not matched by [tool.setuptools.package-data] in pyproject.toml: {missed}"
    assert not (ROOT / "configs").exists(), "configs/ is back at the repository root; the shipped configs live in vlm3/configs"


def test_no_shipped_bench_writes_into_the_package(tmp_path, monkeypatch):
    # An installed package folder may be read-only. Benches on data vlm3 knows ship their list;
    # benches on the user's copy of a dataset draw theirs once into the bench cache.
    from vlm3.eval.bench import Entry, SampleList, load_bench, sample_list_for
    from vlm3.paths import BENCH_DIR

    names = sorted(p.stem for p in BENCH_DIR.glob("*.yaml"))
    shipped = {"ibims1", "synth-depth", "synth-pose", "synth-correspondence", "synth-object"}
    assert shipped <= set(names)
    for name in names:
        bench = load_bench(name)
        if name in shipped:
            assert bench.samples_path is not None and bench.samples_path.is_file() and bench.samples_path.parent == BENCH_DIR, name
        else:
            assert bench.samples_path is None, f"{name}: a list for the user's data would be written to {bench.samples_path}"
    bench = load_bench("ddad")
    made = SampleList(bench.name, bench.task, bench.seed, [Entry("r", [0])], "sha256:x", None, None)
    monkeypatch.setattr("vlm3.eval.bench.make_sample_list", lambda b, records: made)
    samples = sample_list_for(bench, {"r": None}, tmp_path / "cache")
    assert samples.path == tmp_path / "cache" / "ddad.samples.json" and samples.path.is_file()
    assert not (BENCH_DIR / "ddad.samples.json").exists()


# Run in an unrelated folder with only the wheel's install folder on PYTHONPATH.
PROBE = """
import json, os, sys
import vlm3, vlm3.paths
from vlm3.eval.bench import BenchError, find_bench, load_bench
out = {"vlm3": vlm3.__file__, "checkout": str(vlm3.paths.checkout_root()), "bench": str(find_bench("ibims1")),
       "configs": [str(p) for p in vlm3.paths.list_configs()]}
try:
    out["root"] = load_bench("ibims1").data["prepare"]["root"]
except BenchError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the sources, installed with ``pip install --no-deps --target``."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building in the checkout would leave build/ behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "vlm3", src / "vlm3", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # --no-build-isolation: setuptools comes from this environment (no index needed).
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("vlm3-*.whl")
    target = tmp / "T"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    return target


def probe(target: Path, cwd: Path, data: Path | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VLM3_DATA", "PYTHONPATH")}
    env["PYTHONPATH"] = str(target)
    if data is not None:
        env["VLM3_DATA"] = str(data)
    cmd = [sys.executable, *(args or ("-c", PROBE))]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_installed_wheel_finds_its_configs_from_any_folder(installed_wheel, tmp_path):
    target, elsewhere = installed_wheel.resolve(), tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = probe(target, elsewhere, tmp_path / "data")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(got["vlm3"]).is_relative_to(target) and got["checkout"] == "None"
    assert got["bench"] == str(target / "vlm3" / "configs" / "bench" / "ibims1.yaml")
    shipped = sorted(p.relative_to(ROOT / "vlm3").as_posix() for p in (ROOT / "vlm3" / "configs").rglob("*.yaml"))
    assert sorted(Path(p).relative_to(target / "vlm3").as_posix() for p in got["configs"]) == shipped
    assert all(Path(p).is_relative_to(target) for p in got["configs"])
    assert sorted(p.name for p in (target / "vlm3" / "configs" / "bench").glob("*.samples.json")) == sorted(
        p.name for p in (ROOT / "vlm3" / "configs" / "bench").glob("*.samples.json")
    )
    # The bench's data path comes from VLM3_DATA.
    assert got["root"] == str((tmp_path / "data" / "ibims1").resolve())

    # Installed, with VLM3_DATA unset, there is no default: the error names the setting.
    res = probe(target, elsewhere, None)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert "root" not in got and "data.prepare.root uses ${VLM3_DATA}: VLM3_DATA is not set" in got["error"]

    # The CLI: `vlm3 eval --bench ibims1` reads the installed bench and names the data path tried.
    res = probe(target, elsewhere, tmp_path / "data", "-m", "vlm3.cli", "eval", "--model", "unused", "--bench", "ibims1", "--out", "ev")
    assert res.returncode == 1
    message = " ".join(res.stderr.split())
    assert f"{target / 'vlm3' / 'configs' / 'bench' / 'ibims1.yaml'}: data.prepare.root = {tmp_path / 'data' / 'ibims1'} does not exist" in message
    assert f"VLM3_DATA={tmp_path / 'data'}" in message
