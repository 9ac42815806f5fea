"""Scene families and random scene layout for the synthetic 3D generator.

World frame: metres, X right, Y forward, Z up (gravity is -Z); the floor (indoor) or ground
(outdoor) is the plane Z = 0 and view 0's camera centre is at (0, 0, height). A camera with
yaw = pitch = roll = 0 looks along +Y with its down axis along -Z; its orientation is then
rotated by intrinsic yaw -> pitch -> roll with the same conventions as ``vlm3.geometry.pose``
(yaw + = turn right, pitch + = look up, roll + = clockwise as seen from behind).

Ids in the rendered id maps: 0 = sky (no surface), 1..99 = objects (``SceneObject.id``),
100 and up = structural surfaces (:data:`SURFACE_NAMES`).

An object's box frame (``R_world_from_box``): x = horizontal (width), y = down along gravity
(height), z = horizontal (length); ``yaw_deg`` turns the box x axis from world +X towards +Y.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np

from vlm3.geometry.camera import Intrinsics
from vlm3.geometry.pose import make_T, ypr_to_rotation

Range = tuple[float, float]
IntRange = tuple[int, int]

SKY = 0
FLOOR = 100
CEILING = 101
WALL_LEFT = 102
WALL_RIGHT = 103
WALL_BACK = 104
WALL_FRONT = 105
SURFACE_NAMES: dict[int, str] = {
    SKY: "sky",
    FLOOR: "floor",
    CEILING: "ceiling",
    WALL_LEFT: "wall",
    WALL_RIGHT: "wall",
    WALL_BACK: "wall",
    WALL_FRONT: "wall",
}
GROUND_NAME = "ground"  # FLOOR's name in outdoor scenes

# Named colours (sRGB, 0-255). Object colour words come from here.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (225, 200, 40),
    "orange": (230, 120, 30),
    "purple": (130, 50, 160),
    "cyan": (40, 180, 190),
    "pink": (230, 120, 170),
    "white": (235, 235, 235),
    "black": (35, 35, 35),
    "brown": (120, 75, 40),
    "gray": (128, 128, 128),
    "beige": (215, 195, 160),
}
INDOOR_COLORS = ("red", "green", "blue", "yellow", "orange", "purple", "cyan", "pink", "white", "black", "brown")
BUILDING_COLORS = ("white", "gray", "beige", "brown", "red", "yellow", "blue", "pink")
CAR_COLORS = ("red", "blue", "white", "black", "gray", "green", "yellow", "orange")
POLE_COLORS = ("gray", "black", "white", "green")

# Muted surface colours so that objects stand out.
_FLOOR_PAIRS = (((170, 130, 90), (120, 85, 55)), ((200, 200, 195), (90, 90, 95)), ((150, 160, 170), (95, 105, 120)),
                ((185, 165, 130), (140, 120, 95)))
_WALL_COLORS = ((205, 190, 170), (170, 190, 205), (190, 205, 175), (215, 200, 205), (180, 175, 200), (210, 210, 190),
                (160, 175, 165), (200, 180, 160))
_CEILING_COLORS = ((240, 240, 235), (225, 230, 240), (235, 228, 215))
_GROUND_PAIRS = (((105, 105, 110), (90, 90, 95)), ((95, 120, 70), (80, 105, 60)), ((140, 130, 115), (120, 112, 100)))


# --- families -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneFamily:
    """Camera, image and pair parameters shared by all families. Angles in degrees, lengths in metres.

    Ranges are (low, high) and sampled uniformly; give (v, v) to fix a value.
    """

    name: str = "family"
    camera_height: Range = (1.5, 1.5)  # view 0's camera centre above the floor
    pitch_deg: Range = (-10.0, -10.0)  # + = look up
    yaw_deg: Range = (0.0, 0.0)  # + = turn right, 0 = facing the back wall (+Y)
    roll_deg: Range = (0.0, 0.0)
    focal: Range = (70.0, 280.0)  # native fx in pixels
    fy_ratio: Range = (1.0, 1.0)  # fy = fx * ratio; != 1 gives non-square pixels
    width: IntRange = (112, 112)  # image width in pixels (integers, inclusive)
    aspect: Range = (1.0, 1.0)  # width / height
    principal_jitter: float = 0.0  # max |cx - W/2| as a fraction of W (likewise cy, H)
    # Second view: camera 1 relative to camera 0 (centre offset in a random direction, then rotation).
    translation: Range = (0.2, 1.5)
    rel_yaw_deg: float = 30.0  # sampled in [-v, v]
    rel_pitch_deg: float = 10.0
    rel_roll_deg: float = 5.0
    min_covisibility: float = 0.25  # pairs below are re-drawn
    max_pair_tries: int = 100
    pair_same_camera: bool = True  # view 1 uses view 0's intrinsics (else drawn anew)
    min_camera_clearance: float = 0.25  # camera centres stay this far from every surface

    kind: Literal["indoor", "outdoor"] = field(default="indoor", init=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                if len(value) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
                    raise ValueError(f"{self.name}.{f.name} must be a (low, high) pair of numbers, got {value!r}")
                if value[0] > value[1]:
                    raise ValueError(f"{self.name}.{f.name} = {value!r}: low must be <= high")
        positive = ("camera_height", "focal", "fy_ratio", "width", "aspect", "translation")
        for name in positive + self._positive_ranges():
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"{self.name}.{name} = {getattr(self, name)!r} must be > 0")
        for name in ("width",) + self._int_ranges():
            lo, hi = getattr(self, name)
            if int(lo) != lo or int(hi) != hi:
                raise ValueError(f"{self.name}.{name} = {(lo, hi)!r} must be integers")
        if self.width[0] < 8:
            raise ValueError(f"{self.name}.width = {self.width!r}: images must be at least 8 px wide")
        if not 0 <= self.principal_jitter < 0.5:
            raise ValueError(f"{self.name}.principal_jitter = {self.principal_jitter} must be in [0, 0.5)")
        if not 0 <= self.min_covisibility <= 1:
            raise ValueError(f"{self.name}.min_covisibility = {self.min_covisibility} must be in [0, 1]")
        if self.max_pair_tries < 1:
            raise ValueError(f"{self.name}.max_pair_tries = {self.max_pair_tries} must be >= 1")
        for name in ("rel_yaw_deg", "rel_pitch_deg", "rel_roll_deg", "min_camera_clearance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{self.name}.{name} = {getattr(self, name)} must be >= 0")
        if not (-90 < self.pitch_deg[0] and self.pitch_deg[1] < 90):
            raise ValueError(f"{self.name}.pitch_deg = {self.pitch_deg!r} must stay inside (-90, 90)")

    def _positive_ranges(self) -> tuple[str, ...]:
        return ()

    def _int_ranges(self) -> tuple[str, ...]:
        return ()

    def params(self) -> dict[str, Any]:
        """All parameters as a JSON-ready dict (tuples become lists)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class IndoorFamily(SceneFamily):
    """A closed box-shaped room (floor, ceiling, four walls) with boxes, spheres and cylinders on the floor."""

    back_wall: Range = (7.0, 8.0)  # distance from view 0's camera centre to the wall it faces (along +Y)
    behind: Range = (1.0, 2.5)  # distance to the wall behind the camera
    room_width: Range = (5.0, 8.0)
    room_height: Range = (2.6, 3.2)
    tile: Range = (0.4, 0.7)  # floor checkerboard tile size
    n_boxes: IntRange = (1, 4)
    n_spheres: IntRange = (0, 2)
    n_cylinders: IntRange = (0, 1)
    box_footprint: Range = (0.3, 1.2)  # width and length of boxes
    box_height: Range = (0.3, 1.5)
    sphere_radius: Range = (0.15, 0.5)
    cylinder_radius: Range = (0.1, 0.35)
    cylinder_height: Range = (0.4, 1.6)
    object_distance: Range = (1.5, 6.5)  # horizontal distance from camera 0 to object centres
    wall_margin: float = 0.3  # objects stay this far from the walls

    kind: Literal["indoor", "outdoor"] = field(default="indoor", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, colours in (("n_boxes", INDOOR_COLORS), ("n_spheres", INDOOR_COLORS), ("n_cylinders", INDOOR_COLORS)):
            lo, hi = getattr(self, name)
            if lo < 0 or hi > len(colours):
                raise ValueError(f"{self.name}.{name} = {(lo, hi)!r} must lie in [0, {len(colours)}]")
        if self.camera_height[1] >= self.room_height[0] - self.min_camera_clearance:
            raise ValueError(f"{self.name}.camera_height = {self.camera_height!r} must stay below room_height {self.room_height!r}")
        if self.back_wall[0] <= self.min_camera_clearance or self.behind[0] <= self.min_camera_clearance:
            raise ValueError(f"{self.name}: back_wall and behind must exceed min_camera_clearance")

    def _positive_ranges(self) -> tuple[str, ...]:
        return ("back_wall", "behind", "room_width", "room_height", "tile", "box_footprint", "box_height",
                "sphere_radius", "cylinder_radius", "cylinder_height", "object_distance")

    def _int_ranges(self) -> tuple[str, ...]:
        return ("n_boxes", "n_spheres", "n_cylinders")


@dataclass(frozen=True)
class OutdoorFamily(SceneFamily):
    """A textured ground plane with buildings, cars and poles; sky at infinity (no depth)."""

    camera_height: Range = (1.4, 2.0)
    pitch_deg: Range = (-10.0, 5.0)
    yaw_deg: Range = (-20.0, 20.0)
    aspect: Range = (4 / 3, 4 / 3)
    ground_extent: float = 150.0  # the ground is the square |X|, |Y| <= extent; sky beyond
    tile: Range = (1.5, 3.0)
    n_buildings: IntRange = (3, 8)
    building_footprint: Range = (6.0, 20.0)
    building_height: Range = (4.0, 25.0)
    building_distance: Range = (15.0, 60.0)
    n_cars: IntRange = (1, 4)
    car_width: Range = (1.6, 2.0)
    car_height: Range = (1.3, 1.8)
    car_length: Range = (3.8, 5.0)
    car_distance: Range = (4.0, 20.0)
    n_poles: IntRange = (0, 2)
    pole_radius: Range = (0.08, 0.2)
    pole_height: Range = (3.0, 6.0)
    pole_distance: Range = (4.0, 25.0)

    kind: Literal["indoor", "outdoor"] = field(default="outdoor", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, colours in (("n_buildings", BUILDING_COLORS), ("n_cars", CAR_COLORS), ("n_poles", POLE_COLORS)):
            lo, hi = getattr(self, name)
            if lo < 0 or hi > len(colours):
                raise ValueError(f"{self.name}.{name} = {(lo, hi)!r} must lie in [0, {len(colours)}]")
        if self.ground_extent <= 0:
            raise ValueError(f"{self.name}.ground_extent = {self.ground_extent} must be > 0")

    def _positive_ranges(self) -> tuple[str, ...]:
        return ("tile", "building_footprint", "building_height", "building_distance", "car_width", "car_height",
                "car_length", "car_distance", "pole_radius", "pole_height", "pole_distance")

    def _int_ranges(self) -> tuple[str, ...]:
        return ("n_buildings", "n_cars", "n_poles")


# The rig families share a wide, low room with a few small objects, so that floor, back wall and
# ceiling dominate the view: there, depth follows from the queried row and the field of view,
# which is what a tiny model can learn on a CPU in minutes (and what the content-free lookups in
# vlm3.eval.baselines measure). The low ceiling makes the upper half of the image depend on the
# field of view as well, not only the floor: on fixed-rig scenes the best lookup scores δ1 0.92
# with focal unification and 0.82 at a fixed 112 px size (0.92 vs 0.86 with a 2.6-3.2 m ceiling).
# "cluttered" keeps a crowded room for harder data.
_SPARSE_ROOM = dict(
    room_width=(12.0, 16.0),
    room_height=(2.2, 2.4),
    n_boxes=(1, 2),
    n_spheres=(0, 1),
    n_cylinders=(0, 0),
    box_footprint=(0.3, 0.8),
    box_height=(0.3, 0.8),
    sphere_radius=(0.15, 0.35),
)

FAMILIES: dict[str, SceneFamily] = {
    # Fixed camera rig: only the room content, the focal length and the objects vary.
    "fixed_rig": IndoorFamily(name="fixed_rig", **_SPARSE_ROOM),
    "random_rig": IndoorFamily(
        name="random_rig",
        camera_height=(1.0, 1.8),
        pitch_deg=(-25.0, 5.0),
        yaw_deg=(-20.0, 20.0),
        back_wall=(4.0, 9.0),
        **_SPARSE_ROOM,
    ),
    "cluttered": IndoorFamily(
        name="cluttered",
        camera_height=(1.0, 1.8),
        pitch_deg=(-25.0, 5.0),
        yaw_deg=(-20.0, 20.0),
        back_wall=(4.0, 9.0),
    ),
    "outdoor": OutdoorFamily(name="outdoor"),
}


def family_names() -> list[str]:
    """Names accepted by :func:`get_family`."""
    return sorted(FAMILIES)


def get_family(name: str | SceneFamily, **overrides: Any) -> SceneFamily:
    """The family config called ``name`` with any fields replaced by ``overrides`` (validated)."""
    if isinstance(name, SceneFamily):
        base = name
    elif name in FAMILIES:
        base = FAMILIES[name]
    else:
        raise KeyError(f"unknown scene family {name!r}; available: {', '.join(family_names())}")
    if not overrides:
        return base
    valid = {f.name for f in fields(base) if f.init}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown {base.name} parameter(s) {unknown}; valid: {', '.join(sorted(valid))}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return replace(base, **clean)


def family_from_params(params: dict[str, Any]) -> SceneFamily:
    """Rebuild a family from :meth:`SceneFamily.params` (e.g. a dataset manifest's ``family_params``)."""
    kinds = {"indoor": IndoorFamily, "outdoor": OutdoorFamily}
    kind = params.get("kind", "indoor")
    if kind not in kinds:
        raise ValueError(f"family kind {kind!r} must be one of {sorted(kinds)}")
    cls = kinds[kind]
    valid = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(params) - valid - {"kind"})
    if unknown:
        raise ValueError(f"unknown {kind} family parameter(s) {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in valid})


def parse_override(family: SceneFamily, text: str) -> tuple[str, Any]:
    """Parse ``"key=value"`` (ranges as ``"low,high"``) into a typed override for ``family``."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    current = {f.name: getattr(family, f.name) for f in fields(family) if f.init}
    if key not in current:
        raise ValueError(f"unknown {family.name} parameter {key!r}; valid: {', '.join(sorted(current))}")
    default = current[key]
    try:
        if isinstance(default, tuple):
            parts = [p.strip() for p in raw.split(",")]
            if len(parts) == 1:
                parts = parts * 2
            cast = int if all(isinstance(v, int) for v in default) else float
            value: Any = tuple(cast(p) for p in parts)
        elif isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            value = raw.lower() in ("true", "1", "yes")
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
        else:
            value = raw
    except ValueError:
        raise ValueError(f"cannot parse {key}={raw!r} as {type(default).__name__}") from None
    return key, value


MIN_SIDE = 8  # pixels: the smallest image side scenes are rendered at


def parse_size(text: str, name: str = "--size") -> dict[str, tuple]:
    """Family overrides from an image size: ``"WxH"`` (one fixed size: ``width`` and ``aspect``)
    or ``"W1-W2"`` (a range of widths, the family's aspect). ValueError naming ``name`` and the
    text for anything else: not two whole numbers, a side under 8 px, a range low > high."""
    compact = str(text).lower().replace(" ", "")
    usage = f"{name} {text!r}: use WxH (e.g. 112x112) or a width range W1-W2 (e.g. 56-224), in whole pixels"
    fixed = re.fullmatch(r"([+-]?\d+)x([+-]?\d+)", compact)
    span = re.fullmatch(r"([+-]?\d+)-([+-]?\d+)", compact)
    if fixed is None and span is None:
        raise ValueError(usage)
    a, b = (int(v) for v in (fixed or span).groups())  # type: ignore[union-attr]
    sides = "width and height" if fixed else "widths"
    if min(a, b) < MIN_SIDE:
        raise ValueError(f"{name} {text!r}: {sides} must be at least {MIN_SIDE} px")
    if fixed:
        return {"width": (a, a), "aspect": (a / b, a / b)}
    if a > b:
        raise ValueError(f"{name} {text!r}: the width range W1-W2 needs W1 <= W2")
    return {"width": (a, b)}


# --- layout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """A solid object standing on the floor. Lengths in metres, world frame (see module doc)."""

    id: int
    name: str  # category word: box, sphere, cylinder, building, car, pole
    color: str  # colour word from PALETTE
    shape: Literal["box", "sphere", "cylinder"]
    center: tuple[float, float, float]  # geometric centre
    size: tuple[float, float, float]  # (width, height, length); height along gravity
    yaw_deg: float = 0.0

    @property
    def description(self) -> str:
        """Referring phrase, e.g. "red box" (unique within a scene)."""
        return f"{self.color} {self.name}"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return PALETTE[self.color]

    @property
    def R_world_from_box(self) -> np.ndarray:
        c, s = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        return np.array([[c, 0.0, -s], [s, 0.0, c], [0.0, -1.0, 0.0]])

    @property
    def footprint_radius(self) -> float:
        """Radius of a vertical cylinder around the object (for spacing)."""
        w, _, l = self.size
        return math.hypot(w, l) / 2 if self.shape == "box" else w / 2


@dataclass(frozen=True)
class Room:
    """Axis-aligned room bounds in the world frame (metres)."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float
    height: float


@dataclass(frozen=True)
class Layout:
    """Everything the renderer needs: structure, objects, colours and light."""

    kind: Literal["indoor", "outdoor"]
    objects: tuple[SceneObject, ...]
    room: Room | None  # indoor
    ground_extent: float | None  # outdoor
    tile: float  # floor / ground checkerboard tile, metres
    floor_rgb: tuple[tuple[int, int, int], tuple[int, int, int]]
    wall_rgb: tuple[tuple[int, int, int], ...]  # left, right, back, front
    ceiling_rgb: tuple[int, int, int]
    light_dir: tuple[float, float, float]  # unit vector towards the light (directional)
    ambient: float

    def label_names(self) -> dict[int, str]:
        """Id -> category word for every id that can appear in this scene's id maps."""
        names = dict(SURFACE_NAMES)
        if self.kind == "outdoor":
            names = {SKY: "sky", FLOOR: GROUND_NAME}
        names.update({o.id: o.name for o in self.objects})
        return names


# Camera axes (X right, Y down, Z forward) in the world at yaw = pitch = roll = 0.
_R_WORLD_FROM_CAM_NEUTRAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def camera_pose(center: np.ndarray, yaw: float, pitch: float, roll: float) -> np.ndarray:
    """T_cam_from_world of a camera at ``center`` (world, metres) with the given angles (degrees)."""
    R_world_from_cam = _R_WORLD_FROM_CAM_NEUTRAL @ ypr_to_rotation(yaw, pitch, roll)
    center = np.asarray(center, dtype=np.float64)
    return make_T(R_world_from_cam.T, -R_world_from_cam.T @ center)


def sample_intrinsics(family: SceneFamily, rng: np.random.Generator) -> Intrinsics:
    """Random pinhole intrinsics: focal, image size and principal point from the family's ranges."""
    width = int(rng.integers(family.width[0], family.width[1] + 1))
    aspect = rng.uniform(*family.aspect)
    height = max(8, round(width / aspect))
    fx = rng.uniform(*family.focal)
    fy = fx * rng.uniform(*family.fy_ratio)
    j = family.principal_jitter
    cx = width / 2 + rng.uniform(-j, j) * width
    cy = height / 2 + rng.uniform(-j, j) * height
    return Intrinsics(float(fx), float(fy), float(cx), float(cy), width, height)


def sample_camera0(family: SceneFamily, rng: np.random.Generator) -> np.ndarray:
    """View 0's T_cam_from_world: centre (0, 0, height), angles from the family's ranges."""
    h = rng.uniform(*family.camera_height)
    yaw, pitch, roll = rng.uniform(*family.yaw_deg), rng.uniform(*family.pitch_deg), rng.uniform(*family.roll_deg)
    return camera_pose(np.array([0.0, 0.0, h]), yaw, pitch, roll)


def sample_layout(family: SceneFamily, K0: Intrinsics, T0: np.ndarray, rng: np.random.Generator) -> Layout:
    """A random scene around view 0 (objects are placed inside view 0's horizontal field of view)."""
    if isinstance(family, IndoorFamily):
        return _indoor_layout(family, K0, T0, rng)
    if isinstance(family, OutdoorFamily):
        return _outdoor_layout(family, K0, T0, rng)
    raise TypeError(f"no layout sampler for family type {type(family).__name__}")


def _view_frame(K0: Intrinsics, T0: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Camera centre (xy), horizontal heading angle (radians, from +Y towards +X) and half horizontal FOV."""
    R_world_from_cam = T0[:3, :3].T
    center = -R_world_from_cam @ T0[:3, 3]
    fwd = R_world_from_cam[:, 2]
    heading = math.atan2(fwd[0], fwd[1])
    half_fov = math.atan(K0.width / (2 * K0.fx))
    return center[:2], heading, half_fov


def _place(
    rng: np.random.Generator,
    cam_xy: np.ndarray,
    heading: float,
    half_angle: float,
    distance: Range,
    radius: float,
    placed: list[tuple[np.ndarray, float]],
    inside: Any,
    tries: int = 60,
) -> np.ndarray | None:
    """A free floor position in a horizontal sector in front of the camera, or None."""
    for _ in range(tries):
        ang = heading + rng.uniform(-half_angle, half_angle)
        r = rng.uniform(*distance)
        p = cam_xy + r * np.array([math.sin(ang), math.cos(ang)])
        if np.linalg.norm(p - cam_xy) < radius + 0.6:  # keep the camera out of the object
            continue
        if not inside(p, radius):
            continue
        if all(np.linalg.norm(p - q) >= radius + rq + 0.1 for q, rq in placed):
            return p
    return None


def _colors(rng: np.random.Generator, palette: tuple[str, ...], n: int) -> list[str]:
    return [palette[i] for i in rng.permutation(len(palette))[:n]]


def _light(rng: np.random.Generator) -> tuple[float, float, float]:
    az = rng.uniform(0, 2 * math.pi)
    elev = rng.uniform(math.radians(35), math.radians(70))
    return (math.cos(elev) * math.sin(az), math.cos(elev) * math.cos(az), math.sin(elev))


def _indoor_layout(f: IndoorFamily, K0: Intrinsics, T0: np.ndarray, rng: np.random.Generator) -> Layout:
    cam_xy, heading, half_fov = _view_frame(K0, T0)
    width = rng.uniform(*f.room_width)
    left_share = rng.uniform(0.35, 0.65)
    room = Room(
        x_min=cam_xy[0] - left_share * width,
        x_max=cam_xy[0] + (1 - left_share) * width,
        y_min=cam_xy[1] - rng.uniform(*f.behind),
        y_max=cam_xy[1] + rng.uniform(*f.back_wall),
        height=rng.uniform(*f.room_height),
    )

    def inside(p: np.ndarray, r: float) -> bool:
        m = r + f.wall_margin
        return room.x_min + m <= p[0] <= room.x_max - m and room.y_min + m <= p[1] <= room.y_max - m

    counts = {k: int(rng.integers(lo, hi + 1)) for k, (lo, hi) in
              (("box", f.n_boxes), ("sphere", f.n_spheres), ("cylinder", f.n_cylinders))}
    colors = {k: _colors(rng, INDOOR_COLORS, n) for k, n in counts.items()}
    objects: list[SceneObject] = []
    placed: list[tuple[np.ndarray, float]] = []
    for kind in ("box", "sphere", "cylinder"):
        for color in colors[kind]:
            if kind == "box":
                size = (rng.uniform(*f.box_footprint), rng.uniform(*f.box_height), rng.uniform(*f.box_footprint))
                yaw = rng.uniform(-90.0, 90.0)
            elif kind == "sphere":
                d = 2 * rng.uniform(*f.sphere_radius)
                size, yaw = (d, d, d), 0.0
            else:
                d = 2 * rng.uniform(*f.cylinder_radius)
                size, yaw = (d, rng.uniform(*f.cylinder_height), d), 0.0
            obj = SceneObject(0, kind, color, kind, (0.0, 0.0, 0.0), tuple(float(s) for s in size), float(yaw))
            p = _place(rng, cam_xy, heading, 0.85 * half_fov, f.object_distance, obj.footprint_radius, placed, inside)
            if p is None:
                continue  # the room is full: fewer objects
            placed.append((p, obj.footprint_radius))
            center = (float(p[0]), float(p[1]), size[1] / 2)
            objects.append(replace(obj, id=len(objects) + 1, center=center))

    floor_pair = _FLOOR_PAIRS[rng.integers(len(_FLOOR_PAIRS))]
    walls = tuple(_WALL_COLORS[i] for i in rng.permutation(len(_WALL_COLORS))[:4])
    return Layout(
        kind="indoor",
        objects=tuple(objects),
        room=room,
        ground_extent=None,
        tile=float(rng.uniform(*f.tile)),
        floor_rgb=floor_pair,
        wall_rgb=walls,
        ceiling_rgb=_CEILING_COLORS[rng.integers(len(_CEILING_COLORS))],
        light_dir=_light(rng),
        ambient=0.45,
    )


def _outdoor_layout(f: OutdoorFamily, K0: Intrinsics, T0: np.ndarray, rng: np.random.Generator) -> Layout:
    cam_xy, heading, half_fov = _view_frame(K0, T0)
    ext = f.ground_extent

    def inside(p: np.ndarray, r: float) -> bool:
        return bool(np.all(np.abs(p) + r <= ext))

    objects: list[SceneObject] = []
    placed: list[tuple[np.ndarray, float]] = []
    plan = (
        ("building", "box", f.n_buildings, BUILDING_COLORS, f.building_distance, half_fov + math.radians(15)),
        ("car", "box", f.n_cars, CAR_COLORS, f.car_distance, 0.85 * half_fov),
        ("pole", "cylinder", f.n_poles, POLE_COLORS, f.pole_distance, 0.85 * half_fov),
    )
    for name, shape, (lo, hi), palette, distance, sector in plan:
        for color in _colors(rng, palette, int(rng.integers(lo, hi + 1))):
            if name == "building":
                size = (rng.uniform(*f.building_footprint), rng.uniform(*f.building_height), rng.uniform(*f.building_footprint))
                yaw = rng.uniform(-90.0, 90.0)
            elif name == "car":
                size = (rng.uniform(*f.car_width), rng.uniform(*f.car_height), rng.uniform(*f.car_length))
                yaw = rng.uniform(-90.0, 90.0)
            else:
                d = 2 * rng.uniform(*f.pole_radius)
                size, yaw = (d, rng.uniform(*f.pole_height), d), 0.0
            obj = SceneObject(0, name, color, shape, (0.0, 0.0, 0.0), tuple(float(s) for s in size), float(yaw))
            p = _place(rng, cam_xy, heading, sector, distance, obj.footprint_radius, placed, inside)
            if p is None:
                continue
            placed.append((p, obj.footprint_radius))
            objects.append(replace(obj, id=len(objects) + 1, center=(float(p[0]), float(p[1]), size[1] / 2)))

    return Layout(
        kind="outdoor",
        objects=tuple(objects),
        room=None,
        ground_extent=float(ext),
        tile=float(rng.uniform(*f.tile)),
        floor_rgb=_GROUND_PAIRS[rng.integers(len(_GROUND_PAIRS))],
        wall_rgb=(),
        ceiling_rgb=(0, 0, 0),
        light_dir=_light(rng),
        ambient=0.5,
    )


def camera_is_free(layout: Layout, center: np.ndarray, clearance: float) -> bool:
    """True when a camera centre (world) is inside the scene bounds and outside every object."""
    x, y, z = (float(v) for v in center)
    if z < clearance:
        return False
    if layout.room is not None:
        r = layout.room
        if not (r.x_min + clearance <= x <= r.x_max - clearance and r.y_min + clearance <= y <= r.y_max - clearance):
            return False
        if z > r.height - clearance:
            return False
    elif layout.ground_extent is not None and (abs(x) > layout.ground_extent or abs(y) > layout.ground_extent):
        return False
    for o in layout.objects:
        top = o.center[2] + o.size[1] / 2
        if math.hypot(x - o.center[0], y - o.center[1]) < o.footprint_radius + clearance and z < top + clearance:
            return False
    return True
