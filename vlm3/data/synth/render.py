"""Exact ray casting of synthetic layouts: analytic ray-primitive intersections in pure numpy.

Rays go through pixel centres (corner-origin convention of ``vlm3.geometry.camera``). Ray
directions are the camera-frame vectors (x, y, 1) rotated into the world, so the ray parameter
of a hit *is* its z-depth in that camera: depth maps are exact, with no sampling or rasterisation.
Shading is Lambertian with one directional light plus ambient, so faces are distinguishable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlm3.data.synth.scene import (
    CEILING,
    FLOOR,
    SKY,
    WALL_BACK,
    WALL_FRONT,
    WALL_LEFT,
    WALL_RIGHT,
    Layout,
    SceneObject,
)
from vlm3.geometry.camera import Intrinsics, rays

_EPS = 1e-9  # hits closer than this along a ray are ignored (the ray's own origin surface)
_SKY_HORIZON = np.array([205.0, 222.0, 240.0])
_SKY_ZENITH = np.array([95.0, 145.0, 215.0])
_WINDOW_RGB = np.array([60.0, 75.0, 95.0])


@dataclass
class Hits:
    """Nearest surface along each ray: parameter ``t`` (inf = miss), surface/object id, world normal."""

    t: np.ndarray  # (N,) float64
    ids: np.ndarray  # (N,) int16, 0 = sky
    normals: np.ndarray  # (N, 3) float64, unit, facing the ray origin


@dataclass
class SceneView:
    """One rendered view: image, exact z-depth (metres, NaN = sky), id map, intrinsics, pose."""

    image: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 z-depth in metres, NaN where no surface (sky)
    ids: np.ndarray  # (H, W) int16: 0 sky, 1..99 objects, >= 100 structural surfaces
    K: Intrinsics
    T_cam_from_world: np.ndarray  # (4, 4)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in the world frame (metres)."""
        R, t = self.T_cam_from_world[:3, :3], self.T_cam_from_world[:3, 3]
        return -R.T @ t


def pixel_grid(K: Intrinsics) -> np.ndarray:
    """Centres of all pixels in row-major order, (H * W, 2) as (u, v)."""
    jj, ii = np.mgrid[0 : K.height, 0 : K.width]
    return np.stack([ii.ravel() + 0.5, jj.ravel() + 0.5], axis=1).astype(np.float64)


def camera_rays(K: Intrinsics, T_cam_from_world: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-frame ray origin (3,) and directions (N, 3) through pixels uv; t along a ray = z-depth."""
    R_world_from_cam = np.asarray(T_cam_from_world, dtype=np.float64)[:3, :3].T
    origin = -R_world_from_cam @ np.asarray(T_cam_from_world, dtype=np.float64)[:3, 3]
    return origin, rays(K, uv) @ R_world_from_cam.T


def cast(layout: Layout, origin: np.ndarray, dirs: np.ndarray) -> Hits:
    """Intersect rays (shared origin, world frame) with every surface of ``layout``; keep the nearest."""
    n = len(dirs)
    hits = Hits(np.full(n, np.inf), np.zeros(n, dtype=np.int16), np.zeros((n, 3)))
    origin = np.asarray(origin, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if layout.room is not None:
            _cast_room(layout, origin, dirs, hits)
        if layout.ground_extent is not None:
            _cast_ground(layout.ground_extent, origin, dirs, hits)
        dd = np.einsum("ij,ij->i", dirs, dirs)
        for obj in layout.objects:
            # Only rays that meet the object's bounding sphere get the exact test.
            idx = _bounding_candidates(obj, origin, dirs, dd)
            if not len(idx):
                continue
            intersect = _INTERSECT[obj.shape]
            t, normals = intersect(obj, origin, dirs[idx])
            _keep_nearer(hits, t, obj.id, normals, idx)
    return hits


def render_view(layout: Layout, K: Intrinsics, T_cam_from_world: np.ndarray) -> tuple[SceneView, np.ndarray]:
    """Render one camera: the view (float32 depth) and the exact float64 z-depth map (inf = sky)."""
    origin, dirs = camera_rays(K, T_cam_from_world, pixel_grid(K))
    hits = cast(layout, origin, dirs)
    rgb = shade(layout, origin, dirs, hits)
    h, w = K.height, K.width
    depth64 = hits.t.reshape(h, w)
    depth = np.where(np.isfinite(depth64), depth64, np.nan).astype(np.float32)
    view = SceneView(rgb.reshape(h, w, 3), depth, hits.ids.reshape(h, w), K, np.asarray(T_cam_from_world, dtype=np.float64))
    return view, depth64


def shade(layout: Layout, origin: np.ndarray, dirs: np.ndarray, hits: Hits) -> np.ndarray:
    """Colours (N, 3) uint8: textured albedo x (ambient + diffuse), sky gradient where nothing is hit."""
    n = len(dirs)
    albedo = np.zeros((n, 3))
    hit = np.isfinite(hits.t)
    p = origin + dirs * np.where(hit, hits.t, 0.0)[:, None]
    ids = hits.ids

    floor = ids == FLOOR
    if floor.any():
        q = p[floor]
        parity = (np.floor(q[:, 0] / layout.tile) + np.floor(q[:, 1] / layout.tile)) % 2
        a, b = (np.asarray(c, dtype=np.float64) for c in layout.floor_rgb)
        albedo[floor] = np.where(parity[:, None] > 0, b, a)
    for k, wid in enumerate((WALL_LEFT, WALL_RIGHT, WALL_BACK, WALL_FRONT)):
        m = ids == wid
        if m.any():
            q = p[m]
            along = q[:, 1] if wid in (WALL_LEFT, WALL_RIGHT) else q[:, 0]
            factor = 1.0 - 0.07 * (np.floor(along) % 2)  # 1 m panels
            factor = factor * np.where((q[:, 2] >= 0.85) & (q[:, 2] < 0.95), 0.75, 1.0)  # dado rail
            factor = factor * np.where(q[:, 2] < 0.1, 0.6, 1.0)  # skirting board
            albedo[m] = np.asarray(layout.wall_rgb[k], dtype=np.float64) * factor[:, None]
    m = ids == CEILING
    if m.any():
        q = p[m]
        line = (np.mod(q[:, 0], 0.6) < 0.03) | (np.mod(q[:, 1], 0.6) < 0.03)
        albedo[m] = np.asarray(layout.ceiling_rgb, dtype=np.float64) * np.where(line, 0.85, 1.0)[:, None]
    for obj in layout.objects:
        m = ids == obj.id
        if m.any():
            albedo[m] = obj.rgb
            if obj.name == "building":
                albedo[m] = _windows(obj, p[m], hits.normals[m], albedo[m])

    light = np.asarray(layout.light_dir, dtype=np.float64)
    lambert = layout.ambient + (1 - layout.ambient) * np.clip(hits.normals @ light, 0.0, None)
    rgb = albedo * lambert[:, None]
    sky = ids == SKY
    if sky.any():
        d = dirs[sky]
        elev = np.clip(d[:, 2] / np.linalg.norm(d, axis=1), 0.0, 1.0) ** 0.5
        rgb[sky] = _SKY_HORIZON + (_SKY_ZENITH - _SKY_HORIZON) * elev[:, None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# --- primitives ---------------------------------------------------------------------------------


def _keep_nearer(hits: Hits, t: np.ndarray, obj_id: int, normals: np.ndarray, idx: np.ndarray | None = None) -> None:
    """Record hits ``t`` (of rays ``idx``, default all) that are nearer than what was hit so far."""
    current = hits.t if idx is None else hits.t[idx]
    better = (t > _EPS) & (t < current)
    if not better.any():
        return
    rows = np.flatnonzero(better) if idx is None else idx[better]
    hits.t[rows] = t[better]
    hits.ids[rows] = obj_id
    hits.normals[rows] = normals[better] if normals.ndim == 2 else normals


def _bounding_candidates(obj: SceneObject, o: np.ndarray, d: np.ndarray, dd: np.ndarray) -> np.ndarray:
    """Indices of rays that meet the object's bounding sphere in front of the origin."""
    w, h, l = obj.size
    radius = 0.5 * float(np.sqrt(w * w + h * h + l * l)) * (1 + 1e-9)
    oc = o - np.asarray(obj.center)
    b = d @ oc
    disc = b * b - dd * (oc @ oc - radius * radius)
    return np.flatnonzero((disc >= 0) & (np.sqrt(np.maximum(disc, 0.0)) > b))


def _cast_room(layout: Layout, o: np.ndarray, d: np.ndarray, hits: Hits) -> None:
    r = layout.room
    assert r is not None
    # Inside a convex room the nearest positive plane hit is the visible surface; normals face inwards.
    planes = (
        (2, 0.0, (0.0, 0.0, 1.0), FLOOR),
        (2, r.height, (0.0, 0.0, -1.0), CEILING),
        (0, r.x_min, (1.0, 0.0, 0.0), WALL_LEFT),
        (0, r.x_max, (-1.0, 0.0, 0.0), WALL_RIGHT),
        (1, r.y_max, (0.0, -1.0, 0.0), WALL_BACK),
        (1, r.y_min, (0.0, 1.0, 0.0), WALL_FRONT),
    )
    for axis, value, normal, sid in planes:
        t = (value - o[axis]) / d[:, axis]
        t = np.where(np.isfinite(t) & (t > 0), t, np.inf)
        _keep_nearer(hits, t, sid, np.asarray(normal))


def _cast_ground(extent: float, o: np.ndarray, d: np.ndarray, hits: Hits) -> None:
    t = np.where(d[:, 2] < 0, -o[2] / d[:, 2], np.inf)
    x, y = o[0] + t * d[:, 0], o[1] + t * d[:, 1]
    t = np.where((np.abs(x) <= extent) & (np.abs(y) <= extent), t, np.inf)
    _keep_nearer(hits, t, FLOOR, np.array([0.0, 0.0, 1.0]))


def _local(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray origin and directions in the object's box frame, plus R_world_from_box."""
    R = obj.R_world_from_box
    return R.T @ (o - np.asarray(obj.center)), d @ R, R


def _hit_box(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test: entry parameter t (inf = miss) and outward world normals of the entry face."""
    ol, dl, R = _local(obj, o, d)
    half = np.asarray(obj.size) / 2  # (width, height, length) along box x, y, z
    tmin, tmax = [], []
    for k in range(3):
        inv = 1.0 / dl[:, k]
        t1, t2 = (-half[k] - ol[k]) * inv, (half[k] - ol[k]) * inv
        tmin.append(np.minimum(t1, t2))
        tmax.append(np.maximum(t1, t2))
    near = np.maximum(np.maximum(tmin[0], tmin[1]), tmin[2])
    far = np.minimum(np.minimum(tmax[0], tmax[1]), tmax[2])
    t = np.where((near <= far) & (near > 0), near, np.inf)
    nl = np.zeros_like(dl)
    for k in range(3):  # the entry face is on the slab whose entry is the latest
        on = tmin[k] == near
        nl[on] = 0.0
        nl[on, k] = -np.sign(dl[on, k])
    return t, nl @ R.T


def _hit_sphere(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(obj.center)
    r = obj.size[0] / 2
    oc = o - c
    a = np.einsum("ij,ij->i", d, d)
    b = d @ oc
    disc = b * b - a * (oc @ oc - r * r)
    t = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0.0))) / a, np.inf)
    t = np.where(t > 0, t, np.inf)
    normals = (o + d * np.where(np.isfinite(t), t, 0.0)[:, None] - c) / r
    return t, normals


def _hit_cylinder(obj: SceneObject, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Vertical cylinder: axis = box y (down), radial plane = box (x, z).
    ol, dl, R = _local(obj, o, d)
    r, hh = obj.size[0] / 2, obj.size[1] / 2
    a = dl[:, 0] ** 2 + dl[:, 2] ** 2
    b = ol[0] * dl[:, 0] + ol[2] * dl[:, 2]
    disc = b * b - a * (ol[0] ** 2 + ol[2] ** 2 - r * r)
    t_side = np.where((disc >= 0) & (a > 0), (-b - np.sqrt(np.maximum(disc, 0.0))) / a, np.inf)
    y_side = ol[1] + t_side * dl[:, 1]
    t_side = np.where((t_side > 0) & (np.abs(y_side) <= hh), t_side, np.inf)
    # Caps: the top (y = -hh) and bottom (y = +hh) discs.
    t_cap = np.full(len(dl), np.inf)
    cap_sign = np.zeros(len(dl))
    for y_cap in (-hh, hh):
        t = (y_cap - ol[1]) / dl[:, 1]
        x, z = ol[0] + t * dl[:, 0], ol[2] + t * dl[:, 2]
        t = np.where(np.isfinite(t) & (t > 0) & (x * x + z * z <= r * r), t, np.inf)
        closer = t < t_cap
        t_cap = np.where(closer, t, t_cap)
        cap_sign = np.where(closer, np.sign(y_cap), cap_sign)
    use_cap = t_cap < t_side
    t = np.where(use_cap, t_cap, t_side)
    tt = np.where(np.isfinite(t), t, 0.0)
    nl = np.zeros_like(dl)
    nl[:, 0] = (ol[0] + tt * dl[:, 0]) / r
    nl[:, 2] = (ol[2] + tt * dl[:, 2]) / r
    nl[use_cap] = 0.0
    nl[use_cap, 1] = cap_sign[use_cap]
    return t, nl @ R.T


_INTERSECT = {"box": _hit_box, "sphere": _hit_sphere, "cylinder": _hit_cylinder}


def _windows(obj: SceneObject, p: np.ndarray, normals: np.ndarray, albedo: np.ndarray) -> np.ndarray:
    """Window grid on a building's vertical faces (3 m storeys, 2.5 m bays)."""
    R = obj.R_world_from_box
    local = (p - np.asarray(obj.center)) @ R
    nl = normals @ R
    along = np.where(np.abs(nl[:, 0]) > 0.5, local[:, 2], local[:, 0])
    height = p[:, 2]
    wall = np.abs(nl[:, 1]) < 0.5
    fa, fh = np.mod(along, 2.5) / 2.5, np.mod(height, 3.0) / 3.0
    window = wall & (fa > 0.3) & (fa < 0.7) & (fh > 0.35) & (fh < 0.75) & (height > 1.0)
    return np.where(window[:, None], _WINDOW_RGB, albedo)

