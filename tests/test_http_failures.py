"""The HTTP backend's bounds and failure semantics (vlm3/models/openai_http.py).

Against stub servers that misbehave in one way each -- never answer, trickle, answer 503, answer
without ``choices``, answer non-JSON, answer 5 MB -- every question ends within the total timeout
(or at once) as a counted failure: ``Completion("", finish_reason="error")``, one warning per kind
of cause, and in ``vlm3 eval`` a failed question, never an aborted run. A refused API key and a
server that does not answer ``GET /v1/models`` at startup stay one-line errors.
"""

from __future__ import annotations

import functools
import gzip
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.eval.bench import bench_dir, load_bench
from vlm3.eval.run import read_predictions
from vlm3.models.backend import Completion, http_options, single_turn
from vlm3.models.openai_http import FAILED, BackendError, OpenAIBackend

runner = CliRunner()
ERROR = Completion("", None, None, FAILED)
FAST = {"timeout": 0.5, "total_timeout": 1.0, "max_retries": 2}  # small bounds for the silent servers


class _Handler(BaseHTTPRequestHandler):
    """``GET /v1/models`` lists one model; ``POST`` behaves as the server's ``mode`` says."""

    protocol_version = "HTTP/1.1"
    server: "Stub"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.server.seen.append({k.lower(): v for k, v in self.headers.items()})
        if self.server.key is not None and self.headers.get("authorization") != f"Bearer {self.server.key}":
            self._json(401, {"error": "Unauthorized"})  # vLLM's answer to a wrong key
            return
        entry = {"id": "stub", "object": "model", **({"vlm3": self.server.published} if self.server.published else {})}
        self._json(200, {"object": "list", "data": [entry]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        srv = self.server
        with srv.lock:
            srv.posts += 1
        srv.seen.append({k.lower(): v for k, v in self.headers.items()})
        mode = srv.mode
        if mode == "ok":
            self._json(200, answer(body))
        elif mode == "slow-ok":  # answers after 0.2 s; logs (start, end) of every request
            start = time.monotonic()
            time.sleep(0.2)
            with srv.lock:
                srv.spans.append((start, time.monotonic()))
            self._json(200, answer(body))
        elif mode == "gzip":
            self._send(200, gzip.compress(json.dumps(answer(body)).encode()), {"content-encoding": "gzip"})
        elif mode == "silent":  # read the request, never answer
            srv.release.wait()
        elif mode == "trickle":  # a byte every 0.1 s of a body that never ends
            self._head(200, {"content-length": "100000"})
            while not srv.release.wait(0.1):
                self.wfile.write(b" ")
                self.wfile.flush()
        elif mode == "503":
            self._json(503, {"error": {"message": "overloaded"}}, {"retry-after-ms": "10"})
        elif mode == "401":
            self._json(401, {"error": {"message": "missing or invalid API key"}})
        elif mode == "no-choices":
            self._json(200, {"object": "chat.completion", "model": "stub"})
        elif mode == "not-http":
            self.wfile.write(b"garbage\r\n\r\n")
            self.close_connection = True
        elif mode == "not-json":
            self._send(200, b"<html>502 Bad Gateway</html>", {"content-type": "text/html"})
        elif mode == "huge":  # 5 MB, with its length
            self._json(200, answer(body, "9" * 5_000_000))
        elif mode == "huge-chunked":  # no length: 64 KB chunks that never end
            self._head(200, {"transfer-encoding": "chunked"})
            chunk = b"9" * 65536
            try:
                while not srv.release.is_set():
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass
        elif mode == "gzip-bomb":  # 10 MB of JSON in ~10 KB
            self._send(200, gzip_bomb(), {"content-encoding": "gzip"})
        else:
            raise AssertionError(mode)

    def _json(self, status: int, doc: dict, headers: dict | None = None) -> None:
        self._send(status, json.dumps(doc).encode(), {"content-type": "application/json", **(headers or {})})

    def _send(self, status: int, data: bytes, headers: dict) -> None:
        self._head(status, {"content-length": str(len(data)), **headers})
        self.wfile.write(data)

    def _head(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


class Stub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str = "ok", key: str | None = None, published: dict | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode, self.key, self.published = mode, key, published
        self.posts, self.seen, self.lock, self.release = 0, [], threading.Lock(), threading.Event()
        self.spans: list[tuple[float, float]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up on an answer (the point of several tests): no traceback on stderr


def answer(body: dict, text: str | None = None) -> dict:
    """A chat completion: ``text``, else "3.5 m" (a depth) for every question."""
    return {"id": "x", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text or "3.5 m"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


@functools.cache
def gzip_bomb() -> bytes:
    return gzip.compress(json.dumps(answer({"model": "m"}, "9" * 10_000_000)).encode(), compresslevel=1)


@pytest.fixture()
def serve():
    """``serve(mode, ...)`` starts a :class:`Stub`; all are stopped after the test."""
    started = []

    def start(mode: str = "ok", **kw) -> Stub:
        server = Stub(mode, **kw)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.release.set()
        server.shutdown()
        server.server_close()


def questions(n: int) -> list:
    return [single_turn([], f"How far is point {i}?") for i in range(n)]


# --- the client ------------------------------------------------------------------------------------


def test_questions_about_one_image_send_the_first_alone_then_the_rest_together(serve):
    server = serve("slow-ok")
    image = Image.new("RGB", (8, 8))
    with OpenAIBackend(server.url, model="m", max_concurrency=4, **{**FAST, "total_timeout": 5.0, "timeout": 5.0}) as client:
        shared = client.complete([single_turn([image], f"How far is point {i}?") for i in range(5)])
        spans, server.spans = sorted(server.spans), []
        separate = client.complete([single_turn([Image.new("RGB", (8, 8))], f"point {i}") for i in range(4)])
    assert [c.text for c in shared + separate] == ["3.5 m"] * 9
    first, rest = spans[0], spans[1:]
    assert all(start >= first[1] for start, _ in rest)  # the prefix is cached before the others arrive
    assert max(s for s, _ in rest) < min(e for _, e in rest)  # the other 4 were in flight together
    others = sorted(server.spans)
    assert max(s for s, _ in others) < min(e for _, e in others)  # different images: no warm-up


def test_silent_server_fails_each_question_within_the_total_timeout(serve, capsys):
    server = serve("silent")
    with OpenAIBackend(server.url, model="m", max_concurrency=4, **FAST) as client:
        start = time.monotonic()
        got = client.complete(questions(6))  # two rounds of 4 in flight
        took = time.monotonic() - start
    assert got == [ERROR] * 6 and client.failures == {"timeout": 6}
    # Each question: at most the total timeout and one backoff wait (< 0.5 s for the first retry).
    assert 2 * FAST["total_timeout"] * 0.9 < took < 2 * (FAST["total_timeout"] + 0.6), took
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "no answer within the total timeout of 1 s" in err


def test_a_server_trickling_bytes_is_cut_at_the_total_timeout(serve):
    server = serve("trickle")
    with OpenAIBackend(server.url, model="m", **FAST) as client:
        start = time.monotonic()
        assert client.complete(questions(1)) == [ERROR]
        assert time.monotonic() - start < FAST["total_timeout"] + 0.6
    assert client.failures == {"timeout": 1}


def test_a_silent_server_at_startup_is_an_error_not_a_hang():
    """A socket that accepts connections and never answers: the first ``GET /v1/models`` (the
    model lookup) fails within the total timeout with one clear error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)  # the kernel accepts; nobody ever reads or answers
        start = time.monotonic()
        with pytest.raises(BackendError, match=r"GET http://127.0.0.1:\d+/v1/models: no answer within the total timeout of 1 s"):
            OpenAIBackend(f"http://127.0.0.1:{s.getsockname()[1]}", **FAST)
        assert time.monotonic() - start < FAST["total_timeout"] + 0.6


@pytest.mark.parametrize(
    "mode, kind, message",
    [
        ("503", "HTTP 503", "answered 503 (after 2 attempts): overloaded"),
        ("no-choices", "no choices", "without choices[0].message.content"),
        ("not-json", "not JSON", "a body that is not JSON: b'<html>502 Bad Gateway</html>'"),
        ("not-http", "connection", "failed (after 2 attempts): RemoteProtocolError"),
    ],
)
def test_protocol_failures_are_counted_failures(serve, capsys, mode, kind, message):
    server = serve(mode)
    with OpenAIBackend(server.url, model="m", max_retries=1) as client:
        assert client.complete(questions(3)) == [ERROR] * 3
        assert client.generate(questions(1)) == [""]
    assert client.failures == {kind: 4}
    assert server.posts == (8 if mode in ("503", "not-http") else 4)  # 5xx retried, a 200 with a bad body not
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and message in err and "counts as failed" in err


@pytest.mark.parametrize("mode", ["huge", "huge-chunked", "gzip-bomb"])
def test_an_answer_over_the_size_cap_is_a_quick_failure(serve, mode):
    server = serve(mode)
    with OpenAIBackend(server.url, model="m", max_answer_bytes=100_000) as client:
        start = time.monotonic()
        assert client.complete(questions(2)) == [ERROR] * 2
        assert time.monotonic() - start < 2.0
    assert client.failures == {"oversized": 2} and server.posts == 2  # not retried


def test_compressed_answers_models_and_published_settings(serve):
    server = serve("gzip", published={"task": "depth", "focal": 120})
    with OpenAIBackend(server.url) as client:
        assert client.model == "stub" and client.name == f"{server.url}/v1 (stub)"
        assert client.served_settings() == {"task": "depth", "focal": 120}
        assert client.complete(questions(1), max_new_tokens=5) == [Completion("3.5 m", 7, 3, "stop")]


def test_a_refused_key_is_an_error_not_a_failed_question(serve):
    server = serve("ok", key="right")
    with pytest.raises(BackendError, match=r"GET .*/v1/models answered 401: .*invalid API key.*Unauthorized"):
        OpenAIBackend(server.url, api_key="wrong")
    with pytest.raises(BackendError, match="answered 401"):
        OpenAIBackend(server.url)
    with OpenAIBackend(serve("401").url, model="m", max_retries=2) as client:
        with pytest.raises(BackendError, match="answered 401: .*invalid API key"):
            client.complete(questions(2))


def test_only_the_given_key_is_sent(serve, monkeypatch):
    """No key: no Authorization header, whatever OPENAI_* variables the environment holds (the
    openai client would send them); a key: exactly ``Bearer KEY``."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-secret")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-secret")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "X-Secret: s3\nAuthorization: Bearer sk-other")
    server = serve("ok")
    with OpenAIBackend(server.url) as client:
        client.complete(questions(1))
    with OpenAIBackend(server.url, api_key="k") as client:
        client.complete(questions(1))
    assert len(server.seen) == 4
    for i, headers in enumerate(server.seen):
        assert headers.get("authorization") == (None if i < 2 else "Bearer k"), headers
        assert not {"openai-organization", "openai-project", "x-secret"} & set(headers), headers
        assert "secret" not in json.dumps(headers)


def test_a_custom_transport_carries_every_request():
    """The ``transport=`` hook (an httpx transport: a proxy, an in-process app)."""
    import httpx

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "mock", "vlm3": {"task": "pose"}}]})
        return httpx.Response(200, json=answer(json.loads(request.content), "mocked"))

    with OpenAIBackend("http://nowhere.invalid:1", transport=httpx.MockTransport(handle)) as client:
        assert client.model == "mock" and client.served_settings() == {"task": "pose"}
        assert client.generate(questions(2)) == ["mocked", "mocked"]


def test_the_proxy_variables_are_honoured(serve, monkeypatch):
    proxy = serve("ok")  # answers whatever it is sent, as a proxy would forward it
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with OpenAIBackend("http://model-server.invalid:8000") as client:
        assert client.generate(questions(1)) == ["3.5 m"]
    monkeypatch.setenv("NO_PROXY", "model-server.invalid")
    with pytest.raises(BackendError, match="models failed"):
        OpenAIBackend("http://model-server.invalid:8000", max_retries=0)


def test_http_options_name_their_flags():
    assert http_options("http://h:1", timeout=5, total_timeout=9.5, max_retries=0, max_answer_bytes=10) == {
        "timeout": 5, "total_timeout": 9.5, "max_retries": 0, "max_answer_bytes": 10}
    with pytest.raises(ValueError, match="--http-timeout and --http-retries apply to http:// models only"):
        http_options("some/folder", timeout=5, max_retries=1)
    with pytest.raises(ValueError, match="--http-total-timeout must be a positive number"):
        http_options("http://h:1", total_timeout=0)
    with pytest.raises(ValueError, match="--http-retries must be an integer >= 0"):
        http_options("http://h:1", max_retries=-1)
    with pytest.raises(ValueError, match="max_answer_bytes must be an integer >= 1"):
        OpenAIBackend("http://h:1", model="m", max_answer_bytes=0)


# --- vlm3 eval and vlm3 predict --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A two-scene synthetic depth bench and its prepared cache."""
    folder = tmp_path_factory.mktemp("http-bench")
    raw = yaml.safe_load((bench_dir() / "synth-depth.yaml").read_text())
    raw["data"]["synth"]["scenes"] = 2
    path = folder / "synth-depth.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_bench(path), folder / "cache"


def run_eval_cli(url: str, bench, out: Path, *flags: str):
    b, cache = bench
    args = ["eval", "--model", url, "--bench", str(b.source), "--cache", str(cache), "--out", str(out), "--limit", "2",
            "--limit-points", "3", "--no-plots", "--profile", "vlm3", *flags]
    start = time.monotonic()
    result = runner.invoke(app, args)
    return result, time.monotonic() - start


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())["metrics"]


def test_eval_against_a_silent_server_ends_in_bounded_time_with_every_question_failed(serve, bench, tmp_path):
    ok, _ = run_eval_cli(serve("ok").url, bench, tmp_path / "ok")  # prepares the bench data; the baseline
    assert ok.exit_code == 0, ok.output
    n = metrics(tmp_path / "ok")["n"]
    assert n == 6 and metrics(tmp_path / "ok")["parsed"] == 6
    _, baseline = run_eval_cli(serve("ok").url, bench, tmp_path / "ok2")

    result, took = run_eval_cli(serve("silent").url, bench, tmp_path / "silent",
                                "--http-timeout", "0.5", "--http-total-timeout", "1", "--http-retries", "2")
    assert result.exit_code == 0, result.output
    m = metrics(tmp_path / "silent")
    assert (m["n"], m["failed"], m["parsed"]) == (n, n, 0)
    # Two records, each with its first question alone (the prefix-cache warm-up), then the other
    # 2 in flight together: four total timeouts (+ backoff).
    assert took < baseline + 4 * (1.0 + 0.6), (took, baseline)
    assert result.output.count("warning: a request failed") == 1 and "total timeout of 1 s" in result.output


@pytest.mark.parametrize("mode, flags", [("503", ["--http-retries", "1"]), ("no-choices", []), ("huge", ["--http-max-answer-bytes", "100000"])])
def test_eval_counts_protocol_failures_as_failed_questions(serve, bench, tmp_path, mode, flags):
    result, took = run_eval_cli(serve(mode).url, bench, tmp_path / mode, *flags)
    assert result.exit_code == 0, result.output
    m = metrics(tmp_path / mode)
    assert m["n"] == m["failed"] == 6 and m["parsed"] == 0
    assert "failed=6" in result.output and "Traceback" not in result.output
    lines = read_predictions(tmp_path / mode / "predictions.jsonl").values()
    assert [(line["raw"], line["truncated"]) for line in lines] == [("", False)] * 6


def test_eval_with_a_wrong_key_is_one_line(serve, bench, tmp_path):
    result, took = run_eval_cli(serve("ok", key="right").url, bench, tmp_path / "wrong", "--api-key", "nope")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "invalid API key" in result.output and result.output.strip().count("\n") == 0, result.output
    assert took < 10


def test_predict_takes_the_http_flags(serve, tmp_path):
    path = tmp_path / "im.png"
    Image.new("RGB", (56, 56), (90, 120, 150)).save(path)
    args = ["predict", "depth", str(path), "--fx", "50", "--points", "10,20", "--profile", "vlm3", "--out", str(tmp_path / "o")]
    start = time.monotonic()
    result = runner.invoke(app, [*args, "--model", serve("silent").url, "--http-timeout", "0.3", "--http-total-timeout", "0.6", "--http-retries", "0"])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - start < 5 and "0 of 1 depths parsed" in result.output
    assert "no answer within 0.3 s (after 1 attempt)" in result.output  # --http-retries 0: no retry
    bad = runner.invoke(app, [*args, "--model", str(tmp_path), "--http-retries", "1"])
    assert bad.exit_code == 1 and "--http-retries apply to http:// models only" in bad.output
