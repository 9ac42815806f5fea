"""Scenes in memory, their records, and whole synthetic datasets on disk.

Scene ``i`` of a dataset is seeded from ``(seed, i)`` only, with separate random streams for the
layout and view 0, the second view, and label sampling. So a scene does not depend on the other
scenes, the number of workers, or on which tasks were asked for, and runs are byte-identical.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from vlm3.data.io import shard_path, write_manifest, write_shard
from vlm3.data.records import DepthLabels, Matches, Object3D, Record, View
from vlm3.data.synth.pairs import Correspondences, sample_second_view
from vlm3.data.synth.render import SceneView, render_view
from vlm3.data.synth.scene import (
    FLOOR,
    SURFACE_NAMES,
    Layout,
    SceneFamily,
    SceneObject,
    get_family,
    sample_camera0,
    sample_intrinsics,
    sample_layout,
)
from vlm3.geometry.pose import transform_points

GENERATOR_VERSION = "1"
TASKS: tuple[str, ...] = ("depth", "pose", "correspondence", "object")
_TASK_ALIASES = {
    "depth": "depth",
    "pose": "pose",
    "corr": "correspondence",
    "correspondence": "correspondence",
    "correspondences": "correspondence",
    "matches": "correspondence",
    "object": "object",
    "objects": "object",
}
_STREAM_LAYOUT, _STREAM_PAIR, _STREAM_LABELS = 0, 1, 2
_DOWN_WORLD = np.array([0.0, 0.0, -1.0])


@dataclass
class Scene:
    """A rendered scene: its layout (world frame, see ``scene.py``), one or two views, correspondences."""

    family: str
    seed: tuple[int, ...]
    layout: Layout
    views: list[SceneView]
    correspondences: Correspondences | None = None  # view 0 -> view 1, when two views
    pair_tries: int = 0  # draws of view 1 needed to reach the covisibility threshold

    @property
    def objects(self) -> tuple[SceneObject, ...]:
        return self.layout.objects

    def gravity_cam(self, view: int = 0) -> np.ndarray:
        """Unit 'down' direction in a view's camera frame."""
        return self.views[view].T_cam_from_world[:3, :3] @ _DOWN_WORLD

    def object_in_camera(self, obj: SceneObject, view: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """An object's box centre (metres) and R_cam_from_box in a view's camera frame."""
        T = self.views[view].T_cam_from_world
        return transform_points(T, np.asarray(obj.center))[0], T[:3, :3] @ obj.R_world_from_box

    def label_names(self) -> dict[int, str]:
        """Id-map value -> category word (sky, floor/ground, wall, ceiling, box, sphere, ...)."""
        return self.layout.label_names()


def _seed_tuple(seed: int | Sequence[int]) -> tuple[int, ...]:
    parts = (seed,) if isinstance(seed, (int, np.integer)) else tuple(seed)
    if not parts or not all(isinstance(s, (int, np.integer)) and s >= 0 for s in parts):
        raise ValueError(f"seed must be a non-negative integer or a sequence of them, got {seed!r}")
    return tuple(int(s) for s in parts)


def _rng(seed: tuple[int, ...], stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([*seed, stream]))


def render_scene(family: str | SceneFamily, seed: int | Sequence[int], *, two_view: bool = True) -> Scene:
    """Sample and render one scene of ``family``; ``seed`` is an int or a tuple such as (seed, index)."""
    fam = get_family(family)
    seed_t = _seed_tuple(seed)
    rng = _rng(seed_t, _STREAM_LAYOUT)
    K0 = sample_intrinsics(fam, rng)
    T0 = sample_camera0(fam, rng)
    layout = sample_layout(fam, K0, T0, rng)
    view0, depth0 = render_view(layout, K0, T0)
    scene = Scene(fam.name, seed_t, layout, [view0])
    if two_view:
        K1, T1, corr, tries = sample_second_view(fam, layout, K0, T0, depth0, _rng(seed_t, _STREAM_PAIR))
        scene.views.append(render_view(layout, K1, T1)[0])
        scene.correspondences, scene.pair_tries = corr, tries
    return scene


def normalize_tasks(tasks: str | Iterable[str]) -> tuple[str, ...]:
    """Canonical task names from a list or a comma-separated string ("corr" = "correspondence")."""
    items = [t.strip().lower() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    items = [t for t in items if t]
    bad = [t for t in items if t not in _TASK_ALIASES]
    if bad or not items:
        raise ValueError(f"unknown task(s) {bad or items!r}; choose from depth, pose, corr (correspondence), object")
    chosen = {_TASK_ALIASES[t] for t in items}
    return tuple(t for t in TASKS if t in chosen)


def _pixel_centers(flat_idx: np.ndarray, width: int) -> np.ndarray:
    return np.stack([flat_idx % width + 0.5, flat_idx // width + 0.5], axis=1).astype(np.float64)


def scene_to_record(
    scene: Scene,
    record_id: str,
    *,
    dataset: str,
    tasks: str | Iterable[str] = TASKS,
    points: int = 10,
    matches: int = 20,
    split: str = "train",
    image_paths: Sequence[str] | None = None,
    min_object_pixels: int = 4,
    meta: dict[str, str | int | float | bool | None] | None = None,
) -> Record:
    """Labels of ``scene`` as a :class:`Record` (samples drawn from the scene's own seed).

    Depth: ``points`` valid view-0 pixel centres, uniform over pixels with a surface, z-depth.
    Matches: ``matches`` pixel centres uniform over covisible view-0 pixels, exact view-1 pixels.
    Objects: those with at least ``min_object_pixels`` visible pixels in view 0; the 2D box
    covers their visible pixels. Poses are written only when "pose" is among ``tasks``.
    """
    tasks_t = normalize_tasks(tasks)
    two_view = "pose" in tasks_t or "correspondence" in tasks_t
    if two_view and (len(scene.views) < 2 or scene.correspondences is None):
        raise ValueError(f"tasks {tasks_t} need two views but scene {scene.seed} was rendered with one")
    if points < 0 or matches < 0:
        raise ValueError(f"points and matches must be >= 0, got points={points}, matches={matches}")
    n_views = 2 if two_view else 1
    if image_paths is None:
        image_paths = [f"images/{record_id}_{k}.png" for k in range(n_views)]
    if len(image_paths) < n_views:
        raise ValueError(f"{n_views} image paths needed, got {list(image_paths)}")
    rng = _rng(scene.seed, _STREAM_LABELS)
    v0 = scene.views[0]
    views = [
        View(
            image=str(image_paths[k]),
            intrinsics=scene.views[k].K.to_list(),
            T_cam_from_world=scene.views[k].T_cam_from_world.tolist() if "pose" in tasks_t else None,
        )
        for k in range(n_views)
    ]
    record_meta: dict[str, str | int | float | bool | None] = {"family": scene.family, "generator_version": GENERATOR_VERSION}
    depth = match_labels = objects = None

    if "depth" in tasks_t:
        valid = np.flatnonzero(np.isfinite(v0.depth).ravel())
        pick = valid[rng.choice(len(valid), size=min(points, len(valid)), replace=False)]
        if len(pick):
            values = v0.depth.ravel()[pick].astype(np.float64)
            depth = DepthLabels(
                pixels=[tuple(p) for p in _pixel_centers(pick, v0.K.width).tolist()],
                depth=[round(float(d), 6) for d in values],
                depth_type="z",
            )
    if "correspondence" in tasks_t:
        corr = scene.correspondences
        assert corr is not None
        covis = np.flatnonzero(corr.covisible.ravel())
        pick = covis[rng.choice(len(covis), size=min(matches, len(covis)), replace=False)]
        match_labels = Matches(
            pixels0=[tuple(p) for p in _pixel_centers(pick, v0.K.width).tolist()],
            pixels1=[tuple(p) for p in corr.flow.reshape(-1, 2)[pick].tolist()],
        )
    if "object" in tasks_t:
        objects, ids = [], []
        for obj in scene.objects:
            rows, cols = np.nonzero(v0.ids == obj.id)
            if len(rows) < max(1, min_object_pixels):
                continue
            center, R = scene.object_in_camera(obj)
            objects.append(
                Object3D(
                    name=obj.name,
                    color=obj.color,
                    center=tuple(round(float(c), 6) for c in center),
                    size=tuple(round(float(s), 6) for s in obj.size),
                    R_cam_from_box=[[round(float(x), 9) for x in row] for row in R],
                    box2d=(float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)),
                )
            )
            ids.append(str(obj.id))
        record_meta["object_ids"] = ",".join(ids)  # id-map values of ``objects``, in order
    if two_view:
        record_meta["pair_tries"] = scene.pair_tries
    record_meta.update(meta or {})
    return Record(
        id=record_id,
        dataset=dataset,
        split=split,
        views=views,
        metric_scale=True,
        gravity_cam=tuple(round(float(g), 9) for g in scene.gravity_cam(0)),
        depth=depth,
        matches=match_labels,
        objects=objects,
        covisibility=round(scene.correspondences.covisibility, 6) if two_view and scene.correspondences else None,
        meta=record_meta,
    )


# --- datasets on disk ---------------------------------------------------------------------------

_OUTPUT_DIRS = ("records", "images", "dense")


@dataclass(frozen=True)
class _Job:
    family: SceneFamily
    out_dir: str
    dataset: str
    seed: int
    tasks: tuple[str, ...]
    points: int
    matches: int
    split: str
    save_depth: bool


def record_id(dataset: str, seed: int, index: int) -> str:
    """Id of scene ``index`` in a dataset generated with ``seed``."""
    return f"{dataset}-{seed}-{index:06d}"


def _make_record(job: _Job, index: int) -> Record:
    """Render scene ``index``, write its images (and dense maps), return its record."""
    two_view = "pose" in job.tasks or "correspondence" in job.tasks
    scene = render_scene(job.family, (job.seed, index), two_view=two_view)
    rid = record_id(job.dataset, job.seed, index)
    out = Path(job.out_dir)
    paths, meta = [], {"scene_index": index, "seed": job.seed}
    for k, view in enumerate(scene.views):
        rel = f"images/{rid}_{k}.png"
        Image.fromarray(view.image).save(out / rel, format="PNG", compress_level=6)
        paths.append(rel)
        if job.save_depth:
            depth_rel, ids_rel = f"dense/{rid}_{k}_depth.npy", f"dense/{rid}_{k}_ids.png"
            np.save(out / depth_rel, view.depth)
            Image.fromarray(view.ids.astype(np.uint8)).save(out / ids_rel, format="PNG", compress_level=6)
            meta[f"depth_map{k}"], meta[f"id_map{k}"] = depth_rel, ids_rel
    return scene_to_record(
        scene, rid, dataset=job.dataset, tasks=job.tasks, points=job.points, matches=job.matches,
        split=job.split, image_paths=paths, meta=meta,
    )


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    existing = [out / d for d in (*_OUTPUT_DIRS, "manifest.json") if (out / d).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset ({existing[0].name}); pass overwrite=True (--overwrite) to replace it")
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)


def generate(
    family: str | SceneFamily,
    n_scenes: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    tasks: str | Iterable[str] = TASKS,
    points: int = 10,
    matches: int = 20,
    workers: int = 1,
    dataset_name: str | None = None,
    save_depth: bool = False,
    split: str = "train",
    shard_size: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Render ``n_scenes`` scenes into a prepared vlm3 dataset folder; returns the folder.

    Layout: ``manifest.json``, ``records/NNNNN.jsonl`` (one record per scene), ``images/*.png``
    and, with ``save_depth``, ``dense/*_depth.npy`` (float32 z-depth, NaN = sky) and
    ``dense/*_ids.png`` (id maps) named in each record's ``meta``. Serial and parallel runs
    (``workers``) write identical files.
    """
    from tqdm.auto import tqdm

    fam = get_family(family)
    tasks_t = normalize_tasks(tasks)
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if workers < 1 or shard_size < 1:
        raise ValueError(f"workers and shard_size must be >= 1, got workers={workers}, shard_size={shard_size}")
    dataset = dataset_name or fam.name
    if not dataset or "/" in dataset or os.sep in dataset:
        raise ValueError(f"dataset name {dataset!r} must be non-empty and contain no path separator")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    if save_depth:
        (out / "dense").mkdir(exist_ok=True)

    job = _Job(fam, str(out), dataset, int(seed), tasks_t, points, matches, split, save_depth)
    make = partial(_make_record, job)
    bar = tqdm(total=n_scenes, desc=f"synth {dataset}", unit="scene", disable=not progress)
    records: list[Record] = []
    if workers == 1:
        for i in range(n_scenes):
            records.append(make(i))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for rec in pool.map(make, range(n_scenes), chunksize=max(1, min(16, n_scenes // (4 * workers)))):
                records.append(rec)
                bar.update()
    bar.close()

    shards = []
    for k, start in enumerate(range(0, n_scenes, shard_size)):
        path = shard_path(out, k)
        write_shard(records[start : start + shard_size], path)
        shards.append(path.relative_to(out).as_posix())
    widths = [int(v.intrinsics[4]) for r in records for v in r.views]
    heights = [int(v.intrinsics[5]) for r in records for v in r.views]
    manifest = {
        "dataset": dataset,
        "split": split,
        "source": "vlm3.synth",
        "generator_version": GENERATOR_VERSION,
        "family": fam.name,
        "family_kind": fam.kind,
        "family_params": fam.params(),
        "seed": int(seed),
        "num_scenes": n_scenes,
        "num_records": len(records),
        "tasks": list(tasks_t),
        "points_per_record": points,
        "matches_per_record": matches,
        "image_root": ".",
        "image_size": {"width": [min(widths), max(widths)], "height": [min(heights), max(heights)]},
        "save_depth": save_depth,
        "conventions": {
            "pixels": "continuous, corner origin, x = column, y = row; pixel (i, j) has centre (i + 0.5, j + 0.5)",
            "depth_type": "z",
            "units": "metres",
            "pose": "views store T_cam_from_world; camera axes X right, Y down, Z forward",
            "world": "X right, Y forward, Z up (gravity -Z); floor/ground at Z = 0",
            "sky": "no surface: never sampled, NaN in dense depth maps",
            "objects": "3D boxes in view 0's camera frame, size (width, height, length), height along gravity",
        },
        "id_map": {
            "0": "sky",
            "1-99": "objects; meta.object_ids lists the ids of a record's objects in order",
            **{str(k): ("floor (ground outdoors)" if k == FLOOR else v) for k, v in SURFACE_NAMES.items() if k >= FLOOR},
        },
        "shards": shards,
    }
    write_manifest(out, manifest)
    return out
