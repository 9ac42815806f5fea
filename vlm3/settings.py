"""How records become questions: the one settings type, its defaults, and ``vlm3.json``.

:class:`Settings` decides everything about what a model is shown and asked: the prompt profile,
the view transform (focal unification to ``focal`` px, a fixed ``resize_to`` or a
``longest_side``), the text coordinate range ``n_coords`` and pixel convention, the depth
convention, the answer style and packing, and the prompt version. Training
configs (``data:`` section), bench configs (``settings:``) and checkpoints all use it.

Every checkpoint trained by vlm3 carries ``vlm3.json``: the task it was trained for and its
settings, so evaluation asks questions the way the model was trained. This module imports neither
torch nor transformers, so reading a served model's settings is instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

DEFAULT_FOCAL_PX = 1000.0  # the paper's unified focal length (pixels)
DEFAULT_N_COORDS = 2000  # the paper's text coordinate range [0, N)
PROMPT_VERSION = "vlm3-1"  # the prompts of vlm3.tasks; bump when any task's wording changes
DEFAULT_PROFILE = "vlm3"  # what vlm3 trains (vlm3.profiles)
SETTINGS_FILE = "vlm3.json"


class SettingsError(ValueError):
    """Settings that do not fit the schema; the message names the source and the field."""


class Settings(BaseModel):
    """What a model is shown and asked (see the README's conventions).

    Images are unified to ``focal`` px (``unify``; ``focal_axes`` says whether fx and fy both
    become ``focal`` or one scale focal / fx serves both axes), or resampled to ``resize_to`` =
    (W, H) (the no-unification ablation), or to a ``longest_side``; otherwise the native size is
    kept. ``size_multiple`` pads unified images up to a multiple of the model's patch size (right
    and bottom, never cropping) so its processor does not resize them again. ``profile`` names the wording, answer format and parser
    (``vlm3.profiles``); a profile other than ``vlm3`` fixes some of these fields per task.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # every float finite

    profile: str = Field(DEFAULT_PROFILE, description="prompt profile: how the model is asked and its answers read (vlm3.profiles)")
    unify: bool = Field(True, description="focal-length unification (the recipe); false = the ablation")
    focal: float = Field(DEFAULT_FOCAL_PX, gt=0, allow_inf_nan=False, description="unified focal length in pixels")
    focal_axes: Literal["xy", "x"] = Field("xy", description="xy: fx and fy both become focal; x: one scale focal / fx for both axes, sizes truncated (SpatialRGPT's object pipeline)")
    longest_side: PositiveInt | None = Field(None, description="when unify is false: one scale so that the longer side has this many pixels")
    pixel_convention: Literal["center", "index"] = Field("center", description="center: pixel i is at i + 0.5 before normalising (vlm3); index: at i, scaled with the image (the released checkpoints)")
    size_multiple: int | None = Field(None, ge=1, description="unified sides padded up to this multiple (None: the model's patch multiple in training, none in evaluation)")
    resize_to: tuple[PositiveInt, PositiveInt] | None = Field(None, description="[W, H] fixed size for every image when unify is false")
    n_coords: int = Field(DEFAULT_N_COORDS, ge=2, description="text coordinates in [0, n_coords)")
    depth_type: Literal["z", "range"] = Field("range", description='what "how far from the camera" means')
    answer_style: str = Field("short", description="task-specific answer style (depth: short | sentence | depthlm)")
    points_per_sample: int = Field(10, ge=1, description="questions packed per training sample (paper: 10 for depth)")
    packing: Literal["multi_turn", "single_turn"] = Field("multi_turn", description="how packed questions are laid out")
    prompt_version: str = Field(PROMPT_VERSION, description="version of the prompt wording the model was trained on")

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str) -> str:
        from vlm3.profiles import get_profile  # data only: no task, torch or transformers import

        return get_profile(name).name

    @model_validator(mode="after")
    def _one_resize(self) -> "Settings":
        if self.resize_to is not None and self.longest_side is not None:
            raise ValueError(f"resize_to {list(self.resize_to)} and longest_side {self.longest_side} are exclusive: give one")
        return self

    def with_values(self, **values: Any) -> "Settings":
        """A copy with some fields replaced, validated."""
        return make_settings({**self.model_dump(), **values})


# The settings that decide how an evaluation question is asked (a bench may set these).
ASK_FIELDS: tuple[str, ...] = (
    "profile", "unify", "focal", "focal_axes", "size_multiple", "resize_to", "longest_side", "pixel_convention",
    "n_coords", "depth_type", "answer_style", "prompt_version",
)


def make_settings(values: dict[str, Any], where: str = "settings") -> Settings:
    """Validated :class:`Settings` from a mapping; SettingsError naming ``where`` and the field."""
    try:
        return Settings.model_validate(values)
    except ValidationError as e:
        raise SettingsError(f"{where}: {validation_message(e)}") from None


def validation_message(error: ValidationError, prefix: str = "") -> str:
    """The problems of a pydantic error on one line: ``prefix + field.path = value: what is wrong``."""
    parts = []
    for item in error.errors():
        field = prefix + (".".join(str(p) for p in item["loc"]) or "value")
        shown = "" if item["type"] == "missing" else f" = {item.get('input')!r}"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown field {field}{shown}")
        else:
            parts.append(f"{field}{shown}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def resolve_settings(
    model: dict[str, Any] | None, bench: dict[str, Any] | None = None, profile: dict[str, Any] | None = None
) -> tuple[Settings, dict[str, str]]:
    """Evaluation settings and where each came from, per field of :data:`ASK_FIELDS`.

    In order: the model's ``vlm3.json`` (how it was trained to be asked), the values its prompt
    profile fixes (``vlm3.profiles``), the bench config, the defaults of :class:`Settings`. Returns
    the settings and ``{field: "model" | "profile" | "bench" | "default"}``.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in ASK_FIELDS:
        if model is not None and key in model:
            values[key], sources[key] = model[key], "model"
        elif profile and key in profile:
            values[key], sources[key] = profile[key], "profile"
        elif bench and key in bench:
            values[key], sources[key] = bench[key], "bench"
        else:
            sources[key] = "default"
    return make_settings(values), sources


# --- vlm3.json ----------------------------------------------------------------------------------


class ModelSettings(BaseModel):
    """What ``vlm3.json`` holds: the task a checkpoint was trained for and its settings."""

    model_config = ConfigDict(frozen=True)

    task: str | None = None
    settings: Settings
    path: str | None = None  # where it was read
    given: frozenset[str] = frozenset()  # the settings fields the file states (the rest are defaults)

    def stated(self) -> dict[str, Any]:
        """The settings fields the file states, so that evaluation falls back to the bench for the rest."""
        return self.settings.model_dump(include=set(self.given))


def write_model_settings(folder: str | Path, task: str, settings: Settings, profile_hash: str | None = None) -> Path:
    """Write ``folder/vlm3.json`` (the task, every settings field, and the hash of what the prompt
    profile decides for the task, ``vlm3.profiles.profile_hash``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_FILE
    extra = {} if profile_hash is None else {"profile_hash": profile_hash}
    path.write_text(json.dumps({"task": task, **settings.model_dump(mode="json"), **extra}, indent=2) + "\n")
    return path


def read_model_settings(folder_or_file: str | Path) -> ModelSettings | None:
    """The settings saved with a checkpoint (a folder or its ``vlm3.json``); None when there are none.

    Fields a file lacks (written by an older vlm3) take the defaults; unknown fields are ignored.
    """
    path = Path(folder_or_file).expanduser()
    if path.is_dir():
        path = path / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SettingsError(f"{path}: cannot read ({e})") from None
    return model_settings_from(raw, str(path))


def model_settings_from(raw: Any, where: str) -> ModelSettings:
    """:class:`ModelSettings` from ``vlm3.json`` content, flat (as written) or ``{task, settings}``
    (as ``vlm3 serve`` publishes it); fields an older vlm3 did not write take the defaults."""
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: expected a JSON object with the model's task and settings")
    values = raw["settings"] if isinstance(raw.get("settings"), dict) else raw
    known = {k: v for k, v in values.items() if k in Settings.model_fields}
    return ModelSettings(task=raw.get("task"), settings=make_settings(known, where), path=where, given=frozenset(known))


def model_settings_for(spec: str | None, meta: str | Path | None = None) -> ModelSettings | None:
    """The ``vlm3.json`` of a model spec: ``meta`` (a folder or file) wins, else a local folder
    (also ``vllm:FOLDER``); an HTTP model has none unless ``meta`` is given."""
    if meta is not None:
        found = read_model_settings(meta)
        if found is None:
            raise SettingsError(f"--meta {meta}: no {SETTINGS_FILE} there (give a trained checkpoint folder or its {SETTINGS_FILE})")
        return found
    from vlm3.models.backend import parse_spec  # imports neither torch nor transformers

    parsed = None if spec is None else parse_spec(spec)
    if parsed is None or parsed.kind == "http":
        return None
    folder = Path(parsed.target).expanduser()
    return read_model_settings(folder) if folder.is_dir() else None


def served_settings(backend: Any) -> ModelSettings | None:
    """The settings a server publishes for its model in ``GET /v1/models`` (``vlm3 serve`` does;
    read by HTTP backends' ``served_settings()``), or None."""
    published = getattr(backend, "served_settings", None)
    raw = published() if callable(published) else None
    return None if raw is None else model_settings_from(raw, f"{getattr(backend, 'name', 'server')}: /models")


def settings_for_model(
    task: Any,
    trained: ModelSettings | None,
    bench: dict[str, Any] | None,
    *,
    profile: str | None,
    model_ids: list[str | None],
    model: str,
) -> tuple[Settings, dict[str, str], str]:
    """How to ask ``model`` about ``task``: (settings, the source of each field, why this profile).

    The profile is chosen by :func:`vlm3.profiles.choose_profile` (the model's ``vlm3.json`` — a
    file without a ``profile`` field was written by vlm3 for its own profile — then a released
    checkpoint's id, then ``profile``, the ``--profile`` flag); a model with none is refused with a
    ProfileError that names the flag. Then :func:`resolve_settings` with the profile's values.
    """
    from vlm3.profiles import choose_profile, profile_settings

    stated = None
    if trained is not None:
        stated = trained.settings.profile if "profile" in trained.given else DEFAULT_PROFILE
    choice = choose_profile(flag=profile, stated=stated, stated_where=None if trained is None else trained.path, model_ids=model_ids, model=model)
    fixed = profile_settings(choice.name, task)
    if not fixed:
        fixed = {"profile": choice.name}
    settings, sources = resolve_settings(None if trained is None else trained.stated(), bench, fixed)
    return settings, sources, choice.source
