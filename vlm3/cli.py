"""The ``vlm3`` command line. Each command lives next to the code it drives; this file only wires them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vlm3",
    help="Vision language models as native 3D learners: data, training, inference and evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """Vision language models as native 3D learners."""


@app.command()
def version() -> None:
    """Print the vlm3 version."""
    from vlm3 import __version__

    typer.echo(__version__)


# --- commands (one block each; keep blocks independent) -------------------------------------


# --- synth: render synthetic 3D scenes into a dataset (vlm3.data.synth) ----------------------


@app.command("synth")
def synth(
    out: str = typer.Option(..., "--out", help="output dataset folder"),
    family: str = typer.Option("fixed_rig", help="scene family: fixed_rig, random_rig or outdoor"),
    scenes: int = typer.Option(200, min=1, help="number of scenes (one record each)"),
    seed: int = typer.Option(0, min=0, help="scene i is seeded from (seed, i)"),
    tasks: str = typer.Option("depth,pose,corr,object", help="comma-separated: depth, pose, corr, object"),
    points: int = typer.Option(10, min=0, help="depth points per record"),
    matches: int = typer.Option(20, min=0, help="correspondences per record"),
    workers: int = typer.Option(1, min=1, help="parallel worker processes (output is identical)"),
    name: str | None = typer.Option(None, help="dataset name (default: the family name)"),
    split: str = typer.Option("train", help="split written into the records"),
    save_depth: bool = typer.Option(False, "--save-depth", help="also save dense depth (.npy) and id maps"),
    focal_range: str | None = typer.Option(None, help="native focal range in pixels, e.g. 70,280"),
    size: str | None = typer.Option(None, help="image size WxH (e.g. 112x112) or a width range W1-W2"),
    set_: list[str] = typer.Option([], "--set", help="override any family parameter, e.g. --set camera_height=1.2,1.6"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing dataset in --out"),
) -> None:
    """Render synthetic 3D scenes into a prepared vlm3 dataset (records, PNG images, manifest)."""
    from vlm3.data.synth import generate, get_family, normalize_tasks, parse_override

    try:
        fam = get_family(family)
        overrides: dict = {}
        if focal_range is not None:
            overrides["focal"] = parse_override(fam, f"focal={focal_range}")[1]
        if size is not None:
            text = size.lower().replace(" ", "")
            if "x" in text:
                w, h = (int(v) for v in text.split("x", 1))
                overrides.update(width=(w, w), aspect=(w / h, w / h))
            elif "-" in text:
                lo, hi = (int(v) for v in text.split("-", 1))
                overrides["width"] = (lo, hi)
            else:
                raise ValueError(f"--size {size!r}: use WxH (e.g. 112x112) or a width range W1-W2 (e.g. 56-224)")
        for item in set_:
            key, value = parse_override(fam, item)
            overrides[key] = value
        fam = get_family(fam, **overrides)
        task_list = normalize_tasks(tasks)
    except (KeyError, ValueError) as e:
        raise typer.BadParameter(str(e).strip("'\"")) from None
    try:
        path = generate(
            fam, scenes, out, seed=seed, tasks=task_list, points=points, matches=matches, workers=workers,
            dataset_name=name, save_depth=save_depth, split=split, overwrite=overwrite,
        )
    except (FileExistsError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {scenes} {fam.name} scenes ({', '.join(task_list)}) to {path}")


# --- score: metrics of pre-paired predictions from any model (vlm3.eval.score) --------------


@app.command("score")
def score_command(
    task: str = typer.Argument(..., help="Task: depth, pose, corr or object."),
    file: str = typer.Argument(..., help="JSONL file, one prediction/ground-truth pair per line."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    n_coords: int = typer.Option(2000, "--n-coords", help="Range N of text coordinates (corr text answers)."),
) -> None:
    """Score pre-paired predictions (depth, pose, corr, object) without running a model."""
    from vlm3.eval.score import run

    raise typer.Exit(run(task, file, as_json=as_json, n_coords=n_coords))


# --- tiny-model: build a tiny VLM of a real Qwen-VL architecture (vlm3.models.tiny) ---------


@app.command("tiny-model")
def tiny_model(
    family: str = typer.Option(..., "--family", help="Architecture: qwen2_5_vl or qwen3_vl."),
    out: str = typer.Option(..., "--out", help="Folder to write the checkpoint to."),
    size: str = typer.Option("tiny", "--size", help="tiny (~2-3M parameters) or small (~7-10M)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
) -> None:
    """Build a randomly initialised tiny VLM and save it as a plain transformers checkpoint."""
    import json

    from vlm3.models.tiny import FAMILIES, SIZES, build_tiny_model

    if family not in FAMILIES:
        raise typer.BadParameter(f"--family must be one of {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise typer.BadParameter(f"--size must be one of {', '.join(SIZES)}")
    folder = build_tiny_model(family, out, size=size, seed=seed)
    info = json.loads((folder / "vlm3_tiny.json").read_text())
    typer.echo(f"{family} {size} (seed {seed}): {info['parameters']:,} parameters")
    typer.echo(f"saved to {folder.resolve()}")


# --- prepare: convert a dataset into vlm3 records (vlm3.data.prepare) ------------------------


@app.command("prepare")
def prepare_command(
    adapter: str = typer.Argument(..., help="Adapter name, e.g. depthlm-jsonl (an unknown name lists them)."),
    root: str | None = typer.Option(None, "--root", help="The dataset's folder in its original layout (SRC)."),
    out: str | None = typer.Option(None, "--out", help="Output folder (DST) for records, manifest and report."),
    focal: float = typer.Option(1000.0, "--focal", help="Unified focal length in pixels (with --materialize)."),
    size_multiple: int | None = typer.Option(None, "--size-multiple", help="Round unified image sizes to this multiple."),
    points: int | None = typer.Option(None, "--points", help="Labelled pixels kept per record (default: adapter's)."),
    workers: int = typer.Option(1, "--workers", help="Parallel worker processes."),
    seed: int = typer.Option(0, "--seed", help="Seed of everything sampled."),
    split: str = typer.Option("train", "--split", help="Split written into the records."),
    materialize: bool = typer.Option(
        False, "--materialize/--no-materialize", help="Write focal-unified PNG images under DST/images."
    ),
    num_shards: int = typer.Option(1, "--num-shards", help="Split the units over this many jobs (e.g. a SLURM array)."),
    shard_index: int = typer.Option(0, "--shard-index", help="Which of the --num-shards jobs this is (0-based)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Adapter option key=value (repeatable)."),
    help_adapter: bool = typer.Option(False, "--help-adapter", help="Show the adapter's expected layout and options."),
) -> None:
    """Convert a dataset into vlm3 records: parallel, resumable, with a rejection report."""
    from rich.console import Console

    from vlm3.data.adapters import get_adapter
    from vlm3.data.prepare import PrepareError, PrepareOptions, parse_option_pairs, prepare, print_report

    err = Console(stderr=True)
    try:
        cls = get_adapter(adapter)
    except KeyError as e:
        err.print(f"Error: {e.args[0]}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if help_adapter:
        typer.echo(f"{cls.name}: {cls.description}\ntasks: {', '.join(cls.tasks) or '-'}\n\n{cls.layout}")
        return
    if root is None or out is None:
        err.print("Error: --root SRC and --out DST are required", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2)
    try:
        opts = PrepareOptions(
            focal=focal, size_multiple=size_multiple, points=points, workers=workers, seed=seed, split=split,
            materialize=materialize, num_shards=num_shards, shard_index=shard_index, options=parse_option_pairs(option),
        )
        report = prepare(adapter, root, out, opts, console=err)
    except KeyboardInterrupt:
        err.print("interrupted: finished units are kept; re-run the same command to resume", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except (PrepareError, OSError, ValueError) as e:
        err.print(f"Error: {e}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    print_report(report)


# --- mixture: show the effective data mixture of a config (vlm3.data.mixture) ----------------


@app.command("mixture")
def mixture_command(
    config: str = typer.Argument(..., help="Mixture YAML (policy, datasets: name: size, overrides: name: weight)."),
    policy: str | None = typer.Option(None, "--policy", help="Override the file's policy: uniform, size, size^ALPHA, explicit."),
    use_overrides: bool = typer.Option(True, "--overrides/--no-overrides", help="Apply the file's per-dataset weights."),
    draws: str | None = typer.Option(None, "--draws", help="Draws to plan for, e.g. 32M (default: the file's, else the sum of sizes)."),
) -> None:
    """Print the effective mixture: size, weight, probability and expected draws per dataset."""
    from rich.console import Console

    from vlm3.data.mixture import MixtureError, load_mixture_config, mixture_table, parse_size

    try:
        cfg = load_mixture_config(config)
        if policy is not None:
            cfg.policy = policy
        weights = cfg.weights(use_overrides=use_overrides)
        total = sum(weights.values())
        probs = {k: v / total for k, v in weights.items()}
        n = parse_size(draws, "--draws") if draws is not None else cfg.draws
    except MixtureError as e:
        Console(stderr=True).print(f"Error: {e}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    arm = f"policy {cfg.policy}" + (" + overrides" if use_overrides and cfg.overrides else "")
    mixture_table(cfg.sizes, probs, weights=weights, draws=n, title=f"{config} ({arm})")


# --- serve: an OpenAI-compatible HTTP server for a checkpoint (vlm3.serve.server) ------------


@app.command("serve")
def serve_command(
    model: str = typer.Option(..., "--model", help="Checkpoint folder or hub id (served under this name)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="VLM3_API_KEY", help="Require 'Authorization: Bearer KEY' (or set VLM3_API_KEY)."
    ),
    max_image_pixels: int = typer.Option(4096 * 4096, "--max-image-pixels", min=1, help="Largest image accepted (width x height)."),
    max_request_bytes: int = typer.Option(64 * 1024 * 1024, "--max-request-bytes", min=1, help="Largest request body accepted."),
    max_concurrency: int = typer.Option(1, "--max-concurrency", min=1, help="Model batches running at once; others queue."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1, help="Queued requests answered together in one batch."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda:0."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto (default: float32 on CPU, else bfloat16)."),
) -> None:
    """Serve a model over OpenAI-compatible chat completions (greedy decoding)."""
    from vlm3.serve.server import serve

    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        typer.echo(f"warning: serving on {host} without --api-key; anyone who can reach the port can use the model", err=True)
    serve(
        model, host=host, port=port, api_key=api_key, max_image_pixels=max_image_pixels,
        max_request_bytes=max_request_bytes, max_concurrency=max_concurrency, max_batch_size=max_batch_size,
        device=device, dtype=dtype,
    )


# --- train: supervised fine-tuning with the VLM3 recipe (vlm3.train) -------------------------


@app.command("train")
def train_command(
    config: str = typer.Argument(..., help="Training config YAML (sections model, data, train), e.g. configs/tiny-cpu.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Override a field, section.field=value (repeatable), e.g. train.max_steps=100."),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Continue from the newest complete checkpoint in train.output_dir (default)."
    ),
) -> None:
    """Fine-tune a VLM on prepared data. Re-run the same command to resume after an interruption.

    Distributed: launch this command unchanged with `torchrun --nproc_per_node N -m vlm3.cli train ...`
    or `accelerate launch [--config_file configs/accelerate/fsdp-hybrid.yaml] -m vlm3.cli train ...`.
    """
    import os
    from pathlib import Path

    from vlm3.train.config import ConfigError, load_config

    def fail(message: str) -> typer.Exit:
        typer.echo(f"error: {message}", err=True)
        return typer.Exit(2)

    try:
        cfg = load_config(config, set_)
    except ConfigError as e:
        raise fail(str(e)) from None
    out = Path(cfg.train.output_dir)
    if not resume and any(p.is_dir() for p in out.glob("checkpoint-*")):
        # Mixing a new run's checkpoints with an old run's would make a later resume pick the wrong one.
        raise fail(
            f"--no-resume: {out} already holds checkpoints of an earlier run; "
            "set another train.output_dir (--set train.output_dir=...) or remove them"
        )

    from vlm3.train.sft import train

    try:
        result = train(cfg, resume=resume)
    except ConfigError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        typer.echo(f"interrupted: re-run the same command to resume from the last checkpoint in {out}", err=True)
        raise typer.Exit(130) from None
    if int(os.environ.get("RANK", "0")) == 0:
        resumed = f", resumed from {result.resumed_from}" if result.resumed_from else ""
        typer.echo(f"trained {result.global_step} steps in {result.train_seconds:.0f} s{resumed}")
        typer.echo(f"final model: {result.final_dir.resolve()}")


# --- eval: run a model on a bench, save predictions, write metrics and a report (vlm3.eval) ---


@app.command("eval")
def eval_command(
    model: str = typer.Option(..., "--model", help="Checkpoint folder / hub id, http://host:port (OpenAI-compatible) or vllm:PATH."),
    bench: str = typer.Option(..., "--bench", help="Bench config YAML, or a name in configs/bench (e.g. ibims1)."),
    out: str = typer.Option(..., "--out", help="Output folder: predictions.jsonl, metrics.json, report.md, plots/."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Local: questions per forward batch; HTTP: requests in flight."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate the first N records of the bench's sample list."),
    limit_points: int | None = typer.Option(None, "--limit-points", min=1, help="Ask the first N listed labels of each record."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Answer length cap (default: bench, else per task)."),
    meta: str | None = typer.Option(None, "--meta", help="Read sample settings from this checkpoint folder / vlm3.json (e.g. for HTTP models)."),
    cache: str | None = typer.Option(None, "--cache", help="Where bench data is prepared (default: .vlm3-bench-cache next to --out)."),
    device: str = typer.Option("cpu", "--device", help="torch device of a local model."),
    dtype: str | None = typer.Option(None, "--dtype", help="Local model dtype: float32, bfloat16, float16 or auto."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard predictions already in --out instead of resuming."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the figures."),
) -> None:
    """Evaluate a model on a bench; resumable (re-run the same command to continue)."""
    from rich.console import Console

    from vlm3.eval.bench import BenchError
    from vlm3.eval.report import HEADLINE
    from vlm3.eval.run import EvalError, run_eval

    err = Console(stderr=True)
    try:
        result = run_eval(
            model, bench, out, batch_size=batch_size, limit=limit, limit_points=limit_points, max_new_tokens=max_new_tokens,
            meta=meta, cache_dir=cache, overwrite=overwrite, device=device, dtype=dtype, plots=not no_plots,
        )
    except KeyboardInterrupt:
        err.print(f"interrupted: answers so far are kept in {out}/predictions.jsonl; re-run the same command to continue", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except (BenchError, EvalError, ValueError, OSError, RuntimeError) as e:  # bad input, data or backend: one line
        err.print(f"Error: {e}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    m = result.metrics["metrics"]
    key = HEADLINE[result.metrics["task"]]
    value = m.get(key)
    shown = f"{value:.4f}" if isinstance(value, float) else str(value)
    typer.echo(f"{result.metrics['bench']['name']}: {key} = {shown} (n={m.get('n')}, parsed={m.get('parsed')}, failed={m.get('failed')}); "
               f"{result.n_queries - result.n_cached} asked, {result.n_cached} reused; report: {result.out / 'report.md'}")


# --- demo: the whole recipe on a CPU in minutes (vlm3.demo) ----------------------------------


@app.command("demo")
def demo_command(
    out: str = typer.Option("demo_out", "--out", help="Folder for data, runs and the report."),
    quick: bool = typer.Option(False, "--quick", help="About two minutes: a smoke test of every stage, not of accuracy."),
    seed: int = typer.Option(0, "--seed", help="Fixes data, training and evaluation (re-runs reproduce the numbers)."),
    model: str | None = typer.Option(None, "--model", help="A pretrained VLM (folder or hub id) instead of a tiny random one; wants a GPU."),
) -> None:
    """Train and evaluate tiny VLMs with and without the recipe; write OUT/report.md and report.html."""
    from pathlib import Path

    from vlm3.demo.run import DemoConfig, run_demo

    cfg = DemoConfig.quick(out=Path(out), seed=seed, model=model) if quick else DemoConfig(out=Path(out), seed=seed, model=model)
    try:
        run_demo(cfg)
    except (ValueError, OSError) as e:  # bad --model, unreadable data, config errors: one line, no traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"report: {Path(out) / 'report.md'} and {Path(out) / 'report.html'}")


# --- predict: depth / pose / matches / object answers for your own images (vlm3.eval.predict) --

predict_app = typer.Typer(
    help="Ask a model about your own images (outputs in the original image's pixels and camera frame).",
    no_args_is_help=True,
)
app.add_typer(predict_app, name="predict")

_MODEL = typer.Option(..., "--model", help="Checkpoint folder / hub id, http://host:port or vllm:PATH.")
_FX = typer.Option(None, "--fx", help="Focal length in pixels (x) of the image (required unless --estimate-intrinsics).")
_FY = typer.Option(None, "--fy", help="Focal length in pixels (y); default fx.")
_CX = typer.Option(None, "--cx", help="Principal point x, OpenCV convention (top-left pixel centre = 0); default the image centre.")
_CY = typer.Option(None, "--cy", help="Principal point y, OpenCV convention; default the image centre.")
_ESTIMATE = typer.Option(False, "--estimate-intrinsics", help="No calibration: guess a 60 degree horizontal field of view (see --hfov).")
_HFOV = typer.Option(60.0, "--hfov", help="Horizontal field of view in degrees guessed by --estimate-intrinsics.")
_META = typer.Option(None, "--meta", help="Read sample settings from this checkpoint folder / vlm3.json.")
_FOCAL = typer.Option(None, "--focal", help="Unified focal length in pixels (default: the model's vlm3.json, else 1000).")
_NCOORDS = typer.Option(None, "--n-coords", help="Text coordinate range N (default: the model's, else 2000).")
_BATCH = typer.Option(None, "--batch-size", min=1, help="Local: questions per batch; HTTP: requests in flight.")
_DEVICE = typer.Option("cpu", "--device", help="torch device of a local model.")


def _predict_fail(err, e: Exception) -> None:
    err.print(f"Error: {e}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(1)


def _predict_warn_estimate(err, K, hfov: float) -> None:
    err.print(
        f"warning: intrinsics guessed, not calibrated: fx = fy = {K.fx:.1f} px ({hfov:g} degree horizontal field of view), "
        "principal point at the image centre. Metric outputs (depths, distances, point clouds) scale with this guess.",
        highlight=False, markup=False, soft_wrap=True,
    )


def _predict_warn_processor(err, note) -> None:
    for im in (note or {}).get("images", []):
        if im["resized"]:
            err.print(f"warning: {im['note']}", highlight=False, markup=False, soft_wrap=True)


@predict_app.command("depth")
def predict_depth_command(
    image: str = typer.Argument(..., help="Image file."),
    model: str = _MODEL,
    out: str = typer.Option(..., "--out", help="Output folder: points.json, points.ply, depth_map.png (grids)."),
    points: list[str] = typer.Option([], "--points", help="Pixels x,y (column,row; integer = pixel centre); repeat or space-separate."),
    grid: int | None = typer.Option(None, "--grid", min=1, help="Ask every STRIDE pixels: a depth map and a point cloud."),
    fx: float | None = _FX, fy: float | None = _FY, cx: float | None = _CX, cy: float | None = _CY,
    estimate_intrinsics: bool = _ESTIMATE, hfov: float = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL, n_coords: int | None = _NCOORDS,
    depth_type: str | None = typer.Option(None, "--depth-type", help="What the model answers: range or z (default: the model's, else range)."),
    batch_size: int | None = _BATCH,
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    device: str = _DEVICE,
) -> None:
    """Metric depth at pixels or on a grid, with a depth map and a coloured point cloud."""
    from rich.console import Console
    from rich.progress import Progress

    from vlm3.eval import predict as P

    err = Console(stderr=True)
    try:
        img = P.load_image(image)
        K, estimated = P.resolve_cli_intrinsics(img.shape[1], img.shape[0], fx, fy, cx, cy, estimate=estimate_intrinsics, hfov_deg=hfov)
        pts = P.from_cli_pixels(P.parse_cli_points(points)) if points else None
        if pts is None and grid is None:
            raise ValueError("nothing to ask: give --points x,y ... or --grid STRIDE")
        if pts is not None and grid is not None:
            raise ValueError("give --points or --grid, not both")
        if depth_type not in (None, "range", "z"):
            raise ValueError(f"--depth-type {depth_type!r} must be range or z")
        if estimated:
            _predict_warn_estimate(err, K, hfov)
        backend, settings, source = P.open_for_predict(model, "depth", meta=meta, batch_size=batch_size, device=device, focal=focal, n_coords=n_coords, depth_type=depth_type)
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task("depth", total=None)
            pred = P.predict_depth(backend, img, K, points=pts, grid=grid, settings=settings, max_new_tokens=max_new_tokens,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
        _predict_warn_processor(err, pred.processor)
        paths = P.write_depth_outputs(pred, img, out, {"image": str(image), "model": model, "settings_from": source, "intrinsics_estimated": estimated})
    except (ValueError, OSError, RuntimeError) as e:  # reported as one line, no traceback
        _predict_fail(err, e)
    typer.echo(f"{int(pred.valid.sum())} of {len(pred.depth)} depths parsed ({pred.depth_type}, metres); wrote " + ", ".join(str(p) for p in paths.values()))


def _pair_intrinsics(err, a, b, k1: tuple, k2: tuple, estimate: bool, hfov: float):
    """Intrinsics of both images from the CLI flags; image 2 defaults to image 1's focal lengths."""
    from vlm3.eval import predict as P

    fx, fy, cx, cy = k1
    fx2, fy2, cx2, cy2 = k2
    K1, estimated = P.resolve_cli_intrinsics(a.shape[1], a.shape[0], fx, fy, cx, cy, estimate=estimate, hfov_deg=hfov)
    if fx2 is None and not estimated:
        fx2, fy2 = fx, (fy if fy2 is None else fy2)
    K2, _ = P.resolve_cli_intrinsics(b.shape[1], b.shape[0], fx2, fy2, cx2, cy2, estimate=estimate, hfov_deg=hfov, which="2")
    if estimated:
        _predict_warn_estimate(err, K1, hfov)
    return K1, K2, estimated


@predict_app.command("pose")
def predict_pose_command(
    image1: str = typer.Argument(..., help="First image (camera 1)."),
    image2: str = typer.Argument(..., help="Second image (camera 2)."),
    model: str = _MODEL,
    out: str | None = typer.Option(None, "--out", help="Also write pose.json into this folder."),
    fx: float | None = _FX, fy: float | None = _FY, cx: float | None = _CX, cy: float | None = _CY,
    fx2: float | None = typer.Option(None, "--fx2", help="Image 2's focal length if it differs (then --fy2/--cx2/--cy2 too)."),
    fy2: float | None = typer.Option(None, "--fy2"), cx2: float | None = typer.Option(None, "--cx2"), cy2: float | None = typer.Option(None, "--cy2"),
    estimate_intrinsics: bool = _ESTIMATE, hfov: float = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL,
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", min=1),
    device: str = _DEVICE,
) -> None:
    """Relative camera pose T_cam2_from_cam1: R, t, yaw/pitch/roll, distance."""
    import json
    from pathlib import Path

    from rich.console import Console

    from vlm3.eval import predict as P

    err = Console(stderr=True)
    try:
        a, b = P.load_image(image1), P.load_image(image2)
        K1, K2, estimated = _pair_intrinsics(err, a, b, (fx, fy, cx, cy), (fx2, fy2, cx2, cy2), estimate_intrinsics, hfov)
        backend, settings, source = P.open_for_predict(model, "pose", meta=meta, device=device, focal=focal)
        result = P.predict_pose(backend, a, b, K1, K2, settings, max_new_tokens=max_new_tokens)
        _predict_warn_processor(err, result.processor)
        doc = {"image1": image1, "image2": image2, "model": model, "intrinsics_estimated": estimated, **result.to_dict()}
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "pose.json").write_text(json.dumps(doc, indent=1) + "\n")
    except (ValueError, OSError, RuntimeError) as e:
        _predict_fail(err, e)
    typer.echo(json.dumps(doc, indent=1))
    if not result.parsed:
        err.print("warning: the answer did not parse as a pose (see raw)", highlight=False, markup=False)


@predict_app.command("match")
def predict_match_command(
    image1: str = typer.Argument(..., help="First image (query pixels)."),
    image2: str = typer.Argument(..., help="Second image."),
    model: str = _MODEL,
    points: list[str] = typer.Option(..., "--points", help="Pixels x,y of image 1 (integer = pixel centre); repeat or space-separate."),
    out: str = typer.Option(..., "--out", help="Output folder: matches.json, matches.png."),
    fx: float | None = _FX, fy: float | None = _FY, cx: float | None = _CX, cy: float | None = _CY,
    fx2: float | None = typer.Option(None, "--fx2", help="Image 2's focal length if it differs."),
    fy2: float | None = typer.Option(None, "--fy2"), cx2: float | None = typer.Option(None, "--cx2"), cy2: float | None = typer.Option(None, "--cy2"),
    estimate_intrinsics: bool = _ESTIMATE, hfov: float = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL, n_coords: int | None = _NCOORDS,
    batch_size: int | None = _BATCH,
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    device: str = _DEVICE,
) -> None:
    """Pixel correspondences: where each point of image 1 appears in image 2."""
    import json
    from pathlib import Path

    from rich.console import Console

    from vlm3.eval import predict as P

    err = Console(stderr=True)
    try:
        a, b = P.load_image(image1), P.load_image(image2)
        K1, K2, estimated = _pair_intrinsics(err, a, b, (fx, fy, cx, cy), (fx2, fy2, cx2, cy2), estimate_intrinsics, hfov)
        pts = P.from_cli_pixels(P.parse_cli_points(points))
        backend, settings, source = P.open_for_predict(model, "correspondence", meta=meta, batch_size=batch_size, device=device, focal=focal, n_coords=n_coords)
        pred = P.predict_match(backend, a, b, pts, K1, K2, settings, max_new_tokens=max_new_tokens)
        _predict_warn_processor(err, pred.processor)
        p1, p2 = P.to_cli_pixels(pred.uv1), P.to_cli_pixels(pred.uv2)
        doc = {
            "image1": image1, "image2": image2, "model": model, "intrinsics_estimated": estimated,
            "pixel_convention": "x = column, y = row in pixels of each original image; integer (x, y) is the centre of that pixel (OpenCV)",
            "matches": [{"x1": float(p[0]), "y1": float(p[1]), "x2": None if not ok else float(q[0]), "y2": None if not ok else float(q[1]), "raw": r, "parsed": bool(ok)}
                        for p, q, r, ok in zip(p1, p2, pred.raw, pred.parsed)],
        }
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "matches.json").write_text(json.dumps(doc, indent=1) + "\n")
        P.plot_matches(pred, a, b, Path(out) / "matches.png")
    except (ValueError, OSError, RuntimeError) as e:
        _predict_fail(err, e)
    typer.echo(f"{int(pred.parsed.sum())} of {len(pred.uv1)} matches parsed; wrote {Path(out) / 'matches.json'}, {Path(out) / 'matches.png'}")


@predict_app.command("object")
def predict_object_command(
    image: str = typer.Argument(..., help="Image file."),
    model: str = _MODEL,
    box: list[str] = typer.Option(..., "--box", help="x_min,y_min,x_max,y_max in pixels; repeat (A, B, ... in order)."),
    question: str | None = typer.Option(None, "--question", help="Free question naming the boxes {A}, {B}, ..."),
    ask: str | None = typer.Option(None, "--ask", help="A predicate (above, left, big, ...) or quantity (direct_distance, width, direction, ...)."),
    kind: str | None = typer.Option(None, "--kind", help="Parse a --question answer as qualitative, quantitative or direction."),
    out: str | None = typer.Option(None, "--out", help="Also write answers.json into this folder."),
    fx: float | None = _FX, fy: float | None = _FY, cx: float | None = _CX, cy: float | None = _CY,
    estimate_intrinsics: bool = _ESTIMATE, hfov: float = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL, n_coords: int | None = _NCOORDS,
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    device: str = _DEVICE,
) -> None:
    """Object-level 3D questions about boxed regions (relations, distances, sizes, directions)."""
    import json
    from pathlib import Path

    from rich.console import Console

    from vlm3.eval import predict as P

    err = Console(stderr=True)
    try:
        img = P.load_image(image)
        K, estimated = P.resolve_cli_intrinsics(img.shape[1], img.shape[0], fx, fy, cx, cy, estimate=estimate_intrinsics, hfov_deg=hfov)
        boxes = [P.parse_cli_box(b) for b in box]
        if (question is None) == (ask is None):
            raise ValueError("give exactly one of --question TEXT or --ask PREDICATE")
        if ask is not None:
            P.ask_kind(ask)
        if estimated:
            _predict_warn_estimate(err, K, hfov)
        corner = [tuple(float(v) + 0.5 for v in b) for b in boxes]
        backend, settings, source = P.open_for_predict(model, "object", meta=meta, device=device, focal=focal, n_coords=n_coords)
        answers = P.predict_object(backend, img, K, corner, question=question, ask=ask, kind=kind, settings=settings, max_new_tokens=max_new_tokens)
        doc = {
            "image": image, "model": model, "intrinsics_estimated": estimated,
            "boxes": [list(b) for b in boxes],
            "answers": [{"question": a.question, "raw": a.raw, "kind": a.kind, "value": a.value, "boxes": [chr(ord("A") + i) for i in a.boxes]} for a in answers],
        }
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "answers.json").write_text(json.dumps(doc, indent=1) + "\n")
    except (ValueError, OSError, RuntimeError) as e:
        _predict_fail(err, e)
    typer.echo(json.dumps(doc, indent=1))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
