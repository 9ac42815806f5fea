"""LoRA checkpoints work everywhere, vlm3's model card, and which model specs are local paths.

One tiny LoRA run (Qwen3-VL, 3 steps, a checkpoint at step 2) is trained per module the way a
user runs it: from a project folder, with the base model and the output folder given as relative
paths. Its ``final/`` (merged), ``final/adapter`` and ``checkpoint-N`` folders are then loaded,
predicted with and evaluated from other working directories.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.models.hf import AdapterBaseError, adapter_base, is_adapter_folder, looks_like_hub_id, resolve_source
from vlm3.train.config import parse_config

runner = CliRunner()
PATCH_MULTIPLE = 32  # Qwen3-VL


# --- the run ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def depth_data(tmp_path_factory) -> Path:
    from vlm3.data.synth import generate, get_family

    out = tmp_path_factory.mktemp("lora-data") / "fixed_rig"
    return generate(get_family("fixed_rig"), 6, out, seed=0, tasks=("depth",), progress=False, overwrite=True)


@pytest.fixture(scope="module")
def lora_run(tiny_models, depth_data, tmp_path_factory) -> dict:
    """Train LoRA from ``<project>`` with ``model.name_or_path=models/base`` and ``output_dir=runs/lora``."""
    from vlm3.train.sft import train

    project = tmp_path_factory.mktemp("project")
    shutil.copytree(tiny_models["qwen3_vl"], project / "models" / "base")
    cfg = parse_config({
        "model": {"name_or_path": "models/base", "dtype": "float32", "min_pixels": 1024, "max_pixels": 50176,
                  "lora": True, "lora_r": 4},
        "data": {"task": "depth", "datasets": [{"path": str(depth_data)}], "focal": 140, "size_multiple": PATCH_MULTIPLE,
                 "points_per_sample": 3, "depth_type": "z"},
        "train": {"output_dir": "runs/lora", "max_steps": 3, "per_device_batch_size": 4, "learning_rate": 3e-3,
                  "warmup_ratio": 0.0, "lr_scheduler_type": "constant", "max_grad_norm": 1.0, "save_steps": 2,
                  "save_total_limit": None, "logging_steps": 1},
    })
    before = os.getcwd()
    os.chdir(project)
    try:
        result = train(cfg, quiet=True)
    finally:
        os.chdir(before)
    assert result.global_step == 3
    run = project / "runs" / "lora"
    return {"project": project, "cfg": cfg, "run": run, "final": run / "final", "base": project / "models" / "base",
            "result": result}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lora-img") / "im.png"
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_lora_run_writes_a_merged_checkpoint_and_an_adapter_with_an_absolute_base(lora_run):
    final, base = lora_run["final"], lora_run["base"]
    assert lora_run["result"].adapter_dir == Path("runs/lora/final/adapter")
    # final/ is a plain checkpoint: full weights, processor, vlm3.json; no adapter files on top.
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json", "vlm3.json", "README.md"):
        assert (final / name).is_file(), name
    assert not (final / "adapter_config.json").exists() and not is_adapter_folder(final)
    # The adapter, and every intermediate checkpoint's adapter, names its base absolutely.
    for folder in (final / "adapter", lora_run["run"] / "checkpoint-2", lora_run["run"] / "checkpoint-3"):
        assert is_adapter_folder(folder), folder
        recorded = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert recorded == str(base), (folder, recorded)
        assert json.loads((folder / "vlm3.json").read_text())["task"] == "depth"
    assert json.loads((final / "vlm3.json").read_text())["focal"] == 140


# --- merged == adapter + base -------------------------------------------------------------------


def _inputs(processor, image_path: Path) -> dict:
    image = Image.open(image_path).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How far is the point (10, 20)?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=[image], return_tensors="pt")


@torch.no_grad()
def _logits(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits.float()


def test_merged_checkpoint_equals_adapter_on_base(lora_run, image_path, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlm3.models.hf import load_model_and_processor

    final, run = lora_run["final"], lora_run["run"]
    monkeypatch.chdir(tmp_path)  # nothing below depends on the training's working directory
    merged, processor = load_model_and_processor(final)
    inputs = _inputs(processor, image_path)
    got = _logits(merged, inputs)

    # The reference: the base with the adapter applied by peft, not merged (LoRA path at run time).
    base = AutoModelForImageTextToText.from_pretrained(lora_run["base"], dtype=torch.float32).eval()
    plain = _logits(base, inputs)
    unmerged = PeftModel.from_pretrained(base, final / "adapter").eval()
    assert any(".lora_A." in n for n, _ in unmerged.named_parameters())
    want = _logits(unmerged, inputs)
    assert (want - plain).abs().max() > 1e-3, "the adapter changed nothing: the comparison would be vacuous"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    # The adapter folder and the last checkpoint load (base + adapter) to the same model.
    for folder in (final / "adapter", run / "checkpoint-3"):
        model, _ = load_model_and_processor(folder)
        assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
        assert not any(".lora_" in n for n, _ in model.named_parameters()), "adapter left unmerged"
        torch.testing.assert_close(_logits(model, inputs), want, rtol=1e-4, atol=1e-4)
    # An earlier checkpoint is its own (less trained) model.
    early, _ = load_model_and_processor(run / "checkpoint-2")
    assert (_logits(early, inputs) - want).abs().max() > 1e-4


# --- vlm3 predict / vlm3 eval from any working directory ----------------------------------------


def _bench(folder: Path, data: Path) -> Path:
    bench = folder / "bench.yaml"
    bench.write_text(yaml.safe_dump({
        "name": "lora-check", "task": "depth", "data": {"records": str(data)}, "samples": str(folder / "bench.samples.json"),
        "settings": {"focal": 140},
    }))
    return bench


def _vlm3(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "vlm3"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "vlm3.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(command + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _depths(out: Path) -> list:
    return [p["raw"] for p in json.loads((out / "points.json").read_text())["points"]]


def test_cli_predict_and_eval_work_on_the_run_from_an_unrelated_directory(lora_run, depth_data, image_path, tmp_path):
    """The real CLI in a subprocess whose working directory has nothing to do with the run."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    final = str(lora_run["final"])
    predict = _vlm3(["predict", "depth", str(image_path), "--model", final, "--fx", "100", "--points", "10,20 40,30", "--out", "pred"], elsewhere)
    assert predict.returncode == 0, predict.stderr[-3000:]
    points = json.loads((elsewhere / "pred" / "points.json").read_text())
    assert len(points["points"]) == 2

    bench = _bench(tmp_path, depth_data)
    args = ["eval", "--model", final, "--bench", str(bench), "--out", "ev", "--limit", "1", "--limit-points", "2",
            "--max-new-tokens", "6", "--no-plots"]
    evaluated = _vlm3(args, elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((elsewhere / "ev" / "metrics.json").read_text())
    assert metrics["settings"]["focal"] == 140 and metrics["settings"]["profile"] == "vlm3"  # asked from vlm3.json


@pytest.mark.parametrize(
    "where, model",
    [
        ("runs", "lora/final"),  # relative, from inside the run's parent
        ("other", "../runs/lora/final"),  # relative, from a sibling folder
        ("other", "../runs/lora/final/adapter"),  # the adapter alone (base + adapter)
        ("runs/lora", "checkpoint-2"),  # an intermediate LoRA checkpoint
    ],
)
def test_predict_and_eval_accept_relative_paths_adapters_and_checkpoints(lora_run, depth_data, image_path, tmp_path, monkeypatch, where, model):
    cwd = lora_run["project"] / where
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", "depth", str(image_path), "--model", model, "--fx", "100", "--points", "10,20 40,30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(_depths(out)) == 2
    result = runner.invoke(app, ["eval", "--model", model, "--bench", str(_bench(tmp_path, depth_data)), "--out", str(tmp_path / "ev"),
                                 "--limit", "1", "--limit-points", "2", "--max-new-tokens", "6", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["settings"]["focal"] == 140


def test_the_adapter_answers_as_the_merged_checkpoint(lora_run, image_path, tmp_path):
    outs = {}
    for name, folder in (("merged", lora_run["final"]), ("adapter", lora_run["final"] / "adapter")):
        out = tmp_path / name
        result = runner.invoke(app, ["predict", "depth", str(image_path), "--model", str(folder), "--fx", "100",
                                     "--points", "10,20 40,30 70,50", "--out", str(out)])
        assert result.exit_code == 0, result.output
        outs[name] = json.loads((out / "points.json").read_text())["points"]
    assert [p["raw"] for p in outs["merged"]] == [p["raw"] for p in outs["adapter"]]


# --- adapter folders whose base moved ----------------------------------------------------------


def _adapter_copy(lora_run, folder: Path, base: str) -> Path:
    shutil.copytree(lora_run["final"] / "adapter", folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_an_adapter_whose_base_is_missing_is_a_named_error(lora_run, image_path, tmp_path, monkeypatch):
    from vlm3.models.hf import load_model_and_processor

    monkeypatch.chdir(tmp_path)
    gone = Path.cwd() / "moved" / "base"
    adapter = _adapter_copy(lora_run, Path.cwd() / "a1", str(gone))
    with pytest.raises(AdapterBaseError) as err:
        load_model_and_processor(adapter)
    message = str(err.value)
    assert message.startswith(f"{adapter / 'adapter_config.json'}: base_model_name_or_path = {str(gone)!r}: no model folder at {gone}")
    assert "\n" not in message

    relative = _adapter_copy(lora_run, tmp_path / "a2", "no/such/base")
    with pytest.raises(AdapterBaseError, match=re.escape(f"no model folder at {Path.cwd() / 'no/such/base'}, nor next to any folder above")):
        adapter_base(relative)
    # The CLI: one line, exit 1.
    result = runner.invoke(app, ["predict", "depth", str(image_path), "--model", str(adapter), "--fx", "100",
                                 "--points", "1,1", "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "base_model_name_or_path" in result.output and "no model folder at" in result.output


def test_a_relative_base_is_found_from_the_adapter_or_the_working_directory(lora_run, tmp_path, monkeypatch):
    # An adapter saved by an older vlm3 (or by peft directly) records the base as it was given.
    project = lora_run["project"]
    adapter = _adapter_copy(lora_run, project / "runs" / "old" / "final", "models/base")
    monkeypatch.chdir(tmp_path)  # not the project: found next to a folder above the adapter
    assert adapter_base(adapter) == str(project / "models" / "base")
    monkeypatch.chdir(project)  # from the project: found in the working directory
    assert adapter_base(Path("runs/old/final")) == str(project / "models" / "base")
    # A base of the hub form that is no folder anywhere is a hub id.
    hub = _adapter_copy(lora_run, tmp_path / "hub", "Qwen/Qwen3-VL-4B-Instruct")
    monkeypatch.chdir(tmp_path)
    assert adapter_base(hub) == "Qwen/Qwen3-VL-4B-Instruct"


# --- the model card -----------------------------------------------------------------------------


def _front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def test_model_card_names_base_recipe_profile_mixture_and_usage(lora_run, depth_data):
    final, run, cfg = lora_run["final"], lora_run["run"], lora_run["cfg"]
    card = (final / "README.md").read_text()
    assert (run / "README.md").read_text() == card  # the run folder's card is vlm3's, not TRL's
    assert (final / "adapter" / "README.md").read_text() == card
    assert "[None]" not in card and "More Information Needed" not in card

    assert f"Fine-tuned from **`{lora_run['base']}` (given as `models/base` in model.name_or_path)**" in card
    assert "for 3 optimizer steps" in card
    assert "LoRA (r = 4, alpha = 32" in card and "merged into the base weights" in card
    assert f"`{final / 'adapter'}`" in card
    meta = json.loads((final / "vlm3.json").read_text())
    assert f"prompt profile **`vlm3`** (profile hash `{meta['profile_hash']}`)" in card
    for key in ("focal", "depth_type", "n_coords", "prompt_version"):
        value = meta[key] if isinstance(meta[key], str) else json.dumps(meta[key])
        assert f"| {key} | `{value}` |" in card, key
    assert "Policy `size` (data.mixture)" in card
    assert re.search(rf"\| fixed_rig \| 6 \|  \| 1\.0000 \| `{re.escape(str(depth_data))}` \|", card)
    # The full training config, exactly.
    block = re.search(r"```yaml\n(.*?)\n```", card, re.S).group(1)
    assert yaml.safe_load(block) == cfg.to_dict()
    # Usage from anywhere: absolute model folder.
    assert f"vlm3 predict depth IMAGE.jpg --model {final} --fx FOCAL_PX" in card
    assert f"vlm3 eval --model {final} --bench" in card
    front = _front_matter(card)
    assert front["library_name"] == "transformers" and {"vlm3", "depth", "lora"} <= set(front["tags"])
    assert "base_model" not in front  # a local folder is no hub id


def test_model_card_of_a_full_finetune_from_a_hub_model(tmp_path):
    from vlm3.settings import Settings, write_model_settings
    from vlm3.train.card import MixtureRow, model_card

    cfg = parse_config({
        "model": {"name_or_path": "Qwen/Qwen3-VL-4B-Instruct", "freeze_vision": True},
        "data": {"task": "pose", "datasets": [{"path": "/d/a"}, {"path": "/d/b", "weight": 3}], "mixture": "uniform"},
    })
    write_model_settings(tmp_path / "final", "pose", Settings(profile="vlm3"), "sha256:abc")
    rows = [MixtureRow("a", "/d/a", 10, None, 0.25), MixtureRow("b", "/d/b", 20, 3.0, 0.75)]
    card = model_card(cfg, tmp_path / "final", rows, global_step=7, base_model="Qwen/Qwen3-VL-4B-Instruct")
    assert _front_matter(card)["base_model"] == "Qwen/Qwen3-VL-4B-Instruct"
    assert "Fine-tuned from **`Qwen/Qwen3-VL-4B-Instruct`** with `vlm3 train` for 7 optimizer steps" in card
    assert "Method: full fine-tuning with the vision tower frozen." in card
    assert "| a | 10 |  | 0.2500 | `/d/a` |" in card and "| b | 20 | 3 | 0.7500 | `/d/b` |" in card
    assert "Policy `uniform` (data.mixture)" in card
    assert f"vlm3 predict pose IMAGE1.jpg IMAGE2.jpg --model {tmp_path / 'final'}" in card
    assert "profile hash `sha256:abc`" in card


# --- which specs are local paths ----------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["runs/x", "./runs/x", "./x", "../x", "runs/a/b", "~/vlm3-no-such-model-x", "/no/such/model", "myrun/final",
     "myrun/checkpoint-20", "myrun/adapter", "bare-name", "runs/x/"],
)
def test_a_missing_local_path_is_no_model_folder_at_its_absolute_path(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # a local runs/: "runs/x" is a path
    looked_up = []
    monkeypatch.setattr("vlm3.models.hf._check_hub_reachable", looked_up.append)
    with pytest.raises(FileNotFoundError) as err:
        resolve_source(spec)
    absolute = os.path.abspath(os.path.expanduser(spec))
    assert str(err.value).startswith(f"no model folder at {absolute} (model {spec!r}; ")
    assert not looked_up, "a local path was looked up on the hub"
    assert not looks_like_hub_id(spec)


def test_hub_ids_stay_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    looked_up = []
    monkeypatch.setattr("vlm3.models.hf._check_hub_reachable", looked_up.append)
    for spec in ("Qwen/Qwen3-VL-4B-Instruct", "facebook/VLM3-depth", "runs/x"):  # no local runs/ here: runs/x is a hub id
        assert resolve_source(spec) == spec
    assert looked_up == ["Qwen/Qwen3-VL-4B-Instruct", "facebook/VLM3-depth", "runs/x"]


def test_cli_missing_relative_model_folder_is_one_line(image_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    result = runner.invoke(app, ["predict", "depth", str(image_path), "--model", "./runs/x", "--fx", "100", "--points", "1,1",
                                 "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"no model folder at {tmp_path.resolve() / 'runs' / 'x'}" in " ".join(result.output.replace("│", " ").split())
