"""Pinhole cameras: intrinsics, projection, back-projection, depth conventions.

Pixel convention (used everywhere in vlm3)
------------------------------------------
Continuous pixel coordinates (u, v): u = x = column, v = y = row, with the origin at the
**top-left corner of the top-left pixel**. The pixel with integer array index (row j, col i)
covers [i, i+1) x [j, j+1) and its centre is at (i + 0.5, j + 0.5). Intrinsics (fx, fy, cx, cy)
are expressed in the same convention, so resizing an image by a factor s maps u -> s * u exactly.
Calibrations made with OpenCV's pixel-centre origin (centre of the top-left pixel at (0, 0)) are
converted with :meth:`Intrinsics.from_center_origin` (adds 0.5 to cx and cy).

Camera axes: X right, Y down, Z forward (OpenCV).

Depth conventions
-----------------
- ``"z"``: z-depth, the coordinate along the optical axis (what most depth maps store).
- ``"range"``: Euclidean distance from the camera centre, sqrt(X^2 + Y^2 + Z^2). The VLM3 prompt
  "how far is the pixel ... from the camera" asks for range.

Uncalibrated images
-------------------
:func:`estimate_uncalibrated` gives an ESTIMATE (square pixels, principal point at the image
centre), never presented as a calibration: the EXIF focal length when the image has a usable one,
else a field-of-view guess (:data:`HFOV_GUESS_DEG`). Sizes are those of the DISPLAYED image (EXIF
orientation applied, see :mod:`vlm3.data.images`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from vlm3.data.images import ImageExif

DepthType = Literal["z", "range"]
DEPTH_TYPES: tuple[str, ...] = ("z", "range")

HFOV_GUESS_DEG = 60.0
"""Horizontal field of view (degrees) guessed for an image with no calibration and no usable EXIF focal."""
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)
"""Diagonal of a 36 x 24 mm film frame (43.27 mm): the reference of 35 mm-equivalent focal lengths."""
FOCAL_PLANE_UNIT_MM: dict[int, float] = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
"""EXIF FocalPlaneResolutionUnit -> millimetres: 2 inch (the EXIF default when absent), 3 cm, 4 mm, 5 um."""
EstimateSource = Literal["exif_35mm", "exif_focal_plane", "fov_guess"]


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels (corner-origin convention, see module doc) plus image size."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"Intrinsics.{name} must be finite, got {value!r}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"Intrinsics focal lengths must be > 0, got fx={self.fx}, fy={self.fy}")
        if int(self.width) != self.width or int(self.height) != self.height or self.width <= 0 or self.height <= 0:
            raise ValueError(f"Intrinsics image size must be positive integers, got {self.width}x{self.height}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def from_matrix(cls, K: np.ndarray, width: int, height: int) -> "Intrinsics":
        """From a 3x3 matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] (skew must be 0)."""
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"K must be 3x3, got shape {K.shape}")
        if abs(K[0, 1]) > 1e-9:
            raise ValueError(f"skewed intrinsics are not supported (K[0,1] = {K[0, 1]})")
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), width, height)

    @classmethod
    def from_list(cls, values: list[float] | tuple[float, ...]) -> "Intrinsics":
        """From ``[fx, fy, cx, cy, width, height]`` (DepthLM's layout)."""
        if len(values) != 6:
            raise ValueError(f"intrinsics list must be [fx, fy, cx, cy, width, height], got {values!r}")
        fx, fy, cx, cy, w, h = values
        return cls(float(fx), float(fy), float(cx), float(cy), int(w), int(h))

    @classmethod
    def from_center_origin(cls, fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> "Intrinsics":
        """From a calibration whose origin is the centre of the top-left pixel (OpenCV style)."""
        return cls(fx, fy, cx + 0.5, cy + 0.5, width, height)

    # --- views ----------------------------------------------------------------------------------
    @property
    def K(self) -> np.ndarray:
        """3x3 calibration matrix (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_list(self) -> list[float]:
        return [self.fx, self.fy, self.cx, self.cy, self.width, self.height]

    def scaled(self, sx: float, sy: float | None = None, width: int | None = None, height: int | None = None) -> "Intrinsics":
        """Intrinsics after scaling pixel coordinates by (sx, sy): u' = sx * u, v' = sy * v."""
        sy = sx if sy is None else sy
        return replace(
            self,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=self.cx * sx,
            cy=self.cy * sy,
            width=round(self.width * sx) if width is None else width,
            height=round(self.height * sy) if height is None else height,
        )

    def contains(self, uv: np.ndarray) -> np.ndarray:
        """Boolean mask: which (u, v) rows lie inside the image, 0 <= u < width, 0 <= v < height."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        return (uv[:, 0] >= 0) & (uv[:, 0] < self.width) & (uv[:, 1] >= 0) & (uv[:, 1] < self.height)

    def fov_deg(self) -> tuple[float, float]:
        """Horizontal and vertical field of view in degrees."""
        return (
            math.degrees(2 * math.atan(self.width / (2 * self.fx))),
            math.degrees(2 * math.atan(self.height / (2 * self.fy))),
        )


def pixel_centers(indices_xy: np.ndarray) -> np.ndarray:
    """Integer array indices (col, row) -> continuous coordinates of their centres (+0.5)."""
    return np.asarray(indices_xy, dtype=np.float64) + 0.5


def pixel_indices(uv: np.ndarray) -> np.ndarray:
    """Continuous coordinates -> integer array indices (col, row) of the pixels containing them."""
    return np.floor(np.asarray(uv, dtype=np.float64)).astype(np.int64)


def rays(K: Intrinsics, uv: np.ndarray) -> np.ndarray:
    """Camera-frame ray directions with z = 1 for pixels uv (N, 2) -> (N, 3)."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    x = (uv[:, 0] - K.cx) / K.fx
    y = (uv[:, 1] - K.cy) / K.fy
    return np.stack([x, y, np.ones_like(x)], axis=1)


def z_to_range(K: Intrinsics, uv: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Convert z-depth at pixels uv to Euclidean range from the camera centre (metres)."""
    return np.asarray(z, dtype=np.float64) * np.linalg.norm(rays(K, uv), axis=1)


def range_to_z(K: Intrinsics, uv: np.ndarray, rng: np.ndarray) -> np.ndarray:
    """Convert Euclidean range at pixels uv to z-depth (metres)."""
    return np.asarray(rng, dtype=np.float64) / np.linalg.norm(rays(K, uv), axis=1)


def convert_depth(K: Intrinsics, uv: np.ndarray, depth: np.ndarray, src: DepthType, dst: DepthType) -> np.ndarray:
    """Convert depth values between the ``"z"`` and ``"range"`` conventions."""
    for name, value in (("src", src), ("dst", dst)):
        if value not in DEPTH_TYPES:
            raise ValueError(f"depth convention {name}={value!r} must be one of {DEPTH_TYPES}")
    if src == dst:
        return np.asarray(depth, dtype=np.float64).copy()
    return z_to_range(K, uv, depth) if src == "z" else range_to_z(K, uv, depth)


def backproject(K: Intrinsics, uv: np.ndarray, depth: np.ndarray, depth_type: DepthType = "z") -> np.ndarray:
    """Pixels uv (N, 2) with depth (N,) of the given convention -> camera-frame points (N, 3), metres."""
    if depth_type not in DEPTH_TYPES:
        raise ValueError(f"depth_type={depth_type!r} must be one of {DEPTH_TYPES}")
    r = rays(K, uv)
    depth = np.asarray(depth, dtype=np.float64).reshape(-1)
    if depth_type == "range":
        depth = depth / np.linalg.norm(r, axis=1)
    return r * depth[:, None]


def project(K: Intrinsics, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points (N, 3) -> (pixels uv (N, 2), z-depth (N,)). Points with z <= 0 give NaN pixels."""
    p = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(z > 0, K.fx * p[:, 0] / z + K.cx, np.nan)
        v = np.where(z > 0, K.fy * p[:, 1] / z + K.cy, np.nan)
    return np.stack([u, v], axis=1), z


def depth_map_to_points(K: Intrinsics, depth: np.ndarray, depth_type: DepthType = "z") -> np.ndarray:
    """Dense depth map (H, W) -> camera-frame points (H, W, 3) at pixel centres."""
    h, w = depth.shape
    if (w, h) != (K.width, K.height):
        raise ValueError(f"depth map is {w}x{h} but intrinsics describe {K.width}x{K.height}")
    jj, ii = np.mgrid[0:h, 0:w]
    uv = np.stack([ii.ravel() + 0.5, jj.ravel() + 0.5], axis=1)
    return backproject(K, uv, depth.ravel(), depth_type).reshape(h, w, 3)


# --- uncalibrated images ------------------------------------------------------------------------


def intrinsics_from_hfov(width: int, height: int, hfov_deg: float = HFOV_GUESS_DEG) -> Intrinsics:
    """Square pixels with a ``hfov_deg`` horizontal field of view, principal point at the image
    centre: fx = fy = (W / 2) / tan(hfov / 2) pixels. ValueError outside (1, 179) degrees."""
    if not 1.0 < hfov_deg < 179.0:
        raise ValueError(f"horizontal field of view must be in (1, 179) degrees, got {hfov_deg}")
    f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return Intrinsics(f, f, width / 2, height / 2, width, height)


def focal_px_from_35mm(focal_35mm: float, width: int, height: int) -> float:
    """Focal length in pixels from a 35 mm-equivalent focal length (mm), by its definition on the
    DIAGONAL: the image's diagonal sees the angle a 36 x 24 mm frame's diagonal (43.27 mm) sees at
    ``focal_35mm``, so f_px = f35 * sqrt(W^2 + H^2) / sqrt(36^2 + 24^2), W x H the displayed image in pixels."""
    return focal_35mm * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM


@dataclass(frozen=True)
class IntrinsicsEstimate:
    """Intrinsics estimated for an uncalibrated image, and how.

    ``source``: "exif_35mm" (EXIF FocalLengthIn35mmFilm), "exif_focal_plane" (EXIF FocalLength
    with FocalPlaneXResolution / FocalPlaneResolutionUnit) or "fov_guess" (a horizontal field of
    view); ``basis``: the values used, in words (e.g. "EXIF FocalLengthIn35mmFilm=26 mm");
    ``fallback``: for "fov_guess", why no EXIF focal was used (None when a field of view was asked for)."""

    K: Intrinsics
    source: EstimateSource
    basis: str
    fallback: str | None = None

    def message(self) -> str:
        """One line for the user: the estimate, its basis and that it is not a calibration."""
        K, why = self.K, f" ({self.fallback})" if self.fallback else ""
        if self.source == "fov_guess":
            head = f"intrinsics guessed, not calibrated: fx = fy = {K.fx:.1f} px ({self.basis}){why}"
        else:
            head = f"intrinsics estimated from {self.basis}: fx=fy={K.fx:.1f} px, not calibrated"
        return head + ", principal point at the image centre. Metric outputs (depths, distances, point clouds) scale with this estimate."

    def to_dict(self) -> dict[str, Any]:
        """What output files record: source, basis, fallback reason and the intrinsics (OpenCV cx, cy)."""
        K = self.K
        return {"source": self.source, "basis": self.basis, "fallback": self.fallback,
                "fx": K.fx, "fy": K.fy, "cx": K.cx - 0.5, "cy": K.cy - 0.5, "width": K.width, "height": K.height}


def estimate_uncalibrated(width: int, height: int, exif: ImageExif | None = None, *, hfov_deg: float | None = None) -> IntrinsicsEstimate:
    """Intrinsics ESTIMATE for an uncalibrated ``width`` x ``height`` image (displayed pixels).

    Given ``hfov_deg``: that field of view, EXIF not used. Otherwise, from ``exif``
    (:func:`vlm3.data.images.read_exif` of the file), in order:

    1. FocalLengthIn35mmFilm (mm) by :func:`focal_px_from_35mm` (diagonal definition; valid for a
       resized image too);
    2. FocalLength (mm) x FocalPlaneXResolution (sensor pixels per FocalPlaneResolutionUnit, default
       inch) / unit (mm), i.e. sensor pixels per mm; FocalPlaneYResolution for the displayed x of
       orientations 5-8; scaled by ``width`` / the file's displayed width when the image was resized
       since. This assumes the file has the resolution the camera recorded;
    3. a :data:`HFOV_GUESS_DEG` field-of-view guess, with ``fallback`` saying why 1 and 2 were not usable
       (absent, zero, not a number, a unit that is not a length, or a horizontal field of view
       outside (1, 179) degrees).

    Square pixels (fx = fy) and the principal point at the image centre in every case.
    """
    if hfov_deg is not None:
        return IntrinsicsEstimate(intrinsics_from_hfov(width, height, hfov_deg), "fov_guess", f"{hfov_deg:g} degree horizontal field of view")
    reasons: list[str] = []
    if exif is None:
        reasons.append("no EXIF read")
    else:
        reasons += exif.problems
        found = _exif_focal(width, height, exif, reasons)
        if found is not None:
            return found
    return IntrinsicsEstimate(intrinsics_from_hfov(width, height), "fov_guess", f"{HFOV_GUESS_DEG:g} degree horizontal field of view",
                              "; ".join(reasons) or "no EXIF focal length")


def _exif_focal(width: int, height: int, exif: ImageExif, reasons: list[str]) -> IntrinsicsEstimate | None:
    """The EXIF-based estimate (steps 1-2 of :func:`estimate_uncalibrated`), or None with ``reasons``."""
    f35 = exif.focal_length_35mm
    if f35 is not None:
        basis = f"EXIF FocalLengthIn35mmFilm={f35:g} mm"
        if not (math.isfinite(f35) and f35 > 0):
            reasons.append(f"{basis} is not a focal length (0 means unknown)" if f35 == 0 else f"{basis} is not a positive number")
        else:
            f = focal_px_from_35mm(f35, width, height)
            if _plausible(f, width, basis, reasons):
                return IntrinsicsEstimate(Intrinsics(f, f, width / 2, height / 2, width, height), "exif_35mm", basis + " (35 mm-equivalent on the image diagonal)")
    fmm = exif.focal_length_mm
    if fmm is None:
        if f35 is None:
            reasons.append("no EXIF focal length")
        return None
    basis = f"EXIF FocalLength={fmm:g} mm"
    if not (math.isfinite(fmm) and fmm > 0):
        reasons.append(f"{basis} is not a positive focal length")
        return None
    turned = exif.orientation >= 5  # displayed x runs along the stored raster's y
    res = exif.focal_plane_y_resolution if turned and exif.focal_plane_y_resolution is not None else exif.focal_plane_x_resolution
    res_name = "FocalPlaneYResolution" if turned and exif.focal_plane_y_resolution is not None else "FocalPlaneXResolution"
    if res is None:
        reasons.append(f"{basis} but no {res_name} (sensor size unknown)")
        return None
    unit = 2 if exif.focal_plane_resolution_unit is None else exif.focal_plane_resolution_unit
    basis += f", {res_name}={res:g} per {({2: 'inch', 3: 'cm', 4: 'mm', 5: 'um'}).get(unit, f'unit {unit:g}')}"
    if not (math.isfinite(res) and res > 0):
        reasons.append(f"{basis}: the resolution is not a positive number")
        return None
    if unit not in FOCAL_PLANE_UNIT_MM:
        reasons.append(f"{basis}: FocalPlaneResolutionUnit={unit:g} is not a length unit (2 inch, 3 cm, 4 mm, 5 um)")
        return None
    f = fmm * res / FOCAL_PLANE_UNIT_MM[unit]
    if width != exif.size[0]:
        f *= width / exif.size[0]
        basis += f", scaled by {width}/{exif.size[0]} px"
    if not _plausible(f, width, basis, reasons):
        return None
    return IntrinsicsEstimate(Intrinsics(f, f, width / 2, height / 2, width, height), "exif_focal_plane", basis)


def _plausible(f: float, width: int, basis: str, reasons: list[str]) -> bool:
    """A focal length in pixels whose horizontal field of view is in (1, 179) degrees."""
    hfov = math.degrees(2 * math.atan(width / (2 * f))) if math.isfinite(f) and f > 0 else math.nan
    if not 1.0 < hfov < 179.0:
        reasons.append(f"{basis} gives fx = {f:g} px, a {hfov:.3g} degree horizontal field of view (outside 1..179)")
        return False
    return True
