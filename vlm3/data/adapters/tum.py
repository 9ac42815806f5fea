"""TUM RGB-D benchmark sequences: metric depth and covisible posed pairs.

Conventions of the source and how they are converted
----------------------------------------------------
- ``rgb.txt`` / ``depth.txt``: ``timestamp filename`` lines; ``groundtruth.txt``:
  ``timestamp tx ty tz qx qy qz qw`` = the pose of the colour camera's optical frame (X right,
  Y down, Z forward) in the motion-capture world, i.e. **world-from-camera** with a scalar-last
  quaternion. Records store camera-from-world, so each pose is **inverted**.
- Association: each colour frame takes the depth image and the ground-truth pose with the
  nearest timestamps, each within ``max_dt`` (0.02 s); otherwise the frame is rejected
  (``no_depth_within_max_dt`` / ``no_pose_within_max_dt``).
- Depth PNGs are uint16 z-depth registered to the colour image, 5000 units per metre
  (value / 5000 = metres), 0 = invalid.
- Intrinsics (``options.extra["intrinsics"]``):
  ``calibrated`` (default): the published Kinect calibration chosen from the sequence name
  (freiburg1 / freiburg2 / freiburg3), with OpenCV distortion (k1, k2, p1, p2, k3) for fr1/fr2
  (fr3 images are already undistorted). Labelled pixels stay in the distorted image and the record
  view carries ``dist``; geometry uses the undistorted rays. ``ros_default``: fx = fy = 525,
  cx = 319.5, cy = 239.5, no distortion (TUM's suggestion for the pre-registered depth).
  All these values use the ROS/OpenCV origin at the centre of the top-left pixel; +0.5 px converts
  them to vlm3's corner-origin pixels.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from vlm3.data.adapters.base import Adapter, Rejection, option_float, option_int, register
from vlm3.data.adapters.kit import image_size, read_depth_png
from vlm3.data.covis import opencv_projector, opencv_rays
from vlm3.data.scenes import FrameData, FrameError, FrameSource, SceneConfig, pinhole_frame, ray_frame, scene_records
from vlm3.data.records import Record, View
from vlm3.geometry.camera import Intrinsics
from vlm3.geometry.pose import invert_T, make_T

DEPTH_SCALE = 5000.0  # TUM depth PNG units per metre
IMAGE_SIZE = (640, 480)

# Published TUM RGB-D calibrations: (fx, fy, cx, cy) with the origin at the centre of the
# top-left pixel, and OpenCV distortion (k1, k2, p1, p2, k3).
CALIBRATIONS: dict[str, tuple[tuple[float, float, float, float], tuple[float, ...]]] = {
    "fr1": ((517.3, 516.5, 318.6, 255.3), (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    "fr2": ((520.9, 521.0, 325.1, 249.7), (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    "fr3": ((535.4, 539.2, 320.1, 247.6), (0.0, 0.0, 0.0, 0.0, 0.0)),
}
ROS_DEFAULT = ((525.0, 525.0, 319.5, 239.5), (0.0, 0.0, 0.0, 0.0, 0.0))


def camera_for_sequence(name: str, mode: str = "calibrated") -> tuple[Intrinsics, list[float] | None]:
    """(corner-origin intrinsics, OpenCV distortion or None) of a TUM sequence for ``mode``."""
    if mode == "ros_default":
        (fx, fy, cx, cy), dist = ROS_DEFAULT
    elif mode == "calibrated":
        m = re.search(r"(?:freiburg|fr)([123])", name.lower())
        if m is None:
            raise ValueError(f"sequence name {name!r} names no camera (freiburg1/2/3); use extra intrinsics=ros_default")
        (fx, fy, cx, cy), dist = CALIBRATIONS[f"fr{m.group(1)}"]
    else:
        raise ValueError(f"option extra['intrinsics']={mode!r} must be 'calibrated' or 'ros_default'")
    K = Intrinsics.from_center_origin(fx, fy, cx, cy, *IMAGE_SIZE)
    return K, (list(dist) if any(dist) else None)


def read_stamped(path: Path, ncols: int) -> list[tuple[float, list[str]]]:
    """``timestamp value...`` lines (``#`` comments skipped); ValueError naming file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != ncols:
            raise ValueError(f"{path}:{lineno}: expected {ncols} fields, got {len(parts)}: {line!r}")
        try:
            out.append((float(parts[0]), parts[1:]))
        except ValueError:
            raise ValueError(f"{path}:{lineno}: bad timestamp {parts[0]!r}") from None
    return sorted(out, key=lambda x: x[0])


def nearest(stamps: np.ndarray, t: float, max_dt: float) -> int | None:
    """Index of the timestamp in sorted ``stamps`` closest to ``t`` if within ``max_dt`` seconds."""
    if stamps.size == 0:
        return None
    k = int(np.searchsorted(stamps, t))
    best = min((i for i in (k - 1, k) if 0 <= i < stamps.size), key=lambda i: abs(stamps[i] - t))
    return best if abs(stamps[best] - t) <= max_dt else None


def pose_from_tum(values: list[str], source: str) -> np.ndarray:
    """Camera-from-world from ``tx ty tz qx qy qz qw`` (world-from-camera); FrameError when invalid."""
    try:
        v = np.array([float(x) for x in values], dtype=np.float64)
    except ValueError:
        raise FrameError("bad_pose", f"{source}: non-numeric pose {values}") from None
    q = v[3:7]
    if not np.all(np.isfinite(v)) or not 0.9 < np.linalg.norm(q) < 1.1:
        raise FrameError("bad_pose", f"{source}: pose {values} is not finite or its quaternion is not unit length")
    T_world_from_cam = make_T(Rotation.from_quat(q).as_matrix(), v[:3])  # scipy quaternions are (x, y, z, w)
    return invert_T(T_world_from_cam)


def _loader(path: Path, K: Intrinsics, dist: list[float] | None, T: np.ndarray, grid_downsample: int):
    def load(rng: np.random.Generator, n: int) -> FrameData:
        depth = read_depth_png(path, IMAGE_SIZE[::-1]).astype(np.float32) / DEPTH_SCALE
        if dist is None:
            return pinhole_frame(depth, K, T, rng, n)
        # Distorted image: labels stay on the image's pixels; rays and the occlusion grid use the
        # undistorted camera (a z-buffer at 1/grid_downsample resolution so that it has no holes).
        f = 1.0 / grid_downsample
        K_grid = K.scaled(f, f, width=K.width // grid_downsample, height=K.height // grid_downsample)
        return ray_frame(
            depth,
            lambda uv: opencv_rays(uv, K, dist),
            T,
            rng,
            n,
            to_image=opencv_projector(K, dist),
            K_grid=K_grid,
            same_grid=True,
        )

    return load


@register
class TUMAdapter(Adapter):
    """TUM RGB-D sequences -> depth records per frame and covisible pose/correspondence pairs."""

    name = "tum"
    description = "TUM RGB-D (Kinect) sequences: metric z-depth per frame, covisible posed pairs with matches"
    layout = """\
ROOT/
  rgbd_dataset_freiburg1_desk/        the name selects the fr1/fr2/fr3 calibration
    rgb.txt                            timestamp rgb/<t>.png
    depth.txt                          timestamp depth/<t>.png
    groundtruth.txt                    timestamp tx ty tz qx qy qz qw (world-from-camera, inverted)
    rgb/<t>.png                        640x480 colour
    depth/<t>.png                      uint16 z-depth, value / 5000 = metres, 0 = invalid
options.extra: intrinsics (calibrated | ros_default), max_dt (0.02 s), frame_stride (1),
               max_gap (300 frames), grid_downsample (2), min_gap, match_points, depth_tolerance,
               candidates, max_tries, depth_records, pair_records, random_order
"""
    labels = ("depth", "poses", "matches")

    def units(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / "rgb.txt").is_file())

    def manifest_info(self) -> dict:
        return {
            "source": "TUM RGB-D benchmark",
            "depth_type": "z",
            "depth_units": "uint16 / 5000 -> metres",
            "pose_source": "groundtruth.txt world-from-camera (inverted)",
            "intrinsics": self.options.extra.get("intrinsics", "calibrated"),
            "metric_scale": True,
        }

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        seq = self.root / unit
        opts = self.options
        try:
            K, dist = camera_for_sequence(unit, str(opts.extra.get("intrinsics", "calibrated")))
        except ValueError as e:
            yield Rejection(str(seq), "bad_calibration", str(e))
            return
        max_dt = option_float(opts, "max_dt", 0.02)
        stride = option_int(opts, "frame_stride", 1, minimum=1) or 1
        down = option_int(opts, "grid_downsample", 2, minimum=1) or 2
        try:
            rgb = read_stamped(seq / "rgb.txt", 2)
            depth = read_stamped(seq / "depth.txt", 2)
            gt = read_stamped(seq / "groundtruth.txt", 8)
        except (FileNotFoundError, ValueError) as e:
            yield Rejection(str(seq), "unreadable_file", str(e))
            return
        d_stamps = np.array([t for t, _ in depth])
        g_stamps = np.array([t for t, _ in gt])

        frames: list[FrameSource] = []
        for t, (rel,) in rgb[::stride]:
            src = str(seq / rel)
            try:
                di = nearest(d_stamps, t, max_dt)
                if di is None:
                    raise FrameError("missing_file", f"no depth image within {max_dt} s of {t:.6f}")
                gi = nearest(g_stamps, t, max_dt)
                if gi is None:
                    raise FrameError("missing_file", f"no ground-truth pose within {max_dt} s of {t:.6f}")
                T = pose_from_tum(gt[gi][1], f"{seq / 'groundtruth.txt'} at {gt[gi][0]:.4f}")
                size = image_size(seq / rel)
                if size != IMAGE_SIZE:
                    raise FrameError("size_mismatch", f"{src}: {size[0]}x{size[1]}, expected {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}")
            except FrameError as e:
                yield Rejection(src, e.reason, e.detail)
                continue
            name = Path(rel).stem
            view = View(image=f"{unit}/{rel}", intrinsics=K.to_list(), dist=dist, T_cam_from_world=T.tolist())
            dpath = seq / depth[di][1][0]
            frames.append(FrameSource(name, view, _loader(dpath, K, dist, T, down), str(dpath)))

        if not frames:
            yield Rejection(str(seq), "missing_file", "no usable frames")
            return
        cfg = SceneConfig.from_options(self.name, unit, opts, metric_scale=True, max_gap=300)
        yield from scene_records(frames, cfg)
