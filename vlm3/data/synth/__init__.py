"""Synthetic 3D scenes rendered by exact ray casting: the built-in data source for tests and demos.

Families (``fixed_rig``, ``random_rig``, ``outdoor``, ``cluttered``; ``family_names()`` lists
them) are dataclass configs; every parameter can be overridden. One scene gives an RGB image with exact z-depth and an id map, optionally a second
view with exact dense correspondences, and labels for depth, pose, correspondence and objects::

    from vlm3.data.synth import get_family, render_scene, generate
    scene = render_scene(get_family("random_rig", focal=(100.0, 200.0)), seed=(0, 7))
    generate("fixed_rig", 200, "data/fixed_rig", seed=0, tasks="depth,pose,corr,object")

``generate`` runs ``vlm3 prepare`` with the ``synth`` adapter (``vlm3.data.adapters.synth``).
Modules: ``scene`` (families, layouts), ``render`` (ray casting), ``pairs`` (second views and
dense correspondences), ``generate`` (scenes to records and datasets).
"""

from vlm3.data.synth.generate import Scene, generate, labels_for, normalize_tasks, render_scene, scene_to_record
from vlm3.data.synth.scene import FAMILIES, SURFACE_NAMES, SceneFamily, family_from_params, family_names, get_family, parse_override, parse_size

__all__ = [
    "FAMILIES",
    "SURFACE_NAMES",
    "Scene",
    "SceneFamily",
    "family_from_params",
    "family_names",
    "generate",
    "get_family",
    "labels_for",
    "normalize_tasks",
    "parse_override",
    "parse_size",
    "render_scene",
    "scene_to_record",
]
