"""The VLM3 paper's depth and pose benches (vlm3/configs/bench), each on a tiny fixture written in
the layout its source makes: for depth, the JSONL + images DepthLM's curation scripts write (file
and image names as they write them); for pose, ETH3D's and ScanNet++'s own trees. The shipped
bench is loaded by name with VLM3_DATA pointing at the fixture; its prepared labels are checked
against values computed here from the raw files, and the ground-truth answerer scores perfectly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from support import random_image
from test_adapters_posed import cam_from_world, grid_centres, plane_depth, plane_points, write_colmap
from vlm3.data.adapters import AdapterOptions, get_adapter
from vlm3.data.adapters.base import LayoutError
from vlm3.data.adapters.colmap_scenes import select_scenes
from vlm3.eval.bench import load_bench, load_records, resolve_data
from vlm3.eval.run import PREDICTIONS, run_eval
from vlm3.geometry.camera import Intrinsics, project
from vlm3.geometry.pose import invert_T, transform_points
from vlm3.models.truth import GroundTruthBackend


def evaluate(bench, tmp_path: Path):
    """Prepared records by id, the ground-truth run's metrics and its prediction lines."""
    cache = tmp_path / "cache"
    records = load_records(resolve_data(bench, cache, progress=False))
    result = run_eval(GroundTruthBackend(bench, cache), bench, tmp_path / "gt", cache_dir=cache, progress=False, plots=False)
    lines = [json.loads(x) for x in (tmp_path / "gt" / PREDICTIONS).read_text().splitlines()]
    return records, result.metrics["metrics"], lines


# ================================================================================================
# Depth: DepthLM curation outputs
# ================================================================================================
# bench -> (JSONL file the curation script writes, image path it writes for image i, label kind, dataset)
# Label kinds: "range" = |X| (curate_argoverse / _eth3d / _sunRGBD / _NYU), "z" = camera z
# (curate_nuscenes_eval, curate_ddad), "scannet" = sqrt(xn^2 + yn^2 + z^2) (curate_scannet).
DEPTH = {
    "argoverse2": ("argoverse2_val.jsonl", lambda i: f"0c6e62d7-bdfa-3061-8d3d-03b13aa21f68/sensors/cameras/ring_front_center/3159673{i:05d}.jpg", "range", "argoverse2"),
    "ddad": ("ddad.jsonl", lambda i: f"val_images/{i}.jpg", "z", "ddad"),
    "nuscenes": ("nuscenes_eval.jsonl", lambda i: f"{383 + i // 6:06d}_{['CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_BACK_RIGHT', 'CAM_BACK', 'CAM_BACK_LEFT', 'CAM_FRONT_LEFT'][i % 6]}_image.jpg", "z", "nuscenes"),
    "eth3d-depth": ("eth3d.jsonl", lambda i: f"courtyard/images/dslr_images/DSC_{286 + i:04d}.JPG", "range", "eth3d"),
    "scannetpp-depth": ("scannet_depth_instructions.jsonl", lambda i: f"{['0a5c013435', '1ada7a0617'][i % 2]}/iphone/rgb/frame_{10 * i:06d}.jpg", "scannet", "scannetpp"),
    "sunrgbd": ("sunRGBD.jsonl", lambda i: f"kv2/kinect2data/{i:06d}_2014-05-26_14-23-37_260595134347_rgbf000103-resize/image/0000103.jpg", "range", "sunrgbd"),
    "nyuv2": ("NYUv2.jsonl", lambda i: f"kv1/NYUdata/NYU{i + 1:04d}/image/NYU{i + 1:04d}.jpg", "range", "nyuv2"),
}


def make_depthlm_curation(root: Path, jsonl: str, image_of, kind: str, n_images: int, seed: int = 0) -> dict[int, dict]:
    """Lines as DepthLM's scripts write them: 3D points X = ((u - cx) z / fx, (v - cy) z / fy, z) at
    integer pixel indices (u, v), labelled by ``kind``. Returns {line number: raw line + the points' X}."""
    g = np.random.default_rng(seed)
    lines, truth = [], {}
    for i in range(n_images):
        w, h = int(g.integers(56, 72)), int(g.integers(40, 52))
        fx = float(g.uniform(380, 520))
        fy = fx * float(g.choice([1.0, 1.02]))  # some cameras with fx != fy (vlm3 resamples to square pixels)
        cx, cy = (w - 1) / 2 + float(g.uniform(-2, 2)), (h - 1) / 2 + float(g.uniform(-2, 2))
        uv = np.stack([g.integers(0, w, 12), g.integers(0, h, 12)], axis=1)
        z = g.uniform(0.8, 30.0, 12)
        X = np.stack([(uv[:, 0] - cx) * z / fx, (uv[:, 1] - cy) * z / fy, z], axis=1)
        xn, yn = (uv[:, 0] - cx) / fx, (uv[:, 1] - cy) / fy
        label = {"range": np.linalg.norm(X, axis=1), "z": z, "scannet": np.sqrt(xn**2 + yn**2 + z**2)}[kind]
        line = {"image": image_of(i), "intrinsics": [fx, fy, cx, cy, w, h], "pixel_coords": uv.tolist(), "depth": label.tolist()}
        lines.append(line)
        truth[i + 1] = {**line, "X": X}
        path = root / image_of(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        random_image(seed * 1000 + i, w, h).save(path)
    (root / jsonl).write_text("".join(json.dumps(x) + "\n" for x in lines))
    return truth


@pytest.mark.parametrize("name", sorted(DEPTH))
def test_depth_bench_labels_and_ground_truth_run(name, tmp_path, monkeypatch):
    jsonl, image_of, kind, dataset = DEPTH[name]
    root = tmp_path / "data" / name
    n = 60 if name == "scannetpp-depth" else 4
    truth = make_depthlm_curation(root, jsonl, image_of, kind, n)
    (root / "other.jsonl").write_text("not read: the bench names its file\n")
    monkeypatch.setenv("VLM3_DATA", str(tmp_path / "data"))
    bench = load_bench(name)
    assert bench.get and bench.description and bench.data["prepare"]["adapter"] == "depthlm-jsonl"
    assert bench.settings == {"focal": 1000, "n_coords": 2000, "depth_type": "range"}

    records, metrics, lines = evaluate(bench, tmp_path)
    # DepthLM's ScanNet++ eval split: lines [int(0.98 n):] of the file (datasets.py); all lines elsewhere.
    expected_lines = list(range(int(n * 0.98) + 1, n + 1)) if name == "scannetpp-depth" else list(range(1, n + 1))
    assert sorted(records) == sorted(f"{dataset}:{jsonl}:{k}" for k in expected_lines)
    depth_type = "range" if kind == "range" else "z"
    for k in expected_lines:
        raw, rec = truth[k], records[f"{dataset}:{jsonl}:{k}"]
        fx, fy, cx, cy, w, h = raw["intrinsics"]
        assert rec.views[0].image == raw["image"]
        assert rec.views[0].intrinsics == pytest.approx([fx, fy, cx + 0.5, cy + 0.5, w, h])  # centre-origin -> corner
        assert rec.depth.depth_type == depth_type
        assert rec.depth.pixels == [(u + 0.5, v + 0.5) for u, v in raw["pixel_coords"]]  # index -> pixel centre
        assert rec.depth.depth == pytest.approx(raw["depth"])

    # The questions ask range ("how far ... from the camera"): each asked label's target is the
    # distance of its 3D point (for ScanNet++'s label, the value taken as z along the pixel's ray).
    assert lines and all(line["parsed"] for line in lines)
    for line in lines:
        k = int(line["record"].rsplit(":", 1)[1])
        i = int(line["label"][1:])
        raw = truth[k]
        if kind == "scannet":
            fx, fy, cx, cy, _, _ = raw["intrinsics"]
            u, v = raw["pixel_coords"][i]
            want = raw["depth"][i] * np.sqrt(1 + ((u - cx) / fx) ** 2 + ((v - cy) / fy) ** 2)
        else:
            want = np.linalg.norm(raw["X"][i])
        assert line["gt"] == pytest.approx(want, rel=1e-6)
    assert len(lines) == len(expected_lines) * 10  # limits.points: 10 of each image's labels
    assert metrics["delta1"] == 1.0


def test_depthlm_line_range_option(tmp_path):
    make_depthlm_curation(tmp_path, "a.jsonl", lambda i: f"im{i}.png", "z", 10)
    ad = get_adapter("depthlm-jsonl")(tmp_path, AdapterOptions(extra={"line_range": "0.2:0.55", "chunk_size": "2"}))
    assert ad.units() == ["a.jsonl:00000003-00000004", "a.jsonl:00000005-00000005"]  # 0-based [2, 5)
    recs = list(ad.convert_all())
    assert [r.meta["source"] for r in recs] == ["a.jsonl:3", "a.jsonl:4", "a.jsonl:5"]
    with pytest.raises(ValueError, match="outside lines 3..5"):
        list(ad.convert("a.jsonl:00000001-00000002"))
    for bad in ("0.98", "0.5:0.2", "x:", "0:1.5"):
        with pytest.raises(ValueError, match="line_range"):
            get_adapter("depthlm-jsonl")(tmp_path, AdapterOptions(extra={"line_range": bad}))


# ================================================================================================
# Pose: ETH3D high-res multi-view
# ================================================================================================
DA3_ETH3D = ["courtyard", "electro", "kicker", "pipes", "relief", "delivery_area", "facade", "office", "playground", "relief_2", "terrains"]
FISHEYE = ("THIN_PRISM_FISHEYE", 96, 64, [150.0, 151.0, 48.3, 31.8, 0.02, -0.01, 0.001, 0.0005, 0.002, 0.0, 0.001, 0.0005])
PIN = ("PINHOLE", 80, 56, [160.0, 160.5, 40.2, 28.1])


def make_eth3d_scene(root: Path, scene: str, names: list[str]) -> dict[str, np.ndarray]:
    """ETH3D's tree for one scene: undistorted images + PINHOLE model, the distorted model (the
    depth grid) and raw float32 z-depth of a plane. Returns {image name: T_cam_from_world}."""
    d = root / scene
    (d / "images" / "dslr_images_undistorted").mkdir(parents=True)
    (d / "ground_truth_depth" / "dslr_images").mkdir(parents=True)
    cam_d = pycolmap.Camera(model=FISHEYE[0], width=FISHEYE[1], height=FISHEYE[2], params=FISHEYE[3])
    poses, und, dis = {}, [], []
    for i, name in enumerate(names):
        T = cam_from_world(0.04 * i - 0.04, y=0.01 * i, yaw=-1.5 * i)
        poses[name] = T
        und.append((i + 1, T, 1, f"dslr_images_undistorted/{name}", []))
        dis.append((i + 1, T, 1, f"dslr_images/{name}", []))
        random_image(i, PIN[1], PIN[2]).save(d / "images" / "dslr_images_undistorted" / name)
        xy = cam_d.cam_from_img(grid_centres(FISHEYE[1], FISHEYE[2]))
        z = plane_depth(T, np.concatenate([xy, np.ones((len(xy), 1))], axis=1))
        z.reshape(FISHEYE[2], FISHEYE[1]).astype("<f4").tofile(d / "ground_truth_depth" / "dslr_images" / name)
    write_colmap(d / "dslr_calibration_undistorted", {1: PIN}, und, {})
    write_colmap(d / "dslr_calibration_jpg", {1: FISHEYE}, dis)
    return poses


def check_pose_lines(records, lines, poses_of) -> None:
    """Every pair's views carry the raw camera-from-world poses, and the asked target is
    T_cam2_from_cam1 = T_cam2_from_world @ inverse(T_cam1_from_world) of the raw poses."""
    assert lines and all(line["parsed"] for line in lines)
    for line in lines:
        rec = records[line["record"]]
        T1, T2 = (poses_of(rec, v) for v in rec.views)
        assert np.allclose(rec.views[0].pose, T1, atol=1e-9) and np.allclose(rec.views[1].pose, T2, atol=1e-9)
        T = T2 @ invert_T(T1)
        assert np.allclose(line["gt"]["R"], T[:3, :3], atol=1e-9) and np.allclose(line["gt"]["t"], T[:3, 3], atol=1e-9)


def test_eth3d_pose_bench(tmp_path, monkeypatch):
    root = tmp_path / "data" / "eth3d-pose"
    poses: dict[tuple[str, str], np.ndarray] = {}
    for scene in DA3_ETH3D + ["meadow"]:  # meadow: not one of DA3's 11 scenes
        names = ["DSC_0710.JPG", "DSC_0711.JPG", "DSC_0715.JPG"] if scene in ("delivery_area", "courtyard") else ["DSC_0001.JPG", "DSC_0002.JPG", "DSC_0003.JPG"]
        poses.update({(scene, k): v for k, v in make_eth3d_scene(root, scene, names).items()})
    monkeypatch.setenv("VLM3_DATA", str(tmp_path / "data"))
    bench = load_bench("eth3d-pose")
    assert bench.task == "pose" and bench.scoring == {"pair_order": "cam1_from_cam2"} and bench.get

    records, metrics, lines = evaluate(bench, tmp_path)
    scenes = {r.id.split("/")[1] for r in records.values()}
    assert scenes == set(DA3_ETH3D)
    assert all(len(r.views) == 2 and r.covisibility > 0.25 and r.metric_scale for r in records.values())
    images = {(r.id.split("/")[1], Path(v.image).name) for r in records.values() for v in r.views}
    assert ("delivery_area", "DSC_0711.JPG") not in images  # DA3's ETH3D_FILTER_KEYS, per scene
    assert ("courtyard", "DSC_0711.JPG") in images  # the key is delivery_area's only
    assert len(records) == 10 * 3 + 1  # 3 images -> 3 pairs; delivery_area keeps 2 images -> 1 pair

    check_pose_lines(records, lines, lambda rec, v: poses[(v.image.split("/")[0], Path(v.image).name)])
    assert metrics["auc30"] == 1.0 and metrics["pair_order"] == "cam1_from_cam2" and metrics["n"] == len(records)


# ================================================================================================
# Pose: ScanNet++ DSLR (undistorted by the toolkit), held-out scene list
# ================================================================================================
SPP_CAM = ("PINHOLE", 80, 60, [150.0, 150.0, 40.0, 30.0])


def make_scannetpp_scene(root: Path, scene: str) -> dict[str, np.ndarray]:
    """The toolkit's undistorted DSLR output for one scene: colmap/ (PINHOLE, camera-from-world,
    metric, SfM points) and images/. Returns {image name: T_cam_from_world}."""
    d = root / scene
    (d / "images").mkdir(parents=True)
    K = Intrinsics(*SPP_CAM[3], SPP_CAM[1], SPP_CAM[2])
    pts = plane_points(20, seed=len(scene))
    poses, imgs = {}, []
    for i in range(3):
        name = f"DSC{i + 1:05d}.JPG"
        T = cam_from_world(0.05 * i, yaw=1.0 * i)
        poses[name] = T
        uv, _ = project(K, transform_points(T, pts))
        imgs.append((i + 1, T, 1, name, [(float(uv[k, 0]), float(uv[k, 1]), k + 1) for k in range(20)]))
        random_image(10 + i, SPP_CAM[1], SPP_CAM[2]).save(d / "images" / name)
    write_colmap(d / "colmap", {1: SPP_CAM}, imgs, {k + 1: p for k, p in enumerate(pts)})
    return poses


def test_scannetpp_pose_bench_held_out_scenes(tmp_path, monkeypatch):
    root = tmp_path / "data" / "scannetpp-pose"
    held_out = ["0a5c013435", "1ada7a0617", "fb5a96b1a2"]
    poses = {}
    for scene in held_out + ["7b6477cb95"]:  # the last one is not in the split file
        poses.update({(scene, k): v for k, v in make_scannetpp_scene(root, scene).items()})
    (root / "nvs_sem_val.txt").write_text("# ScanNet++ splits/nvs_sem_val.txt\n" + "\n".join(held_out) + "\n")
    monkeypatch.setenv("VLM3_DATA", str(tmp_path / "data"))
    bench = load_bench("scannetpp-pose")
    assert bench.task == "pose" and bench.scoring == {"pair_order": "cam1_from_cam2"} and bench.get

    records, metrics, lines = evaluate(bench, tmp_path)
    assert {r.id.split("/")[1] for r in records.values()} == set(held_out)
    assert len(records) == 3 * 3 and all(r.covisibility == 1.0 and r.metric_scale for r in records.values())
    check_pose_lines(records, lines, lambda rec, v: poses[(v.image.split("/")[0], Path(v.image).name)])
    assert metrics["auc30"] == 1.0 and metrics["pair_order"] == "cam1_from_cam2"


def test_scene_selection_options(tmp_path):
    ids = ["a1", "b2", "c3", "d4", "e5"]
    (tmp_path / "list.txt").write_text("c3  # comment\n\na1\nb2\nd4\ne5\n")
    opts = AdapterOptions(seed=3, extra={"scenes": "@list.txt", "max_scenes": "2"})
    order = np.random.default_rng(3).permutation(5)
    assert select_scenes(tmp_path, ids + ["zz"], opts) == sorted(ids[i] for i in order[:2])
    assert select_scenes(tmp_path, ids, AdapterOptions(extra={"scenes": "e5, a1"})) == ["a1", "e5"]
    with pytest.raises(LayoutError, match="q9"):
        select_scenes(tmp_path, ids, AdapterOptions(extra={"scenes": "a1,q9"}))
    with pytest.raises(LayoutError, match="nope.txt"):
        select_scenes(tmp_path, ids, AdapterOptions(extra={"scenes": "@nope.txt"}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="no scene folder"):
        get_adapter("scannetpp_dslr")(tmp_path / "empty").units()
    with pytest.raises(LayoutError, match="no scene folder"):
        get_adapter("eth3d")(tmp_path / "empty").units()
