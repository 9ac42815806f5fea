"""The fast ChatML collator gives exactly TRL's batches (labels on assistant turns only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from vlm3.models.hf import load_model_and_processor
from vlm3.tasks.depth import depth_messages
from vlm3.train.collator import ChatMLCollator, is_chatml


def _examples(rng: np.random.Generator, n: int) -> list[dict]:
    out = []
    for i in range(n):
        w, h = int(rng.choice([56, 84, 112])), int(rng.choice([56, 112]))
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        k = int(rng.integers(1, 5))
        pts = [(int(rng.integers(2000)), int(rng.integers(2000))) for _ in range(k)]
        out.append({"images": [img], "messages": depth_messages(pts, rng.uniform(0.5, 20, k).tolist(), style="short")})
    return out


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_matches_trl_collator(tiny_models, family: str) -> None:
    path = tiny_models[family]
    _, processor = load_model_and_processor(path, dtype="float32")
    assert is_chatml(processor)
    examples = _examples(np.random.default_rng(0), 6)
    ours = ChatMLCollator(processor)(examples)
    trl = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(examples)
    assert set(ours) == set(trl)
    for key in trl:
        assert torch.equal(ours[key], trl[key]), key
    # Only answer tokens (and each turn's end) carry loss.
    n_answers = sum(len(ex["messages"]) // 2 for ex in examples)
    end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert int((ours["labels"] == end).sum()) == n_answers
