"""A client for OpenAI-compatible chat-completions servers: ``vllm serve``, SGLang, ``vlm3 serve``.

Each request becomes one ``POST {base}/v1/chat/completions`` with the images as base64 PNG data
URLs in ``image_url`` parts (where the chat has its ``{"type": "image"}`` placeholders, i.e. before
the text in vlm3's prompts), ``temperature=0`` and ``max_tokens``. Requests run concurrently on a
thread pool (at most ``max_concurrency`` in flight) over one connection pool, and are retried with
exponential backoff on 429, 5xx and connection errors. ``query_many`` sends independent requests
with byte-identical image prefixes, which servers with prefix caching (vLLM, SGLang) reuse.
"""

from __future__ import annotations

import base64
import io
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Sequence

from vlm3.models.backend import Backend, ChatRequest, Completion

if TYPE_CHECKING:
    import httpx
    from PIL.Image import Image

#: Status codes worth retrying: rate limiting and server-side failures.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class BackendError(RuntimeError):
    """A request that failed for good (a 4xx answer, or retries exhausted)."""


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


class OpenAIBackend(Backend):
    """Greedy chat completions from an OpenAI-compatible server.

    Args:
        base_url: ``http://host:port`` or ``http://host:port/v1``.
        model: model name to request; ``None`` asks the server (``GET /v1/models``) and uses its only model.
        api_key: sent as ``Authorization: Bearer KEY``.
        max_concurrency: requests in flight at once.
        timeout: seconds per attempt (connect, read, write).
        max_retries: retries after the first attempt on 429 / 5xx / connection errors.
        backoff: first retry delay in seconds; doubled each retry (with jitter), capped at ``max_backoff``.
            A ``Retry-After`` header (seconds) is honoured up to ``max_backoff``.
        extra_body: extra JSON fields for every request (e.g. ``{"top_k": 1}`` for a server that needs it).
        transport: a custom ``httpx`` transport (proxies, mounting an app in tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        extra_body: dict[str, Any] | None = None,
        transport: "httpx.BaseTransport | None" = None,
    ) -> None:
        import httpx

        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = _v1(base_url)
        self.max_concurrency = int(max_concurrency)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.extra_body = dict(extra_body or {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, limits=limits, transport=transport
        )
        self.model = model if model is not None else self._only_model()
        self.name = f"{self.base_url} ({self.model})"

    # --- public API -------------------------------------------------------------------------------

    def generate(self, requests: Sequence[ChatRequest], max_new_tokens: int = 64) -> list[str]:
        """Greedy answers, one HTTP request each, ``max_concurrency`` at a time."""
        return [c.text for c in self.complete(requests, max_new_tokens)]

    def complete(self, requests: Sequence[ChatRequest], max_new_tokens: int = 64) -> list[Completion]:
        """:meth:`generate` with the server's token counts and finish reasons."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
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
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(payloads))) as pool:
            return list(pool.map(self._post, payloads))

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
        body = self._request("POST", "/chat/completions", json=payload)
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"{self.base_url}/chat/completions answered without choices[0].message.content: {body!r:.300}") from exc
        usage = body.get("usage") or {}
        return Completion(
            text if isinstance(text, str) else "",
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            choice.get("finish_reason"),
        )

    def served_settings(self) -> dict[str, Any] | None:
        """The model's ``vlm3.json`` as the server publishes it in ``GET /v1/models`` (``vlm3 serve``
        does), or None when the server does not say."""
        body = self._request("GET", "/models")
        for entry in body.get("data", []) if isinstance(body, dict) else []:
            if isinstance(entry, dict) and entry.get("id") == self.model and isinstance(entry.get("vlm3"), dict):
                return entry["vlm3"]
        return None

    def _only_model(self) -> str:
        body = self._request("GET", "/models")
        ids = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
        if len(ids) != 1:
            raise BackendError(f"{self.base_url}/models lists {ids!r}; pass model=... to choose one")
        return str(ids[0])

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call with retries; returns the decoded JSON body."""
        import httpx

        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # connection refused / reset, timeouts
                if last:
                    raise BackendError(f"{method} {url} failed after {attempt + 1} attempt(s): {exc!r}") from exc
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUS and not last:
                time.sleep(self._delay(attempt, response.headers.get("retry-after")))
                continue
            if response.status_code >= 400:
                raise BackendError(
                    f"{method} {url} answered {response.status_code} after {attempt + 1} attempt(s): "
                    f"{_error_message(response)}"
                )
            try:
                return response.json()
            except ValueError as exc:
                raise BackendError(f"{method} {url} answered non-JSON: {response.text[:300]!r}") from exc
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff)
            except ValueError:
                pass  # an HTTP date: fall back to exponential backoff
        # Full jitter keeps many clients from retrying in lockstep.
        return min(self.backoff * 2**attempt, self.max_backoff) * (0.5 + 0.5 * random.random())


def _v1(base_url: str) -> str:
    """``http://host:port[/v1][/chat/completions]`` -> ``http://host:port/v1``."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    return url if url.endswith("/v1") else url + "/v1"


def _error_message(response: "httpx.Response") -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:500]


__all__ = ["BackendError", "OpenAIBackend", "image_data_url", "to_openai_messages", "RETRY_STATUS"]
