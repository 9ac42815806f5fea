"""Scenes in memory, their records, and whole synthetic datasets on disk.

Scene ``i`` of a dataset is seeded from ``(seed, i)`` only, with separate random streams for the
layout and view 0, the second view, and label sampling. So a scene does not depend on the other
scenes, the number of workers, or on which tasks were asked for, and runs are byte-identical.
Datasets on disk are written by ``vlm3 prepare`` with the ``synth`` adapter
(``vlm3.data.adapters.synth``); :func:`generate` is its short form.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from vlm3.data.records import DepthLabels, Matches, Object3D, Record, View
from vlm3.data.synth.pairs import Correspondences, sample_second_view
from vlm3.data.synth.render import SceneView, render_view
from vlm3.data.synth.scene import Layout, SceneFamily, SceneObject, get_family, sample_camera0, sample_intrinsics, sample_layout
from vlm3.geometry.pose import transform_points

GENERATOR_VERSION = "1"
LABELS: tuple[str, ...] = ("depth", "poses", "matches", "objects")  # record label fields a scene can fill
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


def normalize_tasks(tasks: str | Iterable[str] | None) -> tuple[str, ...]:
    """Registered task names (in registry order) from names or aliases, a list or a comma-separated string."""
    from vlm3.tasks import get_task, task_names

    if tasks is None:
        return tuple(task_names())
    items = [t.strip().lower() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    chosen = {get_task(t).name for t in items if t}  # UnknownTask (a ValueError) names the choices
    if not chosen:
        raise ValueError(f"no task given; choose from {', '.join(task_names())}")
    return tuple(t for t in task_names() if t in chosen)


def _probe(labels: set[str]) -> Record:
    """A tiny record with exactly the label fields ``labels`` (to ask tasks which ones they need)."""
    T = np.eye(4).tolist() if "poses" in labels else None
    box = Object3D(name="box", center=(0, 0, 2), size=(1, 1, 1), R_cam_from_box=np.eye(3).tolist(), box2d=(0, 0, 5, 5))
    return Record(
        id="probe", dataset="probe",
        views=[View(image=f"{k}.png", intrinsics=[10, 10, 5, 5, 10, 10], T_cam_from_world=T) for k in range(2)],
        depth=DepthLabels(pixels=[(1, 1)], depth=[1.0], depth_type="z") if "depth" in labels else None,
        matches=Matches(pixels0=[(1, 1)], pixels1=[(1, 1)]) if "matches" in labels else None,
        objects=[box, box] if "objects" in labels else None,
    )


def labels_for(tasks: str | Iterable[str] | None) -> frozenset[str]:
    """The label fields (of :data:`LABELS`) that ``tasks`` (default: all) need: those without which a task loses its labels."""
    return _needed(normalize_tasks(tasks))


@lru_cache
def _needed(tasks: tuple[str, ...]) -> frozenset[str]:
    from vlm3.tasks import get_task

    full = set(LABELS)
    return frozenset(label for name in tasks for label in LABELS if not get_task(name).has_labels(_probe(full - {label})))


def _pixel_centers(flat_idx: np.ndarray, width: int) -> np.ndarray:
    return np.stack([flat_idx % width + 0.5, flat_idx // width + 0.5], axis=1).astype(np.float64)


def scene_to_record(
    scene: Scene,
    record_id: str,
    *,
    dataset: str,
    tasks: str | Iterable[str] | None = None,
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
    covers their visible pixels. Only the labels that ``tasks`` (default: all) need are
    written (:func:`labels_for`), poses included.
    """
    labels = labels_for(tasks)
    two_view = "poses" in labels or "matches" in labels
    if two_view and (len(scene.views) < 2 or scene.correspondences is None):
        raise ValueError(f"labels {sorted(labels)} need two views but scene {scene.seed} was rendered with one")
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
            T_cam_from_world=scene.views[k].T_cam_from_world.tolist() if "poses" in labels else None,
        )
        for k in range(n_views)
    ]
    record_meta: dict[str, str | int | float | bool | None] = {"family": scene.family, "generator_version": GENERATOR_VERSION}
    depth = match_labels = objects = None

    if "depth" in labels:
        valid = np.flatnonzero(np.isfinite(v0.depth).ravel())
        pick = valid[rng.choice(len(valid), size=min(points, len(valid)), replace=False)]
        if len(pick):
            values = v0.depth.ravel()[pick].astype(np.float64)
            depth = DepthLabels(
                pixels=[tuple(p) for p in _pixel_centers(pick, v0.K.width).tolist()],
                depth=[round(float(d), 6) for d in values],
                depth_type="z",
            )
    if "matches" in labels:
        corr = scene.correspondences
        assert corr is not None
        covis = np.flatnonzero(corr.covisible.ravel())
        pick = covis[rng.choice(len(covis), size=min(matches, len(covis)), replace=False)]
        match_labels = Matches(
            pixels0=[tuple(p) for p in _pixel_centers(pick, v0.K.width).tolist()],
            pixels1=[tuple(p) for p in corr.flow.reshape(-1, 2)[pick].tolist()],
        )
    if "objects" in labels:
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


def record_id(dataset: str, seed: int, index: int) -> str:
    """Id of scene ``index`` in a dataset generated with ``seed``."""
    return f"{dataset}-{seed}-{index:06d}"


def generate(
    family: str | SceneFamily,
    n_scenes: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    tasks: str | Iterable[str] | None = None,
    points: int = 10,
    matches: int = 20,
    workers: int = 1,
    dataset_name: str | None = None,
    save_depth: bool = False,
    split: str = "train",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Render ``n_scenes`` scenes of ``family`` into a prepared dataset folder; returns the folder.

    The same as ``vlm3 prepare synth --root OUT --out OUT`` with these options (see
    ``vlm3.data.adapters.synth``): records, manifest and ``images/`` all live in ``out_dir``.
    """
    import json

    from vlm3.data.prepare import PrepareError, PrepareOptions, prepare

    fam = get_family(family)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    existing = [p for p in sorted(out.iterdir()) if not p.name.startswith(".")] if out.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"{out} is not empty ({existing[0].name}); pass overwrite=True (--overwrite) to replace it")
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    options = {
        "family": json.dumps(fam.params()), "scenes": str(n_scenes), "tasks": ",".join(normalize_tasks(tasks)),
        "matches": str(matches), "save_depth": str(save_depth).lower(),
    }
    if dataset_name is not None:
        options["name"] = dataset_name
    opts = PrepareOptions(points=points, workers=workers, seed=int(seed), split=split, options=options)
    try:
        prepare("synth", out, out, opts, progress=progress)
    except PrepareError as e:
        raise ValueError(str(e)) from None
    return out
