"""``vlm3 demo``: the whole recipe on a CPU in minutes, with honest baselines.

1. Synthetic data with exact geometry: a large fixed-camera-rig dataset (depth) and a small
   randomised-rig dataset (depth + two-view pose), plus held-out scenes of both.
2. Tiny Qwen2.5-VL models trained with plain SFT: (a) the recipe (focal unification, size-weighted
   mixture); (b) the same without unification (every image 112 x 112 at its native focal);
   (c) the recipe with a uniform mixture; (d) the recipe on relative pose.
3. Held-out evaluation on both families and on the real iBims-1 sample when present, beside
   baselines that need no image content.
4. ``OUT/report.md`` and ``report.html`` with the table, learning curves, a predicted depth map and
   point cloud next to the ground truth, and a paragraph that reads the numbers.

Budgets are in optimizer steps, so a re-run with the same seed reproduces the numbers; the
wall-clock each run took is reported beside them.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from vlm3.data.io import image_root, read_records
from vlm3.paths import DATA_ENV, DataPathError, describe_data_dir
from vlm3.data.synth import generate, get_family
from vlm3.eval.baselines import DepthLookups, identity_pose_direction
from vlm3.ask import ask
from vlm3.eval.heldout import Curve, HeldOut, build_heldout, common_points, evaluate_depth, lookup_metrics
from vlm3.settings import DEFAULT_N_COORDS, Settings
from vlm3.tasks.depth import DEPTH
from vlm3.tasks.pose import POSE, PosePrediction, pose_metrics
from vlm3.tasks.samples import build_sample, load_images

console = Console()


def default_ibims_root() -> Path | None:
    """``$VLM3_DATA/ibims1`` (``vlm3.paths``; unset: a source checkout's ../shared/data/ibims1), or
    None when the setting names no folder at all (an installed vlm3 without VLM3_DATA)."""
    from vlm3.paths import data_dir  # (not at module level: a parameter name below)

    try:
        return data_dir() / "ibims1"
    except DataPathError:
        return None


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo (defaults: about 20 minutes on 2 CPU cores)."""

    out: Path = Path("demo_out")
    seed: int = 0
    model: str | None = None  # a pretrained VLM (path or hub id) instead of a tiny random one
    fixed_train: int = 4000  # scenes of the large fixed-rig dataset
    random_train: int = 400  # scenes of the small randomised-rig dataset (depth + pose)
    test_scenes: int = 60
    test_points: int = 5
    steps: int = 400  # arms (a) and (b): about 5.5 min each on 2 cores
    eval_every: int = 50
    mixture_steps: int = 150  # arm (c); 0 skips it
    pose_steps: int = 150  # arm (d); 0 skips it
    batch_size: int = 16
    learning_rate: float = 1.5e-3
    ibims_images: int = 20
    ibims_points: int = 20
    ibims_root: Path | None = field(default_factory=default_ibims_root)  # None: no iBims-1 rows

    @classmethod
    def quick(cls, **kw: Any) -> "DemoConfig":
        """About two minutes: a smoke test of every stage, not of accuracy."""
        base = dict(fixed_train=200, random_train=60, test_scenes=8, test_points=3, steps=24, eval_every=12,
                    mixture_steps=8, pose_steps=8, batch_size=8, ibims_images=2, ibims_points=4)
        base.update(kw)
        return cls(**base)


@dataclass
class ArmResult:
    name: str
    steps: int
    train_seconds: float
    curve: list[dict] = field(default_factory=list)
    final: dict[str, dict] = field(default_factory=dict)  # eval set -> metrics
    model_dir: str = ""


def _train_config(cfg: DemoConfig, model_dir: str, datasets: list[str], task: str, out: Path, steps: int, overrides: list[str]):
    from vlm3.train.config import parse_config

    data = {
        "model": {"name_or_path": model_dir, "dtype": "float32", "min_pixels": 3136, "max_pixels": 50176},
        "data": {"task": task, "datasets": [{"path": d} for d in datasets], "mixture": "size", "unify": True, "focal": 140.0,
                 "size_multiple": 28, "n_coords": 100, "points_per_sample": 10, "packing": "multi_turn", "answer_style": "short",
                 "depth_type": "range", "seed": cfg.seed},
        "train": {"output_dir": str(out), "max_steps": steps, "per_device_batch_size": cfg.batch_size,
                  "learning_rate": cfg.learning_rate, "warmup_ratio": 0.1, "max_grad_norm": 1.0,
                  "save_steps": max(steps, 1), "save_total_limit": 1, "logging_steps": max(1, steps // 20), "seed": cfg.seed},
    }
    if cfg.model is not None:  # a real pretrained VLM: its own pixel budget and a fine-tuning learning rate
        data["model"].update(name_or_path=cfg.model, dtype="auto", min_pixels=None, max_pixels=None)
        data["data"].update(size_multiple=None, n_coords=DEFAULT_N_COORDS)
        data["train"].update(learning_rate=2e-5, max_grad_norm=0.02)
    return parse_config(data, overrides, source="demo")


def _make_data(cfg: DemoConfig) -> dict[str, Path]:
    d = cfg.out / "data"
    paths = {
        "fixed_rig": d / "fixed_rig-train",
        "random_rig": d / "random_rig-train",
        "fixed_rig-test": d / "fixed_rig-test",
        "random_rig-test": d / "random_rig-test",
    }
    jobs = [
        ("fixed_rig", cfg.fixed_train, paths["fixed_rig"], cfg.seed, (DEPTH.name,), "train", False),
        ("random_rig", cfg.random_train, paths["random_rig"], cfg.seed + 1, (DEPTH.name, POSE.name), "train", False),
        ("fixed_rig", cfg.test_scenes, paths["fixed_rig-test"], cfg.seed + 10_000, (DEPTH.name,), "test", True),
        ("random_rig", cfg.test_scenes, paths["random_rig-test"], cfg.seed + 10_001, (DEPTH.name, POSE.name), "test", True),
    ]
    for family, n, path, seed, tasks, split, dense in jobs:
        if not (path / "manifest.json").exists():
            generate(get_family(family), n, path, seed=seed, tasks=tasks, points=20 if split == "train" else cfg.test_points,
                     overwrite=True, progress=False, dataset_name=family, split=split, save_depth=dense)
    return paths


def _ibims_heldout(cfg: DemoConfig, settings: Settings) -> HeldOut | None:
    """The first images/points of the real iBims-1 sample under ``settings`` (None when absent)."""
    if cfg.ibims_images <= 0:
        return None
    if cfg.ibims_root is None or not (cfg.ibims_root / "ibims1_val.jsonl").exists():
        tried = "no data folder" if cfg.ibims_root is None else f"no {cfg.ibims_root / 'ibims1_val.jsonl'}"
        _say_once(f"iBims-1 rows skipped: {tried} ({describe_data_dir()}); set {DATA_ENV} to the folder that holds ibims1/")
        return None
    from vlm3.data.adapters import AdapterOptions, get_adapter
    from vlm3.data.records import Record

    adapter = get_adapter("depthlm-jsonl")(cfg.ibims_root, AdapterOptions(seed=cfg.seed, split="test"))
    samples = []
    for rec in adapter.convert_all():
        if not isinstance(rec, Record):
            continue
        s = build_sample(rec, load_images(rec, cfg.ibims_root), DEPTH, settings)
        s.queries = s.queries[: cfg.ibims_points]
        samples.append(s)
        if len(samples) >= cfg.ibims_images:
            break
    return HeldOut(samples, settings) if samples else None


@functools.cache
def _say_once(message: str) -> None:
    console.print(message, style="yellow", soft_wrap=True, highlight=False, markup=False)


def _pose_eval(backend, data_dir: Path, settings: Settings) -> tuple[dict, list]:
    root = image_root(data_dir)
    lines = []
    for rec in read_records(data_dir):
        if POSE.has_labels(rec):
            s = build_sample(rec, load_images(rec, root), POSE, settings)
            lines += [a.line(s) for a in ask(backend, s, max_new_tokens=64)]
    pairs = [(np.asarray(line["gt"]["R"]), np.asarray(line["gt"]["t"])) for line in lines]
    return POSE.metrics(lines), pairs


def _identity_pose_baseline(train_dir: Path, pairs: list) -> dict:
    """Identity rotation and the mean training motion direction, for every held-out pair."""
    from vlm3.geometry.pose import camera2_center_in_cam1, relative_pose, t_from_center

    dirs = []
    for rec in read_records(train_dir):
        if POSE.has_labels(rec):
            c = camera2_center_in_cam1(relative_pose(rec.views[0].pose, rec.views[1].pose))
            dirs.append(c / max(np.linalg.norm(c), 1e-12))
    d = identity_pose_direction(dirs)
    pred = PosePrediction(np.eye(3), t_from_center(np.eye(3), d))
    return pose_metrics([pred] * len(pairs), [R for R, _ in pairs], [t for _, t in pairs])


# What otherwise changes the demo's numbers between machines of one kind (benchmarks/determinism.py):
# the torch thread count and which CPU kernels torch, MKL and oneDNN pick (AVX-512 where the CPU has it).
DEMO_THREADS = 2
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@contextmanager
def pinned_numerics(n_threads: int = DEMO_THREADS) -> Iterator[dict[str, Any]]:
    """Fix the demo's numerics while it runs: ``n_threads`` torch threads (:data:`DEMO_THREADS` unless
    ``vlm3 demo --threads`` or ``VLM3_THREADS`` say otherwise, ``vlm3.threads``) and AVX2 kernels
    (set before torch's first kernel call). ``VLM3_DEMO_NUMERICS=native`` keeps the machine's own.
    Yields what is in force, for ``results.json``; the caller's thread count and environment are
    restored afterwards."""
    native = os.environ.get("VLM3_DEMO_NUMERICS") == "native"
    saved = {k: os.environ.get(k) for k in (*AVX2_KERNELS, "OMP_NUM_THREADS")}
    if not native:
        os.environ.update({**AVX2_KERNELS, "OMP_NUM_THREADS": str(n_threads)})
    import torch

    threads = torch.get_num_threads()
    if not native:
        torch.set_num_threads(n_threads)
    try:
        yield {"pinned": not native, "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    finally:
        torch.set_num_threads(threads)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_demo(cfg: DemoConfig, n_threads: int = DEMO_THREADS) -> dict[str, Any]:
    """Run every stage (with ``n_threads`` torch threads) and write the report; returns the results dictionary (also results.json)."""
    with pinned_numerics(n_threads) as numerics:
        return _run_demo(cfg, numerics)


def _run_demo(cfg: DemoConfig, numerics: dict[str, Any]) -> dict[str, Any]:
    from vlm3.demo.report import dense_depth_figure, write_report
    from vlm3.eval.heldout import make_eval_fn
    from vlm3.models.local import LocalBackend
    from vlm3.models.tiny import build_tiny_model
    from vlm3.train.sft import train

    t0 = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]vlm3 demo[/bold]: data")
    paths = _make_data(cfg)
    model_dir = cfg.model
    if model_dir is None:
        model_dir = str(cfg.out / "tiny-qwen2_5_vl")
        if not (Path(model_dir) / "config.json").exists():
            build_tiny_model("qwen2_5_vl", model_dir, size="tiny", seed=cfg.seed)
    train_sets = [str(paths["fixed_rig"]), str(paths["random_rig"])]

    arms_spec = {
        "a": ("recipe", ["data.unify=true"], cfg.steps, DEPTH.name),
        "b": ("no unification", ["data.unify=false", "data.resize_to=[112, 112]"], cfg.steps, DEPTH.name),
    }
    if cfg.mixture_steps > 0:
        arms_spec["c"] = ("recipe, uniform mixture", ["data.unify=true", "data.mixture=uniform"], cfg.mixture_steps, DEPTH.name)
    if cfg.pose_steps > 0:
        arms_spec["d"] = ("recipe, pose", ["data.unify=true"], cfg.pose_steps, POSE.name)

    results: dict[str, Any] = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "numerics": numerics, "arms": {}, "baselines": {}}
    heldouts: dict[str, dict[str, HeldOut]] = {}
    tcfgs, all_opts = {}, {}
    for key, (name, overrides, steps, task) in arms_spec.items():
        sets = [str(paths["random_rig"])] if task == POSE.name else train_sets
        tcfgs[key] = _train_config(cfg, model_dir, sets, task, cfg.out / "runs" / key, steps, overrides + [f"train.eval_every_steps={cfg.eval_every}"])
        all_opts[key] = tcfgs[key].data.settings(size_multiple=28 if cfg.model is None else None)
        if task == DEPTH.name:
            hs = {"fixed_rig": build_heldout(paths["fixed_rig-test"], all_opts[key]), "random_rig": build_heldout(paths["random_rig-test"], all_opts[key])}
            ib = _ibims_heldout(cfg, all_opts[key])
            if ib is not None:
                hs["ibims1"] = ib
            heldouts[key] = hs
    # Every depth arm is scored on the same labelled points of each evaluation set.
    depth_keys = list(heldouts)
    for set_name in list(heldouts[depth_keys[0]]) if depth_keys else []:
        shared = common_points([heldouts[k][set_name] for k in depth_keys])
        for k, h in zip(depth_keys, shared):
            heldouts[k][set_name] = h

    for key, (name, overrides, steps, task) in arms_spec.items():
        console.rule(f"[bold]({key}) {name}[/bold]: {steps} steps")
        tcfg, opts = tcfgs[key], all_opts[key]
        shutil.rmtree(tcfg.train.output_dir, ignore_errors=True)  # a re-run trains afresh, as the first run did
        arm = ArmResult(name, steps, 0.0)
        if task == DEPTH.name:
            hs = heldouts[key]
            curve = Curve(name)
            eval_fn = make_eval_fn(hs["fixed_rig"], curve, log=lambda m: console.print(f"  {m}"))
            res = train(tcfg, resume=False, eval_fn=eval_fn if key in ("a", "b") else None, quiet=True)
            arm.curve = curve.points
            backend = LocalBackend.from_pretrained(str(res.final_dir), batch_size=64)
            for set_name, h in hs.items():
                arm.final[set_name] = evaluate_depth(backend, h)["metrics"]
            if key == "a":
                _, png, ply = dense_depth_figure(backend, paths["fixed_rig-test"], opts, cfg.out)
                results["dense"] = {"figure": str(png.name), "point_clouds": [str(p.name) for p in ply]}
        else:
            res = train(tcfg, resume=False, quiet=True)
            backend = LocalBackend.from_pretrained(str(res.final_dir), batch_size=16)
            metrics, pairs = _pose_eval(backend, paths["random_rig-test"], opts)
            arm.final["random_rig"] = metrics
            results["baselines"]["pose identity"] = _identity_pose_baseline(paths["random_rig"], pairs)
        arm.train_seconds = round(res.train_seconds, 1)
        arm.model_dir = str(res.final_dir)
        results["arms"][key] = asdict(arm)
        console.print(f"  done in {res.train_seconds / 60:.1f} min; " + ", ".join(
            f"{k}: δ1 {v['delta1']:.3f}" if "delta1" in v else f"{k}: AUC@30 {v['auc30']:.3f}" for k, v in arm.final.items()))

    # Content-free baselines, fitted on the training labels as each depth arm sees them.
    for key in [k for k in ("a", "b") if k in heldouts]:
        opts = heldouts[key]["fixed_rig"].settings
        items = []
        for p in (paths["fixed_rig"], paths["random_rig"]):
            items += build_heldout(p, opts, limit=1500).items
        lookups = DepthLookups(items, n_coords=opts.n_coords)
        results["baselines"][key] = {set_name: {n: m for n, m in lookup_metrics(lookups, h).items()} for set_name, h in heldouts[key].items()}

    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    (cfg.out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    write_report(results, cfg.out)
    return results
