"""Tiny Qwen-VL models: built locally, loaded back with plain transformers, tokenizer and template behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlm3.models.hf import load_model_and_processor, patch_multiple
from vlm3.models.tiny import FAMILIES, QWEN_SPECIAL_TOKENS, build_config, build_tiny_model, count_parameters

# Runs in a fresh interpreter that never imports vlm3: the saved folders must stand on their own.
PLAIN_SCRIPT = textwrap.dedent(
    r"""
    import json, sys
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    results = {}
    for folder in sys.argv[1:]:
        model = AutoModelForImageTextToText.from_pretrained(folder)
        processor = AutoProcessor.from_pretrained(folder)
        image = Image.fromarray((np.random.RandomState(0).rand(70, 100, 3) * 255).astype(np.uint8))
        question = "How far is the pixel at (1234, 567) from the camera?"
        messages = [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": "2.35"}]},
        ]
        batch = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
        ids = batch["input_ids"][0].tolist()
        image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        text_start = processor.tokenizer.decode(ids).index("How far")
        with torch.no_grad():
            loss = model(**batch, labels=batch["input_ids"]).loss.item()
        prompt = processor.apply_chat_template(
            messages[:1], tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt"
        )
        out = model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        results[folder] = {
            "model_class": type(model).__name__,
            "processor_class": type(processor).__name__,
            "loss": loss,
            "n_image_tokens": ids.count(image_id),
            "grid": batch["image_grid_thw"][0].tolist(),
            "last_image_token": max(i for i, t in enumerate(ids) if t == image_id),
            "text_before_question": processor.tokenizer.decode(ids)[:text_start],
            "new_tokens": out.shape[1] - prompt["input_ids"].shape[1],
            "vlm3_imported": "vlm3" in sys.modules,
        }
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def built(tiny_models) -> dict[str, Path]:
    return tiny_models


@pytest.fixture(scope="module")
def plain_results(built, tmp_path_factory) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cwd = tmp_path_factory.mktemp("plain")  # not the repository, so vlm3 cannot sneak in from the cwd
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT, *[str(built[f]) for f in FAMILIES]],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {family: results[str(built[family])] for family in FAMILIES}


@pytest.fixture(scope="module")
def processors(built):
    from transformers import AutoProcessor

    return {family: AutoProcessor.from_pretrained(built[family]) for family in FAMILIES}


# --- loading with plain transformers -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_plain_transformers_load_forward_generate(plain_results, family):
    r = plain_results[family]
    expected = {"qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL"}[family]
    assert r["model_class"] == f"{expected}ForConditionalGeneration"
    assert r["processor_class"] == f"{expected}Processor"
    assert np.isfinite(r["loss"]) and r["loss"] > 0
    assert r["new_tokens"] == 4
    assert not r["vlm3_imported"]
    # 100 x 70 px -> 112 x 56 (Qwen2.5: 70 / 28 = 2.5 rounds half to even) or 96 x 64 (Qwen3, multiple 32);
    # 2 x 2 patches per image token.
    assert r["n_image_tokens"] == r["grid"][1] * r["grid"][2] // 4
    assert r["grid"] == {"qwen2_5_vl": [1, 4, 8], "qwen3_vl": [1, 4, 6]}[family]
    # The image comes before the question text.
    assert r["text_before_question"].endswith("<|vision_end|>")


def test_saved_folder_contents(built):
    for family, folder in built.items():
        names = {p.name for p in folder.iterdir()}
        expected = {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"}
        assert expected | {"chat_template.jinja", "generation_config.json"} <= names
        info = json.loads((folder / "vlm3_tiny.json").read_text())
        assert info["family"] == family and info["seed"] == 0


# --- config / tokenizer consistency ------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_config_matches_tokenizer(built, processors, family):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(built[family])
    tok = processors[family].tokenizer
    assert config.model_type == family
    assert config.text_config.vocab_size == len(tok)
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>") == processors[family].image_token_id
    assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert config.text_config.pad_token_id == tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token == "<|im_end|>"
    assert config.text_config.rope_parameters["rope_theta"] >= 1000
    assert patch_multiple(config) == patch_multiple(processors[family]) == {"qwen2_5_vl": 28, "qwen3_vl": 32}[family]
    # Special tokens follow the BPE vocabulary in Qwen's order.
    ids = [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(ids)))


@pytest.mark.parametrize("family", FAMILIES)
def test_digits_are_single_tokens(processors, family):
    tok = processors[family].tokenizer
    for number in ("0", "7", "1999", "2000", "0.85", "-12.345", "+89.6", "1234567890"):
        tokens = tok.tokenize(number)
        assert [t for t in tokens if any(c.isdigit() for c in t)] == [c for c in number if c.isdigit()]
    # Also inside text, after a space or a bracket.
    tokens = tok.tokenize("pixel at (1234, 56) is 12.05 meters")
    assert all(len(t) == 1 for t in tokens if any(c.isdigit() for c in t))


def test_tokenizer_corpus_is_the_registered_tasks_prompts():
    from vlm3.models.tiny import prompt_corpus
    from vlm3.settings import Settings
    from vlm3.tasks import get_task, task_names

    corpus = set(prompt_corpus())
    for name in task_names():
        assert set(get_task(name).prompts(Settings())) <= corpus, name


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_round_trip_and_compact(processors, family):
    tok = processors[family].tokenizer
    prompts = [
        "How far is the pixel at (1234, 567) from the camera? Both x and y are normalized to between [0, 2000).",
        "<think> The point is around 2.35 meters away from the camera. </think>\n\n<answer> 2.35 </answer>",
        "Yaw=+89.6°, Pitch=+2.6°, Roll=+6.1°",
        "The camera moves left, forward, unit vector (-0.69, +0.02, +0.72).",
        "Can you confirm if bounding box region (0, 39, 652, 999) is smaller than bounding box region "
        "(6, 380, 228, 562)?",
        "Ünïcode, tabs\tand  double  spaces, emoji 🙂 — all bytes survive.",
    ]
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == prompt
    # Prompt words are single tokens: the depth question costs about one token per word or digit.
    ids = tok(prompts[0], add_special_tokens=False)["input_ids"]
    assert len(ids) <= 40


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_images_first_and_assistant_mask(processors, family):
    processor = processors[family]
    tok = processor.tokenizer
    image = Image.fromarray(np.zeros((56, 84, 3), dtype=np.uint8))
    answers = ["1.25", "<think> about 3.50 meters </think>\n\n<answer> 3.50 </answer>", "12.00"]
    questions = ["How far is the pixel at (10, 20)?", "How far is the pixel at (30, 40)?", "And (5, 6)?"]
    first = [{"type": "image", "image": image}, {"type": "text", "text": questions[0]}]
    messages = [{"role": "user", "content": first}]
    messages.append({"role": "assistant", "content": [{"type": "text", "text": answers[0]}]})
    for q, a in zip(questions[1:], answers[1:]):
        messages += [
            {"role": "user", "content": [{"type": "text", "text": q}]},
            {"role": "assistant", "content": [{"type": "text", "text": a}]},
        ]
    text = processor.apply_chat_template(messages)
    user = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + questions[0] + "<|im_end|>\n"
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if family == "qwen2_5_vl" else ""
    assert text.startswith(system + user)
    prompt = processor.apply_chat_template(messages[:1], add_generation_prompt=True)
    assert prompt == system + user + "<|im_start|>assistant\n"

    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = np.array(out["input_ids"][0]), np.array(out["assistant_masks"][0])
    assert len(ids) == len(mask)
    # The mask covers exactly each assistant turn's content plus its closing "<|im_end|>\n" (so the
    # model learns to stop), in separate spans, and never an image token.
    spans = np.split(np.flatnonzero(mask), np.flatnonzero(np.diff(np.flatnonzero(mask)) > 1) + 1)
    assert [tok.decode(ids[s]) for s in spans] == [a + "<|im_end|>\n" for a in answers]
    assert not mask[ids == processor.image_token_id].any()
    assert (ids == processor.image_token_id).sum() == 6  # 84 x 56 px -> (96 x 64 or 84 x 56) / patch^2 / 4


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_uses_template_as_is_and_masks_assistant(processors, family):
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_stop_token_trained
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    processor = processors[family]
    assert get_training_chat_template(processor) is None  # already has {% generation %} markers
    assert is_chat_template_stop_token_trained(processor)
    image = Image.fromarray(np.zeros((84, 112, 3), dtype=np.uint8))
    examples = [
        {
            "images": [image],
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Depth at (1, 2)?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "4.20"}]},
                {"role": "user", "content": [{"type": "text", "text": "Depth at (3, 4)?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "0.75"}]},
            ],
        }
        for _ in range(2)
    ]
    batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(examples)
    labels = batch["labels"][0]
    assert processor.tokenizer.decode(labels[labels != -100]) == "4.20<|im_end|>\n0.75<|im_end|>\n"


# --- determinism and sizes ---------------------------------------------------------------------


def test_same_seed_same_weights(built, tmp_path):
    family = "qwen3_vl"
    again = build_tiny_model(family, tmp_path / "again", seed=0)
    other = build_tiny_model(family, tmp_path / "other", seed=1)
    a = load_file(built[family] / "model.safetensors")
    b = load_file(again / "model.safetensors")
    c = load_file(other / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # The tokenizer does not depend on the seed at all.
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        assert (built[family] / name).read_bytes() == (again / name).read_bytes() == (other / name).read_bytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_counts(processors, family):
    from transformers import AutoModelForImageTextToText

    counts = {}
    for size in ("tiny", "small"):
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(build_config(family, processors[family].tokenizer, size))
        counts[size] = count_parameters(model)
    assert 1.5e6 < counts["tiny"] < 3.5e6
    assert 2.5 * counts["tiny"] < counts["small"] < 6 * counts["tiny"]


def test_build_config_rejects_small_rope_theta(processors):
    with pytest.raises(ValueError, match="rope_theta"):
        build_config("qwen2_5_vl", processors["qwen2_5_vl"].tokenizer, rope_theta=10.0)
    with pytest.raises(ValueError, match="family"):
        build_tiny_model("llava", "/nonexistent")


# --- vlm3.models.hf ----------------------------------------------------------------------------


def test_load_model_and_processor(built):
    model, processor = load_model_and_processor(
        built["qwen2_5_vl"], dtype="bfloat16", min_pixels=28 * 28, max_pixels=224 * 224
    )
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert processor.image_processor.size["shortest_edge"] == 28 * 28
    assert processor.image_processor.size["longest_edge"] == 224 * 224
    grid = processor.image_processor(images=[Image.new("RGB", (448, 448))])["image_grid_thw"][0].tolist()
    assert grid == [1, 16, 16]  # 448 px squeezed into the pinned 224 x 224 budget
    model, processor = load_model_and_processor(str(built["qwen3_vl"]))
    assert model.config.model_type == "qwen3_vl" and next(model.parameters()).dtype == torch.float32


def test_load_errors_name_the_path(built, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_model_and_processor(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_model_and_processor("./no_such_model")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_model_and_processor(empty)
    text_only = tmp_path / "text_only"
    text_only.mkdir()
    (text_only / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 10}))
    with pytest.raises(ValueError, match="not a vision-language model"):
        load_model_and_processor(text_only)
    with pytest.raises(ValueError, match="dtype"):
        load_model_and_processor(built["qwen3_vl"], dtype="int8")
