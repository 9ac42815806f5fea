"""The ``vlm3`` command line. Each command lives next to the code it drives; this file only wires them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from vlm3.settings import DEFAULT_FOCAL_PX, DEFAULT_N_COORDS
from vlm3.tasks import task_names
from vlm3.threads import THREADS_OPTION, use_threads

if TYPE_CHECKING:
    from pathlib import Path

    from vlm3.eval.run import EvalResult

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


def _synth_family_help() -> str:
    """The ``--family`` help: every registered scene family (``vlm3.data.synth.FAMILIES``)."""
    from vlm3.data.synth import family_names

    return "scene family: " + ", ".join(family_names())


@app.command("synth")
def synth(
    out: str = typer.Option(..., "--out", help="output dataset folder"),
    family: str = typer.Option("fixed_rig", help=_synth_family_help()),
    scenes: int = typer.Option(200, min=1, help="number of scenes (one record each)"),
    seed: int = typer.Option(0, min=0, help="scene i is seeded from (seed, i)"),
    tasks: str = typer.Option(",".join(task_names()), help="comma-separated registered tasks (aliases such as corr work)"),
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
    from vlm3.data.synth import generate, get_family, normalize_tasks, parse_override, parse_size

    try:
        fam = get_family(family)
        overrides: dict = {}
        if focal_range is not None:
            overrides["focal"] = parse_override(fam, f"focal={focal_range}")[1]
        if size is not None:
            overrides.update(parse_size(size))
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


def _score_formats() -> str:
    """Every registered task with its description and the fields of its ``vlm3 score`` lines."""
    from rich.markup import escape

    from vlm3.tasks import get_task

    return "\n\n".join(escape(f"{t.name}: {t.description}. Lines: {t.score_format}") for t in map(get_task, task_names()))


@app.command("score", epilog=_score_formats())
def score_command(
    task: str = typer.Argument(..., help="A registered task (name or alias, e.g. corr); tasks and their line fields below."),
    file: str = typer.Argument(..., help="JSONL file, one prediction/ground-truth pair per line."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    n_coords: int = typer.Option(DEFAULT_N_COORDS, "--n-coords", help="Range N of text coordinates (text answers that name pixels)."),
    pair_order: str | None = typer.Option(
        None, "--pair-order",
        help="pose: the relative transform compared, cam2_from_cam1 (default, T_cam2_from_cam1 as the lines carry it) or cam1_from_cam2 (its inverse: VGGT's evaluation order).",
    ),
) -> None:
    """Score pre-paired predictions of any model, without running one.

    One JSON object per line; a string "pred" is raw model output and goes through the task's parser.
    """
    from vlm3.eval.score import run

    raise typer.Exit(run(task, file, as_json=as_json, n_coords=n_coords, pair_order=pair_order))


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
    focal: float = typer.Option(DEFAULT_FOCAL_PX, "--focal", help="Unified focal length in pixels (with --write-images jpeg or png)."),
    size_multiple: int | None = typer.Option(None, "--size-multiple", help="Round unified image sizes to this multiple."),
    points: int | None = typer.Option(None, "--points", help="Labelled pixels kept per record (default: adapter's)."),
    workers: int = typer.Option(1, "--workers", help="Parallel worker processes."),
    seed: int = typer.Option(0, "--seed", help="Seed of everything sampled."),
    split: str = typer.Option("train", "--split", help="Split written into the records."),
    write_images: str | None = typer.Option(
        None, "--write-images",
        help="How unified images are stored: none (default, cheapest and exact: records keep the source images, unified when "
        "sampled), jpeg[:Q] (unify to --focal, write JPEG of quality Q, default 95, under DST/images: ~2x faster to prepare "
        "than png, ~6x smaller, ~3x faster to read back), or png (the same, lossless, slowest).",
    ),
    materialize: bool = typer.Option(
        False, "--materialize/--no-materialize", help="Same as --write-images png (lossless; jpeg is faster and smaller)."
    ),
    num_shards: int = typer.Option(1, "--num-shards", help="Split the units over this many jobs (e.g. a SLURM array)."),
    shard_index: int = typer.Option(0, "--shard-index", help="Which of the --num-shards jobs this is (0-based)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Adapter option key=value (repeatable)."),
    help_adapter: bool = typer.Option(False, "--help-adapter", help="Show the adapter's expected layout and options."),
    threads: int | None = THREADS_OPTION,
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
        typer.echo(f"{cls.name}: {cls.description}\nlabels: {', '.join(cls.labels) or '-'}\n\n{cls.layout}")
        return
    if root is None or out is None:
        err.print("Error: --root SRC and --out DST are required", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2)
    try:
        opts = PrepareOptions(
            focal=focal, size_multiple=size_multiple, points=points, workers=workers, seed=seed, split=split,
            materialize=materialize, num_shards=num_shards, shard_index=shard_index, options=parse_option_pairs(option),
            write_images=write_images,
        )
        use_threads(threads)
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
    max_image_pixels: int = typer.Option(
        4096 * 4096, "--max-image-pixels", min=1, help="Largest image accepted, width x height (default 16777216 = 4096 x 4096); checked from the header before decoding."
    ),
    max_request_pixels: int = typer.Option(
        4096 * 4096, "--max-request-pixels", min=1, help="Largest total of width x height over a request's images (default 16777216)."
    ),
    max_request_bytes: int = typer.Option(64 * 1024 * 1024, "--max-request-bytes", min=1, help="Largest request body accepted (default 67108864 = 64 MiB); more is 413."),
    max_prompt_tokens: int = typer.Option(
        8192, "--max-prompt-tokens", min=1, help="Longest prompt accepted in tokens, image tokens included (default 8192); more is 400."
    ),
    max_tokens_limit: int = typer.Option(4096, "--max-tokens-limit", min=1, help="Largest max_tokens a request may ask for (default 4096); more is 400."),
    max_batch_tokens: int = typer.Option(
        4096, "--max-batch-tokens", min=1, help="Largest sum of max_tokens over one batch, its decode work (default 4096); a single request always runs."
    ),
    max_queue: int = typer.Option(
        64,
        "--max-queue",
        min=1,
        help=(
            "Chat requests in the server at once: being read, validated, waiting or running (default 64); one more gets 503 with "
            "Retry-After. Bounds what requests hold in memory: max-queue x max(max-request-bytes, 4 x max-request-pixels) "
            "+ 4 x (4 x max-request-bytes + 8 x max-request-pixels) bytes, about 5.9 GB with the defaults."
        ),
    ),
    max_concurrency: int = typer.Option(1, "--max-concurrency", min=1, help="Model batches running at once; others queue (default 1)."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1, help="Queued requests answered together in one batch (default 8)."),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda:0."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto (default: float32 on CPU, else bfloat16)."),
    threads: int | None = THREADS_OPTION,
) -> None:
    """Serve a model over OpenAI-compatible chat completions (greedy decoding)."""
    from vlm3.models.hf import resolve_source
    from vlm3.serve.server import serve

    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        typer.echo(f"warning: serving on {host} without --api-key; anyone who can reach the port can use the model", err=True)
    try:
        resolve_source(model)  # a missing folder is one line at once, before the server starts
        use_threads(threads)
        serve(
            model, host=host, port=port, api_key=api_key, max_image_pixels=max_image_pixels,
            max_request_pixels=max_request_pixels, max_request_bytes=max_request_bytes, max_prompt_tokens=max_prompt_tokens,
            max_tokens_limit=max_tokens_limit, max_batch_tokens=max_batch_tokens, max_queue=max_queue,
            max_concurrency=max_concurrency, max_batch_size=max_batch_size, device=device, dtype=dtype,
        )
    except (ValueError, OSError) as e:  # no such model, not a VLM, corrupt weights: one line, no traceback
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(1) from None


# --- train: supervised fine-tuning with the VLM3 recipe (vlm3.train) -------------------------


@app.command("train")
def train_command(
    config: str = typer.Argument(None, help="Training config YAML (sections model, data, train), e.g. vlm3/configs/tiny-cpu.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Override a field, section.field=value (repeatable), e.g. train.max_steps=100."),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Continue from the newest complete checkpoint in train.output_dir (default)."
    ),
    fields: bool = typer.Option(False, "--fields", help="List every config field with its default and help, then exit."),
    threads: int | None = THREADS_OPTION,
) -> None:
    """Fine-tune a VLM on prepared data. Re-run the same command to resume after an interruption.

    Distributed: launch this command unchanged with `torchrun --nproc_per_node N -m vlm3.cli train ...`
    or `accelerate launch [--config_file vlm3/configs/accelerate/fsdp-hybrid.yaml] -m vlm3.cli train ...`.
    """
    import os
    from pathlib import Path

    from vlm3.train.config import Config, ConfigError, load_config

    def fail(message: str) -> typer.Exit:
        typer.echo(f"error: {message}", err=True)
        return typer.Exit(2)

    if fields:
        from rich.console import Console
        from rich.table import Table

        from vlm3.config import field_rows

        table = Table("field", "default", "help", title="vlm3 train config (set any with --set field=value)")
        for row in field_rows(Config):
            table.add_row(*row)
        Console().print(table)
        return
    if config is None:
        raise fail("give a training config YAML (or --fields to list the config fields)")
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

    use_threads(threads)
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

from vlm3.models.openai_http import HTTP_FLAGS  # noqa: E402 (the --http-* flags' names and help)


@app.command("eval")
def eval_command(
    model: str = typer.Option(
        ..., "--model",
        help="Checkpoint folder / hub id, http://host:port (OpenAI-compatible), vllm:PATH, or ground-truth (answers every question with its ground truth: checks a bench and its data).",
    ),
    bench: str | None = typer.Option(None, "--bench", help="Bench config YAML, or a shipped bench name (`vlm3 bench list`, e.g. ibims1)."),
    suite: str | None = typer.Option(None, "--suite", help="Run every bench of a suite whose data is present (paper-depth, paper-pose, paper-corr, paper-object) and print the paper's table beside."),
    out: str = typer.Option(..., "--out", help="Output folder: predictions.jsonl, metrics.json, report.md, plots/ (a suite: one folder per bench, suite.md)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Local: questions per forward batch (default: chosen from free memory, at most 64); HTTP: requests in flight."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate the first N records of the bench's sample list."),
    limit_points: int | None = typer.Option(None, "--limit-points", min=1, help="Ask the first N listed labels of each record."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Answer length cap (default: bench, else per task)."),
    meta: str | None = typer.Option(None, "--meta", help="Read sample settings from this checkpoint folder / vlm3.json (e.g. for HTTP models)."),
    cache: str | None = typer.Option(None, "--cache", help="Where bench data is prepared (default: .vlm3-bench-cache next to --out)."),
    device: str = typer.Option("cpu", "--device", help="torch device of a local model."),
    dtype: str | None = typer.Option(None, "--dtype", help="Local model dtype: float32, bfloat16, float16 or auto."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard predictions already in --out instead of resuming."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the figures."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="VLM3_API_KEY", help="HTTP models: sent as 'Authorization: Bearer KEY' (env VLM3_API_KEY)."),
    served_model_name: str | None = typer.Option(None, "--served-model-name", help="HTTP models: the model name to request (default: the server's only model)."),
    http_timeout: float | None = typer.Option(None, HTTP_FLAGS["timeout"][0], help=HTTP_FLAGS["timeout"][1]),
    http_retries: int | None = typer.Option(None, HTTP_FLAGS["max_retries"][0], help=HTTP_FLAGS["max_retries"][1]),
    http_total_timeout: float | None = typer.Option(None, HTTP_FLAGS["total_timeout"][0], help=HTTP_FLAGS["total_timeout"][1]),
    http_max_answer_bytes: int | None = typer.Option(None, HTTP_FLAGS["max_answer_bytes"][0], help=HTTP_FLAGS["max_answer_bytes"][1]),
    pair_order: str | None = typer.Option(
        None, "--pair-order",
        help="Pose benches: override scoring.pair_order, cam2_from_cam1 (default) or cam1_from_cam2 (VGGT's evaluation order); cached answers are reused.",
    ),
    profile: str | None = typer.Option(
        None, "--profile",
        help="How to ask a model with no vlm3.json that is not a known checkpoint: vlm3, vlm3-release, depthlm or zero-shot (see vlm3.profiles).",
    ),
    judge: str | None = typer.Option(
        None, "--judge",
        help="Object benches: also score every answer with SpatialRGPT-Bench's official LLM-judge protocol, via this OpenAI-compatible "
        "base URL ('openai' = api.openai.com); metrics.json gets the judge's scores and its agreement with vlm3's rules.",
    ),
    judge_model: str = typer.Option("gpt-4o", "--judge-model", help="The judge's model name at --judge."),
    judge_key_env: str = typer.Option("OPENAI_API_KEY", "--judge-api-key-env", help="Environment variable holding the judge's API key."),
    threads: int | None = THREADS_OPTION,
) -> None:
    """Evaluate a model on a bench; resumable (re-run the same command to continue).

    The model is asked the way it was trained. Its vlm3.json (a checkpoint folder, --meta, or what `vlm3 serve`
    publishes in /v1/models) wins; a released checkpoint (facebook/VLM3-*, facebook/DepthLM) gets its profile;
    otherwise --profile is required. Settings the profile leaves open come from the bench, else the defaults.
    """
    from rich.console import Console

    from vlm3.eval.bench import BenchError
    from vlm3.eval.run import EvalError, EvalResult, run_eval
    from vlm3.models.backend import http_options

    err = Console(stderr=True)
    use_threads(threads)
    if (bench is None) == (suite is None):
        err.print("Error: give exactly one of --bench NAME and --suite NAME (see `vlm3 bench list`)", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2)

    def evaluate(one: object, folder: str | Path) -> EvalResult:
        return run_eval(
            model, one, folder, batch_size=batch_size, limit=limit, limit_points=limit_points, max_new_tokens=max_new_tokens,
            meta=meta, cache_dir=cache, overwrite=overwrite, device=device, dtype=dtype, plots=not no_plots,
            backend_options=http_options(
                model, api_key=api_key, served_model_name=served_model_name, timeout=http_timeout, total_timeout=http_total_timeout,
                max_retries=http_retries, max_answer_bytes=http_max_answer_bytes,
            ),
            pair_order=pair_order,
            profile=profile,
            judge=None if judge is None else {"base_url": None if judge == "openai" else judge, "model": judge_model, "api_key_env": judge_key_env},
        )

    if suite is not None:
        _eval_suite(suite, out, model, evaluate, plots=not no_plots)
        return
    try:
        result = evaluate(bench, out)
    except KeyboardInterrupt:
        err.print(f"interrupted: answers so far are kept in {out}/predictions.jsonl; re-run the same command to continue", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except (BenchError, EvalError, ValueError, OSError, RuntimeError) as e:  # bad input, data or backend: one line
        err.print(f"Error: {e}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    typer.echo(_eval_line(result))


def _eval_line(result: EvalResult) -> str:
    """The one-line summary of an evaluation: headline metric, labels asked / not asked, failures."""
    from vlm3.eval.report import not_asked_text
    from vlm3.tasks import get_task

    m = result.metrics["metrics"]
    key = get_task(result.metrics["task"]).headline
    value = m.get(key)
    shown = f"{value:.4f}" if isinstance(value, float) else str(value)
    judge = result.metrics.get("judge")
    if judge:
        a = judge["agreement"]
        shown += f" (judge {judge['model']}: " + ", ".join(f"{k} {v:.4f}" for k, v in judge["scores"].items() if v is not None) + f"; agrees with the rules on {a['agree']}/{a['judged']})"
    return (f"{result.metrics['bench']['name']}: {key} = {shown} over {m.get('labels', m.get('n'))} labels ({m.get('asked', m.get('n'))} asked, "
            f"{not_asked_text(m)}; parsed={m.get('parsed')}, failed={m.get('failed')}, truncated={m.get('truncated', 0)}); "
            f"{result.metrics['run']['computed']} asked now, {result.n_cached} reused; report: {result.out / 'report.md'}")


def _eval_suite(name: str, out: str, model: str, evaluate, *, plots: bool) -> None:
    """``vlm3 eval --suite``: every member bench whose data is present, then the paper's tables."""
    from rich.console import Console

    from vlm3.eval.bench import BenchError
    from vlm3.eval.run import EvalError
    from vlm3.eval.suite import SuiteError, load_suite, markdown_table, run_suite, table_view

    err = Console(stderr=True)

    def one(bench, folder):
        result = evaluate(bench, folder)
        typer.echo(_eval_line(result))
        return result.metrics

    try:
        suite = load_suite(name)
        result = run_suite(suite, out, one, model=model, plots=plots)
    except KeyboardInterrupt:
        err.print(f"interrupted: answers so far are kept under {out}; re-run the same command to continue", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except (SuiteError, BenchError, EvalError, ValueError, OSError, RuntimeError) as e:
        err.print(f"Error: {e}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if result.missing:
        typer.echo(f"\n{len(result.missing)} of {len(suite.benches)} benches of {suite.name} have no data here (skipped):")
        for bench, (why, get) in result.missing.items():
            typer.echo(f"- {bench}: {why}")
            if get:
                typer.echo("    " + get.rstrip().replace("\n", "\n    "))
    for table in suite.tables:
        view = table_view(table, result.metrics, model)
        typer.echo(f"\n{view.title} ({'higher' if view.higher_is_better else 'lower'} is better; published rows: {suite.source}: {suite.path})")
        typer.echo(markdown_table(view))
    typer.echo(f"\nreport: {result.out / 'suite.md'}")


# --- demo: the whole recipe on a CPU in minutes (vlm3.demo) ----------------------------------


@app.command("demo")
def demo_command(
    out: str = typer.Option("demo_out", "--out", help="Folder for data, runs and the report."),
    quick: bool = typer.Option(False, "--quick", help="About two minutes: a smoke test of every stage, not of accuracy."),
    seed: int = typer.Option(0, "--seed", help="Fixes data, training and evaluation (re-runs reproduce the numbers)."),
    model: str | None = typer.Option(None, "--model", help="A pretrained VLM (folder or hub id) instead of a tiny random one; wants a GPU."),
    threads: int | None = THREADS_OPTION,
) -> None:
    """Train and evaluate tiny VLMs with and without the recipe; write OUT/report.md and report.html."""
    import os
    from pathlib import Path

    from vlm3.demo.run import DEMO_THREADS, DemoConfig, run_demo

    cfg = DemoConfig.quick(out=Path(out), seed=seed, model=model) if quick else DemoConfig(out=Path(out), seed=seed, model=model)
    try:
        pinned = os.environ.get("VLM3_DEMO_NUMERICS") != "native"  # native numerics: no pinned thread count either
        run_demo(cfg, n_threads=use_threads(threads, default=DEMO_THREADS if pinned else None).threads)
    except (ValueError, OSError) as e:  # bad --model, unreadable data, config errors: one line, no traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"report: {Path(out) / 'report.md'} and {Path(out) / 'report.html'}")


# --- predict: depth / pose / matches / object answers for your own images (vlm3.infer) -------

bench_app = typer.Typer(help="The shipped benches and suites.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("list")
def bench_list() -> None:
    """Every shipped bench (task, questions, whether its data is here) and every suite."""
    from rich.console import Console
    from rich.table import Table

    from vlm3.eval.bench import BenchError, bench_names, data_missing, load_bench, read_sample_list
    from vlm3.eval.suite import SuiteError, load_suite, suite_names

    suites = {}
    for name in suite_names():
        try:
            suites[name] = load_suite(name)
        except SuiteError as e:
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(1) from None
    member_of = {b: [s for s, suite in suites.items() if b in suite.benches] for b in bench_names()}
    table = Table(title="benches (vlm3 eval --bench NAME)", title_justify="left")
    for col in ("bench", "task", "questions", "data", "suites", "description"):
        table.add_column(col, overflow="fold", justify="right" if col == "questions" else "left")
    present: set[str] = set()
    for name in bench_names():
        try:
            bench = load_bench(name)
        except BenchError as e:
            table.add_row(name, "?", "?", f"config error: {e}", "", "")
            continue
        if bench.samples_path is not None and bench.samples_path.is_file():
            questions = str(read_sample_list(bench.samples_path).n_queries())
        else:
            questions = f"{bench.questions} (protocol)" if bench.questions else "(from the data)"
        why = data_missing(bench)
        if why is None:
            present.add(name)
        data = "synthetic" if "synth" in bench.data else ("present" if why is None else "missing")
        table.add_row(name, bench.task, questions, data, ", ".join(member_of[name]), bench.description or "")
    Console(width=160).print(table)
    stable = Table(title="suites (vlm3 eval --suite NAME)", title_justify="left")
    for col in ("suite", "task", "benches", "data present", "published rows"):
        stable.add_column(col, overflow="fold")
    for name, suite in suites.items():
        here = [b for b in suite.benches if b in present]
        stable.add_row(name, suite.task, ", ".join(suite.benches), f"{len(here)} of {len(suite.benches)}", suite.source)
    Console(width=160).print(stable)


from vlm3.infer.cli import predict_app  # noqa: E402

app.add_typer(predict_app, name="predict")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
