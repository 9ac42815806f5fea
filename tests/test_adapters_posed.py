"""ScanNet, TUM RGB-D, ETH3D and COLMAP (MegaDepth-style) adapters on tiny scenes written in each
dataset's original layout. Depth is rendered analytically from a slanted plane, so any error in
pose direction, depth units, intrinsics convention or distortion moves labelled points off it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from vlm3.data.adapters import AdapterOptions, Rejection, get_adapter
from vlm3.data.records import Record, check_pixels_inside
from vlm3.geometry.camera import Intrinsics, project, rays
from vlm3.geometry.pose import invert_T, make_T, transform_points

# The scene: a plane n . X = C, tilted so that depth varies across the image.
N = np.array([0.5, 0.2, 1.0]) / np.linalg.norm([0.5, 0.2, 1.0])
C = 2.5


def cam_from_world(x: float, y: float = 0.0, z: float = 0.0, yaw: float = 0.0) -> np.ndarray:
    return invert_T(make_T(Rotation.from_euler("y", yaw, degrees=True).as_matrix(), [x, y, z]))


def plane_depth(T_cam_from_world: np.ndarray, cam_rays: np.ndarray) -> np.ndarray:
    """z-depth where rays (N, 3) with z = 1 meet the plane (inf when they miss it)."""
    R, t = T_cam_from_world[:3, :3], T_cam_from_world[:3, 3]
    o = -R.T @ t
    d = cam_rays @ R
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (C - N @ o) / (d @ N)
    return np.where(np.isfinite(s) & (s > 0), s, np.inf)


def grid_centres(w: int, h: int) -> np.ndarray:
    jj, ii = np.mgrid[0:h, 0:w]
    return np.stack([ii.ravel() + 0.5, jj.ravel() + 0.5], axis=1)


def world_points(K: Intrinsics, T: np.ndarray, uv: np.ndarray, z: np.ndarray, dist=None) -> np.ndarray:
    """World points of record pixels uv with z-depth, using the record's own K, dist and pose."""
    if dist is None:
        r = rays(K, uv)
    else:
        xy = cv2.undistortPoints(np.asarray(uv, np.float64).reshape(-1, 1, 2), K.K, np.asarray(dist), criteria=(3, 100, 1e-12)).reshape(-1, 2)
        r = np.concatenate([xy, np.ones((len(xy), 1))], axis=1)
    return transform_points(invert_T(T), r * np.asarray(z)[:, None])


def plane_hit(K: Intrinsics, T: np.ndarray, uv: np.ndarray, dist=None) -> np.ndarray:
    """World points where the rays of record pixels uv meet the plane."""
    ones = np.ones(len(uv))
    r_world = world_points(K, T, uv, ones, dist) - transform_points(invert_T(T), np.zeros((1, 3)))
    o = transform_points(invert_T(T), np.zeros((1, 3)))[0]
    s = (C - N @ o) / (r_world @ N)
    return o + s[:, None] * r_world


def split(out):
    out = list(out)
    recs = [r for r in out if isinstance(r, Record)]
    rej = [r for r in out if isinstance(r, Rejection)]
    return [r for r in recs if len(r.views) == 1], [r for r in recs if len(r.views) == 2], rej


def check_pairs(pairs, dist_of=lambda v: None, tol_px=0.5):
    """Matches of every pair land on the same plane point, and A's point projects onto B's match."""
    assert pairs
    for r in pairs:
        assert r.covisibility is not None and r.meta["covisibility_min"] > 0.25
        assert not check_pixels_inside(r)
        va, vb = r.views
        pa, pb = np.array(r.matches.pixels0), np.array(r.matches.pixels1)
        Xa = plane_hit(va.K, va.pose, pa, dist_of(va))
        Xb = plane_hit(vb.K, vb.pose, pb, dist_of(vb))
        assert np.abs(Xa - Xb).max() < 2e-3 * 3  # a few mm: depth maps are quantised
        if dist_of(vb) is None:
            uvb, _ = project(vb.K, transform_points(vb.pose, Xa))
            assert np.abs(uvb - pb).max() < tol_px


# ================================================================================================
# ScanNet
# ================================================================================================
KD_CV = (40.0, 41.0, 31.7, 23.4)  # depth intrinsics, OpenCV centre origin, 64x48
KC_CV = (81.0, 80.0, 63.1, 47.6)  # colour intrinsics, OpenCV centre origin, 128x96


def _mat4(fx, fy, cx, cy) -> str:
    return f"{fx} 0 {cx} 0\n0 {fy} {cy} 0\n0 0 1 0\n0 0 0 1\n"


def make_scannet(root: Path, scene: str = "scene0000_00", n: int = 5, step: float = 0.15) -> list[np.ndarray]:
    d = root / scene
    for sub in ("color", "depth", "pose", "intrinsic"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "intrinsic" / "intrinsic_depth.txt").write_text(_mat4(*KD_CV))
    (d / "intrinsic" / "intrinsic_color.txt").write_text(_mat4(*KC_CV))
    (d / "intrinsic" / "extrinsic_depth.txt").write_text(_mat4(1, 1, 0, 0))
    Kd = Intrinsics.from_center_origin(*KD_CV, 64, 48)
    poses = []
    for i in range(n):
        T = cam_from_world(step * i, yaw=-3.0 * i)
        poses.append(T)
        np.savetxt(d / "pose" / f"{i}.txt", invert_T(T))  # ScanNet stores camera-to-world
        z = plane_depth(T, rays(Kd, grid_centres(64, 48))).reshape(48, 64)
        mm = np.where(np.isfinite(z), np.round(z * 1000), 0).astype(np.uint16)
        cv2.imwrite(str(d / "depth" / f"{i}.png"), mm)
        Image.new("RGB", (128, 96), (i * 20, 80, 120)).save(d / "color" / f"{i}.jpg")
    return poses


def test_scannet_depth_records_pose_direction_and_units(tmp_path):
    poses = make_scannet(tmp_path)
    ad = get_adapter("scannet")(tmp_path, AdapterOptions(points=30, pairs_per_scene=20, seed=0))
    assert ad.units() == ["scene0000_00"]
    depth, pairs, rej = split(ad.convert("scene0000_00"))
    assert rej == [] and len(depth) == 5
    Kc = Intrinsics.from_center_origin(*KC_CV, 128, 96)
    for i, r in enumerate(depth):
        v = r.views[0]
        assert v.image == f"scene0000_00/color/{i}.jpg"
        assert np.allclose(v.intrinsics, Kc.to_list())  # the colour image's own intrinsics (+0.5 px)
        assert np.allclose(v.pose, poses[i], atol=1e-6)  # camera-to-world was inverted
        assert r.depth.depth_type == "z" and len(r.depth.pixels) == 30
        X = world_points(v.K, v.pose, np.array(r.depth.pixels), np.array(r.depth.depth))
        assert np.abs(X @ N - C).max() < 3e-3  # on the plane: metres, right pose, right pixel mapping
        truth = plane_depth(v.pose, rays(v.K, np.array(r.depth.pixels)))
        assert np.abs(np.array(r.depth.depth) - truth).max() < 1e-3  # millimetres -> metres
        assert not check_pixels_inside(r)
    # A known world point projects to the same pixel via the record pose as via ScanNet's own
    # camera-to-world file and OpenCV intrinsics.
    X = np.array([[0.3, -0.2, 2.0]])
    c2w = np.loadtxt(tmp_path / "scene0000_00" / "pose" / "2.txt")
    p = transform_points(np.linalg.inv(c2w), X)[0]
    fx, fy, cx, cy = KC_CV
    own = np.array([fx * p[0] / p[2] + cx + 0.5, fy * p[1] / p[2] + cy + 0.5])
    uv, _ = project(depth[2].views[0].K, transform_points(depth[2].views[0].pose, X))
    assert np.allclose(uv[0], own, atol=1e-6)
    check_pairs(pairs)


def test_scannet_bad_frames_are_named_rejections(tmp_path):
    make_scannet(tmp_path, n=5)
    d = tmp_path / "scene0000_00"
    (d / "pose" / "1.txt").write_text("-inf -inf -inf -inf\n" * 4)
    (d / "depth" / "3.png").unlink()
    (d / "depth" / "4.png").write_bytes(b"not a png")
    ad = get_adapter("scannet")(tmp_path, AdapterOptions(points=10, pairs_per_scene=10))
    depth, pairs, rej = split(ad.convert("scene0000_00"))
    reasons = {Path(r.source).stem: r.reason for r in rej}
    assert reasons == {"1": "bad_pose", "3": "missing_file", "4": "unreadable_file"}
    assert [r.meta["frame"] for r in depth] == ["0", "2"]
    assert all({r.meta["frame0"], r.meta["frame1"]} == {"0", "2"} for r in pairs)


def test_scannet_is_deterministic_and_rejects_unregistered_depth(tmp_path):
    make_scannet(tmp_path, n=4)
    opts = AdapterOptions(points=12, pairs_per_scene=6, seed=5)
    a = [r.model_dump() for r in get_adapter("scannet")(tmp_path, opts).convert("scene0000_00")]
    b = [r.model_dump() for r in get_adapter("scannet")(tmp_path, opts).convert("scene0000_00")]
    assert a == b
    (tmp_path / "scene0000_00" / "intrinsic" / "extrinsic_depth.txt").write_text(_mat4(1, 1, 0.05, 0))
    out = list(get_adapter("scannet")(tmp_path, opts).convert("scene0000_00"))
    assert len(out) == 1 and out[0].reason == "bad_calibration"


def test_scannet_pairs_below_threshold_not_emitted(tmp_path):
    make_scannet(tmp_path, n=5, step=0.6)
    opts = AdapterOptions(points=5, pairs_per_scene=100, min_covisibility=0.7)
    _, pairs, _ = split(get_adapter("scannet")(tmp_path, opts).convert("scene0000_00"))
    loose = split(get_adapter("scannet")(tmp_path, AdapterOptions(points=5, pairs_per_scene=100)).convert("scene0000_00"))[1]
    assert len(pairs) < len(loose)
    assert pairs and all(r.meta["covisibility_min"] > 0.7 for r in pairs)


# ================================================================================================
# TUM RGB-D
# ================================================================================================
def make_tum(root: Path, name: str, K: Intrinsics, dist, n: int = 3) -> list[np.ndarray]:
    d = root / name
    (d / "rgb").mkdir(parents=True)
    (d / "depth").mkdir()
    uv = grid_centres(640, 480)
    if dist is None:
        r = rays(K, uv)
    else:
        xy = cv2.undistortPoints(uv.reshape(-1, 1, 2), K.K, np.asarray(dist), criteria=(3, 100, 1e-12)).reshape(-1, 2)
        r = np.concatenate([xy, np.ones((len(xy), 1))], axis=1)
    rgb_lines, depth_lines, gt_lines, poses = ["# color images"], ["# depth maps"], ["# timestamp tx ty tz qx qy qz qw"], []
    for i in range(n + 1):
        t = 1.0 + 0.1 * i
        T = cam_from_world(0.1 * i, y=0.02 * i, yaw=2.0 * i)
        poses.append(T)
        T_wc = invert_T(T)  # TUM stores world-from-camera
        q = Rotation.from_matrix(T_wc[:3, :3]).as_quat()  # x, y, z, w
        gt_lines.append(f"{t + 0.004:.4f} " + " ".join(f"{v:.9f}" for v in [*T_wc[:3, 3], *q]))
        rgb_lines.append(f"{t:.6f} rgb/{t:.6f}.png")
        Image.new("RGB", (640, 480), (10 * i, 100, 50)).save(d / "rgb" / f"{t:.6f}.png")
        td = t + (0.01 if i < n else 0.05)  # the last frame has no depth within 0.02 s
        z = plane_depth(T, r).reshape(480, 640)
        cv2.imwrite(str(d / "depth" / f"{td:.6f}.png"), np.where(np.isfinite(z), np.round(z * 5000), 0).astype(np.uint16))
        depth_lines.append(f"{td:.6f} depth/{td:.6f}.png")
    (d / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (d / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    (d / "groundtruth.txt").write_text("\n".join(gt_lines) + "\n")
    return poses


def test_tum_fr1_distortion_pose_and_depth_units(tmp_path):
    K = Intrinsics.from_center_origin(517.3, 516.5, 318.6, 255.3, 640, 480)
    dist = [0.2624, -0.9531, -0.0054, 0.0026, 1.1633]
    poses = make_tum(tmp_path, "rgbd_dataset_freiburg1_xyz", K, dist)
    ad = get_adapter("tum")(tmp_path, AdapterOptions(points=40, pairs_per_scene=10))
    depth, pairs, rej = split(ad.convert("rgbd_dataset_freiburg1_xyz"))
    assert [r.reason for r in rej] == ["missing_file"] and rej[0].source.endswith("1.300000.png")
    assert len(depth) == 3
    for i, r in enumerate(depth):
        v = r.views[0]
        assert np.allclose(v.intrinsics, K.to_list()) and np.allclose(v.dist, dist)
        assert np.allclose(v.pose, poses[i], atol=1e-6)  # world-from-camera was inverted
        px = np.array(r.depth.pixels)
        assert np.allclose(px % 1.0, 0.5)  # labels stay on the (distorted) image's pixel centres
        X = world_points(v.K, v.pose, px, np.array(r.depth.depth), dist=v.dist)
        assert np.abs(X @ N - C).max() < 2e-3  # /5000 -> metres; distortion handled
    check_pairs(pairs, dist_of=lambda v: v.dist)


def test_tum_ros_default_intrinsics_and_unknown_camera(tmp_path):
    K = Intrinsics.from_center_origin(525.0, 525.0, 319.5, 239.5, 640, 480)
    make_tum(tmp_path, "my_sequence", K, None, n=2)
    out = list(get_adapter("tum")(tmp_path, AdapterOptions(points=5)).convert("my_sequence"))
    assert len(out) == 1 and out[0].reason == "bad_calibration"
    ad = get_adapter("tum")(tmp_path, AdapterOptions(points=20, pairs_per_scene=5, extra={"intrinsics": "ros_default"}))
    depth, pairs, _ = split(ad.convert("my_sequence"))
    assert depth[0].views[0].intrinsics == [525.0, 525.0, 320.0, 240.0, 640, 480] and depth[0].views[0].dist is None
    for r in depth:
        X = world_points(r.views[0].K, r.views[0].pose, np.array(r.depth.pixels), np.array(r.depth.depth))
        assert np.abs(X @ N - C).max() < 2e-3
    check_pairs(pairs)


# ================================================================================================
# COLMAP text models (ETH3D, MegaDepth)
# ================================================================================================
def write_colmap(folder: Path, cameras: dict, images: list, points: dict | None = None) -> None:
    """cameras {id: (model, w, h, params)}; images [(id, T_cam_from_world, cam_id, name, [(x, y, pid)])];
    points {pid: xyz}; tracks are derived from the images' observations."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cameras.txt").write_text(
        "# Camera list\n" + "".join(f"{cid} {m} {w} {h} {' '.join(repr(float(p)) for p in ps)}\n" for cid, (m, w, h, ps) in cameras.items())
    )
    lines, tracks = ["# Image list"], {}
    for iid, T, cid, name, obs in images:
        x, y, z, w = (float(q) for q in Rotation.from_matrix(T[:3, :3]).as_quat())
        tx, ty, tz = (float(v) for v in T[:3, 3])
        lines.append(f"{iid} {w!r} {x!r} {y!r} {z!r} {tx!r} {ty!r} {tz!r} {cid} {name}")
        lines.append(" ".join(f"{float(u)!r} {float(v)!r} {pid}" for u, v, pid in obs))
        for k, (_, _, pid) in enumerate(obs):
            tracks.setdefault(pid, []).append((iid, k))
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    pts = ["# 3D point list"]
    for pid, xyz in (points or {}).items():
        track = " ".join(f"{i} {k}" for i, k in tracks.get(pid, []))
        pts.append(f"{pid} {float(xyz[0])!r} {float(xyz[1])!r} {float(xyz[2])!r} 128 128 128 0.5 {track}")
    (folder / "points3D.txt").write_text("\n".join(pts) + "\n")


def plane_points(n: int, seed: int = 0) -> np.ndarray:
    """n points on the plane, around the cameras' common view."""
    g = np.random.default_rng(seed)
    xy = g.uniform([-0.3, -0.3], [0.3, 0.3], size=(n, 2))
    z = (C - N[0] * xy[:, 0] - N[1] * xy[:, 1]) / N[2]
    return np.concatenate([xy, z[:, None]], axis=1)


# --- ETH3D --------------------------------------------------------------------------------------
FISHEYE = ("THIN_PRISM_FISHEYE", 96, 64, [60.0, 61.0, 48.3, 31.8, 0.05, -0.01, 0.001, 0.0005, 0.002, 0.0, 0.001, 0.0005])
PIN = ("PINHOLE", 100, 70, [55.0, 55.5, 50.2, 34.9])


def make_eth3d(root: Path, scene: str = "courtyard", n: int = 4, with_depth: bool = True, points: bool = False) -> list[np.ndarray]:
    d = root / scene
    (d / "images" / "dslr_images_undistorted").mkdir(parents=True)
    cam_d = pycolmap.Camera(model=FISHEYE[0], width=FISHEYE[1], height=FISHEYE[2], params=FISHEYE[3])
    Kp = Intrinsics(*PIN[3], PIN[1], PIN[2])
    pts = plane_points(30) if points else np.zeros((0, 3))
    poses, und, dis = [], [], []
    for i in range(n):
        T = cam_from_world(0.12 * i, yaw=-4.0 * i)
        poses.append(T)
        name = f"DSC_{i:04d}.JPG"
        obs = []
        if points:
            uv, _ = project(Kp, transform_points(T, pts))
            keep = range(0, 20) if i % 2 == 0 else range(10, 30)
            obs = [(float(uv[k, 0]), float(uv[k, 1]), k + 1) for k in keep]
        und.append((i + 1, T, 1, f"dslr_images_undistorted/{name}", obs))
        dis.append((i + 1, T, 1, f"dslr_images/{name}", []))
        Image.new("RGB", (PIN[1], PIN[2]), (30 * i, 60, 90)).save(d / "images" / "dslr_images_undistorted" / name)
        if with_depth:
            (d / "ground_truth_depth" / "dslr_images").mkdir(parents=True, exist_ok=True)
            xy = cam_d.cam_from_img(grid_centres(FISHEYE[1], FISHEYE[2]))
            z = plane_depth(T, np.concatenate([xy, np.ones((len(xy), 1))], axis=1))
            z.reshape(FISHEYE[2], FISHEYE[1]).astype("<f4").tofile(d / "ground_truth_depth" / "dslr_images" / name)
    write_colmap(d / "dslr_calibration_undistorted", {1: PIN}, und, {k + 1: p for k, p in enumerate(pts)})
    if with_depth:
        write_colmap(d / "dslr_calibration_jpg", {1: FISHEYE}, dis)
    return poses


def test_eth3d_depth_from_distorted_grid_and_pairs(tmp_path):
    poses = make_eth3d(tmp_path)
    ad = get_adapter("eth3d")(tmp_path, AdapterOptions(points=40, pairs_per_scene=10, extra={"grid_downsample": "2"}))
    assert ad.units() == ["courtyard"]
    depth, pairs, rej = split(ad.convert("courtyard"))
    assert rej == [] and len(depth) == 4
    for i, r in enumerate(depth):
        v = r.views[0]
        assert v.image == f"courtyard/images/dslr_images_undistorted/DSC_{i:04d}.JPG"
        assert v.intrinsics == PIN[3] + [PIN[1], PIN[2]]  # COLMAP pixels are vlm3's: no shift
        assert np.allclose(v.pose, poses[i], atol=1e-9)  # COLMAP camera-from-world kept as is
        X = world_points(v.K, v.pose, np.array(r.depth.pixels), np.array(r.depth.depth))
        assert np.abs(X @ N - C).max() < 1e-4  # fisheye pixel -> exact ray -> pinhole pixel
        assert not check_pixels_inside(r)
    check_pairs(pairs, tol_px=1e-3)


def test_eth3d_missing_depth_and_missing_distorted_calibration(tmp_path):
    make_eth3d(tmp_path)
    (tmp_path / "courtyard" / "ground_truth_depth" / "dslr_images" / "DSC_0001.JPG").unlink()
    (tmp_path / "courtyard" / "ground_truth_depth" / "dslr_images" / "DSC_0002.JPG").write_bytes(b"\0" * 12)
    depth, pairs, rej = split(get_adapter("eth3d")(tmp_path, AdapterOptions(points=10)).convert("courtyard"))
    assert {(Path(r.source).name, r.reason) for r in rej} == {("DSC_0001.JPG", "missing_file"), ("DSC_0002.JPG", "size_mismatch")}
    assert len(depth) == 2

    make_eth3d(tmp_path, scene="pipes", with_depth=False, points=True)
    depth, pairs, rej = split(get_adapter("eth3d")(tmp_path, AdapterOptions(points=10, pairs_per_scene=10)).convert("pipes"))
    assert [r.reason for r in rej] == ["bad_calibration"] and depth == []
    # Even/odd images share 10 of their 20 points: 0.5 each way; same parity shares all.
    assert pairs and all(r.metric_scale for r in pairs)
    check_pairs(pairs, tol_px=1e-6)


# --- MegaDepth-style COLMAP --------------------------------------------------------------------
MD_CAM = ("PINHOLE", 80, 60, [70.0, 70.0, 40.0, 30.0])


def make_megadepth(
    root: Path, scene: str = "0015", depth: str | None = None, subdir: str = "sparse", camera: tuple = MD_CAM
) -> list[np.ndarray]:
    """Three images A, B, C of plane points; depth None, "h5" (MegaDepth) or "png" (uint16 mm)."""
    d = root / scene
    (d / "images").mkdir(parents=True)
    K = Intrinsics(*MD_CAM[3], MD_CAM[1], MD_CAM[2])
    cam = pycolmap.Camera(model=camera[0], width=camera[1], height=camera[2], params=camera[3])
    pts = plane_points(20, seed=1)
    sets = {"A.jpg": range(0, 10), "B.jpg": range(5, 15), "C.jpg": [0, 1, 15, 16, 17, 18, 19]}
    imgs, poses = [], []
    for i, (name, keep) in enumerate(sets.items()):
        T = cam_from_world(0.1 * i - 0.1, yaw=2.0 * i)
        poses.append(T)
        uv = cam.img_from_cam(transform_points(T, pts))  # COLMAP's own projection
        imgs.append((i + 1, T, 1, name, [(float(uv[k, 0]), float(uv[k, 1]), k + 1) for k in keep]))
        Image.new("RGB", (camera[1], camera[2])).save(d / "images" / name)
        if depth:
            (d / "depths").mkdir(exist_ok=True)
            xy = cam.cam_from_img(grid_centres(camera[1], camera[2]))
            z = plane_depth(T, np.concatenate([xy, np.ones((len(xy), 1))], axis=1)).reshape(camera[2], camera[1])
            z = np.where(np.isfinite(z), z, 0)
            if depth == "h5":
                import h5py

                with h5py.File(d / "depths" / f"{Path(name).stem}.h5", "w") as f:
                    f["depth"] = z.astype(np.float32)
            else:
                cv2.imwrite(str(d / "depths" / f"{Path(name).stem}.png"), np.round(z * 1000).astype(np.uint16))
    write_colmap(d / subdir, {1: camera}, imgs, {k + 1: p for k, p in enumerate(pts)})
    return poses


def test_megadepth_covisibility_from_shared_points(tmp_path):
    poses = make_megadepth(tmp_path)
    ad = get_adapter("megadepth")(tmp_path, AdapterOptions(points=50, pairs_per_scene=10))
    assert ad.units() == ["0015"]
    depth, pairs, rej = split(ad.convert("0015"))
    assert rej == [] and depth == []  # not metric: no depth questions
    # A-B share 5 of 10 points (0.5 both ways); A-C share 2 (min 0.2 < 0.25); B-C share none.
    assert len(pairs) == 1
    r = pairs[0]
    assert {r.meta["frame0"], r.meta["frame1"]} == {"A", "B"} and r.meta["covisibility_min"] == pytest.approx(0.5)
    assert r.metric_scale is False and len(r.matches.pixels0) == 5
    # Matches are the shared points projected with the dataset's own convention (COLMAP
    # camera-from-world, pixel = f * x / z + c).
    pts = plane_points(20, seed=1)[5:10]
    names = {"A": 0, "B": 1}
    for pix, frame in ((r.matches.pixels0, r.meta["frame0"]), (r.matches.pixels1, r.meta["frame1"])):
        p = transform_points(poses[names[frame]], pts)
        own = np.stack([70.0 * p[:, 0] / p[:, 2] + 40.0, 70.0 * p[:, 1] / p[:, 2] + 30.0], axis=1)
        assert np.allclose(np.sort(np.array(pix), axis=0), np.sort(own, axis=0), atol=1e-6)
    check_pairs(pairs, tol_px=1e-6)


def test_megadepth_binary_model_subfolder_and_depth(tmp_path):
    make_megadepth(tmp_path, scene="0100", depth="h5", subdir="text_model")
    rec = pycolmap.Reconstruction(str(tmp_path / "0100" / "text_model"))
    (tmp_path / "0100" / "sparse" / "0").mkdir(parents=True)
    rec.write_binary(str(tmp_path / "0100" / "sparse" / "0"))
    assert (tmp_path / "0100" / "sparse" / "0" / "images.bin").is_file()
    (tmp_path / "0100" / "depths" / "C.h5").write_bytes(b"garbage")
    ad = get_adapter("megadepth")(tmp_path, AdapterOptions(points=20, pairs_per_scene=10))
    depth, pairs, rej = split(ad.convert("0100"))
    assert [(Path(r.source).name, r.reason) for r in rej] == [("C", "unreadable_file")]
    assert depth == [] and len(pairs) == 1 and pairs[0].id.startswith("megadepth/0100/0/")
    assert 0.5 < pairs[0].covisibility <= 1.0  # from the depth maps now
    assert len(pairs[0].matches.pixels0) == 20
    check_pairs(pairs, tol_px=1e-3)


def test_megadepth_unsupported_camera_and_missing_image(tmp_path):
    make_megadepth(tmp_path)
    (tmp_path / "0015" / "images" / "B.jpg").unlink()
    cams = (tmp_path / "0015" / "sparse" / "cameras.txt").read_text()
    (tmp_path / "0015" / "sparse" / "cameras.txt").write_text(cams + "2 FOV 80 60 70 70 40 30 0.1\n")
    images = (tmp_path / "0015" / "sparse" / "images.txt").read_text().replace(" 1 C.jpg", " 2 C.jpg")
    (tmp_path / "0015" / "sparse" / "images.txt").write_text(images)
    _, pairs, rej = split(get_adapter("megadepth")(tmp_path, AdapterOptions()).convert("0015"))
    assert sorted((Path(r.source).name, r.reason) for r in rej) == [("B.jpg", "missing_file"), ("C.jpg", "bad_calibration")]
    assert pairs == []


def test_colmap_distorted_camera_with_depth(tmp_path):
    # SIMPLE_RADIAL becomes OpenCV distortion (k, 0, 0, 0); the depth is on the distorted grid.
    cam = ("SIMPLE_RADIAL", 80, 60, [70.0, 40.2, 29.7, -0.08])
    make_megadepth(tmp_path, depth="h5", camera=cam)
    _, pairs, rej = split(get_adapter("megadepth")(tmp_path, AdapterOptions(points=30, pairs_per_scene=5)).convert("0015"))
    assert rej == [] and pairs
    assert pairs[0].views[0].dist == [-0.08, 0.0, 0.0, 0.0] and pairs[0].views[0].intrinsics == [70.0, 70.0, 40.2, 29.7, 80, 60]
    check_pairs(pairs, dist_of=lambda v: v.dist)


def test_scannetpp_dslr_is_metric_with_png_depth(tmp_path):
    make_megadepth(tmp_path, scene="0a5c013435", depth="png", subdir="colmap")
    ad = get_adapter("scannetpp_dslr")(tmp_path, AdapterOptions(points=25, pairs_per_scene=5))
    assert ad.units() == ["0a5c013435"]
    depth, pairs, rej = split(ad.convert("0a5c013435"))
    assert rej == [] and len(depth) == 3 and all(r.metric_scale for r in depth + pairs)
    for r in depth:
        X = world_points(r.views[0].K, r.views[0].pose, np.array(r.depth.pixels), np.array(r.depth.depth))
        assert np.abs(X @ N - C).max() < 3e-3  # uint16 millimetres -> metres
    check_pairs(pairs)


def test_registered_names_and_layouts():
    for name in ("scannet", "tum", "eth3d", "megadepth", "scannetpp_dslr"):
        cls = get_adapter(name)
        assert cls.layout and cls.description and "poses" in cls.labels
