"""ScanNet v2 (frames exported from the .sens files): metric depth and covisible posed pairs.

Conventions of the source and how they are converted
----------------------------------------------------
- ``pose/<i>.txt``: 4x4 **camera-to-world** (T_world_from_cam) of the colour camera. Records store
  camera-from-world, so each pose is **inverted**. Frames whose pose has -inf/NaN (tracking lost)
  or is not a rigid transform become ``bad_pose`` rejections.
- ``depth/<i>.png``: uint16 z-depth in **millimetres**, 0 = invalid; divided by 1000 -> metres.
- Depth (640x480, ``intrinsic_depth.txt``) and colour (1296x968, ``intrinsic_color.txt``) are
  registered: the same optical centre and orientation, other intrinsics (the export's
  ``extrinsic_*.txt`` are identity; a scene where they are not is rejected as ``unregistered_depth``).
  Pixels are therefore sampled on the depth grid (pixel centres, exact depth) and moved to the
  colour image along their rays, u_c = (u_d - cx_d) / fx_d * fx_c + cx_c (likewise v); their
  z-depth is unchanged. Covisibility and the occlusion check run on the depth grids.
- The intrinsics are OpenCV calibrations (origin at the centre of the top-left pixel, e.g.
  cx_d ~ 319.5 for a 640 px width); +0.5 px converts them to vlm3's corner-origin pixels. When
  ``<scene>/<scene>.txt`` gives ``colorWidth``/``colorHeight`` (``depthWidth``/``depthHeight``)
  and the exported images have another size, the intrinsics are scaled to the image size.

ScanNet++: its DSLR images are fisheye; after the ScanNet++ toolkit's COLMAP undistortion
(``python -m dslr.undistort_colmap``: ``<scene>/colmap/{cameras,images,points3D}.txt`` with
PINHOLE cameras, ``<scene>/images/``) convert them with the ``scannetpp_dslr`` adapter
(``vlm3.data.adapters.colmap_scenes``), which reads that COLMAP model with metric poses and
optional depth rendered for the undistorted cameras.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vlm3.data.adapters.base import Adapter, Rejection, option_int, register
from vlm3.data.adapters.kit import image_size, read_depth_png, read_matrix
from vlm3.data.scenes import FrameData, FrameError, FrameSource, SceneConfig, pinhole_frame, scene_records
from vlm3.data.records import Record, View
from vlm3.geometry.camera import Intrinsics
from vlm3.geometry.pose import invert_T, is_rotation

DEPTH_SCALE = 1000.0  # ScanNet depth PNG units per metre (millimetres)


def pose_from_cam_to_world(T_world_from_cam: np.ndarray, source: str) -> np.ndarray:
    """Camera-from-world from a camera-to-world 4x4 matrix; FrameError('bad_pose') when unusable."""
    T = np.asarray(T_world_from_cam, dtype=np.float64)
    if not np.all(np.isfinite(T)):
        raise FrameError("bad_pose", f"{source}: pose has non-finite entries (tracking lost)")
    if not is_rotation(T[:3, :3], atol=1e-3) or not np.allclose(T[3], [0, 0, 0, 1]):
        raise FrameError("bad_pose", f"{source}: not a rigid 4x4 transform")
    return invert_T(T)


def _scene_info(path: Path) -> dict[str, str]:
    """``key = value`` lines of the scene's ``<scene>.txt`` (empty when absent)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _calibrated_intrinsics(K4: np.ndarray, calib_size: tuple[int, int] | None, size: tuple[int, int], name: str) -> Intrinsics:
    """Corner-origin intrinsics for an image of ``size`` from an OpenCV-style 4x4 calibration."""
    fx, fy, cx, cy = K4[0, 0], K4[1, 1], K4[0, 2], K4[1, 2]
    cw, ch = calib_size or size
    K = Intrinsics.from_center_origin(fx, fy, cx, cy, cw, ch)
    if (cw, ch) != tuple(size):
        K = K.scaled(size[0] / calib_size[0], size[1] / calib_size[1], width=size[0], height=size[1])
    # Without the calibration size, a principal point far from the image centre means the images
    # were resized after calibration: refuse rather than label every pixel wrongly.
    if not (0.3 * K.width < K.cx < 0.7 * K.width and 0.3 * K.height < K.cy < 0.7 * K.height):
        raise ValueError(
            f"{name}: principal point ({K.cx:.1f}, {K.cy:.1f}) is far from the centre of the {K.width}x{K.height} images; "
            "the images were probably resized after calibration (add <scene>.txt with the calibration size)"
        )
    return K


def _frame_ids(folder: Path, suffix: str) -> list[str]:
    return [p.stem for p in folder.glob(f"*{suffix}") if re.fullmatch(r"\d+", p.stem)]


@register
class ScanNetAdapter(Adapter):
    """ScanNet v2 exported frames -> depth records per frame and covisible pose/correspondence pairs."""

    name = "scannet"
    description = "ScanNet v2 RGB-D scans (exported .sens): metric z-depth per frame, covisible posed pairs with matches"
    layout = """\
ROOT/
  scene0000_00/
    color/0.jpg 1.jpg ...            colour frames (1296x968)
    depth/0.png 1.png ...            uint16 z-depth in millimetres, 0 = invalid (640x480)
    pose/0.txt 1.txt ...             4x4 camera-to-world (inverted to camera-from-world); -inf = lost
    intrinsic/intrinsic_color.txt    4x4, OpenCV pixel-centre origin
    intrinsic/intrinsic_depth.txt    4x4, OpenCV pixel-centre origin
    intrinsic/extrinsic_*.txt        optional, must be identity (registered depth)
    scene0000_00.txt                 optional: colorWidth/colorHeight/depthWidth/depthHeight
options.extra: frame_stride (1), max_gap (300 frames), min_gap, match_points, depth_tolerance (0.05),
               candidates, max_tries, depth_records, pair_records, random_order
"""
    labels = ("depth", "poses", "matches")

    def units(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / "color").is_dir())

    def manifest_info(self) -> dict:
        return {
            "source": "ScanNet v2 (exported .sens frames)",
            "depth_type": "z",
            "depth_units": "uint16 millimetres -> metres",
            "pose_source": "camera-to-world (inverted)",
            "metric_scale": True,
        }

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        scene_dir = self.root / unit
        stride = option_int(self.options, "frame_stride", 1, minimum=1) or 1
        try:
            info = _scene_info(scene_dir / f"{unit}.txt")
            Kc4 = read_matrix(scene_dir / "intrinsic" / "intrinsic_color.txt")
            Kd4 = read_matrix(scene_dir / "intrinsic" / "intrinsic_depth.txt")
            for name in ("extrinsic_color.txt", "extrinsic_depth.txt"):
                p = scene_dir / "intrinsic" / name
                if p.is_file() and not np.allclose(read_matrix(p), np.eye(4), atol=1e-6):
                    yield Rejection(str(p), "bad_calibration", "depth and colour extrinsics are not identity; only registered exports are supported")
                    return
        except (FileNotFoundError, ValueError) as e:
            yield Rejection(str(scene_dir / "intrinsic"), "bad_calibration", str(e))
            return

        def _size(w: str, h: str) -> tuple[int, int] | None:
            return (int(info[w]), int(info[h])) if w in info and h in info else None

        color_calib, depth_calib = _size("colorWidth", "colorHeight"), _size("depthWidth", "depthHeight")
        ids = sorted(_frame_ids(scene_dir / "color", ".jpg"), key=int)[::stride]
        if not ids:
            yield Rejection(str(scene_dir / "color"), "missing_file", "no <i>.jpg colour frames")
            return

        K_depth: Intrinsics | None = None
        frames: list[FrameSource] = []
        for fid in ids:
            color, depth, pose = scene_dir / "color" / f"{fid}.jpg", scene_dir / "depth" / f"{fid}.png", scene_dir / "pose" / f"{fid}.txt"
            try:
                if not pose.is_file():
                    raise FrameError("missing_file", f"{pose} does not exist")
                if not depth.is_file():
                    raise FrameError("missing_file", f"{depth} does not exist")
                try:
                    T_world_from_cam = read_matrix(pose)
                except ValueError as e:
                    raise FrameError("bad_pose", str(e)) from None
                T = pose_from_cam_to_world(T_world_from_cam, str(pose))
                size = image_size(color)
                try:
                    K_color = _calibrated_intrinsics(Kc4, color_calib, size, str(scene_dir / "intrinsic" / "intrinsic_color.txt"))
                    if K_depth is None:
                        K_depth = _calibrated_intrinsics(Kd4, depth_calib, _depth_size(depth), str(scene_dir / "intrinsic" / "intrinsic_depth.txt"))
                except ValueError as e:
                    raise FrameError("bad_calibration", str(e)) from None
            except FrameError as e:
                yield Rejection(str(color), e.reason, e.detail)
                continue
            view = View(image=f"{unit}/color/{fid}.jpg", intrinsics=K_color.to_list(), T_cam_from_world=T.tolist())
            frames.append(FrameSource(fid, view, _depth_loader(depth, K_depth, K_color, T), str(depth)))

        cfg = SceneConfig.from_options(self.name, unit, self.options, metric_scale=True, max_gap=300)
        yield from scene_records(frames, cfg)


def _depth_size(path: Path) -> tuple[int, int]:
    depth = read_depth_png(path)
    return depth.shape[1], depth.shape[0]


def _depth_loader(path: Path, K_depth: Intrinsics, K_color: Intrinsics, T: np.ndarray):
    def load(rng: np.random.Generator, n: int) -> FrameData:
        depth = read_depth_png(path, (K_depth.height, K_depth.width)).astype(np.float32) / DEPTH_SCALE
        return pinhole_frame(depth, K_depth, T, rng, n, K_image=K_color)

    return load
