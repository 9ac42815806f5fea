"""Bad input through the real CLI is one named line, never a traceback.

Config values (finite floats, ranges, malformed YAML overrides), model paths that do not exist
(a named error at once, no hub lookup), truncated weights, ``vlm3 synth --size`` and pose lines
that are not rotations or have no translation direction.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from vlm3.cli import app

runner = CliRunner()


def one_line_error(result, code: int) -> str:
    """The output of a failed command: exit ``code``, no traceback, one line (rich boxes unwrapped)."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return " ".join(result.output.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


@pytest.fixture(scope="module")
def depth_data(tmp_path_factory) -> Path:
    from vlm3.data.synth import generate, get_family

    out = tmp_path_factory.mktemp("data") / "fixed_rig"
    return generate(get_family("fixed_rig", width=(32, 32)), 1, out, seed=0, tasks=("depth",), progress=False, overwrite=True)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "im.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def truncated_model(tiny_models, tmp_path_factory) -> Path:
    """A copy of a tiny model whose model.safetensors is cut in half."""
    folder = tmp_path_factory.mktemp("cut") / "model"
    shutil.copytree(tiny_models["qwen2_5_vl"], folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return folder


# --- config values: finite floats, ranges, malformed YAML ---------------------------------------


@pytest.mark.parametrize(
    "section, overrides, message",
    [
        ({"train": {"learning_rate": float("nan")}}, [], "train.learning_rate = nan: Input should be a finite number"),
        ({}, ["train.learning_rate=nan"], "train.learning_rate = 'nan': Input should be a finite number"),
        ({}, ["train.learning_rate=-.inf"], "train.learning_rate = -inf: Input should be a finite number"),
        ({"train": {"max_steps": 0}}, [], "train.max_steps = 0: Input should be greater than or equal to 1"),
        ({"train": {"max_minutes": -1.0}}, [], "train.max_minutes = -1.0: Input should be greater than 0"),
        ({"train": {"max_grad_norm": float("inf")}}, [], "train.max_grad_norm = inf: Input should be a finite number"),
        ({"data": {"focal": float("inf")}}, [], "data.focal = inf: Input should be a finite number"),
        ({"data": {"datasets": [{"path": "x", "weight": float("nan")}]}}, [], "data.datasets.0.weight = nan: Input should be a finite number"),
        ({"model": {"lora_dropout": float("nan")}}, [], "model.lora_dropout = nan: Input should be a finite number"),
        ({}, ["data.datasets=[{"], "override 'data.datasets=[{': invalid YAML value (while parsing a flow node: expected the node content"),
    ],
)
def test_train_config_values_are_one_named_line(tmp_path, section, overrides, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "x"}, **section}))
    args = [a for item in overrides for a in ("--set", item)]
    result = runner.invoke(app, ["train", str(path), *args])
    output = one_line_error(result, 2)
    assert message in output and len(result.output.strip().splitlines()) == 1, result.output
    assert str(path) in output or "override" in output


def test_malformed_yaml_file_is_one_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: {name_or_path: x\ntrain: [1\n")
    result = runner.invoke(app, ["train", str(path)])
    output = one_line_error(result, 2)
    assert f"{path}: invalid YAML" in output and "line 2" in output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "settings, message",
    [
        ("{focal: .inf}", "settings.focal = inf: Input should be a finite number"),
        ("{focal: .nan}", "settings.focal = nan: Input should be a finite number"),
        ("{n_coords: 0}", "settings.n_coords = 0: Input should be greater than or equal to 2"),
    ],
)
def test_bench_settings_values_are_one_named_line(tmp_path, settings, message):
    bench = tmp_path / "b.yaml"
    bench.write_text(f"name: b\ntask: depth\ndata: {{records: data}}\nsettings: {settings}\n")
    result = runner.invoke(app, ["eval", "--model", str(tmp_path / "m"), "--bench", str(bench), "--out", str(tmp_path / "o"), "--profile", "vlm3"])
    output = one_line_error(result, 1)
    assert f"{bench}: {message}" in output


# --- model paths ---------------------------------------------------------------------------------


def _model_command(command: str, model: str, tmp: Path, data: Path, image: Path) -> tuple[list[str], int]:
    """The CLI args that load ``model`` with ``command`` and the exit code of a bad model."""
    if command == "eval":
        bench = tmp / "b.yaml"
        bench.write_text(f"name: b\ntask: depth\ndata: {{records: {data}}}\nsamples: {tmp / 'b.samples.json'}\nsettings: {{focal: 140}}\n")
        return ["eval", "--model", model, "--bench", str(bench), "--out", str(tmp / "o"), "--profile", "vlm3", "--no-plots"], 1
    if command == "predict":
        return ["predict", "depth", str(image), "--model", model, "--fx", "100", "--points", "10,20", "--out", str(tmp / "p"), "--profile", "vlm3"], 1
    if command == "serve":
        return ["serve", "--model", model], 1
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": model}, "data": {"task": "depth", "datasets": [{"path": str(data)}]}, "train": {"output_dir": str(tmp / "run")}}))
    return ["train", str(cfg)], 2


@pytest.mark.parametrize("command", ["eval", "predict", "serve", "train"])
@pytest.mark.parametrize("model", ["runs/does-not-exist", "./does-not-exist", "does-not-exist", "runs/a/b"])
def test_missing_model_folder_is_named_at_once(command, model, depth_data, image_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # "runs/x" with a local runs/ is a path, never a hub id
    args, code = _model_command(command, model, tmp_path, depth_data, image_path)
    start = time.monotonic()
    result = runner.invoke(app, args)
    output = one_line_error(result, code)
    assert f"no model folder at {os.path.abspath(model)} (model {model!r}; " in output
    assert time.monotonic() - start < 30  # no hub lookups (those retry for ~36 s offline)


@pytest.mark.parametrize(
    "spec, hub",
    [
        ("Qwen/Qwen2.5-VL-3B-Instruct", True),
        ("facebook/VLM3-depth", True),
        ("runs/x", False),  # runs/ exists here
        ("./x", False),
        ("../x", False),
        ("/abs/x", False),
        ("~/x", False),
        ("a/b/c", False),
        ("bare-name", False),
        ("owner/na--me", False),
        ("owner\\name", False),
    ],
)
def test_hub_id_rule(spec, hub, tmp_path, monkeypatch):
    from vlm3.models.hf import looks_like_hub_id, resolve_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr("socket.getaddrinfo", lambda *a, **k: [])  # the hub resolves
    assert looks_like_hub_id(spec) is hub
    if hub:
        assert resolve_source(spec) == spec
    else:
        with pytest.raises(FileNotFoundError, match="no model folder at "):
            resolve_source(spec)


@pytest.mark.parametrize("command", ["eval", "predict", "serve"])
def test_truncated_safetensors_is_named(command, truncated_model, depth_data, image_path, tmp_path):
    args, code = _model_command(command, str(truncated_model), tmp_path, depth_data, image_path)
    output = one_line_error(runner.invoke(app, args), code)
    assert f"weights file '{truncated_model / 'model.safetensors'}' is truncated or corrupt" in output


# --- vlm3 synth --size --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, message",
    [
        ("0x0", "--size '0x0': width and height must be at least 8 px"),
        ("-5x10", "--size '-5x10': width and height must be at least 8 px"),
        ("112x0", "--size '112x0': width and height must be at least 8 px"),
        ("0-0", "--size '0-0': widths must be at least 8 px"),
        ("-3-5", "--size '-3-5': widths must be at least 8 px"),
        ("64-32", "--size '64-32': the width range W1-W2 needs W1 <= W2"),
        ("axb", "--size 'axb': use WxH"),
        ("112x112x3", "--size '112x112x3': use WxH"),
        ("1.5x2", "--size '1.5x2': use WxH"),
    ],
)
def test_synth_size_is_a_usage_error(size, message, tmp_path):
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "d"), "--scenes", "1", f"--size={size}"], env={"COLUMNS": "200"})
    output = one_line_error(result, 2)
    assert message in output
    assert not (tmp_path / "d").exists()


# --- vlm3 score pose ----------------------------------------------------------------------------

I3 = np.eye(3).tolist()


@pytest.mark.parametrize(
    "line, message",
    [
        ({"pred": {"R": (5 * np.eye(3)).tolist(), "t": [0, 0, 1]}, "R_gt": I3, "t_gt": [0, 0, 1]}, '"pred.R" is not a rotation matrix'),
        ({"pred": {"R": I3, "t": [0, 0, 1]}, "R_gt": (5 * np.eye(3)).tolist(), "t_gt": [0, 0, 1]}, '"R_gt" is not a rotation matrix'),
        ({"pred": {"R": I3, "t": [0, 0, 1]}, "R_gt": np.diag([1.0, 1.0, -1.0]).tolist(), "t_gt": [0, 0, 1]}, "det R = -1"),
        ({"pred": {"R": np.diag([1.01, 1.0, 1.0]).tolist(), "t": [0, 0, 1]}, "R_gt": I3, "t_gt": [0, 0, 1]}, "within 0.001"),
        ({"pred": {"R": I3, "t": [0, 0, 1]}, "R_gt": I3, "t_gt": [0, 0, 0]}, '"t_gt" is a zero vector: the translation direction is undefined'),
        ({"pred": None, "R_gt": I3, "t_gt": [0.0, 0.0, 0.0]}, '"t_gt" is a zero vector'),
    ],
)
def test_score_pose_needs_rotations_and_a_translation_direction(line, message, tmp_path):
    good = {"pred": {"R": I3, "t": [0, 0, 1]}, "R_gt": I3, "t_gt": [0, 0, 1]}
    path = tmp_path / "pose.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    result = runner.invoke(app, ["score", "pose", str(path)])
    output = one_line_error(result, 1)
    assert output.startswith(f"error: {path}:2: ") and message in output


def test_score_pose_accepts_rotations_rounded_to_four_decimals(tmp_path):
    from vlm3.geometry.pose import ypr_to_rotation

    R = np.round(ypr_to_rotation(30.0, -5.0, 2.0), 4).tolist()
    path = tmp_path / "pose.jsonl"
    path.write_text(json.dumps({"pred": {"R": R, "t": [0.1, 0, 1]}, "R_gt": R, "t_gt": [0, 0, 2]}) + "\n")
    result = runner.invoke(app, ["score", "pose", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 1


def test_an_unreachable_hub_id_is_named_at_once(monkeypatch):
    """Not local, not cached, and the hub's host does not resolve: an error now, not after retries."""
    import socket

    from vlm3.models.hf import resolve_source

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr("socket.getaddrinfo", no_dns)
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache, and the hub .* cannot be reached"):
        resolve_source("nobody/nothing-here")
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name: "/cache/config.json")
    assert resolve_source("nobody/nothing-here") == "nobody/nothing-here"  # a cached copy needs no network
