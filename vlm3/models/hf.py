"""Loading a vision-language model and its processor through the transformers Auto classes.

The model class is decided by the checkpoint's ``config.json`` (its ``model_type``), never by the
folder or hub name: a renamed folder or a hub id loads the same class. Everything goes through
``AutoModelForImageTextToText`` and ``AutoProcessor``, the path a released Qwen2.5-VL / Qwen3-VL
checkpoint takes, and the path vlm3's tiny models (``vlm3.models.tiny``) are saved for.

A LoRA adapter folder (``adapter_config.json``, no full weights; e.g. a LoRA run's
``checkpoint-N`` or ``final/adapter``) loads too: its base model (:func:`adapter_base`) with the
adapter merged in.
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
        name_or_path: checkpoint folder (or hub id) holding a vision-language model, or a LoRA
            adapter folder (its base is loaded and the adapter merged in; see :func:`adapter_base`).
        dtype: ``"auto"`` (the dtype stored in the config), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: torch device for the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        min_pixels, max_pixels: pin the image processor's pixel budget (pixels per image); ``None``
            keeps the checkpoint's. See :mod:`vlm3.models.processor` for why this matters.
        attn_implementation: e.g. ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``; ``None`` lets
            transformers choose.

    Returns:
        The model (in eval mode, on ``device``; ``model.name_or_path`` is the absolute folder or
        the hub id, so adapters trained on it record a base that resolves from anywhere) and the
        processor.

    Raises:
        FileNotFoundError: a local path that does not exist (see :func:`resolve_source`), or an
            adapter whose base model cannot be found (:class:`AdapterBaseError`).
        ValueError: the checkpoint is not a vision-language model, or an unknown ``dtype``.
        OSError: transformers could not load it, or a weights file is truncated or corrupt
            (message names the checkpoint or the file).
    """
    import torch
    from transformers import AutoProcessor

    from vlm3.models.processor import set_pixel_budget

    source = resolve_source(name_or_path)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model, processor_source = _load_model(source, kwargs)
    try:
        processor = AutoProcessor.from_pretrained(processor_source)
    except OSError as exc:
        raise OSError(f"could not load the model or processor from {processor_source!r}: {exc}") from exc
    model.name_or_path = model.config.name_or_path = model_reference(source)
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


# --- LoRA adapter folders -----------------------------------------------------------------------

ADAPTER_CONFIG = "adapter_config.json"
_FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class AdapterBaseError(FileNotFoundError):
    """A LoRA adapter whose base model cannot be found; the message names the adapter's
    ``adapter_config.json``, its ``base_model_name_or_path`` and where it was looked for."""


def is_adapter_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a LoRA adapter folder: ``adapter_config.json`` and no full model weights."""
    folder = Path(path)
    return (folder / ADAPTER_CONFIG).is_file() and not any((folder / name).is_file() for name in _FULL_WEIGHTS)


def model_reference(name_or_path: str | os.PathLike) -> str:
    """How to name a model so that it resolves from any working directory: an existing local
    folder as its absolute path (not following symlinks), anything else (a hub id) unchanged."""
    path = Path(os.fspath(name_or_path)).expanduser()
    return os.path.abspath(path) if path.is_dir() else os.fspath(name_or_path)


def adapter_base(folder: str | os.PathLike) -> str:
    """The base model of the LoRA adapter in ``folder`` (its ``adapter_config.json``
    ``base_model_name_or_path``): a folder as an absolute path, or a hub id.

    An absolute base must exist. A relative one (adapters saved by peft record the path they
    were trained with) is looked for in the working directory, then next to each folder above
    the adapter (so ``runs/m`` recorded by a run started in the project root is found from
    ``<project>/runs/lora/checkpoint-5``); if no such folder exists, a base of the form
    ``owner/name`` is a hub id. Otherwise :class:`AdapterBaseError`.
    """
    config_file = Path(folder) / ADAPTER_CONFIG
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file}: cannot read the adapter config ({e})") from None
    base = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
    if not isinstance(base, str) or not base.strip():
        raise AdapterBaseError(
            f"{config_file}: base_model_name_or_path = {base!r}; set it to the base model's folder (absolute path) or hub id"
        )
    path = Path(base).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path] + [above / path for above in Path(os.path.abspath(folder)).parents]
    for candidate in candidates:
        if candidate.is_dir():
            return os.path.abspath(candidate)
    if not path.is_absolute() and looks_like_hub_id(base):
        return base
    where = "" if path.is_absolute() else ", nor next to any folder above the adapter"
    raise AdapterBaseError(
        f"{config_file}: base_model_name_or_path = {base!r}: no model folder at {os.path.abspath(candidates[0])}{where}; "
        "set it to the base model's folder (absolute path) or hub id"
    )


def _has_processor_files(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a processor of its own: an image processor config and a tokenizer."""
    folder = Path(folder)
    image = (folder / "processor_config.json").is_file() or (folder / "preprocessor_config.json").is_file()
    return image and (folder / "tokenizer_config.json").is_file()


def _load_model(source: str, kwargs: dict[str, Any], within: tuple[str, ...] = ()) -> tuple[Any, str]:
    """The model of ``source`` (an adapter folder: its base with the adapter merged) and the
    folder or hub id to read its processor from (an adapter's own processor files, else its base's)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText

    if Path(source).is_dir():
        check_safetensors(source)
    if Path(source).is_dir() and is_adapter_folder(source):
        here = os.path.abspath(source)
        if here in within or len(within) >= 8:
            raise ValueError(f"{Path(source) / ADAPTER_CONFIG}: adapters whose bases lead back to themselves ({' -> '.join(within)})")
        base = resolve_source(adapter_base(source))
        model, processor_source = _load_model(base, kwargs, (*within, here))
        model = _merge_adapter(model, source, base)
        return model, (source if _has_processor_files(source) else processor_source)
    config = _load_vlm_config(source)
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, config=config, **kwargs)
    except OSError as exc:
        raise OSError(f"could not load the model or processor from {source!r}: {exc}") from exc
    except SafetensorError as exc:  # e.g. a truncated shard fetched from the hub
        raise OSError(f"{source!r}: a model.safetensors weights file is truncated or corrupt ({exc})") from exc
    return model, source


def _merge_adapter(model: Any, folder: str, base: str) -> Any:
    """``model`` with the LoRA adapter in ``folder`` applied and merged into its weights."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, folder, is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        message = " ".join(str(exc).split())[:500]
        raise OSError(f"could not apply the LoRA adapter in {folder!r} to its base model {base!r}: {message}") from exc
    return peft_model.merge_and_unload()


# --- internals ---------------------------------------------------------------------------------


# A Hugging Face Hub repo id: "owner/name", each part letters, digits, "-", "_" or "." (not at the
# ends, no "--" or ".."), at most 96 characters.
_HUB_PART = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a hub id, ``owner/name``, and is not clearly a local path.

    The rule for model specs (:func:`resolve_source`): an existing folder is a local checkpoint.
    A spec that does not exist is looked up on the Hugging Face Hub only when it is exactly
    ``owner/name`` (letters, digits, ``-_.``; at most 96 characters), ``owner`` is not a file or
    folder here (``runs/typo`` with a local ``runs/`` is a missing local path), and ``name`` is not
    one of vlm3's training outputs (``final``, ``adapter``, ``checkpoint-N``: ``myrun/final`` means
    a folder). Everything else is a local path: ``./x``, ``../x``, ``/x``, ``~/x``, ``a/b/c``, a
    bare ``name``, a trailing ``/``, backslashes (``os.sep`` on Windows).
    """
    parts = name.split("/")
    return (
        len(parts) == 2
        and len(name) <= 96
        and all(_HUB_PART.match(p) for p in parts)
        and not _TRAINING_OUTPUT.match(parts[1])
        and not Path(parts[0]).exists()
    )


_TRAINING_OUTPUT = re.compile(r"^(final|adapter|checkpoint-\d+)$")  # folders vlm3 train writes


def _looks_like_path(name: str) -> bool:
    """Whether a spec that is not an existing folder is meant as a local path (not a hub id)."""
    return not looks_like_hub_id(name)


def resolve_source(name_or_path: str | os.PathLike) -> str:
    """The checkpoint folder or hub id to load; named errors for what cannot be one.

    An existing path must be a folder with ``config.json`` (a checkpoint) or
    ``adapter_config.json`` (a LoRA adapter). A spec that does not exist is a hub id only when
    :func:`looks_like_hub_id` (``owner/name``, ``owner`` not a local folder); anything that looks
    like a local path (``./x``, ``../x``, ``/x``, ``~/x``, ``a/b/c``, ``runs/x`` with a local
    ``runs/``, ``run/final``, a bare name, an ``os.PathLike``) is FileNotFoundError
    "no model folder at <absolute path>", at once instead of after hub lookups time out.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"model path {str(path)!r} is a file; expected a checkpoint folder")
        if not (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file():
            raise ValueError(
                f"{str(path)!r} is not a transformers checkpoint folder (no config.json) nor a LoRA adapter folder (no {ADAPTER_CONFIG})"
            )
        return str(path)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(name):
        owner = name.split("/")[0]
        hub_form = name.count("/") == 1 and all(_HUB_PART.match(p) for p in name.split("/"))
        if hub_form and Path(owner).is_dir():
            why = f"{owner!r} is a local folder, so this is not a hub id"
        elif hub_form and _TRAINING_OUTPUT.match(name.split("/")[1]):
            why = f"{name.split('/')[1]!r} is a folder vlm3 train writes, so this is not a hub id"
        else:
            why = "a Hugging Face Hub id has the form owner/name"
        raise FileNotFoundError(f"no model folder at {os.path.abspath(path)} (model {name!r}; {why})")
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
        hub = (
            "" if Path(source).is_dir()
            else f" (no model folder at {os.path.abspath(source)}, so it was looked up as a Hugging Face Hub id)"
        )
        raise OSError(f"could not read a model config from {source!r}{hub}: {' '.join(str(exc).split())}") from exc
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING or getattr(config, "vision_config", None) is None:
        raise ValueError(
            f"{source!r} holds a {config.model_type!r} model, not a vision-language model "
            "(AutoModelForImageTextToText cannot load it)"
        )
    return config
