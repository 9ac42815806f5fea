"""Cameras, focal unification and poses: exactness properties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.spatial.transform import Rotation

from conftest import IBIMS
from vlm3.geometry import (
    Intrinsics,
    backproject,
    camera2_center_in_cam1,
    convert_depth,
    invert_T,
    make_T,
    project,
    relative_pose,
    rotation_angle_deg,
    rotation_to_ypr,
    t_from_center,
    transform_points,
    unified_intrinsics,
    unify_focal,
    warp_depth,
    ypr_to_rotation,
)


intrinsics_st = st.builds(
    lambda fx, aspect, w, h, jx, jy: Intrinsics(fx, fx * aspect, w / 2 + jx, h / 2 + jy, w, h),
    fx=st.floats(50, 3000),
    aspect=st.floats(0.8, 1.25),
    w=st.integers(16, 1600),
    h=st.integers(16, 1200),
    jx=st.floats(-5, 5),
    jy=st.floats(-5, 5),
)


@settings(max_examples=200, deadline=None)
@given(K=intrinsics_st, target=st.floats(100, 2000), mult=st.sampled_from([None, 14, 28, 32]), data=st.data())
def test_unify_inverse_and_projection(K: Intrinsics, target: float, mult, data) -> None:
    dst = unified_intrinsics(K, target, mult)
    assert dst.fx == pytest.approx(target, abs=0) and dst.fy == pytest.approx(target, abs=0)
    from vlm3.geometry.unify import FocalTransform

    t = FocalTransform(K, dst)
    uv = np.array(data.draw(st.lists(st.tuples(st.floats(0, K.width), st.floats(0, K.height)), min_size=1, max_size=20)))
    back = t.backward(t.forward(uv))
    assert np.abs(back - uv).max() < 1e-6
    # A 3D point projected into the original and the unified camera lands on transformed pixels.
    pts = np.array(data.draw(st.lists(st.tuples(st.floats(-3, 3), st.floats(-3, 3), st.floats(0.2, 50)), min_size=1, max_size=20)))
    uv0, z0 = project(K, pts)
    uv1, z1 = project(dst, pts)
    assert np.abs(t.forward(uv0) - uv1).max() < 1e-6 * max(1.0, np.abs(uv1).max())
    np.testing.assert_array_equal(z0, z1)  # depth is unchanged by the resize


def test_unify_non_square_pixels_end_square() -> None:
    K = Intrinsics(600.0, 450.0, 320.0, 240.0, 640, 480)
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    out = unify_focal(img, K, 1000)
    assert out.K.fx == 1000 and out.K.fy == 1000
    assert np.asarray(out.image).shape == (round(480 * 1000 / 450), round(640 * 1000 / 600), 3)


def test_unify_moves_image_content_with_labels() -> None:
    """A single bright pixel ends up in the unified pixel that the transform predicts."""
    K = Intrinsics(559.62, 558.14, 361.87, 241.99, 640, 480)
    rng = np.random.default_rng(1)
    for _ in range(20):
        i, j = int(rng.integers(5, 635)), int(rng.integers(5, 475))
        img = np.zeros((480, 640), np.float32)
        img[j, i] = 1.0
        out = unify_focal(img, K, float(rng.uniform(300, 1500)), antialias=False)
        u, v = out.transform.forward(np.array([[i + 0.5, j + 0.5]]))[0]
        peak = np.unravel_index(np.argmax(out.image), out.image.shape)
        assert abs(peak[1] + 0.5 - u) <= 1.0 and abs(peak[0] + 0.5 - v) <= 1.0


def test_unify_pil_and_size_multiple() -> None:
    K = Intrinsics(500.0, 500.0, 100.0, 80.0, 200, 160)
    pil = Image.fromarray(np.full((160, 200, 3), 128, np.uint8))
    out = unify_focal(pil, K, 140, size_multiple=28)
    assert isinstance(out.image, Image.Image)
    assert out.image.size[0] % 28 == 0 and out.image.size[1] % 28 == 0
    assert (out.K.cx, out.K.cy) == pytest.approx((100 * 0.28, 80 * 0.28))


def test_unify_rejects_mismatched_image() -> None:
    with pytest.raises(ValueError, match="image is 10x10 but intrinsics describe 20x10"):
        unify_focal(np.zeros((10, 10)), Intrinsics(10, 10, 5, 5, 20, 10), 1000)


def test_unify_with_distortion_round_trip() -> None:
    K = Intrinsics(500.0, 505.0, 320.0, 240.0, 640, 480)
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    out = unify_focal(img, K, 800, dist=(-0.1, 0.02, 0.001, -0.001))
    uv = np.array([[10.5, 20.5], [320, 240], [600.25, 470.75]])
    assert np.abs(out.transform.backward(out.transform.forward(uv)) - uv).max() < 1e-3
    assert out.K.fx == out.K.fy == 800


def test_warp_depth_keeps_metric_values() -> None:
    K = Intrinsics(100.0, 100.0, 32.0, 24.0, 64, 48)
    depth = np.random.default_rng(0).uniform(1, 5, (48, 64)).astype(np.float32)
    out = unify_focal(np.zeros((48, 64), np.uint8), K, 150)
    warped = warp_depth(depth, out.transform)
    assert warped.shape == (72, 96)
    assert set(np.unique(warped[np.isfinite(warped)])).issubset(set(np.unique(depth)))


def test_depth_conventions() -> None:
    K = Intrinsics(500.0, 500.0, 320.0, 240.0, 640, 480)
    uv = np.array([[320.0, 240.0], [0.0, 0.0], [640.0, 480.0]])
    z = np.array([2.0, 3.0, 4.0])
    rng_ = convert_depth(K, uv, z, "z", "range")
    assert rng_[0] == pytest.approx(2.0)
    P = backproject(K, uv, z, "z")
    np.testing.assert_allclose(np.linalg.norm(P, axis=1), rng_)
    np.testing.assert_allclose(backproject(K, uv, rng_, "range"), P)
    np.testing.assert_allclose(convert_depth(K, uv, rng_, "range", "z"), z)
    uv2, z2 = project(K, P)
    np.testing.assert_allclose(uv2, uv, atol=1e-9)
    with pytest.raises(ValueError, match="depth convention"):
        convert_depth(K, uv, z, "z", "euclid")  # type: ignore[arg-type]


def test_intrinsics_validation() -> None:
    with pytest.raises(ValueError, match="focal"):
        Intrinsics(0, 1, 0, 0, 10, 10)
    with pytest.raises(ValueError, match="finite"):
        Intrinsics(float("nan"), 1, 0, 0, 10, 10)
    with pytest.raises(ValueError, match="size"):
        Intrinsics(1, 1, 0, 0, 0, 10)
    K = Intrinsics.from_center_origin(500, 500, 319.5, 239.5, 640, 480)
    assert (K.cx, K.cy) == (320.0, 240.0)


@settings(max_examples=300, deadline=None)
@given(yaw=st.floats(-179, 179), pitch=st.floats(-89, 89), roll=st.floats(-179, 179))
def test_ypr_round_trip_and_scipy(yaw: float, pitch: float, roll: float) -> None:
    R = ypr_to_rotation(yaw, pitch, roll)
    expected = Rotation.from_euler("YXZ", [yaw, pitch, roll], degrees=True).as_matrix()
    np.testing.assert_allclose(R, expected, atol=1e-12)
    # Intrinsic Y, then X, then Z about the rotating axes == extrinsic Z, X, Y.
    np.testing.assert_allclose(R, Rotation.from_euler("zxy", [roll, pitch, yaw], degrees=True).as_matrix(), atol=1e-12)
    y2, p2, r2 = rotation_to_ypr(R)
    assert rotation_angle_deg(ypr_to_rotation(y2, p2, r2), R) < 1e-6
    assert (y2, p2, r2) == pytest.approx((yaw, pitch, roll), abs=1e-6)


def test_ypr_semantics() -> None:
    fwd = np.array([0.0, 0.0, 1.0])
    assert (ypr_to_rotation(30, 0, 0) @ fwd)[0] > 0  # + yaw turns right (towards +X)
    assert (ypr_to_rotation(0, 20, 0) @ fwd)[1] < 0  # + pitch looks up (towards -Y)
    assert (ypr_to_rotation(0, 0, 15) @ np.array([1.0, 0, 0]))[1] > 0  # + roll: right axis dips


def test_relative_pose_frames() -> None:
    rng = np.random.default_rng(3)
    T1 = make_T(Rotation.random(random_state=1).as_matrix(), rng.normal(size=3))
    T2 = make_T(Rotation.random(random_state=2).as_matrix(), rng.normal(size=3))
    T21 = relative_pose(T1, T2)
    X = rng.normal(size=(10, 3))
    np.testing.assert_allclose(transform_points(T21, transform_points(T1, X)), transform_points(T2, X), atol=1e-12)
    c2 = camera2_center_in_cam1(T21)
    c2_world = invert_T(T2)[:3, 3]
    np.testing.assert_allclose(c2, transform_points(T1, c2_world[None])[0], atol=1e-12)
    np.testing.assert_allclose(t_from_center(T21[:3, :3], c2), T21[:3, 3], atol=1e-12)
    np.testing.assert_allclose(invert_T(T21) @ T21, np.eye(4), atol=1e-12)


@pytest.mark.realdata
@pytest.mark.skipif(not (IBIMS / "ibims1_val.jsonl").exists(), reason="iBims-1 sample not present")
def test_ibims_depth_sample_unifies_inside_image() -> None:
    """Real iBims-1 images: after unification to f=1000 every labelled pixel is inside and keeps its depth."""
    from vlm3.data.records import Record
    from vlm3.data.unify import unify_record

    lines = (IBIMS / "ibims1_val.jsonl").read_text().splitlines()
    for line in lines[:10]:
        item = json.loads(line)
        rec = Record(
            id=item["image"],
            dataset="ibims1",
            views=[{"image": item["image"], "intrinsics": item["intrinsics"]}],
            depth={"pixels": [(x + 0.5, y + 0.5) for x, y in item["pixel_coords"]], "depth": item["depth"], "depth_type": "z"},
        )
        image = np.asarray(Image.open(IBIMS / item["image"]).convert("RGB"))
        out = unify_record(rec, [image], 1000.0)
        K = out.record.views[0].K
        assert K.fx == K.fy == 1000.0
        assert out.images[0].shape[:2] == (K.height, K.width)
        px = np.asarray(out.record.depth.pixels)
        assert out.dropped_labels == 0 and K.contains(px).all()
        assert out.record.depth.depth == item["depth"]
        # The label still points at the same image content (nearest pixel colour agrees closely).
        src = np.asarray([image[y, x] for x, y in item["pixel_coords"]], np.float64)
        ij = np.floor(px).astype(int)
        dst = out.images[0][ij[:, 1], ij[:, 0]].astype(np.float64)
        assert np.median(np.abs(src - dst)) < 12


# --- size_multiple pads, never crops ------------------------------------------------------------


def test_pad_to_multiple_rounds_up() -> None:
    from vlm3.geometry.unify import pad_to_multiple

    assert [pad_to_multiple(x, 28) for x in (160.1, 120.4, 168.0, 168.0 + 1e-9, 1.0, 28.0001)] == [168, 140, 168, 168, 28, 56]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="size_multiple"):
            pad_to_multiple(100.0, bad)
    with pytest.raises(ValueError, match="extent"):
        pad_to_multiple(float("nan"), 28)


@settings(max_examples=300, deadline=None)
@given(K=intrinsics_st, target=st.floats(20, 2000), mult=st.sampled_from([1, 7, 14, 28, 32, 64]), data=st.data())
def test_size_multiple_pads_so_every_label_stays_inside(K: Intrinsics, target: float, mult: int, data) -> None:
    """The padded canvas is the smallest multiple >= the exact extent; cx, cy and the focal are
    those of the unpadded canvas; every pixel of the original image maps inside, and can be asked."""
    from vlm3.data.unify import not_asked_reasons
    from vlm3.geometry.unify import FocalTransform

    exact_w, exact_h = K.width * target / K.fx, K.height * target / K.fy
    dst = unified_intrinsics(K, target, mult)
    plain = unified_intrinsics(K, target)
    assert dst.width % mult == 0 and dst.height % mult == 0
    assert exact_w - 1e-6 <= dst.width < exact_w + mult and exact_h - 1e-6 <= dst.height < exact_h + mult
    assert (dst.fx, dst.fy, dst.cx, dst.cy) == (plain.fx, plain.fy, plain.cx, plain.cy)  # padding moves nothing
    uv = np.array(data.draw(st.lists(st.tuples(st.floats(0, K.width, exclude_max=True), st.floats(0, K.height, exclude_max=True)), min_size=1, max_size=20)))
    t = FocalTransform(K, dst)
    px = t.forward(uv)
    assert (px >= -1e-6).all() and (px[:, 0] < dst.width + 1e-6).all() and (px[:, 1] < dst.height + 1e-6).all()
    assert (not_asked_reasons(t, dst, px) == "").all()
    # The corners of the original image (the extreme labels) too.
    corners = t.forward(np.array([[0.0, 0.0], [K.width, K.height]]))
    assert corners[1, 0] <= dst.width + 1e-6 and corners[1, 1] <= dst.height + 1e-6


def test_padded_image_keeps_content_and_pads_right_and_bottom() -> None:
    """iBims-1's camera at focal 140 px and multiple 28: exact 160.1 x 120.4 px, canvas 168 x 140
    (rounding to the nearest multiple gave 168 x 112 and cut the bottom rows off)."""
    K = Intrinsics(559.62, 558.14, 362.37, 242.49, 640, 480)
    img = np.random.default_rng(1).integers(1, 255, (480, 640, 3), dtype=np.uint8)
    padded = unify_focal(img, K, 140.0, size_multiple=28)
    plain = unify_focal(img, K, 140.0)
    assert (padded.K.width, padded.K.height) == (168, 140) and (plain.K.width, plain.K.height) == (160, 120)
    assert (padded.K.cx, padded.K.cy) == (plain.K.cx, plain.K.cy) == pytest.approx((362.37 * 140 / 559.62, 242.49 * 140 / 558.14))
    out = np.asarray(padded.image)
    np.testing.assert_array_equal(out[:120, :160], np.asarray(plain.image))  # same content, same place
    assert not out[:, 161:].any() and not out[121:].any()  # black padding at the right and bottom only
    # The bottom-right labelled pixel is inside the padded canvas (it was outside the cropped one).
    u, v = padded.transform.forward(np.array([[639.5, 479.5]]))[0]
    assert 159 < u < 168 and 119 < v < 140 and padded.K.contains(np.array([[u, v]])).all()
