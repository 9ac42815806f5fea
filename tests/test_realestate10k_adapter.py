"""The ``realestate10k`` adapter on clips written in the release's layout.

Camera files: ``RealEstate10K/<split>/<clip>.txt``, a URL line, then per frame
``timestamp fx fy cx cy 0 0`` + a row-major 3x4 world-to-camera matrix, intrinsics normalised
by the image size. Frames as the RealEstate10K_Downloader writes them:
``dataset/<split>/<clip>/<timestamp>.png``. Labels are checked against the raw numbers.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vlm3.data.adapters import AdapterOptions, LayoutError, Rejection, get_adapter
from vlm3.data.records import Record
from vlm3.tasks.pose import pose_messages

NORM = (0.9, 1.6, 0.5, 0.48)  # fx/W, fy/H, cx/W, cy/H


def clip_lines(n: int, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """(timestamp us, 3x4 world-to-camera) along a smooth trajectory."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        R = Rotation.from_euler("yxz", [2.0 * k, 0.5 * k, 0.1 * k], degrees=True).as_matrix()
        c = np.array([0.05 * k, 0.01 * k, 0.02 * k]) + rng.normal(0, 1e-4, 3)
        w2c = np.concatenate([R, (-R @ c)[:, None]], axis=1)
        out.append((1_000_000 + 33_367 * k, w2c))
    return out


def write_clip(root: Path, split: str, clip: str, n: int, size=(32, 18), suffix=".png", skip=()) -> list[tuple[int, np.ndarray]]:
    lines = clip_lines(n, seed=len(clip))
    cams = root / "RealEstate10K" / split
    cams.mkdir(parents=True, exist_ok=True)
    text = ["https://www.youtube.com/watch?v=abcdefghijk"]
    for ts, w2c in lines:
        text.append(" ".join([str(ts), *(f"{v:.9f}" for v in NORM), "0", "0", *(f"{v:.12f}" for v in w2c.ravel())]))
    (cams / f"{clip}.txt").write_text("\n".join(text) + "\n")
    frames = root / "dataset" / split / clip
    frames.mkdir(parents=True, exist_ok=True)
    for k, (ts, _) in enumerate(lines):
        if k not in skip:
            cv2.imwrite(str(frames / f"{ts}{suffix}"), np.full((size[1], size[0], 3), k % 255, np.uint8))
    return lines


def convert(root: Path, split: str = "train", pairs: int = 10, **extra) -> tuple[list[Record], list[Rejection]]:
    opts = AdapterOptions(pairs_per_scene=pairs, split=split, extra={k: str(v) for k, v in extra.items()})
    out = list(get_adapter("realestate10k")(root, opts).convert_all())
    return [r for r in out if isinstance(r, Record)], [r for r in out if isinstance(r, Rejection)]


def test_pairs_labels(tmp_path):
    lines = write_clip(tmp_path, "train", "00a1b2c3d4e5f6a7", 60, size=(32, 18))
    by_ts = {str(ts): w2c for ts, w2c in lines}
    recs, rej = convert(tmp_path)
    assert not rej and len(recs) == 10
    for rec in recs:
        a, b = rec.meta["frame0"], rec.meta["frame1"]
        ia = [str(t) for t, _ in lines].index(a)
        ib = [str(t) for t, _ in lines].index(b)
        assert 45 <= abs(ia - ib) <= 192 and rec.meta["gap"] == abs(ia - ib)  # default gap bounds
        assert rec.metric_scale is False and rec.matches is None and rec.depth is None and rec.covisibility is None
        assert rec.views[0].image == f"dataset/train/00a1b2c3d4e5f6a7/{a}.png"
        # intrinsics: normalised * image size, corner origin (no half-pixel shift)
        assert rec.views[0].intrinsics == pytest.approx([0.9 * 32, 1.6 * 18, 0.5 * 32, 0.48 * 18, 32, 18])
        # pose: the file's 3x4 is world-to-camera, so T_cam2_from_cam1 = [w2c_b] @ inv([w2c_a])
        Ta, Tb = np.eye(4), np.eye(4)
        Ta[:3], Tb[:3] = by_ts[a], by_ts[b]
        T_rec = np.asarray(rec.views[1].T_cam_from_world) @ np.linalg.inv(np.asarray(rec.views[0].T_cam_from_world))
        np.testing.assert_allclose(T_rec, Tb @ np.linalg.inv(Ta), atol=1e-8)
        pose_messages(T_rec, rec.metric_scale)  # the pose task can phrase it (no metric distance)
    # both view orders occur (seeded swap), and the draw is deterministic
    assert any(int(r.meta["frame0"]) > int(r.meta["frame1"]) for r in recs)
    assert [r.id for r in recs] == [r.id for r in convert(tmp_path)[0]]


def test_gap_options_sizes_and_rejections(tmp_path):
    lines = write_clip(tmp_path, "test", "clipB", 8, size=(40, 20), suffix=".jpg", skip=(3,))
    write_clip(tmp_path, "test", "clipNoFrames", 8)
    import shutil

    shutil.rmtree(tmp_path / "dataset" / "test" / "clipNoFrames")
    assert get_adapter("realestate10k")(tmp_path, AdapterOptions(split="test")).units() == ["clipB"]
    recs, rej = convert(tmp_path, split="test", pairs=100, min_gap=2, max_gap=3)
    assert [r.reason for r in rej] == ["missing_file"]  # frame 3 was not extracted
    got = {tuple(sorted((r.meta["frame0"], r.meta["frame1"]))) for r in recs}
    ts = [str(t) for t, _ in lines]
    want = {tuple(sorted((ts[i], ts[j]))) for i in range(8) for j in range(i + 2, min(8, i + 4)) if 3 not in (i, j)}
    assert got == want
    assert all(r.views[0].intrinsics[4:] == [40, 20] and r.views[0].image.endswith(".jpg") for r in recs)
    assert all(r.views[0].intrinsics[0] == pytest.approx(0.9 * 40) for r in recs)


def test_zero_baseline_and_short_clip(tmp_path):
    cams = tmp_path / "RealEstate10K" / "train"
    cams.mkdir(parents=True)
    w2c = " ".join(f"{v}" for v in np.eye(4)[:3].ravel())
    rows = ["url"] + [f"{1000 * k} 0.9 1.6 0.5 0.5 0 0 {w2c}" for k in range(50)]  # a camera that never moves
    (cams / "still.txt").write_text("\n".join(rows))
    (tmp_path / "dataset" / "train" / "still").mkdir(parents=True)
    for k in range(50):
        cv2.imwrite(str(tmp_path / "dataset" / "train" / "still" / f"{1000 * k}.png"), np.zeros((8, 8, 3), np.uint8))
    recs, rej = convert(tmp_path)
    assert recs == [] and [r.reason for r in rej] == ["no_labels"]  # no pair has a defined translation direction
    assert "min_baseline" in rej[0].detail
    recs, rej = convert(tmp_path, min_gap=60, max_gap=100)
    assert recs == [] and [r.reason for r in rej] == ["no_labels"] and "50 frames" in rej[0].detail


def test_wrong_root(tmp_path):
    with pytest.raises(LayoutError, match="RealEstate10K"):
        get_adapter("realestate10k")(tmp_path).units()
    write_clip(tmp_path, "train", "c1", 3)
    import shutil

    shutil.rmtree(tmp_path / "dataset")
    with pytest.raises(LayoutError, match="frame folder"):
        get_adapter("realestate10k")(tmp_path).units()
