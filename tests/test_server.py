"""The OpenAI-compatible server, run in-process with uvicorn on 127.0.0.1, and the HTTP backend against it."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from support import serve_in_thread
from vlm3.models.backend import single_turn

KEY = "test-key"
MAX_PIXELS = 200 * 200
MAX_BYTES = 300_000


def image(seed: int, w: int = 84, h: int = 56) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def served(answering_model):
    """(base URL, local backend) of a server running in a thread; stopped after the module."""
    import torch

    from vlm3.serve.server import create_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: extra threads only spin on a shared machine
    from vlm3.models.local import LocalBackend

    backend = LocalBackend.from_pretrained(answering_model, batch_size=8)
    app = create_app(
        backend, model_name="tiny", api_key=KEY, max_image_pixels=MAX_PIXELS, max_request_bytes=MAX_BYTES,
        max_concurrency=1, max_batch_size=8,
    )
    with serve_in_thread(app) as url:
        yield url, backend
    torch.set_num_threads(threads)


def post(url: str, body, *, key: str | None = KEY, raw: bytes | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(url + "/v1/chat/completions", content=content, headers=headers, timeout=60)


def chat(text: str, *images: Image.Image, **extra) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
    return {"model": "tiny", "messages": [{"role": "user", "content": parts + [{"type": "text", "text": text}]}],
            "max_tokens": 6, "temperature": 0, **extra}


def error_message(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


def test_http_backend_answers_equal_the_local_backend(served):
    from vlm3.models.openai_http import OpenAIBackend

    url, local = served
    img = image(1)
    questions = [f"How far is the pixel at ({x}, {y}) from the camera?" for x, y in [(1, 2), (1999, 40), (700, 700), (5, 1500)]]
    with OpenAIBackend(url, api_key=KEY, max_concurrency=4) as remote:
        assert remote.model == "tiny"  # asked the server's /v1/models
        got = remote.query_many([img], questions, max_new_tokens=6)
        (c,) = remote.complete([single_turn([img], questions[0], system="Answer in metres.")], max_new_tokens=6)
    assert got == local.query_many([img], questions, max_new_tokens=6)
    assert len(set(got)) > 1
    assert c.text == local.generate([single_turn([img], questions[0], system="Answer in metres.")], 6)[0]
    assert c.prompt_tokens > 10 and 1 <= c.completion_tokens <= 6 and c.finish_reason in ("stop", "length")


def test_response_format_and_models(served):
    url, _ = served
    r = post(url, chat("Object at (3, 4)?", image(2)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["object"] == "chat.completion"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    models = httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]


def test_fifty_concurrent_requests_all_complete(served):
    url, local = served
    imgs = [image(10 + i) for i in range(5)]
    questions = [f"How far is the pixel at ({37 * i}, {11 * i}) from the camera?" for i in range(5)]
    expected = [local.generate([single_turn([imgs[i % 5]], questions[i % 5])], 6)[0] for i in range(5)]

    def one(i: int) -> tuple[int, str]:
        r = post(url, chat(questions[i % 5], imgs[i % 5]))
        return r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text

    batches: list[int] = []
    complete = local.complete
    local.complete = lambda requests, n: batches.append(len(requests)) or complete(requests, n)
    try:
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(one, range(50)))
    finally:
        del local.complete
    assert [s for s, _ in results] == [200] * 50, results
    # Waiting requests were answered together; answers equal the one-at-a-time ones.
    assert sum(batches) == 50 and max(batches) > 1 and max(batches) <= 8
    assert [a for _, a in results] == [expected[i % 5] for i in range(50)]


def test_bad_api_key_is_401(served):
    url, _ = served
    for key in (None, "wrong"):
        r = post(url, chat("hi"), key=key)
        assert r.status_code == 401
        assert "API key" in error_message(r)
    assert httpx.get(url + "/v1/models").status_code == 401


def test_malformed_json_is_400(served):
    url, _ = served
    r = post(url, None, raw=b'{"messages": [')
    assert r.status_code == 400
    assert "not valid JSON" in error_message(r)


def test_wrong_schema_is_422_naming_the_field(served):
    url, _ = served
    r = post(url, {"messages": [{"role": "user", "content": [{"type": "audio", "data": "x"}]}]})
    assert r.status_code == 422 and "messages.0.content" in error_message(r)
    r = post(url, {"messages": []})
    assert r.status_code == 422 and "messages" in error_message(r)
    r = post(url, {**chat("hi"), "max_tokens": 0})
    assert r.status_code == 422 and "max_tokens" in error_message(r)


def test_oversized_image_is_400_and_oversized_body_413(served):
    url, _ = served
    r = post(url, chat("hi", image(3, 300, 200)))
    assert r.status_code == 400
    assert "300x200 = 60000 pixels" in error_message(r) and "--max-image-pixels" in error_message(r)
    r = post(url, chat("x" * (MAX_BYTES + 1)))
    assert r.status_code == 413 and "--max-request-bytes" in error_message(r)


def test_unsupported_options_and_images_are_400(served):
    url, _ = served
    cases = {
        "temperature must be 0": chat("hi", temperature=0.7),
        "stream": chat("hi", stream=True),
        "does not fetch remote images": {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}, {"type": "text", "text": "hi"}]}]},
        "invalid base64": {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]},
        "not a readable image": {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": "data:image/png;base64," + base64.b64encode(b"text").decode()}]}]},
    }
    for expected, body in cases.items():
        r = post(url, body)
        assert r.status_code == 400, (expected, r.text)
        assert expected in error_message(r)
    r = post(url, {**chat("hi"), "model": "other"})
    assert r.status_code == 404 and "'other'" in error_message(r)


def test_cli_serve_options():
    from typer.testing import CliRunner

    from vlm3.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--model", "--host", "--port", "--api-key", "--max-image-pixels", "--max-request-bytes", "--max-concurrency"):
        assert option in result.output
    assert "127.0.0.1" in result.output
