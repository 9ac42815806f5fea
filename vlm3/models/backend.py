"""One inference interface for evaluation and prediction, whatever runs the model.

A request is a chat in Hugging Face message format plus the PIL images its ``{"type": "image"}``
parts refer to, in order::

    ChatRequest(
        messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How far ...?"}]}],
        images=[image],
    )

vlm3 always puts the images first and the text last in a user turn (see :func:`user_message`).
Decoding is greedy everywhere. Backends:

- :class:`vlm3.models.local.LocalBackend`: transformers in this process; ``query_many`` encodes the
  image(s) and the shared prompt prefix once and reuses its KV cache for every question.
- :class:`vlm3.models.openai_http.OpenAIBackend`: any OpenAI-compatible chat-completions server
  (``vllm serve``, SGLang, ``vlm3 serve``).
- :class:`vlm3.models.vllm_backend.VLLMBackend`: vLLM's offline engine with prefix caching.

:func:`open_backend` picks one from a model spec (:func:`parse_spec`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from PIL.Image import Image

Message = dict[str, Any]


@dataclass
class ChatRequest:
    """A chat (HF message format) and the images its ``{"type": "image"}`` parts refer to, in order."""

    messages: list[Message]
    images: list["Image"] = field(default_factory=list)

    def __post_init__(self) -> None:
        validate_messages(self.messages, len(self.images))


def user_message(n_images: int, text: str) -> Message:
    """A user turn with ``n_images`` image placeholders first, then ``text``."""
    return {"role": "user", "content": [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]}


def single_turn(images: Sequence["Image"], question: str, system: str | None = None) -> ChatRequest:
    """The request for one question about ``images``: ``[system?, user: images + question]``."""
    messages: list[Message] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append(user_message(len(images), question))
    return ChatRequest(messages, list(images))


def validate_messages(messages: Sequence[Message], n_images: int) -> None:
    """Check the message structure and that the image placeholders match ``n_images``.

    Raises ValueError naming the offending message / part.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    placeholders = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {message!r}")
        if message["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}].role must be system, user or assistant, got {message['role']!r}")
        content = message["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise ValueError(f"messages[{i}].content must be a string or a list of parts, got {type(content).__name__}")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                placeholders += 1
            elif kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"messages[{i}].content[{j}] is a text part without a string 'text'")
            else:
                raise ValueError(f"messages[{i}].content[{j}] must be {{'type': 'image'}} or {{'type': 'text', ...}}, got {part!r}")
    if placeholders != n_images:
        raise ValueError(f"the messages have {placeholders} image placeholder(s) but {n_images} image(s) were given")


@dataclass(frozen=True)
class Completion:
    """One generated answer with its token counts (``None`` where a backend cannot tell).

    ``finish_reason`` is ``"stop"`` (end-of-turn token) or ``"length"`` (``max_new_tokens`` reached),
    or ``"error"`` with ``text=""`` when the request failed for good (an HTTP backend whose request
    timed out, got no usable answer, or one over its size cap, after its retries): the question then
    counts as failed, like any answer that does not parse.
    """

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None


class Backend(ABC):
    """Greedy text generation for chats with images."""

    #: A short name for logs and results (model path, URL, ...).
    name: str = ""

    @abstractmethod
    def generate(self, requests: Sequence[ChatRequest], max_new_tokens: int = 64) -> list[str]:
        """The greedy answer to each request, in order."""

    def complete(self, requests: Sequence[ChatRequest], max_new_tokens: int = 64) -> list[Completion]:
        """Like :meth:`generate`, with token counts where the backend knows them."""
        return [Completion(text) for text in self.generate(requests, max_new_tokens)]

    def query_many(
        self,
        images: Sequence["Image"],
        questions: Sequence[str],
        max_new_tokens: int = 64,
        system: str | None = None,
    ) -> list[Completion]:
        """Answers to many single-turn questions about the same image(s), as completions in order.

        Each answer is exactly what ``generate`` / ``complete([single_turn(images, q, system)])``
        gives for that single question: the same text, and the same ``finish_reason`` (``"length"``
        when the answer hit ``max_new_tokens`` before its end-of-turn token, so callers can tell a
        cut-off answer from a finished one). Backends override this to share the image work
        between questions.
        """
        return self.complete([single_turn(images, q, system) for q in questions], max_new_tokens)

    def close(self) -> None:
        """Release resources (connections, engines). The default does nothing."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- model specs: which backend runs a model ---------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``kind`` (a key of :data:`BACKENDS`) and ``target`` (URL, folder or hub id)."""

    kind: str
    target: str


def parse_spec(spec: str) -> ModelSpec:
    """The one parser of model specs.

    - ``http://...`` / ``https://...``: an OpenAI-compatible server (kind ``http``);
    - ``vllm:FOLDER``: vLLM's offline engine on a folder or hub id (kind ``vllm``);
    - anything else: a local folder or hub id run with transformers (kind ``local``).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec.startswith(("http://", "https://")):
        return ModelSpec("http", spec)
    if spec.startswith("vllm:"):
        if not spec.removeprefix("vllm:"):
            raise ValueError("model spec 'vllm:' needs a model after the colon, e.g. 'vllm:/ckpt/depth'")
        return ModelSpec("vllm", spec.removeprefix("vllm:"))
    return ModelSpec("local", spec)


def spec_name(spec: str) -> str:
    """The model spec as recorded: local folders as absolute paths, so ./m and m are one model."""
    parsed = parse_spec(spec)
    if parsed.kind != "local":
        return spec.strip()
    path = Path(parsed.target).expanduser()
    return str(path.resolve()) if path.exists() else parsed.target


def _open_http(target: str, batch_size: int | None, device: str, dtype: str | None, **options: Any) -> Backend:
    from vlm3.models.openai_http import OpenAIBackend

    return OpenAIBackend(target, **({"max_concurrency": batch_size} if batch_size else {}), **options)


def _open_vllm(target: str, batch_size: int | None, device: str, dtype: str | None, **options: Any) -> Backend:
    from vlm3.models.hf import resolve_source
    from vlm3.models.vllm_backend import VLLMBackend, import_vllm

    import_vllm()  # "pip install vllm" first; then a missing local folder fails at once, not after hub lookups
    return VLLMBackend(resolve_source(target), **options)


def _open_local(target: str, batch_size: int | None, device: str, dtype: str | None, **options: Any) -> Backend:
    from vlm3.models.local import LocalBackend

    return LocalBackend.from_pretrained(target, device=device, dtype=dtype, **({"batch_size": batch_size} if batch_size else {}), **options)


#: How each kind of model spec is opened: ``opener(target, batch_size, device, dtype, **options)``.
BACKENDS: dict[str, Callable[..., Backend]] = {"http": _open_http, "vllm": _open_vllm, "local": _open_local}


def http_options(
    spec: str,
    *,
    api_key: str | None = None,
    served_model_name: str | None = None,
    timeout: float | None = None,
    total_timeout: float | None = None,
    max_retries: int | None = None,
    max_answer_bytes: int | None = None,
) -> dict[str, Any]:
    """Backend options of the ``--api-key`` / ``--served-model-name`` / ``--http-*`` flags, which
    only HTTP models take (None: not given; see :data:`vlm3.models.openai_http.HTTP_FLAGS`)."""
    from vlm3.models.openai_http import HTTP_FLAGS

    flag = {"api_key": "--api-key", "model": "--served-model-name", **{k: f for k, (f, _) in HTTP_FLAGS.items()}}
    values = {"api_key": api_key, "model": served_model_name, "timeout": timeout, "total_timeout": total_timeout,
              "max_retries": max_retries, "max_answer_bytes": max_answer_bytes}
    given = {k: v for k, v in values.items() if v is not None}
    if given and parse_spec(spec).kind != "http":
        flags = " and ".join(flag[k] for k in given)
        raise ValueError(f"{flags} apply to http:// models only, not {spec!r}")
    for key in ("timeout", "total_timeout"):
        if key in given and not (isinstance(given[key], (int, float)) and 0 < given[key] < float("inf")):
            raise ValueError(f"{flag[key]} must be a positive number of seconds, got {given[key]!r}")
    for key, low in (("max_retries", 0), ("max_answer_bytes", 1)):
        if key in given and (isinstance(given[key], bool) or not isinstance(given[key], int) or given[key] < low):
            raise ValueError(f"{flag[key]} must be an integer >= {low}, got {given[key]!r}")
    return given


def open_backend(spec: str, batch_size: int | None = None, *, device: str = "cpu", dtype: str | None = None, **options: Any) -> Backend:
    """The backend of a model spec (see :func:`parse_spec`).

    ``batch_size`` is the local backend's batch, or the number of requests in flight for HTTP (vLLM
    schedules its own); ``device`` and ``dtype`` apply to local models; ``options`` go to the
    backend's constructor (e.g. ``model=``/``api_key=`` for HTTP).
    """
    parsed = parse_spec(spec)
    return BACKENDS[parsed.kind](parsed.target, batch_size, device, dtype, **options)
