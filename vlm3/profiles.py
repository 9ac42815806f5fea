"""Prompt profiles: named, versioned ways of asking a model, for models vlm3 did not train.

A model answers well only when it is asked the way it was trained: the same view transform (focal
target, which axes, longest-side resize), the same text coordinates (range, pixel convention), the
same wording, answer format and parser, and a generation limit long enough for its answers. A
**profile** names one such way. This module is the registry of profile names and of the hub ids
of released checkpoints; what a profile means for one task (its :class:`TaskProfile`: the settings
it fixes, its generation limit, what a complete answer must contain, and its wording) is declared
by the task itself (``Task.profiles`` in ``vlm3.tasks``), beside its other prompts and parsers.

Profiles (``vlm3 eval --profile NAME``, ``vlm3 predict ... --profile NAME``):

- ``vlm3``: what vlm3 trains: the settings come from the model's ``vlm3.json`` (or the bench).
- ``vlm3-release``: the official VLM3 checkpoints (``facebook/VLM3-depth|pose|corr|object``),
  asked exactly as the release notebook asks them (facebookresearch/VLM3 ``inference.ipynb`` and
  ``sample_data/*_labels.json``).
- ``depthlm``: DepthLM's released checkpoints: a marker drawn on the image and DepthLM's prompt.
- ``zero-shot``: general VLMs and API models: native images, a prompt that states the units and
  the answer format.

Which profile a model gets (:func:`choose_profile`): its ``vlm3.json`` wins; else a known hub id
selects its profile; else ``--profile`` is required. A model whose settings are unknown is
refused, never asked with silent defaults. This module imports no task, torch or transformers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlm3.settings import Settings
    from vlm3.tasks.base import Task


class ProfileError(ValueError):
    """An unknown profile, a profile that does not define a task, or a model with no known profile."""


@dataclass(frozen=True)
class Profile:
    """A named, versioned way of asking. ``checkpoints`` are the hub ids that are asked this way."""

    name: str
    version: str
    description: str
    checkpoints: tuple[str, ...] = ()
    # vlm3's own profile takes its settings from the model (vlm3.json) and the bench; every other
    # profile fixes, per task, the settings its checkpoints were trained with.
    fixed: bool = True


@dataclass(frozen=True)
class TaskProfile:
    """What a profile means for one task (declared by the task, see ``Task.profiles``).

    ``settings``: the :class:`vlm3.settings.Settings` values the profile fixes (view transform,
    coordinate range, pixel convention, answer style). ``max_new_tokens``: the generation limit
    (None: the task's default). ``require``: text every complete answer contains (e.g. a closing
    ``</answer>`` tag); an answer without it was cut off and is a counted failure. ``system``: a
    system prompt sent before every question (None: none, as vlm3 and the releases ask).
    """

    settings: Mapping[str, Any] = field(default_factory=dict)
    max_new_tokens: int | None = None
    require: str | None = None
    system: str | None = None


# The zero-shot profile's system prompt: general VLMs answer at length unless told the format.
ZERO_SHOT_SYSTEM = "You are a careful 3D vision assistant. Answer exactly in the format the question asks for, with no other text."

# What the zero-shot profile shows a general VLM: its native image, text coordinates in [0, 1000)
# (the range such models are commonly trained with) of pixel centres.
ZERO_SHOT_SETTINGS: dict[str, Any] = {"unify": False, "resize_to": None, "longest_side": None, "n_coords": 1000, "pixel_convention": "center"}

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("vlm3", "1", "what vlm3 trains: settings from the model's vlm3.json (else the bench)", fixed=False),
        Profile(
            "vlm3-release",
            "1",
            "the official VLM3 checkpoints, asked as facebookresearch/VLM3's inference.ipynb asks them",
            ("facebook/VLM3-depth", "facebook/VLM3-pose", "facebook/VLM3-corr", "facebook/VLM3-object"),
        ),
        Profile(
            "depthlm",
            "1",
            "DepthLM's released checkpoints: a marker drawn on the image and DepthLM's prompt",
            ("facebook/DepthLM",),
        ),
        Profile("zero-shot", "1", "general VLMs and API models: native images, units and answer format stated in the prompt"),
    )
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; ProfileError listing the known ones."""
    found = PROFILES.get(str(name))
    if found is None:
        raise ProfileError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return found


def profile_of_checkpoint(model_id: str | None) -> str | None:
    """The profile of a released checkpoint's hub id (case-insensitive), or None."""
    if not model_id:
        return None
    key = str(model_id).strip().rstrip("/").lower()
    for profile in PROFILES.values():
        if any(key == c.lower() or key.endswith("/" + c.lower()) for c in profile.checkpoints):
            return profile.name
    return None


def task_profile(profile: str, task: Task) -> TaskProfile:
    """What ``profile`` means for ``task``; ProfileError when the profile does not define it."""
    found = get_profile(profile)
    if not found.fixed:
        return task.profiles.get(found.name, TaskProfile())
    if found.name not in task.profiles:
        defined = [p for p in PROFILES if p in task.profiles or not PROFILES[p].fixed]
        raise ProfileError(f"profile {found.name!r} does not define task {task.name!r} (profiles for it: {', '.join(defined)})")
    return task.profiles[found.name]


def profile_settings(profile: str, task: Task) -> dict[str, Any]:
    """The settings values ``profile`` fixes for ``task`` (with ``profile`` itself); empty for vlm3's."""
    found = get_profile(profile)
    if not found.fixed:
        return {}
    return {"profile": found.name, **task_profile(found.name, task).settings}


def max_new_tokens_for(settings: Settings, task: Task) -> int:
    """The generation limit of ``task`` under ``settings.profile`` (the task's default for vlm3)."""
    return task_profile(settings.profile, task).max_new_tokens or task.max_new_tokens


def profile_hash(settings: Settings, task: Task) -> str:
    """A short hash of everything the profile decides for ``task``: its name and version, the
    settings it was resolved to, every prompt template rendered with them, the limit, the
    completeness rule and the system prompt."""
    found = get_profile(settings.profile)
    tp = task_profile(found.name, task)
    doc = {
        "profile": found.name,
        "version": found.version,
        "task": task.name,
        "settings": settings.model_dump(mode="json"),
        "prompts": task.prompts(settings),
        "max_new_tokens": max_new_tokens_for(settings, task),
        "require": tp.require,
        "system": tp.system,
    }
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def model_ids(spec: str | None, backend: Any = None) -> list[str]:
    """The names a model is known by, to recognise released checkpoints: the spec's folder or hub
    id, and the model name an HTTP server serves it under."""
    ids: list[str] = []
    if spec:
        from vlm3.models.backend import parse_spec  # imports neither torch nor transformers

        parsed = parse_spec(spec)
        if parsed.kind != "http":
            ids.append(parsed.target)
    served = getattr(backend, "model", None)
    if isinstance(served, str):
        ids.append(served)
    return ids


@dataclass(frozen=True)
class Choice:
    """The profile chosen for a model and why (``source``: vlm3.json, checkpoint, flag)."""

    name: str
    source: str


def choose_profile(
    *,
    flag: str | None,
    stated: str | None,
    stated_where: str | None,
    model_ids: Iterable[str | None],
    model: str,
) -> Choice:
    """Which profile to ask ``model`` with.

    ``stated``: the profile its ``vlm3.json`` (or its server) states (``stated_where``: where
    that was read); ``model_ids``: names it is known by (a hub id, served model names); ``flag``:
    ``--profile``. The model's own file wins (a different ``--profile`` is an error), then a
    released checkpoint's id, then the flag; with none of them the model is refused.
    """
    if flag is not None:
        get_profile(flag)
    if stated is not None:
        if flag is not None and flag != stated:
            raise ProfileError(f"{stated_where} says the model is asked with profile {stated!r}; --profile {flag} contradicts it")
        return Choice(stated, str(stated_where))
    for model_id in model_ids:
        known = profile_of_checkpoint(model_id)
        if known is not None:
            if flag is not None and flag != known:
                raise ProfileError(f"{model_id} is a released checkpoint asked with profile {known!r}; --profile {flag} contradicts it")
            return Choice(known, f"checkpoint {model_id}")
    if flag is not None:
        return Choice(flag, "--profile")
    raise ProfileError(
        f"no vlm3.json for {model} and it is not a known checkpoint, so how to ask it is unknown: "
        f"pass --profile (one of {', '.join(PROFILES)}) or --meta FOLDER_WITH_VLM3_JSON"
    )
