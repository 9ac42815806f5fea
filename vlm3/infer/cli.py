"""``vlm3 predict``: depth / pose / matches / object answers for your own images (``vlm3.infer.predict``).

Command-line pixels are OpenCV's (integer (x, y) = centre of the pixel in column x, row y; ``--cx
--cy`` as calibrations give them); the library's are corner-origin (+0.5). Bad input is one
``Error: ...`` line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperCommand

from vlm3.ask import TRUNCATED
from vlm3.geometry.camera import Intrinsics, IntrinsicsEstimate
from vlm3.infer.predict import HFOV_GUESS_DEG
from vlm3.models.openai_http import HTTP_FLAGS
from vlm3.settings import DEFAULT_FOCAL_PX, DEFAULT_N_COORDS
from vlm3.tasks.correspondence import CORRESPONDENCE
from vlm3.tasks.depth import DEPTH
from vlm3.tasks.object3d import OBJECT
from vlm3.tasks.pose import POSE
from vlm3.threads import THREADS_OPTION, use_threads


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
_ESTIMATE = typer.Option(False, "--estimate-intrinsics", help="No calibration: estimate from the image's EXIF focal length, else guess a 60 degree horizontal field of view (printed and recorded as estimated).")
_HFOV = typer.Option(None, "--hfov", help=f"With --estimate-intrinsics: guess this horizontal field of view in degrees instead of reading EXIF (default: EXIF focal, else {HFOV_GUESS_DEG:g}).")
_META = typer.Option(None, "--meta", help="Read sample settings from this checkpoint folder / vlm3.json.")
_FOCAL = typer.Option(None, "--focal", help=f"Unified focal length in pixels (default: the model's vlm3.json, else {DEFAULT_FOCAL_PX:g}).")
_NCOORDS = typer.Option(None, "--n-coords", help=f"Text coordinate range N (default: the model's, else {DEFAULT_N_COORDS}).")
_BATCH = typer.Option(None, "--batch-size", min=1, help="Local: questions per batch (default: chosen from free memory, at most 64); HTTP: requests in flight.")
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
_POINTS_HELP = "Pixels x,y (column,row; integer = pixel centre): --points 18,57 93,47, --points '18,57;93,47' or repeat --points."
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
    """Bad input, unreadable files and backend failures: one ``Error:`` line, exit status 1. EXIF
    ignored when loading an image (:class:`~vlm3.data.images.ExifWarning`): one ``warning:`` line."""
    from vlm3.data.images import ExifWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", ExifWarning)
        show, said = warnings.showwarning, set()

        def say_exif(message, category, *args, **kwargs) -> None:
            if not issubclass(category, ExifWarning):
                show(message, category, *args, **kwargs)
            elif str(message) not in said:  # the same image's problem, read twice, said once
                said.add(str(message))
                _say(err, f"warning: {message}")

        warnings.showwarning = say_exif
        try:
            yield
        except (ValueError, OSError, RuntimeError) as e:
            _say(err, f"Error: {e}")
            raise typer.Exit(1) from None


def warn_estimated(err, estimate: IntrinsicsEstimate, which: str = "") -> None:
    """Print how intrinsics were estimated (EXIF focal or field-of-view guess, and why): never silent."""
    _say(err, f"warning: {which}{estimate.message()}")


def estimate_fields(*estimates: IntrinsicsEstimate | None) -> dict[str, Any]:
    """Output-file fields: whether intrinsics were estimated and how (one entry per image; a list for pairs)."""
    found = [None if e is None else e.to_dict() for e in estimates]
    return {"intrinsics_estimated": any(e is not None for e in estimates), "intrinsics_estimate": found[0] if len(found) == 1 else found}


def warn_processor(err, note: dict[str, Any] | None) -> None:
    """The model's processor resizes the unified image: the effective focal length differs."""
    for im in (note or {}).get("images", []):
        if im["resized"]:
            _say(err, f"warning: {im['note']}")


def resolve_cli_intrinsics(width: int, height: int, fx: float | None, fy: float | None = None, cx: float | None = None, cy: float | None = None,
                           *, estimate: bool = False, hfov_deg: float | None = None, which: str = "",
                           image: str | Path | None = None) -> tuple[Intrinsics, IntrinsicsEstimate | None]:
    """(intrinsics, how they were estimated or None) from command-line values (``cx, cy`` OpenCV;
    missing fy = fx, missing cx, cy = the image centre), or with ``estimate`` an
    :class:`~vlm3.geometry.camera.IntrinsicsEstimate` from the EXIF focal of ``image`` (the file),
    else a field-of-view guess (``hfov_deg``, default 60; given: EXIF is not read). ``width, height``:
    the displayed image. ValueError when neither ``fx`` nor ``estimate`` is given, or both are."""
    from vlm3.geometry.camera import estimate_uncalibrated
    from vlm3.infer.predict import estimate_image_intrinsics

    if estimate and fx is not None:
        raise ValueError(f"give --fx{which} or --estimate-intrinsics, not both")
    if hfov_deg is not None and not estimate:
        raise ValueError(f"--hfov {hfov_deg:g} needs --estimate-intrinsics (it sets the guessed field of view)")
    if estimate:
        if any(v is not None for v in (fy, cx, cy)):
            raise ValueError("--fy/--cx/--cy need --fx; with --estimate-intrinsics the whole camera is guessed")
        found = estimate_uncalibrated(width, height, None, hfov_deg=hfov_deg) if image is None else estimate_image_intrinsics(image, hfov_deg=hfov_deg)
        if (found.K.width, found.K.height) != (width, height):
            raise ValueError(f"image {image} is {width}x{height} but its header says {found.K.width}x{found.K.height}")
        return found.K, found
    if fx is None:
        raise ValueError(
            f"intrinsics are required for metric answers: pass --fx{which} (focal length in pixels of this image; "
            "--fy, --cx, --cy default to fx and the image centre), or --estimate-intrinsics to estimate them "
            f"(EXIF focal length, else a {HFOV_GUESS_DEG:g} degree horizontal field of view guess)"
        )
    for name, value in (("fx", fx), ("fy", fy)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name}{which} = {value} must be a positive number of pixels")
    cx_c, cy_c = (width - 1) / 2 if cx is None else cx, (height - 1) / 2 if cy is None else cy
    return Intrinsics.from_center_origin(fx, fx if fy is None else fy, cx_c, cy_c, width, height), None


def _pair_intrinsics(err, a, b, k1: tuple, k2: tuple, estimate: bool, hfov: float | None, paths: tuple = (None, None)):
    """Intrinsics of both images and how each was estimated (None: given); image 2 defaults to image
    1's focal lengths; estimated ones come from each file's own EXIF (``paths``)."""
    (fx, fy, cx, cy), (fx2, fy2, cx2, cy2) = k1, k2
    K1, e1 = resolve_cli_intrinsics(a.shape[1], a.shape[0], fx, fy, cx, cy, estimate=estimate, hfov_deg=hfov, image=paths[0])
    if fx2 is None and e1 is None:
        fx2, fy2 = fx, (fy if fy2 is None else fy2)
    K2, e2 = resolve_cli_intrinsics(b.shape[1], b.shape[0], fx2, fy2, cx2, cy2, estimate=estimate, hfov_deg=hfov, which="2", image=paths[1])
    for i, e in enumerate((e1, e2)):
        if e is not None:
            warn_estimated(err, e, f"image {i + 1}: ")
    return K1, K2, (e1, e2)


def parse_cli_points(values: Sequence[str], name: str = "--points"):
    """``["x,y", "x,y x,y", "x,y;x,y", ...]`` -> (N, 2) floats.

    Pairs are separated by spaces or ``;`` (spaces around a pair's comma are allowed: ``"18, 57"``).
    A malformed or non-finite pair is a ValueError naming it; so are values holding no pair at all.
    """
    import numpy as np

    pairs = []
    text = re.sub(r"\s*,\s*", ",", " ".join(values).replace(";", " "))
    for item in text.split():
        parts = item.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError
        except ValueError:
            raise ValueError(f"{name} {item!r} must be x,y (pixel column, row), e.g. 320,240") from None
        pairs.append((x, y))
    if not pairs:
        raise ValueError(f"{name} {' '.join(values)!r} holds no x,y pair (pixel column, row), e.g. 320,240")
    return np.array(pairs, dtype=np.float64).reshape(-1, 2)


#: An argument that can only be pixel pairs (digits, signs, points, exponents, ',' ';' and spaces).
_POINTS_VALUE = re.compile(r"[-+]?[\d.][\d.eE+\-,;\s]*")


def gather_option_values(args: Sequence[str], option: str = "--points") -> list[str]:
    """``--points 18,57 93,47`` -> ``--points 18,57 --points 93,47``: the arguments right after an
    ``option``'s value that can only be more of its values join it (Click gives an option one value).

    An argument that could be anything else (a file name, another option, ``--``) ends the run.
    """
    out: list[str] = []
    rest = iter(args)
    taking = False
    for arg in rest:
        if arg == "--":
            out += [arg, *rest]
            break
        if taking and _POINTS_VALUE.fullmatch(arg):
            out += [option, arg]
            continue
        taking = False
        out.append(arg)
        if arg == option:
            value = next(rest, None)
            if value is not None:
                out.append(value)
                taking = True
        elif arg.startswith(option + "="):
            taking = True
    return out


class PointsCommand(TyperCommand):
    """A command whose ``--points`` also takes the pairs that follow it (``--points 18,57 93,47``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, gather_option_values(args))


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


@predict_app.command(DEPTH.name, cls=PointsCommand)
def predict_depth_command(
    image: str = typer.Argument(..., help="Image file."),
    model: str = _MODEL,
    out: str = typer.Option(..., "--out", help="Output folder: points.json, points.ply, depth_map.png (grids)."),
    points: list[str] = typer.Option([], "--points", help=_POINTS_HELP),
    grid: int | None = typer.Option(None, "--grid", min=1, help="Ask every STRIDE pixels: a depth map and a point cloud."),
    fx: float | None = _FX, fy: float | None = _FY, cx: float | None = _CX, cy: float | None = _CY,
    estimate_intrinsics: bool = _ESTIMATE, hfov: float | None = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL, n_coords: int | None = _NCOORDS,
    depth_type: str | None = typer.Option(None, "--depth-type", help="What the model answers: range or z (default: the model's, else range)."),
    batch_size: int | None = _BATCH,
    max_new_tokens: int | None = _MAX_NEW,
    profile: str | None = _PROFILE,
    device: str = _DEVICE,
    api_key: str | None = _API_KEY, served_model_name: str | None = _SERVED,
    http_timeout: float | None = _HTTP_TIMEOUT, http_retries: int | None = _HTTP_RETRIES,
    http_total_timeout: float | None = _HTTP_TOTAL, http_max_answer_bytes: int | None = _HTTP_BYTES,
    threads: int | None = THREADS_OPTION,
) -> None:
    """Metric depth at pixels or on a grid, with a depth map and a coloured point cloud."""
    from rich.progress import Progress

    from vlm3.infer import predict as P

    err = _console()
    use_threads(threads)
    with _one_line_errors(err):
        img = P.load_image(image)
        K, estimated = resolve_cli_intrinsics(img.shape[1], img.shape[0], fx, fy, cx, cy, estimate=estimate_intrinsics, hfov_deg=hfov, image=image)
        pts = P.from_cli_pixels(parse_cli_points(points)) if points else None
        if pts is None and grid is None:
            raise ValueError("nothing to ask: give --points x,y ... or --grid STRIDE")
        if pts is not None and grid is not None:
            raise ValueError("give --points or --grid, not both")
        if depth_type not in (None, "range", "z"):
            raise ValueError(f"--depth-type {depth_type!r} must be range or z")
        if estimated:
            warn_estimated(err, estimated)
        backend, settings, source = open_for_predict(model, DEPTH, meta=meta, profile=profile, api_key=api_key, served_model_name=served_model_name, http_timeout=http_timeout, http_retries=http_retries, http_total_timeout=http_total_timeout, http_max_answer_bytes=http_max_answer_bytes, batch_size=batch_size, device=device, focal=focal, n_coords=n_coords, depth_type=depth_type)
        with Progress(console=err, transient=True) as bar:
            job = bar.add_task("asking", total=None)
            pred = P.predict_depth(backend, img, K, points=pts, grid=grid, settings=settings, max_new_tokens=max_new_tokens,
                                   progress=lambda done, total: bar.update(job, completed=done, total=total))
        warn_processor(err, pred.processor)
        paths = P.write_depth_outputs(pred, img, out, {"image": str(image), "model": model, "settings_from": source, **estimate_fields(estimated)})
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
    estimate_intrinsics: bool = _ESTIMATE, hfov: float | None = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL,
    max_new_tokens: int | None = _MAX_NEW,
    profile: str | None = _PROFILE,
    device: str = _DEVICE,
    api_key: str | None = _API_KEY, served_model_name: str | None = _SERVED,
    http_timeout: float | None = _HTTP_TIMEOUT, http_retries: int | None = _HTTP_RETRIES,
    http_total_timeout: float | None = _HTTP_TOTAL, http_max_answer_bytes: int | None = _HTTP_BYTES,
    threads: int | None = THREADS_OPTION,
) -> None:
    """Relative camera pose T_cam2_from_cam1: R, t, yaw/pitch/roll, distance."""
    from vlm3.infer import predict as P

    err = _console()
    use_threads(threads)
    with _one_line_errors(err):
        a, b = P.load_image(image1), P.load_image(image2)
        K1, K2, estimated = _pair_intrinsics(err, a, b, (fx, fy, cx, cy), (fx2, fy2, cx2, cy2), estimate_intrinsics, hfov, (image1, image2))
        backend, settings, _ = open_for_predict(model, POSE, meta=meta, profile=profile, api_key=api_key, served_model_name=served_model_name, http_timeout=http_timeout, http_retries=http_retries, http_total_timeout=http_total_timeout, http_max_answer_bytes=http_max_answer_bytes, device=device, focal=focal)
        result = P.predict_pose(backend, a, b, K1, K2, settings, max_new_tokens=max_new_tokens)
        warn_processor(err, result.processor)
        doc = {"image1": image1, "image2": image2, "model": model, **estimate_fields(*estimated), **result.to_dict()}
        _write_json(out, "pose.json", doc)
    typer.echo(json.dumps(doc, indent=1))
    if result.truncated:
        _say(err, f"warning: failed: {TRUNCATED} (raise --max-new-tokens; see raw)")
    elif not result.parsed:
        _say(err, "warning: the answer did not parse as a pose (see raw)")


@predict_app.command(CORRESPONDENCE.name, cls=PointsCommand)
def predict_match_command(
    image1: str = typer.Argument(..., help="First image (query pixels)."),
    image2: str = typer.Argument(..., help="Second image."),
    model: str = _MODEL,
    points: list[str] = typer.Option(..., "--points", help="Pixels x,y of image 1 (integer = pixel centre): --points 18,57 93,47, --points '18,57;93,47' or repeat --points."),
    out: str = typer.Option(..., "--out", help="Output folder: matches.json, matches.png."),
    fx: float | None = _FX, fy: float | None = _FY, cx: float | None = _CX, cy: float | None = _CY,
    fx2: float | None = _FX2, fy2: float | None = typer.Option(None, "--fy2"), cx2: float | None = typer.Option(None, "--cx2"), cy2: float | None = typer.Option(None, "--cy2"),
    estimate_intrinsics: bool = _ESTIMATE, hfov: float | None = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL, n_coords: int | None = _NCOORDS,
    batch_size: int | None = _BATCH,
    max_new_tokens: int | None = _MAX_NEW,
    profile: str | None = _PROFILE,
    device: str = _DEVICE,
    api_key: str | None = _API_KEY, served_model_name: str | None = _SERVED,
    http_timeout: float | None = _HTTP_TIMEOUT, http_retries: int | None = _HTTP_RETRIES,
    http_total_timeout: float | None = _HTTP_TOTAL, http_max_answer_bytes: int | None = _HTTP_BYTES,
    threads: int | None = THREADS_OPTION,
) -> None:
    """Pixel correspondences: where each point of image 1 appears in image 2."""
    from vlm3.infer import predict as P

    err = _console()
    use_threads(threads)
    with _one_line_errors(err):
        a, b = P.load_image(image1), P.load_image(image2)
        K1, K2, estimated = _pair_intrinsics(err, a, b, (fx, fy, cx, cy), (fx2, fy2, cx2, cy2), estimate_intrinsics, hfov, (image1, image2))
        pts = P.from_cli_pixels(parse_cli_points(points))
        backend, settings, _ = open_for_predict(model, CORRESPONDENCE, meta=meta, profile=profile, api_key=api_key, served_model_name=served_model_name, http_timeout=http_timeout, http_retries=http_retries, http_total_timeout=http_total_timeout, http_max_answer_bytes=http_max_answer_bytes, batch_size=batch_size, device=device, focal=focal, n_coords=n_coords)
        pred = P.predict_match(backend, a, b, pts, K1, K2, settings, max_new_tokens=max_new_tokens)
        warn_processor(err, pred.processor)
        rows = [{"x1": float(p[0]), "y1": float(p[1]), "x2": float(q[0]) if ok else None, "y2": float(q[1]) if ok else None, "raw": r, "parsed": bool(ok), "failure": why}
                for p, q, r, ok, why in zip(P.to_cli_pixels(pred.uv1), P.to_cli_pixels(pred.uv2), pred.raw, pred.parsed, pred.failures)]
        _write_json(out, "matches.json", {
            "image1": image1, "image2": image2, "model": model, **estimate_fields(*estimated),
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
    estimate_intrinsics: bool = _ESTIMATE, hfov: float | None = _HFOV,
    meta: str | None = _META, focal: float | None = _FOCAL, n_coords: int | None = _NCOORDS,
    max_new_tokens: int | None = _MAX_NEW,
    profile: str | None = _PROFILE,
    device: str = _DEVICE,
    api_key: str | None = _API_KEY, served_model_name: str | None = _SERVED,
    http_timeout: float | None = _HTTP_TIMEOUT, http_retries: int | None = _HTTP_RETRIES,
    http_total_timeout: float | None = _HTTP_TOTAL, http_max_answer_bytes: int | None = _HTTP_BYTES,
    threads: int | None = THREADS_OPTION,
) -> None:
    """Object-level 3D questions about boxed regions (relations, distances, sizes, directions)."""
    from vlm3.infer import predict as P

    err = _console()
    use_threads(threads)
    with _one_line_errors(err):
        img = P.load_image(image)
        K, estimated = resolve_cli_intrinsics(img.shape[1], img.shape[0], fx, fy, cx, cy, estimate=estimate_intrinsics, hfov_deg=hfov, image=image)
        boxes = [parse_cli_box(b) for b in box]
        if (question is None) == (ask is None):
            raise ValueError("give exactly one of --question TEXT or --ask PREDICATE")
        if ask is not None:
            P.ask_kind(ask)
        if estimated:
            warn_estimated(err, estimated)
        backend, settings, _ = open_for_predict(model, OBJECT, meta=meta, profile=profile, api_key=api_key, served_model_name=served_model_name, http_timeout=http_timeout, http_retries=http_retries, http_total_timeout=http_total_timeout, http_max_answer_bytes=http_max_answer_bytes, device=device, focal=focal, n_coords=n_coords)
        corner = [tuple(v + 0.5 for v in b) for b in boxes]  # OpenCV pixel centres -> corner-origin
        answers = P.predict_object(backend, img, K, corner, question=question, ask=ask, kind=kind, settings=settings, max_new_tokens=max_new_tokens)
        doc = {
            "image": image, "model": model, **estimate_fields(estimated), "boxes": [list(b) for b in boxes],
            "answers": [{"question": a.question, "raw": a.raw, "kind": a.kind, "value": a.value, "failure": a.failure, "boxes": [chr(ord("A") + i) for i in a.boxes]} for a in answers],
        }
        _write_json(out, "answers.json", doc)
    typer.echo(json.dumps(doc, indent=1))
    _say_truncated(err, sum(a.truncated for a in answers), len(answers), "answers")


for _alias in CORRESPONDENCE.aliases:  # `vlm3 predict corr`
    predict_app.command(_alias, hidden=True, cls=PointsCommand)(predict_match_command)
