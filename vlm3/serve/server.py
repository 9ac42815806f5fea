"""An OpenAI-compatible HTTP server around a vlm3 backend (``vlm3 serve``).

Endpoints: ``POST /v1/chat/completions`` (text and ``image_url`` parts with base64 data URLs),
``GET /v1/models``, ``GET /v1/models/{id}`` and ``GET /health`` (``{"status": "ok", "model",
"queue_depth", "waiting", "running", "max_queue"}``; it needs no API key, and names the model only to
a client that sends the key when one is configured). Remote image URLs are never fetched.

OpenAI options
--------------
Decoding is greedy. An option is honoured, ignored because greedy decoding makes it irrelevant, or
refused with 400 naming it (``param``) -- never silently ignored when it would change the answer:

- honoured: ``model``, ``messages`` (roles ``system``, ``developer`` (= system), ``user``,
  ``assistant``), ``max_tokens`` / ``max_completion_tokens``, ``stop`` (a string or a list of up to 4
  non-empty strings), ``stream`` (with ``stream_options.include_usage``), ``n`` = 1, ``temperature``
  = 0;
- ignored (no effect on a greedy answer): ``top_p``, ``top_k``, ``min_p``, ``seed``, ``user``,
  ``metadata``, ``store``, ``parallel_tool_calls``, ``prediction``, ``reasoning_effort`` and any other
  field not listed here;
- refused (``unsupported_value``: a value the server cannot honour; ``unsupported_parameter``: a
  feature it does not have): ``temperature`` != 0, ``n`` > 1, ``logprobs`` = true, ``top_logprobs`` >
  0, ``tools`` / ``functions`` (non-empty), ``tool_choice`` / ``function_call`` other than
  ``"none"`` / ``"auto"``, ``response_format`` other than ``{"type": "text"}``, ``logit_bias``
  (non-empty), ``presence_penalty`` / ``frequency_penalty`` != 0, ``repetition_penalty`` != 1,
  ``modalities`` other than ``["text"]``, ``audio``.

``stop``: the answer is generated greedily to its end-of-turn token or ``max_tokens``, then cut
(post hoc) where generation would have stopped: at the earliest point of the answer's text at which
it contains a stop sequence, before the first stop sequence in it; ``finish_reason`` is then
``"stop"`` and the stop text is not included. Greedy tokens do not depend on where generation
stops, so the text is exactly what stopping during generation gives (OpenAI and vLLM semantics);
only when two stop sequences overlap in the text and complete within one token can a
token-by-token server cut at the other one. ``usage.completion_tokens`` counts the tokens the
server generated, past the stop sequence too.

``stream``: the answer is sent when it is complete, as server-sent events in the OpenAI format (a
chunk with the role and whole text, one with ``finish_reason``, a usage chunk with
``stream_options.include_usage``, then ``data: [DONE]``); it is not streamed token by token.

Life of a request
-----------------
1. **Admission.** At most ``max_queue`` chat requests are in the server at once (reading their
   body, being validated, waiting or running); one more is answered 503 with ``Retry-After``
   before its body is read.
2. **Validation, per request and off the event loop** (a pool of ``preprocess_threads`` threads):
   JSON and schema, options (``max_tokens`` <= ``max_tokens_limit``), message structure, every image
   (a base64 data URL in an allowed format; its pixel count from the header, against
   ``max_image_pixels`` and the request's ``max_request_pixels``, before any pixel is decoded; then a
   full decode), and, for a backend with a transformers processor (the local backend), what the
   model's processor would refuse: image sizes it does not accept (Qwen-VL: aspect ratio over 200),
   text containing the tokenizer's special tokens (an ``<|image_pad|>`` in the text breaks the
   processor), and the prompt length in tokens (counted exactly as the processor makes them, image
   tokens included) against ``max_prompt_tokens`` and the model's context length. A request that
   fails here is answered 4xx and never reaches a batch.
3. **Batching.** Validated requests queue and are answered in arrival order. Requests that wait
   together are run as one batch: up to ``max_batch_size`` requests whose ``max_tokens`` sum to at
   most ``max_batch_tokens`` (the batch's decode work; a single request always runs), run as one
   backend call per distinct ``max_tokens``. At most ``max_concurrency`` batches run at once. The
   local backend's answers do not depend on batching.
4. **Isolation.** If a backend call fails for a batch of several requests, its requests are retried
   one by one, so only a request that fails on its own gets an error; its batch-mates are answered.

Errors, whatever the route, are OpenAI's JSON ``{"error": {"message", "type", "param", "code"}}``
(``type`` ``invalid_request_error`` for client errors; ``param`` names the field at fault, e.g.
``messages[0].content[1]``, or is null), so OpenAI clients raise their usual exceptions
(``openai.BadRequestError`` for 400, ...):

====  =========================================================================================
400   malformed JSON (``invalid_json``); wrong request schema: a missing field, a wrong type or
      value (``invalid_schema``); option value the server cannot honour (``unsupported_value``);
      option it does not support (``unsupported_parameter``); ``max_tokens``
      over the cap (``max_tokens_too_large``); bad message structure (``invalid_messages``); bad or
      unreadable image (``invalid_image``); image over ``max_image_pixels`` (``image_too_large``);
      images over ``max_request_pixels`` together (``request_pixels_too_large``); text with special
      tokens (``invalid_text``); prompt over ``max_prompt_tokens`` (``prompt_too_long``); prompt +
      ``max_tokens`` over the model's context (``context_length_exceeded``); a request the model's
      processor rejects on its own at generation time (``invalid_input``)
401   missing or wrong API key (``invalid_api_key``)
404   unknown model (``model_not_found``); unknown route (``unknown_url``)
405   method not allowed on a route (``method_not_allowed``, with ``Allow``)
413   body larger than ``max_request_bytes`` (``request_too_large``)
500   generation failed for this request on its own for a reason that is not its input
      (``generation_failed``)
503   queue full (``queue_full``) or out of memory (``out_of_memory``), both with ``Retry-After``;
      server shutting down (``shutting_down``)
====  =========================================================================================

Memory. An admitted request holds its body (<= ``max_request_bytes``) until it is validated, then
only its decoded images (PIL keeps RGB at 4 bytes per pixel: <= 4 x ``max_request_pixels`` bytes).
While a request is validated (at most ``preprocess_threads`` at once) it briefly holds up to
4 x its body (raw, text, parsed JSON, decoded base64) and 8 bytes per pixel (an image and its RGB
conversion). So what requests hold is at most :func:`request_memory_bound`::

    max_queue * max(max_request_bytes, 4 * max_request_pixels)
      + preprocess_threads * (4 * max_request_bytes + 8 * max_request_pixels)

(about 5.9 GB with the defaults; the model's own activations for a running batch come on top).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlm3.models.backend import Backend, ChatRequest, Completion

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 64
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_REQUEST_PIXELS = 4096 * 4096
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PROMPT_TOKENS = 8192
DEFAULT_MAX_TOKENS = 256
DEFAULT_MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_BATCH_TOKENS = 4096
DEFAULT_PREPROCESS_THREADS = 4
MAX_TOKENS_LIMIT = DEFAULT_MAX_TOKENS_LIMIT  # the former fixed cap, kept for importers
#: Image formats accepted in data URLs (PIL is not asked to try its other, rarer decoders).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG includes MPO (phone cameras)
#: Bytes PIL uses per pixel of an RGB image.
RGB_BYTES_PER_PIXEL = 4
#: Most stop sequences a request may give (OpenAI's limit).
MAX_STOP_SEQUENCES = 4


def request_memory_bound(
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
    preprocess_threads: int = DEFAULT_PREPROCESS_THREADS,
) -> int:
    """Bytes that admitted requests can hold at most (see the module doc), model activations aside."""
    held = max(max_request_bytes, RGB_BYTES_PER_PIXEL * max_request_pixels)
    transient = 4 * max_request_bytes + 2 * RGB_BYTES_PER_PIXEL * max_request_pixels
    return max_queue * held + preprocess_threads * transient


# --- request schema (OpenAI chat completions, the parts vlm3 uses) ---------------------------------


class _Open(BaseModel):
    # Unknown OpenAI fields (top_p, seed, user, ...) are accepted; those that would change the
    # answer are refused by _check_options.
    model_config = ConfigDict(extra="allow")


class ImageURL(_Open):
    url: str
    detail: str | None = None


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL | str


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    #: A string or a list of text / image_url parts, checked by :func:`_parse_content` (errors name the part).
    content: Any


class ChatCompletionRequest(_Open):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    n: int | None = None
    stream: bool | None = None
    #: A string or a list of strings, checked by :func:`_stop_sequences`.
    stop: Any = None
    stream_options: Any = None


#: Options the server cannot honour: name -> (values that leave the greedy answer unchanged, code,
#: why any other value is refused).
UNSUPPORTED_OPTIONS: dict[str, tuple[tuple[Any, ...], str, str]] = {
    "logprobs": ((None, False), "unsupported_parameter", "this server returns no token log-probabilities"),
    "top_logprobs": ((None, 0), "unsupported_parameter", "this server returns no token log-probabilities"),
    "tools": ((None, []), "unsupported_parameter", "this server does not support tools (function calling)"),
    "tool_choice": ((None, "none", "auto"), "unsupported_parameter", "this server does not support tools (function calling)"),
    "functions": ((None, []), "unsupported_parameter", "this server does not support function calling"),
    "function_call": ((None, "none", "auto"), "unsupported_parameter", "this server does not support function calling"),
    "response_format": ((None, {"type": "text"}), "unsupported_parameter", "answers are plain text (only {\"type\": \"text\"} is accepted)"),
    "logit_bias": ((None, {}), "unsupported_parameter", "it would change the greedy answer and this server does not apply it"),
    "presence_penalty": ((None, 0), "unsupported_value", "this server decodes greedily without penalties (only 0 is accepted)"),
    "frequency_penalty": ((None, 0), "unsupported_value", "this server decodes greedily without penalties (only 0 is accepted)"),
    "repetition_penalty": ((None, 1), "unsupported_value", "this server decodes greedily without penalties (only 1 is accepted)"),
    "modalities": ((None, ["text"]), "unsupported_value", "this server answers in text only"),
    "audio": ((None,), "unsupported_parameter", "this server answers in text only"),
}


class APIError(Exception):
    """An error answered as OpenAI-style JSON (``headers``: extra response headers, e.g. Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.param, self.headers = param, headers

    def response(self) -> JSONResponse:
        """The error as the OpenAI API answers one: ``{"error": {message, type, param, code}}``."""
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class ImageTooLarge(APIError):
    """An image with more pixels than the cap it was decoded under; ``size`` = (width, height)."""

    def __init__(self, where: str, size: tuple[int, int], max_pixels: int):
        w, h = size
        super().__init__(400, f"{where}: image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}", code="image_too_large", param=where)
        self.size, self.max_pixels = size, max_pixels


# --- batching ------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    request: ChatRequest
    max_tokens: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Queues requests and runs waiting ones together through ``backend.complete``.

    A batch takes waiting requests in arrival order, up to ``max_batch_size`` of them and (when
    ``max_batch_tokens`` is set) as long as their ``max_tokens`` sum to at most ``max_batch_tokens``
    (the first request of a batch always fits). A failed backend call for several requests is
    retried one request at a time, so an error reaches only the request that causes it.
    """

    def __init__(self, backend: Backend, max_batch_size: int, max_concurrency: int, max_batch_tokens: int | None = None) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_concurrency = max_concurrency
        self.max_batch_tokens = max_batch_tokens
        #: Requests being generated right now (in running batches).
        self.running = 0
        #: Backend calls made (batches and one-by-one retries) and failed batches retried one by one.
        self.calls = 0
        self.isolated = 0
        self._waiting: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._batch_seconds = 1.0  # running mean of a backend call's duration, for Retry-After

    @property
    def waiting(self) -> int:
        """Requests queued and not yet in a batch."""
        return len(self._waiting)

    def retry_after(self) -> int:
        """Seconds a client turned away should wait: the time to work through the queue, 1..60."""
        batches = 1 + len(self._waiting) / self.max_batch_size
        return max(1, min(60, math.ceil(self._batch_seconds * batches / self.max_concurrency)))

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.max_concurrency)
        self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="vlm3-generate")
        self._worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, *self._tasks, return_exceptions=True)
            self._worker = None
        while self._waiting:
            job = self._waiting.popleft()
            if not job.future.done():
                job.future.set_exception(APIError(503, "the server is shutting down", "server_error", "shutting_down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(self, request: ChatRequest, max_tokens: int) -> Completion:
        if self._wakeup is None:
            raise RuntimeError("the server's batcher is not running (the app's lifespan was not started)")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Job(request, max_tokens, future))
        self._wakeup.set()
        return await future  # a cancelled (disconnected) request cancels its future: batches skip it

    async def _loop(self) -> None:
        assert self._wakeup is not None and self._slots is not None
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for a free slot first, so that requests arriving meanwhile join this batch.
            await self._slots.acquire()
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            self.running += len(batch)
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        tokens = 0
        while self._waiting and len(batch) < self.max_batch_size:
            job = self._waiting[0]
            if job.future.done():  # cancelled while waiting
                self._waiting.popleft()
                continue
            if batch and self.max_batch_tokens is not None and tokens + job.max_tokens > self.max_batch_tokens:
                break
            batch.append(self._waiting.popleft())
            tokens += job.max_tokens
        return batch

    async def _run(self, batch: list[_Job]) -> None:
        assert self._slots is not None
        try:
            groups: dict[int, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.max_tokens, []).append(job)
            for max_tokens, jobs in groups.items():
                await self._generate(jobs, max_tokens)
        finally:
            self.running -= len(batch)
            self._slots.release()

    async def _call(self, jobs: list[_Job], max_tokens: int) -> list[Completion]:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        self.calls += 1
        results = await loop.run_in_executor(self._executor, self.backend.complete, [j.request for j in jobs], max_tokens)
        if len(results) != len(jobs):
            raise RuntimeError(f"the backend returned {len(results)} answers for {len(jobs)} requests")
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.monotonic() - start)
        return results

    async def _generate(self, jobs: list[_Job], max_tokens: int) -> None:
        live = [j for j in jobs if not j.future.done()]  # skip cancelled (disconnected) requests
        if not live:
            return
        try:
            results = await self._call(live, max_tokens)
        except Exception as exc:
            if len(live) == 1:
                _settle(live[0], error=exc)
                return
            # Whichever request broke the batch, its batch-mates must not share its fate.
            self.isolated += 1
            log.warning("a batch of %d requests failed (%s: %s); retrying them one by one", len(live), type(exc).__name__, exc)
            for job in live:
                if job.future.done():
                    continue
                try:
                    (result,) = await self._call([job], max_tokens)
                except Exception as single:
                    _settle(job, error=single)
                else:
                    _settle(job, result)
            return
        for job, result in zip(live, results):
            _settle(job, result)


def _settle(job: _Job, result: Completion | None = None, *, error: BaseException | None = None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)


class _Admission:
    """Counts the chat requests in the server; one over ``limit`` is refused with 503."""

    def __init__(self, limit: int, batcher: Batcher) -> None:
        self.limit, self.batcher, self.count = limit, batcher, 0

    def __enter__(self) -> None:
        if self.count >= self.limit:
            raise APIError(
                503,
                f"the server is busy: {self.count} requests are already queued or running, its limit "
                f"(--max-queue {self.limit}); retry after the Retry-After seconds",
                "server_error",
                "queue_full",
                headers={"Retry-After": str(self.batcher.retry_after())},
            )
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.count -= 1


# --- what the model's processor accepts ------------------------------------------------------------


class PromptCounter:
    """Prompt length in tokens of a request exactly as a transformers processor makes it, and what that
    processor refuses, checked per request before batching (no pixel preprocessing).

    Works on a private copy of the processor (the backend's tokenizer is busy in the generation
    thread, and a fast tokenizer must not be used from two threads at once). Image tokens come from
    the processor's own ``_get_num_multimodal_tokens`` (Qwen-VL: ``smart_resize``, which also
    refuses aspect ratios over 200); a processor without it is run on the whole request instead.
    """

    def __init__(self, processor: Any, context_length: int | None = None) -> None:
        self.processor = copy.deepcopy(processor)
        self.tokenizer = self.processor.tokenizer
        self.context_length = context_length
        self._lock = threading.Lock()
        self._sizes_only = hasattr(self.processor, "_get_num_multimodal_tokens")
        special = {str(t) for t in getattr(self.tokenizer, "all_special_tokens", [])}
        for token in getattr(self.tokenizer, "added_tokens_decoder", {}).values():
            if getattr(token, "special", False):
                special.add(str(token.content))
        for name in ("image_token", "video_token"):
            value = getattr(self.processor, name, None)
            if isinstance(value, str):
                special.add(value)
        #: Strings that must not occur in a request's text (they are the chat template's and images' own).
        self.special_tokens = sorted(t for t in special if t)

    @classmethod
    def for_backend(cls, backend: Backend) -> "PromptCounter | None":
        """A counter for a backend with a transformers processor (the local backend), else None."""
        processor = getattr(backend, "processor", None)
        if processor is None or not hasattr(processor, "apply_chat_template") or getattr(processor, "tokenizer", None) is None:
            return None
        context = None
        try:
            text_config = backend.model.config.get_text_config(decoder=True)  # type: ignore[attr-defined]
            context = int(text_config.max_position_embeddings)
        except (AttributeError, TypeError, ValueError):
            pass
        return cls(processor, context)

    def check_text(self, text: str, where: str) -> None:
        for token in self.special_tokens:
            if token in text:
                raise APIError(400, f"{where}: the text contains the model's special token {token!r}, which only the chat template and images may use", code="invalid_text", param=where)

    def image_tokens(self, image: "PILImage", where: str) -> int | None:
        """Tokens the image becomes; 400 for a size the processor refuses. None: not known without preprocessing."""
        if not self._sizes_only:
            return None
        w, h = image.size
        try:
            data = self.processor._get_num_multimodal_tokens(image_sizes=[(h, w)])
            return int(data.num_image_tokens[0])
        except NotImplementedError:
            self._sizes_only = False
            return None
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            raise APIError(400, f"{where}: the model's image processor does not accept a {w}x{h} image ({exc})", code="invalid_image", param=where) from exc

    def count(self, request: ChatRequest, image_tokens: list[int | None]) -> int:
        """The prompt's length in tokens (400 for what the processor refuses)."""
        try:
            text = self.processor.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            if all(n is not None for n in image_tokens):
                with self._lock:
                    ids = self.tokenizer(text)["input_ids"]
                # Each image's one placeholder token becomes its image tokens.
                return len(ids) - len(image_tokens) + sum(n for n in image_tokens if n is not None)
            with self._lock:
                enc = self.processor(text=[text], images=list(request.images) or None)
            return len(enc["input_ids"][0])
        except APIError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise APIError(400, f"the model's processor cannot read this request ({type(exc).__name__}: {exc})", code="invalid_messages", param="messages") from exc


# --- the app ---------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    request: ChatRequest
    max_tokens: int
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def create_app(
    backend: Backend,
    *,
    model_name: str,
    api_key: str | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_concurrency: int = 1,
    max_batch_size: int = 8,
    preprocess_threads: int = DEFAULT_PREPROCESS_THREADS,
    vlm3: dict[str, Any] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``backend`` under the name ``model_name`` (limits: see the module doc).

    ``vlm3`` (the checkpoint's ``vlm3.json``: task and settings) is published with the model in
    ``GET /v1/models``, so clients ask questions the way the model was trained.
    ``app.state`` has ``batcher`` (``waiting``, ``running``) and ``admission`` (``count``: requests
    in the server).
    """
    for name, value in (("max_image_pixels", max_image_pixels), ("max_request_pixels", max_request_pixels),
                        ("max_request_bytes", max_request_bytes), ("max_prompt_tokens", max_prompt_tokens),
                        ("max_tokens_limit", max_tokens_limit), ("max_batch_tokens", max_batch_tokens),
                        ("max_queue", max_queue), ("max_concurrency", max_concurrency),
                        ("max_batch_size", max_batch_size), ("preprocess_threads", preprocess_threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    batcher = Batcher(backend, max_batch_size, max_concurrency, max_batch_tokens)
    admission = _Admission(max_queue, batcher)
    counter = PromptCounter.for_backend(backend)
    default_max_tokens = min(DEFAULT_MAX_TOKENS, max_tokens_limit)
    created = int(time.time())
    pool: list[ThreadPoolExecutor] = []

    def prepare(raw: bytes | bytearray) -> _Prepared:
        """Everything that can be checked about one request before it is batched (runs in a thread)."""
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
            raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc
        if not isinstance(data, dict):
            raise APIError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_schema")
        try:
            body = ChatCompletionRequest.model_validate(data)
        except (ValidationError, RecursionError) as exc:
            detail, param = _describe(exc) if isinstance(exc, ValidationError) else ("too deeply nested", None)
            raise APIError(400, "invalid request: " + detail, code="invalid_schema", param=param) from exc
        del data
        if body.model is not None and body.model != model_name:
            raise APIError(404, f"model {body.model!r} is not served here; this server serves {model_name!r}", code="model_not_found", param="model")
        stop, include_usage = _check_options(body)
        stream = bool(body.stream)
        for i, message in enumerate(body.messages):
            message.content = _parse_content(message.content, f"messages[{i}].content")
        max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
        if max_tokens > max_tokens_limit:
            param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise APIError(400, f"max_tokens must be <= {max_tokens_limit} (this server's --max-tokens-limit), got {max_tokens}", code="max_tokens_too_large", param=param)
        chat, image_tokens = _to_chat_request(body, max_image_pixels, max_request_pixels, counter)
        del body
        if counter is not None:
            prompt = counter.count(chat, image_tokens)
            if prompt > max_prompt_tokens:
                raise APIError(400, f"the prompt is {prompt} tokens, more than this server's limit of {max_prompt_tokens} tokens (--max-prompt-tokens)", code="prompt_too_long", param="messages")
            if counter.context_length is not None and prompt + max_tokens > counter.context_length:
                raise APIError(
                    400,
                    f"the prompt ({prompt} tokens) plus max_tokens ({max_tokens}) is more than the model's context of {counter.context_length} tokens",
                    code="context_length_exceeded",
                    param="messages",
                )
        return _Prepared(chat, max_tokens, stop, stream, include_usage)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool.append(ThreadPoolExecutor(preprocess_threads, thread_name_prefix="vlm3-prepare"))
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            pool.pop().shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="vlm3", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.admission = admission

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _route_error(request, exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        param = _param_path([x for x in errors[0]["loc"] if x not in ("body", "query", "path")]) if errors else None
        detail = "; ".join(f"{_param_path(e['loc'])}: {e['msg']}" for e in errors[:5])
        return APIError(400, f"invalid request: {detail}", code="invalid_schema", param=param or None).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s", request.url.path, exc_info=exc)
        return APIError(500, f"internal server error: {type(exc).__name__}", "server_error", "internal_error").response()

    def authorised(request: Request) -> bool:
        return api_key is None or _key_ok(request.headers.get("authorization"), api_key)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        # Every route but /health (for load balancers and probes) needs the key when one is configured.
        if request.url.path != "/health" and not authorised(request):
            return APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", "authentication_error", "invalid_api_key").response()
        return await call_next(request)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Liveness and load: requests in the server (``queue_depth``), waiting and running."""
        body: dict[str, Any] = {"status": "ok"}
        if authorised(request):
            body["model"] = model_name
        return {**body, "queue_depth": admission.count, "waiting": batcher.waiting, "running": batcher.running, "max_queue": max_queue}

    def model_entry() -> dict[str, Any]:
        entry = {"id": model_name, "object": "model", "created": created, "owned_by": "vlm3"}
        return {**entry, "vlm3": vlm3} if vlm3 is not None else entry

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_entry()]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        if model_id != model_name:
            raise APIError(404, f"model {model_id!r} is not served here; this server serves {model_name!r}", code="model_not_found", param="model")
        return model_entry()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        with admission:  # 503 when --max-queue requests are already in the server
            raw = await _read_body(request, max_request_bytes)
            prepared = await asyncio.get_running_loop().run_in_executor(pool[0], prepare, raw)
            del raw  # a queued request holds its images, not its body
            try:
                result = await batcher.submit(prepared.request, prepared.max_tokens)
            except APIError:
                raise
            except Exception as exc:
                raise _generation_error(exc, batcher) from exc
        text, finish_reason = result.text, result.finish_reason or "stop"
        cut = cut_at_stop(text, prepared.stop)
        if cut is not None:
            text, finish_reason = text[:cut], "stop"
        prompt = result.prompt_tokens or 0
        completion = result.completion_tokens or 0
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
        if prepared.stream:
            return StreamingResponse(_sse_chunks(head, text, finish_reason, usage if prepared.include_usage else None), media_type="text/event-stream")
        return JSONResponse(
            {
                **head,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
                "usage": usage,
            }
        )

    return app


# --- helpers -------------------------------------------------------------------------------------


def _generation_error(exc: Exception, batcher: Batcher) -> APIError:
    """The answer for a request whose generation failed on its own (batch failures were isolated)."""
    name = type(exc).__name__
    if "OutOfMemory" in name:
        return APIError(503, f"the server ran out of memory generating this answer ({name}); retry later", "server_error", "out_of_memory",
                        headers={"Retry-After": str(batcher.retry_after())})
    if isinstance(exc, (ValueError, TypeError)):
        # The backend refused this request alone (its batch-mates were answered): a client error.
        return APIError(400, f"the model cannot process this request: {name}: {exc}", code="invalid_input")
    log.error("generation failed: %s: %s", name, exc, exc_info=exc)
    return APIError(500, f"generation failed: {name}: {exc}", "server_error", "generation_failed")


def _sse_chunks(head: dict[str, Any], text: str, finish_reason: str, usage: dict[str, int] | None) -> Iterator[bytes]:
    """A complete answer as OpenAI ``chat.completion.chunk`` server-sent events, then ``[DONE]``."""
    extra = {"usage": None} if usage is not None else {}
    chunks = [
        {**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}], **extra},
        {**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}], **extra},
    ]
    if usage is not None:
        chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _route_error(request: Request, exc: StarletteHTTPException) -> APIError:
    """Starlette's own HTTP errors (unknown route, wrong method, ...) as OpenAI-style errors."""
    where = f"{request.method} {request.url.path}"
    routes = "POST /v1/chat/completions, GET /v1/models, GET /v1/models/{model}, GET /health"
    if exc.status_code == 404:
        return APIError(404, f"Invalid URL ({where}): this server answers {routes}", code="unknown_url")
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return APIError(405, f"method {request.method} is not allowed on {request.url.path} (allowed: {allowed}); this server answers {routes}",
                        code="method_not_allowed", headers=exc.headers)
    kind = "server_error" if exc.status_code >= 500 else "invalid_request_error"
    return APIError(exc.status_code, f"{where}: {exc.detail}", kind, headers=exc.headers)


def _key_ok(header: str | None, key: str) -> bool:
    if not header or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), key.encode())


async def _read_body(request: Request, limit: int) -> bytearray:
    """The body, refusing (413) anything over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {int(declared)} bytes, more than this server's limit of {limit} bytes (--max-request-bytes)", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise APIError(413, f"request body is more than this server's limit of {limit} bytes (--max-request-bytes)", code="request_too_large")
        body += chunk
    return body


def _describe(exc: ValidationError) -> tuple[str, str | None]:
    """A schema error as a message naming each field at fault, and the first such field (``param``)."""
    errors = exc.errors()
    params = [_param_path(e["loc"]) for e in errors]
    parts = [f"{param or 'body'}: {e['msg']}" for param, e in zip(params[:5], errors[:5])]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more, (params[0] or None) if params else None


def _param_path(loc: Sequence[str | int]) -> str:
    """A pydantic error location as the server's field paths: ``("messages", 0, "role")`` -> ``messages[0].role``."""
    path = ""
    for item in loc:
        path += f"[{item}]" if isinstance(item, int) else (f".{item}" if path else str(item))
    return path


def _short(value: Any, limit: int = 60) -> str:
    """A request value as JSON (as the client wrote it), cut to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_options(body: ChatCompletionRequest) -> tuple[tuple[str, ...], bool]:
    """Refuse (400, naming the option) what greedy decoding here cannot honour; return the stop
    sequences and whether a stream ends with a usage chunk."""
    if body.temperature not in (None, 0, 0.0):
        raise APIError(400, f"temperature must be 0 or absent (this server decodes greedily), got {body.temperature}", code="unsupported_value", param="temperature")
    if body.n not in (None, 1):
        raise APIError(400, f"n must be 1 (greedy decoding gives one answer), got {body.n}", code="unsupported_value", param="n")
    extra = body.model_extra or {}
    for name, (neutral, code, why) in UNSUPPORTED_OPTIONS.items():
        value = extra.get(name)
        if not any(_same(value, ok) for ok in neutral):
            raise APIError(400, f"{name}={_short(value)} is not supported: {why}", code=code, param=name)
    include_usage = False
    if body.stream_options is not None:
        options = body.stream_options
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise APIError(400, f"stream_options must be an object like {{\"include_usage\": true}}, got {_short(options)}", code="invalid_schema", param="stream_options")
        include_usage = options.get("include_usage", False)
    return _stop_sequences(body.stop), include_usage


def _same(value: Any, ok: Any) -> bool:
    """``value`` equals ``ok`` and is of its kind (numbers compare as numbers; True is not 1)."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if number(ok):
        return number(value) and value == ok
    return type(value) is type(ok) and value == ok


def _stop_sequences(value: Any) -> tuple[str, ...]:
    """``stop`` (absent, a string, or a list of at most :data:`MAX_STOP_SEQUENCES` non-empty strings) as a tuple."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise APIError(400, f"stop must be a string or a list of at most {MAX_STOP_SEQUENCES} strings, got {_short(value)}", code="invalid_schema", param="stop")
    if len(items) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"stop may hold at most {MAX_STOP_SEQUENCES} sequences, got {len(items)}", code="invalid_schema", param="stop")
    if any(not s for s in items):
        raise APIError(400, "stop sequences must not be empty strings", code="invalid_schema", param="stop")
    return tuple(items)


def cut_at_stop(text: str, stop: Sequence[str]) -> int | None:
    """Where an answer ends for stop sequences ``stop`` (OpenAI semantics); None when none occurs.

    Generation stops as soon as the text contains a stop sequence: at the end ``e`` of the stop
    sequence that completes first. The answer is that text, ``text[:e]``, up to the first stop
    sequence in it (the stop text itself is left out).
    """
    found = [(i + len(s), s) for s in stop if (i := text.find(s)) >= 0]
    if not found:
        return None
    end = min(e for e, _ in found)
    head = text[:end]
    return min(i for s in stop if (i := head.find(s)) >= 0)


def _validate_part(model: type[TextPart] | type[ImagePart], part: dict[str, Any], at: str) -> Any:
    """``part`` as ``model``; 400 naming the part when a field of it has the wrong type."""
    try:
        return model.model_validate(part)
    except ValidationError as exc:
        detail, _ = _describe(exc)
        raise APIError(400, f"{at}: invalid {part.get('type')} part: {detail}", code="invalid_messages", param=at) from exc


def _parse_content(content: Any, where: str) -> str | list[TextPart | ImagePart]:
    """A message's content as a string or text / image_url parts; 400 naming the part at fault."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{where} must be a string or a list of content parts, got {_short(content)}", code="invalid_messages", param=where)
    parts: list[TextPart | ImagePart] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise APIError(400, f"{at}.text must be a string, got {_short(part.get('text'))}", code="invalid_messages", param=f"{at}.text")
            parts.append(_validate_part(TextPart, part, at))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise APIError(400, f"{at}.image_url must be {{\"url\": \"data:image/...;base64,...\"}} or that URL as a string, got {_short(image)}",
                               code="invalid_messages", param=f"{at}.image_url")
            parts.append(_validate_part(ImagePart, part, at))
        elif isinstance(part, dict):
            raise APIError(400, f"{at}.type must be \"text\" or \"image_url\" (the parts this server reads), got {_short(kind)}", code="invalid_messages", param=f"{at}.type")
        else:
            raise APIError(400, f"{at} must be a content part object with a 'type', got {_short(part)}", code="invalid_messages", param=at)
    return parts


def _to_chat_request(
    body: ChatCompletionRequest, max_image_pixels: int, max_request_pixels: int, counter: PromptCounter | None
) -> tuple[ChatRequest, list[int | None]]:
    """HF-format messages with ``{"type": "image"}`` placeholders, the decoded images, and the tokens
    each image becomes (None where unknown); 400 for any text or image the server refuses."""
    messages, images, image_tokens = [], [], []
    pixels = 0
    for i, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role  # OpenAI's newer name for system
        if isinstance(message.content, str):
            if counter is not None:
                counter.check_text(message.content, f"messages[{i}].content")
            messages.append({"role": role, "content": [{"type": "text", "text": message.content}]})
            continue
        parts = []
        for j, part in enumerate(message.content):
            where = f"messages[{i}].content[{j}]"
            if isinstance(part, TextPart):
                if counter is not None:
                    counter.check_text(part.text, where)
                parts.append({"type": "text", "text": part.text})
                continue
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            data = _data_url_bytes(url, where)
            left = max_request_pixels - pixels
            try:
                image = decode_image(data, where=where, max_pixels=min(max_image_pixels, left))
            except ImageTooLarge as exc:
                w, h = exc.size
                if w * h > max_image_pixels:
                    raise APIError(400, f"{where}: image is {w}x{h} = {w * h} pixels, more than this server's limit of {max_image_pixels} (--max-image-pixels)", code="image_too_large", param=where) from None
                raise APIError(
                    400,
                    f"{where}: image is {w}x{h} = {w * h} pixels, which brings the request's images to {pixels + w * h} pixels, "
                    f"more than this server's limit of {max_request_pixels} per request (--max-request-pixels)",
                    code="request_pixels_too_large",
                    param=where,
                ) from None
            del data
            pixels += image.size[0] * image.size[1]
            image_tokens.append(counter.image_tokens(image, where) if counter is not None else None)
            images.append(image)
            parts.append({"type": "image"})
        messages.append({"role": role, "content": parts})
    try:
        return ChatRequest(messages, images), image_tokens
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_messages", param="messages") from exc


def _data_url_bytes(url: str, where: str) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URL (400 for anything else)."""
    if not url.startswith("data:"):
        raise APIError(400, f"{where}: only base64 data URLs (data:image/...;base64,...) are accepted; this server does not fetch remote images", code="invalid_image", param=where)
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
        raise APIError(400, f"{where}: expected 'data:image/<format>;base64,<data>', got {url[:40]!r}...", code="invalid_image", param=where)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, f"{where}: invalid base64 image data ({exc})", code="invalid_image", param=where) from exc


def decode_image(data: bytes, *, where: str, max_pixels: int) -> "PILImage":
    """Decode encoded image ``data`` to RGB, refusing more than ``max_pixels`` pixels before decoding.

    The server's one image decoder, :func:`vlm3.data.images.open_rgb` (vlm3's shared loader): PIL
    reads the header only, the pixel count is checked from it (:class:`ImageTooLarge`), and only
    then are the pixels decoded. Formats are limited to :data:`IMAGE_FORMATS`. Anything unreadable
    is a 400 ``invalid_image``.
    """
    from vlm3.data.images import ImageError, ImageTooLargeError, UnreadableImageError, open_rgb

    try:
        return open_rgb(data, max_pixels=max_pixels, where=where, formats=IMAGE_FORMATS)
    except ImageTooLargeError as exc:
        if exc.size is None:  # beyond PIL's own limit: PIL refused the header itself
            raise APIError(400, f"{where}: image is far larger than this server's limit of {max_pixels} pixels ({exc})", code="image_too_large", param=where) from exc
        raise ImageTooLarge(where, exc.size, max_pixels) from None
    except UnreadableImageError as exc:
        if exc.stage == "pixels":
            raise APIError(400, f"{where}: image data could not be decoded ({exc.detail})", code="invalid_image", param=where) from exc
        if exc.detail:
            raise APIError(400, f"{where}: not a readable image in an accepted format ({', '.join(IMAGE_FORMATS)}) ({exc.detail})", code="invalid_image", param=where) from exc
        raise APIError(400, f"{where}: {exc}", code="invalid_image", param=where) from exc
    except ImageError as exc:
        raise APIError(400, f"{where}: {exc}", code="invalid_image", param=where) from exc


def published_settings(model: str) -> dict[str, Any] | None:
    """What ``GET /v1/models`` publishes for a checkpoint folder: its ``vlm3.json`` as
    ``{task, settings}``; None for a model that has none (a hub id, a model not trained by vlm3)."""
    from vlm3.settings import read_model_settings

    trained = read_model_settings(model) if Path(model).is_dir() else None
    return None if trained is None else {"task": trained.task, "settings": trained.settings.model_dump(mode="json")}


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_concurrency: int = 1,
    max_batch_size: int = 8,
    device: str = "cpu",
    dtype: str | None = None,
    log_level: str = "info",
) -> None:
    """Load ``model`` with the local backend and serve it until interrupted."""
    import uvicorn

    from vlm3.models.local import LocalBackend

    backend = LocalBackend.from_pretrained(model, device=device, dtype=dtype, batch_size=max_batch_size)
    app = create_app(
        backend,
        model_name=model,
        api_key=api_key,
        max_image_pixels=max_image_pixels,
        max_request_pixels=max_request_pixels,
        max_request_bytes=max_request_bytes,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens_limit,
        max_batch_tokens=max_batch_tokens,
        max_queue=max_queue,
        max_concurrency=max_concurrency,
        max_batch_size=max_batch_size,
        vlm3=published_settings(model),
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = [
    "MAX_STOP_SEQUENCES",
    "UNSUPPORTED_OPTIONS",
    "APIError",
    "Batcher",
    "ChatCompletionRequest",
    "PromptCounter",
    "create_app",
    "cut_at_stop",
    "decode_image",
    "published_settings",
    "request_memory_bound",
    "serve",
]
