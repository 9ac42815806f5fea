"""Synthetic scenes (``vlm3.data.synth``) as an adapter: ``vlm3 prepare synth`` renders them.

The dataset root is where the rendered images go; with ``--root`` equal to ``--out`` the dataset is
self-contained (manifest ``image_root`` "."). ``vlm3 synth`` and ``vlm3.data.synth.generate`` are
short forms of this.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
from PIL import Image

from vlm3.data.adapters.base import Adapter, AdapterOptions, Rejection, option_flag, option_int, register
from vlm3.data.records import Record
from vlm3.data.synth.generate import GENERATOR_VERSION, labels_for, normalize_tasks, record_id, render_scene, scene_to_record
from vlm3.data.synth.scene import FLOOR, SURFACE_NAMES, SceneFamily, family_from_params, get_family


@register
class SynthAdapter(Adapter):
    name = "synth"
    description = "Synthetic ray-cast scenes with exact depth, poses, matches and 3D boxes (rendered, not read)."
    labels = ("depth", "poses", "matches", "objects")
    layout = """\
Nothing to read: scenes are rendered into ROOT/images (use the same folder for --root and --out).
Options (-o key=value):
  family=NAME | JSON     fixed_rig, random_rig, outdoor, or a family's full params (manifest family_params)
  overrides=JSON         family parameters to replace, e.g. {"width": [112, 112], "focal": [100, 200]}
  scenes=N               number of scenes (required); scene i is seeded from (--seed, i)
  tasks=LIST             tasks whose labels to write (default: all), e.g. depth,pose,corr
  matches=N              matches per pair record (default 20); --points: depth points (default 10)
  name=NAME              dataset name (default: the family's)
  save_depth=true        also write dense/<id>_<k>_depth.npy (z, NaN = sky) and _ids.png id maps
  scenes_per_shard=N     scenes per work unit / record shard (default 100)"""

    def __init__(self, root, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        extra = self.options.extra
        fam = extra.get("family", "fixed_rig")
        try:
            base = family_from_params(json.loads(fam)) if fam.lstrip().startswith("{") else get_family(fam)
            self.family: SceneFamily = get_family(base, **json.loads(extra.get("overrides", "{}")))
        except (KeyError, json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"synth: bad family/overrides option: {e.args[0] if isinstance(e, KeyError) else e}") from None
        self.scenes = option_int(self.options, "scenes", None, minimum=1)
        if self.scenes is None:
            raise ValueError("synth: option scenes=N (number of scenes) is required")
        self.tasks = normalize_tasks(extra.get("tasks"))
        self.matches = option_int(self.options, "matches", 20)
        self.per_unit = option_int(self.options, "scenes_per_shard", 100, minimum=1)
        self.save_depth = option_flag(self.options, "save_depth", False)
        self.dataset = extra.get("name") or self.family.name
        if "/" in self.dataset or "\\" in self.dataset:
            raise ValueError(f"synth: dataset name {self.dataset!r} must contain no path separator")
        if self.options.seed < 0:
            raise ValueError(f"synth: seed must be >= 0, got {self.options.seed}")

    def units(self) -> list[str]:
        return [f"{i:06d}-{min(i + self.per_unit, self.scenes) - 1:06d}" for i in range(0, self.scenes, self.per_unit)]

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        first, last = (int(v) for v in unit.split("-"))
        for index in range(first, last + 1):
            yield self._record(index)

    def _record(self, index: int) -> Record:
        """Render scene ``index``, write its images (and dense maps), return its record."""
        seed = int(self.options.seed)
        two_view = bool(labels_for(self.tasks) & {"poses", "matches"})
        scene = render_scene(self.family, (seed, index), two_view=two_view)
        rid = record_id(self.dataset, seed, index)
        paths, meta = [], {"scene_index": index, "seed": seed}
        for k, view in enumerate(scene.views):
            rel = f"images/{rid}_{k}.png"
            _save_png(view.image, self.root / rel)
            paths.append(rel)
            if self.save_depth:
                depth_rel, ids_rel = f"dense/{rid}_{k}_depth.npy", f"dense/{rid}_{k}_ids.png"
                (self.root / "dense").mkdir(exist_ok=True)
                np.save(self.root / depth_rel, view.depth)
                _save_png(view.ids.astype(np.uint8), self.root / ids_rel)
                meta[f"depth_map{k}"], meta[f"id_map{k}"] = depth_rel, ids_rel
        points = 10 if self.options.points is None else self.options.points
        return scene_to_record(
            scene, rid, dataset=self.dataset, tasks=self.tasks, points=points, matches=self.matches,
            split=self.options.split, image_paths=paths, meta=meta,
        )

    def manifest_info(self) -> dict:
        return {
            "dataset": self.dataset,
            "source_version": f"vlm3.synth {GENERATOR_VERSION}",
            "family": self.family.name,
            "family_params": self.family.params(),
            "tasks": list(self.tasks),
            "world": "X right, Y forward, Z up (gravity -Z); floor/ground at Z = 0; sky: never sampled, NaN in dense depth",
            "id_map": {
                "0": "sky",
                "1-99": "objects; meta.object_ids lists the ids of a record's objects in order",
                **{str(k): ("floor (ground outdoors)" if k == FLOOR else v) for k, v in SURFACE_NAMES.items() if k >= FLOOR},
            },
        }


def _save_png(image: np.ndarray, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", compress_level=6)
