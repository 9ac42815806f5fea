"""Records of posed scenes: frame sources, pair selection, depth and pair records.

Adapters describe each frame with a :class:`FrameSource` and call :func:`scene_records`, which
yields one depth record per frame and pair records (two posed views, matches, covisibility) for
pairs chosen by :func:`select_pairs` among :func:`candidate_pairs` (frame gap / stride; seeded;
kept when covisibility > ``min_covisibility``, see ``vlm3.data.covis``). Frames whose depth grid
differs from the record image (registered RGB-D with other intrinsics, distorted cameras) are
handled by :class:`FrameData`: labelled pixels are given in the record image together with their
exact camera-frame points.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlm3.data.adapters.base import AdapterOptions, Rejection, option_flag, option_float, option_int
from vlm3.data.covis import (
    DEFAULT_REL_TOL,
    DepthFrame,
    Projector,
    covisibility,
    covisibility_from_ids,
    map_registered,
    pinhole_projector,
    splat_depth,
    symmetric_covisibility,
    symmetric_covisibility_from_ids,
    transfer_points,
    valid_depth,
)
from vlm3.data.records import DepthLabels, Matches, Record, View
from vlm3.data.sampling import item_rng, resolve_count, sample_pixels
from vlm3.geometry.camera import Intrinsics, backproject
from vlm3.geometry.pose import relative_pose, transform_points

DEFAULT_PAIRS_PER_SCENE = 100
DEFAULT_CANDIDATES = 4096  # labelled-pixel candidates kept per frame (a uniform random subset)


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


# --- records of a scene -------------------------------------------------------------------------
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


class FrameCache:
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
    cache = FrameCache(frames, cfg)
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
        yield pair_record(frames, cache, good[sp.i], good[sp.j], cfg, {"covisibility_min": sp.covisibility})


def pair_record(frames: list[FrameSource], cache: "FrameCache", i: int, j: int, cfg: SceneConfig, meta: dict[str, Any]) -> Record:
    """The pair record of frames ``i`` and ``j`` (seeded swap when ``cfg.random_order``): both views,
    matches from depth and poses (:func:`pair_matches`), covisibility; ``meta`` adds to the record's."""
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
    return Record(
        id=f"{cfg.dataset}/{cfg.scene}/{fa.name}__{fb.name}",
        dataset=cfg.dataset,
        split=cfg.split,
        views=[fa.view, fb.view],
        metric_scale=cfg.metric_scale,
        matches=matches,
        covisibility=float(cov),
        meta={"scene": cfg.scene, "frame0": fa.name, "frame1": fb.name, **meta, **cfg.meta},
    )
