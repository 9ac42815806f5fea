"""Shared fixtures: the real-data path and tiny models built once per test session.

Models here are session-scoped: build them once, never modify them in a test (copy the folder or
load a fresh instance to train).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vlm3.paths import data_dir

SHARED_DATA = data_dir()  # $VLM3_DATA, else the checkout's ../shared/data (vlm3.paths)
IBIMS = SHARED_DATA / "ibims1"


@pytest.fixture(scope="session")
def ibims_root() -> Path:
    """The real iBims-1 sample (skips the test when it is absent)."""
    if not (IBIMS / "ibims1_val.jsonl").is_file():
        pytest.skip("iBims-1 sample not present")
    return IBIMS


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny random model of each supported family (seed 0), built once."""
    from vlm3.models.tiny import FAMILIES, build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {family: build_tiny_model(family, root / family, seed=0) for family in FAMILIES}


@pytest.fixture(scope="session")
def answering_model(tmp_path_factory) -> Path:
    """A tiny Qwen2.5-VL whose answers depend on the input (weights redrawn with std 0.1), saved."""
    import torch

    from vlm3.models.hf import load_model_and_processor
    from vlm3.models.tiny import build_tiny_model, redraw_weights

    torch.set_num_threads(1)  # tiny model: extra threads only spin on a shared machine
    folder = build_tiny_model("qwen2_5_vl", tmp_path_factory.mktemp("answering") / "m")
    model, _ = load_model_and_processor(folder)
    redraw_weights(model, std=0.1)
    model.save_pretrained(folder)
    # Asked the vlm3 way (profile only: every other setting comes from the bench under test).
    (folder / "vlm3.json").write_text('{"profile": "vlm3"}\n')
    return folder
