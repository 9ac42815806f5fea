"""WAI scenes (MapAnything's WorldAI format): covisible posed pairs with matches from depth.

MapAnything (github.com/facebookresearch/map-anything) distributes its training datasets
processed into WAI, among them the VLM3 paper's pose/correspondence sets: ASE, BlendedMVS,
DL3DV-10K, Dynamic Replica, MPSD, MegaDepth, MVS-Synth, SAIL-VOS 3D, ScanNet++ v2, Spring,
TartanAirV2-WB and UnrealStereo4K. One adapter reads them all; point ROOT at one dataset's WAI
folder (``<wai root>/<dataset>/``).

Layout (``data_processing/README.md``, "WAI Dataset Format")::

    ROOT/<scene>/scene_meta.json                  scene and per-frame metadata (below)
    ROOT/<scene>/images/<frame>.{jpg,png}         frame[<image modality frame_key>] (often symlinks)
    ROOT/<scene>/depth/<frame>.exr                frame[<depth modality frame_key>]
    ROOT/<scene>/covisibility/<version>/pairwise_covisibility--<N>x<N>.npy   optional

Conventions of the source and how they are converted
----------------------------------------------------
- ``scene_meta.json`` (read like ``mapanything/utils/wai/core.py: load_frame``): ``frames`` is a
  list of dicts with ``frame_name``, ``file_path``, the modality paths and ``transform_matrix``;
  intrinsics ``fl_x, fl_y, cx, cy, w, h`` and ``camera_model`` come from the frame, else from the
  scene level (``shared_intrinsics``). A modality is found through ``frame_modalities``:
  ``frame_modalities["depth"] = {"frame_key": "depth", "format": "depth"}`` means the frame's
  ``"depth"`` entry is the path, relative to the scene folder; nested modalities are named with
  ``/`` (option ``depth_modality=pred_depth/mvsanywhere`` for DL3DV, whose WAI release has only
  MVSAnywhere depth). The image is ``image_modality`` (default ``image``), else ``file_path``.
- Camera: only ``camera_model == "PINHOLE"`` without distortion coefficients (what MapAnything's
  loaders accept, ``convert_camera_coeffs_to_pinhole_matrix``); other frames are rejected
  (``bad_calibration``). Scenes with only ``scene_meta_distorted.json`` (not yet undistorted)
  are not scenes of this adapter.
- Pose: ``transform_matrix`` is **camera-to-world in OpenCV axes** (x right, y down, z forward):
  ``camera_convention`` is "opencv" (the README: "Convention for cam2world extrinsics (must be
  opencv)"); the converters store ``np.linalg.inv(w2c)`` (``scripts/conversion/megadepth.py``,
  ``blendedmvs.py``, ``mpsd.py``, ``unrealstereo4k.py``) or ``gl2cv(c2w)``
  (``dl3dv.py``, ``scannetppv2.py``), and the dataset loaders pass it on as ``camera_pose``
  ("cam2world", ``mapanything/datasets/wai/*.py``). Records store camera-from-world, so it is
  **inverted**; a non-rigid or non-finite matrix is ``bad_pose``; a scene whose
  ``camera_convention`` is not "opencv" is rejected.
- Pixel origin: MapAnything unprojects depth pixel (u, v) (integer indices) as
  ``x = (u - cx) * z / fx`` (``depthmap_to_camera_coordinates``, DUSt3R lineage), and the WAI
  covisibility reprojects on the same integer grid: cx/cy are **centre-origin** (OpenCV), so
  +0.5 px gives vlm3's corner-origin intrinsics (option ``pixel_origin=center``, default). Some
  converters copy corner-origin values (COLMAP/nerfstudio-derived MegaDepth, DL3DV, ScanNet++;
  MPSD sets cx = W / 2): ``pixel_origin=corner`` uses cx/cy as they are. Either way the
  difference is half a pixel.
- Depth: z-depth (``depthmap_to_camera_coordinates`` uses it as z), stored by WAI's
  ``store_data(..., "depth")`` as a single-channel OpenEXR (HALF float, ZIP compression;
  ``_store_depth``), read with :func:`vlm3.data.adapters.kit.read_exr`; ``.npy`` is accepted too.
  Values <= 0, NaN or inf are invalid (undistortion fills -1; UnrealStereo4K 0). Units: metres
  when the scene is metric, else the scene's own SfM units (the same units as its poses, so
  matches and covisibility are exact either way). A depth map of another size than the image
  (w, h) is a scaled copy of the camera (intrinsics scaled by the size ratio).
- Scale: ``scene_meta["scale_type"]`` is "metric" (ASE, Dynamic Replica, MPSD, ScanNet++,
  TAv2-WB, UnrealStereo4K, ... in the converters) or "colmap" (MegaDepth, BlendedMVS, DL3DV):
  ``metric_scale`` is ``scale_type == "metric"`` (missing: not metric). Option
  ``metric_scale=true|false`` overrides it for every scene.
- Covisibility: ``scripts/covisibility.py`` stores an (N, N) float32 matrix over the frames in
  ``frames`` order with ``store_data(..., "mmap")`` (``_store_mmap``: a plain ``np.save`` whose
  name carries the shape, ``pairwise_covisibility--NxN.npy``), under
  ``covisibility/<version>/`` (the loaders use ``v0``). C[i, j] = number of frame-i depth
  points that land, depth-consistent, in frame j / number of valid depth pixels of frame j.
  MapAnything's sampler (``BaseDataset._random_walk_sampling``) links i and j when
  ``(C[i, j] + C[j, i]) / 2 / C[i, i] > covisibility_thres`` (0.25 in its configs). Here a
  pair's WAI score is that value taken from both ends, ``min`` over i and j of
  ``(C[i, j] + C[j, i]) / 2 / C[k, k]`` (0 when a diagonal is 0), and a pair qualifies when it
  exceeds ``min_covisibility`` (default 0.25). Without a matrix (or with
  ``covisibility=depth``), pairs are chosen with vlm3's own depth covisibility
  (``vlm3.data.covis``: min of both directions > ``min_covisibility``), as for ``scannet``.
  ``covisibility=matrix`` requires the matrix. A matrix whose size is not the frame count is
  reported and the depth covisibility is used.
- Records: one pair record per selected pair (up to ``pairs_per_scene``, a seeded uniform draw of
  the qualifying pairs), two views with their poses, ``matches`` from depth + poses with the
  occlusion check (``vlm3.data.scenes.pair_matches``), ``covisibility`` = vlm3's directional
  depth covisibility of view 0 in view 1, ``meta["covisibility_wai"]`` = the matrix score.
  Depth records only with ``depth_records=true``. ``dataset`` = option ``dataset`` (default
  ``wai``); ``meta["source_dataset"]`` = ``scene_meta["dataset_name"]``.

Scene selection: ``scenes`` (``a,b`` or ``@FILE``, one id per line, or a MapAnything split file
``@<dataset>_scene_list_<split>.npy``) and ``max_scenes`` as in
``vlm3.data.adapters.colmap_scenes.select_scenes``; ``exclude_scenes`` (same forms) removes
held-out scenes afterwards (ids not under ROOT are ignored: a held-out list may name scenes of
other splits).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, LayoutError, Rejection, option_flag, register
from vlm3.data.adapters.colmap_scenes import read_scene_list, select_scenes
from vlm3.data.adapters.kit import image_size, read_exr
from vlm3.data.adapters.scannet import pose_from_cam_to_world
from vlm3.data.records import Record, View
from vlm3.data.sampling import item_rng
from vlm3.data.scenes import FrameCache, FrameData, FrameError, FrameSource, SceneConfig, pair_record, pinhole_frame, scene_records
from vlm3.geometry.camera import Intrinsics

SCENE_META = "scene_meta.json"
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")  # mapanything/utils/wai/camera.py DISTORTION_PARAM_KEYS


def read_scene_ids(root: Path, spec: str) -> list[str]:
    """Scene ids of ``a,b``, ``@FILE`` (text) or ``@FILE.npy`` (MapAnything split file, array of str)."""
    spec = spec.strip()
    if spec.startswith("@") and spec.endswith(".npy"):
        path = Path(spec[1:]).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise LayoutError(f"{root}: scene list {path} does not exist")
        try:
            ids = np.load(path, allow_pickle=False).reshape(-1).tolist()
        except ValueError as e:
            raise ValueError(f"{path}: not a numpy array of scene names without pickled objects ({e})") from None
        return list(dict.fromkeys(str(x) for x in ids if str(x)))
    return read_scene_list(root, spec)


def modality_path(meta: dict, frame: dict, modality: str) -> str | None:
    """The frame's relative path of a (possibly nested, ``a/b``) frame modality, or None."""
    node: Any = meta.get("frame_modalities") or {}
    for key in modality.split("/"):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if not isinstance(node, dict) or "frame_key" not in node:
        return None
    value = frame.get(node["frame_key"])
    return value if isinstance(value, str) and value else None


def frame_intrinsics(meta: dict, frame: dict, pixel_origin: str) -> Intrinsics:
    """Corner-origin intrinsics of a WAI frame (frame values over scene values); ValueError if unusable."""
    model = frame.get("camera_model", meta.get("camera_model"))
    if model != "PINHOLE":
        raise ValueError(f"camera_model {model!r}; only undistorted PINHOLE frames are supported")
    bad = [k for k in DISTORTION_KEYS if float(frame.get(k, 0) or 0) != 0 or float(meta.get(k, 0) or 0) != 0]
    if bad:
        raise ValueError(f"PINHOLE camera with distortion coefficients {bad}")
    values = {}
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        v = frame.get(key, meta.get(key))
        if v is None:
            raise ValueError(f"no {key!r} in the frame or the scene")
        values[key] = float(v)
    w, h = values["w"], values["h"]
    if w != int(w) or h != int(h) or w <= 0 or h <= 0:
        raise ValueError(f"image size {w}x{h} is not a positive integer size")
    make = Intrinsics.from_center_origin if pixel_origin == "center" else Intrinsics
    return make(values["fl_x"], values["fl_y"], values["cx"], values["cy"], int(w), int(h))


def read_depth_map(path: Path) -> np.ndarray:
    """A WAI depth map: single-channel OpenEXR or ``.npy``, float32; FrameError when unusable."""
    if not path.is_file():
        raise FrameError("missing_file", f"{path} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            depth = np.load(path, allow_pickle=False).astype(np.float32)
        except ValueError as e:
            raise FrameError("unreadable_file", f"{path}: {e}") from None
    elif path.suffix.lower() == ".exr":
        depth = read_exr(path)
    else:
        raise FrameError("unreadable_file", f"{path}: depth must be .exr (WAI's format) or .npy")
    depth = np.squeeze(depth)
    if depth.ndim != 2:
        raise FrameError("unreadable_file", f"{path}: depth must be 2-D, got shape {depth.shape}")
    if not (np.isfinite(depth) & (depth > 0)).any():
        raise FrameError("no_valid_depth", f"{path}: no finite positive depth")
    return depth


def _depth_loader(path: Path, K: Intrinsics, T: np.ndarray):
    def load(rng: np.random.Generator, n: int) -> FrameData:
        depth = read_depth_map(path)
        h, w = depth.shape
        if (w, h) == (K.width, K.height):
            return pinhole_frame(depth, K, T, rng, n)
        K_depth = K.scaled(w / K.width, h / K.height, width=w, height=h)
        return pinhole_frame(depth, K_depth, T, rng, n, K_image=K)

    return load


def find_covisibility(scene_dir: Path, version: str) -> Path | None:
    """``covisibility/<version>/pairwise_covisibility--*.npy`` (else the first ``*.npy``, as the loaders take)."""
    folder = scene_dir / "covisibility" / version
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.npy"))
    named = [p for p in files if p.name.startswith("pairwise_covisibility")]
    return (named or files or [None])[0]


def qualifying_pairs(
    A: np.ndarray, threshold: float, min_gap: int = 1, max_gap: int | None = None, block: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of an (N, N) WAI covisibility matrix whose score exceeds ``threshold``,
    with their scores. The score is MapAnything's bidirectional covisibility
    ``(A[i, j] + A[j, i]) / 2`` normalised by the self-covisibility of each end, the smaller of
    the two (0 where a diagonal entry is 0). Rows are scored in blocks (memory O(block * N))."""
    A = np.asarray(A, dtype=np.float32)
    n = A.shape[0]
    d = np.diagonal(A).astype(np.float32)
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0).astype(np.float32)
    pairs, scores = [], []
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        M = (A[r0:r1] + A[:, r0:r1].T) / 2
        S = np.minimum(M * inv[r0:r1, None], M * inv[None, :])
        S = np.nan_to_num(S, nan=0.0, posinf=0.0, neginf=0.0)
        ii, jj = np.nonzero(S > threshold)
        gap = jj - (ii + r0)
        keep = gap >= min_gap
        if max_gap is not None:
            keep &= gap <= max_gap
        pairs.append(np.stack([ii[keep] + r0, jj[keep]], axis=1))
        scores.append(S[ii[keep], jj[keep]].astype(np.float64))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    return np.concatenate(pairs).astype(np.int64), np.concatenate(scores)


@register
class WAIAdapter(Adapter):
    """MapAnything WAI scenes -> covisible posed pairs (precomputed covisibility) with matches."""

    name = "wai"
    description = "MapAnything WAI-format scenes (ScanNet++ v2, BlendedMVS, MegaDepth, TAv2-WB, ...): covisible posed pairs with matches from depth"
    layout = """\
ROOT/                                   one dataset of a WAI release, e.g. <wai>/blendedmvs
  <scene>/
    scene_meta.json                     frames: frame_name, file_path, image, depth, transform_matrix
                                        (cam2world, OpenCV), fl_x/fl_y/cx/cy/w/h (or scene-level);
                                        camera_model PINHOLE; scale_type metric | colmap
    images/<frame>.jpg|png
    depth/<frame>.exr                   z-depth, single-channel EXR (metres if metric)
    covisibility/v0/pairwise_covisibility--NxN.npy   optional, frames order
options.extra: covisibility (auto | matrix | depth), covisibility_version (v0), depth_modality (depth),
               image_modality (image), pixel_origin (center | corner), metric_scale (from scale_type),
               dataset (wai), scenes (a,b | @FILE | @FILE.npy), exclude_scenes (same), max_scenes,
               min_gap, max_gap (none), match_points, depth_tolerance (0.05), candidates, max_tries,
               depth_records (false), pair_records, random_order
"""
    labels = ("poses", "matches")

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        x = self.options.extra
        self.dataset = str(x.get("dataset") or self.name)
        self.pixel_origin = str(x.get("pixel_origin", "center")).strip().lower()
        if self.pixel_origin not in ("center", "corner"):
            raise ValueError(f"option pixel_origin={self.pixel_origin!r}: use center or corner")
        self.covis_mode = str(x.get("covisibility", "auto")).strip().lower()
        if self.covis_mode not in ("auto", "matrix", "depth"):
            raise ValueError(f"option covisibility={self.covis_mode!r}: use auto, matrix or depth")
        self.covis_version = str(x.get("covisibility_version", "v0"))
        self.depth_modality = str(x.get("depth_modality", "depth"))
        self.image_modality = str(x.get("image_modality", "image"))

    def units(self) -> list[str]:
        if not self.root.is_dir():
            raise LayoutError(f"{self.root} is not a folder; expected:\n{self.layout}")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / SCENE_META).is_file())
        if not found:
            raise LayoutError(f"{self.root}: no <scene>/{SCENE_META} found; expected:\n{self.layout}")
        opts = self.options
        spec = opts.extra.get("scenes")
        if spec is not None and str(spec).strip().endswith(".npy"):
            opts = replace(opts, extra={**opts.extra, "scenes": ",".join(read_scene_ids(self.root, str(spec)))})
        chosen = select_scenes(self.root, found, opts)
        excl = opts.extra.get("exclude_scenes")
        if excl is not None:
            drop = set(read_scene_ids(self.root, str(excl)))
            chosen = [s for s in chosen if s not in drop]
        return chosen

    def _metric(self, meta: dict) -> bool:
        default = str(meta.get("scale_type", "")).strip().lower() == "metric"
        return option_flag(self.options, "metric_scale", default)

    def manifest_info(self) -> dict:
        return {
            "source": "MapAnything WAI format",
            "depth_type": "z",
            "pose_source": "scene_meta.json transform_matrix (cam2world, OpenCV), inverted",
            "pixel_origin": self.pixel_origin,
            "covisibility": self.covis_mode,
            "covisibility_version": self.covis_version,
        }

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        scene_dir = self.root / unit
        meta_path = scene_dir / SCENE_META
        try:
            meta = json.loads(meta_path.read_text())
            frames_meta = meta["frames"]
            if not isinstance(frames_meta, list):
                raise TypeError("'frames' is not a list")
        except FileNotFoundError:
            yield Rejection(str(meta_path), "missing_file", "no scene_meta.json")
            return
        except (ValueError, KeyError, TypeError) as e:
            yield Rejection(str(meta_path), "invalid_record", f"not a WAI scene_meta.json ({type(e).__name__}: {e})")
            return
        convention = str(meta.get("camera_convention", "opencv")).lower()
        if convention != "opencv":
            yield Rejection(str(meta_path), "bad_pose", f"camera_convention {convention!r}; WAI cam2world poses must be 'opencv'")
            return
        metric = self._metric(meta)

        frames: list[FrameSource] = []
        index: list[int] = []  # position of each usable frame in scene_meta["frames"] (the matrix order)
        for k, fr in enumerate(frames_meta):
            name = str(fr.get("frame_name", k)) if isinstance(fr, dict) else str(k)
            source = f"{meta_path}:frames[{k}]"
            try:
                if not isinstance(fr, dict):
                    raise FrameError("invalid_record", "frame entry is not an object")
                rel_img = modality_path(meta, fr, self.image_modality) or fr.get("file_path")
                if not isinstance(rel_img, str) or not rel_img:
                    raise FrameError("invalid_record", f"frame {name}: no {self.image_modality!r} modality path and no file_path")
                if Path(rel_img).is_absolute() or ".." in Path(rel_img).parts:
                    raise FrameError("image_outside_root", f"frame {name}: image path {rel_img!r}")
                source = str(scene_dir / rel_img)
                try:
                    K = frame_intrinsics(meta, fr, self.pixel_origin)
                except (ValueError, TypeError) as e:
                    raise FrameError("bad_calibration", f"frame {name}: {e}") from None
                try:
                    c2w = np.asarray(fr["transform_matrix"], dtype=np.float64).reshape(4, 4)
                except (KeyError, ValueError, TypeError) as e:
                    raise FrameError("bad_pose", f"frame {name}: transform_matrix is not a 4x4 matrix ({e})") from None
                T = pose_from_cam_to_world(c2w, f"frame {name}")
                size = image_size(scene_dir / rel_img)
                if size != (K.width, K.height):
                    raise FrameError("size_mismatch", f"{scene_dir / rel_img}: {size[0]}x{size[1]}, scene_meta says {K.width}x{K.height}")
                rel_depth = modality_path(meta, fr, self.depth_modality)
                if rel_depth is None:
                    raise FrameError("missing_file", f"frame {name}: no {self.depth_modality!r} modality in scene_meta.json")
                if Path(rel_depth).is_absolute() or ".." in Path(rel_depth).parts:
                    raise FrameError("invalid_record", f"frame {name}: depth path {rel_depth!r} leaves the scene")
            except FrameError as e:
                yield Rejection(source, e.reason, e.detail)
                continue
            view = View(image=f"{unit}/{Path(rel_img).as_posix()}", intrinsics=K.to_list(), T_cam_from_world=T.tolist())
            frames.append(FrameSource(name, view, _depth_loader(scene_dir / rel_depth, K, T), str(scene_dir / rel_depth)))
            index.append(k)
        if not frames:
            yield Rejection(str(meta_path), "missing_file", "no usable frames")
            return

        cfg = SceneConfig.from_options(self.dataset, unit, self.options, metric_scale=metric, max_gap=None, depth_records=False)
        cfg.meta = {"source_dataset": str(meta.get("dataset_name", "")), "scale_type": str(meta.get("scale_type", ""))}

        matrix = None
        if self.covis_mode != "depth":
            path = find_covisibility(scene_dir, self.covis_version)
            if path is None:
                if self.covis_mode == "matrix":
                    yield Rejection(str(scene_dir / "covisibility" / self.covis_version), "missing_file", "no covisibility matrix (option covisibility=matrix)")
                    return
            else:
                try:
                    matrix = np.load(path, mmap_mode="r", allow_pickle=False)
                    n = len(frames_meta)
                    if matrix.ndim != 2 or matrix.shape != (n, n):
                        raise FrameError("size_mismatch", f"{path}: shape {matrix.shape}, scene has {n} frames; using depth covisibility")
                except FrameError as e:
                    yield Rejection(str(path), e.reason, e.detail)
                    matrix = None
                except (ValueError, OSError) as e:
                    yield Rejection(str(path), "unreadable_file", f"{e}; using depth covisibility")
                    matrix = None
                if matrix is None and self.covis_mode == "matrix":
                    return

        if matrix is None:
            cfg.meta["covisibility_source"] = "depth"
            yield from scene_records(frames, cfg)
            return
        cfg.meta["covisibility_source"] = f"wai:{self.covis_version}"
        if cfg.depth_records:
            yield from scene_records(frames, replace(cfg, pair_records=False))
        if cfg.pair_records and cfg.pairs_per_scene > 0:
            yield from self._matrix_pairs(frames, np.asarray(index), matrix, cfg)

    def _matrix_pairs(self, frames: list[FrameSource], index: np.ndarray, C: np.ndarray, cfg: SceneConfig) -> Iterator[Record | Rejection]:
        """Pairs qualifying by the WAI matrix (a seeded uniform draw), matches from depth."""
        A = np.asarray(C[np.ix_(index, index)], dtype=np.float32)  # usable frames, in scene_meta order
        cand, scores = qualifying_pairs(A, cfg.min_covisibility, cfg.min_gap, cfg.max_gap)
        cache = FrameCache(frames, cfg)
        failed: set[int] = set()
        rng = item_rng(cfg.seed, f"{cfg.dataset}/{cfg.scene}/pairs")
        chosen: list[tuple[int, int, float]] = []
        tries = 0
        for p in rng.permutation(len(cand)):
            if len(chosen) >= cfg.pairs_per_scene or (cfg.max_tries is not None and tries >= cfg.max_tries):
                break
            tries += 1
            i, j = int(cand[p, 0]), int(cand[p, 1])
            usable = True
            for k in (i, j):
                try:
                    cache.get(k)
                except FrameError as e:
                    usable = False
                    if k not in failed:
                        failed.add(k)
                        yield Rejection(frames[k].source, e.reason, e.detail)
            if usable:
                chosen.append((i, j, float(scores[p])))
        for i, j, score in sorted(chosen):
            yield pair_record(frames, cache, i, j, cfg, {"covisibility_wai": score})
