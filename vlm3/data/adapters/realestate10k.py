"""RealEstate10K camera trajectories (google.github.io/realestate10k): posed pairs, up to scale.

Layout. The release (``RealEstate10K.tar.gz``) holds one text file per clip,
``RealEstate10K/<split>/<clip id>.txt`` (split ``train`` or ``test``). Frames are not released:
users download the YouTube videos and extract the listed timestamps themselves. The layout read
here is the one of the common downloader (github.com/cashiwamochi/RealEstate10K_Downloader,
``generate_dataset.py``: ``./dataset/<mode>/<clip id>/<timestamp>.png``, the timestamp written
exactly as in the camera file; some forks write ``.jpg``, also accepted)::

    ROOT/RealEstate10K/<split>/<clip id>.txt          option cameras_dir (default RealEstate10K)
    ROOT/dataset/<split>/<clip id>/<timestamp>.png    option frames_dir (default dataset)

``<split>`` is the adapter's ``split`` option (``train`` by default). Units are the clips that
have a frame folder (clips whose video could not be downloaded have none and are not units).

Conventions of the source and how they are converted
----------------------------------------------------
- Camera file: line 1 is the YouTube URL; then one line per frame with 19 numbers:
  ``timestamp`` (microseconds, integer), ``fx fy cx cy`` **normalised by the image width /
  height**, two further numbers (0 in the release; pixelSplat's ``dataset_re10k.py`` skips
  ``poses[:, 4:6]``; a frame where they are not 0 is rejected as ``bad_calibration``), then a 3x4
  **world-to-camera** matrix in row-major order (pixelSplat: "Convert the extrinsics to a 4x4
  OpenCV-style W2C matrix", then ``w2c.inverse()`` for its camera-to-world extrinsics).
- Pose: the 3x4 matrix is camera-from-world with OpenCV axes (x right, y down, z forward), which
  is what records store: **no inversion**, the bottom row [0, 0, 0, 1] is appended. A matrix
  that is not finite or not a rotation (tolerance 1e-3) is ``bad_pose``.
- Intrinsics: fx * W, fy * H, cx * W, cy * H with (W, H) the size of the extracted frame (read
  from its header: frames may be resized, e.g. the downloader halves wide videos). Normalised
  coordinates span the image, [0, 1] from the left edge of the first pixel to the right edge of
  the last (pixelSplat samples pixel centres at ``(i + 0.5) / W``), so the denormalised values
  are already vlm3's **corner-origin** pixels: no half-pixel shift.
- Scale: the trajectories come from ORB-SLAM and bundle adjustment, scaled per clip, with no
  metric reference: ``metric_scale=False`` (the pose task asks direction and rotation, never a
  distance in metres). No depth, hence no matches and no depth records.
- Pairs: there is no depth, so the covisibility of a pair **cannot be computed**: the "covisibility
  > 25 %" rule of the posed adapters is not checked here, ``covisibility`` is left empty. Pairs
  are drawn instead by frame gap, counted in lines of the camera file (the clip's frames in
  time order): ``min_gap`` = 45 and ``max_gap`` = 192 by default, pixelSplat's bounded view
  sampler for RealEstate10K after warm-up
  (``config/dataset/view_sampler_dataset_specific_config/bounded_re10k.yaml``:
  ``min/max_distance_between_context_views``), i.e. wide-baseline pairs that its training still
  treats as views of one scene. A pair whose camera centres are closer than ``min_baseline``
  (default 1e-3 in the clip's units, pixelSplat's ``baseline_epsilon``) is skipped: its
  translation direction is undefined. Up to ``pairs_per_scene`` pairs per clip, a seeded uniform
  draw (``vlm3.data.scenes.select_pairs``); the two views are swapped with probability 1/2
  (seeded; option ``random_order``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, LayoutError, Rejection, option_flag, option_float, option_int, register
from vlm3.data.adapters.kit import image_size
from vlm3.data.records import Record, View
from vlm3.data.sampling import item_rng
from vlm3.data.scenes import DEFAULT_PAIRS_PER_SCENE, FrameError, candidate_pairs, select_pairs
from vlm3.geometry.camera import Intrinsics
from vlm3.geometry.pose import is_rotation

MIN_GAP = 45  # pixelSplat bounded_re10k.yaml: min_distance_between_context_views
MAX_GAP = 192  # max_distance_between_context_views
MIN_BASELINE = 1e-3  # pixelSplat re10k.yaml: baseline_epsilon
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class CameraLine:
    """One frame of a RealEstate10K camera file."""

    timestamp: int
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy normalised by width / height
    extra: tuple[float, float]
    w2c: np.ndarray  # (3, 4) camera-from-world, row-major from the file


def parse_camera_file(path: Path) -> tuple[str, list[CameraLine | FrameError]]:
    """The URL and per-frame lines of a camera file; a malformed line becomes a FrameError in place.

    ValueError when the file is empty.
    """
    lines = path.read_text().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty camera file")
    url, out = lines[0].strip(), []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 19:
                raise ValueError(f"{len(parts)} values, expected 19")
            ts = int(parts[0])
            v = [float(x) for x in parts[1:]]
        except ValueError as e:
            out.append(FrameError("invalid_record", f"{path}:{n}: {e}"))
            continue
        out.append(CameraLine(ts, (v[0], v[1], v[2], v[3]), (v[4], v[5]), np.asarray(v[6:], dtype=np.float64).reshape(3, 4)))
    return url, out


def cam_from_world(cam: CameraLine, source: str) -> np.ndarray:
    """4x4 camera-from-world of a camera line; FrameError('bad_pose') when not a finite rigid transform."""
    T = np.eye(4)
    T[:3, :] = cam.w2c
    if not np.all(np.isfinite(T)) or not is_rotation(T[:3, :3], atol=1e-3):
        raise FrameError("bad_pose", f"{source}: the 3x4 world-to-camera matrix is not a finite rigid transform")
    return T


def denormalised_intrinsics(cam: CameraLine, width: int, height: int, source: str) -> Intrinsics:
    fx, fy, cx, cy = cam.intrinsics
    if any(x != 0 for x in cam.extra):
        raise FrameError("bad_calibration", f"{source}: values 6-7 are {cam.extra}, expected 0 (no distortion model is defined)")
    if not all(np.isfinite([fx, fy, cx, cy])) or fx <= 0 or fy <= 0:
        raise FrameError("bad_calibration", f"{source}: normalised intrinsics {cam.intrinsics}")
    return Intrinsics(fx * width, fy * height, cx * width, cy * height, width, height)


@register
class RealEstate10KAdapter(Adapter):
    """RealEstate10K clips (camera files + user-extracted frames) -> posed pairs by frame gap, up to scale."""

    name = "realestate10k"
    description = "RealEstate10K trajectories (ORB-SLAM, up to scale) with user-extracted frames: posed pairs by frame gap, no depth"
    layout = """\
ROOT/
  RealEstate10K/<split>/<clip id>.txt        the release: URL line, then per frame
                                             timestamp fx fy cx cy 0 0 r00 r01 r02 t0 r10 .. t2
                                             (intrinsics / image size; 3x4 world-to-camera)
  dataset/<split>/<clip id>/<timestamp>.png  extracted frames (RealEstate10K_Downloader layout; .jpg too)
options.extra: cameras_dir (RealEstate10K), frames_dir (dataset), min_gap (45), max_gap (192),
               min_baseline (0.001), max_tries, random_order (true); split = the adapter split (train)
"""
    labels = ("poses",)

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        x = self.options.extra
        split = self.options.split
        self.cameras = self.root / str(x.get("cameras_dir", "RealEstate10K")) / split
        self.frames_rel = Path(str(x.get("frames_dir", "dataset"))) / split
        self.frames = self.root / self.frames_rel

    def units(self) -> list[str]:
        if not self.cameras.is_dir():
            raise LayoutError(f"{self.root}: no camera folder {self.cameras}; expected:\n{self.layout}")
        clips = sorted(p.stem for p in self.cameras.glob("*.txt"))
        if not clips:
            raise LayoutError(f"{self.cameras}: no <clip id>.txt camera files; expected:\n{self.layout}")
        found = [c for c in clips if (self.frames / c).is_dir()]
        if not found:
            raise LayoutError(f"{self.root}: none of the {len(clips)} clips has a frame folder {self.frames}/<clip id>/; expected:\n{self.layout}")
        return found

    def manifest_info(self) -> dict:
        return {
            "source": "RealEstate10K camera files + extracted frames",
            "pose_source": "3x4 world-to-camera (OpenCV), as is",
            "intrinsics": "normalised by the frame size, corner origin",
            "metric_scale": False,
            "covisibility": "not computed (no depth); pairs by frame gap",
        }

    def _frame_file(self, clip: str, ts: int) -> Path | None:
        for suffix in IMAGE_SUFFIXES:
            p = self.frames / clip / f"{ts}{suffix}"
            if p.is_file():
                return p
        return None

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        opts = self.options
        path = self.cameras / f"{unit}.txt"
        try:
            url, lines = parse_camera_file(path)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            yield Rejection(str(path), "unreadable_file", str(e))
            return
        min_gap = int(option_int(opts, "min_gap", MIN_GAP, minimum=1) or MIN_GAP)
        max_gap = option_int(opts, "max_gap", MAX_GAP, minimum=1)
        if max_gap is not None and max_gap < min_gap:
            raise ValueError(f"option max_gap={max_gap} is below min_gap={min_gap}")
        min_baseline = option_float(opts, "min_baseline", MIN_BASELINE)
        k = DEFAULT_PAIRS_PER_SCENE if opts.pairs_per_scene is None else int(opts.pairs_per_scene)

        views: list[View | None] = []
        names: list[str] = []
        for n, cam in enumerate(lines):
            if isinstance(cam, FrameError):
                yield Rejection(str(path), cam.reason, cam.detail)
                views.append(None)
                names.append(f"line{n + 2}")
                continue
            names.append(str(cam.timestamp))
            img = self._frame_file(unit, cam.timestamp)
            source = str(self.frames / unit / f"{cam.timestamp}.png")
            try:
                if img is None:
                    raise FrameError("missing_file", f"no frame {cam.timestamp}{{{','.join(IMAGE_SUFFIXES)}}} in {self.frames / unit}")
                source = str(img)
                w, h = image_size(img)
                K = denormalised_intrinsics(cam, w, h, f"{path}: {cam.timestamp}")
                T = cam_from_world(cam, f"{path}: {cam.timestamp}")
            except FrameError as e:
                yield Rejection(source, e.reason, e.detail)
                views.append(None)
                continue
            rel = (self.frames_rel / unit / img.name).as_posix()
            views.append(View(image=rel, intrinsics=K.to_list(), T_cam_from_world=T.tolist()))

        n = len(views)
        if n <= min_gap:
            yield Rejection(str(path), "no_labels", f"{n} frames: no pair with a gap of at least min_gap={min_gap}")
            return
        centres = [None if v is None else -np.asarray(v.T_cam_from_world)[:3, :3].T @ np.asarray(v.T_cam_from_world)[:3, 3] for v in views]

        def score(i: int, j: int) -> float | None:
            if centres[i] is None or centres[j] is None:
                return None
            return 1.0 if float(np.linalg.norm(centres[i] - centres[j])) >= min_baseline else None

        cand = candidate_pairs(n, min_gap=min_gap, max_gap=max_gap)
        chosen = select_pairs(
            cand, score, k=k, min_covisibility=0.0, rng=item_rng(int(opts.seed), f"{self.name}/{unit}/pairs"),
            max_tries=option_int(opts, "max_tries", None, minimum=1),
        )
        if not chosen and len(cand):
            yield Rejection(
                str(path), "no_labels",
                f"none of {len(cand)} candidate pairs (gap {min_gap}..{max_gap}) has two usable frames whose camera centres are >= min_baseline={min_baseline:g} apart",
            )
        random_order = option_flag(opts, "random_order", True)
        for sp in chosen:
            i, j = sp.i, sp.j
            rng = item_rng(int(opts.seed), f"{self.name}/{unit}/{names[i]}/{names[j]}/pair")
            if random_order and rng.random() < 0.5:
                i, j = j, i
            yield Record(
                id=f"{self.name}/{unit}/{names[i]}__{names[j]}",
                dataset=self.name,
                split=opts.split,
                views=[views[i], views[j]],
                metric_scale=False,
                meta={"scene": unit, "frame0": names[i], "frame1": names[j], "gap": abs(j - i), "url": url},
            )
