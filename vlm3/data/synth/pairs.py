"""The second view of a scene: a random relative camera motion and exact dense correspondences.

A view-0 pixel centre with finite depth is back-projected, moved into camera 1 and projected.
It corresponds to that exact (continuous) pixel of view 1 when the projection is in front of
camera 1, inside its image, and not occluded. Occlusion is tested exactly: the ray of camera 1
through the projected pixel is cast against the scene and must not hit anything nearer than the
point (the analytic version of a z-buffer test, free of pixel-grid and grazing-angle errors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlm3.data.synth.render import camera_rays, cast, pixel_grid
from vlm3.data.synth.scene import Layout, SceneFamily, camera_is_free, sample_intrinsics
from vlm3.geometry.camera import Intrinsics, backproject, project
from vlm3.geometry.pose import invert_T, make_T, transform_points, ypr_to_rotation

_OCCLUSION_RTOL = 1e-6  # relative z tolerance: a nearer hit beyond this occludes the point


@dataclass
class Correspondences:
    """Dense view-0 -> view-1 correspondences of a pair."""

    flow: np.ndarray  # (H0, W0, 2) float64: view-1 pixel (u, v) of each view-0 pixel centre, NaN if not covisible
    covisible: np.ndarray  # (H0, W0) bool
    covisibility: float  # covisible / valid (finite-depth) view-0 pixels


def dense_correspondences(
    layout: Layout,
    K0: Intrinsics,
    T0_cam_from_world: np.ndarray,
    depth0: np.ndarray,
    K1: Intrinsics,
    T1_cam_from_world: np.ndarray,
) -> Correspondences:
    """Exact correspondences of every view-0 pixel centre with finite z-depth ``depth0`` (H0, W0)."""
    h, w = K0.height, K0.width
    valid = np.isfinite(depth0).ravel()
    flow = np.full((h * w, 2), np.nan)
    covisible = np.zeros(h * w, dtype=bool)
    n_valid = int(valid.sum())
    if n_valid:
        uv0 = pixel_grid(K0)[valid]
        p_world = transform_points(invert_T(T0_cam_from_world), backproject(K0, uv0, depth0.ravel()[valid], "z"))
        uv1, z1 = project(K1, transform_points(T1_cam_from_world, p_world))
        in_view = (z1 > 0) & K1.contains(uv1)
        idx = np.flatnonzero(valid)[in_view]
        if len(idx):
            origin, dirs = camera_rays(K1, T1_cam_from_world, uv1[in_view])
            t = cast(layout, origin, dirs).t
            seen = t >= z1[in_view] * (1 - _OCCLUSION_RTOL)
            covisible[idx[seen]] = True
            flow[idx[seen]] = uv1[in_view][seen]
    return Correspondences(
        flow.reshape(h, w, 2),
        covisible.reshape(h, w),
        float(covisible.sum() / n_valid) if n_valid else 0.0,
    )


def relative_camera(T0_cam_from_world: np.ndarray, center_in_cam0: np.ndarray, R_cam0_from_cam1: np.ndarray) -> np.ndarray:
    """T_cam1_from_world of a camera whose centre and orientation are given in camera 0's frame."""
    T_world_from_cam0 = invert_T(T0_cam_from_world)
    R_world_from_cam1 = T_world_from_cam0[:3, :3] @ R_cam0_from_cam1
    c1 = transform_points(T_world_from_cam0, np.asarray(center_in_cam0, dtype=np.float64))[0]
    return make_T(R_world_from_cam1.T, -R_world_from_cam1.T @ c1)


def sample_second_view(
    family: SceneFamily,
    layout: Layout,
    K0: Intrinsics,
    T0_cam_from_world: np.ndarray,
    depth0: np.ndarray,
    rng: np.random.Generator,
) -> tuple[Intrinsics, np.ndarray, Correspondences, int]:
    """Draw camera 1 until covisibility >= ``family.min_covisibility`` (at most ``max_pair_tries``).

    Returns (K1, T1_cam_from_world, correspondences, tries). When no draw reaches the threshold
    the best free-standing one is returned (its covisibility tells).
    """
    best: tuple[Intrinsics, np.ndarray, Correspondences] | None = None
    tries = 0
    for tries in range(1, family.max_pair_tries + 1):
        K1 = K0 if family.pair_same_camera else sample_intrinsics(family, rng)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        center = direction * rng.uniform(*family.translation)
        R = ypr_to_rotation(
            rng.uniform(-family.rel_yaw_deg, family.rel_yaw_deg),
            rng.uniform(-family.rel_pitch_deg, family.rel_pitch_deg),
            rng.uniform(-family.rel_roll_deg, family.rel_roll_deg),
        )
        T1 = relative_camera(T0_cam_from_world, center, R)
        if not camera_is_free(layout, -T1[:3, :3].T @ T1[:3, 3], family.min_camera_clearance):
            continue
        corr = dense_correspondences(layout, K0, T0_cam_from_world, depth0, K1, T1)
        if best is None or corr.covisibility > best[2].covisibility:
            best = (K1, T1, corr)
        if corr.covisibility >= family.min_covisibility:
            break
    if best is None:
        raise RuntimeError(
            f"{family.name}: no free position for view 1 in {family.max_pair_tries} tries "
            f"(translation {family.translation} m); lower the translation range or raise max_pair_tries"
        )
    return best[0], best[1], best[2], tries
