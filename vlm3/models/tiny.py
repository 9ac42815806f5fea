"""Tiny vision-language models of the real Qwen-VL architectures, built locally from a config.

A tiny model is a randomly initialised ``Qwen2_5_VLForConditionalGeneration`` or
``Qwen3VLForConditionalGeneration`` (a few million parameters) together with the family's real
processor (``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor``) around a byte-level BPE tokenizer trained
here on vlm3's own prompt vocabulary. The folder written by :func:`build_tiny_model` is an ordinary
transformers checkpoint: ``AutoModelForImageTextToText.from_pretrained(dir)`` and
``AutoProcessor.from_pretrained(dir)`` load it with plain transformers, through exactly the code path
a real Qwen2.5-VL / Qwen3-VL checkpoint takes. Everything in vlm3 (data, training, inference,
evaluation) can therefore be exercised end to end on a CPU without downloading weights.

What mirrors the real checkpoints
---------------------------------
- Model classes, configs and processors are the real ones; only sizes are small.
- Tokenizer: ``Qwen2Tokenizer`` with Qwen's own normaliser (NFC), pre-tokeniser regex (every digit
  is a separate pre-token, hence a single token) and byte-level decoder. transformers rebuilds this
  pipeline from the class when it loads a ``Qwen2Tokenizer``, so training the BPE with the same
  pipeline is what makes the saved and the reloaded tokenizer identical.
- Special tokens in Qwen's order (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ...,
  ``<|vision_start|>``, ``<|vision_end|>``, ``<|vision_pad|>``, ``<|image_pad|>``, ``<|video_pad|>``),
  appended after the BPE vocabulary like in Qwen; Qwen3-VL additionally has ``<think>`` /
  ``</think>`` as plain added tokens. eos = ``<|im_end|>``, pad = ``<|endoftext|>``.
- Chat templates: the family's template (Qwen2.5-VL adds the default system prompt, Qwen3-VL does
  not), images rendered as ``<|vision_start|><|image_pad|><|vision_end|>`` where they occur in the
  content, ``add_generation_prompt``; the assistant turn's content and its closing
  ``<|im_end|>\\n`` are wrapped in ``{% generation %}`` markers (TRL's training-template convention),
  so ``return_assistant_tokens_mask=True`` gives assistant-only loss masks, also for multi-turn chats
  with several packed questions, and TRL's ``assistant_only_loss`` uses the template as it is.

What is chosen for small models
-------------------------------
- rope theta 1000 by default (the real models use 1e6 / 5e6): with theta 10 every rope frequency
  repeats within ~60 tokens and packed questions far from the image cannot attend to it; 1000 keeps
  the lowest frequency's wavelength (~5000 tokens) far beyond the sequence lengths used here.
- The multimodal rope sections are the real ones scaled to head_dim 64 ([8, 12, 12] for Qwen2.5-VL,
  [12, 10, 10] interleaved for Qwen3-VL).
- Word embeddings are tied to the output head (as in Qwen2.5-VL-3B and Qwen3-VL-4B), which keeps
  the vocabulary cheap.
- The image processor's pixel budget is set explicitly for small images (56-448 px): min pixels =
  (2 x patch multiple)^2, max pixels = 448^2, both overridable.

The tokenizer does not depend on ``seed`` (its corpus is fixed), so models built with different
seeds share one tokenizer; the weights depend only on ``seed``.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from vlm3.settings import DEFAULT_N_COORDS

Family = Literal["qwen2_5_vl", "qwen3_vl"]
Size = Literal["tiny", "small"]

FAMILIES: tuple[str, ...] = ("qwen2_5_vl", "qwen3_vl")
SIZES: tuple[str, ...] = ("tiny", "small")

#: Qwen's special tokens in Qwen's order (ids 151643..151656 in the real vocabularies); here they
#: follow the BPE vocabulary with the same relative offsets.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
#: Plain (non-special) added tokens of the Qwen3 vocabulary that vlm3's answers use.
QWEN3_ADDED_TOKENS: tuple[str, ...] = ("<think>", "</think>")

#: Vision patch size per family (pixels); the spatial merge is 2 for both.
PATCH_SIZE: dict[str, int] = {"qwen2_5_vl": 14, "qwen3_vl": 16}
MERGE_SIZE = 2
#: Largest image side the default pixel budget admits without downscaling (a multiple of 28 and 32).
MAX_SIDE = 448

DEFAULT_ROPE_THETA = 1000.0
#: Upper bound of the BPE vocabulary; the corpus runs out of repeated pairs at about 690 entries.
DEFAULT_BPE_VOCAB = 1024


@dataclass(frozen=True)
class TinyArch:
    """Sizes of a tiny model (text decoder and vision encoder)."""

    text_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int


ARCHS: dict[str, TinyArch] = {
    # 2.3M (Qwen2.5-VL) / 2.8M (Qwen3-VL) parameters: text 3 x 192 (3 heads of 64), vision 2 x 128.
    "tiny": TinyArch(3, 192, 3, 3, 64, 512, 2, 128, 2, 256),
    # 7.4M / 9.7M parameters: text 6 x 256 (4 heads of 64, 2 key/value heads), vision 4 x 192.
    "small": TinyArch(6, 256, 4, 2, 64, 768, 4, 192, 3, 384),
}


# --- chat templates ----------------------------------------------------------------------------

# Shared rendering of a message's content: images and videos as vision placeholders where they
# occur in the list (vlm3 puts them first), text verbatim.
_CONTENT = (
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content['type'] == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content['text'] }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
)

# Assistant turns: content and the closing "<|im_end|>\n" inside the generation markers, so the
# model is trained to stop (TRL checks that the end-of-turn token is in the mask).
_TURNS = (
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}" + _CONTENT + "{{- '<|im_end|>\\n' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}" + _CONTENT + "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
)

_COUNTERS = "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
_GENERATION_PROMPT = "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"

CHAT_TEMPLATES: dict[str, str] = {
    # Qwen2.5-VL: a default system prompt when the conversation has none.
    "qwen2_5_vl": _COUNTERS
    + "{%- for message in messages %}"
    + "{%- if loop.first and message['role'] != 'system' %}"
    + "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    + "{%- endif %}"
    + _TURNS
    + "{%- endfor %}"
    + _GENERATION_PROMPT,
    # Qwen3-VL: no default system prompt.
    "qwen3_vl": _COUNTERS + "{%- for message in messages %}" + _TURNS + "{%- endfor %}" + _GENERATION_PROMPT,
}


# --- tokenizer corpus --------------------------------------------------------------------------

#: Every format vlm3 writes numbers in: coordinates, metres, signed degrees and unit vectors.
_NUMBERS = f"(1234, 567) (0, 39, 652, 999) 12.05 meters -0.69 +0.72 +89.6° -12.3° 7 o'clock [0, 1000) [0, {DEFAULT_N_COORDS})"


def prompt_corpus() -> list[str]:
    """The chat scaffolding, numbers in every format and every question and answer template of the
    registered tasks (``Task.prompts`` in each of the task's ``answer_styles``), twice.

    Used only to train the tiny models' BPE merges, so that vlm3's prompts and answers tokenize
    compactly; prompts live only in the task modules. Digits are single pre-tokens, so the values
    of numbers do not change the merges.
    """
    from vlm3.settings import Settings
    from vlm3.tasks import get_task, task_names

    lines = ["Picture 1: Picture 2: Video 1:", "system\nYou are a helpful assistant.\nuser\nassistant\n", _NUMBERS]
    for name in task_names():
        task = get_task(name)
        for style in getattr(task, "answer_styles", ("short",)):
            lines += task.prompts(Settings(answer_style=style))
    return 2 * list(dict.fromkeys(lines))


# --- builders ----------------------------------------------------------------------------------


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def build_tokenizer(family: Family, bpe_vocab_size: int = DEFAULT_BPE_VOCAB):
    """Train the byte-level BPE on :func:`prompt_corpus` and wrap it as the family's ``Qwen2Tokenizer``.

    Returns a ``transformers.Qwen2Tokenizer`` with the family's special and added tokens and chat
    template. Deterministic: same family and ``bpe_vocab_size`` give the same tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    _check_family(family)
    # Same pipeline as Qwen2Tokenizer.__init__ (which transformers re-applies on load).
    bpe = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    bpe.train_from_iterator(prompt_corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]

    # Special tokens are added after the vocabulary, one by one in Qwen's order, so that their ids
    # keep Qwen's relative layout; eos / pad are assigned once they exist.
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        errors="replace",
    )
    specials = [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS]
    tokenizer.add_tokens(specials, special_tokens=True)
    if family == "qwen3_vl":
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_ADDED_TOKENS])
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.extra_special_tokens = [t for t in QWEN_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")]
    tokenizer.chat_template = CHAT_TEMPLATES[family]
    return tokenizer


def default_pixel_budget(family: Family) -> tuple[int, int]:
    """(min_pixels, max_pixels) of the tiny processors: (2 x patch multiple)^2 and 448^2."""
    _check_family(family)
    multiple = PATCH_SIZE[family] * MERGE_SIZE
    return (2 * multiple) ** 2, MAX_SIDE * MAX_SIDE


def build_processor(
    family: Family,
    tokenizer=None,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """The family's real processor around ``tokenizer`` (default: :func:`build_tokenizer`).

    The image processor is ``Qwen2VLImageProcessor`` with the family's patch size, merge 2,
    temporal patch 2 and normalisation (CLIP mean/std for Qwen2.5-VL, 0.5/0.5 for Qwen3-VL), and an
    explicit pixel budget (:func:`default_pixel_budget` unless given). A video processor is always
    attached: the Qwen processors of transformers 5.24 raise a TypeError without one.
    """
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.image_utils import (
        IMAGENET_STANDARD_MEAN,
        IMAGENET_STANDARD_STD,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    _check_family(family)
    lo, hi = default_pixel_budget(family)
    min_pixels = lo if min_pixels is None else int(min_pixels)
    max_pixels = hi if max_pixels is None else int(max_pixels)
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"pixel budget must satisfy 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    tokenizer = build_tokenizer(family) if tokenizer is None else tokenizer
    patch = PATCH_SIZE[family]
    if family == "qwen2_5_vl":
        mean, std = list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)
    else:
        mean, std = list(IMAGENET_STANDARD_MEAN), list(IMAGENET_STANDARD_STD)
    vision = dict(patch_size=patch, merge_size=MERGE_SIZE, temporal_patch_size=2, image_mean=mean, image_std=std)
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, **vision)
    budget = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    if family == "qwen2_5_vl":
        video_processor = Qwen2VLVideoProcessor(size=budget, **vision)
        cls = Qwen2_5_VLProcessor
    else:
        video_processor = Qwen3VLVideoProcessor(size=budget, **vision)
        cls = Qwen3VLProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATES[family],
    )


def build_config(
    family: Family,
    tokenizer,
    size: Size = "tiny",
    *,
    rope_theta: float = DEFAULT_ROPE_THETA,
    max_position_embeddings: int = 4096,
):
    """A ``Qwen2_5_VLConfig`` / ``Qwen3VLConfig`` of the given size whose token ids match ``tokenizer``.

    vocab size = ``len(tokenizer)``; eos = ``<|im_end|>``; bos and pad = ``<|endoftext|>`` (as in the
    real configs; the tokenizer itself adds no bos).
    """
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    _check_family(family)
    if size not in ARCHS:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if not rope_theta >= 1000:
        # With small thetas every rope frequency repeats within a few dozen tokens, and packed
        # questions far from the image cannot attend to it reliably (see the module doc).
        raise ValueError(f"rope_theta must be >= 1000 for tiny models, got {rope_theta}")
    a = ARCHS[size]
    if a.head_dim != 64:
        raise ValueError("the rope sections below assume head_dim 64")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    token_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.text_layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        dtype="float32",
    )
    vision = dict(
        depth=a.vision_depth,
        hidden_size=a.vision_hidden,
        intermediate_size=a.vision_intermediate,
        num_heads=a.vision_heads,
        patch_size=PATCH_SIZE[family],
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=2,
        out_hidden_size=a.hidden,
    )
    if family == "qwen2_5_vl":
        # Real sections [16, 24, 24] for head_dim 128, halved for 64: (temporal, height, width).
        text.update(
            rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta), "mrope_section": [8, 12, 12]},
        )
        # Windowed attention in 112 px windows, the last block global (as every 8th block of the real model).
        vision.update(window_size=112, fullatt_block_indexes=[a.vision_depth - 1], tokens_per_second=2)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **token_ids)
    # Qwen3-VL: interleaved sections, real [24, 20, 20] for head_dim 128, halved for 64.
    text.update(
        head_dim=a.head_dim,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": float(rope_theta),
            "mrope_section": [12, 10, 10],
            "mrope_interleaved": True,
        },
    )
    # Learned position grid 32 x 32 (resampled to each image's grid; 448 px = 28 patches of 16).
    # DeepStack: like the real model's three mergers feeding the first three decoder layers, the
    # outputs of the first vision blocks (all but the last, at most three) are added to the first
    # decoder layers' hidden states.
    deepstack = list(range(min(3, a.vision_depth - 1, a.text_layers)))
    vision.update(hidden_act="gelu_pytorch_tanh", num_position_embeddings=32 * 32, deepstack_visual_indexes=deepstack)
    config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **token_ids)
    return config


def redraw_weights(model, std: float = 0.1, seed: int = 0) -> None:
    """Redraw every weight matrix of ``model`` from N(0, std), in place and deterministically.

    A freshly initialised tiny model (weights ~N(0, 0.02)) answers the same token to every input,
    which would make answer-equality checks vacuous; with std 0.1 its answers depend on the
    question and the image. For tests and benchmarks of the inference machinery, not for training.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def count_parameters(model) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def build_tiny_model(
    family: Family,
    out_dir: str | Path,
    size: Size = "tiny",
    seed: int = 0,
    *,
    rope_theta: float = DEFAULT_ROPE_THETA,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> Path:
    """Build a randomly initialised tiny VLM of the real ``family`` architecture and save it to ``out_dir``.

    Args:
        family: ``"qwen2_5_vl"`` or ``"qwen3_vl"``.
        out_dir: folder to write (created; existing model files are overwritten).
        size: ``"tiny"`` (~2.3M parameters) or ``"small"`` (a few times larger), see :data:`ARCHS`.
        seed: torch seed for the weights; same seed, same weights.
        rope_theta: text rope base (>= 1000).
        min_pixels, max_pixels: the image processor's pixel budget (default: :func:`default_pixel_budget`).

    Returns:
        The folder, loadable with plain transformers: ``AutoModelForImageTextToText.from_pretrained``
        and ``AutoProcessor.from_pretrained``. It also holds ``vlm3_tiny.json`` describing the build.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from vlm3.models.processor import pixel_budget

    _check_family(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor(family, min_pixels=min_pixels, max_pixels=max_pixels)
    tokenizer = processor.tokenizer
    config = build_config(family, tokenizer, size, rope_theta=rope_theta)

    # Initialise under a private RNG state so that building a model neither depends on nor
    # disturbs the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.eval()
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    # Greedy decoding, as in the paper's evaluation.
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=64
    )
    with _quiet_progress_bars():
        model.save_pretrained(out, safe_serialization=True)
        processor.save_pretrained(out)
    n_params = count_parameters(model)
    info = {
        "family": family,
        "size": size,
        "seed": seed,
        "parameters": n_params,
        "rope_theta": float(rope_theta),
        "arch": asdict(ARCHS[size]),
        "vocab_size": len(tokenizer),
        "pixel_budget": list(pixel_budget(processor)),
    }
    (out / "vlm3_tiny.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


@contextmanager
def _quiet_progress_bars():
    """Silence transformers' per-shard progress bar while saving (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()

