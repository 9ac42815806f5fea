"""3D-box adapters (omni3d, kitti-objects): fixtures in the original layouts, labels checked against
corners and projections computed straight from the raw numbers with each source's own formulas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import assert_round_trip, run_adapter
from vlm3.data.adapters import AdapterOptions, LayoutError, get_adapter
from vlm3.data.adapters.kit import LENGTH_X_TO_VLM3, length_x_box, nearest_rotation, projection_camera
from vlm3.data.records import Record
from vlm3.geometry.pose import is_rotation
from vlm3.settings import Settings
from vlm3.tasks.samples import build_sample

SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)


def record_corners(obj) -> np.ndarray:
    """The 8 corners of a converted Object3D: centre + R (±size/2) (vlm3's definition)."""
    R = np.asarray(obj.R_cam_from_box)
    return np.asarray(obj.center) + (SIGNS * np.asarray(obj.size) / 2) @ R.T


def project_K(intrinsics: list[float], X: np.ndarray) -> np.ndarray:
    fx, fy, cx, cy = intrinsics[:4]
    return np.stack([fx * X[:, 0] / X[:, 2] + cx, fy * X[:, 1] / X[:, 2] + cy], axis=1)


def same_point_set(a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    """Every point of ``a`` has a partner in ``b`` within ``tol`` and vice versa (corner orders differ)."""
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return bool(d.min(axis=1).max() < tol and d.min(axis=0).max() < tol)


def object_answers(rec: Record, image: np.ndarray):
    """({(i, j): {quantity: gt}}, sample) of every question the object task asks about the record
    (all labels, fixed order: ordered pairs of objects, 12 predicates then 6 quantities each)."""
    sample = build_sample(rec, [image], "object", Settings())
    pairs = [(i, j) for i in range(len(rec.objects)) for j in range(len(rec.objects)) if i != j]
    assert len(sample.queries) == 18 * len(pairs) and not sample.not_asked
    out: dict[tuple[int, int], dict[str, object]] = {}
    for k, q in enumerate(sample.queries):
        if q.fields["kind"] != "qualitative":
            out.setdefault(pairs[k // 18], {})[q.fields["category"]] = q.gt
    return out, sample


# --- shared conversion helpers ------------------------------------------------------------------


def test_length_x_box_keeps_the_corners():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w_, x, y, z = q
        R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w_), 2 * (x * z + y * w_)],
                      [2 * (x * y + z * w_), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w_)],
                      [2 * (x * z - y * w_), 2 * (y * z + x * w_), 1 - 2 * (x * x + y * y)]])
        l, h, w = rng.uniform(0.2, 5, 3)
        size, R2 = length_x_box(R, l, h, w)
        assert size == (w, h, l) and is_rotation(R2)
        src = (SIGNS * [l, h, w] / 2) @ R.T  # length along the source's x, width along its z
        ours = (SIGNS * np.array(size) / 2) @ R2.T
        assert same_point_set(src, ours, 1e-9)
        assert np.allclose(R2[:, 2], R[:, 0]) and np.allclose(R2[:, 1], R[:, 1])  # length axis = heading, y kept
    assert np.linalg.det(LENGTH_X_TO_VLM3) == pytest.approx(1.0)


def test_nearest_rotation_and_projection_camera():
    R = np.eye(3) + 1e-6
    assert is_rotation(nearest_rotation(R), atol=1e-12)
    assert nearest_rotation(np.diag([1.0, 1.0, -1.0])) is None  # a reflection
    assert nearest_rotation(np.eye(3) * 1.1) is None
    P = np.array([[700.0, 0, 600, 45.0], [0, 710.0, 170, 0.2], [0, 0, 1, 0.003]])
    K, t = projection_camera(P, 1242, 375, "P")
    X = np.array([[1.0, -0.5, 10.0], [-3.0, 1.2, 30.0]])
    ref = (P @ np.c_[X, np.ones(2)].T).T
    assert np.allclose(project_K(K.to_list(), X + t), ref[:, :2] / ref[:, 2:] + 0.5, atol=1e-9)
    with pytest.raises(ValueError, match="rectified pinhole"):
        projection_camera(np.array([[700.0, 1, 600, 0], [0, 700, 170, 0], [0, 0, 1, 0]]), 10, 10, "P")


# --- KITTI 3D objects -----------------------------------------------------------------------------

P2 = "7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 4.485728000000e+01 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 2.163791000000e-01 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 2.745884000000e-03"
CALIB = (
    "P0: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 0.000000000000e+00 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00\n"
    "P1: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 -3.875744000000e+02 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00\n"
    f"P2: {P2}\n"
    "P3: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 -3.395242000000e+02 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 2.199936000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 2.729905000000e-03\n"
    "R0_rect: 9.999239000000e-01 9.837760000000e-03 -7.445048000000e-03 -9.869795000000e-03 9.999421000000e-01 -4.278459000000e-03 7.402527000000e-03 4.351614000000e-03 9.999631000000e-01\n"
    "Tr_velo_to_cam: 7.533745000000e-03 -9.999714000000e-01 -6.166020000000e-04 -4.069766000000e-03 1.480249000000e-02 7.280733000000e-04 -9.998902000000e-01 -7.631618000000e-02 9.998621000000e-01 7.523790000000e-03 1.480755000000e-02 -2.717806000000e-01\n"
    "Tr_imu_to_velo: 9.999976000000e-01 7.553071000000e-04 -2.035826000000e-03 -8.086759000000e-01 -7.854027000000e-04 9.998898000000e-01 -1.482298000000e-02 3.195559000000e-01 2.024406000000e-03 1.482454000000e-02 9.998881000000e-01 -7.997231000000e-01\n"
)
LABELS = {
    "000001": (
        "Truck 0.00 0 -1.57 599.41 156.40 629.75 189.25 2.85 2.63 12.34 0.47 1.49 69.44 -1.56\n"
        "Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 1.87 3.69 -16.53 2.39 58.49 1.57\n"
        "Cyclist 0.00 3 -1.65 676.60 163.95 688.98 193.93 1.86 0.60 2.02 4.59 1.32 45.84 -1.55\n"
        "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10\n"
        "DontCare -1 -1 -10 511.35 174.96 527.81 187.45 -1 -1 -1 -1000 -1000 -1000 -10\n"
    ),
    "000002": "Car 0.00 0 -1.20 657.39 190.13 700.07 223.39 1.41 1.58 4.36 3.18 2.27 34.38 -1.58\n"
              "Misc 0.00 0 2.73 0.00 183.00 150.00 236.00 1.50 1.40 3.00 -14.00 2.20 20.00 0.62\n",
    "000003": "Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01\n"
              "DontCare -1 -1 -10 0 0 10 10 -1 -1 -1 -1000 -1000 -1000 -10\n",
}


def make_kitti(root: Path) -> Path:
    for sub in ("label_2", "calib", "image_2"):
        (root / "training" / sub).mkdir(parents=True, exist_ok=True)
    for frame, text in LABELS.items():
        (root / "training" / "label_2" / f"{frame}.txt").write_text(text)
        (root / "training" / "calib" / f"{frame}.txt").write_text(CALIB)
        Image.new("RGB", (1242, 375), (90, 90, 90)).save(root / "training" / "image_2" / f"{frame}.png")
    return root


def roty(t: float) -> np.ndarray:  # the devkit's
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def devkit_box(line: str, P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KITTI devkit compute_box_3d / compute_orientation_3d: (corners_3d (8, 3) in camera 0,
    corners_2d (8, 2) in image_2 pixels, OpenCV origin, heading vector)."""
    v = line.split()
    h, w, l = float(v[8]), float(v[9]), float(v[10])
    t = np.array([float(v[11]), float(v[12]), float(v[13])])
    R = roty(float(v[14]))
    x = [l / 2, l / 2, -l / 2, -l / 2, l / 2, l / 2, -l / 2, -l / 2]
    y = [0, 0, 0, 0, -h, -h, -h, -h]
    z = [w / 2, -w / 2, -w / 2, w / 2, w / 2, -w / 2, -w / 2, w / 2]
    corners = (R @ np.vstack([x, y, z])).T + t
    p = np.c_[corners, np.ones(8)] @ P.T
    return corners, p[:, :2] / p[:, 2:], R @ np.array([l, 0.0, 0.0])


def test_kitti_objects_boxes_match_the_devkit(tmp_path):
    root = make_kitti(tmp_path / "kitti")
    records, rejections = run_adapter("kitti-objects", root)
    assert [r.id for r in records] == ["kitti-objects/000001", "kitti-objects/000002"]
    assert [(j.source, j.reason) for j in rejections] == [("training/label_2/000003.txt", "no_labels")]
    assert "1 labelled object(s)" in rejections[0].detail and "1 DontCare" in rejections[0].detail
    assert_round_trip(records, tmp_path)
    P = np.array([float(x) for x in P2.split()]).reshape(3, 4)
    rec = records[0]
    assert rec.views[0].image == "training/image_2/000001.png"
    assert rec.views[0].intrinsics == pytest.approx([P[0, 0], P[1, 1], P[0, 2] + 0.5, P[1, 2] + 0.5, 1242, 375])
    assert rec.gravity_cam == (0.0, 1.0, 0.0) and rec.meta["skipped_dontcare"] == 2
    assert [o.name for o in rec.objects] == ["truck", "car", "cyclist"]
    lines = [ln for ln in LABELS["000001"].splitlines() if not ln.startswith("DontCare")]
    for obj, line in zip(rec.objects, lines):
        v = [float(x) for x in line.split()[1:]]
        corners0, pix, heading = devkit_box(line, P)
        # projected corners: converted box with converted intrinsics == devkit P2 projection (+0.5 origin)
        assert same_point_set(project_K(rec.views[0].intrinsics, record_corners(obj)), pix + 0.5, 1e-6)
        # metric geometry: the same box up to camera 2's small offset from camera 0 (a few cm along x)
        offset = record_corners(obj).mean(axis=0) - corners0.mean(axis=0)
        assert same_point_set(record_corners(obj) - offset, corners0, 1e-9)
        assert 0.05 < offset[0] < 0.07 and abs(offset[1]) < 1e-3 and abs(offset[2] - P[2, 3]) < 1e-12
        # centre = bottom centre - h/2, projected like the devkit projects it
        bottom = np.array(v[10:13])
        centre0 = bottom - [0, v[7] / 2, 0]
        c = P @ np.r_[centre0, 1]
        assert project_K(rec.views[0].intrinsics, np.array([obj.center]))[0] == pytest.approx(c[:2] / c[2] + 0.5, abs=1e-6)
        assert obj.size == pytest.approx((v[8], v[7], v[9]))  # (w, h, l)
        R = np.asarray(obj.R_cam_from_box)
        assert is_rotation(R) and np.allclose(R[:, 1], [0, 1, 0])
        assert np.allclose(R[:, 2], heading / np.linalg.norm(heading))  # length axis = the devkit's heading
        assert obj.box2d == pytest.approx(tuple(x + 0.5 for x in v[3:7]))


def test_kitti_object_questions_follow_the_labels(tmp_path):
    root = make_kitti(tmp_path / "kitti")
    records, _ = run_adapter("kitti-objects", root)
    rec = records[1]  # 000002: a car 34 m ahead and a Misc object 20 m ahead on the left
    car, misc = (line.split() for line in LABELS["000002"].splitlines())
    h_car, w_car = float(car[8]), float(car[9])
    c_car = np.array([float(x) for x in car[11:14]]) - [0, h_car / 2, 0]
    c_misc = np.array([float(x) for x in misc[11:14]]) - [0, float(misc[8]) / 2, 0]
    answers, sample = object_answers(rec, np.zeros((375, 1242, 3), np.uint8))
    a = answers[(0, 1)]
    assert a["height"] == pytest.approx(h_car) and a["width"] == pytest.approx(w_car)
    assert a["direct_distance"] == pytest.approx(np.linalg.norm(c_car - c_misc))
    assert a["vertical_distance"] == pytest.approx(abs(c_car[1] - c_misc[1]))
    assert a["horizontal_distance"] == pytest.approx(math.hypot(c_car[0] - c_misc[0], c_car[2] - c_misc[2]))
    # the Misc object is nearer and to the left: from the car it lies behind-left (about 8 o'clock)
    d = c_misc - c_car
    hour = round(math.degrees(math.atan2(d[0], d[2])) / 30) % 12 or 12
    assert a["direction"] == hour == 8
    texts = [q.question for q in sample.queries[:12]]
    truth = dict(zip(texts, (q.gt for q in sample.queries[:12])))
    behind = next(t for t in texts if "behind" in t)
    left = next(t for t in texts if "to the left of" in t)
    assert truth[behind] is True and truth[left] is False  # the car (region A) is farther and to the right


def test_kitti_objects_layout_and_options(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match="label_2"):
        get_adapter("kitti-objects")(empty, AdapterOptions()).units()
    root = make_kitti(tmp_path / "kitti")
    assert get_adapter("kitti-objects")(root, AdapterOptions()).units() == ["0000"]
    (root / "val.txt").write_text("000002\n000003\n")
    records, rejections = run_adapter("kitti-objects", root, split="val", extra={"image_set": "val.txt", "min_objects": "1"})
    assert [r.id for r in records] == ["kitti-objects/000002", "kitti-objects/000003"] and not rejections
    assert {r.split for r in records} == {"val"}
    (root / "training" / "calib" / "000002.txt").write_text("P2: 1 2 3\n")
    (root / "training" / "image_2" / "000003.png").unlink()
    _, rejections = run_adapter("kitti-objects", root, extra={"image_set": "val.txt"})
    assert sorted(j.reason for j in rejections) == ["bad_calibration", "missing_file"]
    (root / "training" / "label_2" / "000001.txt").write_text("Car 0 0 0 1 2 3\n")
    _, rejections = run_adapter("kitti-objects", root)
    assert ("training/label_2/000001.txt:1", "invalid_record") in [(j.source, j.reason) for j in rejections]


# --- Omni3D ---------------------------------------------------------------------------------------

# A published Omni3D annotation (an indoor image, dataset_id 16, 1440x1920 by its K; quoted in a
# public script checking Omni3D's conventions): its bbox3D_cam is what get_cuboid_verts_faces made
# of it. The fixture files it under a SUN RGB-D-style path; only the numbers matter.
SINK = {
    "behind_camera": False, "truncation": 0.0, "bbox2D_tight": [-1, -1, -1, -1], "visibility": -1,
    "segmentation_pts": -1, "lidar_pts": -1, "valid3D": True, "category_id": 28, "category_name": "sink",
    "id": 2828167, "image_id": 173384, "dataset_id": 16,
    "bbox2D_proj": [317.7158508300781, 545.8804931640625, 828.8178100585938, 798.7599487304688],
    "depth_error": 0.6789064095224648,
    "bbox2D_trunc": [317.7158508300781, 545.8804931640625, 828.8178100585938, 798.7599487304688],
    "center_cam": [-0.15078339540062935, -0.3835346408544088, 1.9770693868850286],
    "dimensions": [0.5454616843414527, 0.18081009258798972, 0.39088701292880146],
    "bbox3D_cam": [[-0.44767552614212036, -0.4166813790798187, 1.7995597124099731], [-0.10029754042625427, -0.344592809677124, 1.6354730129241943],
                   [-0.10376906394958496, -0.17649266123771667, 1.7019755840301514], [-0.45114704966545105, -0.24858124554157257, 1.8660621643066406],
                   [-0.1977977156639099, -0.5905766487121582, 2.2521631717681885], [0.14958027005195618, -0.5184880495071411, 2.088076591491699],
                   [0.1461087465286255, -0.35038790106773376, 2.1545791625976562], [-0.2012692391872406, -0.42247647047042847, 2.3186657428741455]],
    "R_cam": [[0.8886915554030996, -0.019199757939725132, 0.4581033602259165], [0.18442304821140873, 0.9297054833226549, -0.3188037853730743],
              [-0.419780250421137, 0.3678030499803455, 0.8297622899249658]],
}
# The same image's bathtub, behind the camera (Omni3D ignores it).
BATHTUB = {
    "behind_camera": True, "truncation": -1, "bbox2D_tight": [-1, -1, -1, -1], "visibility": -1, "segmentation_pts": -1,
    "lidar_pts": -1, "valid3D": True, "category_id": 30, "category_name": "bathtub", "id": 2828168, "image_id": 173384,
    "dataset_id": 16, "bbox2D_proj": [1439.0, 1071.874755859375, 10582.9208984375, 9019.4619140625], "depth_error": -1,
    "center_cam": [2.0457224852667597, 0.6565420189507538, 0.6332483462697214],
    "dimensions": [1.655427647516021, 0.5089507128903599, 0.7142064990653796],
    "R_cam": [[-0.8708158744334646, -0.019971025401610026, -0.49120349243372563], [-0.1964150734293135, 0.9300951265479618, 0.31039357999399536],
              [0.45066709638539004, 0.36677542681610964, -0.813864211351883]],
    "bbox2D_trunc": [-1, -1, -1, -1],
}
# K recovered from the sink's bbox2D_proj (the projection of its bbox3D_cam): fx = fy, a 1440x1920 image.
K_SINK = [[1595.1751858, 0.0, 714.5467455], [0.0, 1595.1751858, 964.1775485], [0.0, 0.0, 1.0]]
UNIT = np.array([[-0.5, -0.5, -0.5], [0.5, -0.5, -0.5], [0.5, 0.5, -0.5], [-0.5, 0.5, -0.5],
                 [-0.5, -0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, 0.5], [-0.5, 0.5, 0.5]])


def cuboid_verts(center, dims, R) -> np.ndarray:
    """Omni3D get_cuboid_verts_faces([X Y Z W H L], R): X from +-L/2, Y from +-H/2, Z from +-W/2."""
    W, H, L = dims
    return (UNIT * [L, H, W]) @ np.asarray(R).T + np.asarray(center)


def rot(axis: str, t: float) -> np.ndarray:
    c, s = math.cos(t), math.sin(t)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "y": roty(t), "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def synthetic(image_id: int, name: str, center, dims, R, K, size, **extra) -> dict:
    """An annotation made the way Omni3D makes them: corners by get_cuboid_verts_faces, 2D boxes by projecting them."""
    verts = cuboid_verts(center, dims, R)
    p = verts @ np.asarray(K).T
    uv = p[:, :2] / p[:, 2:]
    proj = [float(uv[:, 0].min()), float(uv[:, 1].min()), float(uv[:, 0].max()), float(uv[:, 1].max())]
    trunc = [max(proj[0], 0.0), max(proj[1], 0.0), min(proj[2], size[0]), min(proj[3], size[1])]
    anno = {"id": 1000 + image_id * 10 + len(name), "image_id": image_id, "category_id": 1, "category_name": name, "valid3D": True,
            "bbox2D_tight": [-1, -1, -1, -1], "bbox2D_proj": proj, "bbox2D_trunc": trunc, "bbox3D_cam": verts.tolist(),
            "center_cam": list(map(float, center)), "dimensions": list(map(float, dims)), "R_cam": np.asarray(R).tolist(),
            "behind_camera": False, "visibility": -1, "truncation": 0.0, "segmentation_pts": -1, "lidar_pts": -1, "depth_error": -1}
    anno.update(extra)
    return anno


def make_omni3d(root: Path) -> Path:
    (root / "Omni3D").mkdir(parents=True)
    sun_img = "SUNRGBD/realsense/sh/2014_10_21-18_50_55-1311000073/image/0000103.jpg"
    tilt = rot("x", math.radians(-20))  # camera pitched down 20 degrees: gravity in camera coords
    K2 = [[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]]
    world = [  # upright objects (yaw only) seen by the tilted camera
        ("chair", [-0.6, 0.5, 3.0], [0.5, 0.9, 0.55], 0.4),
        ("table", [0.7, 0.7, 3.5], [1.2, 0.75, 0.8], -0.3),
        ("lamp", [0.0, -0.2, 4.0], [0.3, 0.6, 0.3], 1.0),
    ]
    kitchen = [synthetic(2, n, tilt @ np.array(c), d, tilt @ roty(y), K2, (640, 480)) for n, c, d, y in world]
    kitchen.append(synthetic(2, "cup", [0.1, 0.3, 2.0], [0.08, 0.1, 0.08], np.eye(3), K2, (640, 480), valid3D=False))
    kitchen.append(synthetic(2, "box", [0.3, 0.3, 2.2], [0.2, 0.2, 0.2], np.eye(3), K2, (640, 480), lidar_pts=0))
    kitchen.append(synthetic(2, "bin", [0.3, 0.3, 2.2], [0.2, 0.2, 0.2], np.eye(3), K2, (640, 480), truncation=0.995))
    towel = synthetic(173384, "towel", [0.4, -0.2, 2.5], [0.4, 0.6, 0.05], rot("z", 0.6), K_SINK, (1440, 1920))  # hangs askew
    data = {
        "info": {"id": 16, "source": "SUNRGBD", "name": "SUNRGBD", "split": "val", "version": "0.1", "url": ""},
        "images": [
            {"id": 173384, "dataset_id": 16, "width": 1440, "height": 1920, "file_path": sun_img, "K": K_SINK, "src_90_rotate": 0, "src_flagged": False},
            {"id": 2, "dataset_id": 16, "width": 640, "height": 480, "file_path": "SUNRGBD/kv2/kitchen/image/0002.jpg", "K": K2, "src_90_rotate": 0, "src_flagged": False},
            {"id": 3, "dataset_id": 16, "width": 640, "height": 480, "file_path": "SUNRGBD/kv2/empty/image/0003.jpg", "K": K2, "src_90_rotate": 0, "src_flagged": False},
        ],
        "categories": [{"id": 28, "name": "sink", "supercategory": ""}],
        "annotations": [SINK, BATHTUB, towel, *kitchen, {**towel, "id": 9, "image_id": 77}],
    }
    (root / "Omni3D" / "SUNRGBD_val.json").write_text(json.dumps(data))
    (root / "Omni3D" / "SUNRGBD_train.json").write_text(json.dumps({**data, "images": [], "annotations": []}))
    for img in data["images"]:
        (root / img["file_path"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (img["width"], img["height"]), (120, 110, 100)).save(root / img["file_path"])
    return root


def test_omni3d_published_annotation_fixes_the_convention():
    """Omni3D's own corners of a real annotation: length along box x, width along z (not the reverse)."""
    verts = np.array(SINK["bbox3D_cam"])
    assert np.abs(cuboid_verts(SINK["center_cam"], SINK["dimensions"], SINK["R_cam"]) - verts).max() < 1e-6
    W, H, L = SINK["dimensions"]
    swapped = (UNIT * [W, H, L]) @ np.asarray(SINK["R_cam"]).T + SINK["center_cam"]
    assert np.abs(swapped - verts).max() > 0.05
    assert np.allclose(verts.mean(axis=0), SINK["center_cam"], atol=1e-6)  # center_cam is the geometric centre
    p = verts @ np.array(K_SINK).T
    uv = p[:, :2] / p[:, 2:]
    assert [uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()] == pytest.approx(SINK["bbox2D_proj"], abs=1e-3)


def test_omni3d_boxes_match_bbox3d_cam(tmp_path):
    root = make_omni3d(tmp_path / "datasets")
    # Omni3D ignores the sink (depth_error 0.68 > 0.5): the image keeps one object, too few
    _, rejections = run_adapter("omni3d", root, split="val")
    sun = next(j for j in rejections if j.source.endswith("image 173384"))
    assert sun.reason == "no_labels" and "behind_camera 1, depth_error 1" in sun.detail
    records, rejections = run_adapter("omni3d", root, split="val", extra={"max_depth_error": "1"})
    assert [r.id for r in records] == ["omni3d/SUNRGBD_val/173384", "omni3d/SUNRGBD_val/2"]
    assert sorted((j.reason, j.source) for j in rejections) == [
        ("invalid_record", "Omni3D/SUNRGBD_val.json"), ("no_labels", "Omni3D/SUNRGBD_val.json:image 3")]
    assert_round_trip(records, tmp_path)
    raw = json.loads((root / "Omni3D" / "SUNRGBD_val.json").read_text())
    by_id = {a["image_id"]: [] for a in raw["annotations"]}
    for a in raw["annotations"]:
        by_id[a["image_id"]].append(a)
    sun, kitchen = records
    assert sun.views[0].image == raw["images"][0]["file_path"] and sun.gravity_cam is None
    assert sun.meta["skipped"] == 1 and sun.meta["skipped_behind_camera"] == 1
    assert kitchen.meta["skipped"] == 3 and {k: kitchen.meta[k] for k in kitchen.meta if k.startswith("skipped_")} == {
        "skipped_invalid_3d": 1, "skipped_no_points": 1, "skipped_truncated": 1}
    for rec, image in ((sun, raw["images"][0]), (kitchen, raw["images"][1])):
        K = np.array(image["K"])
        assert rec.views[0].intrinsics == pytest.approx([K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5, image["width"], image["height"]])
        kept = [a for a in by_id[image["id"]] if not a["behind_camera"] and a["valid3D"] and a["lidar_pts"] != 0 and a["truncation"] < 0.99]
        assert [o.name for o in rec.objects] == [a["category_name"] for a in kept]
        for obj, a in zip(rec.objects, kept):
            verts = np.array(a["bbox3D_cam"])
            assert same_point_set(record_corners(obj), verts, 1e-6)
            p = verts @ K.T
            assert same_point_set(project_K(rec.views[0].intrinsics, record_corners(obj)), p[:, :2] / p[:, 2:] + 0.5, 1e-4)
            assert obj.center == pytest.approx(tuple(a["center_cam"]))
            assert obj.size == pytest.approx(tuple(a["dimensions"]))  # (width, height, length) as Omni3D lists them
            R = np.asarray(obj.R_cam_from_box)
            Rs = np.asarray(a["R_cam"])
            assert is_rotation(R) and np.allclose(R[:, 1], Rs[:, 1], atol=1e-9) and np.allclose(R[:, 2], Rs[:, 0], atol=1e-9)
            # width axis: the corners' extent along it is the width
            assert np.ptp(verts @ R[:, 0]) == pytest.approx(a["dimensions"][0])
            x0, y0, x1, y1 = a["bbox2D_trunc"]
            assert obj.box2d == pytest.approx((x0 + 0.5, y0 + 0.5, min(x1 + 0.5, image["width"]), min(y1 + 0.5, image["height"])))


def test_omni3d_questions_and_gravity(tmp_path):
    root = make_omni3d(tmp_path / "datasets")
    records, _ = run_adapter("omni3d", root, split="val", extra={"gravity": "boxes", "max_depth_error": "1"})
    sun, kitchen = records
    # the kitchen's upright boxes give the 20-degree camera pitch; the sink and towel disagree (gravity unset)
    down = rot("x", math.radians(-20)) @ np.array([0.0, 1.0, 0.0])
    assert np.allclose(kitchen.gravity_cam, down, atol=1e-9) and kitchen.meta["gravity"] == "boxes"
    assert sun.gravity_cam is None and sun.meta["gravity"] == "camera (boxes disagree)"
    chair, table = (a for a in json.loads((root / "Omni3D" / "SUNRGBD_val.json").read_text())["annotations"] if a["category_name"] in ("chair", "table"))
    answers, _ = object_answers(kitchen, np.zeros((480, 640, 3), np.uint8))
    a = answers[(0, 1)]
    c0, c1 = np.array(chair["center_cam"]), np.array(table["center_cam"])
    assert a["height"] == pytest.approx(chair["dimensions"][1]) and a["width"] == pytest.approx(chair["dimensions"][0])
    assert a["direct_distance"] == pytest.approx(np.linalg.norm(c1 - c0))
    # vertical distance along the true (tilted) gravity: the world heights 0.5 and 0.7 differ by 0.2 m
    assert a["vertical_distance"] == pytest.approx(0.2, abs=1e-9)
    assert a["horizontal_distance"] == pytest.approx(math.hypot(1.3, 0.5), abs=1e-9)
    # with camera-Y gravity the same pair measures differently: the option matters
    plain, _ = run_adapter("omni3d", root, split="val")
    b = object_answers(plain[0], np.zeros((480, 640, 3), np.uint8))[0][(0, 1)]
    assert b["vertical_distance"] == pytest.approx(abs((c1 - c0)[1])) and abs(b["vertical_distance"] - 0.2) > 0.05


def test_omni3d_layout_and_options(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match="Omni3D"):
        get_adapter("omni3d")(empty, AdapterOptions()).units()
    root = make_omni3d(tmp_path / "datasets")
    assert get_adapter("omni3d")(root, AdapterOptions()).units() == ["Omni3D/SUNRGBD_train.json"]
    assert get_adapter("omni3d")(root, AdapterOptions(split="all")).units() == ["Omni3D/SUNRGBD_train.json", "Omni3D/SUNRGBD_val.json"]
    with pytest.raises(LayoutError, match="_test"):
        get_adapter("omni3d")(root, AdapterOptions(split="test")).units()
    records, _ = run_adapter("omni3d", root, split="val", extra={"pixel_origin": "corner", "min_objects": "3"})
    assert [r.id for r in records] == ["omni3d/SUNRGBD_val/2"]
    assert records[0].views[0].intrinsics[2] == pytest.approx(319.5)
    with pytest.raises(ValueError, match="pixel_origin"):
        get_adapter("omni3d")(root, AdapterOptions(extra={"pixel_origin": "middle"}))
    (root / "Omni3D" / "SUNRGBD_val.json").write_text("{not json")
    _, rejections = run_adapter("omni3d", root, split="val")
    assert [j.reason for j in rejections] == ["unreadable_file"]


def test_prepare_runs_both_adapters(tmp_path):
    from vlm3.data.prepare import PrepareOptions, prepare

    kitti = prepare("kitti-objects", make_kitti(tmp_path / "kitti"), tmp_path / "out_kitti", PrepareOptions(), progress=False)
    assert (kitti.records, kitti.objects, kitti.rejected) == (2, 5, {"no_labels": 1})
    omni = prepare("omni3d", make_omni3d(tmp_path / "datasets"), tmp_path / "out_omni", PrepareOptions(split="val"), progress=False)
    assert (omni.records, omni.objects) == (1, 3) and omni.rejected == {"invalid_record": 1, "no_labels": 2}
    with pytest.raises(Exception, match="label_2"):
        prepare("kitti-objects", tmp_path / "datasets", tmp_path / "out_bad", PrepareOptions(), progress=False)
