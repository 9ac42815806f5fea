"""Pair adapters from 2-D ground truth: HPatches homographies and Middlebury stereo (PFM, calib, poses)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vlm3.data.adapters.hpatches import to_corner_origin
from vlm3.data.adapters.middlebury import read_pfm
from vlm3.geometry.camera import backproject, project
from vlm3.geometry.pose import camera2_center_in_cam1, relative_pose, transform_points
from vlm3.tasks import tasks_of
from support import assert_round_trip, run_adapter


# --- HPatches -------------------------------------------------------------------------------------

H_TRANSLATE = np.array([[1.0, 0, 5], [0, 1, 3], [0, 0, 1]])
H_HALF = np.array([[0.5, 0, 0], [0, 0.5, 0], [0, 0, 1]])  # centre origin: q_c = p_c / 2
H_PROJ = np.array([[0.9, 0.05, 4.0], [-0.03, 1.1, -2.0], [4e-4, -3e-4, 1.0]])


def write_pfm(path: str | Path, image: np.ndarray, little_endian: bool = True) -> None:
    """Write a float (H, W) or (H, W, 3) array as PFM (bottom row first, as the format requires)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        kind = b"Pf"
    elif image.ndim == 3 and image.shape[2] == 3:
        kind = b"PF"
    else:
        raise ValueError(f"PFM holds (H, W) or (H, W, 3) arrays, got shape {image.shape}")
    h, w = image.shape[:2]
    data = np.flipud(image).astype("<f4" if little_endian else ">f4")
    with open(path, "wb") as f:
        f.write(kind + b"\n" + f"{w} {h}\n".encode() + (b"-1.0\n" if little_endian else b"1.0\n"))
        f.write(data.tobytes())


def write_h(path: Path, H: np.ndarray) -> None:
    path.write_text("\n".join("  ".join(f"{v:.10e}" for v in row) for row in H) + "\n")


def make_hpatches(root: Path) -> Path:
    seq = root / "v_fixture"
    seq.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {1: (64, 48), 2: (64, 48), 3: (40, 30), 4: (64, 48), 5: (64, 48)}  # 6.ppm is missing
    for k, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(seq / f"{k}.ppm")
    write_h(seq / "H_1_2", H_TRANSLATE)
    write_h(seq / "H_1_3", H_HALF)
    write_h(seq / "H_1_4", H_PROJ)
    # H_1_5 is missing.
    bad = root / "i_broken"
    bad.mkdir()
    for k in range(1, 7):
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(bad / f"{k}.ppm")
    (bad / "H_1_2").write_text("1 0 0\n0 1 0\n")  # 6 numbers
    write_h(bad / "H_1_3", np.array([[1.0, 0, 1000], [0, 1, 0], [0, 0, 1]]))  # maps everything outside
    write_h(bad / "H_1_4", np.zeros((3, 3)))  # singular
    for k in (5, 6):
        write_h(bad / f"H_1_{k}", np.eye(3))
    return root


def test_corner_origin_conversion() -> None:
    p_center = np.array([[0.0, 0.0], [10.0, 7.0]])
    Hc = to_corner_origin(H_HALF)
    q = (Hc @ np.c_[p_center + 0.5, np.ones(2)].T).T
    assert np.allclose(q[:, :2] / q[:, 2:], p_center / 2 + 0.5)
    assert np.allclose(to_corner_origin(H_TRANSLATE), H_TRANSLATE)  # translations do not change


def test_hpatches_exact_matches(tmp_path: Path) -> None:
    root = make_hpatches(tmp_path / "hp")
    recs, rejs = run_adapter("hpatches", root, points=40, seed=0, split="test")
    by_id = {r.id: r for r in recs}
    assert sorted(by_id) == ["hpatches/i_broken/1_5", "hpatches/i_broken/1_6", "hpatches/v_fixture/1_2",
                             "hpatches/v_fixture/1_3", "hpatches/v_fixture/1_4"]
    # Scaling by 1/2 about the centre of the top-left pixel: corner-origin q = p / 2 + 0.25, not p / 2.
    r3 = by_id["hpatches/v_fixture/1_3"]
    p0, p1 = np.asarray(r3.matches.pixels0), np.asarray(r3.matches.pixels1)
    assert len(p0) == 40 and np.all(p0 % 1 == 0.5)
    assert np.allclose(p1, p0 / 2 + 0.25, atol=1e-9)
    assert r3.covisibility == 1.0 and r3.views[1].intrinsics[4:] == [40, 30]
    # Translation: kept only when inside image 2; covisibility counted over pixel centres.
    r2 = by_id["hpatches/v_fixture/1_2"]
    p0, p1 = np.asarray(r2.matches.pixels0), np.asarray(r2.matches.pixels1)
    assert np.allclose(p1, p0 + [5, 3]) and p1[:, 0].max() < 64 and p1[:, 1].max() < 48
    assert r2.covisibility == pytest.approx(59 * 45 / (64 * 48))
    # General homography: same as OpenCV applied in the centre-origin convention.
    r4 = by_id["hpatches/v_fixture/1_4"]
    p0, p1 = np.asarray(r4.matches.pixels0), np.asarray(r4.matches.pixels1)
    ref = cv2.perspectiveTransform((p0 - 0.5).reshape(-1, 1, 2), H_PROJ).reshape(-1, 2) + 0.5
    assert np.allclose(p1, ref, atol=1e-9)
    for r in recs:
        assert r.meta["intrinsics_estimated"] is True and r.metric_scale is False and r.split == "test"
        assert tasks_of(r) == ["correspondence"] and all(v.T_cam_from_world is None for v in r.views)
    assert r3.views[0].intrinsics == [80.0, 80.0, 32.0, 24.0, 64, 48]  # f = diagonal of 64x48, centre
    reasons = sorted((r.source, r.reason) for r in rejs)
    assert reasons == [
        ("i_broken/H_1_2", "bad_pose"),
        ("i_broken/H_1_3", "no_labels"),
        ("i_broken/H_1_4", "bad_pose"),
        ("v_fixture/6.ppm", "missing_file"),
        ("v_fixture/H_1_5", "missing_file"),
    ]
    assert_round_trip(recs, tmp_path)


def test_hpatches_deterministic(tmp_path: Path) -> None:
    root = make_hpatches(tmp_path / "hp")
    a, _ = run_adapter("hpatches", root, points=10, seed=3)
    b, _ = run_adapter("hpatches", root, points=10, seed=3)
    c, _ = run_adapter("hpatches", root, points=10, seed=4)
    assert [r.model_dump() for r in a] == [r.model_dump() for r in b]
    assert a[2].matches.pixels0 != c[2].matches.pixels0


# --- Middlebury: PFM ------------------------------------------------------------------------------


def test_pfm_row_order_and_endianness(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4) * 1.5
    big = tmp_path / "big.pfm"  # positive scale = big-endian; rows bottom to top
    big.write_bytes(b"Pf\n4 3\n1.0\n" + np.flipud(a).astype(">f4").tobytes())
    assert np.array_equal(read_pfm(big), a)
    little = tmp_path / "little.pfm"
    little.write_bytes(b"Pf\n4 3\n-1.0\n" + np.flipud(a).astype("<f4").tobytes())
    assert np.array_equal(read_pfm(little), a)
    rgb = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32)
    rgb[0, 0, 0] = np.inf
    for little_endian in (True, False):
        write_pfm(tmp_path / "rgb.pfm", rgb, little_endian=little_endian)
        assert np.array_equal(read_pfm(tmp_path / "rgb.pfm"), rgb)


def test_pfm_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.pfm").write_bytes(b"P6\n4 3\n255\n")
    with pytest.raises(ValueError, match=r"x\.pfm.*not a PFM"):
        read_pfm(tmp_path / "x.pfm")
    (tmp_path / "short.pfm").write_bytes(b"Pf\n4 3\n-1.0\n" + b"\0" * 20)
    with pytest.raises(ValueError, match=r"short\.pfm.*5 values"):
        read_pfm(tmp_path / "short.pfm")


# --- Middlebury: scenes ---------------------------------------------------------------------------

W, H = 40, 30
F, CX0, CY, DOFFS, BASELINE_MM = 100.0, 19.5, 14.5, 10.0, 200.0
PLANE_Z = 1.0  # metres: d = f * B / Z - doffs = 100 * 200 / 1000 - 10 = 10 px


def write_calib(path: Path, f: float, cx0: float, cy: float, doffs: float, baseline: float, w: int, h: int) -> None:
    path.write_text(
        f"cam0=[{f} 0 {cx0}; 0 {f} {cy}; 0 0 1]\n"
        f"cam1=[{f} 0 {cx0 + doffs}; 0 {f} {cy}; 0 0 1]\n"
        f"doffs={doffs}\nbaseline={baseline}\nwidth={w}\nheight={h}\nndisp=64\nisint=0\nvmin=5\nvmax=30\ndyavg=0\ndymax=0\n"
    )


def make_scene(root: Path, name: str, disp: np.ndarray | None = None) -> Path:
    scene = root / name
    scene.mkdir(parents=True)
    for fname in ("im0.png", "im1.png"):
        Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(scene / fname)
    if disp is None:
        disp = np.full((H, W), F * BASELINE_MM / (PLANE_Z * 1000) - DOFFS, np.float32)
        disp[10:14, 20:25] = np.inf  # unknown disparity
    write_pfm(scene / "disp0.pfm", disp)
    write_calib(scene / "calib.txt", F, CX0, CY, DOFFS, BASELINE_MM, W, H)
    return scene


def test_middlebury_plane_depth_matches_and_poses(tmp_path: Path) -> None:
    root = tmp_path / "mb"
    make_scene(root, "Plane-perfect")
    recs, rejs = run_adapter("middlebury", root, points=200, seed=0)
    assert rejs == []
    depth, pair = recs
    assert depth.id == "middlebury/Plane-perfect/depth" and pair.id == "middlebury/Plane-perfect/pair01"
    # Intrinsics: OpenCV origin -> corner origin.
    assert depth.views[0].intrinsics == [F, F, CX0 + 0.5, CY + 0.5, W, H]
    assert pair.views[1].intrinsics == [F, F, CX0 + DOFFS + 0.5, CY + 0.5, W, H]
    # Depth: baseline (mm) * f / (d + doffs) / 1000 = 1 m, z-depth; unknown disparities excluded.
    px = np.asarray(depth.depth.pixels)
    assert depth.depth.depth_type == "z" and np.allclose(depth.depth.depth, PLANE_Z)
    in_hole = (px[:, 1] > 10) & (px[:, 1] < 14) & (px[:, 0] > 20) & (px[:, 0] < 25)
    assert len(px) == 200 and not in_hole.any()
    # Matches: x1 = x0 - d on the same row, only where the partner is inside the right image.
    p0, p1 = np.asarray(pair.matches.pixels0), np.asarray(pair.matches.pixels1)
    assert np.allclose(p1, p0 - [10, 0]) and p0[:, 0].min() >= 10.5
    # Poses: camera 1 is baseline metres to the right of camera 0 (= world).
    T0, T1 = pair.views[0].pose, pair.views[1].pose
    assert np.allclose(T0, np.eye(4)) and np.allclose(T1[:3, 3], [-0.2, 0, 0])
    assert np.allclose(camera2_center_in_cam1(relative_pose(T0, T1)), [0.2, 0, 0])
    # The three labels agree: back-project view-0 pixels at their depth, move to camera 1, project.
    K0, K1 = pair.views[0].K, pair.views[1].K
    uv1, z1 = project(K1, transform_points(T1, backproject(K0, p0, np.full(len(p0), PLANE_Z))))
    assert np.allclose(uv1, p1, atol=1e-9) and np.allclose(z1, PLANE_Z)
    assert tasks_of(pair) == ["pose", "correspondence"] and tasks_of(depth) == ["depth"]
    assert_round_trip(recs, tmp_path)


def test_middlebury_rejections_and_determinism(tmp_path: Path) -> None:
    root = tmp_path / "mb"
    make_scene(root, "A-good")
    (make_scene(root, "B-nodisp") / "disp0.pfm").unlink()
    make_scene(root, "C-allinf", disp=np.full((H, W), np.inf, np.float32))
    write_calib(make_scene(root, "D-badcalib") / "calib.txt", F, CX0, CY, DOFFS, -1.0, W, H)
    make_scene(root, "E-size", disp=np.zeros((H + 1, W), np.float32))
    (make_scene(root, "F-noim1") / "im1.png").unlink()
    write_calib(make_scene(root, "G-zerofocal") / "calib.txt", 0.0, CX0, CY, DOFFS, BASELINE_MM, W, H)
    recs, rejs = run_adapter("middlebury", root, points=20, seed=1)
    assert [r.id for r in recs] == ["middlebury/A-good/depth", "middlebury/A-good/pair01"]
    assert sorted((r.source, r.reason) for r in rejs) == [
        ("B-nodisp/disp0.pfm", "missing_file"),
        ("C-allinf/disp0.pfm", "no_valid_depth"),
        ("D-badcalib/calib.txt", "bad_calibration"),
        ("E-size/disp0.pfm", "size_mismatch"),
        ("F-noim1/im1.png", "missing_file"),
        ("G-zerofocal/calib.txt", "bad_calibration"),
    ]
    again, _ = run_adapter("middlebury", root, points=20, seed=1)
    other, _ = run_adapter("middlebury", root, points=20, seed=2)
    assert [r.model_dump() for r in again] == [r.model_dump() for r in recs]
    assert other[1].matches.pixels0 != recs[1].matches.pixels0


def test_middlebury_motorcycle_matches_are_photometrically_consistent(tmp_path: Path) -> None:
    """The real Middlebury 2014 Motorcycle pair shipped with scikit-image (downsampled by 4)."""
    data = pytest.importorskip("skimage.data")
    left, right, disp = data.stereo_motorcycle()
    h, w = disp.shape
    scene = tmp_path / "mb" / "Motorcycle"
    scene.mkdir(parents=True)
    Image.fromarray(left).save(scene / "im0.png")
    Image.fromarray(right).save(scene / "im1.png")
    write_pfm(scene / "disp0.pfm", disp)  # inf = unknown, as in the benchmark files
    # Calibration from the skimage docstring (Middlebury 2014 Motorcycle calib.txt divided by 4):
    # f 994.978, cx 311.193, cy 254.877, doffs 31.086 px, baseline 193.001 mm.
    write_calib(scene / "calib.txt", 994.978, 311.193, 254.877, 31.086, 193.001, w, h)
    recs, rejs = run_adapter("middlebury", tmp_path / "mb", points=3000, seed=0)
    assert rejs == []
    depth, pair = recs
    assert 1.0 < min(depth.depth.depth) and max(depth.depth.depth) < 6.0  # a motorcycle a few metres away
    p0, p1 = np.asarray(pair.matches.pixels0), np.asarray(pair.matches.pixels1)
    assert np.allclose(p0[:, 1], p1[:, 1])

    def colour(img: np.ndarray, px: np.ndarray) -> np.ndarray:
        return img[np.floor(px[:, 1]).astype(int), np.floor(px[:, 0]).astype(int)].astype(np.float64)

    matched = np.abs(colour(left, p0) - colour(right, p1)).mean()
    shuffled = np.abs(colour(left, p0) - colour(right, np.random.default_rng(0).permutation(p1))).mean()
    wrong_sign = p0 + np.c_[p0[:, 0] - p1[:, 0], np.zeros(len(p0))]  # x0 + d: the opposite convention
    inside = (wrong_sign[:, 0] < w)
    flipped = np.abs(colour(left, p0[inside]) - colour(right, wrong_sign[inside])).mean()
    assert matched < 0.3 * shuffled and matched < 0.3 * flipped, (matched, shuffled, flipped)
