"""Queries per second of ``LocalBackend.query_many`` versus one ``generate`` call per point.

Many depth questions about one image ("How far is the pixel at (x, y) from the camera? ...", distinct
coordinates), answered two ways on the same model:

- per point: one ``generate`` call per question, each re-encoding the image and the whole prompt
  (how DepthLM's evaluation works);
- ``query_many``: the image and the shared prompt prefix encoded once, questions decoded in batches
  on copies of its KV cache.

The answers must be identical. The two are measured in interleaved rounds so that both see the same
machine load. Without ``--model`` a tiny random Qwen-VL is built; its weights are redrawn with
``--weight-std`` because a freshly initialised tiny model answers the same token to every question,
which would make the identity check meaningless. Such a model never emits the end-of-turn token,
so every answer runs to ``--max-new-tokens``.

    python benchmarks/query_throughput.py                       # tiny Qwen2.5-VL, 256 points
    python benchmarks/query_throughput.py --family qwen3_vl
    python benchmarks/query_throughput.py --model /ckpt/depth --threads 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

DEPTH = "How far is the pixel at ({x}, {y}) from the camera? Both x and y are normalized to between [0, 2000)."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="checkpoint folder (default: build a tiny random model)")
    ap.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"], help="tiny model family")
    ap.add_argument("--weight-std", type=float, default=0.1, help="redraw the tiny model's weights with this std")
    ap.add_argument("--points", type=int, default=256, help="questions about the one image")
    ap.add_argument("--image-size", default="448x448", help="WxH of the (random) image")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64, help="query_many decoding batch")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved measurement rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (same for both methods)")
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

    def per_point(qs: list[str]) -> list[str]:
        return [backend.generate([single_turn([image], q)], n_new)[0] for q in qs]

    # Warm up both paths (allocator, lazy imports).
    per_point(questions[:2])
    backend.query_many([image], questions[:2], n_new)

    chunks = np.array_split(np.arange(args.points), args.rounds)
    t_point = t_many = 0.0
    reference: list[str] = []
    first: list[str] | None = None
    identical = True
    for r, idx in enumerate(chunks):
        t0 = time.perf_counter()
        reference += per_point([questions[i] for i in idx])
        t_point += time.perf_counter() - t0
        t0 = time.perf_counter()
        many = [c.text for c in backend.query_many([image], questions, n_new)]
        t_many += time.perf_counter() - t0
        first = many if first is None else first
        identical &= many == first
        print(f"round {r + 1}/{args.rounds}: {len(idx)} per-point calls, query_many over {args.points}", file=sys.stderr)
    identical &= reference == first

    point_qps = args.points / t_point
    many_qps = args.rounds * args.points / t_many
    result = {
        "model": backend.name,
        "family": backend.family,
        "points": args.points,
        "image": f"{w}x{h}",
        "max_new_tokens": n_new,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "query_many_path": backend.prefix_reuse,
        "per_point_qps": round(point_qps, 2),
        "query_many_qps": round(many_qps, 2),
        "speedup": round(many_qps / point_qps, 2),
        "identical_answers": bool(identical),
        "distinct_answers": len(set(reference)),
    }
    print(f"model            {result['model']} ({result['family']}), {args.threads} thread(s)")
    print(f"workload         {args.points} depth questions about one {w}x{h} image, {n_new} new tokens max")
    print(f"query_many path  {backend.prefix_reuse}")
    print(f"per point        {point_qps:8.2f} queries/s  (one generate call per point)")
    print(f"query_many       {many_qps:8.2f} queries/s  (batch {args.batch_size})")
    print(f"speedup          {many_qps / point_qps:8.2f}x")
    print(f"answers          {'identical' if identical else 'DIFFERENT'} ({len(set(reference))} distinct)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if identical else 1


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
