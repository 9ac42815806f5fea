"""Synthetic 3D scenes rendered by exact ray casting: the built-in data source for tests and demos.

Families (``fixed_rig``, ``random_rig``, ``outdoor``) are dataclass configs; every parameter can
be overridden. One scene gives an RGB image with exact z-depth and an id map, optionally a second
view with exact dense correspondences, and labels for depth, pose, correspondence and objects::

    from vlm3.data.synth import get_family, render_scene, generate
    scene = render_scene(get_family("random_rig", focal=(100.0, 200.0)), seed=(0, 7))
    generate("fixed_rig", 200, "data/fixed_rig", seed=0, tasks="depth,pose,corr,object")
"""

from vlm3.data.synth.generate import (
    GENERATOR_VERSION,
    TASKS,
    Scene,
    generate,
    normalize_tasks,
    record_id,
    render_scene,
    scene_to_record,
)
from vlm3.data.synth.pairs import Correspondences, dense_correspondences
from vlm3.data.synth.render import SceneView, cast, render_view
from vlm3.data.synth.scene import (
    FAMILIES,
    PALETTE,
    SURFACE_NAMES,
    IndoorFamily,
    Layout,
    OutdoorFamily,
    SceneFamily,
    SceneObject,
    camera_pose,
    family_from_params,
    family_names,
    get_family,
    parse_override,
)

__all__ = [
    "FAMILIES",
    "GENERATOR_VERSION",
    "PALETTE",
    "SURFACE_NAMES",
    "TASKS",
    "Correspondences",
    "IndoorFamily",
    "Layout",
    "OutdoorFamily",
    "Scene",
    "SceneFamily",
    "SceneObject",
    "SceneView",
    "camera_pose",
    "cast",
    "dense_correspondences",
    "family_from_params",
    "family_names",
    "generate",
    "get_family",
    "normalize_tasks",
    "parse_override",
    "record_id",
    "render_scene",
    "render_view",
    "scene_to_record",
]
