"""Greedy inference with transformers in this process, and fast many-questions-per-image queries.

:meth:`LocalBackend.generate` batches requests with **left padding** through ``model.generate``;
answers do not depend on the batch size or on which requests share a batch.

:meth:`LocalBackend.query_many` answers many questions about the same image(s) by running the
vision encoder and the shared prompt prefix once (system prompt, user header, all image tokens and
the common start of the question text) and decoding the questions in batches on that prefix's KV
cache. Answers (text, token counts, finish reason) equal one ``complete`` call per question:

- Prompts: the chat template is rendered once with a stand-in question (:func:`splice_template`)
  and every question is spliced into it; a real question is rendered in full and compared, and a
  template that changes the stand-in (or renders it twice) is rendered per question instead.
- Token ids: the processor encodes one full prompt (image placeholders expanded); the question
  texts are tokenized in one batched call, each between the added tokens that surround it in the
  template (``<|vision_end|>`` ... ``<|im_end|>``). A tokenizer splits text at added tokens before
  anything else, so a question's ids depend only on the question and those two neighbours: the
  spliced ids are the processor's ids for the full prompt (verified on the first prompt; templates
  without added tokens around the question tokenize every full prompt instead). The shared prefix
  is the longest common prefix of all prompts, so every row sees exactly its own token sequence.
- Qwen-VL's 3D multimodal rope (mrope): positions depend on token types and image grids only, so
  the model's own ``get_rope_index`` is run once per prefix on the prefix followed by text tokens
  for the longest suffix and the answer; a row with ``L`` suffix tokens takes that index's columns
  ``P .. P+L-1`` for its suffix and ``P+L+k`` for its k-th generated token, which is
  ``index + rope_delta`` exactly like ``generate``'s decoding steps.
- Suffixes of different lengths are padded between the prefix and the suffix (left padding of the
  suffix); the attention mask hides the padding, and padding does not advance any position.
- The prefix keys/values are copied once into preallocated buffers for a whole batch of rows;
  each batch rewinds the buffers to the prefix (nothing is re-copied) and decoding steps append in
  place instead of re-concatenating the cache.
- The batch (:meth:`LocalBackend.query_batch_size`) is, unless set, chosen from memory: the KV
  cache and activations of one row against a share of the free device memory, capped.

The computation is the same as the uncached one, only split differently (prefix and suffix in two
forwards, batched rows), so logits agree to float rounding. In float32 the greedy answers are
identical (tested on Qwen2.5-VL and Qwen3-VL); in bfloat16 a near-tie can flip, exactly as it can
when ``generate``'s batch size changes.

Families without ``get_rope_index`` (or prompts whose suffixes would contain image tokens) fall back
to plain batching, which gives the same answers, only slower; :attr:`LocalBackend.prefix_reuse`
says which path ran last.

Decoding is plain greedy: a checkpoint's sampling settings (temperature, top-p, repetition penalty)
are ignored, since vlm3 evaluates with greedy decoding.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from vlm3.models.backend import Backend, ChatRequest, Completion, Message, single_turn

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

#: Families whose model exposes ``model.model.get_rope_index`` with the Qwen2-VL signature
#: (tested: qwen2_5_vl, qwen3_vl; qwen2_vl and qwen3_vl_moe share the code path).
PREFIX_REUSE_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")

#: ``generate`` batch when none is set (every row carries its own image through the vision encoder).
DEFAULT_GENERATE_BATCH = 16
#: Most rows ``query_many`` decodes together when it chooses the batch from memory.
MAX_QUERY_BATCH = 64
#: Share of the free device memory (CPU: MemAvailable) that ``query_many``'s batch may fill.
QUERY_MEMORY_SHARE = 0.25
#: ``query_many`` batch when the free memory of the device cannot be read.
FALLBACK_QUERY_BATCH = 16

#: Stand-in questions rendered to find where the chat template puts the question: control
#: characters and surrounding whitespace, so a template that strips, escapes or rewrites the
#: question text changes them and is rendered per question instead.
_STAND_INS = ("\x00vlm3-question\x01", " \t\x02vlm3\nquestion\x03 \n")


def splice_template(
    render: Callable[[list[Message]], str], images: Sequence["Image"], system: str | None, check: str
) -> tuple[str, str] | None:
    """``(head, tail)`` such that ``head + q + tail`` is the rendered prompt of question ``q``, or None.

    ``render`` turns a chat into prompt text. The single-turn chat is rendered with two stand-in
    questions; the template qualifies when each appears exactly once, verbatim, with the same text
    around it, and the real question ``check`` renders to ``head + check + tail``.
    """
    pieces = []
    for stand_in in _STAND_INS:
        text = render(single_turn(images, stand_in, system).messages)
        if text.count(stand_in) != 1:
            return None
        pieces.append(tuple(text.split(stand_in)))
    if pieces[0] != pieces[1]:
        return None
    head, tail = pieces[0]
    if render(single_turn(images, check, system).messages) != head + check + tail:
        return None
    return head, tail


def render_questions(
    render: Callable[[list[Message]], str], images: Sequence["Image"], questions: Sequence[str], system: str | None
) -> list[str]:
    """The rendered prompt of every single-turn question: the template rendered once, questions spliced in.

    Falls back to rendering each question when :func:`splice_template` refuses the template.
    """
    if not questions:
        return []
    template = splice_template(render, images, system, questions[0])
    if template is None:
        return [render(single_turn(images, q, system).messages) for q in questions]
    head, tail = template
    return [head + q + tail for q in questions]


@dataclass(frozen=True)
class _Prefix:
    """A shared prompt prefix: its token ids and what the model needs to encode it."""

    ids: list[int]
    mm_types: list[int]
    vision: dict[str, "torch.Tensor"]  # pixel_values, image_grid_thw, ...
    suffixes: list[list[int]]  # per question, in question order
    how: str  # how the prompts were rendered and tokenized (for prefix_reuse)


class LocalBackend(Backend):
    """A transformers vision-language model and its processor, decoding greedily.

    Args:
        model, processor: e.g. from :func:`vlm3.models.hf.load_model_and_processor`.
        batch_size: requests per forward batch, for ``generate`` and ``query_many``; None (the
            default) lets ``query_many`` choose it from memory (:meth:`query_batch_size`) and
            ``generate`` use :data:`DEFAULT_GENERATE_BATCH`.
        reuse_prefix: let ``query_many`` share the image prefix's KV cache (False: plain batching).
        name: a label for logs (defaults to the model's ``name_or_path``).

    Calls are serialised by a lock: transformers' Qwen-VL models keep per-call rope state on the
    module, so one model must not run two generations at once.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        batch_size: int | None = None,
        reuse_prefix: bool = True,
        name: str | None = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.batch_size: int | None = None if batch_size is None else int(batch_size)
        self.reuse_prefix = reuse_prefix
        self.name = name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
        self.family = str(getattr(model.config, "model_type", ""))
        self.eos_ids = _eos_ids(model, self.tokenizer)
        pad = getattr(model.generation_config, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else (self.tokenizer.pad_token_id or self.eos_ids[0]))
        #: How the last ``query_many`` ran: "prefix: <sizes>" (shared KV cache) or "batched: <reason>".
        self.prefix_reuse: str = ""
        #: Rows per batch of the last ``query_many`` on the shared-prefix path (0: none yet).
        self.query_rows: int = 0
        self._lock = threading.RLock()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        dtype: str | None = None,
        device: str = "cpu",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        attn_implementation: str | None = None,
        **kwargs: Any,
    ) -> "LocalBackend":
        """Load a checkpoint. ``dtype`` defaults to float32 on CPU and bfloat16 elsewhere."""
        from vlm3.models.hf import load_model_and_processor

        if dtype is None:
            dtype = "float32" if str(device).startswith("cpu") else "bfloat16"
        model, processor = load_model_and_processor(
            name_or_path,
            dtype=dtype,  # type: ignore[arg-type]
            device=device,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            attn_implementation=attn_implementation,
        )
        kwargs.setdefault("name", os.fspath(name_or_path))
        return cls(model, processor, **kwargs)

    # --- plain batched generation ---------------------------------------------------------------

    def generate(self, requests: Sequence[ChatRequest], max_new_tokens: int = 64) -> list[str]:
        """Greedy answers, ``batch_size`` requests per left-padded ``model.generate`` call."""
        return [c.text for c in self.complete(requests, max_new_tokens)]

    def complete(self, requests: Sequence[ChatRequest], max_new_tokens: int = 64) -> list[Completion]:
        """:meth:`generate` with prompt / completion token counts and finish reasons."""
        import torch

        _check_max_new_tokens(max_new_tokens)
        batch = self.batch_size or DEFAULT_GENERATE_BATCH
        out: list[Completion] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(requests), batch):
                out += self._generate_batch(requests[start : start + batch], max_new_tokens)
        return out

    def _generate_batch(self, requests: Sequence[ChatRequest], max_new_tokens: int) -> list[Completion]:
        from transformers import GenerationConfig

        texts = [self._render(r.messages) for r in requests]
        images = [im for r in requests for im in r.images]
        enc = self.processor(
            text=texts,
            images=[_rgb(im) for im in images] or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ).to(self.model.device)
        # A clean config: plain greedy, whatever sampling defaults the checkpoint ships with.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        out = self.model.generate(**enc, generation_config=config)
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()
        return self._completions(new, [int(n) for n in prompt_lengths])

    # --- many questions, one image prefix ---------------------------------------------------------

    def query_many(
        self,
        images: Sequence["Image"],
        questions: Sequence[str],
        max_new_tokens: int = 64,
        system: str | None = None,
    ) -> list[Completion]:
        """Answers to single-turn questions about the same image(s), sharing the prefix's KV cache.

        Equal to ``complete([single_turn(images, q, system)])`` for each question: the same text,
        token counts and finish reason (``"length"`` for a row that reached ``max_new_tokens``
        without an end-of-turn token, ``"stop"`` otherwise), on both paths.
        """
        import torch

        _check_max_new_tokens(max_new_tokens)
        if isinstance(questions, str):
            raise TypeError("questions must be a list of strings, not a single string")
        if not questions:
            return []
        with self._lock, torch.inference_mode():
            prefix, reason = self._plan_prefix(images, questions, system) if self.reuse_prefix else (None, "disabled")
            if prefix is None:
                self.prefix_reuse = f"batched: {reason}"
                return self.complete([single_turn(images, q, system) for q in questions], max_new_tokens)
            return self._query_with_prefix(prefix, max_new_tokens)

    def query_batch_size(self, prefix_tokens: int, suffix_tokens: int, max_new_tokens: int) -> tuple[int, str]:
        """Rows ``query_many`` decodes together, and where the number comes from.

        ``batch_size`` when set; otherwise the rows whose KV cache (``prefix_tokens + suffix_tokens
        + max_new_tokens`` tokens each) and forward activations fit in :data:`QUERY_MEMORY_SHARE`
        of the free device memory, at least 1 and at most :data:`MAX_QUERY_BATCH`.
        """
        if self.batch_size is not None:
            return self.batch_size, "set"
        free = _free_memory(self.model.device)
        if free is None:
            return FALLBACK_QUERY_BATCH, "default: free memory unknown"
        row = _row_bytes(self.model, prefix_tokens + suffix_tokens + max_new_tokens, suffix_tokens)
        fit = int(QUERY_MEMORY_SHARE * free // row)
        return max(1, min(MAX_QUERY_BATCH, fit)), f"from memory: {row / 2**20:.1f} MiB a row, {free / 2**30:.1f} GiB free"

    def _plan_prefix(
        self, images: Sequence["Image"], questions: Sequence[str], system: str | None
    ) -> tuple[_Prefix | None, str]:
        """Token ids of every prompt and their longest common prefix, or (None, why not)."""
        if self.family not in PREFIX_REUSE_FAMILIES or not hasattr(self.model.model, "get_rope_index"):
            return None, f"no exact prefix reuse for model type {self.family!r}"
        template = splice_template(self._render, images, system, questions[0])
        if template is None:
            texts = [self._render(single_turn(images, q, system).messages) for q in questions]
        else:
            texts = [template[0] + questions[0] + template[1]]
        # The processor expands each image placeholder into one token per merged patch.
        enc = self.processor(text=texts[:1], images=[_rgb(im) for im in images] or None, return_tensors="pt")
        first = enc["input_ids"][0].tolist()
        image_id = _token_id(self.model.config, "image_token_id")
        video_id = _token_id(self.model.config, "video_token_id")
        spliced = self._splice_tokens(template, questions, first) if template is not None else None
        if spliced is not None:
            head, mids, tail = spliced
            # The shared prefix: the template's head and the questions' common first tokens.
            c = _common_prefix_length(mids)
            prefix_ids = first[: len(head) + c]
            suffixes = [m[c:] + tail for m in mids]
            how = "template rendered once, questions spliced in"
        else:
            if template is not None:
                texts = [template[0] + q + template[1] for q in questions]
            # Encode the others as text and expand their placeholders as the processor does.
            raw = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            seqs = [_expand(ids, image_id, _image_token_counts(enc, self.processor)) for ids in raw]
            if seqs[0] != first:
                return None, "the processor's token ids differ from the tokenizer's (unexpected template)"
            p = _common_prefix_length(seqs, limit=min(len(s) for s in seqs) - 1)
            prefix_ids, suffixes = first[:p], [s[p:] for s in seqs]
            how = "every prompt tokenized" + (" (template rendered once)" if template is not None else "")
        if any(t in (image_id, video_id) for s in suffixes for t in s):
            return None, "image tokens after the shared prefix"
        P = len(prefix_ids)
        mm_types = enc["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in enc else _mm_types(first, image_id, video_id)
        vision = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        return _Prefix(prefix_ids, mm_types[:P], vision, suffixes, how), ""

    def _splice_tokens(
        self, template: tuple[str, str], questions: Sequence[str], first: list[int]
    ) -> tuple[list[int], list[list[int]], list[int]] | None:
        """(head ids, each question's ids, tail ids) by one batched tokenizer call, or None.

        Needs an added token at the end of the head and at the start of the tail: each question is
        tokenized between those two, so its ids are those it has in the full prompt. ``first``
        (the processor's ids of the first full prompt) gives the head's ids, image tokens expanded,
        and checks the splice.
        """
        head, tail = template
        left, right = _added_token_at(self.tokenizer, head, end=True), _added_token_at(self.tokenizer, tail, end=False)
        if left is None or right is None:
            return None
        lid, rid = self.tokenizer.convert_tokens_to_ids([left, right])
        enc = self.tokenizer([left + q + right for q in questions] + [tail], add_special_tokens=False)["input_ids"]
        tail_ids = enc[-1]
        mids = []
        for ids in enc[:-1]:
            if len(ids) < 2 or ids[0] != lid or ids[-1] != rid:
                return None
            mids.append(ids[1:-1])
        n_head = len(first) - len(mids[0]) - len(tail_ids)
        if n_head < 1 or first[n_head - 1] != lid or first[n_head:] != mids[0] + tail_ids:
            return None
        return first[:n_head], mids, tail_ids

    def _query_with_prefix(self, prefix: _Prefix, max_new_tokens: int) -> list[Completion]:
        import torch

        device = self.model.device
        P, n = len(prefix.ids), len(prefix.suffixes)
        longest = max(len(s) for s in prefix.suffixes)
        limit, source = self.query_batch_size(P, longest, max_new_tokens)
        # As few batches as the limit allows, equally full; shortest suffixes together (less
        # padding). Answers do not depend on the grouping.
        rows = self.query_rows = math.ceil(n / math.ceil(n / limit))
        order = sorted(range(n), key=lambda i: len(prefix.suffixes[i]))
        self.prefix_reuse = (
            f"prefix: {P} shared tokens, {n} suffixes of {len(prefix.suffixes[order[0]])}-{longest} tokens, "
            f"batch {rows} (limit {limit}, {source}); {prefix.how}"
        )

        vision = {k: v.to(device) for k, v in prefix.vision.items()}
        positions = self._reference_positions(prefix, longest + max_new_tokens, vision.get("image_grid_thw"))
        ids = torch.tensor([prefix.ids], device=device)
        out = self.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=positions[:, None, :P],
            mm_token_type_ids=torch.tensor([prefix.mm_types], device=device),
            use_cache=True,
            logits_to_keep=1,
            **vision,
        )
        caches = _BatchCache(self.model.config, out.cache, rows, capacity=P + longest + max_new_tokens)
        del out

        tokens: list[list[int]] = [[] for _ in range(n)]
        for start in range(0, n, rows):
            batch = order[start : start + rows]
            decoded = self._decode_batch([prefix.suffixes[i] for i in batch], caches, positions, P, max_new_tokens)
            for i, row in zip(batch, decoded):
                tokens[i] = row
        # A finished row's tokens end with its end-of-turn token ("stop"); a row without one ran out
        # of max_new_tokens ("length"). The prompt is the prefix plus the row's suffix.
        return self._completions(tokens, [P + len(s) for s in prefix.suffixes])

    def _reference_positions(self, prefix: _Prefix, text_tokens: int, grid: "torch.Tensor | None") -> "torch.Tensor":
        """Rope positions [3, P + text_tokens] of the prefix followed by ``text_tokens`` text tokens.

        ``get_rope_index`` places tokens by their type and the image grids only, so this one index
        holds every row's positions: the suffix of a row continues the prefix like these text tokens.
        """
        import torch

        device = self.model.device
        ids = torch.tensor([prefix.ids + [self.pad_id] * text_tokens], device=device)
        types = torch.tensor([prefix.mm_types + [0] * text_tokens], device=device)
        positions, _ = self._rope_index(ids, types, torch.ones_like(ids), grid)
        return positions[:, 0]

    def _decode_batch(
        self,
        suffixes: list[list[int]],
        caches: "_BatchCache",
        positions: "torch.Tensor",
        P: int,
        max_new_tokens: int,
    ) -> list[list[int]]:
        """Greedy tokens for a batch of suffixes on the prefix cache (finished rows continue on padding)."""
        import torch

        device = self.model.device
        B, S, N = len(suffixes), max(len(s) for s in suffixes), max_new_tokens
        lengths = torch.tensor([len(s) for s in suffixes], device=device)
        # Layout per row: [prefix | padding | suffix | answer]; the mask hides the padding.
        ids = torch.tensor([[self.pad_id] * (S - len(s)) + s for s in suffixes], device=device)
        pad = S - lengths[:, None]  # padding columns of each row
        columns = torch.arange(S, device=device)[None, :]
        mask = torch.ones((B, P + S + N), dtype=torch.long, device=device)
        mask[:, P : P + S] = columns >= pad
        # Row b's suffix token j sits at index P + j of its sequence, its k-th answer token at
        # P + length + k (padding columns take the position of the first suffix token, unseen).
        suffix_positions = positions[:, P + (columns - pad).clamp(min=0)]
        answer_positions = positions[:, P + lengths[:, None] + torch.arange(N, device=device)[None, :]]

        cache = caches.for_batch(B)
        logits = self.model(
            input_ids=ids,
            attention_mask=mask[:, : P + S],
            position_ids=suffix_positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        eos = torch.tensor(self.eos_ids, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        out = torch.empty((B, N), dtype=torch.long, device=device)
        steps = N
        for step in range(N):
            nxt = logits.argmax(dim=-1).masked_fill_(done, self.pad_id)  # finished rows idle on padding
            out[:, step] = nxt
            done |= torch.isin(nxt, eos)
            if step == N - 1 or bool(done.all()):
                steps = step + 1
                break
            logits = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask[:, : P + S + step + 1],
                position_ids=answer_positions[:, :, step : step + 1],
                cache=cache,
                use_cache=True,
            ).logits[:, -1]
        return out[:, :steps].tolist()

    def _rope_index(self, ids, types, mask, grid) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(position ids [3, B, L], rope deltas [B, 1]) from the model's own mrope index."""
        return self.model.model.get_rope_index(
            input_ids=ids, mm_token_type_ids=types, image_grid_thw=grid, attention_mask=mask
        )

    # --- helpers ----------------------------------------------------------------------------------

    def _render(self, messages: list[dict]) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _completions(self, rows: list[list[int]], prompt_tokens: list[int]) -> list[Completion]:
        """Completions of generated token rows: each answer ends at its first end-of-turn token.

        ``generate`` (and ``query_many``) pad finished rows; a row without an end-of-turn token ran
        out of ``max_new_tokens``. All rows are detokenized in one batched call.
        """
        eos = set(self.eos_ids)
        ends = [next((i for i, t in enumerate(row) if t in eos), None) for row in rows]
        texts = self.tokenizer.batch_decode(
            [row if end is None else row[:end] for row, end in zip(rows, ends)], skip_special_tokens=True
        )
        return [
            Completion(text, n, len(row), "length") if end is None else Completion(text, n, end + 1, "stop")
            for text, n, row, end in zip(texts, prompt_tokens, rows, ends)
        ]


class _BatchCache:
    """The prefix's keys/values copied once into buffers for ``rows`` sequences of ``capacity`` tokens.

    :meth:`for_batch` rewinds the buffers to the prefix for the next batch: the prefix is never
    written again, decoding steps append in place after it. Layer types other than full attention
    get a fresh ``DynamicCache`` of the prefix per batch instead.
    """

    def __init__(self, config: Any, prefix_cache: Any, rows: int, capacity: int) -> None:
        from transformers.cache_utils import Cache

        self._config = config
        prefix = [(layer.keys, layer.values) for layer in prefix_cache.layers]
        layer_types = getattr(config.get_text_config(decoder=True), "layer_types", None) or ["full_attention"]
        self._prefix, self._layers = prefix, None
        if all(t == "full_attention" for t in layer_types):
            cls = _preallocated_layer_class()
            self._layers = [cls(k, v, rows, capacity) for k, v in prefix]
            self._cache = Cache(layers=self._layers)
            self._prefix = []  # copied into the buffers; not kept

    def for_batch(self, batch: int) -> Any:
        """A cache holding ``batch`` copies of the prefix and nothing after it."""
        if self._layers is None:
            from transformers import DynamicCache

            return DynamicCache(
                ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self._prefix],
                config=self._config,
            )
        for layer in self._layers:
            layer.rewind(batch)
        return self._cache


_LAYER_CLASS: Any = None


def _preallocated_layer_class() -> Any:
    """``DynamicLayer`` with preallocated storage (built on first use: transformers is imported lazily)."""
    global _LAYER_CLASS
    if _LAYER_CLASS is not None:
        return _LAYER_CLASS
    import torch
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """Keys/values of ``rows`` sequences in buffers of ``capacity`` tokens; the prefix is written once."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: int, capacity: int) -> None:
            super().__init__()
            _, heads, length, _ = keys.shape
            self._k = keys.new_empty((rows, heads, capacity, keys.shape[-1]))
            self._v = values.new_empty((rows, heads, capacity, values.shape[-1]))
            self._k[:, :, :length] = keys
            self._v[:, :, :length] = values
            self._prefix_length = length
            self.device = keys.device
            self.is_initialized = True
            self.rewind(rows)

        def rewind(self, batch: int) -> None:
            """Back to the prefix alone, for the first ``batch`` rows."""
            if batch > self._k.shape[0]:
                raise RuntimeError(f"batch of {batch} rows > {self._k.shape[0]} preallocated")
            self._batch, self._length = batch, self._prefix_length
            self._expose()

        def _expose(self) -> None:
            self.keys = self._k[: self._batch, :, : self._length]
            self.values = self._v[: self._batch, :, : self._length]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            n = key_states.shape[-2]
            if self._length + n > self._k.shape[2]:
                raise RuntimeError(f"prefix cache full: {self._length} + {n} > {self._k.shape[2]} tokens")
            self._k[: self._batch, :, self._length : self._length + n] = key_states
            self._v[: self._batch, :, self._length : self._length + n] = value_states
            self._length += n
            self._expose()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self._length

    _LAYER_CLASS = PreallocatedLayer
    return _LAYER_CLASS


def _row_bytes(model: Any, tokens: int, suffix_tokens: int) -> int:
    """Memory of one ``query_many`` row: its KV cache of ``tokens`` tokens and its largest activations.

    Activations (the suffix forward): hidden states and MLP of ``suffix_tokens`` tokens, float32
    attention scores against all ``tokens``, and the last position's float32 logits.
    """
    text = model.config.get_text_config(decoder=True)
    layers = int(text.num_hidden_layers)
    heads = int(text.num_attention_heads)
    hidden = int(text.hidden_size)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    intermediate = int(getattr(text, "intermediate_size", None) or 4 * hidden)
    itemsize = next(model.parameters()).element_size()
    kv = layers * 2 * kv_heads * head_dim * itemsize * tokens
    activations = suffix_tokens * (4 * hidden + 3 * intermediate) * itemsize
    activations += 4 * heads * suffix_tokens * tokens + 4 * int(getattr(text, "vocab_size", 0) or 0)
    return kv + activations


def _free_memory(device: Any) -> int | None:
    """Free bytes on ``device``: CUDA's free memory plus what torch's allocator holds unused; on CPU,
    the kernel's MemAvailable. None where it cannot be read."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def _added_token_at(tokenizer: Any, text: str, *, end: bool) -> str | None:
    """The longest added token (special or not) that ``text`` ends (``end``) or starts with, or None.

    Tokens matched only as whole words (``single_word``) are skipped: whether they match depends
    on the text on both sides.
    """
    found = None
    for added in tokenizer.added_tokens_decoder.values():
        token = str(added)
        if not token or getattr(added, "single_word", False):
            continue
        if (text.endswith(token) if end else text.startswith(token)) and (found is None or len(token) > len(found)):
            found = token
    return found


def _common_prefix_length(seqs: Sequence[Sequence[int]], limit: int | None = None) -> int:
    """Length of the longest common prefix of ``seqs`` (at most ``limit``)."""
    n = min(len(s) for s in seqs) if limit is None else limit
    first = seqs[0]
    p = 0
    while p < n and all(s[p] == first[p] for s in seqs):
        p += 1
    return p


def _check_max_new_tokens(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {n!r}")


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the model has no end-of-sequence token (generation_config.eos_token_id)")
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _token_id(config: Any, name: str) -> int | None:
    value = getattr(config, name, None)
    if value is None:
        value = getattr(getattr(config, "text_config", None), name, None)
    return None if value is None else int(value)


def _image_token_counts(enc: Any, processor: Any) -> list[int]:
    """Tokens each image expands to: grid t * h * w / merge^2."""
    grid = enc.get("image_grid_thw")
    if grid is None:
        return []
    merge = int(processor.image_processor.merge_size)
    return [int(g.prod()) // (merge * merge) for g in grid]


def _expand(ids: list[int], image_id: int | None, counts: list[int]) -> list[int]:
    """Replace the k-th image placeholder with ``counts[k]`` copies, as the processor does."""
    out: list[int] = []
    k = 0
    for t in ids:
        if t == image_id and k < len(counts):
            out += [t] * counts[k]
            k += 1
        else:
            out.append(t)
    return out


def _mm_types(ids: list[int], image_id: int | None, video_id: int | None) -> list[int]:
    return [1 if t == image_id else 2 if t == video_id else 0 for t in ids]


def _rgb(image: "Image") -> "Image":
    return image if image.mode == "RGB" else image.convert("RGB")


__all__ = [
    "DEFAULT_GENERATE_BATCH",
    "LocalBackend",
    "MAX_QUERY_BATCH",
    "PREFIX_REUSE_FAMILIES",
    "render_questions",
    "single_turn",
    "splice_template",
]
