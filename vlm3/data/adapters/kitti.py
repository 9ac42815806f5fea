"""KITTI depth (annotated ground truth of the depth prediction/completion benchmark) on KITTI raw images.

Expected tree (``ROOT`` is the folder given to the adapter; the two sub-folders are the archives
as distributed, extracted in place)::

    ROOT/
      data_depth_annotated/                       # data_depth_annotated.zip
        train/<drive>/proj_depth/groundtruth/image_02/<frame>.png
        train/<drive>/proj_depth/groundtruth/image_03/<frame>.png
        val/<drive>/...
      raw/                                        # KITTI raw "synced+rectified" drives and calibration
        <date>/calib_cam_to_cam.txt               # e.g. raw/2011_09_26/calib_cam_to_cam.txt
        <date>/<drive>/image_02/data/<frame>.png  # e.g. raw/2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000005.png
        <date>/<drive>/image_03/data/<frame>.png

``<drive>`` is e.g. ``2011_09_26_drive_0001_sync`` and ``<date>`` its first 10 characters.
The folder names can be changed with ``options.extra["depth_dir"]`` / ``["raw_dir"]``.

Labels. Ground-truth PNGs are uint16 with depth = value / 256 metres and 0 = no measurement;
they are z-depth (accumulated LiDAR points' z in the rectified camera frame). Query pixels are
sampled among measured pixels only.

Intrinsics. From ``P_rect_02`` (``P_rect_03`` for image_03) of ``calib_cam_to_cam.txt``: the
rectified 3x4 projection [fx 0 cx -fx*b; 0 fy cy 0; 0 0 1 0]; its left 3x3 is the pinhole matrix
of the rectified image (no distortion). KITTI's calibration follows the OpenCV convention (centre of
the top-left pixel at (0, 0)), so it is converted with ``Intrinsics.from_center_origin``. The
image size is that of the ground-truth PNG, which must equal the RGB image's.

Cameras. ``options.extra["cameras"]``: comma-separated, default ``"image_02"``; use
``"image_02,image_03"`` for both colour cameras. Split: ``options.split`` selects the
``train`` or ``val`` folder, ``"all"`` both; records carry the folder's name as split.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, Rejection, register
from vlm3.data.adapters.kit import image_size
from vlm3.data.records import Record
from vlm3.data.sampling import item_rng, resolve_count, sample_pixels, values_at
from vlm3.data.scenes import FrameError
from vlm3.data.validate import make_record
from vlm3.geometry.camera import Intrinsics

CAMERAS = ("image_02", "image_03")
SPLITS = ("train", "val")
DEPTH_SCALE = 256.0  # PNG value / 256 = metres


def read_calib(path: Path) -> dict[str, np.ndarray]:
    """Numeric entries of a KITTI calibration text file (``key: v1 v2 ...``); others are skipped."""
    out: dict[str, np.ndarray] = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        key, _, values = line.partition(":")
        try:
            out[key.strip()] = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError:
            continue  # e.g. "calib_time: 09-Jan-2012 13:57:47"
    return out


def rect_intrinsics(calib: dict[str, np.ndarray], camera: str, width: int, height: int, source: str) -> Intrinsics:
    """Intrinsics of a rectified colour camera from ``P_rect_0X`` (OpenCV origin -> corner origin)."""
    key = f"P_rect_{camera[-2:]}"
    if key not in calib:
        raise ValueError(f"{source}: no '{key}' entry")
    P = calib[key]
    if P.size != 12:
        raise ValueError(f"{source}: '{key}' has {P.size} numbers, expected 12 (3x4)")
    P = P.reshape(3, 4)
    if abs(P[0, 1]) > 1e-9 or abs(P[1, 0]) > 1e-9 or abs(P[2, 2] - 1) > 1e-9:
        raise ValueError(f"{source}: '{key}' = {P.tolist()} is not a rectified pinhole projection")
    return Intrinsics.from_center_origin(P[0, 0], P[1, 1], P[0, 2], P[1, 2], width, height)


@register
class KITTIDepthAdapter(Adapter):
    """KITTI depth annotated ground truth -> single-view depth records (z-depth, metres)."""

    name: ClassVar[str] = "kitti"
    description: ClassVar[str] = "KITTI depth annotated ground truth with KITTI raw RGB (outdoor driving, z-depth in metres)"
    layout: ClassVar[str] = (
        "ROOT/data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_02/<frame>.png  (uint16, m = v/256, 0 = invalid)\n"
        "ROOT/raw/<date>/calib_cam_to_cam.txt                                 (P_rect_02, P_rect_03)\n"
        "ROOT/raw/<date>/<drive>/image_02/data/<frame>.png                    (RGB; image_03 likewise)"
    )
    labels: ClassVar[tuple[str, ...]] = ("depth",)

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        self.depth_dir = self.root / self.options.extra.get("depth_dir", "data_depth_annotated")
        self.raw_dir = self.root / self.options.extra.get("raw_dir", "raw")
        self.cameras = tuple(c.strip() for c in self.options.extra.get("cameras", "image_02").split(",") if c.strip())
        bad = [c for c in self.cameras if c not in CAMERAS]
        if bad or not self.cameras:
            raise ValueError(f"{self.name}: extra cameras={self.options.extra.get('cameras')!r}; choose from {CAMERAS}")
        self.n_points = resolve_count(self.options.points)
        for d in (self.depth_dir, self.raw_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{self.name}: folder {d} not found (expected layout:\n{self.layout})")
        present = [s for s in SPLITS if (self.depth_dir / s).is_dir()]
        if self.options.split == "all":
            self.splits = present
        elif self.options.split in present:
            self.splits = [self.options.split]
        else:
            raise ValueError(f"{self.name}: split={self.options.split!r} not found in {self.depth_dir} "
                             f"(present: {', '.join(present) or 'none'}; or use 'all')")

    def units(self) -> list[str]:
        """One unit per ``<split>/<drive>``."""
        return sorted(f"{s}/{d.name}" for s in self.splits for d in (self.depth_dir / s).iterdir() if d.is_dir())

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        split, _, drive = unit.partition("/")
        if split not in SPLITS or not drive:
            raise ValueError(f"{self.name}: bad unit {unit!r}, expected '<train|val>/<drive>'")
        date = drive[:10]
        calib_path = self.raw_dir / date / "calib_cam_to_cam.txt"
        if not calib_path.is_file():
            yield Rejection(str(calib_path.relative_to(self.root)), "missing_file", f"no calibration for drive {drive}")
            return
        try:
            calib = read_calib(calib_path)
        except (OSError, UnicodeDecodeError) as e:
            yield Rejection(str(calib_path.relative_to(self.root)), "bad_calibration", str(e))
            return
        for camera in self.cameras:
            gt_dir = self.depth_dir / split / drive / "proj_depth" / "groundtruth" / camera
            for gt_path in sorted(gt_dir.glob("*.png")):
                yield self._record(split, drive, camera, gt_path, calib, calib_path)

    def _record(self, split: str, drive: str, camera: str, gt_path: Path, calib: dict, calib_path: Path) -> Record | Rejection:
        source = str(gt_path.relative_to(self.root))
        frame = gt_path.stem
        rgb_path = self.raw_dir / drive[:10] / drive / camera / "data" / gt_path.name
        if not rgb_path.is_file():
            return Rejection(source, "missing_file", f"{rgb_path.relative_to(self.root)} not found")
        raw = cv2.imread(str(gt_path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            return Rejection(source, "unreadable_file", "cannot decode the PNG")
        if raw.dtype != np.uint16 or raw.ndim != 2:
            return Rejection(source, "unreadable_file", f"expected a single-channel uint16 PNG, got {raw.dtype} {raw.shape}")
        height, width = raw.shape
        try:
            rgb_size = image_size(rgb_path)  # displayed size (EXIF orientation), pixel cap
        except FrameError as e:
            return Rejection(source, e.reason, f"{rgb_path.relative_to(self.root)}: {e.detail}")
        if rgb_size != (width, height):
            return Rejection(source, "size_mismatch", f"depth is {width}x{height} but the RGB image is {rgb_size[0]}x{rgb_size[1]}")
        try:
            K = rect_intrinsics(calib, camera, width, height, str(calib_path.relative_to(self.root)))
        except ValueError as e:
            return Rejection(source, "bad_calibration", str(e))
        valid = raw > 0
        if not valid.any():
            return Rejection(source, "no_valid_depth", "every ground-truth value is 0 (no measurement)")
        pixels = sample_pixels(valid, self.n_points, item_rng(self.options.seed, f"{self.name}/{drive}/{camera}/{frame}"))
        depth = values_at(raw, pixels).astype(np.float64) / DEPTH_SCALE
        return make_record(
            source,
            id=f"{self.name}/{drive}/{camera}/{frame}",
            dataset=self.name,
            split=split,
            views=[{"image": str(rgb_path.relative_to(self.root)), "intrinsics": K.to_list()}],
            depth={"pixels": pixels.tolist(), "depth": depth.tolist(), "depth_type": "z"},
            meta={"source": source, "drive": drive, "camera": camera, "frame": frame},
        )

    def manifest_info(self) -> dict:
        return {
            "source": "KITTI depth annotated (data_depth_annotated) + KITTI raw synced/rectified",
            "depth_type": "z",
            "depth_units": "m",
            "cameras": ",".join(self.cameras),
            "intrinsics": "P_rect_0X of calib_cam_to_cam.txt, centre-origin converted (+0.5)",
        }
