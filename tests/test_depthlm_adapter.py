"""The DepthLM-JSONL adapter: pixel and principal-point conventions, depth type, units, per-line rejections."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm3.data.adapters import AdapterOptions, Rejection, get_adapter
from vlm3.data.records import Record
from vlm3.geometry.camera import backproject, convert_depth
from conftest import IBIMS

W, H = 40, 30
# fx, fy, cx, cy as an OpenCV-style calibration (centre of the top-left pixel at (0, 0)).
CALIB = (50.0, 52.0, 19.25, 14.75)


def curated_line(image: str, rng: np.random.Generator, n: int = 12, z_of=lambda x, y: 2.0 + 0.05 * x) -> dict:
    """A line made the way DepthLM's curation scripts do it: integer indices, range via (x - cx) / fx."""
    fx, fy, cx, cy = CALIB
    xs, ys = rng.integers(0, W, n), rng.integers(0, H, n)
    z = np.array([z_of(x, y) for x, y in zip(xs, ys)])
    rng_m = z * np.sqrt(((xs - cx) / fx) ** 2 + ((ys - cy) / fy) ** 2 + 1)
    return {
        "image": image,
        "intrinsics": [fx, fy, cx, cy, W, H],
        "pixel_coords": [[int(x), int(y)] for x, y in zip(xs, ys)],
        "depth": rng_m.tolist(),
        "z": z.tolist(),  # extra key: ignored by the adapter, kept here for checking
    }


def make_dataset(root: Path, n_images: int = 7, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "rgb" / f"im{i}.png")
        lines.append(curated_line(f"rgb/im{i}.png", rng))
    (root / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def convert_all(root: Path, **opts) -> list[Record | Rejection]:
    extra = {k: str(v) for k, v in opts.pop("extra", {}).items()}
    ad = get_adapter("depthlm-jsonl")(root, AdapterOptions(extra=extra, **opts))
    return list(ad.convert_all())


def test_pixels_become_centres_and_principal_point_is_shifted(tmp_path):
    lines = make_dataset(tmp_path)
    items = convert_all(tmp_path)
    assert len(items) == 7 and all(isinstance(r, Record) for r in items)
    rec, line = items[0], lines[0]
    assert rec.views[0].image == "rgb/im0.png"
    assert rec.depth.depth_type == "z"  # the default (see test_ibims1_labels_are_z_depth)
    assert rec.depth.pixels == [(x + 0.5, y + 0.5) for x, y in line["pixel_coords"]]
    assert rec.depth.depth == pytest.approx(line["depth"])
    fx, fy, cx, cy = CALIB
    assert rec.views[0].intrinsics == [fx, fy, cx + 0.5, cy + 0.5, W, H]
    assert rec.meta["source"] == "data.jsonl:1"

    corner = convert_all(tmp_path, extra={"principal_point": "corner"})[0]
    assert corner.views[0].intrinsics[2:4] == [cx, cy]


def test_centre_origin_reproduces_the_curated_geometry(tmp_path):
    """Range labels computed DepthLM's way convert back to the true z exactly (default principal point)."""
    lines = make_dataset(tmp_path)
    for rec, line in zip(convert_all(tmp_path, extra={"depth_type": "range"}), lines):
        K, px = rec.views[0].K, np.asarray(rec.depth.pixels)
        z = convert_depth(K, px, np.asarray(rec.depth.depth), "range", "z")
        np.testing.assert_allclose(z, line["z"], rtol=1e-12)
        np.testing.assert_allclose(backproject(K, px, rec.depth.depth, "range")[:, 2], line["z"], rtol=1e-12)
    # Taking cx, cy as corner-origin instead puts every point half a pixel off: z no longer matches.
    rec = convert_all(tmp_path, extra={"principal_point": "corner", "depth_type": "range"})[0]
    z = convert_depth(rec.views[0].K, np.asarray(rec.depth.pixels), np.asarray(rec.depth.depth), "range", "z")
    assert not np.allclose(z, lines[0]["z"], rtol=1e-6)


def test_depth_type_option(tmp_path):
    make_dataset(tmp_path)
    assert {r.depth.depth_type for r in convert_all(tmp_path, extra={"depth_type": "range"})} == {"range"}
    with pytest.raises(ValueError, match="depth_type='metres'"):
        convert_all(tmp_path, extra={"depth_type": "metres"})
    with pytest.raises(ValueError, match="unknown option.*depthtype"):
        convert_all(tmp_path, extra={"depthtype": "z"})


def test_units_are_chunks_of_lines_and_cover_every_line_once(tmp_path):
    make_dataset(tmp_path, n_images=7)
    with open(tmp_path / "data.jsonl", "a") as f:
        f.write("\n")  # a trailing blank line is layout, not a rejection
    ad = get_adapter("depthlm-jsonl")(tmp_path, AdapterOptions(extra={"chunk_size": "3"}))
    units = ad.units()
    assert units == sorted(units) and len(units) == 3
    sources = [r.meta["source"] for u in units for r in ad.convert(u)]
    assert sources == [f"data.jsonl:{i}" for i in range(1, 8)]
    # A fresh adapter (as in a worker process) converts a unit alone to the same records.
    fresh = get_adapter("depthlm-jsonl")(tmp_path, AdapterOptions(extra={"chunk_size": "3"}))
    assert list(fresh.convert(units[2])) == list(ad.convert(units[2]))


def test_points_subsample_is_seeded(tmp_path):
    lines = make_dataset(tmp_path)
    a = convert_all(tmp_path, points=5, seed=1)
    b = convert_all(tmp_path, points=5, seed=1)
    c = convert_all(tmp_path, points=5, seed=2)
    assert [r.depth for r in a] == [r.depth for r in b]
    assert [r.depth.pixels for r in a] != [r.depth.pixels for r in c]
    for rec, line in zip(a, lines):
        assert len(rec.depth.pixels) == 5
        full = dict(zip(((x + 0.5, y + 0.5) for x, y in line["pixel_coords"]), line["depth"]))
        assert all(full[p] == pytest.approx(d) for p, d in zip(rec.depth.pixels, rec.depth.depth))


def test_bad_lines_become_named_rejections(tmp_path):
    rng = np.random.default_rng(3)
    good = curated_line("rgb/a.png", rng)
    bad = [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({k: v for k, v in good.items() if k != "depth"}),
        json.dumps({**good, "intrinsics": [50, 52, 19]}),
        json.dumps({**good, "intrinsics": [0, 52, 19, 14, W, H]}),
        json.dumps({**good, "pixel_coords": [[1.5, 2]] + good["pixel_coords"][1:]}),
        json.dumps({**good, "depth": good["depth"][:-1]}),
        json.dumps({**good, "depth": [math.nan] + good["depth"][1:]}),
        json.dumps({**good, "depth": [-1.0] + good["depth"][1:]}),
        json.dumps({**good, "depth": [None] + good["depth"][1:]}),
        json.dumps({**good, "pixel_coords": [], "depth": []}),
        json.dumps({**good, "image": 7}),
    ]
    (tmp_path / "d.jsonl").write_text(json.dumps(good) + "\n" + "\n".join(bad) + "\n")
    items = convert_all(tmp_path)
    assert isinstance(items[0], Record)
    rej = items[1:]
    assert all(isinstance(r, Rejection) for r in rej)
    assert [r.source for r in rej] == [f"d.jsonl:{i}" for i in range(2, 2 + len(bad))]
    assert [r.reason for r in rej] == [
        "invalid_record",
        "invalid_record",
        "invalid_record",
        "bad_calibration",
        "bad_calibration",
        "invalid_record",
        "invalid_record",
        "bad_depth",
        "bad_depth",
        "invalid_record",
        "no_labels",
        "invalid_record",
    ]
    assert "fx" in rej[4].detail and "[1.5, 2]" in rej[5].detail


def test_image_path_key_is_accepted(tmp_path):
    line = curated_line("rgb/a.png", np.random.default_rng(0))
    line["image_path"] = line.pop("image")  # as curate_matterport3d.py writes it
    (tmp_path / "m.jsonl").write_text(json.dumps(line) + "\n")
    (rec,) = convert_all(tmp_path)
    assert rec.views[0].image == "rgb/a.png"


def test_bad_roots_fail_clearly(tmp_path):
    from vlm3.data.adapters import LayoutError

    with pytest.raises(LayoutError, match="no files matching"):
        get_adapter("depthlm-jsonl")(tmp_path)
    (tmp_path / "x.jsonl").write_text("")
    with pytest.raises(NotADirectoryError, match="must be the folder"):
        get_adapter("depthlm-jsonl")(tmp_path / "x.jsonl")


@pytest.mark.realdata
@pytest.mark.skipif(not (IBIMS / "ibims1_val.jsonl").is_file(), reason="iBims-1 sample not available")
def test_ibims1_converts_completely():
    ad = get_adapter("depthlm-jsonl")(IBIMS)
    items = list(ad.convert_all())
    assert len(items) == 100 and all(isinstance(r, Record) for r in items)
    assert sum(len(r.depth.pixels) for r in items) == 10_000
    depth = np.concatenate([r.depth.depth for r in items])
    assert depth.min() == pytest.approx(0.63, abs=0.01) and depth.max() == pytest.approx(22.3, abs=0.1)
    assert len({r.id for r in items}) == 100
    assert ad.manifest_info()["dataset"] == "ibims1"


def _best_plane_inliers(points: np.ndarray, rng: np.random.Generator, trials: int = 1500, rel: float = 0.01) -> int:
    """Inliers of the best plane through 3 of the points (distance < rel x the point's distance)."""
    idx = np.array([rng.choice(len(points), 3, replace=False) for _ in range(trials)])
    a, b, c = points[idx[:, 0]], points[idx[:, 1]], points[idx[:, 2]]
    normal = np.cross(b - a, c - a)
    length = np.linalg.norm(normal, axis=1)
    ok = length > 1e-9
    normal, a = normal[ok] / length[ok, None], a[ok]
    dist = np.abs(np.einsum("tk,nk->tn", normal, points) - np.einsum("tk,tk->t", normal, a)[:, None])
    return int((dist < rel * np.linalg.norm(points, axis=1)).sum(axis=1).max())


@pytest.mark.realdata
@pytest.mark.skipif(not (IBIMS / "ibims1_val.jsonl").is_file(), reason="iBims-1 sample not available")
def test_ibims1_labels_are_z_depth():
    """Why z is the default: read as z, each image's points lie on planes (walls, floors) far more often.

    Read as the wrong type, a plane bends by the ray-length factor sqrt(1 + xn^2 + yn^2) (up to
    ~25 % at iBims-1's corners), so the best plane through the points keeps fewer inliers.
    """
    from vlm3.geometry.camera import backproject

    ad = get_adapter("depthlm-jsonl")(IBIMS)  # default depth_type
    rng = np.random.default_rng(0)
    wins = 0
    records = list(ad.convert_all())[::4]
    for rec in records:
        K, px, d = rec.views[0].K, np.asarray(rec.depth.pixels), np.asarray(rec.depth.depth)
        other = "range" if rec.depth.depth_type == "z" else "z"
        as_labelled = _best_plane_inliers(backproject(K, px, d, rec.depth.depth_type), rng)
        as_other = _best_plane_inliers(backproject(K, px, d, other), rng)
        wins += as_labelled > as_other
    assert wins >= 0.8 * len(records)
    assert {r.depth.depth_type for r in records} == {"z"}
