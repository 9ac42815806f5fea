"""The record schema: one record per image (depth, object) or per image pair (pose, correspondence).

Every adapter writes records; everything downstream (unification, task samples, mixture, training,
evaluation) reads them. A record is self-describing: conventions are named in its fields.

- ``views``: one or two images. Each view has an image path relative to the dataset root, its
  intrinsics (corner-origin pixels, see ``vlm3.geometry.camera``), optional OpenCV distortion,
  and optionally its camera-from-world pose ``T_cam_from_world`` (4x4; world frame arbitrary but
  shared by the views of one record; metric when ``metric_scale`` is True).
- ``depth``: sampled pixels of view 0 with metric depth and its convention (``"z"`` or ``"range"``).
- ``matches``: pixel correspondences view 0 -> view 1 (continuous pixels in each view's image).
- ``objects``: 3D boxes in view 0's camera frame for object-level questions.
- ``qa``: questions asked as written (a benchmark's own text), each about regions of view 0
  named by 2D boxes, with the benchmark's reference answer and its typed ground truth.

Pixels are continuous corner-origin coordinates (x = column, y = row): the centre of the pixel
with integer index (i, j) is (i + 0.5, j + 0.5).
"""

from __future__ import annotations

import math
import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlm3.geometry.camera import Intrinsics

SCHEMA_VERSION = 1

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class View(_Model):
    """One image of a record."""

    image: str = Field(description="image path relative to the dataset root")
    intrinsics: list[float] = Field(description="[fx, fy, cx, cy, width, height], corner-origin pixels")
    dist: list[float] | None = Field(default=None, description="OpenCV distortion coefficients, None = pinhole")
    T_cam_from_world: list[list[float]] | None = Field(default=None, description="4x4 camera-from-world pose")

    @field_validator("intrinsics")
    @classmethod
    def _check_intrinsics(cls, v: list[float]) -> list[float]:
        Intrinsics.from_list(v)  # raises ValueError with the reason
        return [float(x) for x in v[:4]] + [int(v[4]), int(v[5])]

    @field_validator("T_cam_from_world")
    @classmethod
    def _check_pose(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is None:
            return v
        T = np.asarray(v, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"T_cam_from_world must be a finite 4x4 matrix, got shape {T.shape}")
        R = T[:3, :3]
        if not np.allclose(R.T @ R, np.eye(3), atol=1e-3) or abs(np.linalg.det(R) - 1) > 1e-3:
            raise ValueError("T_cam_from_world rotation is not a proper rotation matrix")
        if not np.allclose(T[3], [0, 0, 0, 1]):
            raise ValueError("T_cam_from_world last row must be [0, 0, 0, 1]")
        return T.tolist()

    @property
    def K(self) -> Intrinsics:
        return Intrinsics.from_list(self.intrinsics)

    @property
    def pose(self) -> np.ndarray | None:
        return None if self.T_cam_from_world is None else np.asarray(self.T_cam_from_world, dtype=np.float64)


class DepthLabels(_Model):
    """Metric depth at sampled pixels of view 0."""

    pixels: list[Vec2] = Field(description="continuous (x, y) pixels in view 0")
    depth: list[float] = Field(description="metres, convention given by depth_type")
    depth_type: Literal["z", "range"] = Field(description='"z" = along the optical axis, "range" = distance from the camera centre')

    @model_validator(mode="after")
    def _check(self) -> "DepthLabels":
        if len(self.pixels) != len(self.depth):
            raise ValueError(f"depth has {len(self.depth)} values for {len(self.pixels)} pixels")
        for i, d in enumerate(self.depth):
            if not (math.isfinite(d) and d > 0):
                raise ValueError(f"depth[{i}] = {d} is not a finite positive number of metres")
        return self


class Matches(_Model):
    """Pixel correspondences from view 0 to view 1 (the same 3D point, visible in both)."""

    pixels0: list[Vec2]
    pixels1: list[Vec2]

    @model_validator(mode="after")
    def _check(self) -> "Matches":
        if len(self.pixels0) != len(self.pixels1):
            raise ValueError(f"matches: {len(self.pixels0)} pixels in view 0 but {len(self.pixels1)} in view 1")
        return self


class Object3D(_Model):
    """An object as an oriented 3D box in view 0's camera frame (X right, Y down, Z forward)."""

    name: str
    center: Vec3 = Field(description="box centre, metres, camera frame")
    size: Vec3 = Field(description="(width, height, length) in metres along the box's x, y, z axes; y is the vertical axis")
    R_cam_from_box: list[list[float]] = Field(description="3x3 rotation from box axes to camera axes")
    box2d: tuple[float, float, float, float] | None = Field(default=None, description="(x_min, y_min, x_max, y_max) pixels in view 0")
    color: str | None = None

    @field_validator("size")
    @classmethod
    def _check_size(cls, v: Vec3) -> Vec3:
        if not all(math.isfinite(s) and s > 0 for s in v):
            raise ValueError(f"object size must be positive metres, got {v}")
        return v


QA_KINDS: tuple[str, ...] = ("qualitative", "quantitative", "direction", "choice")
_PLACEHOLDER = re.compile(r"\{r(\d+)\}")


def region_placeholders(text: str) -> list[int]:
    """Region indices named in ``text`` by ``{r0}``, ``{r1}``, ... in reading order (with repeats)."""
    return [int(m.group(1)) for m in _PLACEHOLDER.finditer(text)]


def fill_regions(text: str, names: list[str]) -> str:
    """``text`` with every ``{rK}`` replaced by ``names[K]`` (other braces are left alone)."""
    return _PLACEHOLDER.sub(lambda m: names[int(m.group(1))], text)


class RegionQA(_Model):
    """A question asked as written about regions of view 0, with its reference answer.

    ``question`` and ``answer`` name regions as ``{r0}``, ``{r1}``, ... (index into ``regions``);
    the task replaces them with its own region text (e.g. "bounding box region (12, 40, 300, 511)").
    ``gt`` by ``kind``: qualitative -> bool (the question's claim holds), quantitative -> metres
    (>= 0), direction -> clock hour 1..12, choice -> index of the region that is the answer.
    """

    category: str = Field(min_length=1, description="the benchmark's own category name, e.g. left_choice")
    kind: Literal["qualitative", "quantitative", "direction", "choice"]
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1, description="the reference answer, regions as {rK}")
    gt: bool | int | float
    regions: list[tuple[float, float, float, float]] = Field(
        min_length=1, description="(x_min, y_min, x_max, y_max) continuous corner-origin pixels of view 0"
    )

    @model_validator(mode="after")
    def _check(self) -> "RegionQA":
        for i, box in enumerate(self.regions):
            if not all(math.isfinite(v) for v in box) or not (box[0] < box[2] and box[1] < box[3]):
                raise ValueError(f"regions[{i}] = {box} is not a finite box with x_min < x_max and y_min < y_max")
        n = len(self.regions)
        for name in ("question", "answer"):
            bad = [k for k in region_placeholders(getattr(self, name)) if k >= n]
            if bad:
                raise ValueError(f"{name} names region {{r{bad[0]}}} but there are {n} regions")
        gt, kind = self.gt, self.kind
        if kind == "qualitative":
            ok = isinstance(gt, bool)
        elif kind == "quantitative":
            ok = not isinstance(gt, bool) and math.isfinite(gt) and gt >= 0
        elif kind == "direction":
            ok = not isinstance(gt, bool) and gt == int(gt) and 1 <= gt <= 12
        else:
            ok = not isinstance(gt, bool) and gt == int(gt) and 0 <= gt < n
        if not ok:
            want = {
                "qualitative": "true/false",
                "quantitative": "metres >= 0",
                "direction": "a clock hour 1..12",
                "choice": f"a region index 0..{n - 1}",
            }[kind]
            raise ValueError(f"gt {gt!r} of a {kind} question must be {want}")
        if kind in ("direction", "choice"):
            self.gt = int(gt)
        elif kind == "quantitative":
            self.gt = float(gt)
        return self


class Record(_Model):
    """One training/evaluation unit: one image (depth, object) or an image pair (pose, correspondence)."""

    schema_version: int = SCHEMA_VERSION
    id: str
    dataset: str
    split: str = "train"
    views: list[View] = Field(min_length=1, max_length=2)
    metric_scale: bool = Field(default=True, description="poses and depths are in metres")
    gravity_cam: Vec3 | None = Field(default=None, description="unit 'down' direction in view 0's camera frame")
    depth: DepthLabels | None = None
    matches: Matches | None = None
    objects: list[Object3D] | None = None
    qa: list[RegionQA] | None = Field(default=None, description="questions asked as written, about 2D regions of view 0")
    covisibility: float | None = Field(default=None, description="share of view-0 pixels visible in view 1")
    meta: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "Record":
        if self.matches is not None and len(self.views) != 2:
            raise ValueError("matches need two views")
        return self


def check_pixels_inside(record: Record) -> list[str]:
    """Reasons why labelled pixels fall outside their image (empty list when all are inside)."""
    problems: list[str] = []

    def _check(name: str, pixels: list[Vec2], K: Intrinsics) -> None:
        if not pixels:
            return
        inside = K.contains(np.asarray(pixels))
        if not inside.all():
            i = int(np.flatnonzero(~inside)[0])
            x, y = pixels[i]
            problems.append(f"{name}[{i}] = ({x:g}, {y:g}) is outside the {K.width}x{K.height} image")

    if record.depth is not None:
        _check("depth.pixels", record.depth.pixels, record.views[0].K)
    if record.matches is not None:
        _check("matches.pixels0", record.matches.pixels0, record.views[0].K)
        _check("matches.pixels1", record.matches.pixels1, record.views[1].K)
    if record.qa:
        K = record.views[0].K
        for i, qa in enumerate(record.qa):
            for j, (x0, y0, x1, y1) in enumerate(qa.regions):
                if x0 < 0 or y0 < 0 or x1 > K.width or y1 > K.height:
                    problems.append(f"qa[{i}].regions[{j}] = ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the {K.width}x{K.height} image")
    return problems


def parse_record(line: str | bytes, where: str) -> Record:
    """The record of one JSONL line; ValueError naming ``where`` (e.g. ``shard.jsonl:12``) and the first bad field."""
    try:
        return Record.model_validate_json(line)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ValueError(f"{where}: invalid record field '{loc}': {first['msg']}") from None
