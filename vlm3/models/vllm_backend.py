"""vLLM's offline engine as a backend: ``vllm.LLM`` with automatic prefix caching, greedy decoding.

Prompts are rendered with the checkpoint's own chat template (the same text the transformers
backend feeds), images first and the question last, so every question about an image starts with
the same token blocks and vLLM's prefix cache keeps the image prefill for the next question.
vLLM is optional and, today, cannot share vlm3's environment (every vLLM release pins other torch /
transformers versions; README, "vLLM: a separate environment"): run ``vllm serve`` in its own
environment and evaluate over HTTP instead; this backend serves environments where both install.

Many questions about one image (:meth:`VLLMBackend.query_many`) take the same path as the local
backend's ``query_many``, through vLLM's documented API: the chat template is rendered once and the
questions spliced in (:func:`vlm3.models.local.render_questions`); the image is passed with a
content-derived ID in ``multi_modal_uuids`` (vLLM's "stable UUIDs for caching": it is identified
without rehashing its pixels for every question); and the first question runs alone before the
others, the warm-up of vLLM's prefix-caching example, so that the prefix blocks (image included)
are in the prefix cache when the other questions are scheduled together and only their suffixes
are computed.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable, Sequence

from vlm3.models.backend import Backend, ChatRequest, Completion
from vlm3.models.local import render_questions

if TYPE_CHECKING:
    from PIL.Image import Image

INSTALL_HINT = (
    "vLLM is not installed here (no vLLM release installs beside vlm3's torch/transformers: see the README's "
    "'vLLM: a separate environment'); run `pip install vllm` and `vllm serve MODEL` in their own environment and "
    "evaluate with --model http://HOST:PORT/v1"
)


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return vllm


def build_vllm_inputs(requests: Sequence[ChatRequest], render: Callable[[list[dict]], str]) -> list[dict[str, Any]]:
    """vLLM prompt dicts for ``requests``: ``{"prompt": text, "multi_modal_data": {"image": ...}}``.

    ``render`` turns a chat into the prompt text (the chat template with the generation prompt).
    One image is passed as an image, several as a list in placeholder order; text-only requests
    carry no ``multi_modal_data``.
    """
    inputs = []
    for r in requests:
        item: dict[str, Any] = {"prompt": render(r.messages)}
        images = [_rgb(im) for im in r.images]
        if images:
            item["multi_modal_data"] = {"image": images[0] if len(images) == 1 else images}
        inputs.append(item)
    return inputs


def image_uuid(image: "Image") -> str:
    """A stable ID of an image's content (mode, size and pixels) for vLLM's ``multi_modal_uuids``."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return f"vlm3-{digest.hexdigest()}"


def many_point_inputs(prompts: Sequence[str], images: Sequence["Image"]) -> list[dict[str, Any]]:
    """vLLM prompt dicts for prompts about the same ``images``, each image with its content ID.

    ``{"prompt": text, "multi_modal_data": {"image": ...}, "multi_modal_uuids": {"image": ...}}``:
    one image as an image and an ID, several as lists in placeholder order; no images, text only.
    """
    rgb = [_rgb(im) for im in images]
    if not rgb:
        return [{"prompt": p} for p in prompts]
    ids = [image_uuid(im) for im in rgb]
    data: Any = rgb[0] if len(rgb) == 1 else rgb
    uuids: Any = ids[0] if len(ids) == 1 else ids
    return [{"prompt": p, "multi_modal_data": {"image": data}, "multi_modal_uuids": {"image": uuids}} for p in prompts]


def greedy_sampling_kwargs(max_new_tokens: int) -> dict[str, Any]:
    """``SamplingParams`` fields for plain greedy decoding (overriding a checkpoint's sampling defaults)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    return {"temperature": 0.0, "max_tokens": max_new_tokens, "repetition_penalty": 1.0, "n": 1}


class VLLMBackend(Backend):
    """Greedy generation with ``vllm.LLM(enable_prefix_caching=True)``.

    Args:
        model: checkpoint folder or hub id.
        max_images: images per prompt vLLM reserves room for (``limit_mm_per_prompt``).
        min_pixels, max_pixels: the image processor's pixel budget (``mm_processor_kwargs``); set them
            to the values used in training so that vLLM resizes images like the transformers backend.
        seed: engine seed (decoding is greedy; this only pins any internal randomness).
        engine_kwargs: anything else for ``vllm.LLM`` (``tensor_parallel_size``, ``max_model_len``,
            ``gpu_memory_utilization``, ``dtype``, ...).
    """

    def __init__(
        self,
        model: str,
        *,
        max_images: int = 2,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        seed: int = 0,
        **engine_kwargs: Any,
    ) -> None:
        vllm = import_vllm()
        from transformers import AutoProcessor

        mm_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        if mm_kwargs:
            engine_kwargs.setdefault("mm_processor_kwargs", mm_kwargs)
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=model,
            enable_prefix_caching=True,
            limit_mm_per_prompt={"image": max_images},
            seed=seed,
            **engine_kwargs,
        )
        self.processor = AutoProcessor.from_pretrained(model)
        self.name = f"vllm:{model}"

    def _render(self, messages: list[dict]) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: Sequence[ChatRequest], max_new_tokens: int = 64) -> list[str]:
        return [c.text for c in self.complete(requests, max_new_tokens)]

    def complete(self, requests: Sequence[ChatRequest], max_new_tokens: int = 64) -> list[Completion]:
        params = self._vllm.SamplingParams(**greedy_sampling_kwargs(max_new_tokens))
        outputs = self.llm.generate(build_vllm_inputs(requests, self._render), params, use_tqdm=False)
        return [_completion(out) for out in outputs]

    def query_many(
        self,
        images: Sequence["Image"],
        questions: Sequence[str],
        max_new_tokens: int = 64,
        system: str | None = None,
    ) -> list[Completion]:
        """Answers to single-turn questions about the same image(s), the prefix computed once.

        The template is rendered once with the questions spliced in, the images carry content IDs,
        and the first question runs alone so that the others find the prefix (image included) in
        vLLM's prefix cache. Answers come back in question order, as ``complete`` gives them.
        """
        if isinstance(questions, str):
            raise TypeError("questions must be a list of strings, not a single string")
        if not questions:
            return []
        params = self._vllm.SamplingParams(**greedy_sampling_kwargs(max_new_tokens))
        inputs = many_point_inputs(render_questions(self._render, images, questions, system), images)
        outputs = list(self.llm.generate(inputs[:1], params, use_tqdm=False))
        if len(inputs) > 1:
            outputs += self.llm.generate(inputs[1:], params, use_tqdm=False)
        return [_completion(out) for out in outputs]


def _completion(out: Any) -> Completion:
    """A :class:`Completion` from one of vLLM's ``RequestOutput``s."""
    gen = out.outputs[0]
    return Completion(gen.text, len(out.prompt_token_ids or []), len(gen.token_ids), gen.finish_reason)


def _rgb(image: "Image") -> "Image":
    return image if image.mode == "RGB" else image.convert("RGB")


__all__ = [
    "VLLMBackend",
    "build_vllm_inputs",
    "greedy_sampling_kwargs",
    "image_uuid",
    "import_vllm",
    "many_point_inputs",
    "INSTALL_HINT",
]
