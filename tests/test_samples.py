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


def test_evaluation_labels_keep_their_order_and_edge_labels_are_asked(records) -> None:
    rec, ims = records[0]
    n = len(rec.depth.pixels)
    s = build_sample(rec, ims, "depth", Settings(focal=140), labels=[3, 0, 5])
    assert [q.label for q in s.queries] == [3, 0, 5] and s.not_asked == [] and s.dropped == []
    # A label at the far right / bottom edge, with a multiple that rounding to the nearest would
    # have cut it off: the canvas is padded up instead, so it is asked, at the last text coordinate.
    K = rec.views[0].K
    corner = (K.width - 0.01, K.height - 0.01)
    edge = rec.model_copy(update={"depth": rec.depth.model_copy(update={"pixels": [*rec.depth.pixels, corner], "depth": [*rec.depth.depth, 2.0]})})
    width = K.width * 140.0 / K.fx  # the unified width before rounding to the size multiple
    multiple = next(m for m in range(8, 400) if m <= round(width / m) * m < width - 1)  # nearest rounding would crop
    opts = Settings(focal=140, size_multiple=multiple)
    s = build_sample(edge, ims, "depth", opts, labels=[n, 1])
    assert [q.label for q in s.queries] == [n, 1] and s.not_asked == []
    U = s.view.record.views[0].K
    assert U.width % multiple == 0 and U.width >= width and s.images[0].size == (U.width, U.height)
    nx, ny = s.queries[0].fields["coords"]
    x, y = decode_pixel(nx, ny, U.width, U.height, opts.n_coords)
    px, py = s.view.transforms[0].forward(np.array([corner]))[0]
    assert abs(x - px) <= U.width / opts.n_coords and abs(y - py) <= U.height / opts.n_coords


def test_a_label_in_the_rounding_sliver_is_asked_at_the_last_pixel() -> None:
    """Without a multiple the canvas is round(W * s): 1004 px at s = 0.1 is 100.4 px, canvas 100.
    A label at the right edge lands at 100.39, past the canvas by less than a pixel: it is still
    asked, at the last text coordinate, with its exact ground truth."""
    from vlm3.data.records import Record
    from vlm3.geometry.camera import Intrinsics

    K = Intrinsics(1000.0, 1000.0, 502.0, 250.0, 1004, 500)
    rec = Record(id="r", dataset="t", views=[{"image": "a.png", "intrinsics": K.to_list()}],
                 depth={"pixels": [(1003.9, 10.5), (10.5, 10.5)], "depth": [2.0, 3.0], "depth_type": "range"})
    s = build_sample(rec, [np.zeros((500, 1004, 3), np.uint8)], "depth", Settings(focal=100, n_coords=100), labels=[0, 1])
    assert s.view.record.views[0].K.width == 100 and s.not_asked == [] and [q.label for q in s.queries] == [0, 1]
    assert s.queries[0].fields["coords"] == [99, 2] and s.queries[0].gt == 2.0
    assert s.view.record.depth.pixels[0][0] == pytest.approx(100.39)  # kept exact, not clamped


def _distorted(rec, ims):
    """``rec`` seen through strong barrel distortion (k1 = -0.4), with a label in the corner whose
    undistorted position lies far outside the unified canvas, and one in the centre."""
    from vlm3.data.records import DepthLabels

    K = rec.views[0].K
    view = rec.views[0].model_copy(update={"dist": [-0.4, 0.0, 0.0, 0.0]})
    depth = DepthLabels(pixels=[(K.cx, K.cy), (0.5, 0.5), (K.width - 0.5, 1.5)], depth=[2.0, 3.0, 4.0], depth_type="z")
    return rec.model_copy(update={"views": [view, *rec.views[1:]], "depth": depth, "matches": None}), ims


def test_labels_the_undistorted_view_cannot_show_are_not_asked_with_reason_and_ground_truth(records) -> None:
    from vlm3.data.unify import NOT_ASKED

    rec, ims = _distorted(*records[0])
    opts = Settings(focal=140, size_multiple=28, depth_type="range")
    s = build_sample(rec, ims, "depth", opts, labels=[2, 0, 1])
    assert [q.label for q in s.queries] == [0] and [n.label for n in s.not_asked] == [2, 1] and s.dropped == [2, 1]
    assert {n.reason for n in s.not_asked} == {"outside_undistorted_image"}
    assert s.not_asked[0].why == NOT_ASKED["outside_undistorted_image"]
    U = s.view.record.views[0].K
    for item in s.not_asked:
        # Its ground truth is the range along its exact, undistorted ray, as if it had been asked.
        uv = s.view.transforms[0].forward(np.array([rec.depth.pixels[item.label]]))
        assert not U.contains(uv).any()
        expected = convert_depth(U, uv, np.array([rec.depth.depth[item.label]]), "z", "range")[0]
        assert item.query.gt == pytest.approx(expected) and item.query.fields["pixel"] == list(rec.depth.pixels[item.label])
    # Data and settings alone decide it: the same sample again, and all labels (None) alike.
    again = build_sample(rec, ims, "depth", opts)
    assert [n.label for n in again.not_asked] == [1, 2] and [q.label for q in again.queries] == [0]
    # Training never draws a label it cannot show.
    for seed in range(5):
        drawn = build_sample(rec, ims, "depth", opts, np.random.default_rng(seed))
        assert drawn.not_asked == [] and len(drawn.messages) == 2


# --- iBims-1: every label asked, for every way a model is asked ---------------------------------


def _ibims_depth_settings() -> dict[str, Settings]:
    """Every setting a depth model is asked with on iBims-1: each registered profile over the bench
    (vlm3's own takes the bench's), the shipped training recipes with their model's patch multiple
    (as `vlm3 train` fills it; a trained checkpoint is evaluated with these), and the issue's case."""
    from vlm3.eval.bench import bench_dir, load_bench
    from vlm3.profiles import PROFILES, profile_settings
    from vlm3.settings import resolve_settings
    from vlm3.tasks.depth import DEPTH
    from vlm3.train.config import load_config

    bench = load_bench("ibims1")
    out = {f"profile {p}": resolve_settings(None, bench.settings, profile_settings(p, DEPTH))[0] for p in PROFILES}
    tiny = load_config(bench_dir().parent / "tiny-cpu.yaml").data
    recipe = load_config(bench_dir().parent / "qwen3vl-4b-depth.yaml").data
    out["tiny-cpu (Qwen2.5-VL, 28)"] = tiny.settings(size_multiple=28)
    out["tiny-cpu on Qwen3-VL (32)"] = tiny.model_copy(update={"size_multiple": None}).settings(size_multiple=32)
    out["qwen3vl-4b-depth (32)"] = recipe.settings(size_multiple=32)
    out["issue: focal 140, multiple 28"] = Settings(focal=140, size_multiple=28)
    return out


IBIMS_SETTINGS = _ibims_depth_settings()


@pytest.fixture(scope="module")
def ibims_records(ibims_root):
    from vlm3.data.adapters import get_adapter

    records = list(get_adapter("depthlm-jsonl")(ibims_root).convert_all())
    return [(r, load_images(r, ibims_root)) for r in records]


@pytest.mark.realdata
@pytest.mark.parametrize("name", list(IBIMS_SETTINGS))
def test_every_ibims_label_is_asked_for_every_model_setting(name, ibims_records) -> None:
    """All 10,000 labelled pixels of the iBims-1 sample are asked under every setting (no model-
    dependent "skipped" subset): size_multiple pads the unified image instead of cropping it."""
    settings = IBIMS_SETTINGS[name]
    asked: set[tuple[str, int]] = set()
    not_asked = 0
    for rec, ims in ibims_records:
        labels = list(range(len(rec.depth.pixels)))
        s = build_sample(rec, ims, "depth", settings, labels=labels)
        assert len(s.queries) + len(s.not_asked) == len(labels)
        asked |= {(rec.id, q.label) for q in s.queries}
        not_asked += len(s.not_asked)
        K = s.view.record.views[0].K
        assert s.images[0].size == (K.width, K.height)
        if settings.unify and settings.size_multiple:
            assert K.width % settings.size_multiple == 0 and K.height % settings.size_multiple == 0
    assert len(asked) + not_asked == 10_000
    assert not_asked == 0 and len(asked) == 10_000  # no distortion in iBims-1: padding keeps every label


@pytest.mark.realdata
def test_ibims_issue_case_pads_to_168_by_140(ibims_records) -> None:
    """The issue's case: 640 x 480 at fx 559.62 unified to 140 px is 160.1 x 120.4 px; rounding to
    the nearest multiple of 28 cropped it to 168 x 112 (482 labels lost); padding gives 168 x 140."""
    rec, ims = next((r, i) for r, i in ibims_records if r.views[0].image == "rgb/corridor_01.png")  # fx 559.62, 640 x 480
    s = build_sample(rec, ims, "depth", IBIMS_SETTINGS["issue: focal 140, multiple 28"])
    assert s.images[0].size == (168, 140) and len(s.queries) == len(rec.depth.pixels) and s.not_asked == []
