"""``vlm3 train`` under the stock launchers and across a hard kill.

- Two gloo processes (``torchrun`` and ``accelerate launch``, the command unchanged) train, write
  one checkpoint, and read disjoint plan rows that together cover the plan.
- A run killed with SIGKILL after its first checkpoint, then re-run with the same command, resumes
  from that checkpoint and ends bit-identical to an uninterrupted run: same per-step rows, same
  per-step losses, same final weights (CPU, one thread, same seeds). Once per model family:
  transformers 5 saves a Qwen2.5-VL under other key names than the model's own, which a resume
  must map back (``vlm3.train.sft.load_checkpoint_weights``).

Which plan rows a rank trained on is read from the opt-in row log (``VLM3_LOG_ROWS``, see
``vlm3.train.dataset``).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # each test launches multi-process training runs

ROOT = Path(__file__).resolve().parents[1]
BATCH = 2


def read_row_log(folder: str | Path) -> dict[int, list[int]]:
    """Draws logged per rank by ``VLM3_LOG_ROWS`` (``RANK DRAW`` lines), in the order they were built."""
    out: dict[int, list[int]] = {}
    for path in sorted(Path(folder).glob("rows.rank*.txt")):
        for line in path.read_text().splitlines():
            rank, draw = line.split()
            out.setdefault(int(rank), []).append(int(draw))
    return out


SIZE_MULTIPLE = {"qwen2_5_vl": 28, "qwen3_vl": 32}  # patch x merge


def build_setup(root: Path, family: str) -> dict[str, Path]:
    """A tiny model of ``family``, a small depth dataset and a config file using them."""
    from vlm3.data.synth import generate, get_family
    from vlm3.models.tiny import build_tiny_model

    model = build_tiny_model(family, root / "tiny", seed=0)
    data = generate(get_family("fixed_rig"), 8, root / "data", seed=0, tasks=("depth",), progress=False, overwrite=True)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(model), "dtype": "float32", "min_pixels": 1024, "max_pixels": 50176},
        "data": {"task": "depth", "datasets": [{"path": str(data)}], "focal": 140, "size_multiple": SIZE_MULTIPLE[family],
                 "points_per_sample": 3, "depth_type": "z"},
        "train": {"output_dir": str(root / "unused"), "per_device_batch_size": BATCH, "learning_rate": 2e-3,
                  "warmup_ratio": 0.1, "lr_scheduler_type": "cosine", "max_grad_norm": 1.0, "logging_steps": 1},
    }))
    return {"root": root, "config": config}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny Qwen3-VL (the paper's family), a small depth dataset and a config file using them."""
    return build_setup(tmp_path_factory.mktemp("dist"), "qwen3_vl")


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def family_setup(request, setup, tmp_path_factory) -> dict[str, Path]:
    """:func:`setup` for each model family."""
    if request.param == "qwen3_vl":
        return setup
    return build_setup(tmp_path_factory.mktemp(f"dist-{request.param}"), request.param)


def env_with(rows: Path) -> dict[str, str]:
    # One thread per process: deterministic reductions, and two processes fit on two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "VLM3_LOG_ROWS": str(rows)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(config: Path, out: Path, *overrides: str) -> list[str]:
    return ["-m", "vlm3.cli", "train", str(config), "--set", f"train.output_dir={out}", *(a for o in overrides for a in ("--set", o))]


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*"))


# --- two processes -----------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_train_on_disjoint_rows(setup, launcher, tmp_path):
    out, rows = tmp_path / "run", tmp_path / "rows"
    steps = 2
    # Gradient checkpointing as in the paper recipe; DDP runs without searching for unused
    # parameters, so a parameter without a gradient would crash the run.
    args = train_args(setup["config"], out, f"train.max_steps={steps}", f"train.save_steps={steps}", "train.gradient_checkpointing=true")
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "vlm3/configs/accelerate/cpu-2proc.yaml"),
               "--main_process_port", str(free_port()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_with(rows), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("final model:") == 1  # printed by rank 0 only
    assert checkpoints(out) == [f"checkpoint-{steps}"]
    assert json.loads((out / f"checkpoint-{steps}" / "trainer_state.json").read_text())["global_step"] == steps
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "vlm3.json").is_file()

    log = read_row_log(rows)
    assert sorted(log) == [0, 1]
    n_rows = steps * BATCH * 2  # the plan holds exactly the rows the two ranks train on
    for rank, draws in log.items():
        assert len(draws) == steps * BATCH == len(set(draws)), (rank, draws)
    assert not set(log[0]) & set(log[1]), log
    assert set(log[0]) | set(log[1]) == set(range(n_rows))


# --- kill -9 and resume --------------------------------------------------------------------------


def loss_rows(out: Path) -> list[tuple[int, str]]:
    with open(out / "loss.csv", newline="") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def test_kill_and_rerun_resumes_exactly(family_setup, tmp_path):
    setup = family_setup
    steps, save = 12, 4
    overrides = (f"train.max_steps={steps}", f"train.save_steps={save}", "train.save_total_limit=2")
    ref_out, run_out = tmp_path / "reference", tmp_path / "run"
    python = [sys.executable]

    # The uninterrupted reference and the run to be killed, side by side (one thread each).
    reference = subprocess.Popen(
        python + train_args(setup["config"], ref_out, *overrides), env=env_with(tmp_path / "rows-ref"), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    victim = subprocess.Popen(
        python + train_args(setup["config"], run_out, *overrides), env=env_with(tmp_path / "rows-killed"), cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        # Kill as soon as the first checkpoint is complete (the Trainer writes trainer_state.json last),
        # several steps before the end.
        deadline = time.monotonic() + 300
        while not (run_out / f"checkpoint-{save}" / "trainer_state.json").is_file():
            assert victim.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    assert not (run_out / "final").exists(), "the run finished before it was killed"
    stdout, stderr = reference.communicate(timeout=600)
    assert reference.returncode == 0, stderr[-4000:]

    # The same command again.
    resumed = subprocess.run(
        python + train_args(setup["config"], run_out, *overrides), env=env_with(tmp_path / "rows-resumed"), cwd=tmp_path,
        capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    start = int(resumed.stdout.split("resumed from ")[1].split("checkpoint-")[1].split()[0])
    assert start >= save and start % save == 0 and start < steps
    assert f"trained {steps} steps" in resumed.stdout
    assert json.loads((run_out / f"checkpoint-{steps}" / "trainer_state.json").read_text())["global_step"] == steps

    # Data: the resumed run trains exactly the rows the reference trained after the checkpoint,
    # in the same order; the killed run trained the rows before it.
    ref_rows = read_row_log(tmp_path / "rows-ref")[0]
    assert len(ref_rows) == steps * BATCH == len(set(ref_rows))
    assert read_row_log(tmp_path / "rows-resumed")[0] == ref_rows[start * BATCH :]
    # (The killed run may also have built a batch or two after the checkpoint: the loader reads ahead.)
    assert read_row_log(tmp_path / "rows-killed")[0][: start * BATCH] == ref_rows[: start * BATCH]

    # Per-step losses: every step once, identical to the reference.
    assert loss_rows(run_out) == loss_rows(ref_out)
    assert [s for s, _ in loss_rows(run_out)] == list(range(1, steps + 1))

    # Final weights: bit-identical.
    ref_w = load_file(ref_out / "final" / "model.safetensors")
    run_w = load_file(run_out / "final" / "model.safetensors")
    assert ref_w.keys() == run_w.keys()
    differ = [k for k in ref_w if not torch.equal(ref_w[k], run_w[k])]
    assert not differ, f"weights that differ from the uninterrupted run: {differ}"
