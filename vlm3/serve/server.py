"""An OpenAI-compatible HTTP server around a vlm3 backend (``vlm3 serve``).

Endpoints: ``POST /v1/chat/completions`` (text and ``image_url`` parts with base64 data URLs) and
``GET /v1/models``. Decoding is greedy: ``temperature`` must be absent or 0 (other values are
rejected with 400 rather than silently ignored; ``top_p`` / ``top_k`` / penalties are accepted and
ignored because greedy decoding does not use them). Remote image URLs are never fetched.

Requests queue and are answered in arrival order. Requests that wait together are run as one
batch (up to ``max_batch_size``, same ``max_tokens``); the local backend's answers do not depend
on batching. At most ``max_concurrency`` batches run at once.

Errors are JSON ``{"error": {"message", "type", "code"}}`` with 400 (malformed JSON, invalid image,
image larger than ``max_image_pixels``, unsupported option), 401 (bad API key), 404 (unknown model),
413 (body larger than ``max_request_bytes``) or 422 (wrong request schema).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlm3.models.backend import Backend, ChatRequest, Completion

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 4096


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
    """An error answered as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


# --- batching ------------------------------------------------------------------------------------


@dataclass
class _Job:
    request: ChatRequest
    max_tokens: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Queues requests and runs waiting ones together through ``backend.complete``."""

    def __init__(self, backend: Backend, max_batch_size: int, max_concurrency: int) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_concurrency = max_concurrency
        self._queue: asyncio.Queue[_Job] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._worker: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.max_concurrency)
        self._worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, *self._running, return_exceptions=True)

    async def submit(self, request: ChatRequest, max_tokens: int) -> Completion:
        if self._queue is None:
            raise RuntimeError("the server's batcher is not running (the app's lifespan was not started)")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(request, max_tokens, future))
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            job = await self._queue.get()
            # Wait for a free slot first, so that requests arriving meanwhile join this batch.
            await self._slots.acquire()
            batch = [job]
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            groups: dict[int, list[_Job]] = {}
            for j in batch:
                groups.setdefault(j.max_tokens, []).append(j)
            task = asyncio.create_task(self._run(list(groups.values())))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, groups: list[list[_Job]]) -> None:
        assert self._slots is not None
        try:
            for jobs in groups:
                live = [j for j in jobs if not j.future.done()]  # skip cancelled (disconnected) requests
                if not live:
                    continue
                try:
                    results = await asyncio.to_thread(
                        self.backend.complete, [j.request for j in live], live[0].max_tokens
                    )
                except Exception as exc:  # report to every waiting request
                    for j in live:
                        if not j.future.done():
                            j.future.set_exception(exc)
                    continue
                for j, r in zip(live, results):
                    if not j.future.done():
                        j.future.set_result(r)
        finally:
            self._slots.release()


# --- the app ---------------------------------------------------------------------------------------


def create_app(
    backend: Backend,
    *,
    model_name: str,
    api_key: str | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_concurrency: int = 1,
    max_batch_size: int = 8,
    vlm3: dict[str, Any] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``backend`` under the name ``model_name``.

    ``vlm3`` (the checkpoint's ``vlm3.json``: task and settings) is published with the model in
    ``GET /v1/models``, so clients ask questions the way the model was trained.
    """
    for name, value in (("max_image_pixels", max_image_pixels), ("max_request_bytes", max_request_bytes),
                        ("max_concurrency", max_concurrency), ("max_batch_size", max_batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    batcher = Batcher(backend, max_batch_size, max_concurrency)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="vlm3", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.kind, exc.code)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        # Every route needs the key when one is configured.
        if api_key is not None and not _key_ok(request.headers.get("authorization"), api_key):
            return _error(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", "authentication_error", "invalid_api_key")
        return await call_next(request)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        entry = {"id": model_name, "object": "model", "created": created, "owned_by": "vlm3"}
        return {"object": "list", "data": [{**entry, "vlm3": vlm3} if vlm3 is not None else entry]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        raw = await _read_body(request, max_request_bytes)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"request body is not valid JSON: {exc}") from exc
        try:
            body = ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            return _error(422, "invalid request: " + _describe(exc), code="invalid_schema")
        if body.model is not None and body.model != model_name:
            raise APIError(404, f"model {body.model!r} is not served here; this server serves {model_name!r}", code="model_not_found")
        if body.temperature not in (None, 0, 0.0):
            raise APIError(400, f"temperature must be 0 or absent (this server decodes greedily), got {body.temperature}", code="unsupported_value")
        if body.n != 1:
            raise APIError(400, f"n must be 1 (greedy decoding gives one answer), got {body.n}", code="unsupported_value")
        if body.stream:
            raise APIError(400, "stream=true is not supported", code="unsupported_value")
        max_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
        if max_tokens > MAX_TOKENS_LIMIT:
            raise APIError(400, f"max_tokens must be <= {MAX_TOKENS_LIMIT}, got {max_tokens}", code="unsupported_value")
        chat = _to_chat_request(body, max_image_pixels)
        try:
            result = await batcher.submit(chat, max_tokens)
        except Exception as exc:
            raise APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from exc
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


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)


def _key_ok(header: str | None, key: str) -> bool:
    if not header or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), key.encode())


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) anything over ``limit`` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {int(declared)} bytes, more than this server's limit of {limit} bytes (--max-request-bytes)", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body is more than this server's limit of {limit} bytes (--max-request-bytes)", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(exc: ValidationError) -> str:
    errors = exc.errors()
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _to_chat_request(body: ChatCompletionRequest, max_image_pixels: int) -> ChatRequest:
    """HF-format messages with ``{"type": "image"}`` placeholders, and the decoded images."""
    messages, images = [], []
    for i, message in enumerate(body.messages):
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": [{"type": "text", "text": message.content}]})
            continue
        parts = []
        for j, part in enumerate(message.content):
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            else:
                url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
                images.append(_decode_image(url, f"messages[{i}].content[{j}]", max_image_pixels))
                parts.append({"type": "image"})
        messages.append({"role": message.role, "content": parts})
    try:
        return ChatRequest(messages, images)
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc


def _decode_image(url: str, where: str, max_pixels: int):
    from PIL import Image, UnidentifiedImageError

    if not url.startswith("data:"):
        raise APIError(400, f"{where}: only base64 data URLs (data:image/...;base64,...) are accepted; this server does not fetch remote images", code="invalid_image")
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
        raise APIError(400, f"{where}: expected 'data:image/<format>;base64,<data>', got {url[:40]!r}...", code="invalid_image")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, f"{where}: invalid base64 image data ({exc})", code="invalid_image") from exc
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise APIError(400, f"{where}: image is far larger than this server's limit of {max_pixels} pixels ({exc})", code="image_too_large") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise APIError(400, f"{where}: not a readable image ({exc})", code="invalid_image") from exc
    w, h = image.size
    if w * h > max_pixels:
        raise APIError(400, f"{where}: image is {w}x{h} = {w * h} pixels, more than this server's limit of {max_pixels} (--max-image-pixels)", code="image_too_large")
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise APIError(400, f"{where}: image data could not be decoded ({exc})", code="invalid_image") from exc
    return image.convert("RGB")


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
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
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
        max_request_bytes=max_request_bytes,
        max_concurrency=max_concurrency,
        max_batch_size=max_batch_size,
        vlm3=published_settings(model),
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["APIError", "Batcher", "ChatCompletionRequest", "create_app", "published_settings", "serve"]
