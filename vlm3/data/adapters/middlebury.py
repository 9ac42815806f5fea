"""Middlebury 2014 stereo: rectified pairs with dense ground-truth disparity.

Expected tree (``ROOT`` holds one folder per scene, as in the scenes2014 zips)::

    ROOT/
      Motorcycle-perfect/
        im0.png        # left image (view 0)
        im1.png        # right image (view 1)
        disp0.pfm      # left disparity, pixels; inf = unknown
        calib.txt      # cam0=[f 0 cx0; 0 f cy; 0 0 1], cam1=[...], doffs, baseline (mm), width, height, ...
      Adirondack-perfect/
        ...

Conventions.
- Disparity d (PFM of the left image): the left pixel x0 matches the right pixel x1 = x0 - d on the
  same row (both images rectified). Matches in corner-origin pixels: (i + 0.5, j + 0.5) ->
  (i + 0.5 - d, j + 0.5); kept when inside the right image.
- Depth: z = baseline * f / (d + doffs), with baseline in mm, so z_m = z / 1000 (z-depth along the
  optical axis). doffs = cx1 - cx0 is the principal-point offset. Non-finite disparities and
  d + doffs <= 0 are excluded.
- Intrinsics: cam0/cam1 matrices, taken in the OpenCV convention (centre of the top-left pixel at
  (0, 0)) and converted with ``Intrinsics.from_center_origin``. doffs and disparities are
  differences and do not depend on the origin.
- Poses: world = camera 0. The cameras are rectified (same orientation); camera 1 sits baseline
  metres along +X (right) of camera 0, so T_cam0_from_world = I and
  T_cam1_from_world = [[1, 0, 0, -b], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]] (b in metres).
- Only the "-perfect" scenes are exactly rectified; "-imperfect" ones keep a residual vertical
  disparity (``dyavg``/``dymax`` in calib.txt, copied to ``meta["dymax"]``), so their matches are
  off by up to dymax pixels in y.

Records per scene: ``<scene>/depth`` (view 0 with depth labels) and ``<scene>/pair01`` (views 0, 1
with poses and matches). The pair's ``covisibility`` counts left pixels with known disparity whose
partner is inside the right image (a lower bound: pixels without ground truth count as unseen).
PFM files are read with :func:`read_pfm` (rows stored bottom to top; negative scale = little-endian).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, Rejection, register
from vlm3.data.adapters.kit import image_size
from vlm3.data.records import Record
from vlm3.data.sampling import item_rng, resolve_count, sample_pixels, values_at
from vlm3.data.scenes import FrameError
from vlm3.data.validate import make_record
from vlm3.geometry.camera import Intrinsics
from vlm3.geometry.pose import make_T

MISSING_REASON = {"im0.png": "missing_file", "im1.png": "missing_file", "disp0.pfm": "missing_file", "calib.txt": "missing_file"}

# --- PFM ------------------------------------------------------------------------------------------


def _header_token(f: BinaryIO, path: Path, what: str) -> bytes:
    line = f.readline()
    if not line:
        raise ValueError(f"{path}: truncated PFM header (missing {what})")
    return line.strip()


def read_pfm(path: str | Path) -> np.ndarray:
    """Read a PFM image -> float32 (H, W) for "Pf" or (H, W, 3) for "PF", rows top to bottom."""
    path = Path(path)
    with open(path, "rb") as f:
        kind = _header_token(f, path, "type")
        if kind not in (b"PF", b"Pf"):
            raise ValueError(f"{path}: not a PFM file (header {kind[:10]!r}, expected 'PF' or 'Pf')")
        dims = _header_token(f, path, "size").split()
        scale_tok = _header_token(f, path, "scale")
        try:
            width, height = (int(v) for v in dims)
            scale = float(scale_tok)
        except ValueError:
            raise ValueError(f"{path}: bad PFM header size {dims!r} / scale {scale_tok!r}") from None
        if width <= 0 or height <= 0 or scale == 0:
            raise ValueError(f"{path}: bad PFM header: size {width}x{height}, scale {scale}")
        channels = 3 if kind == b"PF" else 1
        dtype = np.dtype("<f4" if scale < 0 else ">f4")  # the sign of the scale gives the byte order
        count = width * height * channels
        data = np.frombuffer(f.read(count * 4), dtype=dtype)
    if data.size != count:
        raise ValueError(f"{path}: PFM data has {data.size} values, header says {width}x{height}x{channels}")
    shape = (height, width, 3) if channels == 3 else (height, width)
    return np.flipud(data.reshape(shape)).astype(np.float32)  # stored bottom row first


# --- calib.txt ------------------------------------------------------------------------------------

_MATRIX = re.compile(r"^\[(.*)\]$")


def read_calib(path: str | Path) -> dict[str, object]:
    """Parse a Middlebury 2014 ``calib.txt``: cam0/cam1 -> 3x3 arrays, other keys -> floats."""
    path = Path(path)
    out: dict[str, object] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}:{lineno}: expected 'key=value', got {line!r}")
        key, value = key.strip(), value.strip()
        try:
            m = _MATRIX.match(value)
            if m:
                rows = [[float(v) for v in row.split()] for row in m.group(1).split(";")]
                out[key] = np.array(rows, dtype=np.float64)
            else:
                out[key] = float(value)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: bad value for {key!r}: {value!r}") from None
    for key in ("cam0", "cam1", "doffs", "baseline", "width", "height"):
        if key not in out:
            raise ValueError(f"{path}: missing '{key}'")
    for key in ("cam0", "cam1"):
        if np.shape(out[key]) != (3, 3):
            raise ValueError(f"{path}: {key} must be a 3x3 matrix, got shape {np.shape(out[key])}")
    if not out["baseline"] > 0:  # type: ignore[operator]
        raise ValueError(f"{path}: baseline must be > 0 mm, got {out['baseline']}")
    return out


def stereo_poses(baseline_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(T_cam0_from_world, T_cam1_from_world) with world = camera 0 and camera 1 at +baseline along X."""
    return np.eye(4), make_T(np.eye(3), [-baseline_m, 0.0, 0.0])


def disparity_to_depth(disp: np.ndarray, f: float, baseline_mm: float, doffs: float) -> np.ndarray:
    """z-depth in metres from disparity in pixels: baseline * f / (d + doffs) / 1000; NaN where invalid."""
    d = np.asarray(disp, dtype=np.float64) + doffs
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(np.isfinite(d) & (d > 0), baseline_mm * f / d / 1000.0, np.nan)
    return z


@register
class MiddleburyAdapter(Adapter):
    """Middlebury 2014 stereo scenes -> a depth record of view 0 and a posed pair record with matches."""

    name: ClassVar[str] = "middlebury"
    description: ClassVar[str] = "Middlebury 2014 stereo (rectified pairs, dense GT disparity; z-depth in metres, stereo matches)"
    layout: ClassVar[str] = "ROOT/<scene>/im0.png, im1.png, disp0.pfm, calib.txt  (Middlebury 2014 scene folders)"
    labels: ClassVar[tuple[str, ...]] = ("depth", "poses", "matches")

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        self.n_points = resolve_count(self.options.points)

    def units(self) -> list[str]:
        """One unit per scene folder (a folder holding calib.txt or im0.png)."""
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and ((d / "calib.txt").exists() or (d / "im0.png").exists()))

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        scene = self.root / unit
        if not scene.is_dir():
            raise ValueError(f"{self.name}: no scene folder {scene}")
        for fname in ("im0.png", "im1.png", "disp0.pfm", "calib.txt"):
            if not (scene / fname).is_file():
                yield Rejection(f"{unit}/{fname}", MISSING_REASON[fname], "file not found")
                return
        try:
            calib = read_calib(scene / "calib.txt")
        except (ValueError, UnicodeDecodeError) as e:
            yield Rejection(f"{unit}/calib.txt", "bad_calibration", str(e))
            return
        try:
            disp = read_pfm(scene / "disp0.pfm")
        except ValueError as e:
            yield Rejection(f"{unit}/disp0.pfm", "unreadable_file", str(e))
            return
        if disp.ndim != 2:
            yield Rejection(f"{unit}/disp0.pfm", "unreadable_file", f"expected a single-channel PFM, got shape {disp.shape}")
            return
        width, height = int(calib["width"]), int(calib["height"])  # type: ignore[call-overload]
        sizes = {}
        for fname in ("im0.png", "im1.png"):
            try:
                sizes[fname] = image_size(scene / fname)  # displayed size (EXIF orientation), pixel cap
            except FrameError as e:
                yield Rejection(f"{unit}/{fname}", e.reason, e.detail)
                return
        for what, size in (("im0.png", sizes["im0.png"]), ("im1.png", sizes["im1.png"]), ("disp0.pfm", disp.shape[::-1])):
            if tuple(size) != (width, height):
                yield Rejection(f"{unit}/{what}", "size_mismatch", f"{size[0]}x{size[1]}, calib.txt says {width}x{height}")
                return
        cam0, cam1 = calib["cam0"], calib["cam1"]
        try:
            K0, K1 = (Intrinsics.from_center_origin(c[0, 0], c[1, 1], c[0, 2], c[1, 2], width, height) for c in (cam0, cam1))  # type: ignore[index]
        except ValueError as e:
            yield Rejection(f"{unit}/calib.txt", "bad_calibration", str(e))
            return
        baseline_mm, doffs = float(calib["baseline"]), float(calib["doffs"])  # type: ignore[arg-type]
        depth = disparity_to_depth(disp, K0.fx, baseline_mm, doffs)
        valid = np.isfinite(depth)
        if not valid.any():
            yield Rejection(f"{unit}/disp0.pfm", "no_valid_depth", "no finite disparity with d + doffs > 0")
            return
        T0, T1 = stereo_poses(baseline_mm / 1000.0)
        meta = {"source": unit, "scene": unit, "baseline_mm": baseline_mm, "doffs": doffs, "dymax": float(calib.get("dymax", 0.0))}  # type: ignore[arg-type]
        view0 = {"image": f"{unit}/im0.png", "intrinsics": K0.to_list(), "T_cam_from_world": T0.tolist()}
        view1 = {"image": f"{unit}/im1.png", "intrinsics": K1.to_list(), "T_cam_from_world": T1.tolist()}

        px = sample_pixels(valid, self.n_points, item_rng(self.options.seed, f"{self.name}/{unit}/depth"))
        yield make_record(
            unit,
            id=f"{self.name}/{unit}/depth",
            dataset=self.name,
            split=self.options.split,
            views=[view0],
            depth={"pixels": px.tolist(), "depth": values_at(depth, px).tolist(), "depth_type": "z"},
            meta=meta,
        )

        # A left pixel matches when its partner x0 - d lies inside the right image.
        with np.errstate(invalid="ignore"):
            x1 = np.arange(width)[None, :] + 0.5 - disp
            matchable = valid & (x1 >= 0) & (x1 < width)
        if not matchable.any():
            yield Rejection(f"{unit}/disp0.pfm", "no_labels", "no left pixel maps inside the right image")
            return
        p0 = sample_pixels(matchable, self.n_points, item_rng(self.options.seed, f"{self.name}/{unit}/pair01"))
        p1 = p0.copy()
        p1[:, 0] -= values_at(disp, p0)
        yield make_record(
            unit,
            id=f"{self.name}/{unit}/pair01",
            dataset=self.name,
            split=self.options.split,
            views=[view0, view1],
            matches={"pixels0": p0.tolist(), "pixels1": p1.tolist()},
            covisibility=float(matchable.mean()),
            meta=meta,
        )

    def manifest_info(self) -> dict:
        return {
            "source": "Middlebury 2014 stereo scenes",
            "depth_type": "z",
            "depth_units": "m",
            "poses": "world = cam0; cam1 at +baseline along cam0 X",
            "matches": "x1 = x0 - disp0, same row",
        }
