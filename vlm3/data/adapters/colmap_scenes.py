"""Scenes reconstructed with COLMAP (MegaDepth-style; also ScanNet++ DSLR): covisible posed pairs.

Conventions of the source and how they are converted
----------------------------------------------------
- ``<scene>/sparse/`` holds a COLMAP model (binary or text; read with pycolmap). When ``sparse/``
  itself has no model, every sub-folder that has one (``sparse/0``, ``sparse/manhattan/1``, ...) is
  converted as its own scene ``<scene>/<sub-folder>``; pairs never mix models.
- COLMAP images store **camera-from-world** (quaternion, translation) — what records store, no
  inversion. COLMAP pixels put the centre of the top-left pixel at (0.5, 0.5) = vlm3's
  corner-origin convention. Cameras: PINHOLE / SIMPLE_PINHOLE, and SIMPLE_RADIAL / RADIAL /
  OPENCV as OpenCV distortion (k1, k2, p1, p2) in the record view; other models are rejected.
- Scale: SfM models are up to scale, so ``megadepth`` writes ``metric_scale=False`` and no depth
  records (no metric question can be asked). ``scannetpp_dslr`` (ScanNet++ poses are registered
  to its laser scans) is metric.
- Optional depth ``<scene>/depths/<image stem>.h5`` (dataset ``depth``, z-depth in model units,
  0 = invalid; MegaDepth) or ``<image stem>.png`` (uint16, times ``depth_png_scale`` = 0.001 to
  metres; e.g. depth rendered by the ScanNet++ toolkit for the undistorted cameras). With depth,
  covisibility and matches use the depth maps with the occlusion check; without, covisibility is
  the share of SfM points shared by the two images (min of both directions) and matches are
  those shared points projected with each image's pose.

Scene and image selection (both adapters here and ``eth3d``; :func:`select_scenes`)
-----------------------------------------------------------------------------------
- ``scenes``: which scene folders to convert: ``a,b,c`` or ``@FILE`` (one id per line, ``#``
  comments; relative to ROOT unless absolute), e.g. a held-out list. A listed scene that is not
  under ROOT is a :class:`~vlm3.data.adapters.base.LayoutError`, never silently skipped.
- ``max_scenes``: keep N of the selected scenes, drawn from the sorted list with
  ``numpy.random.default_rng(seed).permutation`` (``seed`` = the adapter seed), so the draw
  depends on the selection and the seed only.
- ``exclude_images``: comma-separated ``[SCENE:]ENDING``; an image (of SCENE, or of any scene)
  whose name ends with ENDING is left out (Depth-Anything-3's ``ETH3D_FILTER_KEYS`` rule:
  per scene, ``image_name.endswith(key)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, LayoutError, Rejection, option_flag, option_float, option_int, register
from vlm3.data.adapters.kit import cam_from_world, image_size, load_reconstruction, read_depth_png
from vlm3.data.covis import opencv_projector, opencv_rays, pinhole_projector
from vlm3.data.scenes import FrameData, FrameError, FrameSource, SceneConfig, pinhole_frame, ray_frame, scene_records, sfm_frame
from vlm3.data.records import Record, View
from vlm3.geometry.camera import Intrinsics


def camera_from_colmap(camera) -> tuple[Intrinsics, list[float] | None]:
    """(corner-origin intrinsics, OpenCV distortion or None) of a pycolmap camera; ValueError if unsupported."""
    name, p = camera.model_name, [float(x) for x in camera.params]
    w, h = camera.width, camera.height
    if name == "PINHOLE":
        return Intrinsics(p[0], p[1], p[2], p[3], w, h), None
    if name == "SIMPLE_PINHOLE":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h), None
    if name == "SIMPLE_RADIAL":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h), [p[3], 0.0, 0.0, 0.0]
    if name == "RADIAL":
        return Intrinsics(p[0], p[0], p[1], p[2], w, h), [p[3], p[4], 0.0, 0.0]
    if name == "OPENCV":
        return Intrinsics(p[0], p[1], p[2], p[3], w, h), [p[4], p[5], p[6], p[7]]
    raise ValueError(f"camera {camera.camera_id} uses the {name} model; supported: PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV")


def read_scene_list(root: Path, spec: str) -> list[str]:
    """Scene ids of a ``scenes`` option: ``a,b,c`` or ``@FILE`` (one per line, ``#`` comments)."""
    spec = spec.strip()
    if spec.startswith("@"):
        path = Path(spec[1:]).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise LayoutError(f"{root}: option scenes={spec!r} names {path}, which does not exist")
        ids = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    else:
        ids = [x.strip() for x in spec.split(",")]
    out = list(dict.fromkeys(x for x in ids if x))
    if not out:
        raise ValueError(f"option scenes={spec!r} names no scene")
    return out


def select_scenes(root: Path, available: list[str], options: AdapterOptions) -> list[str]:
    """``available`` scene folders (sorted) cut to the ``scenes`` / ``max_scenes`` options (module doc)."""
    chosen = sorted(available)
    spec = options.extra.get("scenes")
    if spec is not None:
        wanted = read_scene_list(root, str(spec))
        missing = [x for x in wanted if x not in set(available)]
        if missing:
            raise LayoutError(
                f"{root}: no scene folder for {len(missing)} of the {len(wanted)} scenes option scenes names "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
            )
        chosen = sorted(wanted)
    n = option_int(options, "max_scenes", None, minimum=1)
    if n is not None and n < len(chosen):
        order = np.random.default_rng(int(options.seed)).permutation(len(chosen))
        chosen = sorted(chosen[i] for i in order[:n])
    return chosen


def excluded_image(scene: str, name: str, options: AdapterOptions) -> bool:
    """Whether ``exclude_images`` (comma-separated ``[SCENE:]ENDING``) leaves out image ``name`` of ``scene``."""
    for key in str(options.extra.get("exclude_images", "")).split(","):
        where, sep, ending = key.strip().rpartition(":")
        if ending and (not sep or where == scene) and name.endswith(ending):
            return True
    return False


def has_model(path: Path) -> bool:
    return any((path / f"cameras.{ext}").is_file() for ext in ("bin", "txt"))


def find_models(sparse: Path) -> list[Path]:
    """The COLMAP model folders of a scene: ``sparse`` itself, else its sub-folders with a model (sorted)."""
    if not sparse.is_dir():
        return []
    if has_model(sparse):
        return [sparse]
    return sorted(p for p in sparse.rglob("*") if p.is_dir() and has_model(p))


def read_depth_file(depth_dir: Path, image_name: str, shape: tuple[int, int], png_scale: float) -> np.ndarray:
    """Depth of an image from ``<stem>.h5`` (dataset 'depth') or ``<stem>.png`` (uint16 * png_scale); 0 = invalid."""
    stem = Path(image_name).stem
    candidates = [depth_dir / f"{stem}.h5", depth_dir / f"{Path(image_name).name}.h5", depth_dir / f"{stem}.png"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FrameError("missing_file", f"none of {', '.join(str(c) for c in candidates)} exists")
    if path.suffix == ".h5":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "depth" not in f:
                    raise FrameError("unreadable_file", f"{path}: no dataset 'depth' (has {sorted(f.keys())})")
                depth = np.asarray(f["depth"], dtype=np.float32)
        except OSError as e:
            raise FrameError("unreadable_file", f"{path}: {e}") from None
    else:
        depth = read_depth_png(path).astype(np.float32) * np.float32(png_scale)
    if depth.shape != shape:
        raise FrameError("size_mismatch", f"{path}: {depth.shape[1]}x{depth.shape[0]}, image is {shape[1]}x{shape[0]}")
    if not (np.isfinite(depth) & (depth > 0)).any():
        raise FrameError("no_valid_depth", f"{path}: no finite positive depth")
    return depth


def _depth_loader(depth_dir: Path, name: str, K: Intrinsics, dist: list[float] | None, T: np.ndarray, png_scale: float):
    def load(rng: np.random.Generator, n: int) -> FrameData:
        depth = read_depth_file(depth_dir, name, (K.height, K.width), png_scale)
        if dist is None:
            return pinhole_frame(depth, K, T, rng, n)
        K_grid = K.scaled(0.5, 0.5, width=max(1, K.width // 2), height=max(1, K.height // 2))
        return ray_frame(
            depth, lambda uv: opencv_rays(uv, K, dist), T, rng, n,
            to_image=opencv_projector(K, dist), K_grid=K_grid, same_grid=True,
        )

    return load


def _sfm_loader(rec, image, K: Intrinsics, dist: list[float] | None, T: np.ndarray):
    def load(rng: np.random.Generator, n: int) -> FrameData:
        ids = np.array(sorted({p.point3D_id for p in image.points2D if p.has_point3D()}), dtype=np.int64)
        if ids.size == 0:
            raise FrameError("no_labels", f"image {image.name} observes no 3D point")
        xyz = np.array([rec.points3D[int(i)].xyz for i in ids], dtype=np.float64)
        to_image = pinhole_projector(K) if dist is None else opencv_projector(K, dist)
        data = sfm_frame(xyz, ids, T, to_image, K)
        order = rng.permutation(len(data.pixels))  # random order: any prefix of the matches is a uniform sample
        return FrameData(data.pixels[order], data.points[order], to_image, None, data.point_ids[order])

    return load


@register
class MegaDepthAdapter(Adapter):
    """COLMAP scenes (MegaDepth-style, up to scale) -> covisible pose/correspondence pairs."""

    name = "megadepth"
    description = "MegaDepth-style COLMAP scenes (not metric): covisible posed pairs with matches, from depth or shared SfM points"
    metric_default = False
    sparse_default = "sparse"
    layout = """\
ROOT/
  0015/
    sparse/{cameras,images,points3D}.{bin|txt}   COLMAP model, camera-from-world (or sparse/<sub>/...)
    images/<name>.jpg                            images named as in the model
    depths/<stem>.h5                             optional: dataset 'depth', z-depth, 0 = invalid
options.extra: sparse_dir (sparse), images_dir (images), depth_dir (depths), metric_scale (false),
               depth_png_scale (0.001), min_gap, max_gap (none), match_points, depth_tolerance (0.05),
               candidates, max_tries, depth_records, pair_records, random_order,
               scenes (a,b | @FILE), max_scenes, exclude_images ([scene:]name ending, ...)
"""
    labels = ("poses", "matches")

    def _dirs(self) -> tuple[str, str, str]:
        x = self.options.extra
        return x.get("sparse_dir", self.sparse_default), x.get("images_dir", "images"), x.get("depth_dir", "depths")

    def units(self) -> list[str]:
        sparse = self._dirs()[0]
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and find_models(p / sparse))
        if not found:
            raise LayoutError(f"{self.root}: no scene folder with a COLMAP model in <scene>/{sparse}/ found; expected:\n{self.layout}")
        return select_scenes(self.root, found, self.options)

    def manifest_info(self) -> dict:
        return {
            "source": self.description,
            "depth_type": "z",
            "pose_source": "COLMAP camera-from-world",
            "metric_scale": option_flag(self.options, "metric_scale", self.metric_default),
        }

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        sparse, images_dir, depth_name = self._dirs()
        scene_dir = self.root / unit
        metric = option_flag(self.options, "metric_scale", self.metric_default)
        png_scale = option_float(self.options, "depth_png_scale", 0.001)
        models = find_models(scene_dir / sparse)
        if not models:
            yield Rejection(str(scene_dir / sparse), "unreadable_file", "no COLMAP model (cameras.bin/.txt) found")
            return
        depth_dir = scene_dir / depth_name
        use_depth = depth_dir.is_dir()
        for model in models:
            label = unit if model == scene_dir / sparse else f"{unit}/{model.relative_to(scene_dir / sparse).as_posix()}"
            yield from self._convert_model(model, label, scene_dir, images_dir, depth_dir if use_depth else None, metric, png_scale)

    def _convert_model(
        self, model: Path, label: str, scene_dir: Path, images_dir: str, depth_dir: Path | None, metric: bool, png_scale: float
    ) -> Iterator[Record | Rejection]:
        try:
            rec = load_reconstruction(model)
        except (FileNotFoundError, ValueError) as e:
            yield Rejection(str(model), "unreadable_file", str(e))
            return
        frames: list[FrameSource] = []
        for image in sorted(rec.images.values(), key=lambda im: im.name):
            if excluded_image(label.split("/")[0], image.name, self.options):
                continue
            img_path = scene_dir / images_dir / image.name
            try:
                if not image.has_pose:
                    raise FrameError("missing_file", f"image {image.name} is not registered")
                try:
                    K, dist = camera_from_colmap(rec.cameras[image.camera_id])
                except ValueError as e:
                    raise FrameError("bad_calibration", f"{model}: {e}") from None
                size = image_size(img_path)
                if size != (K.width, K.height):
                    raise FrameError("size_mismatch", f"{img_path}: {size[0]}x{size[1]}, camera {image.camera_id} is {K.width}x{K.height}")
                T = cam_from_world(image)
            except FrameError as e:
                yield Rejection(str(img_path), e.reason, e.detail)
                continue
            if depth_dir is not None:
                load, source = _depth_loader(depth_dir, image.name, K, dist, T, png_scale), str(depth_dir / Path(image.name).stem)
            else:
                load, source = _sfm_loader(rec, image, K, dist, T), str(img_path)
            rel = (scene_dir / images_dir / image.name).relative_to(self.root).as_posix()
            view = View(image=rel, intrinsics=K.to_list(), dist=dist, T_cam_from_world=T.tolist())
            frames.append(FrameSource(Path(image.name).stem, view, load, source))
        if not frames:
            yield Rejection(str(model), "missing_file", "no usable images")
            return
        cfg = SceneConfig.from_options(self.name, label, self.options, metric_scale=metric, max_gap=None, depth_records=metric and depth_dir is not None)
        yield from scene_records(frames, cfg)


@register
class ScanNetPPDslrAdapter(MegaDepthAdapter):
    """ScanNet++ DSLR scenes undistorted by the ScanNet++ toolkit's COLMAP route (metric poses)."""

    name = "scannetpp_dslr"
    description = "ScanNet++ DSLR images undistorted to PINHOLE via COLMAP (metric): covisible posed pairs, optional rendered depth"
    metric_default = True
    sparse_default = "colmap"
    layout = """\
ROOT/                                        output of `python -m dslr.undistort_colmap` (ScanNet++ toolkit)
  0a5c013435/
    colmap/{cameras,images,points3D}.txt     PINHOLE cameras, camera-from-world, metric
    images/DSC00001.JPG ...
    depths/DSC00001.png                      optional: uint16 depth in mm for the undistorted camera, 0 = invalid
options.extra: as for megadepth (sparse_dir defaults to colmap, metric_scale to true), e.g.
               scenes=@nvs_sem_val.txt (the split file of the ScanNet++ download) max_scenes=30
"""
    labels = ("depth", "poses", "matches")
