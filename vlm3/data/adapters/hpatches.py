"""HPatches sequences: planar scenes with exact homographies from image 1 to images 2..6.

Expected tree (``ROOT`` = the extracted ``hpatches-sequences-release`` folder)::

    ROOT/
      i_ajuntament/            # i_* = illumination change, v_* = viewpoint change
        1.ppm 2.ppm ... 6.ppm
        H_1_2 H_1_3 ... H_1_6  # text, 3 rows of 3 numbers: maps image-1 pixels to image-k pixels
      v_abstract/
        ...

Homography convention. The HPatches files use the pixel-centre origin of the original code (the
centre of the top-left pixel is (0, 0)): q_c ~ H p_c. vlm3 pixels are corner-origin
(p = p_c + 0.5), so the homography used here is H' = T(+0.5) @ H @ T(-0.5) with
T(a) = [[1, 0, a], [0, 1, a], [0, 0, 1]] (:func:`to_corner_origin`). Matches are exact: sampled
pixel centres of image 1 mapped by H', kept when the mapped point lies inside image k (and in
front of the plane's horizon, w > 0). ``covisibility`` is the share of image-1 pixels that map
inside image k.

Intrinsics. The source has no calibration and no poses. Pixel correspondence does not need metric
intrinsics, but focal-length unification does (it rescales each image by f_target / f), so each view
gets a placeholder: f = image diagonal in pixels (a ~53 degree diagonal field of view), principal
point at the image centre, and ``meta["intrinsics_estimated"] = True``. The records carry no
poses and ``metric_scale = False``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, Rejection, register
from vlm3.data.adapters.kit import image_size
from vlm3.data.records import Record
from vlm3.data.sampling import item_rng, resolve_count, sample_pixels
from vlm3.data.scenes import FrameError
from vlm3.data.validate import make_record
from vlm3.geometry.camera import Intrinsics

TARGETS = (2, 3, 4, 5, 6)


def _shift(a: float) -> np.ndarray:
    return np.array([[1.0, 0.0, a], [0.0, 1.0, a], [0.0, 0.0, 1.0]])


def to_corner_origin(H_center: np.ndarray) -> np.ndarray:
    """A homography between centre-origin pixels -> the same map between corner-origin pixels."""
    return _shift(0.5) @ np.asarray(H_center, dtype=np.float64) @ _shift(-0.5)


def apply_homography(H: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map (N, 2) pixels by H -> (mapped (N, 2), homogeneous w (N,)); w <= 0 means behind the horizon."""
    p = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    q = p @ H[:, :2].T + H[:, 2]
    w = q[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return q[:, :2] / w[:, None], w


def read_homography(path: Path) -> np.ndarray:
    """A 3x3 homography from a whitespace-separated text file; ValueError names the problem."""
    try:
        values = [float(v) for v in path.read_text().split()]
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path.name}: not a text file of numbers ({e})") from None
    if len(values) != 9:
        raise ValueError(f"{path.name}: {len(values)} numbers, expected 9 (3x3)")
    H = np.array(values).reshape(3, 3)
    if not np.all(np.isfinite(H)):
        raise ValueError(f"{path.name}: non-finite entries")
    if abs(np.linalg.det(H)) < 1e-12 * max(1.0, np.abs(H).max() ** 3):
        raise ValueError(f"{path.name}: singular homography")
    return H


def placeholder_intrinsics(width: int, height: int) -> Intrinsics:
    """Documented guess for uncalibrated images: f = diagonal, principal point at the centre."""
    f = math.hypot(width, height)
    return Intrinsics(f, f, width / 2.0, height / 2.0, width, height)


@register
class HPatchesAdapter(Adapter):
    """HPatches sequences -> pair records (1, k) with exact homography matches, no poses."""

    name: ClassVar[str] = "hpatches"
    description: ClassVar[str] = "HPatches sequences (planar scenes, exact homographies; illumination i_* and viewpoint v_*)"
    layout: ClassVar[str] = (
        "ROOT/<seq>/1.ppm ... 6.ppm\n"
        "ROOT/<seq>/H_1_2 ... H_1_6   (3x3 text, image 1 -> image k, pixel-centre origin)"
    )
    labels: ClassVar[tuple[str, ...]] = ("matches",)

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        self.n_points = resolve_count(self.options.points)

    def units(self) -> list[str]:
        """One unit per sequence folder (a folder holding 1.ppm or H_1_2)."""
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and ((d / "1.ppm").exists() or (d / "H_1_2").exists()))

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        seq = self.root / unit
        if not seq.is_dir():
            raise ValueError(f"{self.name}: no sequence folder {seq}")
        try:
            size1 = image_size(seq / "1.ppm")  # displayed size (EXIF orientation), pixel cap
        except FrameError as e:
            yield Rejection(f"{unit}/1.ppm", e.reason, e.detail)
            return
        K1 = placeholder_intrinsics(*size1)
        # Every pixel centre of image 1, raster order, for the covisibility mask.
        jj, ii = np.mgrid[0 : size1[1], 0 : size1[0]]
        centres = np.stack([ii.ravel() + 0.5, jj.ravel() + 0.5], axis=1)
        for k in TARGETS:
            yield self._pair(unit, seq, k, K1, centres)

    def _pair(self, unit: str, seq: Path, k: int, K1: Intrinsics, centres: np.ndarray) -> Record | Rejection:
        source = f"{unit}/H_1_{k}"
        image_k = seq / f"{k}.ppm"
        if not image_k.exists():
            return Rejection(f"{unit}/{k}.ppm", "missing_file", "image not found")
        if not (seq / f"H_1_{k}").is_file():
            return Rejection(source, "missing_file", "file not found")
        try:
            Kk = placeholder_intrinsics(*image_size(image_k))
        except FrameError as e:
            return Rejection(f"{unit}/{k}.ppm", e.reason, e.detail)
        try:
            H = to_corner_origin(read_homography(seq / f"H_1_{k}"))
        except ValueError as e:
            return Rejection(source, "bad_pose", str(e))
        mapped, w = apply_homography(H, centres)
        inside = (w > 0) & Kk.contains(mapped)
        if not inside.any():
            return Rejection(source, "no_labels", f"no pixel of image 1 maps inside image {k}")
        mask = inside.reshape(K1.height, K1.width)
        rng = item_rng(self.options.seed, f"{self.name}/{unit}/1_{k}")
        p0 = sample_pixels(mask, self.n_points, rng)
        p1, _ = apply_homography(H, p0)
        return make_record(
            source,
            id=f"{self.name}/{unit}/1_{k}",
            dataset=self.name,
            split=self.options.split,
            views=[{"image": f"{unit}/1.ppm", "intrinsics": K1.to_list()}, {"image": f"{unit}/{k}.ppm", "intrinsics": Kk.to_list()}],
            metric_scale=False,
            matches={"pixels0": p0.tolist(), "pixels1": p1.tolist()},
            covisibility=float(mask.mean()),
            meta={
                "source": source,
                "intrinsics_estimated": True,
                "sequence": unit,
                "change": {"i": "illumination", "v": "viewpoint"}.get(unit[:1], "unknown"),
                "H_corner_origin": " ".join(f"{v:.12g}" for v in H.ravel()),
            },
        )

    def manifest_info(self) -> dict:
        return {
            "source": "HPatches sequences release",
            "intrinsics": "placeholder: f = image diagonal, principal point at the centre (meta.intrinsics_estimated)",
            "homography_origin": "files: pixel-centre origin; matches: vlm3 corner origin",
        }
