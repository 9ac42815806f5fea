"""Ask a model about your own images: metric depth (points, grids, point clouds), relative pose,
pixel matches and object-level questions.

Every prediction goes through the same view transform and prompts as training and evaluation
(``vlm3.tasks``): the image is focal-unified with its intrinsics (fx = fy = ``settings.focal``),
pixels are named by text coordinates on the unified image, and answers are mapped back through
the :class:`~vlm3.geometry.unify.FocalTransform`, so every output is in the ORIGINAL image's
pixel frame and camera frame (X right, Y down, Z forward, metres).

Intrinsics are required: metric answers depend on them. Without a calibration,
:func:`estimate_intrinsics` makes a plain guess (a 60 degree horizontal field of view, principal
point at the image centre); no single-image calibration model ships with vlm3, so results made
with the guess are only as metric as the guess.

Pixel conventions. The Python API uses vlm3's convention (README): continuous (x, y), origin at
the top-left CORNER of the top-left pixel, pixel (i, j) centred at (i + 0.5, j + 0.5), and
:class:`~vlm3.geometry.camera.Intrinsics` in the same convention. The command line uses the
image-viewer / OpenCV convention instead (integer (x, y) is the centre of the pixel in column x,
row y; ``--cx/--cy`` as OpenCV calibrations give them); :func:`from_cli_pixels` /
:func:`to_cli_pixels` convert (+-0.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlm3.data.records import Record, View
from vlm3.data.unify import UnifiedRecord
from vlm3.geometry.camera import Intrinsics, backproject, convert_depth
from vlm3.models.backend import Backend
from vlm3.tasks.samples import SampleOptions, transform_views

HFOV_GUESS_DEG = 60.0
ImageInput = str | Path | np.ndarray | Image.Image
Progress = Callable[[int, int], None]  # (done, total) questions


# --- inputs -----------------------------------------------------------------------------------


def load_image(image: ImageInput) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array from a path, PIL image or array."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path} does not exist") from None
        except OSError as e:
            raise OSError(f"cannot read image {path}: {e}") from None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        raise ValueError(f"image array must be (H, W, 3) uint8, got shape {arr.shape} dtype {arr.dtype}")
    return np.ascontiguousarray(arr[:, :, :3])


def estimate_intrinsics(width: int, height: int, hfov_deg: float = HFOV_GUESS_DEG) -> Intrinsics:
    """A guess for an uncalibrated image: square pixels, ``hfov_deg`` horizontal field of view,
    principal point at the image centre. fx = (W / 2) / tan(hfov / 2)."""
    if not 1.0 < hfov_deg < 179.0:
        raise ValueError(f"horizontal field of view must be in (1, 179) degrees, got {hfov_deg}")
    f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return Intrinsics(f, f, width / 2, height / 2, width, height)


def cli_intrinsics(width: int, height: int, fx: float, fy: float | None = None, cx: float | None = None, cy: float | None = None) -> Intrinsics:
    """Intrinsics from command-line values: ``cx, cy`` in the OpenCV convention (centre of the
    top-left pixel at (0, 0)); missing fy = fx, missing cx, cy = the image centre."""
    cx_c = (width - 1) / 2 if cx is None else cx
    cy_c = (height - 1) / 2 if cy is None else cy
    return Intrinsics.from_center_origin(fx, fx if fy is None else fy, cx_c, cy_c, width, height)


def from_cli_pixels(xy: np.ndarray) -> np.ndarray:
    """Command-line pixels (integer = pixel centre) -> vlm3's corner-origin pixels (+0.5)."""
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2) + 0.5


def to_cli_pixels(uv: np.ndarray) -> np.ndarray:
    """vlm3's corner-origin pixels -> command-line pixels (integer = pixel centre) (-0.5)."""
    return np.asarray(uv, dtype=np.float64).reshape(-1, 2) - 0.5


def grid_pixels(width: int, height: int, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pixel centres every ``stride`` pixels, starting ``stride // 2`` in: ((N, 2) corner-origin
    pixels in row-major order, (rows, cols))."""
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"grid stride must be a positive integer number of pixels, got {stride!r}")
    xs = np.arange(stride // 2, width, stride) + 0.5
    ys = np.arange(stride // 2, height, stride) + 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1), (len(ys), len(xs))


def predict_settings(task: str, meta: dict[str, Any] | None = None, **overrides: Any) -> SampleOptions:
    """Sample settings for prediction: explicit ``overrides`` (None = unset), else the model's
    ``vlm3.json`` values (``meta``), else the defaults of ``vlm3.eval.bench``."""
    from vlm3.eval.bench import BenchError, SETTING_KEYS, check_settings, resolve_settings

    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(SETTING_KEYS))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known: {', '.join(SETTING_KEYS)}")
    try:
        check_settings(given, "settings")
        merged = {**(meta or {}), **given}
        opts, _ = resolve_settings(task, merged, None)
    except BenchError as e:
        raise ValueError(str(e)) from None
    return opts


def _view(images: Sequence[np.ndarray], Ks: Sequence[Intrinsics], opts: SampleOptions) -> UnifiedRecord:
    """The recipe's view transform of in-memory images (the same code as training and eval)."""
    for i, (im, K) in enumerate(zip(images, Ks)):
        if (im.shape[1], im.shape[0]) != (K.width, K.height):
            raise ValueError(f"image {i + 1} is {im.shape[1]}x{im.shape[0]} but its intrinsics describe {K.width}x{K.height}")
    views = [View(image=f"input{i}", intrinsics=K.to_list()) for i, K in enumerate(Ks)]
    return transform_views(Record(id="input", dataset="input", views=views), list(images), opts)


def _pil(view: UnifiedRecord) -> list[Image.Image]:
    return [Image.fromarray(im) for im in view.images]


def _ask(backend: Backend, images: list[Image.Image], questions: list[str], max_new_tokens: int, chunk_size: int, progress: Progress | None) -> list[str]:
    """Answers to ``questions`` about ``images``; identical questions are asked once."""
    unique = list(dict.fromkeys(questions))
    answers: dict[str, str] = {}
    for start in range(0, len(unique), chunk_size):
        part = unique[start : start + chunk_size]
        got = backend.query_many(images, part, max_new_tokens)
        if len(got) != len(part):
            raise RuntimeError(f"the backend gave {len(got)} answers for {len(part)} questions")
        answers.update({q: a if isinstance(a, str) else "" for q, a in zip(part, got)})
        if progress is not None:
            progress(min(start + chunk_size, len(unique)), len(unique))
    return [answers[q] for q in questions]


def processor_note(backend: Backend, view: UnifiedRecord) -> dict[str, Any] | None:
    """What the local model's processor does to the unified image(s), or None when unknown."""
    processor = getattr(backend, "processor", None)
    if processor is None:
        return None
    from vlm3.models.processor import resize_report

    try:
        notes = []
        for K in (v.K for v in view.record.views):
            r = resize_report(K.width, K.height, processor)
            notes.append({"size": [K.width, K.height], "model_size": [r.new_width, r.new_height], "effective_fx": K.fx * r.scale_x, "effective_fy": K.fy * r.scale_y, "resized": r.resized, "note": r.describe(K.fx, K.fy)})
        return {"images": notes}
    except (TypeError, ValueError):
        return None


# --- depth --------------------------------------------------------------------------------------


@dataclass
class DepthPrediction:
    """Metric depth at pixels of the original image.

    ``uv``: (N, 2) corner-origin pixels of the original image; ``depth``: (N,) metres in
    ``depth_type`` (``"range"``: distance from the camera centre, ``"z"``: along the optical
    axis), NaN where the answer did not parse or lies outside the model's view; ``raw``: the
    answers; ``parsed``: the parser found a number; ``grid_shape``: (rows, cols) for grids.
    """

    uv: np.ndarray
    depth: np.ndarray
    depth_type: str
    raw: list[str]
    parsed: np.ndarray
    K: Intrinsics
    coords: np.ndarray  # (N, 2) text coordinates asked; -1 where the pixel left the unified view
    grid_shape: tuple[int, int] | None = None
    settings: SampleOptions = field(default_factory=SampleOptions)
    processor: dict[str, Any] | None = None

    @property
    def valid(self) -> np.ndarray:
        """Points with a usable depth (parsed, finite, > 0)."""
        return np.isfinite(self.depth) & (self.depth > 0)

    @property
    def z(self) -> np.ndarray:
        """z-depth (metres along the optical axis), NaN where invalid."""
        return self._convert("z")

    @property
    def range(self) -> np.ndarray:
        """Range (metres from the camera centre), NaN where invalid."""
        return self._convert("range")

    def _convert(self, dst: str) -> np.ndarray:
        out = np.full(len(self.depth), np.nan)
        v = self.valid
        if v.any():
            out[v] = convert_depth(self.K, self.uv[v], self.depth[v], self.depth_type, dst)  # type: ignore[arg-type]
        return out

    def points_cam(self) -> np.ndarray:
        """(N, 3) camera-frame points in metres (X right, Y down, Z forward); NaN where invalid."""
        out = np.full((len(self.depth), 3), np.nan)
        v = self.valid
        if v.any():
            out[v] = backproject(self.K, self.uv[v], self.depth[v], self.depth_type)  # type: ignore[arg-type]
        return out

    def depth_map(self) -> np.ndarray:
        """The grid's depths as a (rows, cols) array (NaN where invalid); grids only."""
        if self.grid_shape is None:
            raise ValueError("depth_map() needs a grid prediction (grid=STRIDE)")
        d = np.where(self.valid, self.depth, np.nan)
        return d.reshape(self.grid_shape)


def predict_depth(
    backend: Backend,
    image: ImageInput,
    K: Intrinsics,
    points: np.ndarray | Sequence[Sequence[float]] | None = None,
    grid: int | None = None,
    settings: SampleOptions | None = None,
    *,
    max_new_tokens: int = 32,
    chunk_size: int = 256,
    progress: Progress | None = None,
) -> DepthPrediction:
    """Metric depth at ``points`` ((N, 2) corner-origin pixels) and/or on a ``grid`` (stride in
    pixels) of ``image``, taken with intrinsics ``K`` (of that image). One question per pixel,
    all sharing the image prefix (``backend.query_many``)."""
    from vlm3.tasks.depth import depth_question, parse_depth
    from vlm3.textref import encode_pixels

    opts = settings or SampleOptions(task="depth")
    img = load_image(image)
    pts = [np.asarray(points, dtype=np.float64).reshape(-1, 2)] if points is not None and len(points) else []
    shape = None
    if grid is not None:
        g, shape = grid_pixels(K.width, K.height, grid)
        if pts:
            raise ValueError("give points or grid, not both (a grid's depth map needs its points alone)")
        pts.append(g)
    if not pts:
        raise ValueError("nothing to ask: give points (N, 2) or grid=STRIDE")
    uv = pts[0]
    if not np.all(np.isfinite(uv)) or not K.contains(uv).all():
        bad = uv[~(np.isfinite(uv).all(axis=1) & K.contains(uv))][0]
        raise ValueError(f"pixel ({bad[0]:g}, {bad[1]:g}) is outside the {K.width}x{K.height} image")
    view = _view([img], [K], opts)
    U = view.record.views[0].K
    fwd = view.transforms[0].forward(uv)
    inside = U.contains(fwd)  # a size_multiple crop can cut the right/bottom edge
    coords = np.full((len(uv), 2), -1, dtype=np.int64)
    coords[inside] = encode_pixels(fwd[inside], U.width, U.height, opts.n_coords)
    questions = [depth_question(int(c[0]), int(c[1]), opts.n_coords) for c in coords[inside]]
    answers = _ask(backend, _pil(view), questions, max_new_tokens, chunk_size, progress)
    raw = [""] * len(uv)
    depth = np.full(len(uv), np.nan)
    parsed = np.zeros(len(uv), dtype=bool)
    for i, text in zip(np.flatnonzero(inside), answers):
        raw[i] = text
        value = parse_depth(text)
        parsed[i] = value is not None
        if value is not None and value > 0:
            depth[i] = value
    return DepthPrediction(uv, depth, opts.depth_type, raw, parsed, K, coords, shape, opts, processor_note(backend, view))


# --- pose ---------------------------------------------------------------------------------------


@dataclass
class PoseResult:
    """Relative pose T_cam2_from_cam1 (``R``, ``t``; camera axes X right, Y down, Z forward).

    ``yaw``/``pitch``/``roll`` (degrees) are camera 2's orientation in camera 1 (+yaw = turned
    right, +pitch = looking up); ``direction`` the unit vector to camera 2's centre in camera 1;
    ``distance`` metres between the centres (None if not answered; ``t`` is then unit length).
    All None when the answer did not parse.
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

    def to_dict(self) -> dict[str, Any]:
        as_list = lambda a: None if a is None else np.asarray(a).tolist()  # noqa: E731
        return {
            "T": "T_cam2_from_cam1 (maps camera-1 coordinates to camera-2 coordinates; X right, Y down, Z forward)",
            "R": as_list(self.R),
            "t": as_list(self.t),
            "yaw_deg": self.yaw,
            "pitch_deg": self.pitch,
            "roll_deg": self.roll,
            "distance_m": self.distance,
            "direction": as_list(self.direction),
            "raw": self.raw,
            "parsed": self.parsed,
        }


def predict_pose(
    backend: Backend,
    image1: ImageInput,
    image2: ImageInput,
    K1: Intrinsics,
    K2: Intrinsics | None = None,
    settings: SampleOptions | None = None,
    *,
    max_new_tokens: int = 96,
) -> PoseResult:
    """Relative pose of two images (``K2`` defaults to ``K1``): the paper's three packed
    questions (distance, direction, rotation) in one turn."""
    from vlm3.geometry.pose import camera2_center_in_cam1, make_T, rotation_to_ypr
    from vlm3.tasks.pose import parse_pose, pose_prompt

    opts = settings or SampleOptions(task="pose")
    view = _view([load_image(image1), load_image(image2)], [K1, K2 or K1], opts)
    raw = _ask(backend, _pil(view), [pose_prompt(True)], max_new_tokens, 1, None)[0]
    pred = parse_pose(raw)
    note = processor_note(backend, view)
    if pred is None:
        return PoseResult(None, None, None, None, None, None, None, raw, False, note)
    R, t = np.asarray(pred.R), np.asarray(pred.t)
    yaw, pitch, roll = rotation_to_ypr(R.T)
    c = camera2_center_in_cam1(make_T(R, t))
    n = float(np.linalg.norm(c))
    return PoseResult(R, t, yaw, pitch, roll, pred.distance, c / n if n > 0 else np.zeros(3), raw, True, note)


# --- matches ------------------------------------------------------------------------------------


@dataclass
class MatchPrediction:
    """Pixels of image 2 matching ``uv1`` of image 1 (both corner-origin, original frames).

    ``uv2`` is NaN where the answer did not parse (or the pixel left the unified view).
    """

    uv1: np.ndarray
    uv2: np.ndarray
    raw: list[str]
    parsed: np.ndarray
    processor: dict[str, Any] | None = None


def predict_match(
    backend: Backend,
    image1: ImageInput,
    image2: ImageInput,
    points: np.ndarray | Sequence[Sequence[float]],
    K1: Intrinsics,
    K2: Intrinsics | None = None,
    settings: SampleOptions | None = None,
    *,
    max_new_tokens: int = 32,
    chunk_size: int = 256,
    progress: Progress | None = None,
) -> MatchPrediction:
    """The pixel of image 2 that matches each of ``points`` (corner-origin pixels of image 1)."""
    from vlm3.tasks.correspondence import correspondence_question, parse_correspondence
    from vlm3.textref import decode_pixel, encode_pixels

    opts = settings or SampleOptions(task="correspondence")
    K2 = K2 or K1
    uv1 = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(uv1) == 0:
        raise ValueError("give at least one point of image 1")
    if not np.all(np.isfinite(uv1)) or not K1.contains(uv1).all():
        bad = uv1[~(np.isfinite(uv1).all(axis=1) & K1.contains(uv1))][0]
        raise ValueError(f"pixel ({bad[0]:g}, {bad[1]:g}) is outside image 1 ({K1.width}x{K1.height})")
    view = _view([load_image(image1), load_image(image2)], [K1, K2], opts)
    U1, U2 = view.record.views[0].K, view.record.views[1].K
    fwd = view.transforms[0].forward(uv1)
    inside = U1.contains(fwd)
    coords = encode_pixels(fwd[inside], U1.width, U1.height, opts.n_coords)
    questions = [correspondence_question(int(c[0]), int(c[1])) for c in coords]
    answers = _ask(backend, _pil(view), questions, max_new_tokens, chunk_size, progress)
    uv2 = np.full((len(uv1), 2), np.nan)
    raw = [""] * len(uv1)
    parsed = np.zeros(len(uv1), dtype=bool)
    for i, text in zip(np.flatnonzero(inside), answers):
        raw[i] = text
        point = parse_correspondence(text, opts.n_coords)
        if point is not None:
            parsed[i] = True
            uv2[i] = view.transforms[1].backward(np.array([decode_pixel(point[0], point[1], U2.width, U2.height, opts.n_coords)]))[0]
    return MatchPrediction(uv1, uv2, raw, parsed, processor_note(backend, view))


# --- objects ------------------------------------------------------------------------------------


@dataclass
class ObjectAnswer:
    """One object question: the text asked, the answer, its parsed value and the boxes involved.

    ``value``: bool (qualitative), metres (quantitative), clock hour 1..12 (direction), or None
    (not parsed, or a free question without ``kind``).
    """

    question: str
    raw: str
    kind: str | None
    value: bool | float | int | None
    boxes: list[int]


def ask_kind(ask: str) -> str:
    """The answer kind of an ``ask`` name: a predicate (qualitative) or a quantity."""
    from vlm3.tasks.object3d import PREDICATES, QUANTITIES

    if ask in PREDICATES:
        return "qualitative"
    if ask == "direction":
        return "direction"
    if ask in QUANTITIES:
        return "quantitative"
    raise ValueError(f"unknown question {ask!r}: choose a predicate ({', '.join(PREDICATES)}) or a quantity ({', '.join(QUANTITIES)})")


def predict_object(
    backend: Backend,
    image: ImageInput,
    K: Intrinsics,
    boxes: np.ndarray | Sequence[Sequence[float]],
    question: str | None = None,
    ask: str | None = None,
    kind: str | None = None,
    settings: SampleOptions | None = None,
    *,
    max_new_tokens: int = 64,
) -> list[ObjectAnswer]:
    """Object-level questions about boxed regions ((x_min, y_min, x_max, y_max) corner-origin pixels).

    ``ask`` uses the training phrasing: a predicate (``above``, ``left``, ``big``, ...) asks
    "Is A <predicate> B?" for A = the first box and B = each other box; a two-object quantity
    (``direct_distance``, ``horizontal_distance``, ``vertical_distance``, ``direction``) likewise;
    ``width`` / ``height`` ask about each box. ``question`` is free text naming the boxes
    ``{A}``, ``{B}``, ... (parsed as ``kind`` when given).
    """
    from vlm3.tasks.object3d import PREDICATES, QUALITATIVE_QUESTIONS, QUANTITIES, SINGLE_OBJECT_QUANTITIES, parse_object_answer
    from vlm3.textref import encode_box, format_box

    if (question is None) == (ask is None):
        raise ValueError("give exactly one of question (free text) or ask (a predicate or quantity name)")
    opts = settings or SampleOptions(task="object")
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(arr) == 0:
        raise ValueError("give at least one box (x_min, y_min, x_max, y_max)")
    for i, b in enumerate(arr):
        if not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
            raise ValueError(f"box {i + 1} = {tuple(float(v) for v in b)} must have x_min < x_max and y_min < y_max")
    view = _view([load_image(image)], [K], opts)
    U = view.record.views[0].K
    mapped = np.clip(view.transforms[0].boxes_forward(arr), 0, [U.width, U.height, U.width, U.height])
    regions = [f"bounding box region {format_box(encode_box(tuple(b), U.width, U.height, opts.n_coords, clamp=True))}" for b in mapped]
    asks: list[tuple[str, str | None, list[int]]] = []
    if question is not None:
        names = {chr(ord("A") + i): r for i, r in enumerate(regions)}
        if len(arr) and not any("{" + n + "}" in question for n in names):
            raise ValueError("name the boxes in the question as {A}, {B}, ... (in --box order)")
        try:
            text = question.format(**names)
        except (KeyError, IndexError) as e:
            raise ValueError(f"the question names {e} but there are only {len(arr)} box(es)") from None
        if kind is not None and kind not in ("qualitative", "quantitative", "direction"):
            raise ValueError(f"kind {kind!r} must be qualitative, quantitative or direction")
        asks.append((text, kind, list(range(len(arr)))))
    else:
        k = ask_kind(ask)  # type: ignore[arg-type]
        if ask in SINGLE_OBJECT_QUANTITIES:
            template = QUANTITIES[ask][0][0]
            asks += [(_sentence(template.format(a=r, b="")), k, [i]) for i, r in enumerate(regions)]
        else:
            if len(arr) < 2:
                raise ValueError(f"{ask!r} compares two objects: give at least two boxes")
            if ask in PREDICATES:
                rel = PREDICATES[ask][1]
                make = lambda a, b: QUALITATIVE_QUESTIONS[0].format(a=a, rel=rel, b=b)  # noqa: E731
            else:
                make = lambda a, b: QUANTITIES[ask][0][0].format(a=a, b=b)  # noqa: E731
            asks += [(_sentence(make(regions[0], regions[j])), k, [0, j]) for j in range(1, len(arr))]
    answers = _ask(backend, _pil(view), [a[0] for a in asks], max_new_tokens, 64, None)
    return [ObjectAnswer(q, raw, k, parse_object_answer(raw, k) if k else None, idx) for (q, k, idx), raw in zip(asks, answers)]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- files --------------------------------------------------------------------------------------


def write_depth_outputs(pred: DepthPrediction, image: ImageInput, out: str | Path, info: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``points.json`` (and for grids ``depth_map.png``) plus ``points.ply`` (valid points,
    coloured by the image, original camera frame) into ``out``. Returns the written paths."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    img = load_image(image)
    xy = to_cli_pixels(pred.uv)
    xyz, z, rng = pred.points_cam(), pred.z, pred.range
    rows = []
    for i in range(len(pred.uv)):
        ok = bool(pred.valid[i])
        rows.append({
            "x": float(xy[i, 0]), "y": float(xy[i, 1]),
            "depth_m": float(pred.depth[i]) if ok else None,
            "z_m": float(z[i]) if ok else None, "range_m": float(rng[i]) if ok else None,
            "xyz_m": xyz[i].tolist() if ok else None,
            "raw": pred.raw[i], "parsed": bool(pred.parsed[i]),
        })
    K = pred.K
    doc = {
        **(info or {}),
        "width": K.width, "height": K.height,
        "pixel_convention": "x = column, y = row in pixels of the original image; integer (x, y) is the centre of that pixel (OpenCV)",
        "intrinsics": {"fx": K.fx, "fy": K.fy, "cx": K.cx - 0.5, "cy": K.cy - 0.5, "convention": "OpenCV (principal point with the top-left pixel centre at (0, 0))"},
        "depth_type": pred.depth_type,
        "depth_convention": "depth_m is what the model answers: 'range' = distance from the camera centre, 'z' = along the optical axis; z_m and range_m give both",
        "camera_frame": "xyz_m: X right, Y down, Z forward, metres, original camera",
        "settings": {k: v for k, v in vars(pred.settings).items() if k not in ("points_per_sample", "packing")},
        "processor": pred.processor,
        "n": len(rows), "valid": int(pred.valid.sum()), "parsed": int(pred.parsed.sum()),
        "grid": {"rows": pred.grid_shape[0], "cols": pred.grid_shape[1]} if pred.grid_shape else None,
        "points": rows,
    }
    paths = {"points": out / "points.json"}
    paths["points"].write_text(json.dumps(doc, indent=1) + "\n")
    if pred.valid.any():
        paths["ply"] = write_ply(out / "points.ply", xyz[pred.valid], _colours(img, pred.uv[pred.valid]))
    if pred.grid_shape is not None:
        paths["depth_map"] = plot_depth_map(pred, img, out / "depth_map.png")
    return paths


def _colours(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    cols = np.clip(np.floor(uv[:, 0]).astype(int), 0, img.shape[1] - 1)
    rows = np.clip(np.floor(uv[:, 1]).astype(int), 0, img.shape[0] - 1)
    return img[rows, cols]


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
    cmap = colormaps["turbo"].with_extremes(bad="0.5")
    finite = dmap[np.isfinite(dmap)]
    vmin, vmax = (float(np.percentile(finite, 2)), float(np.percentile(finite, 98))) if finite.size else (0.0, 1.0)
    shown = b.imshow(np.ma.masked_invalid(dmap), cmap=cmap, vmin=vmin, vmax=max(vmax, vmin + 1e-6), extent=(0, w, h, 0), interpolation="nearest")
    b.set_title(f"predicted {'range' if pred.depth_type == 'range' else 'z-depth'} ({int(pred.valid.sum())} of {len(pred.depth)} points; grey: failed)")
    for ax in (a, b):
        ax.set_axis_off()
    fig.colorbar(shown, ax=b, label=("range from the camera" if pred.depth_type == "range" else "z-depth") + " (m)", shrink=0.9)
    fig.savefig(path)
    return Path(path)


def plot_matches(pred: MatchPrediction, image1: ImageInput, image2: ImageInput, path: str | Path) -> Path:
    """Both images side by side with a line from each query pixel to its predicted match."""
    from matplotlib.figure import Figure

    a, b = load_image(image1), load_image(image2)
    h = max(a.shape[0], b.shape[0])
    canvas = np.zeros((h, a.shape[1] + b.shape[1], 3), np.uint8)
    canvas[: a.shape[0], : a.shape[1]] = a
    canvas[: b.shape[0], a.shape[1] :] = b
    fig = Figure(figsize=(11, 11 * h / canvas.shape[1] + 0.6), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(canvas, extent=(0, canvas.shape[1], h, 0))
    colours = colormapped(len(pred.uv1))
    for i, (p, q) in enumerate(zip(pred.uv1, pred.uv2)):
        if np.all(np.isfinite(q)):
            ax.plot([p[0], q[0] + a.shape[1]], [p[1], q[1]], "-o", color=colours[i], lw=1, ms=3)
        else:
            ax.plot(p[0], p[1], "x", color="white", ms=6)
    ax.set_axis_off()
    ax.set_title(f"{int(pred.parsed.sum())} of {len(pred.uv1)} matches parsed (x: no answer)")
    fig.savefig(path)
    return Path(path)


def colormapped(n: int) -> list[tuple[float, ...]]:
    from matplotlib import colormaps

    cmap = colormaps["hsv"]
    return [cmap(i / max(n, 1)) for i in range(n)]


__all__ = [
    "DepthPrediction",
    "MatchPrediction",
    "ObjectAnswer",
    "PoseResult",
    "HFOV_GUESS_DEG",
    "ask_kind",
    "cli_intrinsics",
    "estimate_intrinsics",
    "from_cli_pixels",
    "grid_pixels",
    "load_image",
    "plot_depth_map",
    "plot_matches",
    "predict_depth",
    "predict_match",
    "predict_object",
    "predict_pose",
    "predict_settings",
    "to_cli_pixels",
    "write_depth_outputs",
    "write_ply",
]


# --- command-line helpers -----------------------------------------------------------------------


def resolve_cli_intrinsics(
    width: int,
    height: int,
    fx: float | None,
    fy: float | None = None,
    cx: float | None = None,
    cy: float | None = None,
    *,
    estimate: bool = False,
    hfov_deg: float = HFOV_GUESS_DEG,
    which: str = "",
) -> tuple[Intrinsics, bool]:
    """(intrinsics, estimated?) from command-line values; ValueError when neither ``fx`` nor
    ``estimate`` is given, or both are."""
    if estimate and fx is not None:
        raise ValueError(f"give --fx{which} or --estimate-intrinsics, not both")
    if estimate:
        if any(v is not None for v in (fy, cx, cy)):
            raise ValueError("--fy/--cx/--cy need --fx; with --estimate-intrinsics the whole camera is guessed")
        return estimate_intrinsics(width, height, hfov_deg), True
    if fx is None:
        raise ValueError(
            f"intrinsics are required for metric answers: pass --fx{which} (focal length in pixels of this image; "
            "--fy, --cx, --cy default to fx and the image centre), or --estimate-intrinsics to guess a "
            f"{HFOV_GUESS_DEG:g} degree horizontal field of view"
        )
    for name, value in (("fx", fx), ("fy", fy)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name}{which} = {value} must be a positive number of pixels")
    return cli_intrinsics(width, height, fx, fy, cx, cy), False


def parse_cli_points(values: Sequence[str], name: str = "--points") -> np.ndarray:
    """``["x,y", "x,y x,y", ...]`` -> (N, 2) floats (pairs separated by spaces or ';')."""
    pairs = []
    for value in values:
        for item in value.replace(";", " ").split():
            parts = item.split(",")
            try:
                if len(parts) != 2:
                    raise ValueError
                pairs.append((float(parts[0]), float(parts[1])))
            except ValueError:
                raise ValueError(f"{name} {item!r} must be x,y (pixel column, row), e.g. 320,240") from None
    return np.array(pairs, dtype=np.float64).reshape(-1, 2)


def parse_cli_box(value: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` -> a box in command-line pixels."""
    parts = value.replace(" ", "").split(",")
    try:
        if len(parts) != 4:
            raise ValueError
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--box {value!r} must be x_min,y_min,x_max,y_max in pixels") from None
    return x0, y0, x1, y1


def open_for_predict(
    model: str,
    task: str,
    *,
    meta: str | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    **overrides: Any,
) -> tuple[Backend, SampleOptions, str | None]:
    """(backend, settings, where the model's settings were read) for the command line."""
    from vlm3.eval.run import model_meta, open_backend

    meta_values, source = model_meta(model, meta)
    settings = predict_settings(task, meta_values, **overrides)
    return open_backend(model, batch_size, device=device, dtype=dtype), settings, source
