"""The thread policy (``vlm3.threads``): explicit, environment, command default, free cores; applying and restoring it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.threads import ENV, ThreadChoice, ThreadsError, apply_threads, choose_threads, use_threads


def test_explicit_count_wins():
    assert choose_threads(3, environ={ENV: "5", "OMP_NUM_THREADS": "7"}, cpus=2, load=0.0) == ThreadChoice(3, "--threads")
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ThreadsError, match="--threads"):
            choose_threads(bad, environ={})


def test_environment_variable():
    assert choose_threads(environ={ENV: " 2 ", "OMP_NUM_THREADS": "7"}, cpus=8, load=0.0) == ThreadChoice(2, ENV)
    assert choose_threads(environ={ENV: ""}, cpus=4, load=0.0).source == "free cores"  # empty = unset
    for bad in ("abc", "0", "-1", "1.5", "2 threads"):
        with pytest.raises(ThreadsError, match=f"{ENV}='{bad}' must be a whole number >= 1"):
            choose_threads(environ={ENV: bad})


@pytest.mark.parametrize(
    "cpus, load, expected",
    [(2, 1.07, 1), (2, 0.0, 2), (2, 0.49, 2), (2, 0.5, 2), (2, 1.5, 1), (2, 3.9, 1), (8, 2.6, 5), (4, 9.0, 1)],
)
def test_free_cores_default(cpus, load, expected):
    choice = choose_threads(environ={}, cpus=cpus, load=load)
    assert (choice.threads, choice.source) == (expected, "free cores")
    assert f"{cpus} CPUs - load {load:.2f}" in choice.describe()


def test_default_shares_cores_among_local_ranks_and_respects_omp():
    assert choose_threads(environ={"LOCAL_WORLD_SIZE": "4"}, cpus=8, load=0.0).threads == 2
    assert choose_threads(environ={"LOCAL_WORLD_SIZE": "4"}, cpus=2, load=0.0).threads == 1
    assert choose_threads(environ={"OMP_NUM_THREADS": "3"}, cpus=8, load=0.0) == ThreadChoice(3, "OMP_NUM_THREADS")
    assert choose_threads(environ={"OMP_NUM_THREADS": "4,2"}, cpus=8, load=0.0).threads == 4
    assert choose_threads(environ={"OMP_NUM_THREADS": "many"}, cpus=8, load=1.0) == ThreadChoice(7, "free cores", "8 CPUs - load 1.00")


def test_command_default_beats_omp_but_not_the_user():
    assert choose_threads(default=2, environ={"OMP_NUM_THREADS": "1"}, cpus=8, load=7.0) == ThreadChoice(2, "this command's default")
    assert choose_threads(default=2, environ={ENV: "1"}).threads == 1
    assert choose_threads(4, default=2, environ={}).threads == 4


def test_apply_sets_torch_and_opencv_and_restores():
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    target = 1 if before[0] != 1 else 2
    restore = apply_threads(ThreadChoice(target, "--threads"))
    try:
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (target, target)
    finally:
        restore()
    assert (torch.get_num_threads(), cv2.getNumThreads()) == before


def test_apply_before_torch_loads_does_not_import_it():
    code = (
        "import sys\n"
        "from vlm3.threads import ThreadChoice, apply_threads\n"
        "apply_threads(ThreadChoice(1, 'x'))\n"
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
        "print(torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", ENV)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_use_threads_prints_and_bad_env_is_one_line(capsys, monkeypatch):
    import typer

    monkeypatch.delenv(ENV, raising=False)
    from vlm3.threads import restore_threads

    try:
        assert use_threads(1, echo=True).threads == 1
    finally:
        restore_threads()
    assert capsys.readouterr().err == "threads: 1 thread (--threads)\n"
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(typer.Exit) as info:
        use_threads(None)
    assert info.value.exit_code == 2
    assert capsys.readouterr().err.strip() == f"Error: {ENV}='lots' must be a whole number >= 1 (or unset for the free cores)"


@pytest.mark.parametrize(
    "command", [["train"], ["eval"], ["serve"], ["demo"], ["prepare"], ["predict", "depth"], ["predict", "pose"], ["predict", "correspondence"], ["predict", "corr"], ["predict", "object"]]
)
def test_heavy_commands_take_threads(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--threads" in result.output and "VLM3_THREADS" in result.output


def test_cli_bad_env_value_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(app, ["prepare", "depthlm-jsonl", "--root", str(tmp_path), "--out", str(tmp_path / "out")], env={ENV: "0"})
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{ENV}='0' must be a whole number >= 1" in result.output


def test_demo_pins_the_chosen_count(monkeypatch):
    import torch

    from vlm3.demo.run import DEMO_THREADS, pinned_numerics

    monkeypatch.delenv("VLM3_DEMO_NUMERICS", raising=False)
    before = torch.get_num_threads()
    with pinned_numerics(1) as numerics:
        assert numerics["threads"] == torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == before
    # Without --threads or VLM3_THREADS the demo keeps its pinned 2, whatever OMP_NUM_THREADS says.
    assert choose_threads(default=DEMO_THREADS, environ={"OMP_NUM_THREADS": "1"}).threads == DEMO_THREADS == 2
