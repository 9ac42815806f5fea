"""Covisibility and ground-truth matches of posed views.

Conventions (see ``vlm3.geometry.camera`` and ``vlm3.geometry.pose``): continuous corner-origin
pixels (x = column, y = row; the centre of array index (j, i) is (i + 0.5, j + 0.5)); camera axes
X right, Y down, Z forward; poses are camera-from-world 4x4 matrices; depth maps hold z-depth
(metres, or SfM units for non-metric datasets); a depth <= 0 or non-finite is invalid.

On a :class:`DepthFrame` (a posed z-depth map on a pinhole pixel grid), :func:`covisibility`
back-projects the valid pixels of view A (a subsampled grid), moves them with
``T_camB_from_camA``, projects them into B and counts those inside B whose depth agrees with B's
depth map within a relative tolerance (the occlusion check); :func:`transfer_points` applies the
same check to any camera points (ground-truth matches). Frames without depth use shared SfM point ids instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vlm3.data.sampling import values_at
from vlm3.geometry.camera import Intrinsics, backproject, project
from vlm3.geometry.pose import relative_pose, transform_points

DEFAULT_REL_TOL = 0.05  # relative depth agreement for the occlusion check (5 %)
DEFAULT_GRID_POINTS = 4096  # grid points of view A used to estimate covisibility

Projector = Callable[[np.ndarray], np.ndarray]  # camera points (N, 3) -> image pixels (N, 2), NaN if not imaged


@dataclass(frozen=True)
class DepthFrame:
    """A posed z-depth map on a pinhole pixel grid described by ``K`` (depth shape = K.height x K.width)."""

    K: Intrinsics
    T_cam_from_world: np.ndarray
    depth: np.ndarray

    def __post_init__(self) -> None:
        depth = np.asarray(self.depth)
        if depth.shape != (self.K.height, self.K.width):
            raise ValueError(f"depth map is {depth.shape[1::-1]} (WxH) but intrinsics describe {self.K.width}x{self.K.height}")
        T = np.asarray(self.T_cam_from_world, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"T_cam_from_world must be a finite 4x4 matrix, got shape {T.shape}")
        object.__setattr__(self, "T_cam_from_world", T)

    @property
    def valid(self) -> np.ndarray:
        """Boolean (H, W) mask of pixels with a usable depth."""
        d = self.depth
        return np.isfinite(d) & (d > 0)


def valid_depth(depth: np.ndarray) -> np.ndarray:
    """Boolean mask of usable depth values (finite and > 0)."""
    depth = np.asarray(depth)
    return np.isfinite(depth) & (depth > 0)


def visible_in(points_cam: np.ndarray, frame: DepthFrame, rel_tol: float = DEFAULT_REL_TOL) -> np.ndarray:
    """Which camera-frame points (N, 3) of ``frame``'s camera are seen by it.

    A point is visible when it lies in front of the camera, projects inside the depth grid onto a
    pixel with valid depth d, and its own z agrees with d: |z - d| <= rel_tol * d. Points behind
    a closer surface (occluded) or on pixels without depth are not visible.
    """
    if not rel_tol > 0:
        raise ValueError(f"rel_tol must be > 0, got {rel_tol}")
    pts = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    uv, z = project(frame.K, pts)
    ok = np.isfinite(uv).all(axis=1) & (z > 0)
    ok[ok] = frame.K.contains(uv[ok])
    out = np.zeros(len(pts), dtype=bool)
    if ok.any():
        d = values_at(frame.depth, uv[ok]).astype(np.float64)
        with np.errstate(invalid="ignore"):
            agree = np.isfinite(d) & (d > 0) & (np.abs(z[ok] - d) <= rel_tol * d)
        out[ok] = agree
    return out


def transfer_points(
    points_a: np.ndarray, T_b_from_a: np.ndarray, b: DepthFrame, rel_tol: float = DEFAULT_REL_TOL
) -> tuple[np.ndarray, np.ndarray]:
    """Move view-A camera points into view B's camera frame; returns (points_b (N, 3), visible in B (N,))."""
    points_b = transform_points(np.asarray(T_b_from_a, dtype=np.float64), points_a)
    return points_b, visible_in(points_b, b, rel_tol)


def _grid_stride(frame: DepthFrame, target_points: int) -> int:
    return max(1, int(math.sqrt(frame.K.width * frame.K.height / max(1, target_points))))


def covisibility(
    a: DepthFrame, b: DepthFrame, *, stride: int | None = None, rel_tol: float = DEFAULT_REL_TOL
) -> float:
    """Share in [0, 1] of A's valid pixels that B also sees (depth-agreeing, unoccluded).

    The valid pixels of A are evaluated on a regular grid with ``stride`` pixels between samples
    (default: about :data:`DEFAULT_GRID_POINTS` grid points). Returns 0 when A has no valid depth.
    """
    s = _grid_stride(a, DEFAULT_GRID_POINTS) if stride is None else int(stride)
    if s < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    off = s // 2
    sub = a.depth[off::s, off::s]
    mask = valid_depth(sub)
    n = int(mask.sum())
    if n == 0:
        return 0.0
    rows, cols = np.nonzero(mask)
    uv = np.stack([cols * s + off + 0.5, rows * s + off + 0.5], axis=1)
    pts = backproject(a.K, uv, sub[rows, cols].astype(np.float64))
    _, vis = transfer_points(pts, relative_pose(a.T_cam_from_world, b.T_cam_from_world), b, rel_tol)
    return float(vis.sum()) / n


def symmetric_covisibility(
    a: DepthFrame, b: DepthFrame, *, stride: int | None = None, rel_tol: float = DEFAULT_REL_TOL
) -> float:
    """min(covisibility(a, b), covisibility(b, a))."""
    ab = covisibility(a, b, stride=stride, rel_tol=rel_tol)
    if ab == 0.0:
        return 0.0
    return min(ab, covisibility(b, a, stride=stride, rel_tol=rel_tol))


def covisibility_from_ids(ids_a: Iterable[int], ids_b: Iterable[int]) -> float:
    """Share of A's observed 3D point ids (SfM tracks) that B observes too; 0 when A has none."""
    sa, sb = set(int(i) for i in ids_a), set(int(i) for i in ids_b)
    return len(sa & sb) / len(sa) if sa else 0.0


def symmetric_covisibility_from_ids(ids_a: Iterable[int], ids_b: Iterable[int]) -> float:
    """min of :func:`covisibility_from_ids` in both directions."""
    sa, sb = set(int(i) for i in ids_a), set(int(i) for i in ids_b)
    return min(covisibility_from_ids(sa, sb), covisibility_from_ids(sb, sa))


# --- cameras whose depth grid is not the record image's pinhole grid ---------------------------
def map_registered(pixels: np.ndarray, K_from: Intrinsics, K_to: Intrinsics) -> np.ndarray:
    """Map pixels between two registered pinhole cameras (same centre and orientation, other K).

    The pixel is moved along its ray: u' = (u - cx) / fx * fx' + cx' (likewise v). The z-depth of
    the ray's 3D point is the same in both cameras.
    """
    px = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    u = (px[:, 0] - K_from.cx) / K_from.fx * K_to.fx + K_to.cx
    v = (px[:, 1] - K_from.cy) / K_from.fy * K_to.fy + K_to.cy
    return np.stack([u, v], axis=1)


def pinhole_projector(K: Intrinsics) -> Projector:
    """Camera points -> pixels of a pinhole image (NaN behind the camera)."""

    def _project(points: np.ndarray) -> np.ndarray:
        return project(K, points)[0]

    return _project


def opencv_projector(K: Intrinsics, dist: Sequence[float]) -> Projector:
    """Camera points -> pixels of an image with OpenCV distortion ``dist`` (k1, k2, p1, p2[, k3, ...]).

    K is in corner-origin pixels; OpenCV's model is the same up to a shift of both the principal
    point and the pixels, so it applies unchanged. Points behind the camera, or whose undistorted
    projection is far outside the image (>25 % of its size, where the distortion polynomial can
    fold back), give NaN.
    """
    Kmat = K.K
    d = np.asarray(dist, dtype=np.float64)

    def _project(points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out = np.full((len(pts), 2), np.nan)
        ideal, z = project(K, pts)
        mw, mh = 0.25 * K.width, 0.25 * K.height
        ok = (
            (z > 0)
            & np.isfinite(ideal).all(axis=1)
            & (ideal[:, 0] > -mw) & (ideal[:, 0] < K.width + mw)
            & (ideal[:, 1] > -mh) & (ideal[:, 1] < K.height + mh)
        )
        if ok.any():
            uv, _ = cv2.projectPoints(pts[ok].reshape(-1, 1, 3), np.zeros(3), np.zeros(3), Kmat, d)
            out[ok] = uv.reshape(-1, 2)
        return out

    return _project


def opencv_rays(pixels: np.ndarray, K: Intrinsics, dist: Sequence[float]) -> np.ndarray:
    """Camera rays (N, 3) with z = 1 of distorted image pixels (N, 2) (iterative undistortion)."""
    px = np.asarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
    if px.shape[0] == 0:
        return np.zeros((0, 3))
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    xy = cv2.undistortPoints(px, K.K, np.asarray(dist, dtype=np.float64), R=None, P=None, criteria=crit).reshape(-1, 2)
    return np.concatenate([xy, np.ones((len(xy), 1))], axis=1)


def splat_depth(points_cam: np.ndarray, K: Intrinsics) -> np.ndarray:
    """Render camera points (N, 3) into a z-buffer on K's pixel grid (nearest surface wins; 0 = empty)."""
    uv, z = project(K, points_cam)
    ok = np.isfinite(uv).all(axis=1) & (z > 0)
    ok[ok] = K.contains(uv[ok])
    depth = np.full((K.height, K.width), np.inf)
    cols = np.floor(uv[ok, 0]).astype(np.int64)
    rows = np.floor(uv[ok, 1]).astype(np.int64)
    np.minimum.at(depth, (rows, cols), z[ok])
    depth[~np.isfinite(depth)] = 0.0
    return depth.astype(np.float32)
