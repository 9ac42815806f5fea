"""Ask a model about your own images: metric depth (points, grids, point clouds), relative pose,
pixel matches and object-level questions.

Each function builds a :class:`~vlm3.tasks.samples.Sample` of the images (the recipe's view
transform: focal unification to ``settings.focal`` with the given intrinsics), asks
:class:`~vlm3.tasks.base.Query` objects through :func:`vlm3.ask.ask`, and gets the task's typed
answers back in the ORIGINAL image's pixel frame and camera frame (X right, Y down, Z forward, metres).

Intrinsics are required: metric answers depend on them. For uncalibrated image files
:func:`estimate_image_intrinsics` estimates them from the EXIF focal length, else guesses a 60 degree
horizontal field of view (:func:`estimate_intrinsics`), and says which; principal point at the centre.
Pixels refer to the DISPLAYED image (EXIF orientation applied, :mod:`vlm3.data.images`).

Pixels: the Python API uses vlm3's convention (continuous (x, y), origin at the top-left CORNER,
pixel (i, j) centred at (i + 0.5, j + 0.5)); the command line and the files it writes use the
OpenCV one (integer (x, y) = centre of that pixel): :func:`from_cli_pixels` / :func:`to_cli_pixels`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlm3.ask import TRUNCATED, UNPARSED, Answer, ask
from vlm3.data.images import open_rgb, oriented, read_exif
from vlm3.data.records import Record, View
from vlm3.data.unify import NOT_ASKED, not_asked_reasons
from vlm3.geometry.camera import HFOV_GUESS_DEG, Intrinsics, IntrinsicsEstimate, backproject, convert_depth, estimate_uncalibrated, intrinsics_from_hfov
from vlm3.models.backend import Backend
from vlm3.settings import ASK_FIELDS, Settings
from vlm3.tasks.base import Query, Task
from vlm3.tasks.common import encode_view_pixels
from vlm3.tasks.correspondence import CORRESPONDENCE, profile_question
from vlm3.tasks.depth import DEPTH, DEPTHLM_QUESTION, draw_marker, marker_pixels, profile_depth_question
from vlm3.tasks.object3d import (
    OBJECT,
    PREDICATES,
    QUALITATIVE_QUESTIONS,
    QUANTITIES,
    SINGLE_OBJECT_QUANTITIES,
    ZERO_SHOT_ANSWER,
    ZERO_SHOT_SUFFIX,
)
from vlm3.tasks.pose import POSE, pose_query
from vlm3.tasks.samples import Sample, transform_views
from vlm3.textref import encode_box, format_box

#: How a point that was never asked is shown (``failure``): "not asked: " + the reason in words
#: (``vlm3.data.unify.NOT_ASKED``). Unified views pad rather than crop, so a point of the image is
#: always asked unless lens distortion moves it off the canvas.
NOT_ASKED_PREFIX = "not asked: "
#: Why a depth answer that parsed is still no depth.
NOT_POSITIVE = "not a positive depth"
ImageInput = str | Path | np.ndarray | Image.Image
Progress = Callable[[int, int], None]  # (done, total) questions


# --- inputs and conventions ---------------------------------------------------------------------


def load_image(image: ImageInput, *, max_pixels: int | None = None) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array of the DISPLAYED image from a path, PIL image or array (a path
    or a PIL image still carrying an EXIF orientation is turned upright; an array is taken as shown).

    A path goes through :func:`vlm3.data.images.open_rgb`: an image over ``max_pixels`` (default
    64 Mpx, ``VLM3_MAX_IMAGE_PIXELS``) is an ``ImageTooLargeError`` naming it, checked before
    decoding; missing or unreadable files are ``ImageNotFoundError`` / ``UnreadableImageError``
    (all OSErrors)."""
    if isinstance(image, (str, Path)):
        return np.asarray(open_rgb(image, max_pixels=max_pixels))
    if isinstance(image, Image.Image):
        return np.asarray(oriented(image).convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise ValueError(f"image array must be (H, W, 3) uint8, got shape {arr.shape} dtype {arr.dtype}")
    return np.ascontiguousarray(arr[:, :, :3])


def estimate_intrinsics(width: int, height: int, hfov_deg: float = HFOV_GUESS_DEG) -> Intrinsics:
    """A guess for an uncalibrated image: square pixels, ``hfov_deg`` horizontal field of view,
    principal point at the image centre. fx = (W / 2) / tan(hfov / 2)."""
    return intrinsics_from_hfov(width, height, hfov_deg)


def estimate_image_intrinsics(image: str | Path, *, hfov_deg: float | None = None, max_pixels: int | None = None) -> IntrinsicsEstimate:
    """Intrinsics ESTIMATE for an uncalibrated image file (its displayed size): EXIF
    FocalLengthIn35mmFilm, else FocalLength with the focal-plane resolution, else a 60 degree field
    of view guess with the reason; ``hfov_deg`` given: that field of view, EXIF unread. See
    :func:`vlm3.geometry.camera.estimate_uncalibrated`; ``.message()`` says what was used."""
    exif = read_exif(image, max_pixels=max_pixels)
    return estimate_uncalibrated(*exif.size, exif, hfov_deg=hfov_deg)


def from_cli_pixels(xy: Any) -> np.ndarray:
    """Command-line pixels (integer = pixel centre) -> vlm3's corner-origin pixels (+0.5)."""
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2) + 0.5


def to_cli_pixels(uv: Any) -> np.ndarray:
    """vlm3's corner-origin pixels -> command-line pixels (integer = pixel centre) (-0.5)."""
    return np.asarray(uv, dtype=np.float64).reshape(-1, 2) - 0.5


def grid_pixels(width: int, height: int, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pixel centres every ``stride`` pixels, starting ``stride // 2`` in: ((N, 2) corner-origin
    pixels in row-major order, (rows, cols))."""
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"grid stride must be a positive integer number of pixels, got {stride!r}")
    gx, gy = np.meshgrid(np.arange(stride // 2, width, stride) + 0.5, np.arange(stride // 2, height, stride) + 0.5)
    return np.stack([gx.ravel(), gy.ravel()], axis=1), gx.shape


def _check_pixels(uv: np.ndarray, K: Intrinsics, where: str) -> None:
    ok = np.isfinite(uv).all(axis=1) & K.contains(uv)
    if not ok.all():
        bad = uv[~ok][0]
        raise ValueError(f"pixel ({bad[0]:g}, {bad[1]:g}) is outside {where}")


def _sample(task: Task, images: Sequence[np.ndarray], Ks: Sequence[Intrinsics], settings: Settings) -> Sample:
    """A query-less sample of in-memory images: the recipe's view transform, as in training and eval."""
    for i, (im, K) in enumerate(zip(images, Ks)):
        if (im.shape[1], im.shape[0]) != (K.width, K.height):
            raise ValueError(f"image {i + 1} is {im.shape[1]}x{im.shape[0]} but its intrinsics describe {K.width}x{K.height}")
    record = Record(id="input", dataset="input", views=[View(image=f"input{i}", intrinsics=K.to_list()) for i, K in enumerate(Ks)])
    view = transform_views(record, list(images), settings)
    return Sample("input", "input", task.name, [Image.fromarray(im) for im in view.images], [], [], view, settings)


def _ask_all(backend: Backend, sample: Sample, queries: list[Query], max_new_tokens: int | None, chunk_size: int = 256, progress: Progress | None = None) -> list[Answer]:
    """Answers to ``queries`` in order (:func:`vlm3.ask.ask` in chunks); identical questions about
    the sample's images are asked once (a question with its own images, e.g. a marker, never shares)."""
    same = lambda q: (q.question, None if q.images is None else id(q))  # noqa: E731
    unique = list({same(q): q for q in queries}.values())
    got: dict[Any, Answer] = {}
    for start in range(0, len(unique), chunk_size):
        got.update((same(a.query), a) for a in ask(backend, sample, max_new_tokens=max_new_tokens, queries=unique[start : start + chunk_size]))
        if progress is not None:
            progress(min(start + chunk_size, len(unique)), len(unique))
    return [Answer(q, got[same(q)].raw, got[same(q)].pred, got[same(q)].truncated) for q in queries]


def processor_note(backend: Backend, sample: Sample) -> dict[str, Any] | None:
    """What the local model's processor does to the unified image(s), or None when unknown."""
    processor = getattr(backend, "processor", None)
    if processor is None:
        return None
    from vlm3.models.processor import resize_report

    try:
        notes = []
        for K in (v.K for v in sample.view.record.views):
            r = resize_report(K.width, K.height, processor)
            notes.append({"size": [K.width, K.height], "model_size": [r.new_width, r.new_height], "effective_fx": K.fx * r.scale_x, "effective_fy": K.fy * r.scale_y, "resized": r.resized, "note": r.describe(K.fx, K.fy)})
        return {"images": notes}
    except (TypeError, ValueError):
        return None


# --- depth --------------------------------------------------------------------------------------


@dataclass
class DepthPrediction:
    """Metric depth at pixels of the original image.

    ``uv``: (N, 2) corner-origin pixels; ``depth``: (N,) metres in ``depth_type`` (``"range"``:
    from the camera centre, ``"z"``: along the optical axis), NaN where the answer did not parse
    or the pixel lies outside the model's view; ``coords``: text coordinates asked (-1 outside);
    ``truncated``: answers cut off at the token limit (failures; None: none were);
    ``not_asked``: per point, None when it was asked, else the reason code (``vlm3.data.unify.NOT_ASKED``)
    why it could not be shown to the model (None: every point was asked).
    """

    uv: np.ndarray
    depth: np.ndarray
    depth_type: str
    raw: list[str]
    parsed: np.ndarray
    K: Intrinsics
    coords: np.ndarray
    grid_shape: tuple[int, int] | None = None
    settings: Settings = field(default_factory=Settings)
    processor: dict[str, Any] | None = None
    truncated: np.ndarray | None = None
    not_asked: list[str | None] | None = None

    @property
    def valid(self) -> np.ndarray:
        """Points with a usable depth (parsed, finite, > 0)."""
        return np.isfinite(self.depth) & (self.depth > 0)

    @property
    def failures(self) -> list[str | None]:
        """Why each point has no depth (None where it has one): "not asked: <reason>" (never put to
        the model, see ``not_asked``), truncated at the token limit, unparsed, or not a positive depth."""
        valid = self.valid
        truncated = self.truncated if self.truncated is not None else np.zeros(len(self.depth), dtype=bool)
        out: list[str | None] = []
        for i in range(len(self.depth)):
            why = self.not_asked[i] if self.not_asked is not None else None
            if why is not None:
                out.append(NOT_ASKED_PREFIX + NOT_ASKED.get(why, why))
            elif valid[i]:
                out.append(None)
            elif truncated[i]:
                out.append(TRUNCATED)
            else:
                out.append(UNPARSED if not self.parsed[i] else NOT_POSITIVE)
        return out

    @property
    def z(self) -> np.ndarray:
        """z-depth (metres along the optical axis), NaN where invalid."""
        return self._convert("z")

    @property
    def range(self) -> np.ndarray:
        """Range (metres from the camera centre), NaN where invalid."""
        return self._convert("range")

    def _convert(self, dst: str) -> np.ndarray:
        out, v = np.full(len(self.depth), np.nan), self.valid
        if v.any():
            out[v] = convert_depth(self.K, self.uv[v], self.depth[v], self.depth_type, dst)  # type: ignore[arg-type]
        return out

    def points_cam(self) -> np.ndarray:
        """(N, 3) camera-frame points in metres (X right, Y down, Z forward); NaN where invalid."""
        out, v = np.full((len(self.depth), 3), np.nan), self.valid
        if v.any():
            out[v] = backproject(self.K, self.uv[v], self.depth[v], self.depth_type)  # type: ignore[arg-type]
        return out

    def depth_map(self) -> np.ndarray:
        """The grid's depths as a (rows, cols) array (NaN where invalid); grids only."""
        if self.grid_shape is None:
            raise ValueError("depth_map() needs a grid prediction (grid=STRIDE)")
        return np.where(self.valid, self.depth, np.nan).reshape(self.grid_shape)


def predict_depth(
    backend: Backend,
    image: ImageInput,
    K: Intrinsics,
    points: Any = None,
    grid: int | None = None,
    settings: Settings | None = None,
    *,
    max_new_tokens: int | None = None,
    chunk_size: int = 256,
    progress: Progress | None = None,
) -> DepthPrediction:
    """Metric depth at ``points`` ((N, 2) corner-origin pixels) or on a ``grid`` (stride in pixels)
    of ``image`` with intrinsics ``K``: one question per pixel, all sharing the image prefix."""
    s = settings or Settings()
    img = load_image(image)
    uv = np.asarray(points, dtype=np.float64).reshape(-1, 2) if points is not None and len(points) else None
    shape = None
    if grid is not None:
        if uv is not None:
            raise ValueError("give points or grid, not both (a grid's depth map needs its points alone)")
        uv, shape = grid_pixels(K.width, K.height, grid)
    if uv is None:
        raise ValueError("nothing to ask: give points (N, 2) or grid=STRIDE")
    _check_pixels(uv, K, f"the {K.width}x{K.height} image")
    sample = _sample(DEPTH, [img], [K], s)
    U = sample.view.record.views[0].K
    fwd = sample.view.transforms[0].forward(uv)
    why = not_asked_reasons(sample.view.transforms[0], U, fwd)  # "" = can be shown (the canvas pads)
    inside = why == ""
    coords = np.full((len(uv), 2), -1, dtype=np.int64)
    if s.profile == "depthlm":  # DepthLM: a marker drawn on a copy of the image per point
        coords[inside] = marker_pixels(sample.view, fwd[inside])
        queries = [Query(DEPTHLM_QUESTION, None, None, int(i), images=[draw_marker(sample.images[0], *map(int, coords[i]))]) for i in np.flatnonzero(inside)]
    else:
        coords[inside] = encode_view_pixels(sample.view, 0, fwd[inside], s)
        queries = [Query(profile_depth_question(*coords[i], s), None, None, int(i)) for i in np.flatnonzero(inside)]
    raw, depth, parsed = [""] * len(uv), np.full(len(uv), np.nan), np.zeros(len(uv), dtype=bool)
    truncated = np.zeros(len(uv), dtype=bool)
    for a in _ask_all(backend, sample, queries, max_new_tokens, chunk_size, progress):
        i = a.query.label
        raw[i], parsed[i], truncated[i] = a.raw, a.parsed, a.truncated
        if a.parsed and a.pred > 0:
            depth[i] = a.pred
    not_asked = [None if w == "" else str(w) for w in why]
    return DepthPrediction(uv, depth, s.depth_type, raw, parsed, K, coords, shape, s, processor_note(backend, sample), truncated, not_asked)


# --- pose ---------------------------------------------------------------------------------------


@dataclass
class PoseResult:
    """Relative pose T_cam2_from_cam1 (``R``, ``t``; camera axes X right, Y down, Z forward).

    ``yaw``/``pitch``/``roll`` (degrees): camera 2's orientation in camera 1 (+yaw = turned right,
    +pitch = looking up); ``direction``: unit vector to camera 2's centre in camera 1;
    ``distance``: metres between the centres (None if not answered; ``t`` is then unit length).
    All None when the answer did not parse; ``truncated``: it was cut off at the token limit.
    """

    R: np.ndarray | None
    t: np.ndarray | None
    yaw: float | None
    pitch: float | None
    roll: float | None
    distance: float | None
    direction: np.ndarray | None
    raw: str
    parsed: bool
    processor: dict[str, Any] | None = None
    truncated: bool = False

    @property
    def failure(self) -> str | None:
        """Why there is no pose (None when the answer parsed)."""
        return TRUNCATED if self.truncated else None if self.parsed else UNPARSED

    def to_dict(self) -> dict[str, Any]:
        as_list = lambda a: None if a is None else np.asarray(a).tolist()  # noqa: E731
        return {
            "T": "T_cam2_from_cam1 (maps camera-1 coordinates to camera-2 coordinates; X right, Y down, Z forward)",
            "R": as_list(self.R), "t": as_list(self.t),
            "yaw_deg": self.yaw, "pitch_deg": self.pitch, "roll_deg": self.roll,
            "distance_m": self.distance, "direction": as_list(self.direction),
            "raw": self.raw, "parsed": self.parsed, "failure": self.failure,
        }


def predict_pose(
    backend: Backend,
    image1: ImageInput,
    image2: ImageInput,
    K1: Intrinsics,
    K2: Intrinsics | None = None,
    settings: Settings | None = None,
    *,
    max_new_tokens: int | None = None,
) -> PoseResult:
    """Relative pose of two images (``K2`` defaults to ``K1``), asked in the wording of
    ``settings.profile`` (vlm3's: three packed questions, distance, direction and rotation, in one turn)."""
    from vlm3.geometry.pose import camera2_center_in_cam1, make_T, rotation_to_ypr

    sample = _sample(POSE, [load_image(image1), load_image(image2)], [K1, K2 or K1], settings or Settings())
    (answer,) = ask(backend, sample, max_new_tokens=max_new_tokens, queries=[pose_query(sample.settings, True)])
    note = processor_note(backend, sample)
    if answer.pred is None:
        return PoseResult(None, None, None, None, None, None, None, answer.raw, False, note, answer.truncated)
    R, t = np.asarray(answer.pred["R"]), np.asarray(answer.pred["t"])
    c = camera2_center_in_cam1(make_T(R, t))
    n = float(np.linalg.norm(c))
    return PoseResult(R, t, *rotation_to_ypr(R.T), answer.pred["distance"], c / n if n > 0 else np.zeros(3), answer.raw, True, note)


# --- matches ------------------------------------------------------------------------------------


@dataclass
class MatchPrediction:
    """Pixels of image 2 matching ``uv1`` of image 1 (both corner-origin, original frames);
    ``uv2`` is NaN where the answer did not parse (or the point was not asked);
    ``truncated``: answers cut off at the token limit (failures; None: none were);
    ``not_asked``: per point, None when asked, else the reason code (``vlm3.data.unify.NOT_ASKED``)."""

    uv1: np.ndarray
    uv2: np.ndarray
    raw: list[str]
    parsed: np.ndarray
    processor: dict[str, Any] | None = None
    truncated: np.ndarray | None = None
    not_asked: list[str | None] | None = None

    @property
    def failures(self) -> list[str | None]:
        """Why each point has no match (None where it has one): "not asked: <reason>", truncated, unparsed."""
        truncated = self.truncated if self.truncated is not None else np.zeros(len(self.uv1), dtype=bool)
        why = self.not_asked if self.not_asked is not None else [None] * len(self.uv1)
        return [NOT_ASKED_PREFIX + NOT_ASKED.get(w, w) if w is not None else None if ok else TRUNCATED if cut else UNPARSED
                for ok, cut, w in zip(self.parsed, truncated, why)]


def predict_match(
    backend: Backend,
    image1: ImageInput,
    image2: ImageInput,
    points: Any,
    K1: Intrinsics,
    K2: Intrinsics | None = None,
    settings: Settings | None = None,
    *,
    max_new_tokens: int | None = None,
    chunk_size: int = 256,
    progress: Progress | None = None,
) -> MatchPrediction:
    """The pixel of image 2 that matches each of ``points`` (corner-origin pixels of image 1)."""
    s = settings or Settings()
    uv1 = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(uv1) == 0:
        raise ValueError("give at least one point of image 1")
    _check_pixels(uv1, K1, f"image 1 ({K1.width}x{K1.height})")
    sample = _sample(CORRESPONDENCE, [load_image(image1), load_image(image2)], [K1, K2 or K1], s)
    U1 = sample.view.record.views[0].K
    fwd = sample.view.transforms[0].forward(uv1)
    why = not_asked_reasons(sample.view.transforms[0], U1, fwd)
    inside = np.flatnonzero(why == "")
    coords = encode_view_pixels(sample.view, 0, fwd[inside], s)
    queries = [Query(profile_question(*c, s), None, None, int(i)) for i, c in zip(inside, coords)]
    uv2, raw, parsed = np.full((len(uv1), 2), np.nan), [""] * len(uv1), np.zeros(len(uv1), dtype=bool)
    truncated = np.zeros(len(uv1), dtype=bool)
    for a in _ask_all(backend, sample, queries, max_new_tokens, chunk_size, progress):
        i = a.query.label
        raw[i], parsed[i], truncated[i] = a.raw, a.parsed, a.truncated
        if a.parsed:
            uv2[i] = a.pred  # CORRESPONDENCE.read maps it back to image 2's original pixels
    return MatchPrediction(uv1, uv2, raw, parsed, processor_note(backend, sample), truncated, [None if w == "" else str(w) for w in why])


# --- objects ------------------------------------------------------------------------------------


@dataclass
class ObjectAnswer:
    """One object question: the text asked, the answer, its parsed value and the boxes involved.

    ``value``: bool (qualitative), metres (quantitative), clock hour 1..12 (direction), or None
    (not parsed, or a free question without ``kind``); ``truncated``: the answer was cut off at
    the token limit (``value`` is then None).
    """

    question: str
    raw: str
    kind: str | None
    value: bool | float | int | None
    boxes: list[int]
    truncated: bool = False

    @property
    def failure(self) -> str | None:
        """Why there is no value (None when there is one, or nothing was to be parsed: no ``kind``)."""
        if self.truncated:
            return TRUNCATED
        return UNPARSED if self.value is None and self.kind is not None else None


def ask_kind(name: str) -> str:
    """The answer kind of an ``ask`` name: a predicate (qualitative) or a quantity."""
    if name in PREDICATES:
        return "qualitative"
    if name in QUANTITIES:
        return "direction" if name == "direction" else "quantitative"
    raise ValueError(f"unknown question {name!r}: choose a predicate ({', '.join(PREDICATES)}) or a quantity ({', '.join(QUANTITIES)})")


def predict_object(
    backend: Backend,
    image: ImageInput,
    K: Intrinsics,
    boxes: Any,
    question: str | None = None,
    ask: str | None = None,
    kind: str | None = None,
    settings: Settings | None = None,
    *,
    max_new_tokens: int | None = None,
) -> list[ObjectAnswer]:
    """Object-level questions about boxed regions ((x_min, y_min, x_max, y_max) corner-origin pixels).

    ``ask`` uses the training phrasing: a predicate (``above``, ``left``, ``big``, ...) asks
    "Is A <predicate> B?" for A = the first box and B = each other box; a two-object quantity
    (``direct_distance``, ``horizontal_distance``, ``vertical_distance``, ``direction``) likewise;
    ``width`` / ``height`` ask about each box. ``question`` is free text naming the boxes
    ``{A}``, ``{B}``, ... (parsed as ``kind`` when given).
    """
    if (question is None) == (ask is None):
        raise ValueError("give exactly one of question (free text) or ask (a predicate or quantity name)")
    s = settings or Settings()
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(arr) == 0:
        raise ValueError("give at least one box (x_min, y_min, x_max, y_max)")
    for i, b in enumerate(arr):
        if not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
            raise ValueError(f"box {i + 1} = {tuple(float(v) for v in b)} must have x_min < x_max and y_min < y_max")
    sample = _sample(OBJECT, [load_image(image)], [K], s)
    U = sample.view.record.views[0].K
    if s.profile == "vlm3-release":  # SpatialRGPT's pipeline: the original box over the original size
        boxed, W, H = arr, K.width, K.height
    else:
        boxed, W, H = np.clip(sample.view.transforms[0].boxes_forward(arr), 0, [U.width, U.height, U.width, U.height]), U.width, U.height
    regions = [f"bounding box region {format_box(encode_box(tuple(b), W, H, s.n_coords, clamp=True))}" for b in boxed]
    asks: list[tuple[str, str | None, list[int]]] = []
    if question is not None:
        names = {chr(ord("A") + i): r for i, r in enumerate(regions)}
        if not any("{" + n + "}" in question for n in names):
            raise ValueError("name the boxes in the question as {A}, {B}, ... (in --box order)")
        try:
            text = question.format(**names)
        except (KeyError, IndexError) as e:
            raise ValueError(f"the question names {e} but there are only {len(arr)} box(es)") from None
        if kind is not None and kind not in ("qualitative", "quantitative", "direction"):
            raise ValueError(f"kind {kind!r} must be qualitative, quantitative or direction")
        asks.append((text, kind, list(range(len(arr)))))
    else:
        k, cap = ask_kind(ask), lambda text: text[:1].upper() + text[1:]
        if ask in SINGLE_OBJECT_QUANTITIES:
            asks += [(cap(QUANTITIES[ask][0][0].format(a=r, b="")), k, [i]) for i, r in enumerate(regions)]
        elif len(arr) < 2:
            raise ValueError(f"{ask!r} compares two objects: give at least two boxes")
        else:
            rel = PREDICATES[ask][1] if ask in PREDICATES else ""
            template = QUALITATIVE_QUESTIONS[0] if ask in PREDICATES else QUANTITIES[ask][0][0]
            asks += [(cap(template.format(a=regions[0], rel=rel, b=regions[j])), k, [0, j]) for j in range(1, len(arr))]
    if s.profile == "zero-shot":
        asks = [(text + ZERO_SHOT_SUFFIX.format(n=s.n_coords, how=ZERO_SHOT_ANSWER.get(k or "", "")).rstrip(), k, idx) for text, k, idx in asks]
    queries = [Query(text, None, None, i, {"boxes": idx}, k) for i, (text, k, idx) in enumerate(asks)]
    answers = _ask_all(backend, sample, queries, max_new_tokens, 64)
    return [ObjectAnswer(a.query.question, a.raw, a.query.context, a.pred, a.query.fields["boxes"], a.truncated) for a in answers]


# --- files --------------------------------------------------------------------------------------


def write_depth_outputs(pred: DepthPrediction, image: ImageInput, out: str | Path, info: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``points.json`` (and for grids ``depth_map.png``) plus ``points.ply`` (valid points,
    coloured by the image, original camera frame) into ``out``. Returns the written paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    img = load_image(image)
    xy, xyz, z, rng, valid = to_cli_pixels(pred.uv), pred.points_cam(), pred.z, pred.range, pred.valid
    failures = pred.failures
    num = lambda a, i: float(a[i]) if valid[i] else None  # noqa: E731
    rows = [
        {"x": float(xy[i, 0]), "y": float(xy[i, 1]), "depth_m": num(pred.depth, i), "z_m": num(z, i), "range_m": num(rng, i),
         "xyz_m": xyz[i].tolist() if valid[i] else None, "raw": pred.raw[i], "parsed": bool(pred.parsed[i]), "failure": failures[i]}
        for i in range(len(pred.uv))
    ]
    K = pred.K
    doc = {
        **(info or {}),
        "width": K.width, "height": K.height,
        "pixel_convention": "x = column, y = row in pixels of the original image; integer (x, y) is the centre of that pixel (OpenCV)",
        "intrinsics": {"fx": K.fx, "fy": K.fy, "cx": K.cx - 0.5, "cy": K.cy - 0.5, "convention": "OpenCV (principal point with the top-left pixel centre at (0, 0))"},
        "depth_type": pred.depth_type,
        "depth_convention": "depth_m is what the model answers: 'range' = distance from the camera centre, 'z' = along the optical axis; z_m and range_m give both",
        "camera_frame": "xyz_m: X right, Y down, Z forward, metres, original camera",
        "settings": pred.settings.model_dump(mode="json", include=set(ASK_FIELDS)),
        "processor": pred.processor,
        "n": len(rows), "valid": int(valid.sum()), "parsed": int(pred.parsed.sum()), "truncated": sum(f == TRUNCATED for f in failures),
        "not_asked": sum(f is not None and f.startswith(NOT_ASKED_PREFIX) for f in failures),
        "grid": {"rows": pred.grid_shape[0], "cols": pred.grid_shape[1]} if pred.grid_shape else None,
        "points": rows,
    }
    paths = {"points": out / "points.json"}
    paths["points"].write_text(json.dumps(doc, indent=1) + "\n")
    if valid.any():
        uv = pred.uv[valid]
        colours = img[np.clip(np.floor(uv[:, 1]).astype(int), 0, img.shape[0] - 1), np.clip(np.floor(uv[:, 0]).astype(int), 0, img.shape[1] - 1)]
        paths["ply"] = write_ply(out / "points.ply", xyz[valid], colours)
    if pred.grid_shape is not None:
        paths["depth_map"] = plot_depth_map(pred, img, out / "depth_map.png")
    return paths


def write_ply(path: str | Path, points: np.ndarray, colours: np.ndarray) -> Path:
    """A coloured point cloud (PLY) of camera-frame points in metres."""
    import trimesh

    rgba = np.concatenate([colours.astype(np.uint8), np.full((len(colours), 1), 255, np.uint8)], axis=1)
    trimesh.PointCloud(vertices=np.asarray(points, dtype=np.float64), colors=rgba).export(str(path))
    return Path(path)


def plot_depth_map(pred: DepthPrediction, img: np.ndarray, path: str | Path) -> Path:
    """The image and the grid's depth map side by side, with a colourbar in metres."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    dmap = pred.depth_map()
    h, w = img.shape[:2]
    fig = Figure(figsize=(11, 4.6 * h / w + 0.8), dpi=110, layout="constrained")
    a, b = fig.subplots(1, 2)
    a.imshow(img)
    a.set_title("image")
    finite = dmap[np.isfinite(dmap)]
    vmin, vmax = (float(np.percentile(finite, 2)), float(np.percentile(finite, 98))) if finite.size else (0.0, 1.0)
    cmap = colormaps["turbo"].with_extremes(bad="0.5")
    shown = b.imshow(np.ma.masked_invalid(dmap), cmap=cmap, vmin=vmin, vmax=max(vmax, vmin + 1e-6), extent=(0, w, h, 0), interpolation="nearest")
    what = "range from the camera" if pred.depth_type == "range" else "z-depth"
    b.set_title(f"predicted {'range' if pred.depth_type == 'range' else 'z-depth'} ({int(pred.valid.sum())} of {len(pred.depth)} points; grey: failed or not asked)")
    for ax in (a, b):
        ax.set_axis_off()
    fig.colorbar(shown, ax=b, label=f"{what} (m)", shrink=0.9)
    fig.savefig(path)
    return Path(path)


def plot_matches(pred: MatchPrediction, image1: ImageInput, image2: ImageInput, path: str | Path) -> Path:
    """Both images side by side with a line from each query pixel to its predicted match."""
    from matplotlib import colormaps

    from vlm3 import plotting

    a = load_image(image1)
    fig, ax = plotting.image_axes(plotting.side_by_side([a, load_image(image2)]), width=11)
    n = len(pred.uv1)
    for i, (p, q) in enumerate(zip(pred.uv1, pred.uv2)):
        if np.all(np.isfinite(q)):
            ax.plot([p[0], q[0] + a.shape[1]], [p[1], q[1]], "-o", color=colormaps["hsv"](i / max(n, 1)), lw=1, ms=3)
        else:
            ax.plot(p[0], p[1], "x", color="white", ms=6)
    ax.set_title(f"{int(pred.parsed.sum())} of {n} matches parsed (x: no answer)")
    fig.savefig(path)
    return Path(path)
