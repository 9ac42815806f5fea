"""Rigid poses, relative poses and yaw/pitch/roll, with frames spelled out in the names.

Conventions
-----------
- ``T_a_from_b`` is a 4x4 matrix mapping points in frame b to frame a: p_a = T_a_from_b @ p_b.
  Datasets give camera-from-world (``T_cam_from_world``, OpenCV/COLMAP "extrinsics") or
  world-from-camera (``T_world_from_cam``, "camera-to-world", e.g. ScanNet); vlm3 records store
  camera-from-world.
- Camera axes: X right, Y down, Z forward.
- The relative pose of a pair is ``T_cam2_from_cam1`` = T_cam2_from_world @ T_world_from_cam1,
  with rotation R (= R_cam2_from_cam1) and translation t; vlm3 scores this (R, t) by default.
  VGGT's evaluation (``se3_to_relative_pose_error``) compares the inverse, T_cam1_from_cam2 =
  T_cam1_from_world @ T_world_from_cam2 = (R^T, -R^T t): the scoring option ``pair_order`` of
  ``vlm3.tasks.pose`` picks either.
- VLM3 describes the pair from camera 1's point of view:
  * motion direction: the centre of camera 2 in camera-1 coordinates, c = -R^T t (unit vector);
  * distance: |c| in metres (metric datasets only);
  * rotation: the orientation of camera 2 in camera 1, R_cam1_from_cam2 = R^T, as intrinsic
    yaw -> pitch -> roll: R_cam1_from_cam2 = Ry(yaw) @ Rx(pitch) @ Rz(roll) (scipy "YXZ",
    upper case = intrinsic), all right-handed about camera-1 axes: yaw about the down axis Y
    (+ = turn right: forward Z moves towards +X), pitch about the right axis X (+ = look up:
    forward Z moves towards -Y, which is up), roll about the forward axis Z (+ = the right axis
    moves towards +Y, clockwise as seen from behind the camera).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 homogeneous matrix from a 3x3 rotation and a 3-vector translation."""
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, dtype=np.float64)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def invert_T(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (T_b_from_a from T_a_from_b)."""
    T = np.asarray(T, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    return make_T(R.T, -R.T @ t)


def transform_points(T_a_from_b: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """Apply ``T_a_from_b`` to points (N, 3) in frame b."""
    p = np.asarray(points_b, dtype=np.float64).reshape(-1, 3)
    return p @ T_a_from_b[:3, :3].T + T_a_from_b[:3, 3]


def relative_pose(T_cam1_from_world: np.ndarray, T_cam2_from_world: np.ndarray) -> np.ndarray:
    """T_cam2_from_cam1 from two camera-from-world poses."""
    return np.asarray(T_cam2_from_world, dtype=np.float64) @ invert_T(T_cam1_from_world)


def camera2_center_in_cam1(T_cam2_from_cam1: np.ndarray) -> np.ndarray:
    """Position of camera 2's centre in camera-1 coordinates (metres if the pose is metric)."""
    R, t = T_cam2_from_cam1[:3, :3], T_cam2_from_cam1[:3, 3]
    return -R.T @ t


def t_from_center(R_cam2_from_cam1: np.ndarray, c2_in_cam1: np.ndarray) -> np.ndarray:
    """Translation t of T_cam2_from_cam1 from its rotation and camera 2's centre in camera 1."""
    return -np.asarray(R_cam2_from_cam1) @ np.asarray(c2_in_cam1, dtype=np.float64)


def rotation_to_ypr(R_cam1_from_cam2: np.ndarray) -> tuple[float, float, float]:
    """Orientation of camera 2 in camera 1 -> (yaw, pitch, roll) in degrees (see module doc)."""
    yaw, pitch, roll = Rotation.from_matrix(np.asarray(R_cam1_from_cam2, dtype=np.float64)).as_euler("YXZ", degrees=True)
    return float(yaw), float(pitch), float(roll)


def ypr_to_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(yaw, pitch, roll) in degrees -> R_cam1_from_cam2 (orientation of camera 2 in camera 1)."""
    return Rotation.from_euler("YXZ", [yaw, pitch, roll], degrees=True).as_matrix()


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Geodesic angle between two rotations, degrees in [0, 180]."""
    R = np.asarray(R_a, dtype=np.float64).T @ np.asarray(R_b, dtype=np.float64)
    # atan2 of (sin, cos) stays accurate near 0 and 180 degrees, unlike arccos of the trace.
    sin = np.linalg.norm([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / 2.0
    cos = (np.trace(R) - 1.0) / 2.0
    return float(np.degrees(np.arctan2(sin, cos)))


def is_rotation(R: np.ndarray, atol: float = 1e-4) -> bool:
    """True for a proper 3x3 rotation matrix (orthonormal, det +1)."""
    R = np.asarray(R, dtype=np.float64)
    return R.shape == (3, 3) and np.allclose(R.T @ R, np.eye(3), atol=atol) and abs(np.linalg.det(R) - 1) < atol
