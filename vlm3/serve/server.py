"""An OpenAI-compatible HTTP server around a vlm3 backend (``vlm3 serve``).

Endpoints: ``POST /v1/chat/completions`` (text and ``image_url`` parts with base64 data URLs) and
``GET /v1/models``. Decoding is greedy: ``temperature`` must be absent or 0 (other values are
rejected with 400 rather than silently ignored; ``top_p`` / ``top_k`` / penalties are accepted and
ignored because greedy decoding does not use them). Remote image URLs are never fetched.

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

Errors are JSON ``{"error": {"message", "type", "param", "code"}}``:

====  =========================================================================================
400   malformed JSON (``invalid_json``); unsupported option (``unsupported_value``); ``max_tokens``
      over the cap (``max_tokens_too_large``); bad message structure (``invalid_messages``); bad or
      unreadable image (``invalid_image``); image over ``max_image_pixels`` (``image_too_large``);
      images over ``max_request_pixels`` together (``request_pixels_too_large``); text with special
      tokens (``invalid_text``); prompt over ``max_prompt_tokens`` (``prompt_too_long``); prompt +
      ``max_tokens`` over the model's context (``context_length_exceeded``); a request the model's
      processor rejects on its own at generation time (``invalid_input``)
401   missing or wrong API key (``invalid_api_key``)
404   unknown model (``model_not_found``)
413   body larger than ``max_request_bytes`` (``request_too_large``)
422   wrong request schema (``invalid_schema``)
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
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    # Unknown OpenAI fields (top_p, seed, user, ...) are accepted and ignored.
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
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart | ImagePart]


class ChatCompletionRequest(_Open):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    n: int = 1
    stream: bool = False


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
        try:
            body = ChatCompletionRequest.model_validate(data)
        except (ValidationError, RecursionError) as exc:
            detail = _describe(exc) if isinstance(exc, ValidationError) else "too deeply nested"
            raise APIError(422, "invalid request: " + detail, code="invalid_schema") from exc
        del data
        if body.model is not None and body.model != model_name:
            raise APIError(404, f"model {body.model!r} is not served here; this server serves {model_name!r}", code="model_not_found", param="model")
        if body.temperature not in (None, 0, 0.0):
            raise APIError(400, f"temperature must be 0 or absent (this server decodes greedily), got {body.temperature}", code="unsupported_value", param="temperature")
        if body.n != 1:
            raise APIError(400, f"n must be 1 (greedy decoding gives one answer), got {body.n}", code="unsupported_value", param="n")
        if body.stream:
            raise APIError(400, "stream=true is not supported", code="unsupported_value", param="stream")
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
        return _Prepared(chat, max_tokens)

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

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s", request.url.path, exc_info=exc)
        return APIError(500, f"internal server error: {type(exc).__name__}", "server_error", "internal_error").response()

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        # Every route needs the key when one is configured.
        if api_key is not None and not _key_ok(request.headers.get("authorization"), api_key):
            return APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", "authentication_error", "invalid_api_key").response()
        return await call_next(request)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        entry = {"id": model_name, "object": "model", "created": created, "owned_by": "vlm3"}
        return {"object": "list", "data": [{**entry, "vlm3": vlm3} if vlm3 is not None else entry]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
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
        prompt = result.prompt_tokens or 0
        completion = result.completion_tokens or 0
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "finish_reason": result.finish_reason or "stop",
                    }
                ],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
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


def _describe(exc: ValidationError) -> str:
    errors = exc.errors()
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _to_chat_request(
    body: ChatCompletionRequest, max_image_pixels: int, max_request_pixels: int, counter: PromptCounter | None
) -> tuple[ChatRequest, list[int | None]]:
    """HF-format messages with ``{"type": "image"}`` placeholders, the decoded images, and the tokens
    each image becomes (None where unknown); 400 for any text or image the server refuses."""
    messages, images, image_tokens = [], [], []
    pixels = 0
    for i, message in enumerate(body.messages):
        if isinstance(message.content, str):
            if counter is not None:
                counter.check_text(message.content, f"messages[{i}].content")
            messages.append({"role": message.role, "content": [{"type": "text", "text": message.content}]})
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
        messages.append({"role": message.role, "content": parts})
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
    "APIError",
    "Batcher",
    "ChatCompletionRequest",
    "PromptCounter",
    "create_app",
    "decode_image",
    "published_settings",
    "request_memory_bound",
    "serve",
]
