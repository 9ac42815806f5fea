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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

DepthType = Literal["z", "range"]
DEPTH_TYPES: tuple[str, ...] = ("z", "range")


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
