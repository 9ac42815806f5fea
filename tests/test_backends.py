"""Inference backends: batching, prefix-cached query_many, backend specs, HTTP client retries, vLLM inputs."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from support import random_image as image
from vlm3.models.backend import ChatRequest, Completion, open_backend, parse_spec, single_turn, spec_name, user_message

DEPTH = "How far is the pixel at ({x}, {y}) from the camera? Both x and y are normalized to between [0, 2000)."


def tiny_backend(root, family: str, batch_size: int):
    """A tiny random VLM whose answers depend on the question and the image.

    A freshly initialised tiny model (weights ~N(0, 0.02)) answers the same token to everything,
    which would make answer-equality tests vacuous; weights redrawn with std 0.1 are input-sensitive.
    """
    from vlm3.models.local import LocalBackend
    from vlm3.models.tiny import build_tiny_model, redraw_weights

    backend = LocalBackend.from_pretrained(build_tiny_model(family, root / family), batch_size=batch_size)
    redraw_weights(backend.model, std=0.1)
    return backend




@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch

    # One thread: tiny models gain nothing from more, and on a shared machine idle-spinning
    # worker threads make every small matmul many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny")
    yield {f: tiny_backend(root, f, batch_size=4) for f in ("qwen2_5_vl", "qwen3_vl")}
    torch.set_num_threads(threads)


QUESTIONS = [DEPTH.format(x=x, y=y) for x, y in [(0, 0), (1999, 1999), (17, 1234), (850, 3), (400, 400), (1024, 77)]]
QUESTIONS += ["Object at (3, 4)?", "What is the colour at (1500, 20)? Answer with one word, please."]
QUESTIONS += [DEPTH.format(x=x, y=y) for x, y in np.random.default_rng(0).integers(0, 2000, (10, 2))]


def test_generate_is_batch_size_invariant(models):
    backend = models["qwen2_5_vl"]
    a, b = image(1, 112, 84), image(2, 56, 112)
    requests = [single_turn([a], q) for q in QUESTIONS[:4]]
    requests += [
        single_turn([b], QUESTIONS[6], system="Answer in metres."),
        single_turn([a, b], "Given these two images, what pixel in the second image corresponds to pixel (5, 9)?"),
        ChatRequest([{"role": "user", "content": "A text-only question?"}]),
        single_turn([b], QUESTIONS[7]),
    ]
    backend.batch_size = 1
    one = backend.generate(requests, max_new_tokens=6)
    backend.batch_size = 8
    eight = backend.generate(requests, max_new_tokens=6)
    backend.batch_size = 4
    assert one == eight
    assert len(set(one)) >= 6, f"answers should depend on the input, got {one}"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_query_many_equals_one_generate_per_question(models, family):
    backend = models[family]
    img = image(3, 112, 84)
    for system in (None, "You estimate metric depth."):
        expected = [backend.generate([single_turn([img], q, system)], max_new_tokens=10)[0] for q in QUESTIONS]
        got = [c.text for c in backend.query_many([img], QUESTIONS, max_new_tokens=10, system=system)]
        assert backend.prefix_reuse.startswith("prefix:")
        assert got == expected
    assert len(set(got)) >= 12, f"answers should depend on the question, got {got}"
    assert [c.text for c in backend.query_many([image(4, 112, 84)], QUESTIONS, max_new_tokens=10)] != got, "answers ignore the image"


def test_query_many_rows_ending_at_different_steps(models):
    backend = models["qwen2_5_vl"]
    img = image(8, 84, 56)
    saved = backend.eos_ids
    # Every 9th token ends the answer, so rows of one batch stop after different numbers of tokens.
    backend.eos_ids = list(range(0, len(backend.tokenizer), 9))
    try:
        completions = [backend.complete([single_turn([img], q)], max_new_tokens=10)[0] for q in QUESTIONS]
        # Text, token counts and finish reason: each row's own completion, however the batch ended.
        assert backend.query_many([img], QUESTIONS, max_new_tokens=10) == completions
    finally:
        backend.eos_ids = saved
    assert len({c.completion_tokens for c in completions}) >= 3
    assert {c.finish_reason for c in completions} == {"stop", "length"}


def test_query_many_two_images_and_fallback(models):
    backend = models["qwen3_vl"]
    imgs = [image(5, 64, 96), image(6, 96, 64)]
    qs = [f"Given these two images, what pixel in the second image corresponds to pixel ({x}, 9) in the first image?" for x in (1, 22, 333, 1999)]
    expected = [backend.complete([single_turn(imgs, q)], max_new_tokens=5)[0] for q in qs]
    assert backend.query_many(imgs, qs, max_new_tokens=5) == expected
    backend.reuse_prefix = False
    try:
        assert backend.query_many(imgs, qs, max_new_tokens=5) == expected
        assert backend.prefix_reuse.startswith("batched")
    finally:
        backend.reuse_prefix = True
    assert backend.query_many(imgs, [], max_new_tokens=5) == []
    with pytest.raises(TypeError, match="list of strings"):
        backend.query_many(imgs, "one question", max_new_tokens=5)


@pytest.mark.parametrize("path", ["prefix", "batched"])
def test_query_many_says_which_answers_hit_the_token_limit(models, path):
    """finish_reason from query_many: "length" for an answer cut off at max_new_tokens, "stop" for
    one that reached its end-of-turn token, on the prefix-sharing path and the batched fallback."""
    backend = models["qwen2_5_vl"]
    img = image(9, 84, 56)
    saved = backend.eos_ids
    backend.reuse_prefix = path == "prefix"
    try:
        cut = backend.query_many([img], QUESTIONS, max_new_tokens=1)
        assert backend.prefix_reuse.startswith(f"{path}:")
        assert [c.finish_reason for c in cut] == ["length"] * len(QUESTIONS)
        assert {c.completion_tokens for c in cut} == {1}
        # Every 9th token ends an answer: within 10 tokens some answers end, the others are cut off.
        backend.eos_ids = list(range(0, len(backend.tokenizer), 9))
        got = backend.query_many([img], QUESTIONS, max_new_tokens=10)
        assert backend.prefix_reuse.startswith(f"{path}:")
        expected = [backend.complete([single_turn([img], q)], max_new_tokens=10)[0] for q in QUESTIONS]
    finally:
        backend.eos_ids, backend.reuse_prefix = saved, True
    assert got == expected
    assert {c.finish_reason for c in got} == {"stop", "length"}
    assert all(c.completion_tokens == 10 for c in got if c.finish_reason == "length")
    assert any(c.finish_reason == "stop" and c.completion_tokens < 10 for c in got)


def test_complete_reports_tokens_and_finish_reason(models):
    backend = models["qwen2_5_vl"]
    (c,) = backend.complete([single_turn([image(1, 56, 56)], QUESTIONS[0])], max_new_tokens=3)
    assert c.finish_reason in ("stop", "length") and 1 <= c.completion_tokens <= 3 and c.prompt_tokens > 16


def test_request_validation_names_the_problem():
    with pytest.raises(ValueError, match="1 image placeholder.*0 image"):
        ChatRequest([user_message(1, "hi")], [])
    with pytest.raises(ValueError, match=r"messages\[0\].role"):
        ChatRequest([{"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match=r"content\[0\]"):
        ChatRequest([{"role": "user", "content": [{"type": "video"}]}])


def test_open_backend_dispatch(tmp_path, monkeypatch):
    from vlm3.models.openai_http import OpenAIBackend

    http = open_backend(" http://127.0.0.1:9/v1", 3, model="m")  # no request is made when the model is given
    assert isinstance(http, OpenAIBackend) and http.base_url == "http://127.0.0.1:9/v1" and http.max_concurrency == 3
    http.close()
    with pytest.raises(ValueError, match="after the colon"):
        open_backend("vllm:")
    with pytest.raises(ValueError, match="non-empty"):
        parse_spec(" ")
    with pytest.raises(FileNotFoundError):
        open_backend(str(tmp_path / "missing" / "model"))
    assert [parse_spec(s).kind for s in ("https://x/v1", "vllm:/ckpt", "Qwen/Qwen3-VL-4B-Instruct")] == ["http", "vllm", "local"]
    assert parse_spec("vllm:/ckpt").target == "/ckpt"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    assert spec_name("m") == spec_name("./m") == str(tmp_path / "m")
    assert spec_name("vllm:m") == "vllm:m" and spec_name("org/model") == "org/model"


def test_vllm_missing_is_a_clear_error():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install vllm"):
            open_backend("vllm:/some/checkpoint")
    else:
        pytest.skip("vllm is installed")


def test_vllm_inputs_put_images_first_and_are_greedy():
    from vlm3.models.vllm_backend import build_vllm_inputs, greedy_sampling_kwargs

    a, b = image(1, 8, 8), image(2, 8, 8).convert("L")
    rendered = []

    def render(messages):
        rendered.append(messages)
        return "|".join(p.get("text", "<img>") for m in messages for p in m["content"])

    inputs = build_vllm_inputs([single_turn([a], "q1"), single_turn([a, b], "q2", "sys"), ChatRequest([user_message(0, "t")])], render)
    assert inputs[0] == {"prompt": "<img>|q1", "multi_modal_data": {"image": a}}
    assert inputs[1]["prompt"] == "sys|<img>|<img>|q2"
    assert [im.mode for im in inputs[1]["multi_modal_data"]["image"]] == ["RGB", "RGB"]
    assert inputs[2] == {"prompt": "t"}
    assert greedy_sampling_kwargs(7) == {"temperature": 0.0, "max_tokens": 7, "repetition_penalty": 1.0, "n": 1}
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_sampling_kwargs(0)


def test_openai_messages_carry_lossless_images_before_text():
    from vlm3.models.openai_http import to_openai_messages

    img = image(7, 13, 11)
    (msg,) = to_openai_messages(single_turn([img], "q"))
    assert [p["type"] for p in msg["content"]] == ["image_url", "text"]
    url = msg["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    back = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert np.array_equal(np.asarray(back), np.asarray(img))


# --- HTTP client retries against a stub server ------------------------------------------------------
# (timeouts, size caps and counted failures in a whole `vlm3 eval`: tests/test_http_failures.py)


class _Stub(BaseHTTPRequestHandler):
    """503 for the first ``failures`` POSTs (asking for a 10 ms wait), then a chat completion
    echoing the request's text."""

    failures = 2
    calls: list[dict] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with self.lock:
            self.calls.append({"auth": self.headers.get("authorization"), "body": body})
            n = len(self.calls)
        if n <= self.failures:
            self._send(503, {"error": {"message": "busy"}}, {"Retry-After-Ms": "10"})
            return
        text = body["messages"][-1]["content"][-1]["text"]
        if text == "bad":
            self._send(400, {"error": {"message": "no such thing"}})
            return
        self._send(200, {"choices": [{"message": {"content": f"echo {text}"}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 3, "completion_tokens": 2}})

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"content-type": "application/json", "content-length": str(len(data)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def stub_url():
    _Stub.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_client_retries_503_then_succeeds(stub_url):
    from vlm3.models.openai_http import OpenAIBackend

    with OpenAIBackend(stub_url, model="m", api_key="k") as client:
        (c,) = client.complete([single_turn([image(1, 8, 8)], "hello")], max_new_tokens=4)
    assert c.text == "echo hello" and c.completion_tokens == 2
    assert len(_Stub.calls) == 3
    sent = _Stub.calls[-1]
    assert sent["auth"] == "Bearer k"
    assert sent["body"]["temperature"] == 0 and sent["body"]["max_tokens"] == 4 and sent["body"]["model"] == "m"
    assert [p["type"] for p in sent["body"]["messages"][0]["content"]] == ["image_url", "text"]


def test_http_client_gives_up_with_the_server_message(stub_url, capsys):
    """Retries spent on a 5xx: a counted failure (empty "error" completion, one warning with the
    server's message); a refused request (400): an error at once, not retried."""
    from vlm3.models.openai_http import FAILED, BackendError, OpenAIBackend

    _Stub.failures = 4
    try:
        with OpenAIBackend(stub_url, model="m", max_retries=1) as client:
            assert client.generate([single_turn([], "x")]) == [""]
            assert client.complete([single_turn([], "y")]) == [Completion("", None, None, FAILED)]
            assert client.failures == {"HTTP 503": 2}
        assert len(_Stub.calls) == 4
        warning = capsys.readouterr().err
        assert warning.count("warning:") == 1 and "503 (after 2 attempts): busy" in warning
        _Stub.failures = 0
        with OpenAIBackend(stub_url, model="m") as client:
            with pytest.raises(BackendError, match=r"400 \(after 1 attempt\): no such thing"):
                client.generate([single_turn([], "bad")])
            answers = client.query_many([image(1, 8, 8)], ["a", "b", "c"])
            assert [(c.text, c.finish_reason) for c in answers] == [("echo a", "stop"), ("echo b", "stop"), ("echo c", "stop")]
    finally:
        _Stub.failures = 2


def test_http_client_retries_connection_errors():
    """A refused connection is retried; a question then counts as failed, while the first
    /v1/models call (a server not there at all) is an error."""
    import socket

    from vlm3.models.openai_http import FAILED, BackendError, OpenAIBackend

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with OpenAIBackend(f"http://127.0.0.1:{port}", model="m", max_retries=1, timeout=2) as client:
        assert client.complete([single_turn([], "x")]) == [Completion("", None, None, FAILED)]
        assert client.failures == {"connection": 1}
        with pytest.raises(BackendError, match="models failed \\(after 2 attempts\\): ConnectError"):
            client.served_settings()
    with pytest.raises(BackendError, match="after 1 attempt"):
        OpenAIBackend(f"http://127.0.0.1:{port}", max_retries=0)
