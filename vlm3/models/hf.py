"""Loading a vision-language model and its processor through the transformers Auto classes.

The model class is decided by the checkpoint's ``config.json`` (its ``model_type``), never by the
folder or hub name: a renamed folder or a hub id loads the same class. Everything goes through
``AutoModelForImageTextToText`` and ``AutoProcessor``, the path a released Qwen2.5-VL / Qwen3-VL
checkpoint takes, and the path vlm3's tiny models (``vlm3.models.tiny``) are saved for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

DType = Literal["auto", "float32", "bfloat16", "float16"]

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_model_and_processor(
    name_or_path: str | os.PathLike,
    *,
    dtype: DType = "auto",
    device: str = "cpu",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, processor)`` from a local folder or a hub id.

    Args:
        name_or_path: checkpoint folder (or hub id) holding a vision-language model.
        dtype: ``"auto"`` (the dtype stored in the config), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: torch device for the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        min_pixels, max_pixels: pin the image processor's pixel budget (pixels per image); ``None``
            keeps the checkpoint's. See :mod:`vlm3.models.processor` for why this matters.
        attn_implementation: e.g. ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``; ``None`` lets
            transformers choose.

    Returns:
        The model (in eval mode, on ``device``) and the processor.

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: the checkpoint is not a vision-language model, or an unknown ``dtype``.
        OSError: transformers could not load it (message names the checkpoint).
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm3.models.processor import set_pixel_budget

    source = _resolve(name_or_path)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    config = _load_vlm_config(source)
    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, config=config, **kwargs)
        processor = AutoProcessor.from_pretrained(source)
    except OSError as exc:
        raise OSError(f"could not load the model or processor from {source!r}: {exc}") from exc
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ValueError(
            f"{source!r} has no multimodal processor (AutoProcessor gave {type(processor).__name__}); "
            "a vision-language checkpoint needs processor/preprocessor config files next to the weights"
        )
    if min_pixels is not None or max_pixels is not None:
        set_pixel_budget(processor, min_pixels, max_pixels)
    model.to(device)
    model.eval()
    return model, processor


def patch_multiple(obj: Any) -> int:
    """Side multiple images are snapped to: vision patch size x spatial merge size, in pixels.

    28 for Qwen2-VL / Qwen2.5-VL, 32 for Qwen3-VL. ``obj`` is a processor, an image processor, a
    model or a config; the value is read from it, not looked up by family name.
    """
    if hasattr(obj, "image_processor") or hasattr(obj, "merge_size"):
        from vlm3.models.processor import patch_multiple_of

        return patch_multiple_of(obj)
    config = getattr(obj, "config", obj)
    vision = getattr(config, "vision_config", None)
    if vision is None:
        raise ValueError(f"{type(obj).__name__} has no vision_config to read the patch size from")
    patch = vision.patch_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return int(patch) * int(vision.spatial_merge_size)


# --- internals ---------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with separators, or starting with
    # ".", "~" or "/", is meant as a local path.
    return (
        name.startswith((".", "~", "/"))
        or "\\" in name
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def _resolve(name_or_path: str | os.PathLike) -> str:
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"model path {str(path)!r} is a file; expected a checkpoint folder")
        if not (path / "config.json").is_file():
            raise ValueError(f"{str(path)!r} is not a transformers checkpoint folder (no config.json)")
        return str(path)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(name):
        raise FileNotFoundError(f"model folder {name!r} does not exist")
    return name  # a hub id


def _load_vlm_config(source: str):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise OSError(f"could not read a model config from {source!r}: {exc}") from exc
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING or getattr(config, "vision_config", None) is None:
        raise ValueError(
            f"{source!r} holds a {config.model_type!r} model, not a vision-language model "
            "(AutoModelForImageTextToText cannot load it)"
        )
    return config
