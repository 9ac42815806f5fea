"""UFM's correspondence benchmarks (adapters ufm-eth3d, ufm-dtu, ufm-tartanair; benches of the same names).

Fixtures are built in UFM's release layout with a known geometry: for ETH3D/DTU a tilted plane seen
by two cameras (the match is the plane's homography, closed form), for TA-WB a flow field stored in
the h5 files. Labels are checked against those values in both frames (the release's pixels and
UFM's 560x420 evaluation frame), and each shipped bench is run with the ground-truth answerer (EPE
at the rounding of integer text coordinates, PCK@5 = 1).
"""

from __future__ import annotations

import json
import math
import shutil

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image
from support import assert_round_trip, run_adapter

from vlm3.data.adapters import LayoutError, get_adapter
from vlm3.data.adapters.ufm_bench import TOTAL_SAMPLES, sample_shares
from vlm3.eval.bench import bench_dir

h5py = pytest.importorskip("h5py")

SIZES = {"eth3d": (60, 40), "dtu": (64, 48)}  # the releases' aspect ratios: 600x400 and 600x450
F = 400.0  # focal (px) of the fixtures
ANG = math.radians(1.0)
R = np.array([[math.cos(ANG), 0, math.sin(ANG)], [0, 1, 0], [-math.sin(ANG), 0, math.cos(ANG)]])
N_PLANE = np.array([0.1, -0.05, 1.0]) / np.linalg.norm([0.1, -0.05, 1.0])
INVALID0 = (slice(2, 6), slice(3, 9))  # rows, cols of view a's depth set to 0
OCCLUDER1 = (20, 30, 12, 24)  # view b's depth halved in x in [20, 30), y in [12, 24) (pixel indices)
Z0 = {"eth3d": 2.0, "dtu": 1000.0}  # metres / millimetres


def K_of(w: int, h: int) -> np.ndarray:
    """Centre-origin K (principal point at the image centre), as UFM reads the files."""
    return np.array([[F, 0, (w - 1) / 2], [0, F, (h - 1) / 2], [0, 0, 1.0]])


def ufm_K(K: np.ndarray, w: int, h: int) -> np.ndarray:
    """K in UFM's 560x420 frame, from DUSt3R's cropping rules (rescale to cover, centre crop)."""
    s = max(560 / w, 420 / h) + 1e-8
    out = np.floor(np.array([w, h]) * s)
    K2 = K.copy()
    K2[:2, :2] *= s
    K2[:2, 2] = (K[:2, 2] + 0.5) * s - 0.5 * (np.array([w, h]) * s - out) - 0.5 - np.round(0.5 * (out - [560, 420]))
    return K2


def plane_homography(K0: np.ndarray, K1: np.ndarray, z0: float) -> tuple[np.ndarray, np.ndarray]:
    """(t, homography a->b in centre-origin pixels) for the plane n.X = z0 seen from cameras a (I) and b (R, t)."""
    t = np.array([-0.02, 0.01, 0.01]) * z0
    return t, K1 @ (R + np.outer(t, N_PLANE) / z0) @ np.linalg.inv(K0)


def plane_depth(K: np.ndarray, w: int, h: int, n: np.ndarray, d: float) -> np.ndarray:
    jj, ii = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(ii - K[0, 2]) / K[0, 0], (jj - K[1, 2]) / K[1, 1], np.ones_like(ii)], axis=-1)
    return d / (rays @ n)


def apply_h(Hm: np.ndarray, p0: np.ndarray) -> np.ndarray:
    """Corner-origin match of corner-origin pixels under a centre-origin homography."""
    q = np.c_[p0 - 0.5, np.ones(len(p0))] @ Hm.T
    return q[:, :2] / q[:, 2:] + 0.5


def make_processed(root, kind: str, n_rows: int):
    """UFM's processed ETH3D (kind "eth3d") or DTU ("dtu") layout: one scene, views a and b, and a
    pair list of ``n_rows`` rows alternating (a, b), (b, a) in blocks (row k: (a, b) when k % 4 < 2)."""
    w, h = SIZES[kind]
    K = K_of(w, h)
    t, _ = plane_homography(K, K, Z0[kind])
    n1 = R @ N_PLANE
    depth_a, depth_b = plane_depth(K, w, h, N_PLANE, Z0[kind]), plane_depth(K, w, h, n1, Z0[kind] + n1 @ t)
    depth_a[INVALID0] = 0.0
    x0, x1, y0, y1 = OCCLUDER1
    depth_b[y0:y1, x0:x1] *= 0.5
    T_b = np.eye(4)
    T_b[:3, :3], T_b[:3, 3] = R, t
    names = ("DSC_0001", "DSC_0002") if kind == "eth3d" else ("00000001", "00000002")
    scene = "courtyard" if kind == "eth3d" else "scan1"
    folder = root / f"{kind}_processed" / scene
    sub = (
        {"image": "undistorted_images", "depth": "undistorted_depths", "K": "undistorted_camera_params", "pose": "poses"}
        if kind == "eth3d" else {"image": "images", "depth": "depths", "K": "camera_params", "pose": "poses"}
    )
    for s in sub.values():
        (folder / s).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, depth, T in zip(names, (depth_a, depth_b), (np.eye(4), T_b)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if kind == "eth3d":
            img.save(folder / sub["image"] / f"{name}.jpg")
            np.save(folder / sub["K"] / f"{name}.npy", np.array([F, F, K[0, 2], K[1, 2]]))
        else:
            img.save(folder / sub["image"] / f"{name}.png")
            np.save(folder / sub["K"] / f"{name}_intrinsics.npy", K.astype(np.float32))
        np.save(folder / sub["depth"] / f"{name}.npy", depth.astype(np.float32))
        np.save(folder / sub["pose"] / f"{name}.npy", T.astype(np.float32))
    rows = [(scene, *(names if k % 4 < 2 else names[::-1]), 0.5) for k in range(n_rows)]
    (root / "anymap_data_pairs").mkdir(parents=True, exist_ok=True)
    data = np.empty((n_rows, 4), dtype=object)
    data[:] = rows
    np.savez(root / "anymap_data_pairs" / f"{kind}_valid_pairs.npz", data=data)
    return names, folder / sub["image"]


def stored_flow(seed: int, w: int, h: int, affine: bool) -> np.ndarray:
    """(2, h, w) flow on UFM's integer grid: flow = A @ (i, j) + b (A = 0 unless ``affine``)."""
    rng = np.random.default_rng(seed)
    A = rng.uniform(-0.05, 0.05, (2, 2)) if affine else np.zeros((2, 2))
    b = rng.uniform(-6, 6, 2)
    jj, ii = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([A[0, 0] * ii + A[0, 1] * jj + b[0], A[1, 0] * ii + A[1, 1] * jj + b[1]]).astype(np.float32)


OCC_BLOCK = (slice(10, 20), slice(30, 40))  # rows, cols where non_occluded_fwd is False


def make_tawb(root, n_pairs: int = 3, size: tuple[int, int] = (64, 48), affine: bool = True):
    """UFM's TA-WB release layout: ROOT/TA-WB/data/{part_000.h5, index.json, stats.json}; pair k
    is row k % 2 of the h5 file."""
    w, h = size
    folder = root / "TA-WB" / "data"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = 2
    flows = np.stack([stored_flow(s, w, h, affine) for s in range(rows)])
    jj, ii = np.mgrid[0:h, 0:w]
    fov = (ii + flows[:, 0] >= -0.5) & (ii + flows[:, 0] < w - 0.5) & (jj + flows[:, 1] >= -0.5) & (jj + flows[:, 1] < h - 0.5)
    non_occ = np.ones((rows, h, w), dtype=bool)
    non_occ[:, OCC_BLOCK[0], OCC_BLOCK[1]] = False
    with h5py.File(folder / "part_000.h5", "w") as f:
        f["img0"] = rng.integers(0, 256, (rows, h, w, 3), dtype=np.uint8)
        f["img1"] = rng.integers(0, 256, (rows, h, w, 3), dtype=np.uint8)
        f["flow_fwd"], f["flow_bwd"] = flows, -flows
        f["non_occluded_fwd"], f["non_occluded_bwd"] = non_occ, non_occ
        f["fov_mask_fwd"], f["fov_mask_bwd"] = fov, fov
        f["occlusion_supervision_mask_fwd"] = f["occlusion_supervision_mask_bwd"] = fov
    index = {str(k): (["part_000.h5", k % 2] if k % 3 else {"file_name": "part_000.h5", "file_index": k % 2}) for k in range(n_pairs)}
    (folder / "index.json").write_text(json.dumps(index))
    (folder / "stats.json").write_text(json.dumps({"forward_match_errors": [0.1, 0.2]}))


# --- sample shares ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 1500, 9000])
def test_shares_split_8192_evenly_and_reproducibly(n):
    s = sample_shares(n, TOTAL_SAMPLES, 0, "ufm-x")
    assert s.sum() == TOTAL_SAMPLES and s.max() - s.min() <= 1 and len(s) == n
    assert np.array_equal(s, sample_shares(n, TOTAL_SAMPLES, 0, "ufm-x"))
    if TOTAL_SAMPLES % n:
        assert not np.array_equal(s, sample_shares(n, TOTAL_SAMPLES, 1, "ufm-x"))


# --- ETH3D and DTU: labels against the plane's homography ------------------------------------------


@pytest.mark.parametrize("kind,stride,n_rows", [("eth3d", 3, 6), ("dtu", 50, 100)])
def test_processed_pairs_match_the_plane_homography_in_the_release_frame(tmp_path, kind, stride, n_rows):
    root = tmp_path / f"ufm-{kind}"
    names, _ = make_processed(root, kind, n_rows)
    records, rejected = run_adapter(f"ufm-{kind}", root, extra={"total": "500", "frame": "source"})
    assert rejected == []
    # UFM's pair selection: every stride-th row; rows alternate direction in blocks of two.
    assert [r.meta["pair_index"] for r in records] == list(range(0, n_rows, stride))
    assert sum(len(r.matches.pixels0) for r in records) == 500
    W, H = SIZES[kind]
    K = K_of(W, H)
    _, Hab = plane_homography(K, K, Z0[kind])
    x0, x1, y0, y1 = OCCLUDER1
    for rec in records:
        forward = rec.meta["pair_index"] % 4 < 2
        assert (rec.meta["image0"], rec.meta["image1"]) == (names if forward else names[::-1])
        p0 = np.array(rec.matches.pixels0)
        p1 = np.array(rec.matches.pixels1)
        np.testing.assert_allclose(p1, apply_h(Hab if forward else np.linalg.inv(Hab), p0), atol=1e-6)
        assert len(p0) == rec.meta["share"] and len(np.unique(p0, axis=0)) == len(p0)
        assert np.all((p1 >= 0) & (p1 < [W, H]))
        # Pixel centres only; no pixel without depth in view a; nothing hidden by view b's occluder.
        assert np.all(p0 % 1 == 0.5)
        if forward:
            r, c = INVALID0
            assert not np.any((p0[:, 1] > r.start) & (p0[:, 1] < r.stop) & (p0[:, 0] > c.start) & (p0[:, 0] < c.stop))
            inside = (p1[:, 0] > x0 + 1) & (p1[:, 0] < x1 - 1) & (p1[:, 1] > y0 + 1) & (p1[:, 1] < y1 - 1)
            assert not inside.any()
        # UFM's mask, closed form: target inside view b, view a's depth valid at both ends, view b's
        # occluder excluded at either end. UFM's bilinear range check (zero padding) also drops
        # targets within half a pixel of the border and next to invalid or occluded depth: at most
        # the border band plus the two rectangles' rings.
        gj, gi = np.mgrid[0:H, 0:W]
        grid = np.c_[gi.ravel() + 0.5, gj.ravel() + 0.5]
        q = apply_h(Hab if forward else np.linalg.inv(Hab), grid)
        a_end, b_end = (grid, q) if forward else (q, grid)
        r, c = INVALID0
        ok = np.all((q >= 0) & (q < [W, H]), axis=1)
        ok &= ~((a_end[:, 0] >= c.start) & (a_end[:, 0] < c.stop) & (a_end[:, 1] >= r.start) & (a_end[:, 1] < r.stop))
        ok &= ~((b_end[:, 0] >= x0) & (b_end[:, 0] < x1) & (b_end[:, 1] >= y0) & (b_end[:, 1] < y1))
        band = ok & ((q[:, 0] < 0.5) | (q[:, 0] > W - 0.5) | (q[:, 1] < 0.5) | (q[:, 1] > H - 0.5))
        rings = 2 * (c.stop - c.start + r.stop - r.start + 2) + 2 * (x1 - x0 + y1 - y0 + 2)
        assert ok.sum() - band.sum() - rings <= rec.meta["covisible_pixels"] <= ok.sum()
        assert rec.covisibility == rec.meta["covisible_pixels"] / (W * H)
        assert rec.views[0].K.cx == pytest.approx(K[0, 2] + 0.5)  # centre-origin file -> corner origin
        assert rec.views[0].image.startswith(f"{kind}_processed/")  # the released image itself
        assert rec.metric_scale == (kind == "eth3d")
        assert rec.meta["ufm_frame_scale"] == pytest.approx(max(560 / W, 420 / H))
    assert_round_trip(records, tmp_path)


@pytest.mark.parametrize("kind", ["eth3d", "dtu"])
def test_processed_pairs_in_ufms_560x420_frame(tmp_path, kind):
    root = tmp_path / f"ufm-{kind}"
    names, image_dir = make_processed(root, kind, 6 if kind == "eth3d" else 100)
    records, rejected = run_adapter(f"ufm-{kind}", root, extra={"total": "400"})
    assert rejected == [] and len(records) == 2
    W, H = SIZES[kind]
    K = ufm_K(K_of(W, H), W, H)  # ETH3D (3:2): scaled 10.5x to 630x420, 35 px cropped each side
    _, Hab = plane_homography(K, K, Z0[kind])
    for rec in records:
        forward = rec.meta["pair_index"] % 4 < 2
        assert rec.views[0].K.to_list() == pytest.approx([K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5, 560, 420])
        p0, p1 = np.array(rec.matches.pixels0), np.array(rec.matches.pixels1)
        assert np.all(p0 % 1 == 0.5) and np.all((p1 >= 0) & (p1 < [560, 420]))
        # UFM computes this frame's flow from the nearest-resampled depth: on the tilted plane a
        # source pixel spans ~0.03 % of depth, i.e. ~0.02 px of the ~70 px parallax.
        np.testing.assert_allclose(p1, apply_h(Hab if forward else np.linalg.inv(Hab), p0), atol=0.05)
        assert rec.meta["frame"] == "ufm" and rec.meta["ufm_frame_scale"] == 1.0
        # The written view is UFM's: decoded with OpenCV, bicubic-enlarged (Lanczos if shrunk), cropped.
        name = rec.meta["image0"]
        src = cv2.cvtColor(cv2.imread(str(next(image_dir.glob(f"{name}.*")))), cv2.COLOR_BGR2RGB)
        s = max(560 / W, 420 / H) + 1e-8
        big = Image.fromarray(src).resize((int(W * s), int(H * s)), resample=Image.Resampling.BICUBIC)
        left = round((big.size[0] - 560) / 2)
        expected = np.asarray(big.crop((left, 0, left + 560, 420)))
        assert np.array_equal(np.asarray(Image.open(root / rec.views[0].image)), expected)
    assert_round_trip(records, tmp_path)


def test_processed_pairs_are_seeded(tmp_path):
    root = tmp_path / "ufm-eth3d"
    make_processed(root, "eth3d", 6)
    a, _ = run_adapter("ufm-eth3d", root, extra={"total": "40"})
    b, _ = run_adapter("ufm-eth3d", root, extra={"total": "40"})
    c, _ = run_adapter("ufm-eth3d", root, seed=1, extra={"total": "40"})
    assert [r.matches for r in a] == [r.matches for r in b]
    assert [r.matches for r in a] != [r.matches for r in c]


# --- TA-WB: labels against the stored flow ---------------------------------------------------------


def test_tawb_matches_follow_the_stored_flow_in_the_release_frame(tmp_path):
    root = tmp_path / "ufm-tartanair"
    make_tawb(root, n_pairs=3)
    records, rejected = run_adapter("ufm-tartanair", root, extra={"first": "4", "total": "300", "frame": "source"})
    # Pair 3 is in no index map: UFM would fail on it, here it is a rejection.
    assert [(r.reason, r.detail) for r in rejected] == [("missing_file", "pair 3 is in no index map")]
    assert [r.meta["pair_index"] for r in records] == [0, 1, 2]
    assert sum(len(r.matches.pixels0) for r in records) == sum(sample_shares(4, 300, 0, "ufm-tartanair")[:3])
    with h5py.File(root / "TA-WB" / "data" / "part_000.h5", "r") as f:
        flows, fov, non_occ, img0 = f["flow_fwd"][:], f["fov_mask_fwd"][:], f["non_occluded_fwd"][:], f["img0"][:]
    W, H = 64, 48
    for rec in records:
        row = rec.meta["pair_index"] % 2
        p0, p1 = np.array(rec.matches.pixels0), np.array(rec.matches.pixels1)
        i, j = (p0 - 0.5).astype(int).T
        np.testing.assert_array_equal(p0 - 0.5, np.c_[i, j])
        assert fov[row, j, i].all() and non_occ[row, j, i].all()
        np.testing.assert_allclose(p1, p0 + flows[row][:, j, i].T.astype(np.float64), atol=1e-9)
        assert rec.meta["intrinsics_estimated"] is True and rec.views[0].K.fx == pytest.approx(math.hypot(W, H))
        # The mask is the release's, less the targets off view 1 in corner origin.
        jj, ii = np.mgrid[0:H, 0:W]
        tx, ty = ii + 0.5 + flows[row, 0], jj + 0.5 + flows[row, 1]
        on = (tx >= 0) & (tx < W) & (ty >= 0) & (ty < H)
        assert rec.covisibility == pytest.approx((fov[row] & non_occ[row] & on).mean())
        # The images were extracted from the h5 rows, losslessly.
        assert np.array_equal(np.asarray(Image.open(root / rec.views[0].image)), img0[row])
    assert_round_trip(records, tmp_path)


def test_tawb_in_ufms_560x420_frame(tmp_path):
    """Stored 64x40 (8:5): UFM scales by max(420 / 40, 560 / 64) = 10.5 to 672x420 and crops 56 px a side."""
    root = tmp_path / "ufm-tartanair"
    make_tawb(root, n_pairs=2, size=(64, 40), affine=False)  # constant flow per pair: resampling-proof
    records, rejected = run_adapter("ufm-tartanair", root, extra={"first": "2", "total": "200"})
    assert rejected == [] and len(records) == 2
    with h5py.File(root / "TA-WB" / "data" / "part_000.h5", "r") as f:
        flows = f["flow_fwd"][:]
    for rec in records:
        row = rec.meta["pair_index"] % 2
        p0, p1 = np.array(rec.matches.pixels0), np.array(rec.matches.pixels1)
        np.testing.assert_allclose(p1 - p0, np.broadcast_to(flows[row][:, 0, 0] * [672 / 64, 420 / 40], p0.shape), atol=1e-5)
        assert np.all((p1 >= 0) & (p1 < [560, 420]))
        assert rec.views[0].K.width == 560 and rec.views[0].K.height == 420
        # Back in stored pixels, no sample comes from the occluded block (1 px margin for resampling).
        src = (p0 + [56, 0]) / 10.5
        r, c = OCC_BLOCK
        assert not np.any((src[:, 0] > c.start + 1) & (src[:, 0] < c.stop - 1) & (src[:, 1] > r.start + 1) & (src[:, 1] < r.stop - 1))
        assert rec.meta["frame"] == "ufm" and rec.meta["ufm_frame_scale"] == 1.0
        assert Image.open(root / rec.views[1].image).size == (560, 420)
    assert_round_trip(records, tmp_path)


# --- wrong roots -----------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["ufm-eth3d", "ufm-dtu", "ufm-tartanair"])
def test_wrong_root_is_a_layout_error(tmp_path, adapter):
    (tmp_path / "something").mkdir()
    with pytest.raises(LayoutError, match="expected:") as e:
        get_adapter(adapter)(tmp_path, None).units()
    assert get_adapter(adapter).layout in str(e.value)


def test_pair_list_without_scenes_is_a_layout_error(tmp_path):
    make_processed(tmp_path, "eth3d", 3)
    shutil.rmtree(tmp_path / "eth3d_processed")
    with pytest.raises(LayoutError, match="eth3d_processed"):
        get_adapter("ufm-eth3d")(tmp_path, None).units()


# --- the benches, answered with the ground truth ---------------------------------------------------


def shipped_bench(tmp_path, name: str, options: dict) -> object:
    """The shipped bench config with only the sample counts made fixture-sized."""
    from vlm3.eval.bench import load_bench

    raw = yaml.safe_load((bench_dir() / f"{name}.yaml").read_text())
    assert raw["data"]["prepare"]["root"] == f"${{VLM3_DATA}}/{name}"
    assert raw["questions"] == TOTAL_SAMPLES and raw["data"]["prepare"]["options"]["total"] == TOTAL_SAMPLES
    assert raw["settings"] == {"focal": 1000, "n_coords": 2000} and raw["data"]["prepare"]["options"]["frame"] == "ufm"
    raw["data"]["prepare"]["options"].update(options)
    path = tmp_path / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return load_bench(path)


@pytest.mark.parametrize("name", ["ufm-eth3d", "ufm-dtu", "ufm-tartanair"])
def test_bench_scores_perfectly_with_the_ground_truth(tmp_path, monkeypatch, name):
    from vlm3.eval.run import PREDICTIONS, run_eval
    from vlm3.models.truth import GroundTruthBackend

    monkeypatch.setenv("VLM3_DATA", str(tmp_path))
    if name == "ufm-tartanair":
        make_tawb(tmp_path / name, n_pairs=3)
        bench = shipped_bench(tmp_path, name, {"first": 3, "total": 120})
    else:
        kind = name.split("-")[1]
        make_processed(tmp_path / name, kind, 6 if kind == "eth3d" else 100)
        bench = shipped_bench(tmp_path, name, {"total": 120})
    cache = tmp_path / "cache"
    result = run_eval(GroundTruthBackend(bench, cache), bench, tmp_path / "gt", cache_dir=cache, progress=False, plots=False)
    m = result.metrics["metrics"]
    n = bench.settings["n_coords"]
    lines = [json.loads(x) for x in (tmp_path / "gt" / PREDICTIONS).read_text().splitlines()]
    assert result.n_queries == len(lines) == 120
    # An answer is an integer text coordinate in [0, n): off by at most half a step per axis. One step
    # is the text frame's extent in original pixels over n (size2 / scale2: the unified image
    # of view 2 in original pixels), so the bound is half the step's diagonal.
    worst = 0.0
    for line in lines:
        wn, hn = (s / k for s, k in zip(line["size2"], line["scale2"]))
        bound = 0.5 * math.hypot(wn / n, hn / n) * (1 + 1e-9)
        err = math.hypot(*(np.asarray(line["pred"]) - np.asarray(line["gt"])))
        assert err <= bound, (line, bound)
        worst = max(worst, bound)
    assert m["epe"] <= worst
    assert m["pck1"] == m["pck3"] == m["pck5"] == 1.0
