"""UFM's TartanAir wide-baseline benchmark, TA-WB (adapter ``ufm-tartanair``).

Source: UFM's benchmark code (training branch): ``TAWBDenseBenchmark`` / ``TAWBImageDataset`` in
``benchmarks/ufm_benchmarks/benchmarks/dense_correspondence/widebaseline_datasets.py`` reads
``TartanairAssembled(ROOT=<dataset_root>/TA-WB, split="data")`` (``uniflowmatch/datasets/
tartanair_assembled.py``) through ``DistributedH5Reader`` (``uniflowmatch/datasets/utils/
distributed_h5.py``) and scores its first 1500 pairs (``__len__`` returns 1500). The data is
released pre-computed (``preprocess_datasets/download_scripts/download_ta_wb.sh``: a Google Drive
folder fetched with ``gdown --folder 1WYQ3WGm9lhbxcMWH1OMJqVdXQvtrZ6w8``; Hugging Face mirror
``infinity1096/TA-WB``). Expected tree (``ROOT/data`` is accepted too)::

    ROOT/TA-WB/data/
      *.json        index maps {"<pair index>": [h5 file name, row]} (or {"file_name", "file_index"});
                    JSON files holding "forward_match_errors" are statistics and are skipped
      *.h5          per row: img0, img1 (H, W, 3) uint8 RGB; flow_fwd (2, H, W) float;
                    non_occluded_fwd, fov_mask_fwd (H, W) bool; (and the *_bwd twins, unused)

Conventions. ``flow_fwd`` is view 0 -> view 1 in pixels on UFM's integer pixel grid (pixel (i, j)
moves to (i, j) + flow; ``flow_postprocessing.py``: "the pixel center is represented as 0.0"); a
(H, W, 2) array is accepted too. Matches in vlm3's corner origin: (i + 0.5, j + 0.5) ->
(i + 0.5, j + 0.5) + flow (a displacement needs no shift).

Frame (option ``frame``). ``ufm`` (default): UFM's evaluation frame, reproduced by
:func:`ufm_resize_crop`: ``ResizeShortAxisManipulation((420, 560))`` (ratio max(420 / H, 560 / W);
images bilinear with antialias and cast to uint8, flow and masks nearest, flow scaled per axis)
then ``CenterCropManipulation``, which also drops pixels whose target index leaves [0, W) x [0, H).
UFM's EPE mask there is ``fov_mask & non_occluded_mask``. ``source``: the stored resolution and
masks unchanged (``meta["ufm_frame_scale"]`` = UFM's ratio, to convert errors). In both, pixels
whose target is not finite or lies outside view 1 in corner origin (UFM's fov test on indices is
half a pixel wider at the right and bottom) are left out. ``covisibility`` is the mask's share.

Images. The images live inside the h5 files; records need files, so each pair's two images (in the
chosen frame) are written as PNG to ``ROOT/<images_dir>/<560x420|source>/tawb/<index>_<0|1>.png``
(option ``images_dir``, default ``vlm3_images``; written atomically, rewritten on every prepare),
like the ``synth`` adapter writes its renders into its root. Reading needs h5py (``pip install h5py``).

Intrinsics. The release has none (UFM fills NaN), so each view gets the placeholder of
``hpatches``: f = image diagonal, principal point at the centre, ``meta["intrinsics_estimated"]``.
No poses; ``metric_scale`` False.

Samples: 8,192 (option ``total``) shared over pairs 0..1499 (option ``first``) exactly as in
``ufm_bench``: floor(8192 / N) per pair, the remainder to a seeded subset, pixels uniform in the mask.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, LayoutError, Rejection, option_int, register
from vlm3.data.adapters.hpatches import placeholder_intrinsics
from vlm3.data.adapters.ufm_bench import (
    UFM_FRAME,
    frame_option,
    images_dir_option,
    matches_from_flow,
    sample_shares,
    total_option,
    ufm_frame_scale,
    write_png,
)
from vlm3.data.records import Record
from vlm3.data.sampling import item_rng, resolve_count
from vlm3.data.validate import make_record

FIRST = 1500
"""Pairs UFM scores (``TAWBImageDataset.__len__``)."""

PAIRS_PER_UNIT = 50
KEYS = ("img0", "img1", "flow_fwd", "non_occluded_fwd", "fov_mask_fwd")


def read_index_maps(folder: Path) -> dict[int, tuple[str, int]]:
    """``DistributedH5Reader``'s index: every JSON map of ``folder`` merged, pair index -> (file, row)."""
    out: dict[int, tuple[str, int]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            loaded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LayoutError(f"{path}: not a readable JSON index map ({e})") from None
        if not isinstance(loaded, dict) or "forward_match_errors" in loaded:
            continue
        for key, value in loaded.items():
            try:
                if isinstance(value, dict):
                    out[int(key)] = (str(value["file_name"]), int(value["file_index"]))
                else:
                    out[int(key)] = (str(value[0]), int(value[1]))
            except (KeyError, IndexError, TypeError, ValueError):
                raise LayoutError(f"{path}: entry {key!r} is not [file name, row] or {{file_name, file_index}}") from None
    return out


def _flow_hw2(flow: np.ndarray) -> np.ndarray:
    """(2, H, W) or (H, W, 2) -> (H, W, 2) float64."""
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim == 3 and flow.shape[0] == 2:
        return np.moveaxis(flow, 0, -1)
    if flow.ndim == 3 and flow.shape[-1] == 2:
        return flow
    raise ValueError(f"flow_fwd has shape {flow.shape}, expected (2, H, W) or (H, W, 2)")


def _image_hw3(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = np.moveaxis(img, 0, -1)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image has shape {img.shape} and dtype {img.dtype}, expected (H, W, 3) uint8")
    return img


def ufm_resize_crop(img0: np.ndarray, img1: np.ndarray, flow: np.ndarray, non_occluded: np.ndarray, fov: np.ndarray,
                    resolution: tuple[int, int] = UFM_FRAME):
    """UFM's TA-WB loading (``BaseOpticalFlowDataset`` without augmentation): ``ResizeShortAxis``
    (images bilinear with antialias, cast to uint8; flow and masks nearest, flow scaled per axis)
    then ``CenterCrop`` to ``resolution``, which drops pixels whose target index leaves [0, W) x [0, H).
    -> (img0, img1, flow (H, W, 2), mask = UFM's EPE mask ``fov_mask & non_occluded_mask``)."""
    import torch
    import torch.nn.functional as F

    H, W = img0.shape[:2]
    Wt, Ht = resolution
    ratio = max(Ht / H + 1e-8, Wt / W + 1e-8)
    h, w = int(H * ratio), int(W * ratio)

    def image(img: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True).to(torch.uint8)
        return t[0].permute(1, 2, 0).numpy()

    def nearest(a: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        t = t[None, None] if t.ndim == 2 else t[None]
        return F.interpolate(t, size=(h, w), mode="nearest")[0].numpy()

    fl = nearest(np.moveaxis(flow, -1, 0)).astype(np.float64)
    fl[0] *= w / W
    fl[1] *= h / H
    noc, fv = nearest(non_occluded)[0] > 0, nearest(fov)[0] > 0
    top, left = (h - Ht) // 2, (w - Wt) // 2
    crop = (slice(top, top + Ht), slice(left, left + Wt))
    fl = np.moveaxis(fl[:, crop[0], crop[1]], 0, -1)
    jj, ii = np.mgrid[0:Ht, 0:Wt]
    tx, ty = ii + fl[..., 0], jj + fl[..., 1]
    fov_new = ~((tx < 0) | (ty < 0) | (tx >= Wt) | (ty >= Ht))
    mask = fv[crop] & noc[crop] & fov_new
    return image(img0)[crop], image(img1)[crop], fl, mask


@register
class UFMTartanAirAdapter(Adapter):
    """UFM's TA-WB benchmark: the first 1500 pairs of its h5 release, precomputed flow."""

    name: ClassVar[str] = "ufm-tartanair"
    description: ClassVar[str] = "UFM's TartanAir wide-baseline (TA-WB) benchmark: pairs 0..1499 of the h5 release, precomputed flow"
    layout: ClassVar[str] = (
        "ROOT/TA-WB/data/*.json   index maps {\"<pair>\": [\"<file>.h5\", row]}\n"
        "ROOT/TA-WB/data/*.h5     img0, img1 (N, H, W, 3) uint8; flow_fwd (N, 2, H, W); non_occluded_fwd, fov_mask_fwd (N, H, W) bool\n"
        "(UFM: preprocess_datasets/download_scripts/download_ta_wb.sh ROOT; ROOT/data is accepted too)"
    )
    labels: ClassVar[tuple[str, ...]] = ("matches",)

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        self.first = option_int(self.options, "first", FIRST, minimum=1)
        self.total = total_option(self.options)
        self.n_points = resolve_count(self.options.points)
        self.frame = frame_option(self.options)
        self.images_dir = images_dir_option(self.options, self.name)
        self._index: dict[int, tuple[str, int]] | None = None
        self._folder: Path | None = None

    def data_folder(self) -> Path:
        """ROOT/TA-WB/data (or ROOT/data): the folder holding the index maps and h5 files."""
        if self._folder is None:
            for cand in (self.root / "TA-WB" / "data", self.root / "data"):
                if cand.is_dir() and any(cand.glob("*.json")):
                    self._folder = cand
                    break
            else:
                raise LayoutError(f"{self.root}: no TA-WB/data/*.json index map found; expected:\n{self.layout}")
        return self._folder

    def index(self) -> dict[int, tuple[str, int]]:
        if self._index is None:
            self._index = read_index_maps(self.data_folder())
            if not self._index:
                raise LayoutError(f"{self.data_folder()}: the JSON files hold no index map; expected:\n{self.layout}")
        return self._index

    def pairs(self) -> list[int]:
        """The benchmark pairs: indices 0 .. first - 1 (UFM reads them whether or not they exist)."""
        self.index()
        return list(range(self.first))

    def units(self) -> list[str]:
        n = len(self.pairs())
        return [f"{i:06d}-{min(i + PAIRS_PER_UNIT, n) - 1:06d}" for i in range(0, n, PAIRS_PER_UNIT)]

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        try:
            import h5py
        except ImportError:
            raise RuntimeError(f"{self.name}: reading TA-WB needs h5py (pip install h5py)") from None
        first, last = (int(v) for v in unit.split("-"))
        n_pairs = len(self.pairs())
        shares = sample_shares(n_pairs, self.total, self.options.seed, self.name) if self.total is not None else None
        for idx in range(first, last + 1):
            n = int(shares[idx]) if shares is not None else self.n_points
            yield self._pair(h5py, idx, n)

    def _read(self, h5py: Any, idx: int) -> dict[str, np.ndarray] | Rejection:
        entry = self.index().get(idx)
        if entry is None:
            return Rejection(f"{self.data_folder().name}/<index>:{idx}", "missing_file", f"pair {idx} is in no index map")
        file_name, row = entry
        path = self.data_folder() / file_name
        src = f"{file_name}:{row}"
        if not path.is_file():
            return Rejection(src, "missing_file", f"{path} not found")
        try:
            with h5py.File(path, "r") as f:
                return {k: np.asarray(f[k][row]) for k in KEYS}
        except (OSError, KeyError, IndexError, ValueError) as e:
            return Rejection(src, "unreadable_file", f"{type(e).__name__}: {e}")

    def _pair(self, h5py: Any, idx: int, n: int) -> Record | Rejection:
        data = self._read(h5py, idx)
        if isinstance(data, Rejection):
            return data
        file_name, row = self.index()[idx]
        source = f"{file_name}:{row}"
        try:
            img0, img1 = _image_hw3(data["img0"]), _image_hw3(data["img1"])
            flow = _flow_hw2(data["flow_fwd"])
        except ValueError as e:
            return Rejection(source, "unreadable_file", str(e))
        if img0.shape != img1.shape:
            return Rejection(source, "size_mismatch", f"img0 {img0.shape} vs img1 {img1.shape} (UFM requires equal sizes)")
        H, W = img0.shape[:2]
        masks = {k: np.asarray(data[k]).astype(bool) for k in ("non_occluded_fwd", "fov_mask_fwd")}
        for key, arr in [("flow_fwd", flow[..., 0]), *masks.items()]:
            if arr.shape != (H, W):
                return Rejection(source, "size_mismatch", f"{key} is {arr.shape[1]}x{arr.shape[0]}, img0 {W}x{H}")
        scale = ufm_frame_scale(W, H)
        if self.frame == "ufm":
            img0, img1, flow, mask = ufm_resize_crop(img0, img1, flow, masks["non_occluded_fwd"], masks["fov_mask_fwd"])
            H, W = img0.shape[:2]
            scale = 1.0
        else:
            mask = masks["fov_mask_fwd"] & masks["non_occluded_fwd"]
        # Targets inside view 1 in corner origin: [0, W) x [0, H) (UFM's fov test is half a pixel wider).
        ii, jj = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        with np.errstate(invalid="ignore"):
            tx, ty = ii + flow[..., 0], jj + flow[..., 1]
            mask &= np.isfinite(tx) & np.isfinite(ty) & (tx >= 0) & (tx < W) & (ty >= 0) & (ty < H)
        if not mask.any():
            return Rejection(source, "no_labels", f"pair {idx}: no covisible pixel")
        tag = f"{UFM_FRAME[0]}x{UFM_FRAME[1]}" if self.frame == "ufm" else "source"
        rels = [f"{self.images_dir}/{tag}/tawb/{idx:06d}_{k}.png" for k in (0, 1)]
        try:
            for rel, img in zip(rels, (img0, img1)):
                write_png(self.root / rel, img)
        except OSError as e:
            return Rejection(rels[0], "unreadable_file", f"cannot write the extracted image: {e}")
        rid = f"{self.name}/{idx:06d}"
        p0, p1 = matches_from_flow(mask, flow, n, item_rng(self.options.seed, rid))
        K0 = K1 = placeholder_intrinsics(W, H)
        return make_record(
            source,
            id=rid,
            dataset=self.name,
            split=self.options.split,
            views=[{"image": rels[0], "intrinsics": K0.to_list()}, {"image": rels[1], "intrinsics": K1.to_list()}],
            metric_scale=False,
            matches={"pixels0": p0.tolist(), "pixels1": p1.tolist()},
            covisibility=float(mask.mean()),
            meta={
                "source": source,
                "pair_index": idx,
                "intrinsics_estimated": True,
                "share": n,
                "covisible_pixels": int(mask.sum()),
                "frame": self.frame,
                "ufm_frame_scale": scale,
            },
        )

    def manifest_info(self) -> dict:
        return {
            "source": "UFM TA-WB release (distributed h5, split 'data')",
            "pairs": f"0..{self.first - 1}",
            "samples": f"{self.total} matches shared evenly over the pairs" if self.total is not None else f"{self.n_points} per pair",
            "ground_truth": "flow_fwd on fov_mask_fwd & non_occluded_fwd (UFM's EPE mask)",
            "intrinsics": "placeholder: f = image diagonal, principal point at the centre (meta.intrinsics_estimated)",
            "images": f"extracted from the h5 files to ROOT/{self.images_dir}",
            "pixels": "UFM's 560x420 frame" if self.frame == "ufm" else "stored resolution, not UFM's 560x420 frame (meta.ufm_frame_scale)",
        }
