"""Training: every parameter moves and the loss falls, vision freezing, LoRA, the token budget,
plain-transformers loading of a trained checkpoint, the ``vlm3 train`` CLI's errors and the shipped
paper configs.

One tiny Qwen3-VL and one small synthetic depth dataset are built per module; each training run
is a handful of steps on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.train.config import Config, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
FAMILY = "qwen3_vl"  # the paper's model family
PATCH_MULTIPLE = 32  # Qwen3-VL: patch 16 x merge 2


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_models) -> Path:
    return tiny_models[FAMILY]


@pytest.fixture(scope="module")
def depth_data(tmp_path_factory) -> Path:
    from vlm3.data.synth import generate, get_family

    out = tmp_path_factory.mktemp("data") / "fixed_rig"
    return generate(get_family("fixed_rig"), 6, out, seed=0, tasks=("depth",), progress=False, overwrite=True)


def tiny_config(model: Path, data: Path, out: Path, *overrides: str) -> Config:
    """A few steps of depth SFT on the tiny model: constant high learning rate, no warmup."""
    base = {
        "model": {"name_or_path": str(model), "dtype": "float32", "min_pixels": 1024, "max_pixels": 50176},
        "data": {
            "task": "depth", "datasets": [{"path": str(data)}], "focal": 140, "size_multiple": PATCH_MULTIPLE,
            "points_per_sample": 3, "depth_type": "z",
        },
        "train": {
            "output_dir": str(out), "max_steps": 5, "per_device_batch_size": 4, "learning_rate": 3e-3,
            "warmup_ratio": 0.0, "lr_scheduler_type": "constant", "max_grad_norm": 1.0, "save_steps": 100,
            "logging_steps": 1,
        },
    }
    return parse_config(base, list(overrides))


def fixed_batch(cfg: Config, processor) -> dict:
    """The first plan rows of ``cfg`` collated exactly as the trainer collates them."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlm3.train.dataset import SampleBuilder, dataset_probs, load_datasets, training_dataset

    datasets = load_datasets(cfg.data.datasets, cfg.data.task)
    builder = SampleBuilder(datasets, cfg.data.task, cfg.data.settings(PATCH_MULTIPLE), cfg.data.seed)
    plan = training_dataset(builder, dataset_probs(datasets, cfg.data.mixture), 4)
    collator = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True)
    return collator([plan[i] for i in range(4)])


def load(folder: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()


@torch.no_grad()
def loss_on(model, batch: dict) -> float:
    return float(model(**batch).loss)


def changed_parameters(before, after) -> tuple[list[str], list[str]]:
    """Names of parameters that changed and that stayed bit-identical between two models."""
    new = dict(after.named_parameters())
    changed, same = [], []
    for name, p in before.named_parameters():
        (same if torch.equal(p, new[name]) else changed).append(name)
    return changed, same


def is_vision(name: str) -> bool:
    return ".visual." in f".{name}"


@pytest.fixture(scope="module")
def full_run(tiny_model, depth_data, tmp_path_factory) -> tuple[Config, Path]:
    """A full fine-tuning run (all parameters trainable); its final/ is shared by several tests."""
    from vlm3.train.sft import train

    cfg = tiny_config(tiny_model, depth_data, tmp_path_factory.mktemp("full") / "run")
    result = train(cfg, quiet=True)
    assert result.global_step == 5
    return cfg, result.final_dir


# --- what training does to the weights ---------------------------------------------------------


@pytest.mark.slow
def test_full_finetuning_changes_every_parameter_and_lowers_the_loss(tiny_model, full_run):
    from transformers import AutoProcessor

    cfg, final = full_run
    before, after = load(tiny_model), load(final)
    changed, same = changed_parameters(before, after)
    assert not same, f"parameters that did not change: {same}"
    assert len(changed) == len(list(before.parameters()))

    batch = fixed_batch(cfg, AutoProcessor.from_pretrained(tiny_model))
    assert (batch["labels"] != -100).any() and (batch["labels"] == -100).any()  # answers only
    loss_before, loss_after = loss_on(before, batch), loss_on(after, batch)
    assert loss_after < loss_before - 0.1, (loss_before, loss_after)

    meta = json.loads((final / "vlm3.json").read_text())
    assert meta["task"] == "depth" and meta["focal"] == 140 and meta["size_multiple"] == PATCH_MULTIPLE
    assert meta["profile"] == "vlm3" and meta["profile_hash"].startswith("sha256:")
    card = (final / "README.md").read_text()  # vlm3's model card (tests/test_lora.py checks its content)
    assert f"Fine-tuned from **`{tiny_model}`** with `vlm3 train` for 5 optimizer steps" in card
    assert "Method: full fine-tuning." in card and "[None]" not in (final.parent / "README.md").read_text()


def test_freeze_vision_keeps_the_vision_tower_bit_identical(tiny_model, depth_data, tmp_path):
    from vlm3.train.sft import train

    cfg = tiny_config(tiny_model, depth_data, tmp_path / "run", "model.freeze_vision=true", "train.max_steps=3")
    final = train(cfg, quiet=True).final_dir
    before, after = load(tiny_model), load(final)
    changed, same = changed_parameters(before, after)
    vision_changed = [n for n in changed if is_vision(n)]
    language_same = [n for n in same if not is_vision(n)]
    assert any(is_vision(n) for n in same), "the model has no vision tower parameters to check"
    assert not vision_changed, f"vision parameters that changed: {vision_changed}"
    assert not language_same, f"language-model parameters that did not change: {language_same}"


@pytest.mark.slow
def test_lora_trains_only_adapters_and_loads_with_peft(tiny_model, depth_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoProcessor

    from vlm3.train.sft import train

    cfg = tiny_config(tiny_model, depth_data, tmp_path / "run", "model.lora=true", "model.lora_r=4", "train.max_steps=3")
    adapter = train(cfg, quiet=True).adapter_dir  # final/ holds the merged model (tests/test_lora.py)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()

    base = load(tiny_model)
    reference = {n: p.clone() for n, p in base.named_parameters()}
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    params = dict(peft_model.named_parameters())
    lora = {n: p for n, p in params.items() if ".lora_" in n}
    assert lora, "no LoRA parameters were loaded"
    # lora_B starts at zero: every one of them must have been trained.
    untrained = [n for n, p in lora.items() if ".lora_B." in n and not p.abs().sum() > 0]
    assert not untrained, f"adapter matrices still at their zero init: {untrained}"
    # Everything else is the base model, bit for bit.
    base_params = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in params.items() if ".lora_" not in n}
    moved = [n for n, p in reference.items() if not torch.equal(p, base_params[n])]
    assert not moved, f"base parameters that changed under LoRA: {moved}"

    batch = fixed_batch(cfg, AutoProcessor.from_pretrained(tiny_model))
    assert loss_on(peft_model, batch) < loss_on(load(tiny_model), batch)


# --- token budget ------------------------------------------------------------------------------


def test_max_length_below_a_sample_is_a_clear_error(tiny_model, depth_data, tmp_path):
    from vlm3.train.sft import train

    cfg = tiny_config(tiny_model, depth_data, tmp_path / "run", "train.max_length=40")
    with pytest.raises(ValueError, match=r"train\.max_length = 40") as info:
        train(cfg, quiet=True)
    assert "image tokens" in str(info.value) and "mismatch" not in str(info.value).lower()
    assert not list((tmp_path / "run").glob("checkpoint-*"))  # failed before training


def test_length_guard_refuses_a_long_batch_instead_of_truncating():
    from vlm3.train.sft import LengthGuard

    class Collator:
        max_length = 8  # TRL's collator would truncate to this

        def __call__(self, examples):
            return {"attention_mask": torch.tensor([[1] * 12 + [0] * 3, [1] * 5 + [0] * 10])}

    inner = Collator()
    guard = LengthGuard(inner, 8)
    assert inner.max_length is None  # the stock collator no longer truncates
    with pytest.raises(ValueError, match=r"12 tokens but train\.max_length = 8"):
        guard([{}, {}])
    assert LengthGuard(Collator(), 12)([{}])["attention_mask"].shape == (2, 15)


# --- checkpoints -------------------------------------------------------------------------------


def test_last_checkpoint_skips_a_checkpoint_cut_short_while_saving(tmp_path):
    from vlm3.train.sft import last_checkpoint

    assert last_checkpoint(tmp_path) is None
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-6").mkdir()  # killed before trainer_state.json was written
    (tmp_path / "checkpoint-6" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")


# Resuming restores the weights for every family. transformers 5 saves a Qwen2.5-VL under the hub's
# key names (model.layers.* / visual.*) while the model's own keys are model.language_model.* /
# model.visual.*; Qwen3-VL keys are saved verbatim.
SIZE_MULTIPLE = {"qwen2_5_vl": 28, "qwen3_vl": 32}


def safetensors_of(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_load_checkpoint_weights_restores_every_tensor_in_place(tiny_models, family):
    from vlm3.models.hf import load_model_and_processor
    from vlm3.train.sft import load_checkpoint_weights

    model, _ = load_model_and_processor(tiny_models[family], dtype="float32")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = {n for n, p in model.named_parameters() if ".visual." in f".{n}"}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    params = {n: id(p) for n, p in model.named_parameters()}

    assert load_checkpoint_weights(model, tiny_models[family]) == len(reference)
    assert_same_weights(reference, model.state_dict())
    assert params == {n: id(p) for n, p in model.named_parameters()}  # copied in place: the optimizer's tensors
    assert model.lm_head.weight is model.get_input_embeddings().weight  # still tied
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_rerun_after_the_last_step_keeps_the_checkpoint_weights(tiny_models, depth_data, tmp_path, family):
    """Resuming at max_steps trains nothing: final/ must be the checkpoint's weights, bit for bit."""
    from vlm3.train.sft import train

    overrides = (f"data.size_multiple={SIZE_MULTIPLE[family]}", "train.max_steps=1", "train.save_steps=1", "train.per_device_batch_size=2")
    cfg = tiny_config(tiny_models[family], depth_data, tmp_path / "run", *overrides)
    first = train(cfg, quiet=True)
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert first.global_step == 1 and first.resumed_from is None
    trained = safetensors_of(checkpoint)
    assert_same_weights(trained, safetensors_of(first.final_dir))
    assert any(not torch.equal(v, safetensors_of(tiny_models[family])[k]) for k, v in trained.items())

    again = train(cfg, quiet=True)
    assert again.resumed_from == str(checkpoint) and again.global_step == 1
    assert_same_weights(trained, safetensors_of(again.final_dir))


def test_resuming_from_a_checkpoint_missing_weights_is_a_named_error(tiny_models, depth_data, tmp_path):
    from safetensors.torch import load_file, save_file

    from vlm3.train.sft import CheckpointError, train

    family = "qwen2_5_vl"
    overrides = (f"data.size_multiple={SIZE_MULTIPLE[family]}", "train.max_steps=1", "train.save_steps=1", "train.per_device_batch_size=2")
    out = tmp_path / "run"
    train(tiny_config(tiny_models[family], depth_data, out, *overrides), quiet=True)
    checkpoint = out / "checkpoint-1"
    weights = checkpoint / "model.safetensors"
    saved = load_file(weights)
    gone, renamed = "model.layers.0.mlp.down_proj.weight", "visual.blocks.0.norm1.weight"  # Qwen2.5-VL hub names
    assert gone in saved and renamed in saved

    again = tiny_config(tiny_models[family], depth_data, out, *overrides, "train.max_steps=3")
    tampered = {k: v for k, v in saved.items() if k != gone}
    tampered["visual.blocks.0.norm_1.weight"] = tampered.pop(renamed)
    save_file(tampered, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as info:
        train(again, quiet=True)
    message = str(info.value)
    assert f"cannot resume from {checkpoint}: 2 of " in message and "model tensors were not restored" in message
    assert "model.language_model.layers.0.mlp.down_proj.weight" in message and "model.visual.blocks.0.norm1.weight" in message
    assert "visual.blocks.0.norm_1.weight" in message  # the checkpoint tensor that matches nothing
    assert isinstance(info.value, ConfigError)  # the CLI prints it as a one-line error, exit code 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # refused before training

    # The command line: one line naming the checkpoint, exit code 2.
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(again.model_dump(mode="json")))
    code, output = run_cli(str(config))
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in output
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot resume from {checkpoint}: 2 of ")


# --- a trained checkpoint stands on its own ----------------------------------------------------

# A fresh interpreter that never imports vlm3: the built tiny model and a trained final/ must load
# through plain transformers and generate.
PLAIN_SCRIPT = textwrap.dedent(
    r"""
    import json, sys
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(1)
    out = {}
    for folder in sys.argv[1:]:
        model = AutoModelForImageTextToText.from_pretrained(folder).eval()
        processor = AutoProcessor.from_pretrained(folder)
        image = Image.fromarray((np.random.RandomState(0).rand(96, 128, 3) * 255).astype(np.uint8))
        question = "How far is the pixel at (1234, 567) from the camera? Both x and y are normalized to between [0, 2000)."
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(
            messages, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt"
        )
        ids = model.generate(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        new = ids[0, prompt["input_ids"].shape[1]:]
        out[folder] = {"model_class": type(model).__name__, "new_tokens": len(new), "text": processor.decode(new)}
    out["vlm3_imported"] = any(m == "vlm3" or m.startswith("vlm3.") for m in sys.modules)
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_plain_transformers_loads_and_generates_with_the_trained_model(tiny_model, full_run, tmp_path):
    _, final = full_run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT, str(tiny_model), str(final)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("vlm3_imported") is False
    for folder in (tiny_model, final):
        info = result[str(folder)]
        assert info["model_class"] == "Qwen3VLForConditionalGeneration"
        assert info["new_tokens"] == 6


# --- the CLI ------------------------------------------------------------------------------------


def run_cli(*args: str):
    result = CliRunner().invoke(app, ["train", *args])
    return result.exit_code, result.output


def test_cli_missing_config_file(tmp_path):
    code, output = run_cli(str(tmp_path / "nope.yaml"))
    assert code == 2
    assert output.strip() == f"error: config file {tmp_path / 'nope.yaml'} does not exist"


def test_cli_unknown_field_and_bad_override(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "x"}, "train": {"max_stepz": 3}}))
    code, output = run_cli(str(path))
    assert code == 2
    assert f"{path}: unknown field train.max_stepz = 3" in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1

    path.write_text(yaml.safe_dump({"model": {"name_or_path": "x"}}))
    code, output = run_cli(str(path), "--set", "train.learning_rate=fast")
    assert code == 2 and f"{path}: train.learning_rate = 'fast': Input should be a valid number" in output
    code, output = run_cli(str(path), "--set", "max_steps=3")
    assert code == 2 and "must look like section.field=value" in output


def test_cli_missing_dataset_is_one_line_before_the_model_loads(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tmp_path / "no-model")},
        "data": {"datasets": [{"path": str(tmp_path / "no-data")}]},
        "train": {"output_dir": str(tmp_path / "run")},
    }))
    code, output = run_cli(str(path))
    assert code == 2 and "Traceback" not in output
    assert output.startswith("error: data.datasets[0].path:") and len(output.strip().splitlines()) == 1

    path.write_text(yaml.safe_dump({"data": {"datasets": [{"path": str(tmp_path / "no-data")}]}}))
    code, output = run_cli(str(path), "--set", "data.datasets=[]")
    assert code == 2 and output.startswith("error: data.datasets is empty")


def test_cli_bad_mixture_names_the_field(depth_data, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tmp_path / "no-model")},
        "data": {"datasets": [{"path": str(depth_data)}], "mixture": "bogus"},
        "train": {"output_dir": str(tmp_path / "run")},
    }))
    code, output = run_cli(str(path))
    assert code == 2 and output.startswith("error: data.mixture: policy 'bogus'")
    code, output = run_cli(str(path), "--set", "data.mixture=size")  # now the model is what is missing
    assert code == 2 and output.startswith(f"error: model.name_or_path: no model folder at {tmp_path / 'no-model'}")


def test_cli_no_resume_refuses_a_folder_with_checkpoints(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "x"}, "train": {"output_dir": str(tmp_path / "run")}}))
    (tmp_path / "run" / "checkpoint-10").mkdir(parents=True)
    code, output = run_cli(str(path), "--no-resume")
    assert code == 2 and "--no-resume" in output and "already holds checkpoints" in output


# --- the shipped configs -----------------------------------------------------------------------

# Paper table: learning rate, global batch, GPUs, samples.
PAPER = {
    "depth": (5.5e-5, 1344, 32, 32_000_000),
    "object": (3.5e-4, 640, 32, 1_000_000),
    "correspondence": (2e-5, 2816, 64, 80_000_000),
    "pose": (5e-5, 448, 32, 10_000_000),
}
DEPTH_WEIGHTS = {
    "argoverse2": 0.21, "waymo": 0.04, "nuscenes": 0.01, "scannetpp": 0.01, "taskonomy": 0.51, "hm3d": 0.78,
    "matterport3d": 0.006,
}


@pytest.mark.parametrize("task", sorted(PAPER))
def test_paper_configs_load_and_follow_the_recipe(task):
    cfg = load_config(ROOT / "vlm3" / "configs" / f"qwen3vl-4b-{task}.yaml")
    lr, global_batch, gpus, samples = PAPER[task]
    m, d, t = cfg.model, cfg.data, cfg.train
    assert m.name_or_path == "Qwen/Qwen3-VL-4B-Instruct"
    assert m.attn_implementation == "flash_attention_2" and not m.lora and not m.freeze_vision
    assert t.bf16 and t.gradient_checkpointing
    assert t.learning_rate == lr
    assert t.per_device_batch_size * t.gradient_accumulation_steps * gpus == global_batch
    assert t.max_steps == -(-samples // global_batch)  # the paper's sample budget
    assert (t.warmup_ratio, t.lr_scheduler_type, t.max_grad_norm) == (0.1, "cosine", 0.02)
    assert (d.focal, d.n_coords, d.unify) == (1000, 2000, True)
    assert d.task == task
    assert all(e.path.startswith("data/prepared/") for e in d.datasets)
    text = (ROOT / "vlm3" / "configs" / f"qwen3vl-4b-{task}.yaml").read_text()
    assert f"x {gpus} = {global_batch}" in text  # the batch split is documented
    if task == "depth":
        assert {e.name: e.weight for e in d.datasets} == DEPTH_WEIGHTS and d.points_per_sample == 10


def test_paper_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"qwen3vl-4b-depth\.yaml: train\.learning_rate = 0: Input should be greater than 0$"):
        load_config(ROOT / "vlm3" / "configs" / "qwen3vl-4b-depth.yaml", ["train.learning_rate=0"])
    with pytest.raises(ConfigError, match=r"data\.task = 'bogus': .*unknown task 'bogus'"):
        load_config(ROOT / "vlm3" / "configs" / "qwen3vl-4b-depth.yaml", ["data.task=bogus"])
    with pytest.raises(ConfigError, match=r"data\.datasets\.0\.weight = -1: Input should be greater than or equal to 0"):
        parse_config({"data": {"datasets": [{"path": "x", "weight": -1}]}})
    assert parse_config({"data": {"task": "corr"}}).data.task == "correspondence"  # canonical name
    with pytest.raises(ConfigError, match=r"override 'data\.focal' must look like section\.field=value"):
        parse_config({}, ["data.focal"])


def test_config_helpers_name_the_file_and_field(tmp_path):
    from vlm3.config import apply_overrides, load_yaml_model
    from vlm3.train.config import DataConfig

    data = {"a": {"b": 1}, "c": 2}
    assert apply_overrides(data, ["a.b=[1, 2]", "a.d.e=true", "c=x"]) == {"a": {"b": [1, 2], "d": {"e": True}}, "c": "x"}
    assert data == {"a": {"b": 1}, "c": 2}  # the input is not changed
    for bad in ("novalue", "a..b=1", "=1"):
        with pytest.raises(ConfigError, match="must look like field=value"):
            apply_overrides(data, [bad])
    path = tmp_path / "data.yaml"
    path.write_text("task: corr\nfocal: 700\n")
    assert load_yaml_model(DataConfig, path, ["n_coords=1000"]).settings(32).model_dump(include={"focal", "n_coords", "size_multiple"}) == {
        "focal": 700.0, "n_coords": 1000, "size_multiple": 32}
    with pytest.raises(ConfigError, match=rf"^{path}: focal = -1: Input should be greater than 0$"):
        load_yaml_model(DataConfig, path, ["focal=-1"])
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=rf"^{path}: the top level must be a mapping"):
        load_yaml_model(DataConfig, path)
    path.write_text("a: [1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: invalid YAML"):
        load_yaml_model(DataConfig, path)


def test_fsdp_hybrid_config_is_understood_by_accelerate(monkeypatch):
    """The accelerate config parses, and the FSDP plugin and device mesh it describes can be built."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    path = ROOT / "vlm3" / "configs" / "accelerate" / "fsdp-hybrid.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "vlm3.cli", "train", "x.yaml"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and args.fsdp_version == 2 and args.num_processes == 32
    env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        if key.startswith(("FSDP_", "PARALLELISM_CONFIG_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    for name in plugin.transformer_cls_names_to_wrap:
        assert hasattr(modeling_qwen3_vl, name), f"{name} is not a Qwen3-VL module class"
    assert set(plugin.transformer_cls_names_to_wrap) == set(modeling_qwen3_vl.Qwen3VLPreTrainedModel._no_split_modules)
    mesh = ParallelismConfig()
    assert mesh.dp_replicate_size * mesh.dp_shard_size == args.num_processes  # hybrid: replicate x shard
    assert mesh.dp_replicate_size == args.num_machines and mesh.dp_shard_size == 8


def test_train_fields_lists_every_config_field_with_its_help():
    result = CliRunner().invoke(app, ["train", "--fields"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for line in ("data.focal", "data.n_coords", "train.learning_rate", "model.freeze_vision"):
        assert line in result.output
    assert "unified focal length in pixels" in result.output
    missing = CliRunner().invoke(app, ["train"])
    assert missing.exit_code == 2 and "give a training config YAML" in missing.output
