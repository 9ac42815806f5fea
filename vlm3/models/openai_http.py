"""A client for OpenAI-compatible chat-completions servers: ``vllm serve``, SGLang, ``vlm3 serve``.

Each request becomes one ``POST {base}/v1/chat/completions`` with the images as base64 PNG data
URLs in ``image_url`` parts (where the chat has its ``{"type": "image"}`` placeholders, i.e. before
the text in vlm3's prompts), ``temperature=0`` and ``max_tokens``. Requests go through the official
``openai`` client (its retries with exponential backoff on timeouts, connection errors, 408, 409,
429 and 5xx, honouring ``Retry-After``) over one ``httpx`` connection pool, at most
``max_concurrency`` in flight. ``query_many`` sends independent requests with byte-identical image
prefixes, which servers with prefix caching (vLLM, SGLang) reuse; the first of them goes alone, so
the prefix is cached before the others arrive.

Bounds (every request): ``timeout`` seconds per attempt (connect, each read, write),
``max_retries`` retries, ``total_timeout`` seconds per question over all its attempts and the
waits between them, and ``max_answer_bytes`` per answer (a longer body is not read further, nor
parsed). A silent server therefore costs each question at most ``total_timeout`` (plus at most
one backoff wait, <= 1 s with 2 retries), and a call of N questions at most
``ceil(N / max_concurrency) * total_timeout`` (``(1 + ceil((N - 1) / max_concurrency)) *
total_timeout`` for N questions about the same images, whose first goes alone).

Failures: a question whose request still fails after its retries -- a timeout, a connection
refused or reset, a persistent 408/409/429/5xx, the total timeout, a body that is not JSON or has
no ``choices[0].message.content``, an answer over ``max_answer_bytes`` -- is a *counted failure*:
:meth:`OpenAIBackend.complete` returns ``Completion(text="", finish_reason="error")`` for it
(:data:`FAILED`), warns once per kind of cause on stderr and counts it in
:attr:`OpenAIBackend.failures`. A refused API key (401/403) or any other refused request (4xx:
wrong model name, an image over the server's limit) raises :class:`BackendError` at once: a
configuration error that would fail every question. So does any failure of ``GET /v1/models``
(the first request, when the model is looked up or its settings read): a server that cannot be
reached at startup is an error, not an evaluation of failures.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Sequence

from vlm3.models.backend import Backend, ChatRequest, Completion

if TYPE_CHECKING:
    import httpx
    from PIL.Image import Image

#: Seconds per attempt (connect, each read, write): a non-streaming answer arrives in one read,
#: so this is the longest a generation may take.
DEFAULT_TIMEOUT = 60.0
#: Retries after the first attempt (timeouts, connection errors, 408, 409, 429, 5xx).
DEFAULT_MAX_RETRIES = 2
#: Seconds per question over all its attempts and the waits between them.
DEFAULT_TOTAL_TIMEOUT = 180.0
#: Bytes per answer body (1 MiB: ~50x the longest answer vlm3's profiles ask for).
DEFAULT_MAX_ANSWER_BYTES = 1 << 20
#: Requests in flight at once.
DEFAULT_MAX_CONCURRENCY = 8

#: ``Completion.finish_reason`` of a question whose request failed (a counted failure).
FAILED = "error"

#: The command-line flags of ``vlm3 eval`` and ``vlm3 predict`` that set these options:
#: option -> (flag, help). :func:`vlm3.models.backend.http_options` maps the flags to options.
HTTP_FLAGS: dict[str, tuple[str, str]] = {
    "timeout": (
        "--http-timeout",
        f"HTTP models: seconds per attempt (connect, each read, write); a whole answer must arrive within it. Default {DEFAULT_TIMEOUT:g}.",
    ),
    "max_retries": (
        "--http-retries",
        "HTTP models: retries after a timeout, a connection error, 408/409/429 or 5xx (waits 0.5 s, 1 s, ... or the server's "
        f"Retry-After). Default {DEFAULT_MAX_RETRIES}.",
    ),
    "total_timeout": (
        "--http-total-timeout",
        "HTTP models: seconds per question over all its attempts and waits; then it counts as failed. The questions about one "
        f"image run --batch-size (default {DEFAULT_MAX_CONCURRENCY}) at a time, so even a silent server ends within about "
        f"ceil(questions / batch) x this per image. Default {DEFAULT_TOTAL_TIMEOUT:g}.",
    ),
    "max_answer_bytes": (
        "--http-max-answer-bytes",
        f"HTTP models: longest answer body read, in bytes; a longer answer is not parsed and its question counts as failed. Default {DEFAULT_MAX_ANSWER_BYTES}.",
    ),
}

# Headers of the synthetic answer the transport gives when it stops a request itself (total
# timeout, oversized answer): the openai client does not retry it, vlm3 reads the cause back.
_STOP_HEADER = "x-vlm3-failure"
_NO_PLACEHOLDER_KEY = "vlm3-no-api-key"  # openai needs a key; it is never sent (see __init__)


class BackendError(RuntimeError):
    """A request that failed for good where failing it quietly would hide a configuration error:
    a refused API key or request (4xx), or any failure of ``GET /v1/models``."""


def image_data_url(image: "Image") -> str:
    """A ``data:image/png;base64,...`` URL of ``image`` (PNG: lossless, so the server sees the same pixels)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_openai_messages(request: ChatRequest, urls: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The request's chat in OpenAI format; ``{"type": "image"}`` parts become ``image_url`` parts.

    ``urls`` are the images' data URLs (computed from ``request.images`` when not given).
    """
    urls = list(urls) if urls is not None else [image_data_url(im) for im in request.images]
    k = 0
    messages = []
    for message in request.messages:
        content = message["content"]
        if not isinstance(content, str):
            parts = []
            for part in content:
                if part["type"] == "image":
                    parts.append({"type": "image_url", "image_url": {"url": urls[k]}})
                    k += 1
                else:
                    parts.append({"type": "text", "text": part["text"]})
            content = parts
        messages.append({"role": message["role"], "content": content})
    return messages


class _Failed(Exception):
    """A request that failed for good; ``kind`` groups causes for the one-time warnings."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class OpenAIBackend(Backend):
    """Greedy chat completions from an OpenAI-compatible server.

    Args:
        base_url: ``http://host:port`` or ``http://host:port/v1``.
        model: model name to request; ``None`` asks the server (``GET /v1/models``) and uses its only model.
        api_key: sent as ``Authorization: Bearer KEY``; ``None`` sends no ``Authorization`` header
            (and never the ``OPENAI_API_KEY`` / ``OPENAI_ORG_ID`` / ... of the environment).
        max_concurrency: requests in flight at once.
        timeout: seconds per attempt (connect, each read, write).
        total_timeout: seconds per question over all attempts and backoff waits; ``None``: no cap.
        max_retries: retries after the first attempt on timeouts, connection errors, 408, 409, 429
            and 5xx (the openai client's exponential backoff from 0.5 s, capped at 8 s, with jitter;
            a ``Retry-After`` that would end past the total timeout stops the retries).
        max_answer_bytes: the most bytes of an answer body read; a longer answer is a failure.
        extra_body: extra JSON fields for every request (e.g. ``{"top_k": 1}`` for a server that needs it).
        transport: a custom ``httpx`` transport (proxies, mounting an app in tests).

    See the module docstring for which failures are counted and which raise :class:`BackendError`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        extra_body: dict[str, Any] | None = None,
        transport: "httpx.BaseTransport | None" = None,
    ) -> None:
        import httpx
        import openai

        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if not _positive(timeout):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if total_timeout is not None and not _positive(total_timeout):
            raise ValueError(f"total_timeout must be a positive number of seconds or None, got {total_timeout!r}")
        if isinstance(max_answer_bytes, bool) or not isinstance(max_answer_bytes, int) or max_answer_bytes < 1:
            raise ValueError(f"max_answer_bytes must be an integer >= 1, got {max_answer_bytes!r}")
        self.base_url = _v1(base_url)
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.total_timeout = None if total_timeout is None else float(total_timeout)
        self.max_retries = int(max_retries)
        self.max_answer_bytes = int(max_answer_bytes)
        self.extra_body = dict(extra_body or {})
        #: Failed requests so far, by kind of cause (``"timeout"``, ``"HTTP 503"``, ``"no choices"``, ...).
        self.failures: Counter[str] = Counter()
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._state = threading.local()  # this thread's request: deadline, attempts sent

        # Connections are not capped here: the thread pool caps requests in flight, and a cap
        # below a max_concurrency raised later would make requests time out waiting for one.
        # A client given a transport ignores the proxy variables: they are read here instead.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=self.max_concurrency)
        inner = transport or httpx.HTTPTransport(limits=limits, proxy=_env_proxy(self.base_url))
        http = httpx.Client(transport=_guard(inner, self), timeout=httpx.Timeout(self.timeout))
        # Only what vlm3 chooses goes to the server: never the OPENAI_* credentials, organization,
        # project or custom headers of the environment (the openai client reads them by default).
        drop: dict[str, Any] = {name: openai.Omit() for name in ("OpenAI-Organization", "OpenAI-Project", *_env_header_names())}
        auth: dict[str, Any] = {"Authorization": f"Bearer {api_key}" if api_key else openai.Omit()}
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or _NO_PLACEHOLDER_KEY,
            timeout=self.timeout,
            max_retries=self.max_retries,
            http_client=http,
            default_headers={**drop, **auth},
        )
        # Without a key the header is omitted per request too (the openai client's way to say
        # "no authentication on purpose").
        self._options: dict[str, Any] = {} if api_key else {"headers": {"Authorization": openai.Omit()}}
        try:
            self.model = model if model is not None else self._only_model()
        except BaseException:
            self.close()  # no connection left open by a server that failed the model lookup
            raise
        self.name = f"{self.base_url} ({self.model})"

    # --- public API -------------------------------------------------------------------------------

    def generate(self, requests: Sequence[ChatRequest], max_new_tokens: int = 64) -> list[str]:
        """Greedy answers, one HTTP request each, ``max_concurrency`` at a time ("" for a failed request)."""
        return [c.text for c in self.complete(requests, max_new_tokens)]

    def complete(self, requests: Sequence[ChatRequest], max_new_tokens: int = 64) -> list[Completion]:
        """:meth:`generate` with the server's token counts and finish reasons; a request that
        failed for good gives ``Completion("", finish_reason="error")`` (see the module docstring)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        # Encode each distinct image object once: query_many's requests all share the same images.
        urls: dict[int, str] = {}
        payloads = []
        for r in requests:
            for im in r.images:
                if id(im) not in urls:
                    urls[id(im)] = image_data_url(im)
            payloads.append(self._payload(r, [urls[id(im)] for im in r.images], max_new_tokens))
        if len(payloads) <= 1:
            return [self._post(p) for p in payloads]
        first: list[Completion] = []
        if len({tuple(id(im) for im in r.images) for r in requests}) == 1 and requests[0].images:
            # Questions about the same images (query_many): the first goes alone, so a server with
            # prefix caching (vLLM, SGLang) holds the image prefix before the rest arrive.
            first, payloads = [self._post(payloads[0])], payloads[1:]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(payloads))) as pool:
            return first + list(pool.map(self._post, payloads))

    def served_settings(self) -> dict[str, Any] | None:
        """The model's ``vlm3.json`` as the server publishes it in ``GET /v1/models`` (``vlm3 serve``
        does), or None when the server does not say."""
        body = self._models()
        for entry in body.get("data", []) if isinstance(body, dict) else []:
            if isinstance(entry, dict) and entry.get("id") == self.model and isinstance(entry.get("vlm3"), dict):
                return entry["vlm3"]
        return None

    def close(self) -> None:
        self._client.close()

    # --- internals --------------------------------------------------------------------------------

    def _payload(self, request: ChatRequest, urls: list[str], max_new_tokens: int) -> dict[str, Any]:
        return {
            **self.extra_body,
            "model": self.model,
            "messages": to_openai_messages(request, urls),
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "n": 1,
            "stream": False,
        }

    def _post(self, payload: dict[str, Any]) -> Completion:
        """One question: its completion, or a counted failure (:data:`FAILED`)."""
        try:
            body = self._send("POST", "chat/completions", payload)
            try:
                choice = body["choices"][0]
                text = choice["message"]["content"]
                finish = choice.get("finish_reason")
            except (KeyError, IndexError, TypeError, AttributeError):
                raise _Failed("no choices", f"POST {self.base_url}/chat/completions answered without choices[0].message.content: {_short(body)}") from None
        except _Failed as failure:
            self._count(failure)
            return Completion("", None, None, FAILED)
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return Completion(
            text if isinstance(text, str) else "",
            _int_or_none(usage.get("prompt_tokens")),
            _int_or_none(usage.get("completion_tokens")),
            finish if isinstance(finish, str) else None,
        )

    def _models(self) -> Any:
        """``GET /v1/models``; every failure is a :class:`BackendError` (a server not there at all)."""
        try:
            return self._send("GET", "models")
        except _Failed as failure:
            raise BackendError(str(failure)) from None

    def _only_model(self) -> str:
        body = self._models()
        data = body.get("data") if isinstance(body, dict) else None
        ids = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
        if len(ids) != 1:
            raise BackendError(f"{self.base_url}/models lists {ids!r}; pass model=... (--served-model-name) to choose one")
        return str(ids[0])

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call through the openai client (its retries) within the total timeout; the decoded
        JSON body. Raises :class:`_Failed` (retries spent, total timeout, oversized, not JSON) or
        :class:`BackendError` (a refused key or request)."""
        import httpx
        import openai

        url = f"{self.base_url}/{path}"
        state = self._state
        state.deadline = None if self.total_timeout is None else time.monotonic() + self.total_timeout
        state.attempts = 0
        try:
            if method == "GET":
                response = self._client.get(path, cast_to=httpx.Response, options=self._options)
            else:
                response = self._client.post(path, cast_to=httpx.Response, body=body, options=self._options)
        except openai.APIStatusError as e:
            attempts = _attempts(state.attempts)
            stop = e.response.headers.get(_STOP_HEADER)
            message = _server_message(e)
            if stop:
                raise _Failed(stop, f"{method} {url}: {message} ({attempts})") from None
            status = e.status_code
            if status in (401, 403):
                raise BackendError(
                    f"{method} {url} answered {status}: the server refused the API key (missing or invalid API key? "
                    f"check --api-key / VLM3_API_KEY): {message}"
                ) from None
            if _retried(status):
                raise _Failed(f"HTTP {status}", f"{method} {url} answered {status} ({attempts}): {message}") from None
            raise BackendError(f"{method} {url} answered {status} ({attempts}): {message}") from None
        except openai.APITimeoutError:
            raise _Failed("timeout", f"{method} {url}: no answer within {self.timeout:g} s ({_attempts(state.attempts)})") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise _Failed("connection", f"{method} {url} failed ({_attempts(state.attempts)}): {type(cause).__name__}: {cause}") from None
        finally:
            state.deadline = None
        try:
            return json.loads(response.content)
        except ValueError:
            raise _Failed("not JSON", f"{method} {url} answered {response.status_code} with a body that is not JSON: {response.content[:200]!r}") from None

    def _count(self, failure: _Failed) -> None:
        with self._lock:
            self.failures[failure.kind] += 1
            first = failure.kind not in self._warned
            self._warned.add(failure.kind)
        if first:
            print(
                f"warning: a request failed for good and its question counts as failed: {failure}; "
                f"further failures of this kind ({failure.kind}) are counted without a warning",
                file=sys.stderr,
                flush=True,
            )


def _guard(inner: "httpx.BaseTransport", owner: OpenAIBackend) -> "httpx.BaseTransport":
    """The :class:`_Guard` transport over ``inner`` (the class is made on first use: httpx is
    imported lazily, so that importing this module stays cheap)."""
    global _Guard
    if _Guard is None:
        import httpx

        _Guard = type("_Guard", (_GuardMixin, httpx.BaseTransport), {})
    return _Guard(inner, owner)


_Guard: type | None = None


class _GuardMixin:
    """The transport under the openai client: per-question deadline and answer-size cap.

    Each attempt's timeouts are cut to the time left before the question's deadline; once it has
    passed (before an attempt, or while one waits), or once an answer outgrows
    ``max_answer_bytes``, the attempt ends with a synthetic answer the openai client does not retry
    (``x-should-retry: false``) naming the cause. A ``Retry-After`` that ends past the deadline
    stops the retries too. The body is read (and decoded) here, so its size is checked as it comes.
    """

    def __init__(self, inner: "httpx.BaseTransport", owner: OpenAIBackend) -> None:
        self._inner = inner
        self._owner = owner

    def handle_request(self, request: "httpx.Request") -> "httpx.Response":
        import httpx

        owner, state = self._owner, self._owner._state
        deadline = getattr(state, "deadline", None)
        clamped = False
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._stop(request, 504, "timeout", self._late())
            timeouts = dict(request.extensions.get("timeout") or {})
            for key in ("connect", "read", "write", "pool"):
                if timeouts.get(key) is None or timeouts[key] > left:
                    timeouts[key] = left
                    clamped = True
            request.extensions["timeout"] = timeouts
        state.attempts = getattr(state, "attempts", 0) + 1
        try:
            response = self._inner.handle_request(request)
        except httpx.TimeoutException:
            if clamped:  # the wait that ran out was the time left: the deadline has passed
                return self._stop(request, 504, "timeout", self._late())
            raise
        try:
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > owner.max_answer_bytes:
                return self._stop(request, 502, "oversized", self._oversized(f"{int(length)} bytes"))
            raw = httpx.Response(response.status_code, headers=response.headers, stream=response.stream, request=request)
            chunks, size = [], 0
            for chunk in raw.iter_bytes():  # decoded (gzip, ...) as it arrives
                size += len(chunk)
                if size > owner.max_answer_bytes:
                    return self._stop(request, 502, "oversized", self._oversized(f"more than {owner.max_answer_bytes} bytes"))
                chunks.append(chunk)
                if deadline is not None and time.monotonic() > deadline:
                    return self._stop(request, 504, "timeout", self._late())
        except httpx.TimeoutException:
            if clamped:
                return self._stop(request, 504, "timeout", self._late())
            raise
        finally:
            response.close()
        skip = {"content-encoding", "content-length", "transfer-encoding"}
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in skip]
        if deadline is not None and _retried(response.status_code):
            wait = _retry_after(response.headers)
            if wait is not None and wait >= deadline - time.monotonic():
                headers.append(("x-should-retry", "false"))  # the retry could not start in time
        return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks), request=request, extensions=response.extensions)

    def close(self) -> None:
        self._inner.close()

    def _late(self) -> str:
        o = self._owner
        return f"no answer within the total timeout of {o.total_timeout:g} s (at most {o.timeout:g} s per attempt, {o.max_retries} retries)"

    def _oversized(self, size: str) -> str:
        return f"an answer of {size}, over max_answer_bytes={self._owner.max_answer_bytes} (not parsed)"

    @staticmethod
    def _stop(request: "httpx.Request", status: int, kind: str, message: str) -> "httpx.Response":
        import httpx

        headers = {"x-should-retry": "false", _STOP_HEADER: kind}
        return httpx.Response(status, headers=headers, json={"error": {"message": message}}, request=request)


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0 and value != float("inf")


def _retried(status: int) -> bool:
    """Statuses the openai client retries: request timeout, conflict, rate limit, server errors."""
    return status in (408, 409, 429) or status >= 500


def _retry_after(headers: Any) -> float | None:
    """Seconds a ``Retry-After-Ms`` / ``Retry-After`` (numeric) header asks to wait, else None."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers.get(name)) / scale
        except (TypeError, ValueError):
            continue
    return None


def _attempts(n: int) -> str:
    return f"after {n} attempt{'s' if n != 1 else ''}"


def _server_message(e: Any) -> str:
    """The ``error.message`` (or ``detail``) of an error answer, else its text."""
    body = getattr(e, "body", None)
    if isinstance(body, str) and body:
        return body[:500]
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if isinstance(body.get(key), str):
                return body[key]
    try:
        text = e.response.text
    except Exception:
        text = ""
    return (text or str(e))[:500]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:300] + "..."


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _env_proxy(url: str) -> str | None:
    """The proxy ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` name for ``url``, unless
    ``NO_PROXY`` exempts its host (what httpx does for a client without a transport)."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxy


def _env_header_names() -> list[str]:
    """Names of the headers the openai client would add from ``OPENAI_CUSTOM_HEADERS``."""
    names = []
    for line in os.environ.get("OPENAI_CUSTOM_HEADERS", "").split("\n"):
        if ":" in line and line.split(":", 1)[0].strip():
            names.append(line.split(":", 1)[0].strip())
    return names


def _v1(base_url: str) -> str:
    """``http://host:port[/v1][/chat/completions]`` -> ``http://host:port/v1``."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    return url if url.endswith("/v1") else url + "/v1"


__all__ = [
    "BackendError",
    "FAILED",
    "HTTP_FLAGS",
    "OpenAIBackend",
    "image_data_url",
    "to_openai_messages",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TOTAL_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_ANSWER_BYTES",
    "DEFAULT_MAX_CONCURRENCY",
]
