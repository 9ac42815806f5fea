"""KITTI 3D object detection labels -> object records (3D boxes in the image_2 camera's frame).

Expected tree (``ROOT`` is the folder given to the adapter; ``data_object_image_2.zip``,
``data_object_label_2.zip`` and ``data_object_calib.zip`` extracted in place)::

    ROOT/training/label_2/<id>.txt   # e.g. 000000.txt, one object per line
    ROOT/training/calib/<id>.txt     # P0..P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo
    ROOT/training/image_2/<id>.png   # left colour camera (camera 2), rectified

Only ``training`` has labels. ``options.extra["image_set"]``: a file under ROOT listing the ids to
convert, one per line (e.g. the common ``ImageSets/val.txt`` split); records carry
``options.split`` as their split.

Label line (KITTI object devkit ``readme.txt``), 15 values (a 16th, the score, is ignored)::

    type truncated occluded alpha  left top right bottom  h w l  x y z  rotation_y

- ``type``: Car, Van, Truck, Pedestrian, Person_sitting, Cyclist, Tram, Misc or DontCare.
  DontCare lines (regions without labels) are skipped and counted (``meta.skipped_dontcare``);
  an object is named by its type in lower case, "_" as a space ("person sitting").
- ``h w l``: box height, width, length in metres.
- ``x y z``: the centre of the box's BOTTOM face, in the rectified camera-0 frame (metres; X right,
  Y down, Z forward). :func:`kitti_box_center`: centre = (x, y - h/2, z) (Y is down).
- ``rotation_y``: the yaw around the camera Y axis, [-pi, pi]. The devkit's ``compute_box_3d``
  (e.g. ``kitti_util.py`` of charlesq34/frustum-pointnets, the MATLAB devkit's
  ``computeBox3D.m``) builds the corners as ``roty(ry) @ [x; y; z] + location`` with
  ``x = ±l/2`` (length along the box x axis, the heading: camera +X at ry = 0), ``y`` in [-h, 0]
  and ``z = ±w/2``, and ``roty(t) = [[cos t, 0, sin t], [0, 1, 0], [-sin t, 0, cos t]]``
  (:func:`kitti_rotation`).
- ``left top right bottom``: the 2D box in image_2 pixels, OpenCV origin (the centre of the
  top-left pixel is (0, 0), as P2's), converted by +0.5 to vlm3's corner origin
  (:func:`kitti_box2d`) so that it stays consistent with the projected 3D box.

vlm3 box. size = (w, h, l) (vlm3's (width, height, length)), R_cam_from_box = roty(ry) @
``kit.LENGTH_X_TO_VLM3`` (:func:`kitti_object`): vlm3's box z axis is KITTI's x (the heading),
y is KITTI's y (vertical, down), x = -KITTI z, so the 8 corners are the devkit's.

Camera. Labels are in the rectified camera-0 frame; image_2 is camera 2, whose projection
``P2 = K [I | t]`` (calib file, OpenCV pixel origin). ``kit.projection_camera``: intrinsics =
P2's K converted to the corner origin (cx, cy + 0.5), and t = K^-1 P2[:, 3], so a label point X
(camera 0) is X + t in camera 2's frame (x mostly: t_x = (P2[0,3] - cx t_z) / fx, about +6 cm;
t_z = P2[2,3]). Projecting the converted box with the converted intrinsics gives exactly the
devkit's ``P2 @ [X; 1]`` pixels + 0.5. ``R0_rect`` is not needed (labels are already rectified).

Gravity. KITTI's boxes turn about camera Y only, so the dataset takes the rectified camera's Y
as vertical: records set ``gravity_cam`` = (0, 1, 0).

Options (``options.extra``): ``min_objects`` (default 2, what an object question needs): images
with fewer labelled objects are rejected as ``no_labels``; ``image_set`` (above).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from vlm3.data.adapters.base import Adapter, AdapterOptions, LayoutError, Rejection, option_int, register
from vlm3.data.adapters.kit import image_size, length_x_box, projection_camera
from vlm3.data.adapters.kitti import read_calib
from vlm3.data.records import Record
from vlm3.data.scenes import FrameError
from vlm3.data.validate import make_record

TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare")
GRAVITY = (0.0, 1.0, 0.0)


def kitti_rotation(rotation_y: float) -> np.ndarray:
    """The devkit's ``roty``: rotation by ``rotation_y`` about the camera Y axis (box -> camera)."""
    c, s = math.cos(rotation_y), math.sin(rotation_y)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def kitti_box_center(location: np.ndarray, h: float) -> np.ndarray:
    """Box centre from KITTI's bottom-face centre ``location`` (camera Y down): up by h/2."""
    return np.asarray(location, dtype=np.float64) - np.array([0.0, h / 2.0, 0.0])


def kitti_box2d(left: float, top: float, right: float, bottom: float) -> tuple[float, float, float, float]:
    """KITTI's 2D box (OpenCV pixel origin) in vlm3's corner-origin pixels (+0.5)."""
    return (left + 0.5, top + 0.5, right + 0.5, bottom + 0.5)


def parse_label_line(line: str) -> dict:
    """One label line as a dict (type, truncated, occluded, alpha, box2d, h, w, l, location, ry);
    ValueError with the reason."""
    parts = line.split()
    if len(parts) not in (15, 16):
        raise ValueError(f"{len(parts)} fields, expected 15 (type truncated occluded alpha l t r b h w l x y z ry)")
    try:
        v = [float(x) for x in parts[1:15]]
    except ValueError as e:
        raise ValueError(f"not numeric ({e})") from None
    if not all(math.isfinite(x) for x in v):
        raise ValueError("a value is not finite")
    return {
        "type": parts[0], "truncated": v[0], "occluded": int(v[1]), "alpha": v[2], "box2d": tuple(v[3:7]),
        "h": v[7], "w": v[8], "l": v[9], "location": np.array(v[10:13]), "ry": v[13],
    }


def kitti_object(label: dict, t_cam2: np.ndarray) -> dict:
    """An ``Object3D`` dict (camera 2's frame) of a parsed label line; see the module doc."""
    size, R = length_x_box(kitti_rotation(label["ry"]), label["l"], label["h"], label["w"])
    center = kitti_box_center(label["location"], label["h"]) + np.asarray(t_cam2, dtype=np.float64)
    return {
        "name": label["type"].lower().replace("_", " "),
        "center": tuple(float(c) for c in center),
        "size": size,
        "R_cam_from_box": R.tolist(),
        "box2d": kitti_box2d(*label["box2d"]),
    }


@register
class KITTIObjectsAdapter(Adapter):
    """KITTI 3D object labels (training/label_2) -> object records in camera 2's frame."""

    name: ClassVar[str] = "kitti-objects"
    description: ClassVar[str] = "KITTI 3D object detection labels (cars, pedestrians, cyclists; boxes in metres)"
    layout: ClassVar[str] = (
        "ROOT/training/label_2/<id>.txt   (type trunc occl alpha l t r b h w l x y z rotation_y; location = bottom centre, camera 0)\n"
        "ROOT/training/calib/<id>.txt     (P2: image_2's projection)\n"
        "ROOT/training/image_2/<id>.png"
    )
    labels: ClassVar[tuple[str, ...]] = ("objects",)

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        self.base = self.root / "training"
        self.min_objects = option_int(self.options, "min_objects", 2, minimum=1)
        self.image_set = self.options.extra.get("image_set")

    def _ids(self) -> list[str]:
        label_dir = self.base / "label_2"
        if not label_dir.is_dir() or not (self.base / "calib").is_dir():
            raise LayoutError(f"{self.root}: no training/label_2/ and training/calib/ folders; expected:\n{self.layout}")
        ids = sorted(p.stem for p in label_dir.glob("*.txt"))
        if self.image_set is not None:
            path = self.root / self.image_set
            if not path.is_file():
                raise LayoutError(f"{self.root}: option image_set={self.image_set!r}: {path} does not exist")
            wanted = {line.strip() for line in path.read_text().splitlines() if line.strip()}
            ids = [i for i in ids if i in wanted]
        if not ids:
            raise LayoutError(f"{label_dir}: no label files{' of the image set' if self.image_set else ''}; expected:\n{self.layout}")
        return ids

    def units(self) -> list[str]:
        """One unit per 100 ids: the id without its last two digits (``0000`` = 000000..000099)."""
        return sorted({i[:-2] for i in self._ids()})

    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        for frame in (i for i in self._ids() if i[:-2] == unit):
            yield self._record(frame)

    def _record(self, frame: str) -> Record | Rejection:
        label_path = self.base / "label_2" / f"{frame}.txt"
        calib_path = self.base / "calib" / f"{frame}.txt"
        image_path = self.base / "image_2" / f"{frame}.png"
        source = str(label_path.relative_to(self.root))
        if not calib_path.is_file():
            return Rejection(source, "missing_file", f"{calib_path.relative_to(self.root)} not found")
        try:
            width, height = image_size(image_path)
        except FrameError as e:
            return Rejection(source, e.reason, f"{image_path.relative_to(self.root)}: {e.detail}")
        try:
            calib = read_calib(calib_path)
            if "P2" not in calib:
                raise ValueError(f"{calib_path.relative_to(self.root)}: no 'P2' entry")
            K, t = projection_camera(calib["P2"], width, height, f"{calib_path.relative_to(self.root)} P2")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            return Rejection(source, "bad_calibration", str(e))
        objects, dontcare = [], 0
        try:
            lines = label_path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            return Rejection(source, "unreadable_file", str(e))
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                label = parse_label_line(line)
            except ValueError as e:
                return Rejection(f"{source}:{n}", "invalid_record", str(e))
            if label["type"] == "DontCare":
                dontcare += 1
                continue
            if min(label["h"], label["w"], label["l"]) <= 0:
                return Rejection(f"{source}:{n}", "invalid_record", f"dimensions h w l = {label['h']} {label['w']} {label['l']} must be positive")
            objects.append(kitti_object(label, t))
        if len(objects) < self.min_objects:
            return Rejection(source, "no_labels", f"{len(objects)} labelled object(s), fewer than min_objects={self.min_objects} ({dontcare} DontCare skipped)")
        return make_record(
            source,
            id=f"{self.name}/{frame}",
            dataset=self.name,
            split=self.options.split,
            views=[{"image": str(image_path.relative_to(self.root)), "intrinsics": K.to_list()}],
            gravity_cam=GRAVITY,
            objects=objects,
            meta={"source": source, "frame": frame, "skipped_dontcare": dontcare},
        )

    def manifest_info(self) -> dict:
        return {
            "source": "KITTI 3D object detection (training/label_2, calib, image_2)",
            "frame": "camera 2 (image_2), rectified: X right, Y down, Z forward, metres",
            "boxes": "centre = bottom centre - h/2 (Y down) + K^-1 P2[:,3]; size (w, h, l); R = roty(rotation_y) @ LENGTH_X_TO_VLM3",
            "intrinsics": "P2, centre-origin converted (+0.5); 2D boxes +0.5",
            "gravity_cam": "(0, 1, 0)",
        }
