"""query_many's fast path: the template rendered once with questions spliced in (token ids equal to
rendering each question), the rope index computed once per prefix, the prefix cache copied once and
rewound per batch, the batch chosen from memory, and vLLM's many-point path (with a fake vLLM)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from support import random_image as image
from vlm3.models.backend import single_turn

DEPTH = "How far is the pixel at ({x}, {y}) from the camera? Both x and y are normalized to between [0, 2000)."

#: Questions whose tokens could go wrong at the splice: whitespace at either end, characters NFC
#: composes with their neighbours (">" + U+0338 is one character), special-token text inside the
#: question, an empty question, digits and punctuation against the template's tokens.
TRICKY = [
    DEPTH.format(x=17, y=1234),
    " leading space",
    "trailing space ",
    "\n newline first and last\n",
    "\u0338 a combining mark first",
    "e\u0301 composed, and > \u0338 composed",
    "ends with a combining mark e\u0301",
    "contains <|im_end|> and <|vision_end|> text",
    "<|im_end|>",
    "",
    "0",
    ">",
    "Object at (3, 4)? <think>x</think>",
    "\u00e9t\u00e9 \u4e2d\u6587 \U0001f600 tabs\tand  double  spaces",
]




@pytest.fixture(scope="module")
def backends(tiny_models):
    import torch

    from vlm3.models.local import LocalBackend
    from vlm3.models.tiny import redraw_weights

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for family, folder in tiny_models.items():
        backend = LocalBackend.from_pretrained(folder)
        redraw_weights(backend.model, std=0.1)  # answers that depend on the input
        out[family] = backend
    yield out
    torch.set_num_threads(threads)


def processor_ids(backend, images, question, system):
    """The token ids of one question's prompt, rendered and encoded on its own (the reference)."""
    text = backend._render(single_turn(images, question, system).messages)
    enc = backend.processor(text=[text], images=images or None, return_tensors="pt")
    return enc["input_ids"][0].tolist()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("system", [None, "You estimate metric depth."])
def test_spliced_token_ids_equal_each_question_rendered_alone(backends, family, system):
    backend = backends[family]
    for images in ([image(1, 56, 84)], [image(2, 64, 64), image(3, 96, 64)]):
        questions = TRICKY + [DEPTH.format(x=x, y=y) for x, y in [(0, 0), (1999, 1999), (5, 77)]]
        prefix, reason = backend._plan_prefix(images, questions, system)
        assert prefix is not None, reason
        assert prefix.how == "template rendered once, questions spliced in"
        for q, suffix in zip(questions, prefix.suffixes):
            assert prefix.ids + suffix == processor_ids(backend, images, q, system), repr(q)


def test_splice_refuses_templates_that_rewrite_the_question():
    from vlm3.models.local import render_questions, splice_template

    def render(template):
        def inner(messages):
            text = "".join(p.get("text", "<img>") for m in messages for p in m["content"])
            return template(text)
        return inner

    img = [image(1, 8, 8)]
    plain = render(lambda t: f"<s>{t}</s>")
    assert splice_template(plain, img, None, "q") == ("<s><img>", "</s>")
    assert render_questions(plain, img, ["a", " b "], None) == ["<s><img>a</s>", "<s><img> b </s>"]
    for rewriting in (lambda t: f"<s>{t.strip()}</s>", lambda t: f"<s>{t}|{t}</s>", lambda t: t.replace("\n", " ")):
        assert splice_template(render(rewriting), img, None, "q") is None
        # Rendered per question instead, so the prompts are still the template's own.
        assert render_questions(render(rewriting), img, [" a ", "b\n"], None) == [
            render(rewriting)(single_turn(img, q).messages) for q in (" a ", "b\n")
        ]


def test_template_without_added_tokens_around_the_question_tokenizes_every_prompt(backends, monkeypatch):
    """A template with plain text around the question: the full prompts are tokenized instead,
    with the same ids and answers."""
    backend = backends["qwen2_5_vl"]
    img = [image(4, 56, 56)]
    original = backend._render

    def render(messages):
        text = original(messages).replace("<|vision_end|>", "<|vision_end|>Q: ")
        return text.replace("<|im_end|>\n<|im_start|>assistant", " A?<|im_end|>\n<|im_start|>assistant")

    monkeypatch.setattr(backend, "_render", render)
    questions = TRICKY[:6] + [DEPTH.format(x=x, y=9) for x in (1, 22, 333)]
    prefix, _ = backend._plan_prefix(img, questions, None)
    assert prefix.how == "every prompt tokenized (template rendered once)"
    for q, suffix in zip(questions, prefix.suffixes):
        assert prefix.ids + suffix == processor_ids(backend, img, q, None)
    expected = [backend.complete([single_turn(img, q)], max_new_tokens=4)[0] for q in questions]
    assert backend.query_many(img, questions, max_new_tokens=4) == expected


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_rope_index_once_per_prefix_equals_the_index_of_every_row(backends, family):
    """The one index over prefix + longest suffix + answer gives every row the positions the
    model's get_rope_index gives its own padded row, and generate's index + delta for its answer."""
    import torch

    backend = backends[family]
    img = [image(5, 84, 56)]
    questions = ["a", DEPTH.format(x=1, y=2), "What is at (1500, 20)? Answer with one word, please.", "b c"]
    prefix, _ = backend._plan_prefix(img, questions, None)
    P, N = len(prefix.ids), 5
    grid = prefix.vision["image_grid_thw"]
    S = max(len(s) for s in prefix.suffixes)
    reference = backend._reference_positions(prefix, S + N, grid)
    # Each row as the uncached batched run lays it out: [prefix | padding | suffix], mask on padding.
    B = len(questions)
    ids = torch.tensor([prefix.ids + [backend.pad_id] * (S - len(s)) + s for s in prefix.suffixes])
    mask = torch.tensor([[1] * P + [0] * (S - len(s)) + [1] * len(s) for s in prefix.suffixes])
    typed = torch.zeros_like(ids)
    typed[:, :P] = torch.tensor(prefix.mm_types)
    positions, deltas = backend._rope_index(ids, typed, mask, grid.repeat(B, 1))
    for b, s in enumerate(prefix.suffixes):
        L = len(s)
        assert torch.equal(positions[:, b, P + S - L :], reference[:, P : P + L])
        assert torch.equal(positions[:, b, :P], reference[:, :P])
        for k in range(N):
            assert (reference[:, P + L + k] == P + L + k + deltas[b]).all()


def test_prefix_copied_once_and_rewound_per_batch(backends, monkeypatch):
    """Batches of 5 rows (the last one shorter) reuse one cache whose prefix is never rewritten,
    and the answers equal one generate per question."""
    from vlm3.models import local

    backend = backends["qwen2_5_vl"]
    img = [image(6, 84, 56)]
    questions = [DEPTH.format(x=x, y=y) for x, y in np.random.default_rng(1).integers(0, 2000, (12, 2))]
    made, handed = [], []
    original_init, original_for_batch = local._BatchCache.__init__, local._BatchCache.for_batch

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        made.append(self)

    def for_batch(self, batch):
        cache = original_for_batch(self, batch)
        layer = cache.layers[0]
        prefix = layer._k[:, :, : layer._prefix_length].clone()
        handed.append((batch, id(cache), layer._k.data_ptr(), layer.get_seq_length(), prefix))
        return cache

    monkeypatch.setattr(local._BatchCache, "__init__", init)
    monkeypatch.setattr(local._BatchCache, "for_batch", for_batch)
    saved, backend.batch_size = backend.batch_size, 5
    try:
        got = backend.query_many(img, questions, max_new_tokens=6)
    finally:
        backend.batch_size = saved
    expected = [backend.complete([single_turn(img, q)], max_new_tokens=6)[0] for q in questions]
    assert got == expected
    assert len(made) == 1 and backend.query_rows == 4  # 12 questions in 3 equal batches of at most 5
    assert [h[0] for h in handed] == [4, 4, 4]
    assert len({h[1] for h in handed}) == 1 and len({h[2] for h in handed}) == 1  # one cache, one buffer
    P = len(backend._plan_prefix(img, questions, None)[0].ids)
    assert all(h[3] == P for h in handed)  # rewound to the prefix
    assert all((h[4] == handed[0][4]).all() for h in handed)  # the prefix never rewritten


def test_batch_chosen_from_memory(backends, monkeypatch):
    from vlm3.models import local

    backend = backends["qwen2_5_vl"]
    assert backend.batch_size is None  # the default: chosen per call
    assert local._free_memory("cpu") > 0
    row = local._row_bytes(backend.model, 260 + 32 + 8, 32)
    text = backend.model.config.get_text_config(decoder=True)
    head_dim = text.hidden_size // text.num_attention_heads
    assert row > 300 * text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * 4  # at least its KV cache
    monkeypatch.setattr(local, "_free_memory", lambda device: 10**15)
    assert backend.query_batch_size(260, 40, 8)[0] == local.MAX_QUERY_BATCH
    monkeypatch.setattr(local, "_free_memory", lambda device: int(10.5 * row / local.QUERY_MEMORY_SHARE))
    rows, source = backend.query_batch_size(260, 32, 8)
    assert rows == 10 and source.startswith("from memory")
    monkeypatch.setattr(local, "_free_memory", lambda device: 1)
    assert backend.query_batch_size(260, 40, 8)[0] == 1
    monkeypatch.setattr(local, "_free_memory", lambda device: None)
    assert backend.query_batch_size(260, 40, 8) == (local.FALLBACK_QUERY_BATCH, "default: free memory unknown")
    backend.batch_size = 7
    try:
        assert backend.query_batch_size(260, 40, 8) == (7, "set")
    finally:
        backend.batch_size = None


def test_default_batch_from_memory_answers_like_one_generate_per_point(backends):
    backend = backends["qwen3_vl"]
    img = [image(7, 112, 84)]
    questions = [DEPTH.format(x=x, y=y) for x, y in np.random.default_rng(2).integers(0, 2000, (20, 2))] + TRICKY[:4]
    got = backend.query_many(img, questions, max_new_tokens=8, system="Answer in metres.")
    assert "from memory" in backend.prefix_reuse and backend.query_rows == len(questions)
    expected = [backend.complete([single_turn(img, q, "Answer in metres.")], max_new_tokens=8)[0] for q in questions]
    assert got == expected
    assert len({c.text for c in got}) >= 12


def test_eval_and_predict_open_local_models_with_the_batch_from_memory(tiny_models):
    from vlm3.models.backend import open_backend
    from vlm3.models.local import LocalBackend

    backend = open_backend(str(tiny_models["qwen2_5_vl"]))  # what vlm3 eval / predict do without --batch-size
    assert isinstance(backend, LocalBackend) and backend.batch_size is None
    assert open_backend(str(tiny_models["qwen2_5_vl"]), 3).batch_size == 3


# --- vLLM, with a fake engine -------------------------------------------------------------------


class FakeLLM:
    """Records vllm.LLM's arguments and every generate call; answers with the prompt's last word."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[list[dict]] = []

    def generate(self, prompts, params, use_tqdm=True):
        assert isinstance(prompts, list) and use_tqdm is False
        self.calls.append(prompts)
        return [
            types.SimpleNamespace(
                prompt_token_ids=[0] * len(p["prompt"]),
                outputs=[types.SimpleNamespace(text=f"answer {p['prompt'][-25:]}", token_ids=[1, 2], finish_reason="stop")],
            )
            for p in prompts
        ]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_vllm_query_many_splices_the_template_and_warms_the_prefix_cache(fake_vllm, tiny_models):
    from vlm3.models.local import LocalBackend
    from vlm3.models.vllm_backend import VLLMBackend, image_uuid

    vb = VLLMBackend(str(tiny_models["qwen3_vl"]))
    assert vb.llm.kwargs["enable_prefix_caching"] is True
    local = LocalBackend.from_pretrained(tiny_models["qwen3_vl"])
    a, b = image(1, 32, 32), image(2, 32, 32).convert("L")
    questions = [DEPTH.format(x=x, y=3) for x in (1, 22, 333)] + TRICKY[:3]
    got = vb.query_many([a], questions, max_new_tokens=5, system="sys")
    # Two engine calls: the first question alone (it fills the prefix cache), then all others.
    assert [len(c) for c in vb.llm.calls] == [1, len(questions) - 1]
    inputs = [p for call in vb.llm.calls for p in call]
    # The prompts are exactly each question's own rendering (the same text the local backend feeds).
    assert [p["prompt"] for p in inputs] == [local._render(single_turn([a], q, "sys").messages) for q in questions]
    assert all(p["multi_modal_data"] == {"image": a} for p in inputs)
    assert {p["multi_modal_uuids"]["image"] for p in inputs} == {image_uuid(a)}
    assert [c.text for c in got] == [f"answer {p['prompt'][-25:]}" for p in inputs]
    assert {c.finish_reason for c in got} == {"stop"} and got[0].completion_tokens == 2

    # Two images: lists in placeholder order, RGB, with one ID each; the same content gets the same ID.
    vb.llm.calls.clear()
    vb.query_many([a, b], ["which?"], max_new_tokens=5)
    (p,) = vb.llm.calls[0]
    assert [im.mode for im in p["multi_modal_data"]["image"]] == ["RGB", "RGB"]
    assert p["multi_modal_uuids"]["image"] == [image_uuid(a), image_uuid(b.convert("RGB"))]
    assert image_uuid(image(1, 32, 32)) == image_uuid(a) != image_uuid(image(3, 32, 32))
    assert vb.query_many([a], []) == []
    with pytest.raises(TypeError, match="list of strings"):
        vb.query_many([a], "one question")


def test_completions_end_at_the_first_end_of_turn_token(backends):
    """Answers are detokenized in one batched call: each the text before its first end-of-turn
    token ("stop", that token counted) or all of it ("length")."""
    from vlm3.models.backend import Completion

    backend = backends["qwen2_5_vl"]
    tok, eos, pad = backend.tokenizer, backend.eos_ids[0], backend.pad_id
    words = tok("depth 3.75 metres", add_special_tokens=False)["input_ids"]
    rows = [words + [eos, pad, pad], [eos, pad], words, [], words[:1] + [eos]]
    got = backend._completions(rows, [10, 11, 12, 13, 14])
    assert got == [
        Completion(tok.decode(words, skip_special_tokens=True), 10, len(words) + 1, "stop"),
        Completion("", 11, 1, "stop"),
        Completion(tok.decode(words, skip_special_tokens=True), 12, len(words), "length"),
        Completion("", 13, 0, "length"),
        Completion(tok.decode(words[:1], skip_special_tokens=True), 14, 2, "stop"),
    ]
    assert got[0].text == "depth 3.75 metres"
