"""UFM's wide-baseline correspondence benchmarks on ETH3D and DTU (adapters ``ufm-eth3d``, ``ufm-dtu``).

Source: UFM (Zhang et al., "UFM: A Simple Path towards Unified Dense Correspondence with Flow",
arXiv 2506.09278), benchmark code of its training branch (``benchmarks/ufm_benchmarks/benchmarks/
dense_correspondence/{benchmark,widebaseline_datasets}.py``, data loaders ``uniflowmatch/datasets/
{eth3d,dtu}.py``, ground truth ``uniflowmatch/datasets/base/flow_postprocessing.py``). UFM releases
no flow files for these two sets: it releases the *processed* scenes (images, z-depth, intrinsics,
camera-from-world poses; ``preprocess_datasets/preprocess_{eth3d,dtu}.py``, long side 600 px) and
the pair lists (``anymap_data_pairs``), and computes the flow from depth at load time. So does this
adapter. ``ROOT`` is UFM's ``dataset_root`` (``run_benchmark.py``), holding::

    ROOT/                                        # ufm-eth3d
      eth3d_processed/<scene>/
        undistorted_images/<name>.jpg            # 600x400
        undistorted_depths/<name>.npy            # (H, W) float depth, metres, 0 = invalid (UFM: z-depth)
        undistorted_camera_params/<name>.npy     # [fx, fy, cx, cy]
        poses/<name>.npy                         # 4x4 camera-from-world (COLMAP cam_from_world)
      anymap_data_pairs/eth3d_valid_pairs.npz    # "data": rows (scene, name1, name2, score)

    ROOT/                                        # ufm-dtu
      dtu_processed/<scan>/
        images/<name>.png                        # 600x450
        depths/<name>.npy                        # (H, W) float z-depth, millimetres, 0 = invalid
        camera_params/<name>_intrinsics.npy      # 3x3 K
        poses/<name>.npy                         # 4x4 camera-from-world (MVSNet extrinsic)
      anymap_data_pairs/dtu_valid_pairs.npz

Which pairs. UFM evaluates every 3rd pair of ``eth3d_valid_pairs.npz`` (``ETH3D(...)[::3]``) and
every 50th of ``dtu_valid_pairs.npz`` (``DTU(...)[::50]``), view 0 = ``name1``, view 1 = ``name2``
(options ``stride``; record ids carry the pair's index in the full list).

Ground truth (UFM's ``flow_occlusion_post_processing``, reproduced in numpy by :func:`ufm_flow`).
UFM's pixel grid is the integer pixel index with the intrinsics read as OpenCV (centre-origin):
pixel (i, j) of view 0 back-projects to X0 = z * ((i - cx) / fx, (j - cy) / fy, 1), moves to view 1
by T1 @ inv(T0) (camera-from-world files) and projects to uv = (fx1 X/Z + cx1, fy1 Y/Z + cy1);
flow = uv - (i, j). A pixel counts (UFM's ``fov_mask & non_occluded_mask``, its EPE mask) when its
depth is > 0, Z > 0, -0.5 <= u < W - 0.5 and -0.5 <= v < H - 0.5, and it is not occluded: the
distance |X1| differs from view 1's range map (z-depth times the ray length), sampled bilinearly
at uv with zero padding (``grid_sample``, align_corners False), by less than
``a + r * |X1| + ln(2) * t``. (a, t, r) are UFM's: ETH3D (0.1 m, 0.1 m, 0.005) with the defaults of
``static_flow_postprocessing_pathway``; DTU (12, 12, 0.01) in millimetres (``DTUDenseBenchmark``).
ETH3D's pathway also runs 2 Adam steps (``opt_iters=2``) that move each still-occluded target by up
to 0.707 px looking for a depth match; they are not reproduced (their first check is the one
above), so the pixels kept here are a subset of UFM's ETH3D mask (pixels at depth edges may be
left out). Conversion to vlm3's corner origin: a match is (i + 0.5, j + 0.5) -> (i + 0.5, j + 0.5)
+ flow (a displacement needs no shift), so view 1's pixel lies in [0, W) x [0, H). Intrinsics go
into the records as centre-origin (``Intrinsics.from_center_origin``), as UFM reads them (ETH3D's
come from COLMAP's corner-origin cameras.txt; UFM's flow uses them as centre-origin, and so do these
labels, which are UFM's; for focal unification a half-pixel principal-point shift is immaterial).
The ``covisibility`` of a record is the share of view-0 pixels in that mask.

Frame (option ``frame``). UFM scores at 560x420: it rescales each processed view so both sides
cover 560x420 (image Lanczos when shrinking, bicubic when enlarging; depth nearest; K scaled in
COLMAP's corner origin) and crops 560x420 centred (``_crop_resize_if_necessary``), then computes the
flow there, from the resampled depth. ``ufm`` (default) reproduces this (:func:`ufm_crop_resize`;
images decoded with OpenCV as UFM's ``imread_cv2``) and writes the 560x420 views as PNG to
``ROOT/<images_dir>/560x420/<eth3d|dtu>_processed/<scene>/<name>.png`` (option ``images_dir``,
default ``vlm3_images``; atomic, rewritten on every prepare), so EPE is in UFM's pixels, the unit of
the VLM3 paper's table ("rescaled to the same range as UFM"). ``source`` keeps the released 600x400
(ETH3D) / 600x450 (DTU) images; ``meta["ufm_frame_scale"]`` (1.05 / 0.933) then converts errors.
Details that may differ: UFM rounds the crop offset from float32 intrinsics, here from 0.5 x margin
(the same for ETH3D's 70 px and DTU's 0 px margins); UFM computes in float32, here in float64; UFM
turns portrait views (height > 1.1 x width; none in these releases) to landscape, here they stay
portrait (420x560).

Samples: 8,192 per dataset (option ``total``, the VLM3 paper's count) shared over the benchmark
pairs: each of the N pairs gets floor(8192 / N) matches and 8192 mod N pairs, chosen by a seeded
permutation (``options.seed``), one more; within a pair the pixels are drawn uniformly without
replacement from its mask (``sample_pixels``, seeded per pair). A pair with fewer valid pixels than
its share gives all of them; a pair with none is rejected (``no_labels``). Questions thus weight
pairs equally (as UFM's per-pair ``epe_covis_instance``); the EPE UFM prints pools all pixels.
``total=none`` gives every pair ``--points`` matches instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
from PIL import Image

from vlm3.data.adapters.base import Adapter, AdapterOptions, LayoutError, Rejection, option_float, option_int, register
from vlm3.data.adapters.kit import image_size
from vlm3.data.records import Record
from vlm3.data.sampling import item_rng, resolve_count, sample_pixels
from vlm3.data.scenes import FrameError
from vlm3.data.validate import make_record
from vlm3.geometry.camera import Intrinsics

TOTAL_SAMPLES = 8192
"""Matches per dataset in the VLM3 paper's correspondence evaluation."""

UFM_FRAME = (560, 420)
"""(W, H) at which UFM's benchmark computes flow and EPE."""

PAIRS_PER_UNIT = 25

FRAMES = ("ufm", "source")
"""Option ``frame``: UFM's evaluation frame (560x420 images written under the root) or the release's pixels."""


# --- shared: sample shares ------------------------------------------------------------------------


def sample_shares(n_pairs: int, total: int, seed: int, key: str) -> np.ndarray:
    """Matches per pair: ``total`` split over ``n_pairs`` as evenly as possible, the remainder going
    to a seeded random subset of pairs (deterministic from ``seed`` and ``key`` alone)."""
    if n_pairs <= 0:
        return np.zeros(0, dtype=np.int64)
    shares = np.full(n_pairs, total // n_pairs, dtype=np.int64)
    extra = item_rng(seed, f"{key}/shares").permutation(n_pairs)[: total % n_pairs]
    shares[extra] += 1
    return shares


def total_option(options: AdapterOptions) -> int | None:
    """Option ``total`` (default 8192; ``none``: ``--points`` per pair instead)."""
    return option_int(options, "total", TOTAL_SAMPLES, minimum=1)


def ufm_frame_scale(width: int, height: int) -> float:
    """UFM's rescale factor to 560x420 (``rescale_image_depthmap``: both sides >= the target;
    420x560 for portrait images, height > 1.1 x width)."""
    w, h = UFM_FRAME[::-1] if height > 1.1 * width else UFM_FRAME
    return max(w / width, h / height)


def frame_option(options: AdapterOptions) -> str:
    """Option ``frame``: ``ufm`` (default; UFM's 560x420 evaluation frame) or ``source``."""
    frame = str(options.extra.get("frame", "ufm")).strip().lower()
    if frame not in FRAMES:
        raise ValueError(f"option extra['frame']={frame!r}: choose one of {', '.join(FRAMES)}")
    return frame


def images_dir_option(options: AdapterOptions, name: str) -> str:
    """Option ``images_dir`` (default ``vlm3_images``): where images are written, inside the root."""
    folder = str(options.extra.get("images_dir", "vlm3_images"))
    if not folder or Path(folder).is_absolute() or ".." in Path(folder).parts:
        raise ValueError(f"{name}: images_dir={folder!r} must be a folder inside the dataset root")
    return folder


def write_png(path: Path, img: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image as PNG atomically (parallel writers of the same content are safe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(img).save(tmp, format="PNG")
    os.replace(tmp, path)


def ufm_crop_resize(image: np.ndarray, depth: np.ndarray, K: np.ndarray, resolution: tuple[int, int] = UFM_FRAME):
    """UFM's ``_crop_resize_if_necessary`` (DUSt3R's cropping; aug_crop and portrait/landscape
    augmentation off): rescale so both sides cover ``resolution`` (image Lanczos when shrinking,
    bicubic when enlarging; depth nearest, ``cv2.resize``), then crop ``resolution`` centred
    (offset rounded). ``K`` is centre-origin (OpenCV), as UFM keeps it. -> (image, depth, K)."""
    H, W = depth.shape
    res = tuple(resolution) if not H > 1.1 * W else tuple(resolution)[::-1]  # portrait
    size = np.array([W, H], dtype=np.float64)
    scale = float(max(np.array(res) / size)) + 1e-8
    out = np.floor(size * scale).astype(int)
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    img = Image.fromarray(image).resize((int(out[0]), int(out[1])), resample=resample)
    depth = cv2.resize(depth, (int(out[0]), int(out[1])), interpolation=cv2.INTER_NEAREST)
    K = np.array(K, dtype=np.float64)
    K[:2, 2] += 0.5  # camera_matrix_of_crop works in COLMAP's corner origin
    K[:2, :] *= scale
    K[:2, 2] -= 0.5 * (size * scale - out)
    K[:2, 2] -= 0.5
    left, top = (int(v) for v in np.round(0.5 * (out - np.array(res))))  # bbox_from_intrinsics_in_out
    img = img.crop((left, top, left + res[0], top + res[1]))
    depth = depth[top : top + res[1], left : left + res[0]]
    K[0, 2] -= left
    K[1, 2] -= top
    return np.asarray(img), depth, K


def matches_from_flow(mask: np.ndarray, flow: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n`` pixels of ``mask`` -> (corner-origin centres in view 0, their targets in view 1).

    ``flow`` is (H, W, 2), target = pixel index + flow (the same displacement in any origin)."""
    p0 = sample_pixels(mask, n, rng)
    ij = np.floor(p0).astype(np.int64)
    p1 = p0 + flow[ij[:, 1], ij[:, 0]]
    return p0, p1


# --- shared: UFM's flow and covisibility from depth -----------------------------------------------


def _bilinear_zero_pad(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``grid_sample(mode=bilinear, padding_mode=zeros, align_corners=False)`` at pixel-index
    coordinates (x, y) (pixel centres at integers); neighbours outside the image count as 0."""
    H, W = image.shape
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    wx, wy = x - x0, y - y0
    out = np.zeros(x.shape, dtype=np.float64)
    for dx, dy, w in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy), (1, 1, wx * wy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        out[inside] += w[inside] * image[yi[inside], xi[inside]]
    return out


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    jj, ii = np.mgrid[0:height, 0:width]
    return ii.astype(np.float64), jj.astype(np.float64)


def ufm_flow(
    depth0: np.ndarray,
    K0: np.ndarray,
    T0: np.ndarray,
    depth1: np.ndarray,
    K1: np.ndarray,
    T1: np.ndarray,
    *,
    abs_threshold: float,
    temperature: float,
    rel_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """UFM's ground truth view 0 -> view 1 from z-depth maps, 3x3 K (centre origin) and 4x4
    camera-from-world poses: (flow (H, W, 2) in pixels, mask (H, W) of pixels UFM scores).

    See the module doc; ``opt_iters`` = 0 (the first occlusion check only)."""
    H, W = depth0.shape
    H1, W1 = depth1.shape
    ii, jj = _grid(H, W)
    z = np.asarray(depth0, dtype=np.float64)
    fx0, fy0, cx0, cy0 = K0[0, 0], K0[1, 1], K0[0, 2], K0[1, 2]
    X0 = np.stack([(ii - cx0) / fx0 * z, (jj - cy0) / fy0 * z, z], axis=-1)
    T = np.asarray(T1, dtype=np.float64) @ np.linalg.inv(np.asarray(T0, dtype=np.float64))
    X1 = X0 @ T[:3, :3].T + T[:3, 3]
    Z = X1[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K1[0, 0] * X1[..., 0] / Z + K1[0, 2]
        v = K1[1, 1] * X1[..., 1] / Z + K1[1, 2]
    fov = (Z > 0) & (u >= -0.5) & (u < W1 - 0.5) & (v >= -0.5) & (v < H1 - 0.5)
    fov &= np.isfinite(u) & np.isfinite(v)
    flow = np.stack([u - ii, v - jj], axis=-1)
    flow[~fov] = 0.0
    # Occlusion: distance to camera 1 vs view 1's range map at uv (bilinear, zero padding).
    i1, j1 = _grid(H1, W1)
    d1 = np.asarray(depth1, dtype=np.float64)
    range1 = d1 * np.sqrt(((i1 - K1[0, 2]) / K1[0, 0]) ** 2 + ((j1 - K1[1, 2]) / K1[1, 1]) ** 2 + 1.0)
    range1 = np.where(np.isfinite(range1), range1, 0.0)
    expected = np.linalg.norm(X1[fov], axis=-1)
    # grid_sample's normalised grid is clipped to [-1, 1]: index coordinates to [-0.5, W - 0.5].
    xs = np.clip(u[fov], -0.5, W1 - 0.5)
    ys = np.clip(v[fov], -0.5, H1 - 0.5)
    error = np.abs(_bilinear_zero_pad(range1, xs, ys) - expected)
    threshold = abs_threshold + rel_threshold * expected - math.log(0.5) * temperature
    visible = np.zeros_like(fov)
    visible[fov] = error < threshold
    mask = fov & visible & (z > 0) & np.isfinite(z)
    return flow, mask


# --- ETH3D and DTU --------------------------------------------------------------------------------


class _ProcessedPairs(Adapter):
    """UFM's processed-scene benchmarks (ETH3D, DTU): pairs from an npz list, flow from depth."""

    labels: ClassVar[tuple[str, ...]] = ("matches", "poses")
    folder: ClassVar[str] = ""  # ROOT/<folder>/<scene>/...
    pairs_file: ClassVar[str] = ""
    default_stride: ClassVar[int] = 1
    thresholds: ClassVar[tuple[float, float, float]] = (0.0, 0.0, 0.0)  # (abs, temperature, rel)
    metric: ClassVar[bool] = True

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        self.stride = option_int(self.options, "stride", self.default_stride, minimum=1)
        self.total = total_option(self.options)
        self.n_points = resolve_count(self.options.points)
        a, t, r = self.thresholds
        self.abs_threshold = option_float(self.options, "depth_error_threshold", a)
        self.temperature = option_float(self.options, "depth_error_temperature", t)
        self.rel_threshold = option_float(self.options, "relative_depth_error_threshold", r)
        self.frame = frame_option(self.options)
        self.images_dir = images_dir_option(self.options, self.name)
        self._pairs: list[tuple[int, str, str, str]] | None = None

    # layout ----------------------------------------------------------------------------------------
    def _paths(self, scene: str, name: str) -> dict[str, Path]:
        raise NotImplementedError

    def _read_K(self, path: Path) -> np.ndarray:
        raise NotImplementedError

    def pairs(self) -> list[tuple[int, str, str, str]]:
        """The benchmark pairs: (index in the full list, scene, name1, name2), every ``stride``-th."""
        if self._pairs is None:
            path = self.root / self.pairs_file
            if not (self.root / self.folder).is_dir() or not path.is_file():
                what = f"{self.folder}/" if not (self.root / self.folder).is_dir() else self.pairs_file
                raise LayoutError(f"{self.root}: no {what} found; expected:\n{self.layout}")
            try:
                data = np.load(path, allow_pickle=True)["data"]
                rows = [(int(k), str(row[0]), str(row[1]), str(row[2])) for k, row in enumerate(data)]
            except Exception as e:  # zip, pickle and key errors alike
                raise LayoutError(f"{path}: not a UFM pair list (npz with 'data' rows scene, name1, name2, score): {e}") from None
            self._pairs = rows[:: self.stride]
        return self._pairs

    def units(self) -> list[str]:
        n = len(self.pairs())
        if n == 0:
            raise LayoutError(f"{self.root / self.pairs_file}: the pair list is empty; expected:\n{self.layout}")
        return [f"{i:06d}-{min(i + PAIRS_PER_UNIT, n) - 1:06d}" for i in range(0, n, PAIRS_PER_UNIT)]

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        pairs = self.pairs()
        first, last = (int(v) for v in unit.split("-"))
        shares = sample_shares(len(pairs), self.total, self.options.seed, self.name) if self.total is not None else None
        for pos in range(first, last + 1):
            n = int(shares[pos]) if shares is not None else self.n_points
            yield self._pair(*pairs[pos], n)

    # one pair ----------------------------------------------------------------------------------------
    def _view(self, scene: str, name: str) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray] | Rejection:
        """One view: (record view, z-depth, centre-origin 3x3 K, camera-from-world), in the chosen frame."""
        paths = self._paths(scene, name)
        for key, path in paths.items():
            if not path.is_file():
                return Rejection(str(path.relative_to(self.root)), "missing_file", f"{key} not found")
        rel = str(paths["image"].relative_to(self.root))
        try:
            width, height = image_size(paths["image"])
        except FrameError as e:
            return Rejection(rel, e.reason, e.detail)
        depth_rel = str(paths["depth"].relative_to(self.root))
        try:
            depth = np.load(paths["depth"]).astype(np.float64)
            depth = depth.reshape(depth.shape[:2]) if depth.ndim == 3 and depth.shape[2] == 1 else depth
        except Exception as e:
            return Rejection(depth_rel, "unreadable_file", str(e))
        if depth.shape != (height, width):
            return Rejection(depth_rel, "size_mismatch", f"depth {depth.shape[1]}x{depth.shape[0]} vs image {width}x{height}")
        try:
            K = self._read_K(paths["intrinsics"])
        except (ValueError, OSError) as e:
            return Rejection(str(paths["intrinsics"].relative_to(self.root)), "bad_calibration", str(e))
        try:
            T = np.load(paths["cam_from_world"]).astype(np.float64)
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                raise ValueError(f"expected a finite 4x4 matrix, got shape {T.shape}")
        except (ValueError, OSError) as e:
            return Rejection(str(paths["cam_from_world"].relative_to(self.root)), "bad_pose", str(e))
        if self.frame == "ufm":
            image = cv2.imread(str(paths["image"]), cv2.IMREAD_COLOR)  # UFM's imread_cv2
            if image is None:
                return Rejection(rel, "unreadable_file", "cv2 cannot decode the image")
            image, depth, K = ufm_crop_resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), depth, K)
            rel = f"{self.images_dir}/{UFM_FRAME[0]}x{UFM_FRAME[1]}/{self.folder}/{scene}/{name}.png"
            try:
                write_png(self.root / rel, image)
            except OSError as e:
                return Rejection(rel, "unreadable_file", f"cannot write the {UFM_FRAME[0]}x{UFM_FRAME[1]} image: {e}")
            height, width = depth.shape
        try:
            Ki = Intrinsics.from_center_origin(K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height)
        except ValueError as e:
            return Rejection(str(paths["intrinsics"].relative_to(self.root)), "bad_calibration", str(e))
        view = {"image": rel, "intrinsics": Ki.to_list(), "T_cam_from_world": T.tolist()}
        return view, depth, K, T

    def _pair(self, index: int, scene: str, name1: str, name2: str, n: int) -> Record | Rejection:
        source = f"{self.pairs_file}:{index}"
        v0 = self._view(scene, name1)
        if isinstance(v0, Rejection):
            return v0
        v1 = self._view(scene, name2)
        if isinstance(v1, Rejection):
            return v1
        view0, depth0, K0, T0 = v0
        view1, depth1, K1, T1 = v1
        flow, mask = ufm_flow(
            depth0, K0, T0, depth1, K1, T1,
            abs_threshold=self.abs_threshold, temperature=self.temperature, rel_threshold=self.rel_threshold,
        )
        if not mask.any():
            return Rejection(source, "no_labels", f"{scene}: no pixel of {name1} is covisible in {name2}")
        rid = f"{self.name}/{index:06d}"
        p0, p1 = matches_from_flow(mask, flow, n, item_rng(self.options.seed, rid))
        return make_record(
            source,
            id=rid,
            dataset=self.name,
            split=self.options.split,
            views=[view0, view1],
            metric_scale=self.metric,
            matches={"pixels0": p0.tolist(), "pixels1": p1.tolist()},
            covisibility=float(mask.mean()),
            meta={
                "source": source,
                "pair_index": index,
                "scene": scene,
                "image0": name1,
                "image1": name2,
                "share": n,
                "covisible_pixels": int(mask.sum()),
                "frame": self.frame,
                "ufm_frame_scale": 1.0 if self.frame == "ufm" else ufm_frame_scale(*depth1.shape[::-1]),
            },
        )

    def manifest_info(self) -> dict:
        a, t, r = self.abs_threshold, self.temperature, self.rel_threshold
        return {
            "source": "UFM benchmark release (processed scenes + anymap_data_pairs)",
            "pairs": f"{self.pairs_file}[::{self.stride}]",
            "samples": f"{self.total} matches shared evenly over the pairs" if self.total is not None else f"{self.n_points} per pair",
            "ground_truth": f"flow from depth, UFM flow_occlusion_post_processing (opt_iters=0), thresholds a={a} t={t} r={r}",
            "pixels": (
                f"UFM's 560x420 frame (images written to ROOT/{self.images_dir})" if self.frame == "ufm"
                else "processed images (long side 600), not UFM's 560x420 frame (meta.ufm_frame_scale)"
            ),
        }


@register
class UFMETH3DAdapter(_ProcessedPairs):
    """UFM's ETH3D wide-baseline benchmark: every 3rd pair of eth3d_valid_pairs.npz, flow from depth."""

    name: ClassVar[str] = "ufm-eth3d"
    description: ClassVar[str] = "UFM's ETH3D dense-correspondence benchmark (processed scenes, pairs [::3], GT flow from depth)"
    layout: ClassVar[str] = (
        "ROOT/eth3d_processed/<scene>/undistorted_images/<name>.jpg, undistorted_depths/<name>.npy (z, m),\n"
        "    undistorted_camera_params/<name>.npy ([fx, fy, cx, cy]), poses/<name>.npy (4x4 cam_from_world)\n"
        "ROOT/anymap_data_pairs/eth3d_valid_pairs.npz   ('data': rows scene, name1, name2, score)\n"
        "(UFM: preprocess_datasets/download_scripts/download_eth3d_processed.sh + download_pairs_eth3d_dtu.sh ROOT)"
    )
    folder: ClassVar[str] = "eth3d_processed"
    pairs_file: ClassVar[str] = "anymap_data_pairs/eth3d_valid_pairs.npz"
    default_stride: ClassVar[int] = 3
    thresholds: ClassVar[tuple[float, float, float]] = (0.1, 0.1, 0.005)
    metric: ClassVar[bool] = True

    def _paths(self, scene: str, name: str) -> dict[str, Path]:
        d = self.root / self.folder / scene
        return {
            "image": d / "undistorted_images" / f"{name}.jpg",
            "depth": d / "undistorted_depths" / f"{name}.npy",
            "intrinsics": d / "undistorted_camera_params" / f"{name}.npy",
            "cam_from_world": d / "poses" / f"{name}.npy",
        }

    def _read_K(self, path: Path) -> np.ndarray:
        p = np.load(path).astype(np.float64).ravel()
        if p.size < 4 or not np.all(np.isfinite(p[:4])):
            raise ValueError(f"{path.name}: expected [fx, fy, cx, cy], got {p.tolist()}")
        fx, fy, cx, cy = p[:4]
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@register
class UFMDTUAdapter(_ProcessedPairs):
    """UFM's DTU wide-baseline benchmark: every 50th pair of dtu_valid_pairs.npz, flow from depth."""

    name: ClassVar[str] = "ufm-dtu"
    description: ClassVar[str] = "UFM's DTU dense-correspondence benchmark (processed scans, pairs [::50], GT flow from depth)"
    layout: ClassVar[str] = (
        "ROOT/dtu_processed/<scan>/images/<name>.png, depths/<name>.npy (z, mm),\n"
        "    camera_params/<name>_intrinsics.npy (3x3 K), poses/<name>.npy (4x4 cam_from_world)\n"
        "ROOT/anymap_data_pairs/dtu_valid_pairs.npz     ('data': rows scan, name1, name2, score)\n"
        "(UFM: preprocess_datasets/download_scripts/download_dtu_processed.sh + download_pairs_eth3d_dtu.sh ROOT)"
    )
    folder: ClassVar[str] = "dtu_processed"
    pairs_file: ClassVar[str] = "anymap_data_pairs/dtu_valid_pairs.npz"
    default_stride: ClassVar[int] = 50
    thresholds: ClassVar[tuple[float, float, float]] = (12.0, 12.0, 0.01)
    metric: ClassVar[bool] = False  # millimetres, and DTU's scale is not metric in UFM either

    def _paths(self, scene: str, name: str) -> dict[str, Path]:
        d = self.root / self.folder / scene
        return {
            "image": d / "images" / f"{name}.png",
            "depth": d / "depths" / f"{name}.npy",
            "intrinsics": d / "camera_params" / f"{name}_intrinsics.npy",
            "cam_from_world": d / "poses" / f"{name}.npy",
        }

    def _read_K(self, path: Path) -> np.ndarray:
        K = np.load(path).astype(np.float64)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)):
            raise ValueError(f"{path.name}: expected a finite 3x3 K, got shape {K.shape}")
        return K
