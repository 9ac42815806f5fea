"""Covisibility, ground-truth matches and pair sampling for posed views, plus versioned eval lists.

Conventions (see ``vlm3.geometry.camera`` and ``vlm3.geometry.pose``): continuous corner-origin
pixels (x = column, y = row; the centre of array index (j, i) is (i + 0.5, j + 0.5)); camera axes
X right, Y down, Z forward; poses are camera-from-world 4x4 matrices; depth maps hold z-depth
(metres, or SfM units for non-metric datasets); a depth <= 0 or non-finite is invalid.

Pieces, from low to high level:

1. Geometry on a :class:`DepthFrame` (a posed z-depth map on a pinhole pixel grid):
   :func:`covisibility` back-projects the valid pixels of view A (a subsampled grid), moves them
   with ``T_camB_from_camA``, projects them into B and counts those inside B whose depth agrees
   with B's depth map within a relative tolerance (the occlusion check). :func:`gt_matches` and
   :func:`sample_matches` give correspondences with the same check.
2. Pair selection for a scene: :func:`candidate_pairs` (frame gap / stride) and
   :func:`select_pairs` (seeded; keeps pairs with covisibility > ``min_covisibility``).
3. Records for a scene: adapters describe each frame with a :class:`FrameSource` and call
   :func:`scene_records`, which yields one depth record per frame and pair records (two posed
   views, matches, covisibility). Frames whose depth grid differs from the record image
   (registered RGB-D with other intrinsics, distorted cameras) are handled by :class:`FrameData`:
   labelled pixels are given in the record image together with their exact camera-frame points.
4. Versioned evaluation lists: :func:`write_eval_list` / :func:`read_eval_list` store sampled
   (pair, pixels) lists as JSON with a SHA-256 content hash and read them back identically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from vlm3.data.records import DepthLabels, Matches, Record, View
from vlm3.data.sampling import item_rng, resolve_count, sample_pixels, values_at
from vlm3.geometry.camera import Intrinsics, backproject, project
from vlm3.geometry.pose import relative_pose, transform_points

if TYPE_CHECKING:  # the adapters package imports this module; import it lazily at run time
    from vlm3.data.adapters.base import AdapterOptions, Rejection

DEFAULT_REL_TOL = 0.05  # relative depth agreement for the occlusion check (5 %)
DEFAULT_GRID_POINTS = 4096  # grid points of view A used to estimate covisibility
DEFAULT_PAIRS_PER_SCENE = 100
DEFAULT_CANDIDATES = 4096  # labelled-pixel candidates kept per frame (a uniform random subset)

Projector = Callable[[np.ndarray], np.ndarray]  # camera points (N, 3) -> image pixels (N, 2), NaN if not imaged


# ----------------------------------------------------------------------------------------------
# 1. Geometry on posed depth maps
# ----------------------------------------------------------------------------------------------
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


def gt_matches(
    a: DepthFrame, b: DepthFrame, pixels_a: np.ndarray, *, rel_tol: float = DEFAULT_REL_TOL
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth matches in B of pixels of A (N, 2) through A's depth and the relative pose.

    The depth of each A pixel is read from the pixel containing it (exact at pixel centres).
    Returns (pixels_b (N, 2), visible (N,)); pixels_b is meaningful only where visible is True.
    """
    pixels_a = np.asarray(pixels_a, dtype=np.float64).reshape(-1, 2)
    inside = a.K.contains(pixels_a)
    z = np.full(len(pixels_a), np.nan)
    if inside.any():
        z[inside] = values_at(a.depth, pixels_a[inside])
    good = inside & valid_depth(z)
    pixels_b = np.full((len(pixels_a), 2), np.nan)
    visible = np.zeros(len(pixels_a), dtype=bool)
    if good.any():
        pts = backproject(a.K, pixels_a[good], z[good])
        pts_b, vis = transfer_points(pts, relative_pose(a.T_cam_from_world, b.T_cam_from_world), b, rel_tol)
        pixels_b[good] = project(b.K, pts_b)[0]
        visible[good] = vis
    return pixels_b, visible


def covisible_mask(a: DepthFrame, b: DepthFrame, *, rel_tol: float = DEFAULT_REL_TOL) -> np.ndarray:
    """Boolean (H, W) mask over A's pixels: valid depth in A and visible in B."""
    mask = a.valid
    rows, cols = np.nonzero(mask)
    out = np.zeros_like(mask)
    if rows.size:
        uv = np.stack([cols + 0.5, rows + 0.5], axis=1)
        pts = backproject(a.K, uv, a.depth[rows, cols].astype(np.float64))
        _, vis = transfer_points(pts, relative_pose(a.T_cam_from_world, b.T_cam_from_world), b, rel_tol)
        out[rows[vis], cols[vis]] = True
    return out


def sample_matches(
    a: DepthFrame, b: DepthFrame, n: int, rng: np.random.Generator | int, *, rel_tol: float = DEFAULT_REL_TOL
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` query pixels drawn uniformly over A's valid covisible pixels, and their matches in B.

    Returns (pixels_a (N, 2), pixels_b (N, 2)) with N <= n (fewer when fewer pixels qualify).
    """
    pixels_a = sample_pixels(covisible_mask(a, b, rel_tol=rel_tol), n, rng)
    pixels_b, _ = gt_matches(a, b, pixels_a, rel_tol=rel_tol)
    return pixels_a, pixels_b


def covisibility_from_ids(ids_a: Iterable[int], ids_b: Iterable[int]) -> float:
    """Share of A's observed 3D point ids (SfM tracks) that B observes too; 0 when A has none."""
    sa, sb = set(int(i) for i in ids_a), set(int(i) for i in ids_b)
    return len(sa & sb) / len(sa) if sa else 0.0


def symmetric_covisibility_from_ids(ids_a: Iterable[int], ids_b: Iterable[int]) -> float:
    """min of :func:`covisibility_from_ids` in both directions."""
    sa, sb = set(int(i) for i in ids_a), set(int(i) for i in ids_b)
    return min(covisibility_from_ids(sa, sb), covisibility_from_ids(sb, sa))


# ----------------------------------------------------------------------------------------------
# Camera helpers for frames whose depth grid is not the record image's pinhole grid
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# 2. Pair selection
# ----------------------------------------------------------------------------------------------
def candidate_pairs(n: int, *, min_gap: int = 1, max_gap: int | None = None, stride: int = 1) -> np.ndarray:
    """All index pairs (i, j), i < j < n, of frames i and j = i + gap with min_gap <= gap <= max_gap.

    Only every ``stride``-th frame is used as the first frame of a pair. ``max_gap=None`` allows
    any gap (unordered image collections). Returns an (M, 2) int64 array in lexicographic order.
    """
    if n < 0 or min_gap < 1 or stride < 1 or (max_gap is not None and max_gap < min_gap):
        raise ValueError(f"invalid pair candidates: n={n}, min_gap={min_gap}, max_gap={max_gap}, stride={stride}")
    hi = n - 1 if max_gap is None else min(max_gap, n - 1)
    out = []
    for i in range(0, n, stride):
        j = np.arange(i + min_gap, min(n, i + hi + 1))
        if j.size:
            out.append(np.stack([np.full(j.size, i), j], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), dtype=np.int64)


@dataclass(frozen=True, order=True)
class ScoredPair:
    """A selected pair of frame indices with its (symmetric) covisibility."""

    i: int
    j: int
    covisibility: float


def select_pairs(
    candidates: np.ndarray | Sequence[tuple[int, int]],
    score: Callable[[int, int], float | None],
    *,
    k: int,
    min_covisibility: float = 0.25,
    rng: np.random.Generator | int = 0,
    max_tries: int | None = None,
) -> list[ScoredPair]:
    """Seeded selection of up to ``k`` pairs whose score exceeds ``min_covisibility``.

    Candidates are visited in a random order drawn from ``rng`` and scored (``score`` returns the
    covisibility, or None for a pair that cannot be scored) until ``k`` pairs qualify or
    ``max_tries`` were scored: the result is a uniform random subset of the qualifying pairs
    among those visited. Returned sorted by (i, j).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not 0.0 <= min_covisibility < 1.0:
        raise ValueError(f"min_covisibility must be in [0, 1), got {min_covisibility}")
    cand = np.asarray(candidates, dtype=np.int64).reshape(-1, 2)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(int(rng))
    chosen: list[ScoredPair] = []
    tries = 0
    for idx in gen.permutation(len(cand)):
        if len(chosen) >= k or (max_tries is not None and tries >= max_tries):
            break
        i, j = int(cand[idx, 0]), int(cand[idx, 1])
        s = score(i, j)
        tries += 1
        if s is not None and s > min_covisibility:
            chosen.append(ScoredPair(i, j, float(s)))
    return sorted(chosen)


# ----------------------------------------------------------------------------------------------
# 3. Records for a scene
# ----------------------------------------------------------------------------------------------
class FrameError(Exception):
    """A frame that cannot be used; becomes a :class:`Rejection` with ``reason`` and ``detail``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class FrameData:
    """What one frame contributes to depth and pair records.

    - ``pixels`` (N, 2): labelled pixels in the record image, in random order (any prefix is a
      uniform sample); ``points`` (N, 3): their points in the camera frame (z = z-depth).
    - ``to_image``: camera points -> record-image pixels (NaN where not imaged).
    - ``grid``: a pinhole z-depth grid of the same camera for covisibility and occlusion tests;
      None for frames without depth (then ``point_ids`` names the SfM point of each row, and
      covisibility is the share of shared points).
    """

    pixels: np.ndarray
    points: np.ndarray
    to_image: Projector
    grid: DepthFrame | None = None
    point_ids: np.ndarray | None = None


FrameLoader = Callable[[np.random.Generator, int], FrameData]  # (rng, n_candidates) -> FrameData; raises FrameError


@dataclass(frozen=True)
class FrameSource:
    """One frame of a scene: its name, its record view (image, intrinsics, pose) and a loader."""

    name: str
    view: View
    load: FrameLoader
    source: str = ""  # file named in rejections


def pinhole_frame(
    depth: np.ndarray,
    K_depth: Intrinsics,
    T_cam_from_world: np.ndarray,
    rng: np.random.Generator,
    n: int,
    K_image: Intrinsics | None = None,
) -> FrameData:
    """FrameData of a z-depth map on a pinhole grid; ``K_image`` = a registered image with other K.

    Candidates are ``n`` valid depth pixel centres drawn uniformly; with ``K_image`` they are
    moved to the image along their rays (:func:`map_registered`), keeping their exact depth.
    """
    depth = np.asarray(depth, dtype=np.float32)
    valid = valid_depth(depth)
    uv = sample_pixels(valid, n, rng)
    z = depth[np.floor(uv[:, 1]).astype(np.int64), np.floor(uv[:, 0]).astype(np.int64)].astype(np.float64)
    points = backproject(K_depth, uv, z)
    K_img = K_depth if K_image is None else K_image
    pixels = uv if K_image is None else map_registered(uv, K_depth, K_image)
    grid = DepthFrame(K_depth, T_cam_from_world, np.where(valid, depth, 0.0).astype(np.float32))
    return FrameData(pixels, points, pinhole_projector(K_img), grid)


def ray_frame(
    depth: np.ndarray,
    rays: Callable[[np.ndarray], np.ndarray],
    T_cam_from_world: np.ndarray,
    rng: np.random.Generator,
    n: int,
    *,
    to_image: Projector,
    K_grid: Intrinsics,
    same_grid: bool,
    splat_stride: int = 1,
) -> FrameData:
    """FrameData of a z-depth map on a non-pinhole (distorted) pixel grid.

    ``rays`` maps depth-grid pixels (N, 2) to camera rays with z = 1 (NaN where undefined).
    Candidates are ``n`` valid depth pixel centres with their exact points ray * z; their record
    pixels are the centres themselves when the record image is the depth grid (``same_grid``),
    else ``to_image`` of the points. The pinhole occlusion grid (intrinsics ``K_grid``, typically
    the ideal undistorted camera, possibly downscaled) is a z-buffer of every ``splat_stride``-th
    valid pixel.
    """
    depth = np.asarray(depth, dtype=np.float32)
    valid = valid_depth(depth)
    uv = sample_pixels(valid, n, rng)
    z = depth[np.floor(uv[:, 1]).astype(np.int64), np.floor(uv[:, 0]).astype(np.int64)].astype(np.float64)
    r = rays(uv)
    keep = np.isfinite(r).all(axis=1)
    uv, points = uv[keep], r[keep] * z[keep, None]
    pixels = uv if same_grid else to_image(points)
    ok = np.isfinite(pixels).all(axis=1)
    uv, points, pixels = uv[ok], points[ok], pixels[ok]

    s = max(1, int(splat_stride))
    sub = valid[s // 2 :: s, s // 2 :: s]
    rows, cols = np.nonzero(sub)
    centres = np.stack([cols * s + s // 2 + 0.5, rows * s + s // 2 + 0.5], axis=1)
    zs = depth[rows * s + s // 2, cols * s + s // 2].astype(np.float64)
    rs = rays(centres)
    good = np.isfinite(rs).all(axis=1)
    grid = DepthFrame(K_grid, T_cam_from_world, splat_depth(rs[good] * zs[good, None], K_grid))
    return FrameData(pixels, points, to_image, grid)


def sfm_frame(
    points_world: np.ndarray, point_ids: np.ndarray, T_cam_from_world: np.ndarray, to_image: Projector, K_image: Intrinsics
) -> FrameData:
    """FrameData of a frame without depth: the SfM points it observes, projected with its pose."""
    pts = transform_points(np.asarray(T_cam_from_world, dtype=np.float64), np.asarray(points_world, dtype=np.float64))
    pixels = to_image(pts) if len(pts) else np.zeros((0, 2))
    ok = (pts[:, 2] > 0) & np.isfinite(pixels).all(axis=1)
    ok[ok] = K_image.contains(pixels[ok])
    return FrameData(pixels[ok], pts[ok], to_image, None, np.asarray(point_ids, dtype=np.int64)[ok])


def option_flag(options: AdapterOptions, key: str, default: bool) -> bool:
    """Boolean adapter option ``options.extra[key]`` (true/false, yes/no, 1/0), with a clear error."""
    raw = options.extra.get(key)
    if raw is None:
        return default
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"option extra[{key!r}]={raw!r} is not a boolean (use true/false)")


def option_int(options: AdapterOptions, key: str, default: int | None, *, minimum: int = 0) -> int | None:
    """Integer adapter option ``options.extra[key]`` ("none" = None), with a clear error."""
    raw = options.extra.get(key)
    if raw is None:
        return default
    if str(raw).strip().lower() == "none":
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError(f"option extra[{key!r}]={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"option extra[{key!r}]={value} must be >= {minimum}")
    return value


def option_float(options: AdapterOptions, key: str, default: float, *, positive: bool = True) -> float:
    """Float adapter option ``options.extra[key]``, with a clear error."""
    raw = options.extra.get(key)
    if raw is None:
        return default
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ValueError(f"option extra[{key!r}]={raw!r} is not a number") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"option extra[{key!r}]={value} must be a finite positive number")
    return value



@dataclass
class SceneConfig:
    """Settings of :func:`scene_records` for one scene."""

    dataset: str
    scene: str
    split: str = "train"
    metric_scale: bool = True
    seed: int = 0
    depth_points: int = 100
    match_points: int = 100
    pairs_per_scene: int = DEFAULT_PAIRS_PER_SCENE
    min_covisibility: float = 0.25
    rel_tol: float = DEFAULT_REL_TOL
    min_gap: int = 1
    max_gap: int | None = None
    depth_records: bool = True
    pair_records: bool = True
    random_order: bool = True  # seeded swap of the two views of a pair
    max_tries: int | None = None
    candidates: int = DEFAULT_CANDIDATES
    cache_size: int = 64
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(
        cls,
        dataset: str,
        scene: str,
        options: AdapterOptions,
        *,
        metric_scale: bool = True,
        max_gap: int | None = None,
        depth_records: bool = True,
    ) -> "SceneConfig":
        """Settings from :class:`AdapterOptions`; ``extra`` keys: ``min_gap``, ``max_gap``,
        ``match_points``, ``depth_tolerance``, ``candidates``, ``max_tries``, ``depth_records``,
        ``pair_records``, ``random_order``."""
        depth_points = resolve_count(options.points)
        match_points = int(option_int(options, "match_points", depth_points, minimum=1) or depth_points)
        candidates = int(option_int(options, "candidates", DEFAULT_CANDIDATES, minimum=1) or DEFAULT_CANDIDATES)
        pairs = DEFAULT_PAIRS_PER_SCENE if options.pairs_per_scene is None else int(options.pairs_per_scene)
        if pairs < 0:
            raise ValueError(f"pairs_per_scene must be >= 0, got {pairs}")
        return cls(
            dataset=dataset,
            scene=scene,
            split=options.split,
            metric_scale=metric_scale,
            seed=int(options.seed),
            depth_points=depth_points,
            match_points=match_points,
            pairs_per_scene=pairs,
            min_covisibility=float(options.min_covisibility),
            rel_tol=option_float(options, "depth_tolerance", DEFAULT_REL_TOL),
            min_gap=int(option_int(options, "min_gap", 1, minimum=1) or 1),
            max_gap=option_int(options, "max_gap", max_gap, minimum=1),
            depth_records=option_flag(options, "depth_records", depth_records),
            pair_records=option_flag(options, "pair_records", True),
            random_order=option_flag(options, "random_order", True),
            max_tries=option_int(options, "max_tries", None, minimum=1),
            candidates=max(candidates, depth_points, match_points),
        )


class _FrameCache:
    """Loads frames lazily (seeded per frame, so results do not depend on load order) with an LRU bound."""

    def __init__(self, frames: Sequence[FrameSource], cfg: SceneConfig) -> None:
        self.frames = frames
        self.cfg = cfg
        self.cache: OrderedDict[int, FrameData] = OrderedDict()
        self.failed: dict[int, FrameError] = {}

    def get(self, i: int) -> FrameData:
        if i in self.failed:
            raise self.failed[i]
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        f = self.frames[i]
        rng = item_rng(self.cfg.seed, f"{self.cfg.dataset}/{self.cfg.scene}/{f.name}/frame")
        try:
            data = f.load(rng, self.cfg.candidates)
        except FrameError as e:
            self.failed[i] = e
            raise
        self.cache[i] = data
        while len(self.cache) > self.cfg.cache_size:
            self.cache.popitem(last=False)
        return data


def _inside(K: Intrinsics, pixels: np.ndarray) -> np.ndarray:
    px = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(px).all(axis=1)
    ok[ok] = K.contains(px[ok])
    return ok


def _as_tuples(px: np.ndarray) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in np.asarray(px, dtype=np.float64).reshape(-1, 2)]


def pair_score(a: FrameData, b: FrameData, rel_tol: float = DEFAULT_REL_TOL) -> float | None:
    """Symmetric covisibility of two loaded frames: from depth grids when both have one, else
    from shared SfM point ids; None when neither is available."""
    if a.grid is not None and b.grid is not None:
        return symmetric_covisibility(a.grid, b.grid, rel_tol=rel_tol)
    if a.point_ids is not None and b.point_ids is not None:
        return symmetric_covisibility_from_ids(a.point_ids, b.point_ids)
    return None


def pair_matches(
    a: FrameData, b: FrameData, T_b_from_a: np.ndarray, K_a: Intrinsics, K_b: Intrinsics, rel_tol: float = DEFAULT_REL_TOL
) -> tuple[np.ndarray, np.ndarray, float]:
    """All candidate matches A -> B of two loaded frames: (pixels_a, pixels_b, directional covisibility).

    With depth grids, A's candidate points are moved into B and kept when B sees them
    (occlusion check) and both pixels are inside their images. Without depth, the SfM points
    observed by both frames are used. The order is A's (random) candidate order.
    """
    if a.grid is not None and b.grid is not None:
        pts_b, vis = transfer_points(a.points, T_b_from_a, b.grid, rel_tol)
        cov = covisibility(a.grid, b.grid, rel_tol=rel_tol)
        idx = np.flatnonzero(vis)
    elif a.point_ids is not None and b.point_ids is not None:
        common = np.isin(a.point_ids, b.point_ids)
        idx = np.flatnonzero(common)
        pts_b = transform_points(T_b_from_a, a.points)
        cov = covisibility_from_ids(a.point_ids, b.point_ids)
    else:
        return np.zeros((0, 2)), np.zeros((0, 2)), 0.0
    px_a = a.pixels[idx]
    px_b = b.to_image(pts_b[idx]) if idx.size else np.zeros((0, 2))
    ok = _inside(K_a, px_a) & _inside(K_b, px_b)
    return px_a[ok], px_b[ok], cov


def scene_records(frames: Sequence[FrameSource], cfg: SceneConfig) -> Iterator[Record | Rejection]:
    """Depth records (one per frame) and covisible pair records of one scene.

    Frames are in their natural (temporal) order; pair candidates follow ``cfg.min_gap`` /
    ``cfg.max_gap`` in that order. A frame that fails to load becomes one :class:`Rejection` and
    takes part in no pair. Everything sampled is seeded from ``cfg.seed`` and stable names.
    """
    from vlm3.data.adapters.base import Rejection

    cache = _FrameCache(frames, cfg)
    rejected: set[int] = set()

    def _reject(i: int, e: FrameError) -> Rejection:
        rejected.add(i)
        return Rejection(frames[i].source or f"{cfg.scene}/{frames[i].name}", e.reason, e.detail)

    for i, f in enumerate(frames if cfg.depth_records else []):
        try:
            data = cache.get(i)
        except FrameError as e:
            yield _reject(i, e)
            continue
        if data.grid is None:
            continue  # SfM-only frame: no depth labels
        ok = _inside(f.view.K, data.pixels)
        px, z = data.pixels[ok][: cfg.depth_points], data.points[ok, 2][: cfg.depth_points]
        if len(px) == 0:
            yield Rejection(f.source or f"{cfg.scene}/{f.name}", "no_valid_depth", "no pixel with valid depth inside the image")
            continue
        yield Record(
            id=f"{cfg.dataset}/{cfg.scene}/{f.name}",
            dataset=cfg.dataset,
            split=cfg.split,
            views=[f.view],
            metric_scale=cfg.metric_scale,
            depth=DepthLabels(pixels=_as_tuples(px), depth=[float(v) for v in z], depth_type="z"),
            meta={"scene": cfg.scene, "frame": f.name, "source": f.source, **cfg.meta},
        )

    if not cfg.pair_records or cfg.pairs_per_scene == 0:
        return
    good = [i for i in range(len(frames)) if i not in rejected]
    pending: list[Rejection] = []

    def _score(ii: int, jj: int) -> float | None:
        out = []
        for k in (good[ii], good[jj]):
            try:
                out.append(cache.get(k))
            except FrameError as e:
                if k not in rejected:
                    pending.append(_reject(k, e))
                return None
        return pair_score(out[0], out[1], cfg.rel_tol)

    cand = candidate_pairs(len(good), min_gap=cfg.min_gap, max_gap=cfg.max_gap)
    chosen = select_pairs(
        cand,
        _score,
        k=cfg.pairs_per_scene,
        min_covisibility=cfg.min_covisibility,
        rng=item_rng(cfg.seed, f"{cfg.dataset}/{cfg.scene}/pairs"),
        max_tries=cfg.max_tries,
    )
    yield from pending
    for sp in chosen:
        i, j = good[sp.i], good[sp.j]
        rng = item_rng(cfg.seed, f"{cfg.dataset}/{cfg.scene}/{frames[i].name}/{frames[j].name}/pair")
        if cfg.random_order and rng.random() < 0.5:
            i, j = j, i
        fa, fb = frames[i], frames[j]
        a, b = cache.get(i), cache.get(j)
        T_ba = relative_pose(fa.view.pose, fb.view.pose)
        px_a, px_b, cov = pair_matches(a, b, T_ba, fa.view.K, fb.view.K, cfg.rel_tol)
        # Candidates are in uniform random order, so a prefix of the covisible ones is a uniform sample.
        px_a, px_b = px_a[: cfg.match_points], px_b[: cfg.match_points]
        matches = Matches(pixels0=_as_tuples(px_a), pixels1=_as_tuples(px_b)) if len(px_a) else None
        yield Record(
            id=f"{cfg.dataset}/{cfg.scene}/{fa.name}__{fb.name}",
            dataset=cfg.dataset,
            split=cfg.split,
            views=[fa.view, fb.view],
            metric_scale=cfg.metric_scale,
            matches=matches,
            covisibility=float(cov),
            meta={"scene": cfg.scene, "frame0": fa.name, "frame1": fb.name, "covisibility_min": sp.covisibility, **cfg.meta},
        )


# ----------------------------------------------------------------------------------------------
# 4. Versioned evaluation lists
# ----------------------------------------------------------------------------------------------
EVAL_LIST_FORMAT = "vlm3.eval_pairs"
EVAL_LIST_VERSION = 1


@dataclass(frozen=True)
class EvalPair:
    """One evaluation item: a pair of frames of a scene and its sampled query pixels with matches."""

    id: str
    scene: str
    frame0: str
    frame1: str
    pixels0: tuple[tuple[float, float], ...]
    pixels1: tuple[tuple[float, float], ...]
    covisibility: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scene": self.scene,
            "frame0": self.frame0,
            "frame1": self.frame1,
            "covisibility": self.covisibility,
            "pixels0": [[float(x), float(y)] for x, y in self.pixels0],
            "pixels1": [[float(x), float(y)] for x, y in self.pixels1],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalPair":
        p0 = tuple((float(x), float(y)) for x, y in d["pixels0"])
        p1 = tuple((float(x), float(y)) for x, y in d["pixels1"])
        if len(p0) != len(p1):
            raise ValueError(f"eval pair {d.get('id')!r}: {len(p0)} pixels0 but {len(p1)} pixels1")
        cov = d.get("covisibility")
        return cls(str(d["id"]), str(d["scene"]), str(d["frame0"]), str(d["frame1"]), p0, p1, None if cov is None else float(cov))


@dataclass(frozen=True)
class EvalList:
    """A read evaluation list: name, free-form meta, items and the verified content hash."""

    name: str
    meta: dict[str, Any]
    pairs: list[EvalPair]
    sha256: str


def eval_pairs_from_records(records: Iterable[Record]) -> list[EvalPair]:
    """The (pair, pixels) items of pair records that carry matches, in input order."""
    out = []
    for r in records:
        if len(r.views) != 2 or r.matches is None:
            continue
        out.append(
            EvalPair(
                id=r.id,
                scene=str(r.meta.get("scene", "")),
                frame0=str(r.meta.get("frame0", "")),
                frame1=str(r.meta.get("frame1", "")),
                pixels0=tuple((float(x), float(y)) for x, y in r.matches.pixels0),
                pixels1=tuple((float(x), float(y)) for x, y in r.matches.pixels1),
                covisibility=r.covisibility,
            )
        )
    return out


def _canonical(payload: dict[str, Any]) -> bytes:
    # Python's float repr round-trips exactly, so the hash of a re-read list is identical.
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def eval_list_hash(pairs: Sequence[EvalPair], name: str, meta: dict[str, Any] | None = None) -> str:
    """SHA-256 (hex) of the canonical JSON of the list's content (format, version, name, meta, pairs)."""
    payload = {
        "format": EVAL_LIST_FORMAT,
        "version": EVAL_LIST_VERSION,
        "name": name,
        "meta": meta or {},
        "pairs": [p.to_dict() for p in pairs],
    }
    return hashlib.sha256(_canonical(payload)).hexdigest()


def write_eval_list(path: str | Path, pairs: Sequence[EvalPair], *, name: str, meta: dict[str, Any] | None = None) -> str:
    """Write an evaluation list (JSON with its content hash) atomically; returns the SHA-256 hex."""
    path = Path(path)
    digest = eval_list_hash(pairs, name, meta)
    doc = {
        "format": EVAL_LIST_FORMAT,
        "version": EVAL_LIST_VERSION,
        "name": name,
        "sha256": digest,
        "meta": meta or {},
        "pairs": [p.to_dict() for p in pairs],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return digest


def read_eval_list(path: str | Path) -> EvalList:
    """Read an evaluation list and verify its hash (ValueError naming the file when it was altered)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"evaluation list {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != EVAL_LIST_FORMAT:
        raise ValueError(f"{path}: not a vlm3 evaluation list (format field is {doc.get('format') if isinstance(doc, dict) else None!r})")
    if doc.get("version") != EVAL_LIST_VERSION:
        raise ValueError(f"{path}: evaluation list version {doc.get('version')!r} is not supported (expected {EVAL_LIST_VERSION})")
    try:
        pairs = [EvalPair.from_dict(p) for p in doc["pairs"]]
        name, meta, stored = str(doc["name"]), dict(doc.get("meta") or {}), str(doc["sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed evaluation list ({e!r})") from None
    actual = eval_list_hash(pairs, name, meta)
    if actual != stored:
        raise ValueError(f"{path}: content hash {actual} does not match the stored sha256 {stored}; the list was modified")
    return EvalList(name=name, meta=meta, pairs=pairs, sha256=stored)
