"""`vlm3 serve` as the official `openai` client sees it: OpenAI-shaped errors (400 for bad requests,
404 / 405 for unknown routes and methods), `stop` honoured, refused options named, `stream`, `/health`."""

from __future__ import annotations

import random

import httpx
import openai
import pytest

from support import serve_in_thread
from test_server import KEY, chat, data_url, image
from vlm3.serve.server import MAX_STOP_SEQUENCES, cut_at_stop

QUESTION = "How far is the pixel at (640, 480) from the camera?"


@pytest.fixture(scope="module")
def client(answering_model):
    """An `openai.OpenAI` client of a `vlm3 serve` app (tiny answering model, API key) run with uvicorn."""
    import torch

    from vlm3.models.local import LocalBackend
    from vlm3.serve.server import create_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: extra threads only spin on a shared machine
    app = create_app(LocalBackend.from_pretrained(answering_model, batch_size=8), model_name="tiny", api_key=KEY, max_concurrency=1)
    with serve_in_thread(app) as url, openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60) as c:
        yield c
    torch.set_num_threads(threads)


def ask(client: openai.OpenAI, **options):
    """A chat completion for one image and QUESTION (greedy, at most 12 tokens unless ``options`` say)."""
    body = chat(QUESTION, image(3))
    return client.chat.completions.create(**{"model": "tiny", "messages": body["messages"], "max_tokens": 12, "temperature": 0, **options})


def reference_stop(client: openai.OpenAI, stop: list[str], max_tokens: int = 12) -> tuple[str, str]:
    """What stopping *during* generation gives: answers with max_tokens = 1, 2, ... are the greedy
    answer's first k tokens, so the first k whose text contains a stop sequence is where a
    token-by-token server stops; its answer is that text before the first stop sequence in it."""
    for k in range(1, max_tokens + 1):
        choice = ask(client, max_tokens=k).choices[0]
        text = choice.message.content
        starts = [text.find(s) for s in stop if s in text]
        if starts:
            return text[: min(starts)], "stop"
        if choice.finish_reason == "stop":  # the answer ended (end-of-turn token) before any stop sequence
            return text, "stop"
    return text, choice.finish_reason


# --- stop ---------------------------------------------------------------------------------------


def test_stop_is_honoured_as_if_generation_stopped(client):
    full = ask(client).choices[0]
    text = full.message.content
    assert len(text) >= 6, text  # the tiny model's greedy answer, long enough to cut inside
    # Stop strings from the answer, without U+FFFD (the stand-in for a character split between tokens).
    windows = [i for i in range(len(text) - 1) if "\ufffd" not in text[i : i + 2]]
    middle = text[(i := min(w for w in windows if w >= len(text) // 2)) : i + 2]
    late = text[windows[-1] : windows[-1] + 2]
    assert text.find(late) > text.find(middle) > 0
    cases = [
        [middle],  # a string in the middle of the answer
        ["\u2603never", late, middle],  # several: the one that completes first wins, whatever the order
        ["\u2603never"],  # not in the answer: unchanged, with the answer's own finish_reason
    ]
    for stop in cases:
        got = ask(client, stop=stop if len(stop) > 1 else stop[0]).choices[0]
        expected_text, expected_finish = reference_stop(client, stop)
        assert (got.message.content, got.finish_reason) == (expected_text, expected_finish), stop
        assert not any(s in got.message.content for s in stop)
    cut = ask(client, stop=[middle]).choices[0]
    assert cut.message.content == text[: text.find(middle)] and cut.finish_reason == "stop"
    same = ask(client, stop=["\u2603never"]).choices[0]
    assert (same.message.content, same.finish_reason) == (text, full.finish_reason)


def test_stream_gives_the_same_answer_in_openai_chunks(client):
    full = ask(client).choices[0].message.content
    stop = next(full[i : i + 2] for i in range(len(full) // 2, len(full)) if "\ufffd" not in full[i : i + 2])
    chunks = list(ask(client, stream=True, stop=stop, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == full[: full.find(stop)] and finish == ["stop"]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage.prompt_tokens > 10
    plain = list(ask(client, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in plain) == full and all(c.usage is None for c in plain)


def test_cut_at_stop_matches_stopping_character_by_character():
    """The post-hoc cut equals stopping at the first character after which the text contains a stop
    sequence and cutting before the first stop sequence in it (random texts and stop lists)."""

    def incremental(text: str, stop: list[str]) -> int | None:
        for end in range(len(text) + 1):
            head = text[:end]
            starts = [head.find(s) for s in stop if s in head]
            if starts:
                return min(starts)
        return None

    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 12)))
        stop = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, MAX_STOP_SEQUENCES))]
        assert cut_at_stop(text, stop) == incremental(text, stop), (text, stop)
    assert cut_at_stop("3.5 m. END", ["END", " m."]) == 3  # the first to complete, not the first listed
    assert cut_at_stop("abcd", ["abcd", "bc"]) == 1  # "bc" completes before "abcd" does
    assert cut_at_stop("abc", ["bc", "abc"]) == 0  # both complete at once: cut before both
    assert cut_at_stop("abc", ["x"]) is None and cut_at_stop("abc", []) is None


# --- errors as the openai client sees them ------------------------------------------------------


BAD_REQUESTS = [
    # (options, param, code, words in the message)
    ({"logprobs": True}, "logprobs", "unsupported_parameter", "logprobs=true is not supported"),
    ({"top_logprobs": 3}, "top_logprobs", "unsupported_parameter", "log-probabilities"),
    ({"n": 2}, "n", "unsupported_value", "n must be 1"),
    ({"temperature": 0.7}, "temperature", "unsupported_value", "temperature must be 0"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "unsupported_parameter", "tools"),
    ({"tool_choice": "required"}, "tool_choice", "unsupported_parameter", "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter", "plain text"),
    ({"logit_bias": {"15": 5}}, "logit_bias", "unsupported_parameter", "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_value", "penalties"),
    ({"frequency_penalty": -1}, "frequency_penalty", "unsupported_value", "penalties"),
    ({"extra_body": {"repetition_penalty": 1.2}}, "repetition_penalty", "unsupported_value", "penalties"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_schema", "at most 4"),
    ({"stop": ""}, "stop", "invalid_schema", "must not be empty"),
    ({"extra_body": {"stop": 7}}, "stop", "invalid_schema", "a string or a list"),
    ({"max_tokens": 0}, "max_tokens", "invalid_schema", "greater than or equal to 1"),
    ({"extra_body": {"stream": "maybe"}}, "stream", "invalid_schema", "stream"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role", "invalid_schema", "'user'"),
    ({"messages": []}, "messages", "invalid_schema", "at least 1"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]},
     "messages[0].content[0].type", "invalid_messages", '"input_audio"'),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text", "invalid_messages", "must be a string"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "invalid_messages", "string or a list"),
]


@pytest.mark.parametrize("options, param, code, words", BAD_REQUESTS, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_requests_raise_bad_request_error_naming_the_parameter(client, options, param, code, words):
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, **options)
    error = info.value
    assert error.status_code == 400
    assert set(error.body) == {"message", "type", "param", "code"}
    assert (error.body["type"], error.body["param"], error.body["code"]) == ("invalid_request_error", param, code), error.body
    assert words in error.body["message"] and error.body["message"] in error.message


def test_neutral_values_of_unsupported_options_are_accepted(client):
    """Values that leave a greedy answer unchanged are fine (what OpenAI clients often send by habit)."""
    expected = ask(client).choices[0].message.content
    options = dict(logprobs=False, top_logprobs=0, n=1, tool_choice="none", response_format={"type": "text"}, logit_bias={},
                   presence_penalty=0, frequency_penalty=0.0, top_p=0.9, seed=7, user="me", stop=None)
    assert ask(client, **options).choices[0].message.content == expected
    developer = [{"role": "developer", "content": "Answer in metres."}, *chat(QUESTION, image(3))["messages"]]
    system = [{"role": "system", "content": "Answer in metres."}, *chat(QUESTION, image(3))["messages"]]
    assert ask(client, messages=developer).choices[0].message.content == ask(client, messages=system).choices[0].message.content


def test_other_errors_are_openai_shaped(client):
    base = str(client.base_url).rstrip("/")
    with pytest.raises(openai.NotFoundError) as info:
        ask(client, model="other")
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    with pytest.raises(openai.AuthenticationError) as auth:
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    assert auth.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as route:
        client.get("/no/such/route", cast_to=object)
    assert route.value.body["code"] == "unknown_url" and "GET /v1/no/such/route" in route.value.body["message"]
    headers = {"authorization": f"Bearer {KEY}"}
    for method, path, allowed in (("GET", "/chat/completions", "POST"), ("DELETE", "/models", "GET"), ("POST", "/models", "GET")):
        r = httpx.request(method, base + path, headers=headers)
        assert r.status_code == 405 and allowed in r.headers["allow"], r.text
        assert r.json()["error"]["code"] == "method_not_allowed" and r.json()["error"]["type"] == "invalid_request_error"
    for raw, code in ((b"{", "invalid_json"), (b"[1, 2]", "invalid_schema")):
        r = httpx.post(base + "/chat/completions", content=raw, headers={**headers, "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    r = httpx.post(base + "/chat/completions", headers=headers, json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(image(1)), "detail": 3}}]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[0]", r.text


def test_models_and_health(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "vlm3"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    anonymous = httpx.get(root + "/health")  # probes send no key: status and load, not the model
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok", "queue_depth": 0, "waiting": 0, "running": 0, "max_queue": 64}
    keyed = httpx.get(root + "/health", headers={"authorization": f"Bearer {KEY}"}).json()
    assert keyed["status"] == "ok" and keyed["model"] == "tiny" and keyed["queue_depth"] == 0
