"""The ``wai`` adapter on tiny scenes written as MapAnything's WAI tools write them.

scene_meta.json follows ``data_processing/README.md`` and the converters (frames with
``transform_matrix`` = cam2world OpenCV, ``fl_x/fl_y/cx/cy/w/h`` with centre-origin cx/cy,
``frame_modalities``); depth maps are single-channel HALF float EXR with ZIP compression (what
``store_data(path, depth, "depth")`` writes through ``cv2.imwrite``), and the covisibility matrix
is ``np.save``d float32 named ``pairwise_covisibility--NxN.npy`` as ``_store_mmap`` does. Depth
is rendered analytically from a plane, and every label is checked against values computed
from the raw matrices, not through the adapter's code.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from vlm3.data.adapters import AdapterOptions, LayoutError, Rejection, get_adapter
from vlm3.data.adapters.kit import read_exr
from vlm3.data.records import Record, check_pixels_inside

W, H = 64, 48
FX, FY, CX_CORNER, CY_CORNER = 50.0, 52.0, 31.0, 25.0  # corner-origin truth; the files store cx - 0.5
PLANE_Z = 5.0  # world plane z = 5, cameras look along +z


def c2w(x: float, yaw_deg: float = 0.0) -> np.ndarray:
    a = np.deg2rad(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    T[:3, 3] = [x, 0.1 * x, 0.0]
    return T


def write_exr_half_zip(path: Path, depth: np.ndarray) -> None:
    """Single-channel ``Y`` HALF scanline EXR, ZIP compression (16 lines per chunk), written per
    the OpenEXR file layout (checked against the OpenEXR library when this test was written)."""
    a = np.asarray(depth, dtype="<f2")
    h, w = a.shape

    def attr(name: str, kind: str, value: bytes) -> bytes:
        return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value

    chlist = b"Y\0" + struct.pack("<i", 1) + b"\0\0\0\0" + struct.pack("<ii", 1, 1) + b"\0"
    box = struct.pack("<iiii", 0, 0, w - 1, h - 1)
    header = b"\x76\x2f\x31\x01" + struct.pack("<i", 2)
    header += attr("channels", "chlist", chlist) + attr("compression", "compression", b"\x03")
    header += attr("dataWindow", "box2i", box) + attr("displayWindow", "box2i", box)
    header += attr("lineOrder", "lineOrder", b"\0") + attr("pixelAspectRatio", "float", struct.pack("<f", 1.0))
    header += attr("screenWindowCenter", "v2f", struct.pack("<ff", 0, 0)) + attr("screenWindowWidth", "float", struct.pack("<f", 1.0))
    header += b"\0"
    chunks = []
    for y in range(0, h, 16):
        raw = np.frombuffer(a[y : y + 16].tobytes(), dtype=np.uint8)
        t = np.concatenate([raw[0::2], raw[1::2]]).astype(np.int64)  # OpenEXR's interleave
        d = t.copy()
        d[1:] = (t[1:] - t[:-1] + 128) & 0xFF  # and delta predictor
        body = zlib.compress(d.astype(np.uint8).tobytes())
        body = body if len(body) < raw.size else raw.tobytes()
        chunks.append(struct.pack("<ii", y, len(body)) + body)
    pos = len(header) + 8 * len(chunks)
    offsets = b""
    for c in chunks:
        offsets += struct.pack("<Q", pos)
        pos += len(c)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + offsets + b"".join(chunks))


# 6x8 HALF/ZIP EXR written by the OpenEXR 3.5.3 library: Y = 1 + 0.25 * (8 * row + col).
LIBRARY_EXR = (
    "di8xAQIAAABjaGFubmVscwBjaGxpc3QAEwAAAFkAAQAAAAAAAAABAAAAAQAAAABjb21wcmVzc2lvbgBjb21wcmVzc2lvbgABAAAAA2RhdGFXaW5kb3cA"
    "Ym94MmkAEAAAAAAAAAAAAAAABwAAAAUAAABkaXNwbGF5V2luZG93AGJveDJpABAAAAAAAAAAAAAAAAcAAAAFAAAAbGluZU9yZGVyAGxpbmVPcmRlcgAB"
    "AAAAAHBpeGVsQXNwZWN0UmF0aW8AZmxvYXQABAAAAAAAgD9zY3JlZW5XaW5kb3dDZW50ZXIAdjJmAAgAAAAAAAAAAAAAAHNjcmVlbldpbmRvd1dpZHRo"
    "AGZsb2F0AAQAAAAAAIA/dHlwZQBzdHJpbmcADQAAAHNjYW5saW5laW1hZ2UAOgEAAAAAAAAAAAAAHwAAAHheY2gAAgYoOIAGFmCCmEYgaIDBBgwMAsg0"
    "AD2xMcs="
)


def plane_depth(T_c2w: np.ndarray, w: int, h: int, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """z-depth of pixel centres (corner-origin intrinsics) on the plane z = PLANE_Z."""
    jj, ii = np.mgrid[0:h, 0:w]
    d = np.stack([(ii + 0.5 - cx) / fx, (jj + 0.5 - cy) / fy, np.ones_like(ii, dtype=float)], axis=-1)
    dz = d @ T_c2w[:3, :3].T
    return ((PLANE_Z - T_c2w[2, 3]) / dz[..., 2]).astype(np.float32)


def plane_reproject(uv: np.ndarray, c2w_a: np.ndarray, c2w_b: np.ndarray) -> np.ndarray:
    """Independent ground truth: pixel of view a -> plane point -> pixel of view b (corner origin)."""
    d = np.stack([(uv[:, 0] - CX_CORNER) / FX, (uv[:, 1] - CY_CORNER) / FY, np.ones(len(uv))], axis=1)
    dw = d @ c2w_a[:3, :3].T
    s = (PLANE_Z - c2w_a[2, 3]) / dw[:, 2]
    X = c2w_a[:3, 3] + dw * s[:, None]
    Xb = (X - c2w_b[:3, 3]) @ c2w_b[:3, :3]  # R^T (X - c): world -> camera b
    return np.stack([FX * Xb[:, 0] / Xb[:, 2] + CX_CORNER, FY * Xb[:, 1] / Xb[:, 2] + CY_CORNER], axis=1)


POSES = [c2w(0.0), c2w(0.3, 3.0), c2w(0.6, -2.0), c2w(0.9, 1.0)]


def write_scene(root: Path, name: str, *, scale_type: str = "metric", matrix: np.ndarray | None = None, depth_size=(W, H), shared=False) -> Path:
    scene = root / name
    (scene / "images").mkdir(parents=True)
    frames = []
    for k, T in enumerate(POSES):
        fname = f"{k:06d}"
        img = (np.random.default_rng(k).random((H, W, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(scene / "images" / f"{fname}.png"), img)
        dw, dh = depth_size
        depth = plane_depth(T, dw, dh, FX * dw / W, FY * dh / H, CX_CORNER * dw / W, CY_CORNER * dh / H)
        depth[0, :3] = 0.0  # invalid pixels as WAI writes them
        write_exr_half_zip(scene / "depth" / f"{fname}.exr", depth)
        frame = {
            "frame_name": fname,
            "file_path": f"images/{fname}.png",
            "image": f"images/{fname}.png",
            "depth": f"depth/{fname}.exr",
            "transform_matrix": T.tolist(),
        }
        if not shared:
            frame.update({"h": H, "w": W, "fl_x": FX, "fl_y": FY, "cx": CX_CORNER - 0.5, "cy": CY_CORNER - 0.5})
        frames.append(frame)
    meta = {
        "scene_name": name,
        "dataset_name": "toyset",
        "version": "0.1",
        "shared_intrinsics": shared,
        "camera_model": "PINHOLE",
        "camera_convention": "opencv",
        "scale_type": scale_type,
        "scene_modalities": {},
        "frames": frames,
        "frame_modalities": {"image": {"frame_key": "image", "format": "image"}, "depth": {"frame_key": "depth", "format": "depth"}},
    }
    if shared:
        meta.update({"h": H, "w": W, "fl_x": FX, "fl_y": FY, "cx": CX_CORNER - 0.5, "cy": CY_CORNER - 0.5})
    (scene / "scene_meta.json").write_text(json.dumps(meta, indent=2))
    if matrix is not None:
        out = scene / "covisibility" / "v0"
        out.mkdir(parents=True)
        m = np.asarray(matrix, dtype=np.float32)
        with open(out / f"pairwise_covisibility--{m.shape[0]}x{m.shape[1]}.npy", "wb") as f:
            np.save(f, m)
    return scene


def convert(root: Path, **extra) -> tuple[list[Record], list[Rejection]]:
    opts = AdapterOptions(points=50, pairs_per_scene=20, extra={k: str(v) for k, v in extra.items()})
    out = list(get_adapter("wai")(root, opts).convert_all())
    return [r for r in out if isinstance(r, Record)], [r for r in out if isinstance(r, Rejection)]


def check_pair(rec: Record) -> None:
    a, b = int(rec.meta["frame0"]), int(rec.meta["frame1"])
    # intrinsics: centre-origin cx/cy from the file + 0.5
    for v in rec.views:
        assert v.intrinsics == pytest.approx([FX, FY, CX_CORNER, CY_CORNER, W, H])
    # pose: transform_matrix is cam2world, so T_cam2_from_cam1 = inv(c2w_b) @ c2w_a
    T_rec = np.asarray(rec.views[1].T_cam_from_world) @ np.linalg.inv(np.asarray(rec.views[0].T_cam_from_world))
    np.testing.assert_allclose(T_rec, np.linalg.inv(POSES[b]) @ POSES[a], atol=1e-9)
    assert rec.views[0].image == f"{rec.meta['scene']}/images/{a:06d}.png"
    assert rec.matches is not None and len(rec.matches.pixels0) > 10
    p0, p1 = np.asarray(rec.matches.pixels0), np.asarray(rec.matches.pixels1)
    np.testing.assert_allclose(p1, plane_reproject(p0, POSES[a], POSES[b]), atol=0.05)
    assert not check_pixels_inside(rec)


def test_exr_reader_reads_library_file(tmp_path):
    path = tmp_path / "ref.exr"
    path.write_bytes(base64.b64decode(LIBRARY_EXR))
    np.testing.assert_array_equal(read_exr(path), 1 + 0.25 * np.arange(48, dtype=np.float32).reshape(6, 8))
    d = np.random.default_rng(0).uniform(0.5, 60, (37, 29)).astype(np.float32)
    write_exr_half_zip(tmp_path / "d.exr", d)
    np.testing.assert_array_equal(read_exr(tmp_path / "d.exr"), d.astype(np.float16).astype(np.float32))


def test_matrix_pairs_labels_and_filter(tmp_path):
    # frames order = matrix order; (0,1) and (1,2) qualify, (0,2) overlaps geometrically but the
    # matrix says 0.1, (2,3) is asymmetric: (0.5 + 0.05) / 2 = 0.275 > 0.25, (0,3)/(1,3) below.
    C = np.array(
        [
            [1.0, 0.9, 0.1, 0.2],
            [0.8, 1.0, 0.6, 0.1],
            [0.1, 0.4, 1.0, 0.5],
            [0.2, 0.1, 0.05, 1.0],
        ]
    )
    write_scene(tmp_path, "s_metric", matrix=C)
    recs, rej = convert(tmp_path)
    assert not rej
    pairs = {tuple(sorted((int(r.meta["frame0"]), int(r.meta["frame1"])))): r for r in recs}
    expected = {}
    for i in range(4):
        for j in range(i + 1, 4):
            m = (C[i, j] + C[j, i]) / 2
            s = min(m / C[i, i], m / C[j, j])
            if s > 0.25:
                expected[(i, j)] = s
    assert set(pairs) == set(expected) == {(0, 1), (1, 2), (2, 3)}
    for key, rec in pairs.items():
        assert rec.meta["covisibility_wai"] == pytest.approx(expected[key], rel=1e-6)
        assert rec.meta["covisibility_source"] == "wai:v0" and rec.meta["source_dataset"] == "toyset"
        assert rec.metric_scale is True and rec.dataset == "wai" and rec.depth is None
        check_pair(rec)


def test_depth_covisibility_without_matrix_and_scale(tmp_path):
    write_scene(tmp_path, "s_colmap", scale_type="colmap", shared=True, depth_size=(W // 2, H // 2))
    recs, rej = convert(tmp_path, min_gap=1)
    assert not rej and recs
    for rec in recs:
        assert rec.metric_scale is False  # scale_type colmap
        assert rec.meta["covisibility_source"] == "depth"
        assert rec.meta["covisibility_min"] > 0.25
        check_pair(rec)  # depth at half resolution: matches still land on the plane
    recs2, _ = convert(tmp_path, metric_scale="true", covisibility="depth", pair_records="false", depth_records="true")
    assert recs2 and all(r.metric_scale and r.depth is not None for r in recs2)
    r = recs2[0]
    px = np.asarray(r.depth.pixels)
    k = int(r.meta["frame"])
    truth = plane_depth(POSES[k], W, H, FX, FY, CX_CORNER, CY_CORNER)  # metres, at record pixels
    want = np.array([truth[int(y), int(x)] for x, y in px])
    # depth pixels come from the half-size grid: compare with the plane at the exact pixel
    d = np.stack([(px[:, 0] - CX_CORNER) / FX, (px[:, 1] - CY_CORNER) / FY, np.ones(len(px))], axis=1) @ POSES[k][:3, :3].T
    exact = (PLANE_Z - POSES[k][2, 3]) / d[:, 2]
    np.testing.assert_allclose(r.depth.depth, exact, rtol=2e-3)
    assert np.abs(np.asarray(r.depth.depth) - want).max() < 0.2


def test_held_out_scenes_and_layout(tmp_path):
    for name in ("a", "b", "c"):
        write_scene(tmp_path, name)
    Adapter = get_adapter("wai")
    assert Adapter(tmp_path).units() == ["a", "b", "c"]
    (tmp_path / "heldout.txt").write_text("# held-out\nb\nzz_not_here\n")
    opts = AdapterOptions(extra={"exclude_scenes": "@heldout.txt"})
    assert Adapter(tmp_path, opts).units() == ["a", "c"]
    np.save(tmp_path / "toy_scene_list_val.npy", np.array(["c", "a"]))
    opts = AdapterOptions(extra={"scenes": "@toy_scene_list_val.npy", "exclude_scenes": "a"})
    assert Adapter(tmp_path, opts).units() == ["c"]
    with pytest.raises(LayoutError):
        Adapter(tmp_path, AdapterOptions(extra={"scenes": "a,nope"})).units()
    empty = tmp_path / "empty"
    (empty / "scene0" / "images").mkdir(parents=True)
    with pytest.raises(LayoutError, match="scene_meta.json"):
        Adapter(empty).units()


def test_rejections(tmp_path):
    scene = write_scene(tmp_path, "s", matrix=np.ones((3, 3)))  # wrong size -> falls back to depth
    meta = json.loads((scene / "scene_meta.json").read_text())
    meta["frames"][1]["transform_matrix"][0][0] = 3.0  # not rigid
    meta["frames"][2]["w"] = 65  # disagrees with the image
    (scene / "scene_meta.json").write_text(json.dumps(meta))
    recs, rej = convert(tmp_path)
    reasons = sorted(r.reason for r in rej)
    assert reasons == ["bad_pose", "size_mismatch", "size_mismatch"]
    assert all(r.meta["covisibility_source"] == "depth" for r in recs)
    for r in recs:
        assert {r.meta["frame0"], r.meta["frame1"]} <= {"000000", "000003"}
    _, rej2 = convert(tmp_path, covisibility="matrix")
    assert any(r.reason == "size_mismatch" for r in rej2)


def test_nested_depth_modality_pixel_origin_and_camera_checks(tmp_path):
    scene = write_scene(tmp_path, "dl3dv_like", matrix=np.full((4, 4), 0.9))
    meta = json.loads((scene / "scene_meta.json").read_text())
    (scene / "mvsanywhere").mkdir()
    for fr in meta["frames"]:  # DL3DV's WAI release: depth only as pred_depth/mvsanywhere
        new = f"mvsanywhere/{fr['frame_name']}.exr"
        (scene / fr.pop("depth")).rename(scene / new)
        fr["mvsanywhere_depth"] = new
    meta["frame_modalities"] = {
        "image": {"frame_key": "image", "format": "image"},
        "pred_depth": {"mvsanywhere": {"frame_key": "mvsanywhere_depth", "format": "depth"}},
    }
    (scene / "scene_meta.json").write_text(json.dumps(meta))
    recs, rej = convert(tmp_path, depth_modality="pred_depth/mvsanywhere")
    assert not rej and len(recs) == 6
    for rec in recs:
        check_pair(rec)
    _, rej = convert(tmp_path)  # the default modality "depth" is absent: every frame says so
    assert [r.reason for r in rej] == ["missing_file"] * 4 + ["missing_file"]
    recs, _ = convert(tmp_path, depth_modality="pred_depth/mvsanywhere", pixel_origin="corner")
    assert recs[0].views[0].intrinsics[2:4] == pytest.approx([CX_CORNER - 0.5, CY_CORNER - 0.5])

    meta["frames"][0]["camera_model"] = "OPENCV_FISHEYE"
    meta["frames"][1]["k1"] = 0.1
    (scene / "scene_meta.json").write_text(json.dumps(meta))
    _, rej = convert(tmp_path, depth_modality="pred_depth/mvsanywhere")
    assert sorted(r.reason for r in rej) == ["bad_calibration", "bad_calibration"]
    meta["camera_convention"] = "opengl"
    (scene / "scene_meta.json").write_text(json.dumps(meta))
    recs, rej = convert(tmp_path, depth_modality="pred_depth/mvsanywhere")
    assert not recs and [r.reason for r in rej] == ["bad_pose"]
