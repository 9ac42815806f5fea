"""Packaging: pyproject.toml gives ranges, constraints.txt the exact tested versions.

`make install` and CI install with `-c constraints.txt`, so the pins decide what is tested; the
ranges in pyproject.toml decide what `pip install vlm3` may pick next to other packages. The pins
must satisfy the ranges, and no direct dependency may be an exact pin (an exact pin in
pyproject.toml is what made `pip install 'vlm3[vllm]'` unresolvable).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
