"""NYU Depth v2, labelled set: 1449 indoor Kinect RGB-D frames in one MATLAB v7.3 file.

Expected tree (``ROOT`` is the folder given to the adapter)::

    ROOT/
      nyu_depth_v2_labeled.mat   # MATLAB v7.3 (= HDF5), read with h5py
      splits.mat                 # optional: official split, trainNdxs / testNdxs (1-based)
      vlm3_cache/nyuv2/rgb/0001.png ...   # written by this adapter (see below)

Storage. MATLAB writes column-major arrays, so in HDF5 the dimensions are reversed: ``images``
(MATLAB 480x640x3xN, uint8) is stored as N x 3 x W x H and ``depths`` (480x640xN, metres) as
N x W x H. Both are transposed back to numpy (H, W[, 3]). A file re-saved in numpy order
(N x 3 x H x W, N x H x W) is also accepted; since W = 640 != H = 480 the two are unambiguous.

Images. The RGB frames live inside the .mat file, so they are written once as PNG under
``ROOT/vlm3_cache/nyuv2/rgb/<index>.png`` (index 1-based, as in MATLAB and splits.mat) and records
reference that path relative to ROOT. Existing cache files are reused. A read-only ROOT raises a
clear error (copy or link the .mat file into a writable folder).

Labels. ``depths`` are z-depth in metres, already registered to the RGB frame and in-painted by
the dataset authors (so every pixel has a value; ``options.extra["depth_key"] = "rawDepths"``
uses the raw, holey maps instead, 0 = invalid). Images are undistorted by the toolbox, so
views carry no distortion. By default query pixels are sampled inside the standard evaluation
crop (rows 45..470, cols 41..600, Eigen et al.), which excludes the white border left by
registration; ``options.extra["crop"] = "none"`` samples the full frame.

Intrinsics. The standard Kinect RGB calibration of the NYU toolbox (camera_params.m):
fx = 518.8579, fy = 519.4696, cx = 325.5824, cy = 253.7362 in the 640x480 frame. It was made
with the Bouguet MATLAB calibration toolbox, whose convention puts the centre of the top-left
pixel at (0, 0); we therefore convert with ``Intrinsics.from_center_origin`` (cx, cy + 0.5).
(The toolbox's own back-projection evaluates 1-based pixel grids, which would imply cx - 0.5;
the 1 px difference is within the calibration's principal-point uncertainty.)

Split. With splits.mat, each record carries its official split ("train"/"test") and
``options.split`` selects one of them ("all" keeps both). Without it, every frame is converted
and labelled ``options.split``; ``meta["official_split"]`` says which case applied.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, Rejection, register
from vlm3.data.records import Record
from vlm3.data.sampling import item_rng, resolve_count, sample_pixels, values_at
from vlm3.data.validate import make_record
from vlm3.geometry.camera import Intrinsics

MAT_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
CACHE_DIR = "vlm3_cache/nyuv2/rgb"
WIDTH, HEIGHT = 640, 480
# Kinect RGB intrinsics from the NYU toolbox, centre-of-top-left-pixel origin (see module doc).
NYU_K = Intrinsics.from_center_origin(518.8579, 519.4696, 325.5824, 253.7362, WIDTH, HEIGHT)
EIGEN_CROP = (45, 471, 41, 601)  # rows [45, 471), cols [41, 601) of the 640x480 frame
UNIT_SIZE = 100  # frames per work unit


def _open_h5(path: Path):
    import h5py  # optional dependency, only needed for this dataset

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: cannot open as MATLAB v7.3/HDF5 ({e})") from None


def _frame_layout(shape: tuple[int, ...], name: str, path: Path) -> bool:
    """True if per-frame arrays are MATLAB-transposed (W, H), False if numpy (H, W)."""
    if shape[-2:] == (WIDTH, HEIGHT):
        return True
    if shape[-2:] == (HEIGHT, WIDTH):
        return False
    raise ValueError(f"{path}: dataset '{name}' has shape {shape}; expected frames of {WIDTH}x{HEIGHT} "
                     f"(stored {WIDTH}x{HEIGHT} as MATLAB v7.3 does, or {HEIGHT}x{WIDTH})")


def read_splits(path: Path) -> dict[int, str]:
    """Official split from ``splits.mat``: 1-based frame index -> "train" / "test"."""
    try:
        from scipy.io import loadmat

        data = {k: np.asarray(v) for k, v in loadmat(path).items() if k in ("trainNdxs", "testNdxs")}
    except NotImplementedError:  # a v7.3 file: HDF5
        with _open_h5(path) as f:
            data = {k: np.asarray(f[k]) for k in ("trainNdxs", "testNdxs") if k in f}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read split file ({e})") from None
    out: dict[int, str] = {}
    for key, split in (("trainNdxs", "train"), ("testNdxs", "test")):
        if key not in data:
            raise ValueError(f"{path}: missing variable '{key}'")
        for idx in data[key].astype(np.int64).ravel().tolist():
            if idx < 1:
                raise ValueError(f"{path}: {key} holds index {idx}; indices are 1-based")
            out[int(idx)] = split
    return out


@register
class NYUv2Adapter(Adapter):
    """NYU Depth v2 labelled set -> single-view depth records (z-depth, metres)."""

    name: ClassVar[str] = "nyuv2"
    description: ClassVar[str] = "NYU Depth v2 labelled set (1449 indoor RGB-D frames, Kinect, z-depth in metres)"
    layout: ClassVar[str] = (
        "ROOT/nyu_depth_v2_labeled.mat   (MATLAB v7.3: images N x 3 x 640 x 480 uint8, depths N x 640 x 480 metres)\n"
        "ROOT/splits.mat                 (optional: trainNdxs, testNdxs, 1-based)\n"
        "ROOT/vlm3_cache/nyuv2/rgb/NNNN.png  (written by the adapter; ROOT must be writable)"
    )
    labels: ClassVar[tuple[str, ...]] = ("depth",)

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        self.mat_path = self.root / MAT_FILE
        if not self.mat_path.is_file():
            raise FileNotFoundError(f"{self.name}: {self.mat_path} not found (expected layout:\n{self.layout})")
        self.depth_key = self.options.extra.get("depth_key", "depths")
        if self.depth_key not in ("depths", "rawDepths"):
            raise ValueError(f"{self.name}: extra depth_key={self.depth_key!r} must be 'depths' or 'rawDepths'")
        self.crop = self.options.extra.get("crop", "eigen")
        if self.crop not in ("eigen", "none"):
            raise ValueError(f"{self.name}: extra crop={self.crop!r} must be 'eigen' or 'none'")
        self.n_points = resolve_count(self.options.points)
        with _open_h5(self.mat_path) as f:
            for key in ("images", self.depth_key):
                if key not in f:
                    raise ValueError(f"{self.mat_path}: no dataset '{key}' (found: {', '.join(sorted(f.keys()))})")
            img_shape, dep_shape = tuple(f["images"].shape), tuple(f[self.depth_key].shape)
        if len(img_shape) != 4 or img_shape[1] != 3:
            raise ValueError(f"{self.mat_path}: 'images' has shape {img_shape}, expected N x 3 x {WIDTH} x {HEIGHT}")
        if len(dep_shape) != 3 or dep_shape[0] != img_shape[0]:
            raise ValueError(f"{self.mat_path}: '{self.depth_key}' has shape {dep_shape}, expected {img_shape[0]} x {WIDTH} x {HEIGHT}")
        self.img_transposed = _frame_layout(img_shape, "images", self.mat_path)
        self.dep_transposed = _frame_layout(dep_shape, self.depth_key, self.mat_path)
        self.count = img_shape[0]
        split_path = self.root / SPLITS_FILE
        self.splits = read_splits(split_path) if split_path.is_file() else None
        if self.splits is not None and self.options.split not in ("train", "test", "all"):
            raise ValueError(f"{self.name}: split={self.options.split!r}; splits.mat defines 'train' and 'test' (or use 'all')")

    def units(self) -> list[str]:
        """Chunks of 1-based frame indices, e.g. ``"0001-0100"``."""
        return [f"{s:04d}-{min(s + UNIT_SIZE - 1, self.count):04d}" for s in range(1, self.count + 1, UNIT_SIZE)]

    def _split_of(self, index: int) -> str | None:
        if self.splits is None:
            return self.options.split
        split = self.splits.get(index)
        if split is None or (self.options.split != "all" and split != self.options.split):
            return None
        return split

    def _valid_mask(self, depth: np.ndarray) -> np.ndarray:
        valid = np.isfinite(depth) & (depth > 0)
        if self.crop == "eigen":
            r0, r1, c0, c1 = EIGEN_CROP
            region = np.zeros_like(valid)
            region[r0:r1, c0:c1] = True
            valid &= region
        return valid

    def _write_image(self, rel: str, rgb: np.ndarray) -> None:
        path = self.root / rel
        if path.is_file():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + ".tmp.png")
            if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
                raise OSError(f"cv2.imwrite failed for {tmp}")
            os.replace(tmp, path)  # atomic: a crash never leaves a half-written image in the cache
        except OSError as e:
            raise OSError(
                f"{self.name}: cannot write the image cache {path.parent} ({e}); NYUv2 stores RGB inside "
                f"{MAT_FILE}, so ROOT must be writable: copy or link the .mat file into a writable folder"
            ) from None

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        try:
            start, end = (int(x) for x in unit.split("-"))
        except ValueError:
            raise ValueError(f"{self.name}: bad unit {unit!r}, expected 'NNNN-NNNN'") from None
        if not (1 <= start <= end <= self.count):
            raise ValueError(f"{self.name}: unit {unit!r} outside frames 1..{self.count}")
        with _open_h5(self.mat_path) as f:
            images, depths = f["images"], f[self.depth_key]
            for index in range(start, end + 1):
                split = self._split_of(index)
                if split is None:
                    continue  # not in the requested split: skipped by choice, not an error
                source = f"{MAT_FILE}[{index}]"
                img = np.asarray(images[index - 1])
                depth = np.asarray(depths[index - 1], dtype=np.float64)
                # HDF5 holds the MATLAB array transposed: (3, W, H) and (W, H).
                img = img.transpose(2, 1, 0) if self.img_transposed else img.transpose(1, 2, 0)
                depth = depth.T if self.dep_transposed else depth
                if img.dtype != np.uint8:
                    yield Rejection(source, "unreadable_file", f"images dtype is {img.dtype}, expected uint8")
                    continue
                valid = self._valid_mask(depth)
                if not valid.any():
                    yield Rejection(source, "no_valid_depth", f"no finite positive '{self.depth_key}' value in the sampled region")
                    continue
                pixels = sample_pixels(valid, self.n_points, item_rng(self.options.seed, f"{self.name}/{index}"))
                rel = f"{CACHE_DIR}/{index:04d}.png"
                self._write_image(rel, np.ascontiguousarray(img))
                yield make_record(
                    source,
                    id=f"{self.name}/{index:04d}",
                    dataset=self.name,
                    split=split,
                    views=[{"image": rel, "intrinsics": NYU_K.to_list()}],
                    depth={"pixels": pixels.tolist(), "depth": values_at(depth, pixels).tolist(), "depth_type": "z"},
                    meta={
                        "source": source,
                        "source_index": index,
                        "depth_key": self.depth_key,
                        "official_split": self.splits is not None,
                        "crop": self.crop,
                    },
                )

    def manifest_info(self) -> dict:
        return {
            "source": "NYU Depth v2 labelled set (nyu_depth_v2_labeled.mat)",
            "depth_type": "z",
            "depth_units": "m",
            "depth_key": self.depth_key,
            "intrinsics": "Kinect RGB, toolbox camera_params.m, centre-origin converted (+0.5)",
            "image_cache": CACHE_DIR,
        }
