"""What a tiny VLM learns on CPU in minutes, with and without focal unification, beside lookups.

Trains a ~2M-parameter Qwen2.5-VL from scratch with ``vlm3/configs/tiny-cpu.yaml`` on synthetic depth
and prints held-out δ1 (unseen scenes) over training wall-clock for

- the recipe: focal-length unification (F = 140 px, images 56-224 px, patch-multiple sizes);
- the same run without unification (every image 112 x 112 at its native focal length);

beside three lookups that use no image content (constant median, row-only, row + image size).
Two scene families: ``fixed_rig`` (camera height and pitch fixed, focal and objects varied) and
``random_rig`` (camera height, pitch and yaw varied too).

    python benchmarks/learn_depth.py                      # both families, 5 min per run
    python benchmarks/learn_depth.py --family fixed_rig --minutes 3 --every 0.5

Writes ``OUT/results.json`` and ``OUT/learning_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vlm3.data.synth import generate, get_family
from vlm3.eval.baselines import DepthLookups
from vlm3.eval.heldout import Curve, build_heldout, common_points, lookup_metrics, make_eval_fn, training_items
from vlm3.models.tiny import build_tiny_model
from vlm3.train.config import load_config
from vlm3.train.sft import train

console = Console()
ROOT = Path(__file__).resolve().parents[1]

ARMS = {
    "recipe (unified focal)": ["data.unify=true"],
    "no unification (112 px)": ["data.unify=false", "data.resize_to=[112, 112]"],
}


def run_family(family: str, args: argparse.Namespace, model_dir: Path, out: Path) -> dict:
    train_dir, test_dir = out / "data" / f"{family}-train", out / "data" / f"{family}-test"
    if not (train_dir / "manifest.json").exists():
        generate(get_family(family), args.train_scenes, train_dir, seed=args.seed, tasks=("depth",), points=20, overwrite=True, progress=False, dataset_name=family)
    if not (test_dir / "manifest.json").exists():
        generate(get_family(family), args.test_scenes, test_dir, seed=args.seed + 10_000, tasks=("depth",), points=args.test_points, overwrite=True, progress=False, dataset_name=family, split="test")

    result = {"family": family, "arms": {}}
    arms = {a: o for a, o in ARMS.items() if args.arms == "both" or a.startswith({"recipe": "recipe", "no_unify": "no unification"}[args.arms])}
    configs, heldouts, lookups = {}, {}, {}
    for arm, overrides in arms.items():
        tag = "recipe" if arm.startswith("recipe") else "no_unify"
        configs[arm] = load_config(
            ROOT / "vlm3" / "configs" / "tiny-cpu.yaml",
            [
                f"model.name_or_path={model_dir}",
                f'data.datasets=[{{"path": "{train_dir}"}}]',
                f"train.output_dir={out / 'runs' / f'{family}-{tag}'}",
                f"train.max_minutes={args.minutes}",
                f"train.eval_every_minutes={args.every}",
                f"train.max_steps={args.max_steps}",
                f"train.save_steps={args.max_steps}",
                f"train.seed={args.seed}",
                f"data.seed={args.seed}",
                *args.set,
                *overrides,
            ],
        )
        settings = configs[arm].data.settings(size_multiple=28)
        heldouts[arm] = build_heldout(test_dir, settings, max_points=args.test_points)
        lookups[arm] = DepthLookups(training_items(train_dir, settings, limit=args.lookup_records), n_coords=settings.n_coords)
    # Every arm is scored on the same labelled points.
    heldouts = dict(zip(heldouts, common_points(list(heldouts.values()))))

    for arm, cfg in configs.items():
        heldout = heldouts[arm]
        baselines = {name: m["delta1"] for name, m in lookup_metrics(lookups[arm], heldout).items()}
        console.print(f"[bold]{family} / {arm}[/bold]: {len(heldout.gt)} held-out points; lookups " + ", ".join(f"{k} {v:.2f}" for k, v in baselines.items()))
        curve = Curve(arm)
        start = time.perf_counter()
        train(cfg, resume=False, eval_fn=make_eval_fn(heldout, curve, log=console.print), quiet=True)
        result["arms"][arm] = {"curve": curve.points, "lookups": baselines, "points": len(heldout.gt), "wall_seconds": round(time.perf_counter() - start, 1)}
    return result


def print_table(results: list[dict], marks: list[float]) -> None:
    table = Table(title="held-out δ1 over training time (2 CPU cores), beside lookups without image content")
    for col in ["family", "run", *[f"{m:g} min" for m in marks], "const. median", "row-only", "row + size"]:
        table.add_column(col, justify="left" if col in ("family", "run") else "right")
    for res in results:
        for arm, data in res["arms"].items():
            curve = Curve(arm, data["curve"])
            cells = []
            for mk in marks:
                p = curve.at_minutes(mk)
                cells.append("–" if p is None else f"{p['delta1']:.2f}")
            lk = data["lookups"]
            table.add_row(res["family"], arm, *cells, f"{lk['constant median']:.2f}", f"{lk['row-only']:.2f}", f"{lk['row + image size']:.2f}")
    console.print(table)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results):
        for k, (arm, data) in enumerate(res["arms"].items()):
            xs = [p["train_seconds"] / 60 for p in data["curve"]]
            ys = [p["delta1"] for p in data["curve"]]
            ax.plot(xs, ys, marker="o", label=arm, color=f"C{k}")
            lk = data["lookups"]
            ax.axhline(lk["constant median"], color=f"C{k}", ls=":", lw=1)
            ax.axhline(lk["row + image size"], color=f"C{k}", ls="--", lw=1)
        ax.set_title(f"{res['family']}  (dotted: constant median, dashed: row + size lookup)", fontsize=9)
        ax.set_xlabel("training time (min, 2 CPU cores)")
        ax.set_ylabel("held-out δ1")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["fixed_rig", "random_rig", "both"], default="both")
    p.add_argument("--arms", choices=["both", "recipe", "no_unify"], default="both")
    p.add_argument("--minutes", type=float, default=5.0, help="training wall-clock per run")
    p.add_argument("--every", type=float, default=1.0, help="evaluate every this many training minutes")
    p.add_argument("--max-steps", type=int, default=350, help="length of the cosine schedule (about 5 min on 2 cores)")
    p.add_argument("--train-scenes", type=int, default=4000)
    p.add_argument("--test-scenes", type=int, default=60)
    p.add_argument("--test-points", type=int, default=5)
    p.add_argument("--lookup-records", type=int, default=2000, help="training records the lookups are fitted on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="extra config override, e.g. train.learning_rate=2e-3")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "learn_depth")
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.out / "model"
    if not (model_dir / "config.json").exists():
        build_tiny_model("qwen2_5_vl", model_dir, size="tiny", seed=args.seed)
    families = ["fixed_rig", "random_rig"] if args.family == "both" else [args.family]
    results = [run_family(f, args, model_dir, args.out) for f in families]
    marks = [m for m in (1, 2, 3, 4, 5, 8, 10, 15, 20) if m <= args.minutes + 1e-9] or [args.minutes]
    print_table(results, marks)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
    plot(results, args.out / "learning_curves.png")
    console.print(f"wrote {args.out / 'results.json'} and {args.out / 'learning_curves.png'}")


if __name__ == "__main__":
    main()
