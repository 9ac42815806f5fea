"""The OpenAI-compatible server, run in-process with uvicorn on 127.0.0.1, and the HTTP backend against it."""

from __future__ import annotations

import base64
import io
import json
import threading
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


def test_wrong_schema_is_400_naming_the_field(served):
    url, _ = served
    cases = [
        ({"messages": [{"role": "user", "content": [{"type": "audio", "data": "x"}]}]}, "messages[0].content[0].type"),
        ({"messages": []}, "messages"),
        ({**chat("hi"), "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"model": "tiny"}, "messages"),
    ]
    for body, param in cases:
        r = post(url, body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param and param in error["message"], error


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
        "logprobs": chat("hi", logprobs=True),
        "n must be 1": chat("hi", n=3),
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
    for option in ("--model", "--host", "--port", "--api-key", "--max-image-pixels", "--max-request-bytes", "--max-concurrency",
                   "--max-request-pixels", "--max-prompt-tokens", "--max-tokens-limit", "--max-batch-tokens", "--max-queue"):
        assert option in result.output
    assert "127.0.0.1" in result.output
    assert "Retry-After" in result.output and "5.9 GB" in result.output  # the queue's memory bound is stated


# --- robustness: one bad request fails only itself; bounded queue, prompts, decode work, memory ----

G_MAX_PIXELS = 1000 * 1000  # per image and per request
G_MAX_BYTES = 256 * 1024
G_MAX_PROMPT = 400
G_MAX_TOKENS = 64
G_QUEUE = 50
G_THREADS = 2


def flat(w: int, h: int, colour=(90, 120, 150)) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


def guarded_app(backend, **overrides):
    from vlm3.serve.server import create_app

    options = dict(
        model_name="tiny", api_key=KEY, max_image_pixels=G_MAX_PIXELS, max_request_pixels=G_MAX_PIXELS,
        max_request_bytes=G_MAX_BYTES, max_prompt_tokens=G_MAX_PROMPT, max_tokens_limit=G_MAX_TOKENS,
        max_batch_tokens=G_MAX_TOKENS, max_queue=G_QUEUE, max_concurrency=1, max_batch_size=8,
        preprocess_threads=G_THREADS,
    )
    return create_app(backend, **{**options, **overrides})


@pytest.fixture(scope="module")
def guarded(answering_model):
    """(base URL, app, local backend) of a server with small caps, in a thread."""
    import torch

    from vlm3.models.local import LocalBackend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    backend = LocalBackend.from_pretrained(answering_model, batch_size=8)
    app = guarded_app(backend)
    with serve_in_thread(app) as url:
        yield url, app, backend
    torch.set_num_threads(threads)


def valid_requests(n: int) -> list[dict]:
    """Varied valid requests: one or two images, text only, a system prompt, different max_tokens."""
    imgs = [image(100 + i) for i in range(4)]
    out = []
    for i in range(n):
        question = f"How far is the pixel at ({13 * i}, {7 * i}) from the camera?"
        if i % 5 == 3:
            body = chat(question)
        elif i % 5 == 4:
            body = chat(question, imgs[i % 4], imgs[(i + 1) % 4])
        else:
            body = chat(question, imgs[i % 4])
        if i % 3 == 0:
            body["messages"].insert(0, {"role": "system", "content": "Answer in metres."})
        body["max_tokens"] = (4, 6, 8)[i % 3]
        out.append(body)
    return out


def poisoned_requests() -> dict[str, dict]:
    """code expected -> a request that must be refused alone (each would have failed its batch)."""
    return {
        "invalid_image": chat("How far?", flat(10000, 20)),  # 200000 px: under the caps; aspect ratio 500 > 200
        "invalid_image ": chat("How far?", image(5), flat(30, 7000)),  # aspect ratio 233
        "prompt_too_long": chat("How far is the pixel from the camera? " * 60, image(6)),
        "max_tokens_too_large": {**chat("How far?", image(7)), "max_tokens": G_MAX_TOKENS + 1},
        "invalid_text": chat("How far is <|image_pad|> from the camera?", image(8)),
    }


def answer(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_poisoned_requests_fail_alone_and_valid_answers_equal_serial_ones(guarded):
    url, app, _ = guarded
    valid = valid_requests(45)
    poisoned = poisoned_requests()
    bodies = valid + list(poisoned.values())
    order = list(range(len(bodies)))
    np.random.default_rng(0).shuffle(order)  # poisoned ones interleaved with valid ones
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = dict(zip(order, pool.map(lambda i: post(url, bodies[i]), order)))
    batcher = app.state.batcher
    assert batcher.isolated == 0  # every bad request was refused before batching
    for k, code in enumerate(poisoned):
        r = responses[45 + k]
        assert 400 <= r.status_code < 500, (code, r.status_code, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code.strip(), error
    assert "aspect ratio" in responses[45].json()["error"]["message"]
    assert responses[46].json()["error"]["param"] == "messages[0].content[1]"
    assert f"limit of {G_MAX_PROMPT} tokens (--max-prompt-tokens)" in error_message(responses[47])
    assert f"<= {G_MAX_TOKENS}" in error_message(responses[48])
    concurrent = [answer(responses[i]) for i in range(45)]
    serial = [answer(post(url, body)) for body in valid]
    assert concurrent == serial
    assert len(set(serial)) > 1


def test_queue_full_is_503_with_retry_after_and_memory_stays_bounded(guarded):
    """50 requests with large-but-allowed images queued behind a blocked model: the 51st is 503 with
    Retry-After, and the process's RSS grows by no more than the bound the caps give
    (``request_memory_bound``: G_QUEUE x 4 bytes x G_MAX_PIXELS for the decoded images held, plus
    G_THREADS x (4 x G_MAX_BYTES + 8 x G_MAX_PIXELS) transient while validating: about 219 MB)."""
    import gc

    import psutil

    from vlm3.models.backend import Completion
    from vlm3.serve.server import request_memory_bound

    url, app, backend = guarded
    bodies = [chat(f"How far is the pixel at ({i}, {i})?", flat(1000, 1000, (i, 2 * i, 3 * i)), max_tokens=2) for i in range(G_QUEUE)]
    payloads = [json.dumps(b).encode() for b in bodies]
    assert max(len(p) for p in payloads) < G_MAX_BYTES  # flat images: small bodies, 4 MB each decoded
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=G_QUEUE + 8))
    pool = ThreadPoolExecutor(G_QUEUE)
    answer(client.post(url + "/v1/chat/completions", content=payloads[0], headers=headers))  # warm-up
    # The model is held until the queue is measured, then answers without running (speed).
    gate = threading.Event()
    backend.complete = lambda requests, n: gate.wait(60) and [Completion("ok", 1, 1, "stop") for _ in requests]
    batcher, admission = app.state.batcher, app.state.admission
    try:
        gc.collect()
        process = psutil.Process()
        before = process.memory_info().rss
        futures = [pool.submit(client.post, url + "/v1/chat/completions", content=p, headers=headers) for p in payloads]
        deadline = time.monotonic() + 30
        while batcher.waiting + batcher.running < G_QUEUE:  # all validated and decoded, none answered
            assert time.monotonic() < deadline, (batcher.waiting, batcher.running, admission.count)
            time.sleep(0.05)
        grown = process.memory_info().rss - before
        assert admission.count == G_QUEUE
        r = client.post(url + "/v1/chat/completions", content=payloads[0], headers=headers)
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "queue_full" and f"--max-queue {G_QUEUE}" in error_message(r)
    finally:
        gate.set()
        results = [f.result() for f in futures]
        del backend.complete
        pool.shutdown()
        client.close()
    assert [r.status_code for r in results] == [200] * G_QUEUE
    assert admission.count == 0
    bound = request_memory_bound(G_QUEUE, G_MAX_BYTES, G_MAX_PIXELS, G_THREADS)
    assert bound == G_QUEUE * 4 * G_MAX_PIXELS + G_THREADS * (4 * G_MAX_BYTES + 8 * G_MAX_PIXELS)
    # The client (50 threads, their connections and bodies) lives in this process too: RSS also
    # holds its share, which the server's bound does not cover; 64 MB is allowed for it.
    client_share = 64 * 2**20
    assert grown <= bound + client_share, f"RSS grew {grown / 1e6:.0f} MB with {G_QUEUE} requests queued; bound {bound / 1e6:.0f} MB + 64 MiB client"


def test_limits_are_400_naming_the_limit(guarded):
    url, _, _ = guarded
    png = io.BytesIO()
    flat(10, 10).save(png, format="PNG")
    header = bytearray(png.getvalue())
    header[16:24] = (50000).to_bytes(4, "big") + (50000).to_bytes(4, "big")  # claims 2.5 Gpx in 100 bytes
    ico = io.BytesIO()
    flat(16, 16).save(ico, format="ICO")
    cases = {
        "image_too_large": chat("hi", flat(1001, 1000)),
        "request_pixels_too_large": chat("hi", flat(800, 800), flat(800, 800)),
        "invalid_image": {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(bytes(header)).decode()}}]}]},
        "invalid_image ": {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/x-icon;base64," + base64.b64encode(ico.getvalue()).decode()}}]}]},
        "invalid_messages": chat("x \ud800 y", image(1)),  # a lone surrogate: the tokenizer refuses it
    }
    for code, body in cases.items():
        r = post(url, None, raw=json.dumps(body).encode())
        assert r.status_code == 400, (code, r.text)
        assert r.json()["error"]["code"] == code.strip(), (code, r.text)
    r = post(url, chat("hi", flat(1001, 1000)))
    assert "--max-image-pixels" in error_message(r) and r.json()["error"]["param"] == "messages[0].content[0]"
    r = post(url, chat("hi", flat(800, 800), flat(800, 800)))
    assert "--max-request-pixels" in error_message(r) and "1280000 pixels" in error_message(r)
    r = post(url, {**chat("hi"), "max_completion_tokens": 1000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"
    r = post(url, None, raw=b"[" * 100_000)  # deeply nested JSON
    assert r.status_code == 400


def test_context_length_is_checked(answering_model):
    """Prompt + max_tokens over the model's context (4096 tokens for the tiny model) is 400."""
    from vlm3.models.local import LocalBackend

    app = guarded_app(LocalBackend.from_pretrained(answering_model), max_tokens_limit=8192, max_batch_tokens=8192)
    with serve_in_thread(app) as url:
        r = post(url, {**chat("hi", image(1)), "max_tokens": 4090})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text


def test_prompt_counter_matches_the_backend(tiny_models):
    """The server's prompt token count equals what the model's processor produces (both families)."""
    from vlm3.models.backend import ChatRequest
    from vlm3.models.local import LocalBackend
    from vlm3.serve.server import PromptCounter

    for family, folder in tiny_models.items():
        backend = LocalBackend.from_pretrained(folder)
        counter = PromptCounter.for_backend(backend)
        imgs = [image(1, 300, 200), image(2, 50, 900)]
        request = ChatRequest([
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "How far 123?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "5 m"}]},
            {"role": "user", "content": [{"type": "text", "text": "and?"}]},
        ], imgs)
        tokens = [counter.image_tokens(im, "x") for im in imgs]
        (c,) = backend.complete([request], 2)
        assert counter.count(request, tokens) == c.prompt_tokens, family


def test_a_failing_batch_is_retried_one_by_one(answering_model, monkeypatch):
    """Without the pre-batch checks, a request the processor refuses (10000x20: aspect ratio) fails
    its batch; the batch is then retried request by request: only it gets an error (400), and its
    batch-mates' answers equal the serial ones."""
    from vlm3.models.local import LocalBackend
    from vlm3.serve import server

    monkeypatch.setattr(server.PromptCounter, "for_backend", classmethod(lambda cls, backend: None))
    backend = LocalBackend.from_pretrained(answering_model, batch_size=8)
    app = guarded_app(backend)
    valid = valid_requests(13)
    for body in valid:
        body["max_tokens"] = 6  # one backend call per batch
    plug, valid = valid[0], valid[1:]
    bodies = valid[:5] + [chat("How far?", flat(10000, 20), max_tokens=6)] + valid[5:]
    batcher = app.state.batcher
    with serve_in_thread(app) as url:
        gate = threading.Event()
        complete = backend.complete
        backend.complete = lambda requests, n: (gate.wait(30), complete(requests, n))[1]
        with ThreadPoolExecutor(len(bodies) + 1) as pool:
            first = pool.submit(post, url, plug)  # runs alone, held at the gate while the others queue
            deadline = time.monotonic() + 30
            while batcher.running < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            futures = [pool.submit(post, url, b) for b in bodies]
            while batcher.waiting < len(bodies):  # all queued: they batch together (8 + 5)
                assert time.monotonic() < deadline
                time.sleep(0.02)
            gate.set()
            responses = [f.result() for f in futures]
            answer(first.result())
        del backend.complete
        bad = responses.pop(5)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input", bad.text
        assert "aspect ratio" in error_message(bad)
        assert app.state.batcher.isolated >= 1
        assert [answer(r) for r in responses] == [answer(post(url, b)) for b in valid]


class _Flaky:
    """A backend that answers by echoing the question, fails with ValueError on 'poison' and with
    RuntimeError on 'crash' (a server-side fault), whichever batch they are in."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls: list[int] = []  # batch sizes

    def complete(self, requests, max_new_tokens=64):
        from vlm3.models.backend import Completion

        self.calls.append(len(requests))
        time.sleep(0.05)  # so that concurrent requests queue up and batch
        texts = [r.messages[-1]["content"][-1]["text"] for r in requests]
        if any("poison" in t for t in texts):
            raise ValueError("poisoned input")
        if any("crash" in t for t in texts):
            raise RuntimeError("device fault")
        return [Completion(f"echo {t}", 3, 2, "stop") for t in texts]


def test_errors_reach_only_the_request_that_causes_them():
    from vlm3.serve.server import create_app

    backend = _Flaky()
    app = create_app(backend, model_name="tiny", api_key=KEY, max_batch_size=8, max_batch_tokens=20)
    questions = [f"q{i}" for i in range(20)]
    questions[7], questions[13] = "poison", "crash"
    with serve_in_thread(app) as url, ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda q: post(url, chat(q)), questions))  # max_tokens 6 each
    # Decode work per batch is capped: at most 3 requests of 6 tokens under max_batch_tokens=20.
    assert max(backend.calls) == 3 and all(6 * n <= 20 for n in backend.calls)
    for q, r in zip(questions, responses):
        if q == "poison":
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input", r.text
        elif q == "crash":
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
        else:
            assert answer(r) == f"echo {q}"
    assert app.state.batcher.isolated >= 1
