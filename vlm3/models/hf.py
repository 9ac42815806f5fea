"""Loading a vision-language model and its processor through the transformers Auto classes.

The model class is decided by the checkpoint's ``config.json`` (its ``model_type``), never by the
folder or hub name: a renamed folder or a hub id loads the same class. Everything goes through
``AutoModelForImageTextToText`` and ``AutoProcessor``, the path a released Qwen2.5-VL / Qwen3-VL
checkpoint takes, and the path vlm3's tiny models (``vlm3.models.tiny``) are saved for.
"""

from __future__ import annotations

import json
import os
import re
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
        FileNotFoundError: a local path that does not exist (see :func:`resolve_source`).
        ValueError: the checkpoint is not a vision-language model, or an unknown ``dtype``.
        OSError: transformers could not load it, or a weights file is truncated or corrupt
            (message names the checkpoint or the file).
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm3.models.processor import set_pixel_budget

    source = resolve_source(name_or_path)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if Path(source).is_dir():
        check_safetensors(source)
    config = _load_vlm_config(source)
    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, config=config, **kwargs)
        processor = AutoProcessor.from_pretrained(source)
    except OSError as exc:
        raise OSError(f"could not load the model or processor from {source!r}: {exc}") from exc
    except SafetensorError as exc:  # e.g. a truncated shard fetched from the hub
        raise OSError(f"{source!r}: a model.safetensors weights file is truncated or corrupt ({exc})") from exc
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


# A Hugging Face Hub repo id: "owner/name", each part letters, digits, "-", "_" or "." (not at the
# ends, no "--" or ".."), at most 96 characters.
_HUB_PART = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a hub id, ``owner/name``, whose owner is not a local folder.

    The rule for model specs: an existing folder is a local checkpoint; otherwise only
    ``owner/name`` is looked up on the Hugging Face Hub, and only when ``owner`` is not a folder
    here (``runs/typo`` with a local ``runs/`` is a missing local path). Everything else (``./x``,
    ``../x``, ``/x``, ``~/x``, ``a/b/c``, a bare ``name``, backslashes) is a local path.
    """
    parts = name.split("/")
    return (
        len(parts) == 2
        and len(name) <= 96
        and all(_HUB_PART.match(p) for p in parts)
        and not Path(parts[0]).exists()
    )


def _looks_like_path(name: str) -> bool:
    """Whether a spec that is not an existing folder is meant as a local path (not a hub id)."""
    return not looks_like_hub_id(name)


def resolve_source(name_or_path: str | os.PathLike) -> str:
    """The checkpoint folder or hub id to load; named errors for what cannot be one.

    An existing path must be a folder with ``config.json``. A spec that does not exist is a hub id
    only when :func:`looks_like_hub_id`; otherwise it is a missing local folder
    (FileNotFoundError "model folder ... does not exist (no such model folder ...)"), reported at
    once instead of after the hub lookups time out.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"model path {str(path)!r} is a file; expected a checkpoint folder")
        if not (path / "config.json").is_file():
            raise ValueError(f"{str(path)!r} is not a transformers checkpoint folder (no config.json)")
        return str(path)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(name):
        owner = name.split("/")[0]
        why = (
            f"{owner!r} is a local folder, so this is not a hub id"
            if name.count("/") == 1 and all(_HUB_PART.match(p) for p in name.split("/")) and Path(owner).is_dir()
            else "a Hugging Face Hub id has the form owner/name"
        )
        raise FileNotFoundError(f"model folder {name!r} does not exist (no such model folder {str(path.absolute())!r}; {why})")
    _check_hub_reachable(name)
    return name  # a hub id


def _check_hub_reachable(repo_id: str) -> None:
    """A hub id that is neither in the local Hugging Face cache nor reachable (its endpoint's host
    does not resolve) is an immediate named error, instead of the hub client's retries (~30 s)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # offline mode (the library reports a miss) or a cached copy
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder and not in the Hugging Face cache, and the hub ({host}) cannot be reached "
            f"to download it ({e.strerror or e}); give a checkpoint folder"
        ) from None


_resolve = resolve_source  # the former private name


def check_safetensors(folder: str | os.PathLike) -> None:
    """OSError naming the file when a ``*.safetensors`` file in ``folder`` is truncated or corrupt.

    Reads only each file's header (8-byte length + JSON) and compares the size it describes with
    the file's, so a half-copied or interrupted download is a one-line error before loading.
    """
    for file in sorted(Path(folder).glob("*.safetensors")):
        size = file.stat().st_size
        problem = None
        try:
            with open(file, "rb") as fh:
                head = fh.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else None
                if n is None or n > size - 8:
                    problem = f"its header is cut off ({size} bytes)"
                else:
                    header = json.loads(fh.read(n))
                    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
                    need = 8 + n + max(ends, default=0)
                    if need > size:
                        problem = f"{size} bytes, but its header describes {need}"
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            problem = f"unreadable header ({type(exc).__name__})"
        if problem is not None:
            raise OSError(f"weights file {str(file)!r} is truncated or corrupt: {problem} (an interrupted download or copy?)")


def _load_vlm_config(source: str):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        hub = "" if Path(source).is_dir() else " (not a local folder, so it was looked up as a Hugging Face Hub id)"
        raise OSError(f"could not read a model config from {source!r}{hub}: {' '.join(str(exc).split())}") from exc
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING or getattr(config, "vision_config", None) is None:
        raise ValueError(
            f"{source!r} holds a {config.model_type!r} model, not a vision-language model "
            "(AutoModelForImageTextToText cannot load it)"
        )
    return config
