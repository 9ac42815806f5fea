"""Greedy inference with transformers in this process, and fast many-questions-per-image queries.

:meth:`LocalBackend.generate` batches requests with **left padding** through ``model.generate``;
answers do not depend on the batch size or on which requests share a batch.

:meth:`LocalBackend.query_many` answers many questions about the same image(s) by running the
vision encoder and the shared prompt prefix once (system prompt, user header, all image tokens and
the common start of the question text) and decoding the questions in batches on copies of that
prefix's KV cache. Answers (text, token counts, finish reason) equal one ``complete`` call per
question:

- Token ids are those the processor gives for each full prompt; the prefix is their longest common
  prefix, so every row sees exactly its own uncached token sequence.
- Qwen-VL's 3D multimodal rope (mrope): the position ids of every row are computed by the model's
  own ``get_rope_index`` over the row's full sequence (prefix + suffix), in the very layout the
  cached forward uses, and the suffix columns are passed explicitly. Generated tokens continue at
  ``index + rope_delta`` exactly like ``generate``'s decoding steps. Nothing is assumed about how
  text positions continue after an image.
- Suffixes of different lengths are padded between the prefix and the suffix (left padding of the
  suffix); the attention mask hides the padding, and padding does not advance any position.
- Each batch gets its own copy of the prefix keys/values in preallocated buffers, so decoding steps
  append in place instead of re-concatenating the whole cache.

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

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from vlm3.models.backend import Backend, ChatRequest, Completion, single_turn

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

#: Families whose model exposes ``model.model.get_rope_index`` with the Qwen2-VL signature
#: (tested: qwen2_5_vl, qwen3_vl; qwen2_vl and qwen3_vl_moe share the code path).
PREFIX_REUSE_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


@dataclass(frozen=True)
class _Prefix:
    """A shared prompt prefix: its token ids and what the model needs to encode it."""

    ids: list[int]
    mm_types: list[int]
    vision: dict[str, "torch.Tensor"]  # pixel_values, image_grid_thw, ...
    suffixes: list[list[int]]  # per question, in question order


class LocalBackend(Backend):
    """A transformers vision-language model and its processor, decoding greedily.

    Args:
        model, processor: e.g. from :func:`vlm3.models.hf.load_model_and_processor`.
        batch_size: requests per forward batch, for ``generate`` and ``query_many``.
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
        batch_size: int = 16,
        reuse_prefix: bool = True,
        name: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.batch_size = int(batch_size)
        self.reuse_prefix = reuse_prefix
        self.name = name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
        self.family = str(getattr(model.config, "model_type", ""))
        self.eos_ids = _eos_ids(model, self.tokenizer)
        pad = getattr(model.generation_config, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else (self.tokenizer.pad_token_id or self.eos_ids[0]))
        #: How the last ``query_many`` ran: "prefix: <sizes>" (shared KV cache) or "batched: <reason>".
        self.prefix_reuse: str = ""
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
        out: list[Completion] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(requests), self.batch_size):
                out += self._generate_batch(requests[start : start + self.batch_size], max_new_tokens)
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
        return [self._completion(row, int(n)) for row, n in zip(new, prompt_lengths)]

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
        requests = [single_turn(images, q, system) for q in questions]
        with self._lock, torch.inference_mode():
            prefix, reason = self._plan_prefix(requests) if self.reuse_prefix else (None, "disabled")
            if prefix is None:
                self.prefix_reuse = f"batched: {reason}"
                return self.complete(requests, max_new_tokens)
            lengths = [len(x) for x in prefix.suffixes]
            self.prefix_reuse = (
                f"prefix: {len(prefix.ids)} shared tokens, {len(lengths)} suffixes of {min(lengths)}-{max(lengths)} tokens"
            )
            return self._query_with_prefix(prefix, max_new_tokens)

    def _plan_prefix(self, requests: list[ChatRequest]) -> tuple[_Prefix | None, str]:
        """Token ids of every prompt and their longest common prefix, or (None, why not)."""
        if self.family not in PREFIX_REUSE_FAMILIES or not hasattr(self.model.model, "get_rope_index"):
            return None, f"no exact prefix reuse for model type {self.family!r}"
        texts = [self._render(r.messages) for r in requests]
        images = [_rgb(im) for im in requests[0].images]
        # The processor expands each image placeholder into one token per merged patch; encode the
        # first prompt with it, the others as text, and expand their placeholders the same way.
        enc = self.processor(text=[texts[0]], images=images or None, return_tensors="pt")
        first = enc["input_ids"][0].tolist()
        image_id = _token_id(self.model.config, "image_token_id")
        video_id = _token_id(self.model.config, "video_token_id")
        counts = _image_token_counts(enc, self.processor)
        raw = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        seqs = [_expand(ids, image_id, counts) for ids in raw]
        if seqs[0] != first:
            return None, "the processor's token ids differ from the tokenizer's (unexpected template)"
        n = min(len(s) for s in seqs)
        p = 0
        while p < n - 1 and all(s[p] == seqs[0][p] for s in seqs):
            p += 1
        suffixes = [s[p:] for s in seqs]
        if any(t in (image_id, video_id) for s in suffixes for t in s):
            return None, "image tokens after the shared prefix"
        mm_types = enc["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in enc else _mm_types(first, image_id, video_id)
        vision = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        return _Prefix(first[:p], mm_types[:p], vision, suffixes), ""

    def _query_with_prefix(self, prefix: _Prefix, max_new_tokens: int) -> list[Completion]:
        import torch

        device = self.model.device
        P = len(prefix.ids)
        ids = torch.tensor([prefix.ids], device=device)
        types = torch.tensor([prefix.mm_types], device=device)
        vision = {k: v.to(device) for k, v in prefix.vision.items()}
        positions, _ = self._rope_index(ids, types, torch.ones_like(ids), vision.get("image_grid_thw"))
        out = self.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=positions,
            mm_token_type_ids=types,
            use_cache=True,
            logits_to_keep=1,
            **vision,
        )
        prefix_kv = [(layer.keys, layer.values) for layer in out.cache.layers]

        # Shortest suffixes together: less padding; answers do not depend on the grouping.
        order = sorted(range(len(prefix.suffixes)), key=lambda i: len(prefix.suffixes[i]))
        answers: list[Completion] = [Completion("")] * len(order)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = [prefix.suffixes[i] for i in rows]
            for i, tokens in zip(rows, self._decode_suffixes(prefix, prefix_kv, batch, vision, max_new_tokens)):
                # A finished row's tokens end with its end-of-turn token ("stop"); a row without one
                # ran out of max_new_tokens ("length"). The prompt is the prefix plus the row's suffix.
                answers[i] = self._completion(tokens, P + len(prefix.suffixes[i]))
        return answers

    def _decode_suffixes(
        self,
        prefix: _Prefix,
        prefix_kv: list[tuple["torch.Tensor", "torch.Tensor"]],
        suffixes: list[list[int]],
        vision: dict[str, "torch.Tensor"],
        max_new_tokens: int,
    ) -> list[list[int]]:
        """Greedy tokens for a batch of suffixes on copies of the prefix cache."""
        import torch

        device = self.model.device
        B, P, S = len(suffixes), len(prefix.ids), max(len(s) for s in suffixes)
        # Layout per row: [prefix | padding | suffix]; the mask hides the padding.
        ids = torch.full((B, P + S), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((B, P + S), dtype=torch.long, device=device)
        ids[:, :P] = torch.tensor(prefix.ids, device=device)
        mask[:, :P] = 1
        for b, s in enumerate(suffixes):
            ids[b, P + S - len(s) :] = torch.tensor(s, device=device)
            mask[b, P + S - len(s) :] = 1
        types = torch.zeros_like(ids)
        types[:, :P] = torch.tensor(prefix.mm_types, device=device)
        grid = vision.get("image_grid_thw")
        grid = grid.repeat(B, 1) if grid is not None else None
        # Positions of each row's full sequence, as the uncached run computes them.
        positions, deltas = self._rope_index(ids, types, mask, grid)
        lengths = torch.tensor([P + len(s) for s in suffixes], device=device)

        cache = _prefix_cache(self.model.config, prefix_kv, B, capacity=P + S + max_new_tokens)
        logits = self.model(
            input_ids=ids[:, P:],
            attention_mask=mask,
            position_ids=positions[:, :, P:],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        eos = torch.tensor(self.eos_ids, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        tokens: list[list[int]] = [[] for _ in range(B)]
        for step in range(max_new_tokens):
            nxt = logits.argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)  # finished rows idle on padding
            for row, t, finished in zip(tokens, nxt.tolist(), done.tolist()):
                if not finished:
                    row.append(t)
            done |= torch.isin(nxt, eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            # The token generated at step k sits at index length + k of its row's sequence.
            pos = (lengths + step + deltas.view(-1)).view(1, B, 1).expand(3, B, 1)
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
            logits = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=pos,
                cache=cache,
                use_cache=True,
            ).logits[:, -1]
        return tokens

    def _rope_index(self, ids, types, mask, grid) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(position ids [3, B, L], rope deltas [B, 1]) from the model's own mrope index."""
        return self.model.model.get_rope_index(
            input_ids=ids, mm_token_type_ids=types, image_grid_thw=grid, attention_mask=mask
        )

    # --- helpers ----------------------------------------------------------------------------------

    def _render(self, messages: list[dict]) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _completion(self, tokens: list[int], prompt_tokens: int | None) -> Completion:
        # generate() pads finished rows; the answer ends at the first end-of-turn token.
        for i, t in enumerate(tokens):
            if t in self.eos_ids:
                text = self.tokenizer.decode(tokens[:i], skip_special_tokens=True)
                return Completion(text, prompt_tokens, i + 1, "stop")
        return Completion(self.tokenizer.decode(tokens, skip_special_tokens=True), prompt_tokens, len(tokens), "length")


def _prefix_cache(config: Any, prefix_kv: list[tuple["torch.Tensor", "torch.Tensor"]], batch: int, capacity: int):
    """A cache holding ``batch`` copies of the prefix keys/values, with room for ``capacity`` tokens.

    Keys and values are written into preallocated buffers and exposed as growing views, so a
    decoding step does not copy the whole cache (``DynamicCache`` concatenates every step).
    Layer types other than full attention get a plain ``DynamicCache``.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    layer_types = getattr(config.get_text_config(decoder=True), "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in layer_types):
        return DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix_kv],
            config=config,
        )
    return Cache(layers=[_preallocated_layer_class()(k, v, batch, capacity) for k, v in prefix_kv])


_LAYER_CLASS: Any = None


def _preallocated_layer_class() -> Any:
    """``DynamicLayer`` with preallocated storage (built on first use: transformers is imported lazily)."""
    global _LAYER_CLASS
    if _LAYER_CLASS is not None:
        return _LAYER_CLASS
    import torch
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, batch: int, capacity: int) -> None:
            super().__init__()
            _, heads, length, _ = keys.shape
            self._k = keys.new_empty((batch, heads, capacity, keys.shape[-1]))
            self._v = values.new_empty((batch, heads, capacity, values.shape[-1]))
            self._k[:, :, :length] = keys
            self._v[:, :, :length] = values
            self._length = length
            self.device = keys.device
            self.is_initialized = True
            self._expose()

        def _expose(self) -> None:
            self.keys = self._k[:, :, : self._length]
            self.values = self._v[:, :, : self._length]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            n = key_states.shape[-2]
            if self._length + n > self._k.shape[2]:
                raise RuntimeError(f"prefix cache full: {self._length} + {n} > {self._k.shape[2]} tokens")
            self._k[:, :, self._length : self._length + n] = key_states
            self._v[:, :, self._length : self._length + n] = value_states
            self._length += n
            self._expose()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self._length

    _LAYER_CLASS = PreallocatedLayer
    return _LAYER_CLASS


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


__all__ = ["LocalBackend", "PREFIX_REUSE_FAMILIES", "single_turn"]
