"""Synthetic scene generator: exact geometry, labels, determinism, dataset files and CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.data.io import image_root, read_manifest, read_records
from vlm3.data.prepare import PrepareOptions, prepare
from vlm3.data.records import check_pixels_inside
from vlm3.data.synth import (
    SURFACE_NAMES,
    family_from_params,
    generate,
    get_family,
    normalize_tasks,
    parse_override,
    render_scene,
    scene_to_record,
)
from vlm3.data.synth.scene import FLOOR, SKY
from vlm3.data.unify import unify_record
from vlm3.geometry import backproject, depth_map_to_points, invert_T, project, transform_points
from vlm3.tasks import tasks_of

SMALL = {"width": (64, 64)}


def _files(root: Path) -> dict[str, bytes]:
    """Images, dense maps and all records (in order) of a dataset; not the run's timing or paths."""
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.parent.name in ("images", "dense")}
    files["records"] = b"".join(p.read_bytes() for p in sorted((root / "records").glob("*.jsonl")))
    return files


def _view_points_world(view) -> np.ndarray:
    """World points of every pixel of a view (NaN where sky)."""
    pts = depth_map_to_points(view.K, view.depth.astype(np.float64)).reshape(-1, 3)
    return transform_points(invert_T(view.T_cam_from_world), pts)


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_same_bytes_and_parallel_matches_serial(tmp_path: Path) -> None:
    fam = get_family("random_rig", **SMALL)
    a = generate(fam, 4, tmp_path / "a", seed=3, save_depth=True, progress=False)
    # The same scenes through `vlm3 prepare synth` in parallel, two scenes per shard.
    opts = PrepareOptions(workers=2, seed=3, options={"family": json.dumps(fam.params()), "scenes": "4", "save_depth": "true", "scenes_per_shard": "2"})
    (tmp_path / "b").mkdir()
    report = prepare("synth", tmp_path / "b", tmp_path / "b", opts, progress=False)
    assert report.complete and report.records == 4 and len(list((tmp_path / "b" / "records").glob("*.jsonl"))) == 2
    b = tmp_path / "b"
    c = generate(fam, 4, tmp_path / "c", seed=4, save_depth=True, progress=False)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert len(fa) == 1 + 4 * 2 * 3  # records, per scene 2 views x (png, npy, ids)
    assert fa["records"] != fc["records"]
    png_a = [v for k, v in fa.items() if k.endswith("_0.png")]
    png_c = [v for k, v in fc.items() if k.endswith("_0.png")]
    assert not set(png_a) & set(png_c)


def test_scene_independent_of_tasks_and_index_neighbours() -> None:
    one = render_scene("fixed_rig", (5, 2), two_view=False)
    two = render_scene("fixed_rig", (5, 2))
    np.testing.assert_array_equal(one.views[0].image, two.views[0].image)
    r1 = scene_to_record(one, "x", dataset="d", tasks="depth")
    r2 = scene_to_record(two, "x", dataset="d", tasks="depth,pose,corr")
    assert r1.depth == r2.depth
    other = render_scene("fixed_rig", (5, 3), two_view=False)
    assert not np.array_equal(one.views[0].image, other.views[0].image)


# --- exact geometry -----------------------------------------------------------------------------


def test_floor_depth_matches_closed_form() -> None:
    # Camera at height h, pitch p (+ = up), yaw = roll = 0: a ray with normalised image row
    # coordinate y meets the floor at z-depth h / (y cos p - sin p).
    for i in range(3):
        scene = render_scene(get_family("fixed_rig", fy_ratio=(0.8, 1.2), n_boxes=(0, 1)), (11, i), two_view=False)
        v = scene.views[0]
        rows, cols = np.nonzero(v.ids == FLOOR)
        assert len(rows) > 100
        y = (rows + 0.5 - v.K.cy) / v.K.fy
        p = math.radians(-10.0)
        expected = 1.5 / (y * math.cos(p) - math.sin(p))
        np.testing.assert_allclose(v.depth[rows, cols], expected, rtol=2e-6)


def test_structural_surfaces_lie_on_their_planes() -> None:
    scene = render_scene("random_rig", (2, 0), two_view=False)
    v, room = scene.views[0], scene.layout.room
    world = _view_points_world(v)
    ids = v.ids.ravel()
    assert not np.isnan(world).any()  # a closed room: every pixel sees a surface
    np.testing.assert_allclose(world[ids == FLOOR, 2], 0.0, atol=1e-5)
    np.testing.assert_allclose(world[ids == 104, 1], room.y_max, atol=1e-5)  # back wall
    assert np.all(world[:, 2] >= -1e-5) and np.all(world[:, 2] <= room.height + 1e-5)


def test_outdoor_sky_has_no_depth_and_is_never_labelled() -> None:
    fam = get_family("outdoor", pitch_deg=(8.0, 12.0), **SMALL)
    for i in range(3):
        scene = render_scene(fam, (0, i))
        v = scene.views[0]
        sky = v.ids == SKY
        assert sky.any() and np.isnan(v.depth[sky]).all() and np.isfinite(v.depth[~sky]).all()
        np.testing.assert_allclose(_view_points_world(v)[(v.ids == FLOOR).ravel(), 2], 0.0, atol=1e-4)
        rec = scene_to_record(scene, f"o{i}", dataset="o", points=200, matches=200)
        px = np.floor(np.asarray(rec.depth.pixels)).astype(int)
        assert (v.ids[px[:, 1], px[:, 0]] != SKY).all()
        assert not scene.correspondences.covisible[sky].any()


def test_correspondences_reproject_and_exclude_occluded_points() -> None:
    fam = get_family("random_rig", n_boxes=(3, 4), n_spheres=(1, 2), **SMALL)
    occluded_total = 0
    for i in range(6):
        scene = render_scene(fam, (7, i))
        v0, v1 = scene.views
        corr = scene.correspondences
        # Independent reprojection of every valid view-0 pixel through the poses.
        h, w = v0.depth.shape
        jj, ii = np.mgrid[0:h, 0:w]
        uv0 = np.stack([ii.ravel() + 0.5, jj.ravel() + 0.5], 1)
        valid = np.isfinite(v0.depth).ravel()
        p1 = transform_points(v1.T_cam_from_world @ invert_T(v0.T_cam_from_world),
                              backproject(v0.K, uv0[valid], v0.depth.ravel()[valid]))
        uv1, z1 = project(v1.K, p1)
        covis = corr.covisible.ravel()[valid]
        err = np.linalg.norm(uv1[covis] - corr.flow.reshape(-1, 2)[valid][covis], axis=1)
        assert err.max() < 0.5
        assert corr.covisibility == pytest.approx(covis.mean())
        assert corr.covisibility >= fam.min_covisibility
        in_view = (z1 > 0) & v1.K.contains(uv1)
        assert not (covis & ~in_view).any()  # out-of-view points are excluded
        # Covisible points agree with view 1's rendered depth; excluded in-view points are hidden
        # behind something nearer in view 1's z-buffer (3x3 neighbourhood for pixel-grid slack).
        pad = np.pad(v1.depth, 1, constant_values=np.inf)
        q = np.floor(uv1[in_view]).astype(int)
        near = np.stack([pad[q[:, 1] + dy, q[:, 0] + dx] for dy in range(3) for dx in range(3)], 1)
        z_in, c_in = z1[in_view], covis[in_view]
        centre = near[:, 4]
        assert np.mean(np.abs(centre[c_in] - z_in[c_in]) < 0.05 * z_in[c_in]) > 0.97
        occluded = ~c_in
        occluded_total += int(occluded.sum())
        assert np.all(np.nanmin(near[occluded], axis=1) < z_in[occluded] * (1 - 1e-3))
        rec = scene_to_record(scene, f"c{i}", dataset="c", matches=30)
        assert len(rec.matches.pixels0) == 30 and rec.covisibility == pytest.approx(corr.covisibility, abs=1e-6)
        assert not check_pixels_inside(rec)
    assert occluded_total > 0  # the scenes did exercise occlusion


@pytest.mark.parametrize(
    "counts",
    [dict(n_boxes=(1, 1)), dict(n_boxes=(0, 0), n_spheres=(1, 1)), dict(n_boxes=(0, 0), n_cylinders=(1, 1))],
    ids=["box", "sphere", "cylinder"],
)
def test_object_boxes_match_rendered_geometry(counts: dict) -> None:
    base = dict(n_boxes=(0, 0), n_spheres=(0, 0), n_cylinders=(0, 0), focal=(150.0, 150.0), width=(128, 128),
                box_height=(0.3, 0.9), object_distance=(2.5, 3.5))
    fam = get_family("fixed_rig", **{**base, **counts})
    for i in range(2):
        scene = render_scene(fam, (1, i), two_view=False)
        rec = scene_to_record(scene, "b", dataset="b", tasks="object")
        assert len(rec.objects) == 1 and len(scene.objects) == 1
        obj, label, v = scene.objects[0], rec.objects[0], scene.views[0]
        assert (label.name, label.color) == (obj.name, obj.color) and obj.description == f"{obj.color} {obj.name}"
        rows, cols = np.nonzero(v.ids == obj.id)
        pts = backproject(v.K, np.stack([cols + 0.5, rows + 0.5], 1), v.depth[rows, cols].astype(np.float64))
        R = np.asarray(label.R_cam_from_box)
        local = (pts - np.asarray(label.center)) @ R  # box frame: x width, y height (down), z length
        half = np.asarray(label.size) / 2
        assert np.all(np.abs(local) <= half + 1e-4)
        extent = (local.max(0) - local.min(0)) / np.asarray(label.size)
        full_axes = [0, 1, 2] if obj.shape == "box" else [0, 1]  # round objects show one side only
        assert np.all(extent[full_axes] > 0.85), extent
        # Height axis is gravity: box y in the camera frame equals gravity_cam.
        np.testing.assert_allclose(R[:, 1], rec.gravity_cam, atol=1e-8)
        assert label.box2d == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        if obj.shape == "sphere":
            np.testing.assert_allclose(np.linalg.norm(local, axis=1), half[0], atol=1e-4)


def test_fixed_rig_fixes_camera_and_random_rig_varies_it() -> None:
    heights, pitches, focals = [], [], []
    for i in range(6):
        s = render_scene(get_family("fixed_rig", **SMALL), (0, i), two_view=False)
        v = s.views[0]
        g = s.gravity_cam()
        assert v.center[2] == pytest.approx(1.5, abs=1e-12)
        assert math.degrees(math.asin(g[2])) == pytest.approx(10.0, abs=1e-9)  # looking 10 deg down
        assert g[0] == pytest.approx(0.0, abs=1e-12)  # no roll
        assert 7.0 <= s.layout.room.y_max - v.center[1] <= 8.0  # back wall distance
        focals.append(v.K.fx)
        r = render_scene(get_family("random_rig", **SMALL), (0, i), two_view=False)
        heights.append(r.views[0].center[2])
        pitches.append(-math.degrees(math.asin(r.gravity_cam()[2])))
    assert len(set(np.round(focals, 6))) == 6 and all(70 <= f <= 280 for f in focals)
    assert all(1.0 <= h <= 1.8 for h in heights) and np.ptp(heights) > 0.1
    assert all(-25 <= p <= 5 for p in pitches) and np.ptp(pitches) > 3


# --- records and files --------------------------------------------------------------------------


def test_dataset_records_round_trip_and_match_the_files(tmp_path: Path) -> None:
    fam = get_family("outdoor", width=(48, 96), aspect=(0.75, 1.5), fy_ratio=(0.9, 1.1), principal_jitter=0.05)
    out = generate(fam, 5, tmp_path / "ds", seed=1, points=12, matches=7, save_depth=True, progress=False, split="val")
    manifest = read_manifest(out)
    info = manifest["source"]["info"]
    assert manifest["dataset"] == "outdoor" and info["family"] == "outdoor" and manifest["seed"] == 1
    assert manifest["size"] == 5 and manifest["image_root"] == "." and manifest["source"]["adapter"] == "synth"
    assert info["family_params"]["fy_ratio"] == [0.9, 1.1]
    assert family_from_params(info["family_params"]) == fam  # the manifest reproduces the scenes
    records = list(read_records(out))
    assert [r.id for r in records] == [f"outdoor-1-{i:06d}" for i in range(5)]
    root = image_root(out, manifest)
    for i, rec in enumerate(records):
        assert rec.split == "val" and tasks_of(rec) == ["depth", "pose", "correspondence", "object"]
        assert not check_pixels_inside(rec)
        assert len(rec.depth.pixels) == 12 and len(rec.matches.pixels0) == 7
        assert rec.covisibility >= 0.25
        for k, view in enumerate(rec.views):
            img = np.asarray(Image.open(root / view.image))
            assert img.shape == (view.K.height, view.K.width, 3) and img.dtype == np.uint8
            assert np.load(out / rec.meta[f"depth_map{k}"]).shape == img.shape[:2]
        dense = np.load(out / rec.meta["depth_map0"])
        px = np.floor(np.asarray(rec.depth.pixels)).astype(int)
        np.testing.assert_allclose(rec.depth.depth, dense[px[:, 1], px[:, 0]], rtol=1e-6)
        ids = np.asarray(Image.open(out / rec.meta["id_map0"]))
        object_ids = [int(x) for x in rec.meta["object_ids"].split(",") if x]
        assert len(object_ids) == len(rec.objects)
        for oid, obj in zip(object_ids, rec.objects):
            rows, cols = np.nonzero(ids == oid)
            assert obj.box2d == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        again = scene_to_record(render_scene(fam, (1, i)), rec.id, dataset="outdoor", points=12, matches=7,
                                split="val", image_paths=[v.image for v in rec.views], meta=dict(rec.meta))
        assert again.model_dump() == rec.model_dump()


def test_single_view_tasks_write_one_image_and_no_pose(tmp_path: Path) -> None:
    out = generate("fixed_rig", 2, tmp_path / "d", tasks=["depth", "object"], progress=False)
    for rec in read_records(out):
        assert len(rec.views) == 1 and rec.matches is None and rec.views[0].T_cam_from_world is None
        assert tasks_of(rec) in (["depth", "object"], ["depth"])
    assert len(list((out / "images").iterdir())) == 2
    with pytest.raises(FileExistsError, match="overwrite"):
        generate("fixed_rig", 1, out, progress=False)
    generate("fixed_rig", 1, out, progress=False, overwrite=True)
    assert len(list((out / "images").iterdir())) == 2  # the two-view scene replaced the old files


def test_record_survives_focal_unification(tmp_path: Path) -> None:
    fam = get_family("random_rig", width=(56, 160), aspect=(0.8, 1.4), fy_ratio=(0.85, 1.15), principal_jitter=0.1)
    out = generate(fam, 3, tmp_path / "u", seed=2, progress=False)
    for rec in read_records(out):
        images = [np.asarray(Image.open(out / v.image)) for v in rec.views]
        uni = unify_record(rec, images, target=1000.0)
        assert uni.dropped_labels == 0 and not check_pixels_inside(uni.record)
        for view, img in zip(uni.record.views, uni.images):
            K = view.K
            assert (K.fx, K.fy) == (1000.0, 1000.0) and img.shape[:2] == (K.height, K.width)
        K0 = uni.record.views[0].K
        for obj in uni.record.objects:
            x0, y0, x1, y1 = obj.box2d
            assert 0 <= x0 < x1 <= K0.width and 0 <= y0 < y1 <= K0.height
        assert uni.record.depth.depth == rec.depth.depth


# --- configuration and CLI ----------------------------------------------------------------------


def test_bad_configuration_is_named() -> None:
    with pytest.raises(KeyError, match="fixed_rig, outdoor, random_rig"):
        get_family("kitchen")
    with pytest.raises(ValueError, match="camera_hieght"):
        get_family("fixed_rig", camera_hieght=(1.0, 2.0))
    with pytest.raises(ValueError, match="focal.*low must be <= high"):
        get_family("random_rig", focal=(300.0, 100.0))
    with pytest.raises(ValueError, match="n_boxes"):
        get_family("fixed_rig", n_boxes=(0, 50))
    with pytest.raises(ValueError, match="unknown task"):
        normalize_tasks("depth,normals")
    assert parse_override(get_family("outdoor"), "n_cars=2") == ("n_cars", (2, 2))
    assert parse_override(get_family("outdoor"), "pair_same_camera=false") == ("pair_same_camera", False)
    with pytest.raises(ValueError, match="seed"):
        render_scene("fixed_rig", -1)
    assert set(SURFACE_NAMES.values()) == {"sky", "floor", "ceiling", "wall"}


def test_cli_end_to_end(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["synth", "--family", "random_rig", "--scenes", "3", "--out", str(out), "--seed", "5", "--tasks", "depth,corr",
            "--points", "4", "--matches", "6", "--size", "80x60", "--focal-range", "90,120", "--name", "rooms",
            "--save-depth", "--set", "camera_height=1.2,1.3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest["dataset"] == "rooms" and manifest["source"]["info"]["family_params"]["camera_height"] == [1.2, 1.3]
    records = list(read_records(out))
    assert len(records) == 3
    for rec in records:
        assert rec.dataset == "rooms" and rec.objects is None and rec.views[0].T_cam_from_world is None
        assert tasks_of(rec) == ["depth", "correspondence"]
        K = rec.views[0].K
        assert (K.width, K.height) == (80, 60) and 90 <= K.fx <= 120
        assert len(rec.depth.pixels) == 4 and len(rec.matches.pixels0) == 6
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--size", "big"])
    assert bad.exit_code != 0 and "WxH" in bad.output
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "overwrite" in again.output
