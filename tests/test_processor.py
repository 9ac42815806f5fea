"""The processor's own resize: predicted sizes equal the real Qwen-VL processors' output."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessor

from vlm3.geometry.camera import Intrinsics
from vlm3.geometry.unify import unified_intrinsics
from vlm3.models.processor import patch_multiple_of, pixel_budget, resize_report, set_pixel_budget
from vlm3.models.tiny import build_processor

# Sizes around patch multiples, odd sizes, extreme aspect ratios, tiny and large images.
SIZES = [
    (56, 56), (57, 55), (70, 100), (100, 70), (84, 56), (111, 113), (112, 112), (126, 98), (140, 70),
    (150, 150), (160, 120), (223, 225), (224, 224), (300, 200), (320, 240), (42, 42), (14, 14), (20, 600),
    (448, 448), (449, 447), (480, 360), (500, 100), (640, 480), (13, 400), (1000, 750), (1280, 720),
]


def _random_sizes(n: int, seed: int = 0, hi: int = 700) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(w), int(h)) for w, h in rng.integers(8, hi, size=(n, 2)) if max(w, h) / min(w, h) < 100]


@pytest.fixture(scope="module")
def processors() -> dict[str, object]:
    """The tiny processors and image processors with the real checkpoints' default budgets."""
    return {
        "tiny_qwen2_5_vl": build_processor("qwen2_5_vl"),
        "tiny_qwen3_vl": build_processor("qwen3_vl"),
        # Qwen2.5-VL and Qwen3-VL release budgets (pixels): [56^2, 28^2 * 16384] and [256^2, 4096^2].
        "qwen2_5_vl_release": Qwen2VLImageProcessor(patch_size=14, merge_size=2, min_pixels=3136, max_pixels=12845056),
        "qwen3_vl_release": Qwen2VLImageProcessor(patch_size=16, merge_size=2, min_pixels=65536, max_pixels=16777216),
    }


def processor_resize(width: int, height: int, processor) -> tuple[int, int]:
    report = resize_report(width, height, processor)
    return report.new_width, report.new_height


def _processed_size(processor, width: int, height: int) -> tuple[int, int]:
    """(width, height) the real processor produced, from ``image_grid_thw`` x patch size."""
    ip = getattr(processor, "image_processor", processor)
    grid = ip(images=[Image.new("RGB", (width, height))], return_tensors="pt")["image_grid_thw"][0].tolist()
    return grid[2] * ip.patch_size, grid[1] * ip.patch_size


@pytest.mark.parametrize("name", ["tiny_qwen2_5_vl", "tiny_qwen3_vl", "qwen2_5_vl_release", "qwen3_vl_release"])
def test_processor_resize_matches_real_processor(processors, name):
    processor = processors[name]
    sizes = SIZES + _random_sizes(40, seed=len(name))
    for w, h in sizes:
        assert processor_resize(w, h, processor) == _processed_size(processor, w, h), (name, w, h)


def test_patch_multiple_and_budget(processors):
    assert patch_multiple_of(processors["tiny_qwen2_5_vl"]) == 28
    assert patch_multiple_of(processors["tiny_qwen3_vl"]) == 32
    assert pixel_budget(processors["tiny_qwen2_5_vl"]) == (56 * 56, 448 * 448)
    assert pixel_budget(processors["tiny_qwen3_vl"]) == (64 * 64, 448 * 448)
    assert pixel_budget(processors["qwen3_vl_release"]) == (65536, 16777216)


def test_pinned_budget_is_what_the_processor_uses():
    processor = build_processor("qwen3_vl")
    set_pixel_budget(processor, min_pixels=32 * 32, max_pixels=128 * 128)
    assert pixel_budget(processor) == (32 * 32, 128 * 128)
    for w, h in [(448, 448), (300, 200), (40, 40), (1000, 100), (128, 128), (129, 127)]:
        assert processor_resize(w, h, processor) == _processed_size(processor, w, h)
        nw, nh = processor_resize(w, h, processor)
        assert nw * nh <= 128 * 128 and nw % 32 == 0 and nh % 32 == 0
    with pytest.raises(ValueError, match="min_pixels"):
        set_pixel_budget(processor, min_pixels=10_000, max_pixels=100)


def test_resize_report_messages(processors):
    qwen25, qwen3 = processors["tiny_qwen2_5_vl"], processors["tiny_qwen3_vl"]
    assert not resize_report(112, 84, qwen25).resized and not resize_report(128, 96, qwen3).resized
    assert not resize_report(448, 448, qwen25).resized and not resize_report(448, 448, qwen3).resized
    assert resize_report(112, 84, qwen3).resized
    message = resize_report(100, 75, qwen25).describe(140.0)
    assert "100x75 to 112x84" in message and "+12.00%" in message and "140.00 -> 156.80 px" in message
    assert "multiples of 28" in message
    # A patch multiple outside the pixel budget is resized too, and says so.
    assert "outside that budget" in resize_report(28, 28, qwen25).describe()
    assert "outside that budget" in resize_report(560, 448, qwen25).describe()
    report = resize_report(100, 70, qwen25)
    assert (report.new_width, report.new_height) == (112, 56)  # 70 / 28 = 2.5 rounds half to even
    assert report.scale_x == pytest.approx(1.12) and report.scale_y == pytest.approx(0.8)


def test_unified_size_multiple_avoids_the_resize(processors):
    """Focal unification with size_multiple = the patch multiple gives sizes the processor keeps."""
    for name in ("tiny_qwen2_5_vl", "tiny_qwen3_vl"):
        processor = processors[name]
        multiple = patch_multiple_of(processor)
        for fx, w, h in [(500.0, 640, 480), (300.0, 320, 240), (1000.0, 1000, 750)]:
            K = Intrinsics(fx, fx, w / 2, h / 2, w, h)
            U = unified_intrinsics(K, target=140.0, size_multiple=multiple)
            assert not resize_report(U.width, U.height, processor).resized, (name, U)


def test_rejects_non_qwen_processors_and_bad_sizes(processors):
    with pytest.raises(TypeError, match="patch_size"):
        processor_resize(100, 100, object())
    with pytest.raises(ValueError, match="positive"):
        processor_resize(0, 100, processors["tiny_qwen3_vl"])

