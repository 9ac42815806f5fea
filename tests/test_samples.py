"""Records -> task samples: text coordinates point at the labelled pixels, answers carry the labels."""

from __future__ import annotations

import numpy as np
import pytest

from vlm3.data.io import image_root, read_records
from vlm3.data.synth import generate, get_family
from vlm3.geometry.camera import convert_depth
from vlm3.geometry.pose import relative_pose
from vlm3.tasks.depth import parse_depth
from vlm3.tasks.pose import parse_pose, rotation_error_deg
from vlm3.settings import Settings
from vlm3.tasks.samples import build_sample, load_images
from vlm3.textref import decode_pixel, parse_point


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    generate(get_family("random_rig"), 6, out, seed=3, points=12, matches=12, progress=False, overwrite=True)
    return out


@pytest.fixture(scope="module")
def records(synth_dir):
    root = image_root(synth_dir)
    return [(r, load_images(r, root)) for r in read_records(synth_dir)]


@pytest.mark.parametrize("unify,resize", [(True, None), (False, (112, 112)), (False, None)])
def test_depth_sample_points_at_labels(records, unify, resize) -> None:
    opts = Settings(unify=unify, focal=140, size_multiple=None, resize_to=resize, depth_type="range", answer_style="short")
    for rec, ims in records:
        s = build_sample(rec, ims, "depth", opts)
        W, H = s.images[0].size
        K = s.view.record.views[0].K
        assert (K.width, K.height) == (W, H)
        if unify:
            assert K.fx == K.fy == 140
        gt_range = convert_depth(rec.views[0].K, np.asarray(rec.depth.pixels), np.asarray(rec.depth.depth), "z", "range")
        assert len(s.queries) == len(rec.depth.pixels)
        for q in s.queries:
            nx, ny = q.fields["coords"]
            x, y = decode_pixel(nx, ny, W, H, opts.n_coords)
            assert q.fields["pixel"] == list(rec.depth.pixels[q.label])  # original pixels
            px, py = s.view.transforms[0].forward(np.array([q.fields["pixel"]]))[0]
            # The text coordinate names the transformed label pixel to within half a unit.
            assert abs(x - px) <= W / 2000 * 0.5 + 1e-9
            assert abs(y - py) <= H / 2000 * 0.5 + 1e-9
            assert q.gt == pytest.approx(gt_range[q.label])
            assert parse_depth(q.answer) == pytest.approx(q.gt, abs=0.005)
            assert f"({nx}, {ny})" in q.question


def test_depth_training_sample_packs_points(records) -> None:
    rec, ims = records[0]
    opts = Settings(focal=140, points_per_sample=5, packing="multi_turn")
    s = build_sample(rec, ims, "depth", opts, np.random.default_rng(0))
    assert len(s.messages) == 10 and len(s.queries) == 5
    assert s.messages[0]["content"][0] == {"type": "image"}
    assert all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(s.messages))
    assert "messages" in s.to_trl() and len(s.to_trl()["images"]) == 1
    single = build_sample(rec, ims, "depth", Settings(focal=140, points_per_sample=5, packing="single_turn"), np.random.default_rng(0))
    trl = single.to_trl()
    assert set(trl) == {"images", "prompt", "completion"}
    # Same seed, same draw: identical samples.
    again = build_sample(rec, ims, "depth", opts, np.random.default_rng(0))
    assert again.messages == s.messages


def test_pose_sample_answers_relative_pose(records) -> None:
    for rec, ims in records:
        s = build_sample(rec, ims, "pose", Settings(focal=140))
        assert len(s.images) == 2
        pred = parse_pose(s.queries[0].answer)
        T = relative_pose(rec.views[0].pose, rec.views[1].pose)
        assert rotation_error_deg(pred.R, T[:3, :3]) < 0.2  # answers carry 0.1 degree precision
        assert pred.distance == pytest.approx(np.linalg.norm(T[:3, 3]), abs=0.006)


def test_correspondence_gt_in_original_pixels(records) -> None:
    for rec, ims in records:
        s = build_sample(rec, ims, "corr", Settings(focal=300))
        W1, H1 = s.images[1].size
        K1 = s.view.record.views[1].K
        for q in s.queries:
            nx, ny = parse_point(q.answer)
            x, y = decode_pixel(nx, ny, W1, H1)
            back = s.view.transforms[1].backward(np.array([[x, y]]))[0]
            # One normalised unit of the unified image, measured in original pixels.
            tol = max(W1, H1) / 2000 / (K1.fx / rec.views[1].K.fx)
            assert np.abs(back - np.asarray(q.gt)).max() <= tol + 1e-9
            assert np.asarray(q.gt) in np.asarray(rec.matches.pixels1) or np.min(np.abs(np.asarray(rec.matches.pixels1) - q.gt).sum(1)) < 1e-6


def test_missing_task_labels_is_a_clear_error(records) -> None:
    rec, ims = records[0]
    bare = rec.model_copy(update={"depth": None})
    with pytest.raises(ValueError, match="no labels for task 'depth'"):
        build_sample(bare, ims, "depth", Settings())


def test_evaluation_labels_keep_their_order_and_dropped_ones_are_named(records) -> None:
    rec, ims = records[0]
    n = len(rec.depth.pixels)
    s = build_sample(rec, ims, "depth", Settings(focal=140), labels=[3, 0, 5])
    assert [q.label for q in s.queries] == [3, 0, 5] and s.dropped == []
    # A label at the far right edge falls outside an image cropped to a multiple of 64 px.
    edge = rec.model_copy(update={"depth": rec.depth.model_copy(update={"pixels": [*rec.depth.pixels, (rec.views[0].K.width - 0.01, 1.0)], "depth": [*rec.depth.depth, 2.0]})})
    K = rec.views[0].K
    width = K.width * 140.0 / K.fx  # the unified width before rounding to the size multiple
    multiple = next(m for m in range(8, 400) if m <= round(width / m) * m < width - 1)  # one that crops
    s = build_sample(edge, ims, "depth", Settings(focal=140, size_multiple=multiple), labels=[n, 1])
    assert s.dropped == [n] and [q.label for q in s.queries] == [1]
