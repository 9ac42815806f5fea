"""Cameras, focal-length unification and poses (conventions in ``camera.py`` and ``pose.py``)."""

from vlm3.geometry.camera import (
    DEPTH_TYPES,
    DepthType,
    Intrinsics,
    backproject,
    convert_depth,
    depth_map_to_points,
    pixel_centers,
    pixel_indices,
    project,
    range_to_z,
    z_to_range,
)
from vlm3.geometry.pose import (
    camera2_center_in_cam1,
    invert_T,
    is_rotation,
    make_T,
    relative_pose,
    rotation_angle_deg,
    rotation_to_ypr,
    t_from_center,
    transform_points,
    ypr_to_rotation,
)
from vlm3.geometry.unify import FocalTransform, UnifiedImage, pad_to_multiple, resize_exact, unified_intrinsics, unify_focal, warp_depth

__all__ = [name for name in dir() if not name.startswith("_")]
