"""``vlm3 predict``: depth / pose / matches / object answers for your own images (``vlm3.infer.predict``).

Command-line pixels are OpenCV's (integer (x, y) = centre of the pixel in column x, row y; ``--cx
--cy`` as calibrations give them); the library's are corner-origin (+0.5). Bad input is one
``Error: ...`` line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from vlm3.ask import TRUNCATED
from vlm3.infer.predict import HFOV_GUESS_DEG
from vlm3.models.openai_http import HTTP_FLAGS
from vlm3.settings import DEFAULT_FOCAL_PX, DEFAULT_N_COORDS
from vlm3.tasks.correspondence import CORRESPONDENCE
from vlm3.tasks.depth import DEPTH
from vlm3.tasks.object3d import OBJECT
from vlm3.tasks.pose import POSE


predict_app = typer.Typer(
    help="Ask a model about your own images (outputs in the original image's pixels and camera frame).",
    no_args_is_help=True,
)

_MODEL = typer.Option(..., "--model", help="Checkpoint folder / hub id, http://host:port or vllm:PATH.")
_FX = typer.Option(None, "--fx", help="Focal length in pixels (x) of the image (required unless --estimate-intrinsics).")
_FY = typer.Option(None, "--fy", help="Focal length in pixels (y); default fx.")
_CX = typer.Option(None, "--cx", help="Principal point x, OpenCV convention (top-left pixel centre = 0); default the image centre.")
_CY = typer.Option(None, "--cy", help="Principal point y, OpenCV convention; default the image centre.")
_FX2 = typer.Option(None, "--fx2", help="Image 2's focal length if it differs (then --fy2/--cx2/--cy2 too).")
_ESTIMATE = typer.Option(False, "--estimate-intrinsics", help="No calibration: guess a 60 degree horizontal field of view (see --hfov).")
_HFOV = typer.Option(HFOV_GUESS_DEG, "--hfov", help="Horizontal field of view in degrees guessed by --estimate-intrinsics.")
_META = typer.Option(None, "--meta", help="Read sample settings from this checkpoint folder / vlm3.json.")
_FOCAL = typer.Option(None, "--focal", help=f"Unified focal length in pixels (default: the model's vlm3.json, else {DEFAULT_FOCAL_PX:g}).")
_NCOORDS = typer.Option(None, "--n-coords", help=f"Text coordinate range N (default: the model's, else {DEFAULT_N_COORDS}).")
_BATCH = typer.Option(None, "--batch-size", min=1, help="Local: questions per batch; HTTP: requests in flight.")
_DEVICE = typer.Option("cpu", "--device", help="torch device of a local model.")
_API_KEY = typer.Option(None, "--api-key", envvar="VLM3_API_KEY", help="HTTP models: sent as 'Authorization: Bearer KEY' (env VLM3_API_KEY).")
_SERVED = typer.Option(None, "--served-model-name", help="HTTP models: the model name to request (default: the server's only model).")
_HTTP_TIMEOUT = typer.Option(None, HTTP_FLAGS["timeout"][0], help=HTTP_FLAGS["timeout"][1])
_HTTP_RETRIES = typer.Option(None, HTTP_FLAGS["max_retries"][0], help=HTTP_FLAGS["max_retries"][1])
_HTTP_TOTAL = typer.Option(None, HTTP_FLAGS["total_timeout"][0], help=HTTP_FLAGS["total_timeout"][1])
_HTTP_BYTES = typer.Option(None, HTTP_FLAGS["max_answer_bytes"][0], help=HTTP_FLAGS["max_answer_bytes"][1])
_PROFILE = typer.Option(
    None, "--profile",
    help="How to ask a model with no vlm3.json that is not a known checkpoint: vlm3, vlm3-release, depthlm or zero-shot (see vlm3.profiles).",
)
_MAX_NEW = typer.Option(None, "--max-new-tokens", min=1, help="Answer length cap (default: the profile's limit for the task).")


# --- helpers ------------------------------------------------------------------------------------


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _say(err, text: str) -> None:
    err.print(text, highlight=False, markup=False, soft_wrap=True)


def _say_truncated(err, n: int, total: int, what: str) -> None:
    """A warning that ``n`` of ``total`` answers failed because the token limit cut them off."""
    if n:
        _say(err, f"warning: {n} of {total} {what} failed: {TRUNCATED} (raise --max-new-tokens; see raw)")


@contextmanager
def _one_line_errors(err) -> Iterator[None]:
    """Bad input, unreadable files and backend failures: one ``Error:`` line, exit status 1."""
    try:
        yield
    except (ValueError, OSError, RuntimeError) as e:
        _say(err, f"Error: {e}")
        raise typer.Exit(1) from None


def warn_estimated(err, K, hfov: float) -> None:
    _say(err, f"warning: intrinsics guessed, not calibrated: fx = fy = {K.fx:.1f} px ({hfov:g} degree horizontal field of view), "
         "principal point at the image centre. Metric outputs (depths, distances, point clouds) scale with this guess.")


def warn_processor(err, note: dict[str, Any] | None) -> None:
    """The model's processor resizes the unified image: the effective focal length differs."""
    for im in (note or {}).get("images", []):
        if im["resized"]:
            _say(err, f"warning: {im['note']}")


def resolve_cli_intrinsics(width: int, height: int, fx: float | None, fy: float | None = None, cx: float | None = None, cy: float | None = None,
                           *, estimate: bool = False, hfov_deg: float = HFOV_GUESS_DEG, which: str = ""):
    """(intrinsics, estimated?) from command-line values (``cx, cy`` OpenCV; missing fy = fx, missing
    cx, cy = the image centre); ValueError when neither ``fx`` nor ``estimate`` is given, or both are."""
    from vlm3.geometry.camera import Intrinsics
    from vlm3.infer.predict import estimate_intrinsics

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
    cx_c, cy_c = (width - 1) / 2 if cx is None else cx, (height - 1) / 2 if cy is None else cy
    return Intrinsics.from_center_origin(fx, fx if fy is None else fy, cx_c, cy_c, width, height), False


def _pair_intrinsics(err, a, b, k1: tuple, k2: tuple, estimate: bool, hfov: float):
    """Intrinsics of both images; image 2 defaults to image 1's focal lengths."""
    (fx, fy, cx, cy), (fx2, fy2, cx2, cy2) = k1, k2
    K1, estimated = resolve_cli_intrinsics(a.shape[1], a.shape[0], fx, fy, cx, cy, estimate=estimate, hfov_deg=hfov)
    if fx2 is None and not estimated:
        fx2, fy2 = fx, (fy if fy2 is None else fy2)
    K2, _ = resolve_cli_intrinsics(b.shape[1], b.shape[0], fx2, fy2, cx2, cy2, estimate=estimate, hfov_deg=hfov, which="2")
    if estimated:
        warn_estimated(err, K1, hfov)
    return K1, K2, estimated


def parse_cli_points(values: Sequence[str], name: str = "--points"):
    """``["x,y", "x,y x,y", ...]`` -> (N, 2) floats (pairs separated by spaces or ';')."""
    import numpy as np

    pairs = []
    for item in " ".join(values).replace(";", " ").split():
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
    model: str, task: Any, *, meta: str | None = None, profile: str | None = None, batch_size: int | None = None, device: str = "cpu",
    dtype: str | None = None, api_key: str | None = None, served_model_name: str | None = None,
    http_timeout: float | None = None, http_retries: int | None = None, http_total_timeout: float | None = None,
    http_max_answer_bytes: int | None = None, **overrides: Any,
):
    """(backend, settings, where the model's settings were read): the model's ``vlm3.json`` (its
    folder, ``meta``, or what its server publishes), a released checkpoint's profile or
    ``--profile`` (:func:`vlm3.settings.settings_for_model`), then the command-line ``overrides``
    (None = unset), then the defaults."""
    from vlm3.models import backend
    from vlm3.profiles import model_ids
    from vlm3.settings import model_settings_for, served_settings, settings_for_model

    opened = backend.open_backend(model, batch_size, device=device, dtype=dtype, **backend.http_options(
        model, api_key=api_key, served_model_name=served_model_name, timeout=http_timeout, max_retries=http_retries,
        total_timeout=http_total_timeout, max_answer_bytes=http_max_answer_bytes,
    ))
    try:
        found = model_settings_for(model, meta) or served_settings(opened)
        base, _, source = settings_for_model(task, found, None, profile=profile, model_ids=model_ids(model, opened), model=model)
        settings = base.with_values(**{k: v for k, v in overrides.items() if v is not None})
    except Exception:
        opened.close()
        raise
    return opened, settings, found.path if found else source


def _write_json(folder: str | None, name: str, doc: dict) -> None:
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_text(json.dumps(doc, indent=1) + "\n")


# --- commands -----------------------------------------------------------------------------------


@predict_app.command(DEPTH.name)
def predict_depth_command(
    image: str = typer.Argument(..., help="Image file."),
    model: str = _MODEL,
    out: str = typer.Option(..., "--out", help="Output folder: points.json, points.ply, depth_map.png (grids)."),
    points: list[str] = typer.Option([], "--points", help="Pixels x,y (column,row; integer = pixel centre); repeat or space-separate."),
    grid: int | None = typer.Option(None, "--grid", min=1, help="Ask every STRIDE pixels: a depth map and a point cloud."),
    fx: float | None = _FX, fy: float | None = _FY, cx: float | None = _CX, cy: float | None = _CY,
    estimate_intrinsics: bool = _ESTIMATE, hfov: float = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL, n_coords: int | None = _NCOORDS,
    depth_type: str | None = typer.Option(None, "--depth-type", help="What the model answers: range or z (default: the model's, else range)."),
    batch_size: int | None = _BATCH,
    max_new_tokens: int | None = _MAX_NEW,
    profile: str | None = _PROFILE,
    device: str = _DEVICE,
    api_key: str | None = _API_KEY, served_model_name: str | None = _SERVED,
    http_timeout: float | None = _HTTP_TIMEOUT, http_retries: int | None = _HTTP_RETRIES,
    http_total_timeout: float | None = _HTTP_TOTAL, http_max_answer_bytes: int | None = _HTTP_BYTES,
) -> None:
    """Metric depth at pixels or on a grid, with a depth map and a coloured point cloud."""
    from rich.progress import Progress

    from vlm3.infer import predict as P

    err = _console()
    with _one_line_errors(err):
        img = P.load_image(image)
        K, estimated = resolve_cli_intrinsics(img.shape[1], img.shape[0], fx, fy, cx, cy, estimate=estimate_intrinsics, hfov_deg=hfov)
        pts = P.from_cli_pixels(parse_cli_points(points)) if points else None
        if pts is None and grid is None:
            raise ValueError("nothing to ask: give --points x,y ... or --grid STRIDE")
        if pts is not None and grid is not None:
            raise ValueError("give --points or --grid, not both")
        if depth_type not in (None, "range", "z"):
            raise ValueError(f"--depth-type {depth_type!r} must be range or z")
        if estimated:
            warn_estimated(err, K, hfov)
        backend, settings, source = open_for_predict(model, DEPTH, meta=meta, profile=profile, api_key=api_key, served_model_name=served_model_name, http_timeout=http_timeout, http_retries=http_retries, http_total_timeout=http_total_timeout, http_max_answer_bytes=http_max_answer_bytes, batch_size=batch_size, device=device, focal=focal, n_coords=n_coords, depth_type=depth_type)
        with Progress(console=err, transient=True) as bar:
            job = bar.add_task("asking", total=None)
            pred = P.predict_depth(backend, img, K, points=pts, grid=grid, settings=settings, max_new_tokens=max_new_tokens,
                                   progress=lambda done, total: bar.update(job, completed=done, total=total))
        warn_processor(err, pred.processor)
        paths = P.write_depth_outputs(pred, img, out, {"image": str(image), "model": model, "settings_from": source, "intrinsics_estimated": estimated})
    _say_truncated(err, sum(f == TRUNCATED for f in pred.failures), len(pred.depth), "depths")
    typer.echo(f"{int(pred.valid.sum())} of {len(pred.depth)} depths parsed ({pred.depth_type}, metres); wrote " + ", ".join(str(p) for p in paths.values()))


@predict_app.command(POSE.name)
def predict_pose_command(
    image1: str = typer.Argument(..., help="First image (camera 1)."),
    image2: str = typer.Argument(..., help="Second image (camera 2)."),
    model: str = _MODEL,
    out: str | None = typer.Option(None, "--out", help="Also write pose.json into this folder."),
    fx: float | None = _FX, fy: float | None = _FY, cx: float | None = _CX, cy: float | None = _CY,
    fx2: float | None = _FX2, fy2: float | None = typer.Option(None, "--fy2"), cx2: float | None = typer.Option(None, "--cx2"), cy2: float | None = typer.Option(None, "--cy2"),
    estimate_intrinsics: bool = _ESTIMATE, hfov: float = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL,
    max_new_tokens: int | None = _MAX_NEW,
    profile: str | None = _PROFILE,
    device: str = _DEVICE,
    api_key: str | None = _API_KEY, served_model_name: str | None = _SERVED,
    http_timeout: float | None = _HTTP_TIMEOUT, http_retries: int | None = _HTTP_RETRIES,
    http_total_timeout: float | None = _HTTP_TOTAL, http_max_answer_bytes: int | None = _HTTP_BYTES,
) -> None:
    """Relative camera pose T_cam2_from_cam1: R, t, yaw/pitch/roll, distance."""
    from vlm3.infer import predict as P

    err = _console()
    with _one_line_errors(err):
        a, b = P.load_image(image1), P.load_image(image2)
        K1, K2, estimated = _pair_intrinsics(err, a, b, (fx, fy, cx, cy), (fx2, fy2, cx2, cy2), estimate_intrinsics, hfov)
        backend, settings, _ = open_for_predict(model, POSE, meta=meta, profile=profile, api_key=api_key, served_model_name=served_model_name, http_timeout=http_timeout, http_retries=http_retries, http_total_timeout=http_total_timeout, http_max_answer_bytes=http_max_answer_bytes, device=device, focal=focal)
        result = P.predict_pose(backend, a, b, K1, K2, settings, max_new_tokens=max_new_tokens)
        warn_processor(err, result.processor)
        doc = {"image1": image1, "image2": image2, "model": model, "intrinsics_estimated": estimated, **result.to_dict()}
        _write_json(out, "pose.json", doc)
    typer.echo(json.dumps(doc, indent=1))
    if result.truncated:
        _say(err, f"warning: failed: {TRUNCATED} (raise --max-new-tokens; see raw)")
    elif not result.parsed:
        _say(err, "warning: the answer did not parse as a pose (see raw)")


@predict_app.command(CORRESPONDENCE.name)
def predict_match_command(
    image1: str = typer.Argument(..., help="First image (query pixels)."),
    image2: str = typer.Argument(..., help="Second image."),
    model: str = _MODEL,
    points: list[str] = typer.Option(..., "--points", help="Pixels x,y of image 1 (integer = pixel centre); repeat or space-separate."),
    out: str = typer.Option(..., "--out", help="Output folder: matches.json, matches.png."),
    fx: float | None = _FX, fy: float | None = _FY, cx: float | None = _CX, cy: float | None = _CY,
    fx2: float | None = _FX2, fy2: float | None = typer.Option(None, "--fy2"), cx2: float | None = typer.Option(None, "--cx2"), cy2: float | None = typer.Option(None, "--cy2"),
    estimate_intrinsics: bool = _ESTIMATE, hfov: float = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL, n_coords: int | None = _NCOORDS,
    batch_size: int | None = _BATCH,
    max_new_tokens: int | None = _MAX_NEW,
    profile: str | None = _PROFILE,
    device: str = _DEVICE,
    api_key: str | None = _API_KEY, served_model_name: str | None = _SERVED,
    http_timeout: float | None = _HTTP_TIMEOUT, http_retries: int | None = _HTTP_RETRIES,
    http_total_timeout: float | None = _HTTP_TOTAL, http_max_answer_bytes: int | None = _HTTP_BYTES,
) -> None:
    """Pixel correspondences: where each point of image 1 appears in image 2."""
    from vlm3.infer import predict as P

    err = _console()
    with _one_line_errors(err):
        a, b = P.load_image(image1), P.load_image(image2)
        K1, K2, estimated = _pair_intrinsics(err, a, b, (fx, fy, cx, cy), (fx2, fy2, cx2, cy2), estimate_intrinsics, hfov)
        pts = P.from_cli_pixels(parse_cli_points(points))
        backend, settings, _ = open_for_predict(model, CORRESPONDENCE, meta=meta, profile=profile, api_key=api_key, served_model_name=served_model_name, http_timeout=http_timeout, http_retries=http_retries, http_total_timeout=http_total_timeout, http_max_answer_bytes=http_max_answer_bytes, batch_size=batch_size, device=device, focal=focal, n_coords=n_coords)
        pred = P.predict_match(backend, a, b, pts, K1, K2, settings, max_new_tokens=max_new_tokens)
        warn_processor(err, pred.processor)
        rows = [{"x1": float(p[0]), "y1": float(p[1]), "x2": float(q[0]) if ok else None, "y2": float(q[1]) if ok else None, "raw": r, "parsed": bool(ok), "failure": why}
                for p, q, r, ok, why in zip(P.to_cli_pixels(pred.uv1), P.to_cli_pixels(pred.uv2), pred.raw, pred.parsed, pred.failures)]
        _write_json(out, "matches.json", {
            "image1": image1, "image2": image2, "model": model, "intrinsics_estimated": estimated,
            "pixel_convention": "x = column, y = row in pixels of each original image; integer (x, y) is the centre of that pixel (OpenCV)",
            "matches": rows,
        })
        P.plot_matches(pred, a, b, Path(out) / "matches.png")
    _say_truncated(err, sum(f == TRUNCATED for f in pred.failures), len(pred.uv1), "matches")
    typer.echo(f"{int(pred.parsed.sum())} of {len(pred.uv1)} matches parsed; wrote {Path(out) / 'matches.json'}, {Path(out) / 'matches.png'}")


@predict_app.command(OBJECT.name)
def predict_object_command(
    image: str = typer.Argument(..., help="Image file."),
    model: str = _MODEL,
    box: list[str] = typer.Option(..., "--box", help="x_min,y_min,x_max,y_max in pixels; repeat (A, B, ... in order)."),
    question: str | None = typer.Option(None, "--question", help="Free question naming the boxes {A}, {B}, ..."),
    ask: str | None = typer.Option(None, "--ask", help="A predicate (above, left, big, ...) or quantity (direct_distance, width, direction, ...)."),
    kind: str | None = typer.Option(None, "--kind", help="Parse a --question answer as qualitative, quantitative or direction."),
    out: str | None = typer.Option(None, "--out", help="Also write answers.json into this folder."),
    fx: float | None = _FX, fy: float | None = _FY, cx: float | None = _CX, cy: float | None = _CY,
    estimate_intrinsics: bool = _ESTIMATE, hfov: float = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL, n_coords: int | None = _NCOORDS,
    max_new_tokens: int | None = _MAX_NEW,
    profile: str | None = _PROFILE,
    device: str = _DEVICE,
    api_key: str | None = _API_KEY, served_model_name: str | None = _SERVED,
    http_timeout: float | None = _HTTP_TIMEOUT, http_retries: int | None = _HTTP_RETRIES,
    http_total_timeout: float | None = _HTTP_TOTAL, http_max_answer_bytes: int | None = _HTTP_BYTES,
) -> None:
    """Object-level 3D questions about boxed regions (relations, distances, sizes, directions)."""
    from vlm3.infer import predict as P

    err = _console()
    with _one_line_errors(err):
        img = P.load_image(image)
        K, estimated = resolve_cli_intrinsics(img.shape[1], img.shape[0], fx, fy, cx, cy, estimate=estimate_intrinsics, hfov_deg=hfov)
        boxes = [parse_cli_box(b) for b in box]
        if (question is None) == (ask is None):
            raise ValueError("give exactly one of --question TEXT or --ask PREDICATE")
        if ask is not None:
            P.ask_kind(ask)
        if estimated:
            warn_estimated(err, K, hfov)
        backend, settings, _ = open_for_predict(model, OBJECT, meta=meta, profile=profile, api_key=api_key, served_model_name=served_model_name, http_timeout=http_timeout, http_retries=http_retries, http_total_timeout=http_total_timeout, http_max_answer_bytes=http_max_answer_bytes, device=device, focal=focal, n_coords=n_coords)
        corner = [tuple(v + 0.5 for v in b) for b in boxes]  # OpenCV pixel centres -> corner-origin
        answers = P.predict_object(backend, img, K, corner, question=question, ask=ask, kind=kind, settings=settings, max_new_tokens=max_new_tokens)
        doc = {
            "image": image, "model": model, "intrinsics_estimated": estimated, "boxes": [list(b) for b in boxes],
            "answers": [{"question": a.question, "raw": a.raw, "kind": a.kind, "value": a.value, "failure": a.failure, "boxes": [chr(ord("A") + i) for i in a.boxes]} for a in answers],
        }
        _write_json(out, "answers.json", doc)
    typer.echo(json.dumps(doc, indent=1))
    _say_truncated(err, sum(a.truncated for a in answers), len(answers), "answers")


for _alias in CORRESPONDENCE.aliases:  # `vlm3 predict corr`
    predict_app.command(_alias, hidden=True)(predict_match_command)
