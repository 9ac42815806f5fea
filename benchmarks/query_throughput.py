"""Questions per second of ``LocalBackend.query_many`` against its limit and three other ways.

Many depth questions about one image ("How far is the pixel at (x, y) from the camera? ...", distinct
coordinates), answered five ways on the same model and questions:

- per point: one ``generate`` call per question, each re-encoding the image and the whole prompt
  (how DepthLM's evaluation works);
- batched generate: ``generate`` on batches of full prompts, the image repeated in every row;
- prompt-cache reuse: transformers' own way to reuse a prompt, batched: the shared prefix (image
  included) encoded once into a ``DynamicCache``, and per batch a ``copy.deepcopy`` of it repeated
  to the batch (``batch_repeat_interleave``) handed to ``generate`` with the full prompts;
- ``query_many``: everything from the questions' text to the answers' text;
- the prefill-once limit: only the model's work on the same rows, batches and token ids -- the
  vision encoder and prefix forward once, the prefix copied once into the batch cache, every batch
  decoded greedily on that cache rewound to the prefix -- with all inputs (prompt ids, masks, rope
  positions) prepared before the clock starts and the answers read after it stops.

``query_many``'s fraction of the limit is what its own work (template, tokenization, rope index,
batch inputs, decode loop, detokenization) leaves. The answers of every method must be identical
to one ``generate`` per point (exit status 1 otherwise).

Timing is interleaved so that all methods see the same machine load: each round runs ``--repeats``
passes of the three fast methods (all questions, rotating order) with the two slow methods between
passes (a different quarter of the questions each round, all of them over 4 rounds). Rates are
medians over runs; the fraction and the ratio to prompt-cache reuse are medians of per-pass ratios,
the ratios to the slow methods medians of per-round ratios (query_many's median in the round).
``--clock cpu`` times this process's CPU time instead of wall-clock time, which a machine shared
with other jobs disturbs less.

Without ``--model`` a tiny random Qwen-VL is built; its weights are redrawn with ``--weight-std``
because a freshly initialised tiny model answers the same token to every question, which would make
the identity check meaningless. Such a model never emits the end-of-turn token, so every answer runs
to ``--max-new-tokens``.

    python benchmarks/query_throughput.py                       # tiny Qwen2.5-VL, 256 points
    python benchmarks/query_throughput.py --family qwen3_vl --seed 1   # seed 0's tiny Qwen3-VL answers alike
    python benchmarks/query_throughput.py --model /ckpt/depth --threads 8
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

DEPTH = "How far is the pixel at ({x}, {y}) from the camera? Both x and y are normalized to between [0, 2000)."

#: Methods in the order they are reported.
METHODS = ("per_point", "batched_generate", "prompt_cache_reuse", "query_many", "limit")
#: Methods answering a quarter of the questions per round (all of them over 4 rounds), and the rest.
SLOW = ("per_point", "batched_generate")
FAST = ("prompt_cache_reuse", "query_many", "limit")
LABELS = {
    "per_point": "one generate per point",
    "batched_generate": "batched generate",
    "prompt_cache_reuse": "prompt-cache reuse",
    "query_many": "query_many",
    "limit": "prefill-once limit",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint folder (default: build a tiny random model)")
    ap.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"], help="tiny model family")
    ap.add_argument("--weight-std", type=float, default=0.1, help="redraw the tiny model's weights with this std")
    ap.add_argument("--points", type=int, default=256, help="questions about the one image")
    ap.add_argument("--image-size", default="448x448", help="WxH of the (random) image")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, help="rows per batch (default: query_many's choice from memory)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved measurement rounds")
    ap.add_argument("--repeats", type=int, default=3, help="passes of the fast methods per round")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall-clock time, or this process's CPU time (steadier on a machine shared with other jobs)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (same for all methods)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from vlm3.models.backend import single_turn

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        backend = _backend(args, Path(tmp))
    w, h = (int(v) for v in args.image_size.lower().split("x"))
    rng = np.random.default_rng(args.seed)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    coords: set[tuple[int, int]] = set()
    while len(coords) < args.points:
        coords.add(tuple(int(v) for v in rng.integers(0, 2000, 2)))
    questions = [DEPTH.format(x=x, y=y) for x, y in sorted(coords, key=lambda c: rng.random())]
    n_new = args.max_new_tokens

    # query_many's own choice of rows per batch; every batched method uses the same.
    backend.query_many([image], questions, n_new)
    rows = backend.query_rows
    path = backend.prefix_reuse
    if not path.startswith("prefix:"):
        print(f"query_many does not share a prefix with this model ({path}); nothing to measure", file=sys.stderr)
        return 2

    def per_point(qs: list[str]) -> list[str]:
        return [backend.generate([single_turn([image], q)], n_new)[0] for q in qs]

    def batched_generate(qs: list[str]) -> list[str]:
        saved, backend.batch_size = backend.batch_size, rows
        try:
            return backend.generate([single_turn([image], q) for q in qs], n_new)
        finally:
            backend.batch_size = saved

    def many(qs: list[str]) -> list[str]:
        return [c.text for c in backend.query_many([image], qs, n_new)]

    limit = PrefillOnceLimit(backend, image, questions, n_new, rows)
    run: dict[str, Callable[[list[str]], list[str]]] = {
        "per_point": per_point,
        "batched_generate": batched_generate,
        "prompt_cache_reuse": lambda qs: prompt_cache_reuse(backend, image, qs, n_new, rows),
        "query_many": many,
        "limit": lambda qs: limit.run(),
    }
    # Warm up every path (allocator, lazy imports).
    for name in METHODS:
        run[name](questions[:2] if name in SLOW else questions)

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    chunks = [list(c) for c in np.array_split(np.arange(args.points), args.rounds)]
    rates: dict[str, list[float]] = {m: [] for m in METHODS}  # one per run of the method
    passes: list[dict[str, float]] = []  # the fast methods' rates, pass by pass
    per_round: list[dict[str, float]] = []  # each round's slow rates and query_many's median rate
    answers: dict[str, list[str]] = {m: [""] * args.points for m in METHODS}
    identical = True
    seen: set[str] = set()

    def measure(name: str, idx: list[int]) -> float:
        nonlocal identical
        qs = [questions[i] for i in idx]
        t0 = clock()
        got = run[name](qs)
        rate = len(qs) / (clock() - t0)
        rates[name].append(rate)
        if name in SLOW:
            for i, a in zip(idx, got):
                answers[name][i] = a
        else:
            identical &= name not in seen or got == answers[name]  # the same answers every pass
            answers[name] = got
            seen.add(name)
        return rate

    everything = list(range(args.points))
    for r in range(args.rounds):
        round_rates: dict[str, float] = {}
        many: list[float] = []
        for k in range(args.repeats):
            # Fast methods alternate within a pass, in a rotating order; ratios are taken per pass.
            turn = (r * args.repeats + k) % len(FAST)
            passes.append({m: measure(m, everything) for m in FAST[turn:] + FAST[:turn]})
            many.append(passes[-1]["query_many"])
            if k < len(SLOW):
                slow = SLOW[(r + k) % len(SLOW)]
                round_rates[slow] = measure(slow, chunks[r])
        for slow in SLOW:
            if slow not in round_rates:
                round_rates[slow] = measure(slow, chunks[r])
        round_rates["query_many"] = statistics.median(many)
        per_round.append(round_rates)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{m} {rates[m][-1]:.1f}/s" for m in METHODS), file=sys.stderr)
    reference = answers["per_point"]
    same = {m: answers[m] == reference for m in METHODS}
    identical &= all(same.values())

    median = {m: statistics.median(rates[m]) for m in METHODS}
    fraction = [p["query_many"] / p["limit"] for p in passes]
    against = {"prompt_cache_reuse": [p["query_many"] / p["prompt_cache_reuse"] for p in passes]}
    against.update({m: [x["query_many"] / x[m] for x in per_round] for m in SLOW})
    result: dict[str, Any] = {
        "model": backend.name,
        "family": backend.family,
        "points": args.points,
        "image": f"{w}x{h}",
        "max_new_tokens": n_new,
        "rows_per_batch": rows,
        "threads": args.threads,
        "clock": args.clock,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "query_many_path": path,
        "questions_per_s": {m: round(v, 2) for m, v in median.items()},
        "fraction_of_limit": round(statistics.median(fraction), 3),
        "fraction_of_limit_range": [round(min(fraction), 3), round(max(fraction), 3)],
        "query_many_speedup": {m: round(statistics.median(against[m]), 2) for m in SLOW + ("prompt_cache_reuse",)},
        "identical_answers": bool(identical),
        "identical_to_per_point": same,
        "distinct_answers": len(set(reference)),
    }
    clock_name = "wall-clock" if args.clock == "wall" else "process CPU time"
    print(f"model               {result['model']} ({result['family']}), {args.threads} thread(s), {args.device}")
    print(f"workload            {args.points} depth questions about one {w}x{h} image, {n_new} new tokens max")
    print(f"query_many path     {path}")
    print(f"questions/s         ({clock_name}; medians; batches of {rows} rows)")
    for m in METHODS:
        print(f"  {LABELS[m]:<24}{median[m]:9.2f}")
    lo, hi = result["fraction_of_limit_range"]
    print(f"query_many / limit  {result['fraction_of_limit']:9.3f}   (median of {len(fraction)} paired passes; {lo:.3f}-{hi:.3f})")
    for m in SLOW + ("prompt_cache_reuse",):
        print(f"query_many vs {LABELS[m]:<22}{result['query_many_speedup'][m]:7.2f}x")
    print(f"answers             {'identical' if identical else 'DIFFERENT'} to one generate per point "
          f"({len(set(reference))} distinct)" + ("" if identical else f": {same}"))
    if len(set(reference)) < min(10, args.points // 4):
        print(f"note                only {len(set(reference))} distinct answers: a weak identity check; try another --seed")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if identical else 1


def prompt_cache_reuse(backend: Any, image: Any, questions: list[str], n_new: int, rows: int) -> list[str]:
    """transformers' prompt reuse, batched: the prefix's ``DynamicCache`` deep-copied per batch, ``generate``.

    The prefix and the suffixes are query_many's token ids (the same plan); each batch is laid out
    [prefix | padding | suffix] with the attention mask hiding the padding, and ``generate`` continues
    from a deep copy of the prefix cache repeated to the batch (rope positions: the model's stored
    rope delta of the prefix, as ``generate`` does when continuing a cache).
    """
    import torch
    from transformers import DynamicCache, GenerationConfig

    model = backend.model
    with torch.inference_mode():
        prefix, reason = backend._plan_prefix([image], questions, None)
        if prefix is None:
            raise RuntimeError(f"no shared prefix: {reason}")
        device = model.device
        ids = torch.tensor([prefix.ids], device=device)
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=torch.tensor([prefix.mm_types], device=device),
            cache=DynamicCache(config=model.config),
            use_cache=True,
            logits_to_keep=1,
            **{k: v.to(device) for k, v in prefix.vision.items()},
        )
        prompt_cache = out.cache
        config = GenerationConfig(
            max_new_tokens=n_new, do_sample=False, num_beams=1, eos_token_id=backend.eos_ids, pad_token_id=backend.pad_id
        )
        P = len(prefix.ids)
        order = sorted(range(len(questions)), key=lambda i: len(prefix.suffixes[i]))
        tokens: list[list[int]] = [[] for _ in questions]
        for start in range(0, len(order), rows):
            batch = order[start : start + rows]
            suffixes = [prefix.suffixes[i] for i in batch]
            S = max(len(s) for s in suffixes)
            full = torch.tensor([prefix.ids + [backend.pad_id] * (S - len(s)) + s for s in suffixes], device=device)
            mask = torch.tensor([[1] * P + [0] * (S - len(s)) + [1] * len(s) for s in suffixes], device=device)
            cache = copy.deepcopy(prompt_cache)
            cache.batch_repeat_interleave(len(batch))
            new = model.generate(input_ids=full, attention_mask=mask, cache=cache, generation_config=config)
            for i, row in zip(batch, new[:, P + S :].tolist()):
                tokens[i] = row
        completions = backend._completions(tokens, [P + len(s) for s in prefix.suffixes])
    return [c.text for c in completions]


class PrefillOnceLimit:
    """Only the model's work of ``query_many`` on the same rows, batches and token ids.

    Untimed preparation: the plan (token ids), the rope positions, every batch's ids, masks and
    positions. :meth:`run` times the vision encoder and prefix forward, the one copy of the prefix
    into the batch cache, and every batch's suffix forward and greedy decoding steps (stopping when
    all rows ended, as ``query_many`` does); the answers are read afterwards, untimed.
    """

    def __init__(self, backend: Any, image: Any, questions: list[str], n_new: int, rows: int) -> None:
        import torch

        self.backend, self.n_new = backend, n_new
        model, device = backend.model, backend.model.device
        with torch.inference_mode():
            prefix, reason = backend._plan_prefix([image], questions, None)
            if prefix is None:
                raise RuntimeError(f"no shared prefix: {reason}")
            self.prefix = prefix
            self.P = P = len(prefix.ids)
            self.longest = max(len(s) for s in prefix.suffixes)
            self.vision = {k: v.to(device) for k, v in prefix.vision.items()}
            positions = backend._reference_positions(prefix, self.longest + n_new, self.vision.get("image_grid_thw"))
            self.prefix_inputs = {
                "input_ids": torch.tensor([prefix.ids], device=device),
                "attention_mask": torch.ones((1, P), dtype=torch.long, device=device),
                "position_ids": positions[:, None, :P],
                "mm_token_type_ids": torch.tensor([prefix.mm_types], device=device),
            }
            n = len(questions)
            self.rows = rows
            self.order = sorted(range(n), key=lambda i: len(prefix.suffixes[i]))
            self.batches = []
            for start in range(0, n, rows):
                suffixes = [prefix.suffixes[i] for i in self.order[start : start + rows]]
                B, S = len(suffixes), max(len(s) for s in suffixes)
                lengths = torch.tensor([len(s) for s in suffixes], device=device)
                pad = S - lengths[:, None]
                columns = torch.arange(S, device=device)[None, :]
                mask = torch.ones((B, P + S + n_new), dtype=torch.long, device=device)
                mask[:, P : P + S] = columns >= pad
                self.batches.append({
                    "ids": torch.tensor([[backend.pad_id] * (S - len(s)) + s for s in suffixes], device=device),
                    "masks": [mask[:, : P + S + k] for k in range(n_new)],
                    "suffix_positions": positions[:, P + (columns - pad).clamp(min=0)],
                    "answer_positions": [
                        positions[:, P + lengths[:, None] + k] for k in range(n_new)
                    ],
                })
            self.eos = torch.tensor(backend.eos_ids, device=device)
        self.model = model

    def run(self) -> list[str]:
        """The timed model work, then the answers (read untimed, after the work is done)."""
        import torch

        from vlm3.models.local import _BatchCache

        model, n_new, P = self.model, self.n_new, self.P
        outs = []
        with torch.inference_mode():
            prefix_out = model(**self.prefix_inputs, use_cache=True, logits_to_keep=1, **self.vision)
            caches = _BatchCache(model.config, prefix_out.cache, self.rows, capacity=P + self.longest + n_new)
            for b in self.batches:
                B = b["ids"].shape[0]
                cache = caches.for_batch(B)
                logits = model(
                    input_ids=b["ids"], attention_mask=b["masks"][0], position_ids=b["suffix_positions"],
                    cache=cache, use_cache=True, logits_to_keep=1,
                ).logits[:, -1]
                done = torch.zeros(B, dtype=torch.bool, device=logits.device)
                out = torch.empty((B, n_new), dtype=torch.long, device=logits.device)
                steps = n_new
                for step in range(n_new):
                    nxt = logits.argmax(dim=-1).masked_fill_(done, self.backend.pad_id)
                    out[:, step] = nxt
                    done |= torch.isin(nxt, self.eos)
                    if step == n_new - 1 or bool(done.all()):
                        steps = step + 1
                        break
                    logits = model(
                        input_ids=nxt[:, None], attention_mask=b["masks"][step + 1],
                        position_ids=b["answer_positions"][step], cache=cache, use_cache=True,
                    ).logits[:, -1]
                outs.append(out[:, :steps])
        tokens: list[list[int]] = [[] for _ in self.order]
        for start, out in zip(range(0, len(self.order), self.rows), outs):
            for i, row in zip(self.order[start : start + self.rows], out.tolist()):
                tokens[i] = row
        completions = self.backend._completions(tokens, [P + len(s) for s in self.prefix.suffixes])
        return [c.text for c in completions]


def _backend(args: argparse.Namespace, tmp: Path):
    from vlm3.models.local import LocalBackend

    if args.model:
        return LocalBackend.from_pretrained(args.model, device=args.device, batch_size=args.batch_size)
    from vlm3.models.tiny import build_tiny_model, redraw_weights

    backend = LocalBackend.from_pretrained(
        build_tiny_model(args.family, tmp / args.family, seed=args.seed), device=args.device, batch_size=args.batch_size
    )
    backend.name = f"tiny random {args.family} (weights std {args.weight_std})"
    redraw_weights(backend.model, std=args.weight_std, seed=args.seed)
    return backend


if __name__ == "__main__":
    raise SystemExit(main())
