"""ETH3D high-resolution multi-view benchmark (DSLR): metric depth and covisible posed pairs.

Conventions of the source and how they are converted
----------------------------------------------------
- Calibrations are COLMAP text models read with pycolmap. COLMAP images store
  **camera-from-world** (quaternion, translation), which is what records store: no inversion.
  COLMAP's pixel convention puts the centre of the top-left pixel at (0.5, 0.5), which is
  exactly vlm3's corner-origin convention: intrinsics are used as they are.
- Record images are the undistorted JPEGs (``images/dslr_images_undistorted``) with the PINHOLE
  cameras of ``dslr_calibration_undistorted``.
- The ground-truth depth maps (``ground_truth_depth/dslr_images/<name>.JPG``, despite the suffix
  raw little-endian float32, row-major, z-depth in metres, inf = invalid) belong to the
  **original distorted** images: their size and pixel grid are those of the THIN_PRISM_FISHEYE
  cameras in ``dslr_calibration_jpg``. Each labelled pixel is therefore a depth pixel centre,
  un-distorted to its exact camera ray with the fisheye model and projected into the pinhole
  camera; its z-depth is unchanged (same camera, same pose). Covisibility and the occlusion check
  use a pinhole z-buffer of the depth at 1/``grid_downsample`` resolution.
- Without ``dslr_calibration_jpg`` or ``ground_truth_depth`` a scene still yields pose pairs,
  with covisibility and matches from the SfM points shared by the two images (``points3D.txt``),
  plus one ``missing_depth_calibration`` rejection saying why there are no depth labels.
- Options ``scenes`` / ``max_scenes`` / ``exclude_images`` select scenes and leave images out
  (``vlm3.data.adapters.colmap_scenes.select_scenes``). Depth-Anything-3's ETH3D pose benchmark
  (``src/depth_anything_3/utils/constants.py``: ``ETH3D_SCENES``, ``ETH3D_FILTER_KEYS``) uses 11
  of the 13 training scenes (no meadow, terrace: "known issues") and drops 39 images "with unusual
  camera rotations"; the ``eth3d-pose`` bench passes both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vlm3.data.adapters.base import Adapter, LayoutError, Rejection, option_int, register
from vlm3.data.adapters.colmap_scenes import excluded_image, select_scenes
from vlm3.data.adapters.kit import cam_from_world, image_size, load_reconstruction
from vlm3.data.covis import pinhole_projector
from vlm3.data.scenes import FrameData, FrameError, FrameSource, SceneConfig, ray_frame, scene_records, sfm_frame
from vlm3.data.records import Record, View
from vlm3.geometry.camera import Intrinsics
from vlm3.geometry.pose import rotation_angle_deg

UNDISTORTED = "dslr_calibration_undistorted"
DISTORTED = "dslr_calibration_jpg"
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")


def pinhole_intrinsics(camera) -> Intrinsics:
    """Intrinsics of a pycolmap PINHOLE / SIMPLE_PINHOLE camera (COLMAP pixels = corner-origin)."""
    name = camera.model_name
    p = list(camera.params)
    if name == "PINHOLE":
        fx, fy, cx, cy = p
    elif name == "SIMPLE_PINHOLE":
        fx, cx, cy = p
        fy = fx
    else:
        raise ValueError(f"camera {camera.camera_id} is {name}, expected one of {PINHOLE_MODELS}")
    return Intrinsics(fx, fy, cx, cy, camera.width, camera.height)


def read_eth3d_depth(path: Path, width: int, height: int) -> np.ndarray:
    """ETH3D raw float32 depth (metres, inf = invalid) -> (height, width) float32; FrameError when bad."""
    if not path.is_file():
        raise FrameError("missing_file", f"{path} does not exist")
    size = path.stat().st_size
    if size != width * height * 4:
        raise FrameError("size_mismatch", f"{path}: {size} bytes, expected {width}x{height} float32 = {width * height * 4}")
    depth = np.fromfile(path, dtype="<f4").reshape(height, width)
    if not (np.isfinite(depth) & (depth > 0)).any():
        raise FrameError("no_valid_depth", f"{path}: no finite positive depth")
    return depth


def _fisheye_loader(depth_path: Path, cam_d, K: Intrinsics, T: np.ndarray, down: int):
    def rays(uv: np.ndarray) -> np.ndarray:
        xy = np.asarray(cam_d.cam_from_img(np.ascontiguousarray(uv, dtype=np.float64)), dtype=np.float64).reshape(-1, 2)
        return np.concatenate([xy, np.ones((len(xy), 1))], axis=1)

    def load(rng: np.random.Generator, n: int) -> FrameData:
        depth = read_eth3d_depth(depth_path, cam_d.width, cam_d.height)
        f = 1.0 / down
        K_grid = K.scaled(f, f, width=max(1, K.width // down), height=max(1, K.height // down))
        return ray_frame(
            depth, rays, T, rng, n,
            to_image=pinhole_projector(K), K_grid=K_grid, same_grid=False, splat_stride=max(1, down // 2),
        )

    return load


def _sfm_loader(rec, image, T: np.ndarray, K: Intrinsics):
    def load(rng: np.random.Generator, n: int) -> FrameData:
        ids = np.array([p.point3D_id for p in image.points2D if p.has_point3D()], dtype=np.int64)
        if ids.size == 0:
            raise FrameError("no_labels", f"image {image.name} observes no 3D point")
        xyz = np.array([rec.points3D[int(i)].xyz for i in ids], dtype=np.float64)
        return sfm_frame(xyz, ids, T, pinhole_projector(K), K)

    return load


@register
class ETH3DAdapter(Adapter):
    """ETH3D high-res multi-view DSLR scenes -> depth records and covisible pose/correspondence pairs."""

    name = "eth3d"
    description = "ETH3D high-res multi-view (DSLR, undistorted): metric z-depth from the laser scans, covisible posed pairs"
    layout = """\
ROOT/
  courtyard/
    images/dslr_images_undistorted/DSC_0286.JPG ...       record images (PINHOLE)
    dslr_calibration_undistorted/{cameras,images,points3D}.txt   COLMAP text, camera-from-world
    dslr_calibration_jpg/{cameras,images,points3D}.txt    distorted THIN_PRISM_FISHEYE model
                                                          (from the *_dslr_jpg archive; its
                                                          camera grid is the depth maps' grid)
    ground_truth_depth/dslr_images/DSC_0286.JPG ...       raw float32 z-depth (m), inf = invalid
options.extra: grid_downsample (4), min_gap, max_gap (none), match_points, depth_tolerance (0.05),
               candidates, max_tries, depth_records, pair_records, random_order,
               scenes (a,b | @FILE), max_scenes, exclude_images ([scene:]name ending, e.g. delivery_area:711.JPG)
"""
    labels = ("depth", "poses", "matches")

    def units(self) -> list[str]:
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / UNDISTORTED).is_dir())
        if not found:
            raise LayoutError(f"{self.root}: no scene folder with {UNDISTORTED}/ found; expected:\n{self.layout}")
        return select_scenes(self.root, found, self.options)

    def manifest_info(self) -> dict:
        return {
            "source": "ETH3D high-res multi-view (DSLR, undistorted images)",
            "depth_type": "z",
            "depth_units": "float32 metres (inf = invalid), on the distorted grid, mapped to the undistorted images",
            "pose_source": "COLMAP camera-from-world",
            "metric_scale": True,
        }

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        scene = self.root / unit
        down = option_int(self.options, "grid_downsample", 4, minimum=1) or 4
        try:
            rec = load_reconstruction(scene / UNDISTORTED)
        except (FileNotFoundError, ValueError) as e:
            yield Rejection(str(scene / UNDISTORTED), "bad_calibration", str(e))
            return

        depth_dir = scene / "ground_truth_depth" / "dslr_images"
        distorted: dict[str, object] = {}
        rec_d = None
        if (scene / DISTORTED).is_dir() and depth_dir.is_dir():
            try:
                rec_d = load_reconstruction(scene / DISTORTED)
                distorted = {Path(im.name).name: im for im in rec_d.images.values()}
            except ValueError as e:
                yield Rejection(str(scene / DISTORTED), "bad_calibration", str(e))
                return
        else:
            missing = DISTORTED if not (scene / DISTORTED).is_dir() else "ground_truth_depth/dslr_images"
            yield Rejection(
                str(scene / missing),
                "bad_calibration",
                "no depth labels: the ground-truth depth maps live on the distorted image grid, which needs "
                f"{DISTORTED}/ and ground_truth_depth/dslr_images/; pairs use shared SfM points instead",
            )

        frames: list[FrameSource] = []
        for image in sorted(rec.images.values(), key=lambda im: im.name):
            if excluded_image(unit, image.name, self.options):
                continue
            base = Path(image.name).name
            img_path = scene / "images" / image.name
            try:
                if not image.has_pose:
                    raise FrameError("missing_file", f"image {image.name} is not registered")
                cam = rec.cameras[image.camera_id]
                try:
                    K = pinhole_intrinsics(cam)
                except ValueError as e:
                    raise FrameError("bad_calibration", f"{scene / UNDISTORTED}: {e}") from None
                size = image_size(img_path)
                if size != (K.width, K.height):
                    raise FrameError("size_mismatch", f"{img_path}: {size[0]}x{size[1]}, camera {image.camera_id} is {K.width}x{K.height}")
                T = cam_from_world(image)
                if rec_d is not None:
                    im_d = distorted.get(base)
                    if im_d is None:
                        raise FrameError("bad_calibration", f"{base} is not in {scene / DISTORTED}")
                    T_d = cam_from_world(im_d)
                    # Both calibrations describe the same exposure: the depth is only valid for this pose.
                    if rotation_angle_deg(T[:3, :3], T_d[:3, :3]) > 0.01 or np.linalg.norm(T[:3, 3] - T_d[:3, 3]) > 1e-4 * max(1.0, np.linalg.norm(T[:3, 3])):
                        raise FrameError("bad_pose", f"{base}: poses differ between {UNDISTORTED} and {DISTORTED}")
                    load = _fisheye_loader(depth_dir / base, rec_d.cameras[im_d.camera_id], K, T, down)
                    source = str(depth_dir / base)
                else:
                    load, source = _sfm_loader(rec, image, T, K), str(img_path)
            except FrameError as e:
                yield Rejection(str(img_path), e.reason, e.detail)
                continue
            view = View(image=f"{unit}/images/{image.name}", intrinsics=K.to_list(), T_cam_from_world=T.tolist())
            frames.append(FrameSource(Path(base).stem, view, load, source))

        if not frames:
            yield Rejection(str(scene), "missing_file", "no usable images")
            return
        cfg = SceneConfig.from_options(self.name, unit, self.options, metric_scale=True, max_gap=None, depth_records=rec_d is not None)
        yield from scene_records(frames, cfg)
