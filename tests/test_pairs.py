"""Covisibility, ground-truth matches, pair selection and scene records on analytically rendered scenes."""

from __future__ import annotations

import numpy as np
import pytest

from vlm3.data.adapters.base import AdapterOptions, Rejection
from vlm3.data.covis import (
    DepthFrame,
    covisibility,
    covisibility_from_ids,
    transfer_points,
    valid_depth,
    symmetric_covisibility,
    symmetric_covisibility_from_ids,
    visible_in,
)
from vlm3.data.scenes import FrameError, FrameSource, SceneConfig, candidate_pairs, pinhole_frame, scene_records, select_pairs
from vlm3.data.records import Record, View
from vlm3.data.sampling import values_at
from vlm3.geometry.camera import Intrinsics, backproject, project, rays
from vlm3.geometry.pose import invert_T, make_T, relative_pose, transform_points
from scipy.spatial.transform import Rotation

K = Intrinsics(50.0, 50.0, 32.0, 24.0, 64, 48)


def plane(z0: float, x=(-np.inf, np.inf), y=(-np.inf, np.inf)) -> tuple:
    """World plane z = z0 bounded to x and y ranges (normal, offset, bounds)."""
    return (np.array([0.0, 0.0, 1.0]), z0, x, y)


def cast(K: Intrinsics, T_cam_from_world: np.ndarray, uv: np.ndarray, planes: list) -> np.ndarray:
    """z-depth of the first plane hit along the rays of pixels uv (N, 2); 0 where nothing is hit."""
    R, t = T_cam_from_world[:3, :3], T_cam_from_world[:3, 3]
    o = -R.T @ t
    d = rays(K, uv) @ R  # rows: R^T r (world direction of a ray whose camera z is 1)
    best = np.full(len(uv), np.inf)
    for n, c, (x0, x1), (y0, y1) in planes:
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (c - n @ o) / (d @ n)
        p = o + s[:, None] * d
        ok = (s > 0) & (p[:, 0] >= x0) & (p[:, 0] <= x1) & (p[:, 1] >= y0) & (p[:, 1] <= y1)
        best = np.where(ok & (s < best), s, best)
    return np.where(np.isfinite(best), best, 0.0)


def render(K: Intrinsics, T: np.ndarray, planes: list) -> DepthFrame:
    jj, ii = np.mgrid[0 : K.height, 0 : K.width]
    uv = np.stack([ii.ravel() + 0.5, jj.ravel() + 0.5], axis=1)
    return DepthFrame(K, T, cast(K, T, uv, planes).reshape(K.height, K.width).astype(np.float32))


def cam_at(x: float = 0.0, y: float = 0.0, z: float = 0.0, yaw_deg: float = 0.0) -> np.ndarray:
    """Camera-from-world of a camera centred at (x, y, z) turned by yaw about the down axis."""
    R_world_from_cam = Rotation.from_euler("y", yaw_deg, degrees=True).as_matrix()
    return invert_T(make_T(R_world_from_cam, [x, y, z]))


WALL = [plane(2.0)]


def gt_matches(
    a: DepthFrame, b: DepthFrame, pixels_a: np.ndarray, *, rel_tol: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth matches in B of pixels of A (N, 2) through A's depth and the relative pose (as scene_records does).

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


def test_identical_views_are_fully_covisible():
    a = render(K, cam_at(), WALL)
    assert covisibility(a, a) == pytest.approx(1.0)
    assert symmetric_covisibility(a, a, stride=1) == pytest.approx(1.0)


def test_views_looking_away_are_not_covisible():
    a = render(K, cam_at(), WALL)
    b = render(K, cam_at(yaw_deg=180.0), [plane(2.0), plane(-2.0)])
    assert a.valid.all() and b.valid.all()  # both see a wall, just not the same one
    assert covisibility(a, b) == 0.0
    assert symmetric_covisibility(a, b) == 0.0


def test_half_overlapping_pair():
    # The wall at z = 2 spans 64 / 50 * 2 = 2.56 m; moving by half of it leaves half shared.
    a = render(K, cam_at(), WALL)
    b = render(K, cam_at(x=1.28), WALL)
    assert covisibility(a, b, stride=1) == pytest.approx(0.5, abs=0.02)
    assert covisibility(b, a, stride=1) == pytest.approx(0.5, abs=0.02)
    assert covisibility(a, b) == pytest.approx(0.5, abs=0.05)  # default subsampled grid


def test_matches_reproject_onto_the_same_surface_point():
    scene = [(np.array([0.3, 0.0, 1.0]) / np.linalg.norm([0.3, 0.0, 1.0]), 2.5 / np.linalg.norm([0.3, 0.0, 1.0]), (-9, 9), (-9, 9))]
    Ta, Tb = cam_at(), cam_at(x=0.4, y=-0.1, z=0.2, yaw_deg=-8.0)
    a, b = render(K, Ta, scene), render(K, Tb, scene)
    jj, ii = np.nonzero(a.valid)
    pa = np.stack([ii + 0.5, jj + 0.5], axis=1)[np.random.default_rng(0).choice(len(ii), 200, replace=False)]
    pb, vis = gt_matches(a, b, pa)
    pa, pb = pa[vis][:50], pb[vis][:50]
    assert len(pa) == 50
    # Independent check: cast B's ray through the match and compare the world points.
    za = cast(K, Ta, pa, scene)
    Xa = transform_points(invert_T(Ta), rays(K, pa) * za[:, None])
    zb = cast(K, Tb, pb, scene)
    Xb = transform_points(invert_T(Tb), rays(K, pb) * zb[:, None])
    assert np.abs(Xa - Xb).max() < 1e-4


def test_occluded_points_are_excluded():
    # Background wall at z = 5 and a small panel at z = 2 in front of B's line of sight.
    scene = [plane(5.0), plane(2.0, x=(0.6, 1.2), y=(-0.5, 0.5))]
    Ta, Tb = cam_at(), cam_at(x=1.5)
    a, b = render(K, Ta, scene), render(K, Tb, scene)
    jj, ii = np.nonzero(a.valid)
    pa = np.stack([ii + 0.5, jj + 0.5], axis=1)
    pb, vis = gt_matches(a, b, pa)
    # Which A pixels land inside B at all (ignoring occlusion)?
    za = a.depth[jj, ii].astype(np.float64)
    Xb = transform_points(Tb @ invert_T(Ta), rays(K, pa) * za[:, None])
    uvb = Xb[:, :2] / Xb[:, 2:] * [K.fx, K.fy] + [K.cx, K.cy]
    inside = K.contains(uvb) & (Xb[:, 2] > 0)
    zb_seen = cast(K, Tb, np.where(inside[:, None], uvb, 0.5), scene)
    occluded = inside & (zb_seen < Xb[:, 2] * 0.95)
    assert occluded.sum() > 20  # the panel hides part of the wall from B
    assert not (vis & occluded).any()
    assert (vis == (inside & ~occluded)).mean() > 0.99  # visible = inside and unoccluded (up to pixel edges)
    # And a point that B sees on the panel itself is visible.
    assert visible_in(np.array([[0.9 - 1.5, 0.0, 2.0]]), b).all()


def test_invalid_depth_in_b_is_not_a_match():
    a = render(K, cam_at(), WALL)
    b = render(K, cam_at(), WALL)
    b.depth[:, 32:] = 0.0  # right half of B has no depth
    assert covisibility(a, b, stride=1) == pytest.approx(0.5, abs=0.02)


def test_candidate_pairs_respect_gaps_and_stride():
    c = candidate_pairs(6, min_gap=2, max_gap=3)
    assert c.tolist() == [[0, 2], [0, 3], [1, 3], [1, 4], [2, 4], [2, 5], [3, 5]]
    assert candidate_pairs(4).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert candidate_pairs(5, stride=2, max_gap=1).tolist() == [[0, 1], [2, 3]]
    with pytest.raises(ValueError):
        candidate_pairs(5, min_gap=3, max_gap=2)


def test_select_pairs_threshold_determinism_and_limit():
    scores = {(i, j): (j - i) / 10 for i in range(10) for j in range(i + 1, 10)}  # gap 1 -> 0.1 ... gap 9 -> 0.9
    cand = candidate_pairs(10)
    chosen = select_pairs(cand, lambda i, j: 1.0 - scores[(i, j)], k=1000, min_covisibility=0.25, rng=3)
    assert chosen and all(p.covisibility > 0.25 for p in chosen)
    assert {(p.i, p.j) for p in chosen} == {k for k, s in scores.items() if 1.0 - s > 0.25}
    few = select_pairs(cand, lambda i, j: 1.0 - scores[(i, j)], k=5, rng=3)
    assert len(few) == 5 and few == select_pairs(cand, lambda i, j: 1.0 - scores[(i, j)], k=5, rng=3)
    assert few != select_pairs(cand, lambda i, j: 1.0 - scores[(i, j)], k=5, rng=4)
    # Exactly at the threshold is not enough (the paper keeps covisibility > 25 %).
    assert select_pairs(cand, lambda i, j: 0.25, k=5) == []
    assert select_pairs(cand, lambda i, j: None, k=5) == []


def test_covisibility_from_shared_points():
    assert covisibility_from_ids(range(10), range(5, 15)) == 0.5
    assert symmetric_covisibility_from_ids(range(10), range(8, 10)) == pytest.approx(0.2)
    assert covisibility_from_ids([], [1]) == 0.0


# --- scene_records -------------------------------------------------------------------------------
def _frames(n: int, bad: int | None = None) -> list[FrameSource]:
    frames = []
    for i in range(n):
        T = cam_at(x=0.3 * i)
        view = View(image=f"s/{i}.jpg", intrinsics=K.to_list(), T_cam_from_world=T.tolist())

        def load(rng, m, T=T, i=i):
            if i == bad:
                raise FrameError("unreadable_file", f"s/{i}.png: corrupt")
            return pinhole_frame(render(K, T, WALL).depth, K, T, rng, m)

        frames.append(FrameSource(f"{i:03d}", view, load, f"s/{i}.png"))
    return frames


def _cfg(**kw) -> SceneConfig:
    opts = AdapterOptions(points=8, pairs_per_scene=kw.pop("pairs", 50), seed=kw.pop("seed", 0), min_covisibility=kw.pop("minc", 0.25))
    return SceneConfig.from_options("toy", "s", opts, **kw)


def test_scene_records_pairs_above_threshold_and_deterministic():
    out = list(scene_records(_frames(8), _cfg()))
    depth = [r for r in out if isinstance(r, Record) and len(r.views) == 1]
    pairs = [r for r in out if isinstance(r, Record) and len(r.views) == 2]
    assert len(depth) == 8 and all(len(r.depth.pixels) == 8 for r in depth)
    assert all(abs(d - 2.0) < 1e-5 for r in depth for d in r.depth.depth)
    assert pairs
    for r in pairs:
        # 0.3 m steps over a 2.56 m wide view: overlap = 1 - 0.3 * gap / 2.56 must exceed 0.25.
        gap = abs(int(r.meta["frame0"]) - int(r.meta["frame1"]))
        assert 1 - 0.3 * gap / 2.56 > 0.22 and r.meta["covisibility_min"] > 0.25
        assert len(r.matches.pixels0) == 8
        assert r.covisibility == pytest.approx(1 - 0.3 * gap / 2.56, abs=0.05)
    # Pairs with covisibility below the threshold exist among the candidates but are not emitted.
    assert max(abs(int(r.meta["frame0"]) - int(r.meta["frame1"])) for r in pairs) <= 6
    again = list(scene_records(_frames(8), _cfg()))
    assert [r.model_dump() for r in again if isinstance(r, Record)] == [r.model_dump() for r in out if isinstance(r, Record)]
    other = list(scene_records(_frames(8), _cfg(seed=1)))
    assert [r.model_dump() for r in other if isinstance(r, Record)] != [r.model_dump() for r in out if isinstance(r, Record)]


def test_scene_records_min_covisibility_is_configurable():
    strict = [r for r in scene_records(_frames(8), _cfg(minc=0.8)) if isinstance(r, Record) and len(r.views) == 2]
    assert strict and all(r.meta["covisibility_min"] > 0.8 for r in strict)
    assert all(abs(int(r.meta["frame0"]) - int(r.meta["frame1"])) == 1 for r in strict)


def test_scene_records_bad_frame_becomes_named_rejection():
    out = list(scene_records(_frames(5, bad=2), _cfg()))
    rej = [r for r in out if isinstance(r, Rejection)]
    assert len(rej) == 1 and rej[0].reason == "unreadable_file" and rej[0].source == "s/2.png"
    pairs = [r for r in out if isinstance(r, Record) and len(r.views) == 2]
    assert pairs and all("002" not in (r.meta["frame0"], r.meta["frame1"]) for r in pairs)
    # Same when depth records are off: the failure is found while scoring pairs.
    out = list(scene_records(_frames(5, bad=2), _cfg(depth_records=False)))
    assert [r.reason for r in out if isinstance(r, Rejection)] == ["unreadable_file"]
    assert not any(isinstance(r, Record) and len(r.views) == 1 for r in out)
