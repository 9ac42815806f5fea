"""Helpers shared by several test modules (imported as ``support``; pytest puts tests/ on the path)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from vlm3.data.adapters import AdapterOptions, Rejection, get_adapter
from vlm3.data.io import read_shard, write_shard
from vlm3.data.records import Record, check_pixels_inside


def random_image(seed: int, w: int, h: int) -> Image.Image:
    """A w x h RGB image of uniform noise, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def make_depthlm_source(root: Path, n_images: int = 9, size: tuple[int, int] = (40, 30), seed: int = 0,
                        focal: tuple[float, float] = (45.0, 47.0)) -> None:
    """A tiny DepthLM-style dataset (``depthlm-jsonl`` layout): random images, 6 labelled pixels each,
    principal point at the centre, ``focal`` = (fx, fy) pixels."""
    rng = np.random.default_rng(seed)
    w, h = size
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "rgb" / f"im{i}.png")
        px = [[int(rng.integers(0, w)), int(rng.integers(0, h))] for _ in range(6)]
        lines.append({"image": f"rgb/im{i}.png", "intrinsics": [*focal, w / 2, h / 2, w, h], "pixel_coords": px,
                      "depth": rng.uniform(0.5, 9.0, 6).tolist()})
    (root / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def run_adapter(name: str, root: Path, **opts) -> tuple[list[Record], list[Rejection]]:
    """Convert every unit of an adapter; split the output into records and rejections."""
    out = list(get_adapter(name)(root, AdapterOptions(**opts)).convert_all())
    return [r for r in out if isinstance(r, Record)], [r for r in out if isinstance(r, Rejection)]


def assert_round_trip(records: list[Record], tmp_path: Path) -> None:
    """Records validate, keep their pixels inside their images, and survive a JSONL shard unchanged."""
    for rec in records:
        assert check_pixels_inside(rec) == []
    path = tmp_path / "shard" / "00000.jsonl"
    assert write_shard(records, path) == len(records)
    assert [r.model_dump() for r in read_shard(path)] == [r.model_dump() for r in records]


@contextmanager
def serve_in_thread(app, timeout: float = 20.0) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free 127.0.0.1 port in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes the socket over
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def message_text(message: dict) -> str:
    """The concatenated text parts of a chat message (HF format)."""
    return "".join(part.get("text", "") for part in message.get("content", []) if part.get("type") == "text")


def answer_server(table: dict, key, finish_reason: str = "stop"):
    """An OpenAI-compatible chat-completions app answering each question from ``table``:
    ``(key(decoded images), question text) -> answer``, with the given ``finish_reason``."""
    import base64
    import io

    from fastapi import FastAPI
    from PIL import Image

    api = FastAPI()

    @api.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": "oracle", "object": "model"}]}

    @api.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        parts = body["messages"][-1]["content"]
        images = [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).convert("RGB")
                  for p in parts if p["type"] == "image_url"]
        text = table[(key(images), parts[-1]["text"])]
        return {"id": "x", "object": "chat.completion", "model": "oracle",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
                "usage": {"prompt_tokens": 10, "completion_tokens": body["max_tokens"], "total_tokens": 10 + body["max_tokens"]}}

    return api


# --- COCO RLE masks, written independently of the adapters' decoder ------------------------------


def rle_encode(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a background run (pycocotools' convention)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return ([0] + runs) if flat[0] else runs


def rle_string(counts: list[int]) -> str:
    """pycocotools' rleToString: differences to the run two before, 5-bit groups, offset 48."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)
