"""Pose task: questions, answers, yaw/pitch/roll semantics, parser, VGGT-style metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from vlm3.geometry.pose import make_T, rotation_angle_deg, t_from_center, ypr_to_rotation
from support import message_text
from vlm3.tasks.pose import (
    PAIR_ORDERS,
    POSE,
    PosePrediction,
    direction_answer,
    distance_answer,
    motion_words,
    pair_errors,
    pair_in_order,
    parse_direction,
    parse_distance,
    parse_pose,
    parse_rotation,
    pose_answer,
    pose_auc,
    pose_messages,
    pose_metrics,
    pose_prompt,
    pose_questions,
    rotation_answer,
    translation_angle_deg,
)


def calculate_auc_np(r_error, t_error, max_threshold=30):
    """VGGT's evaluation helper, verbatim."""
    error_matrix = np.concatenate((r_error[:, None], t_error[:, None]), axis=1)
    max_errors = np.max(error_matrix, axis=1)
    bins = np.arange(max_threshold + 1)
    histogram, _ = np.histogram(max_errors, bins=bins)
    num_pairs = float(len(max_errors))
    normalized_histogram = histogram.astype(float) / num_pairs
    return np.mean(np.cumsum(normalized_histogram)), normalized_histogram


def pose_T(yaw: float, pitch: float, roll: float, center: list[float]) -> np.ndarray:
    """T_cam2_from_cam1 for camera 2 at ``center`` (in camera 1) with the given orientation."""
    R = ypr_to_rotation(yaw, pitch, roll).T
    return make_T(R, t_from_center(R, center))


# --- answers ------------------------------------------------------------------------------------


def test_paper_answer_strings() -> None:
    direction = np.array([-0.69, 0.02, 0.72])
    T = pose_T(89.6, 2.6, 6.1, list(direction / np.linalg.norm(direction) * 1.98))
    assert distance_answer(T) == "Translation distance: 1.98 meters"
    assert direction_answer(T) == "The camera moves left, forward, unit vector (-0.69, +0.02, +0.72)."
    assert rotation_answer(T) == "Yaw=+89.6°, Pitch=+2.6°, Roll=+6.1°"
    assert pose_answer(T, metric=True).splitlines() == [distance_answer(T), direction_answer(T), rotation_answer(T)]
    assert pose_answer(T, metric=False).splitlines() == [direction_answer(T), rotation_answer(T)]


def test_questions_and_messages() -> None:
    assert len(pose_questions(True)) == 3 and len(pose_questions(False)) == 2
    assert pose_prompt(True).splitlines()[0].startswith("1. ")
    user, assistant = pose_messages(np.eye(4), metric=False)
    assert user["content"][:2] == [{"type": "image"}, {"type": "image"}]
    assert message_text(user) == pose_prompt(False)
    assert message_text(assistant) == pose_answer(np.eye(4), metric=False)


def test_turning_right_is_positive_yaw() -> None:
    # Camera 2's forward axis, seen from camera 1, swings towards +X (right).
    forward_in_cam1 = np.array([math.sin(math.radians(30)), 0.0, math.cos(math.radians(30))])
    R_cam1_from_cam2 = Rotation.from_rotvec([0, math.radians(30), 0]).as_matrix()
    assert R_cam1_from_cam2 @ [0, 0, 1] == pytest.approx(forward_in_cam1)
    T = make_T(R_cam1_from_cam2.T, [0, 0, 0])
    assert rotation_answer(T) == "Yaw=+30.0°, Pitch=+0.0°, Roll=+0.0°"


def test_looking_up_is_positive_pitch() -> None:
    R_cam1_from_cam2 = Rotation.from_rotvec([math.radians(20), 0, 0]).as_matrix()
    forward = R_cam1_from_cam2 @ [0, 0, 1]
    assert forward[1] < 0  # Y is down, so the camera looks up
    assert rotation_answer(make_T(R_cam1_from_cam2.T, [0, 0, 0])) == "Yaw=+0.0°, Pitch=+20.0°, Roll=+0.0°"


def test_roll_sign() -> None:
    R_cam1_from_cam2 = Rotation.from_rotvec([0, 0, math.radians(10)]).as_matrix()
    assert (R_cam1_from_cam2 @ [1, 0, 0])[1] > 0  # right axis moves towards +Y
    assert rotation_answer(make_T(R_cam1_from_cam2.T, [0, 0, 0])) == "Yaw=+0.0°, Pitch=+0.0°, Roll=+10.0°"


def test_moving_left_is_left_and_negative_x() -> None:
    answer = direction_answer(pose_T(0, 0, 0, [-2.0, 0.0, 0.0]))
    assert answer == "The camera moves left, unit vector (-1.00, +0.00, +0.00)."
    # The direction is expressed in camera 1, whatever camera 2's orientation.
    assert direction_answer(pose_T(70, 10, 5, [-2.0, 0.0, 0.0])) == answer


@pytest.mark.parametrize(
    ("vector", "words"),
    [
        ((-0.69, 0.02, 0.72), ["left", "forward"]),
        ((0.0, -1.0, 0.0), ["up"]),
        ((0.1, 0.2, -0.25), ["backward"]),
        ((0.5, 0.5, 0.5), ["right", "down", "forward"]),
        ((0.29, -0.2, 0.1), ["right"]),
    ],
)
def test_motion_words(vector: tuple[float, float, float], words: list[str]) -> None:
    assert motion_words(vector) == words


def test_still_camera() -> None:
    T = pose_T(10, 0, 0, [0, 0, 0])
    assert direction_answer(T) == "The camera does not move, unit vector (+0.00, +0.00, +0.00)."
    pred = parse_pose(pose_answer(T, metric=True))
    assert pred is not None and np.allclose(pred.t, 0) and pred.distance == 0.0


# --- parsing ------------------------------------------------------------------------------------

angles = st.tuples(st.floats(-179, 179), st.floats(-89, 89), st.floats(-179, 179))
centers = st.tuples(*[st.floats(-20, 20)] * 3).filter(lambda c: np.linalg.norm(c) > 0.05)


@settings(max_examples=200, deadline=None)
@given(ypr=angles, center=centers, metric=st.booleans())
def test_round_trip(ypr: tuple[float, float, float], center: tuple[float, float, float], metric: bool) -> None:
    T = pose_T(*ypr, list(center))
    pred = parse_pose(pose_answer(T, metric))
    assert pred is not None
    assert rotation_angle_deg(pred.R, T[:3, :3]) < 0.2  # 1-decimal angles
    assert translation_angle_deg(pred.t, T[:3, 3], signed=True) < 1.0  # 2-decimal unit vector
    if metric:
        assert pred.distance == pytest.approx(np.linalg.norm(center), abs=0.005 + 1e-9)
        assert np.linalg.norm(pred.t) == pytest.approx(pred.distance)
    else:
        assert pred.distance is None
        assert np.linalg.norm(pred.t) == pytest.approx(1.0)


def test_parse_tolerates_prose_and_turns() -> None:
    text = (
        "<think>hmm</think><answer>Translation distance: 250 cm\n"
        "The camera moves right, unit vector (1, 0, 0)\n"
        "yaw = -10 degrees, pitch: 5, Roll=0</answer>"
    )
    pred = parse_pose(text)
    assert pred is not None and pred.distance == pytest.approx(2.5)
    assert pred.R == pytest.approx(ypr_to_rotation(-10, 5, 0).T)
    assert pred.t == pytest.approx(-pred.R @ [2.5, 0, 0])
    turns = ["Translation distance: 1 meters", "The camera moves left, unit vector (-1.00, +0.00, +0.00).", "Yaw=+0.0°, Pitch=+0.0°, Roll=+0.0°"]
    assert parse_pose(turns).t == pytest.approx([1.0, 0, 0])


def test_parse_needs_rotation_and_direction() -> None:
    assert parse_pose("Yaw=+1.0°, Pitch=+2.0°, Roll=+3.0°") is None
    assert parse_pose("unit vector (0, 0, 1)") is None
    assert parse_rotation("Yaw=1, Pitch=2") is None
    assert parse_direction("no vector") is None
    assert parse_distance("The camera moves left") is None
    assert parse_distance("Translation distance: -3 m") is None


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_parsers_never_raise(text: str) -> None:
    parse_pose(text)
    parse_pose([text, text])
    parse_rotation(text)
    parse_direction(text)
    parse_distance(text)


@pytest.mark.parametrize("value", [None, 3, 2.5, [1, 2], {"a": 1}])
def test_parse_non_text(value: object) -> None:
    assert parse_pose(value) is None


# --- metrics ------------------------------------------------------------------------------------


def test_translation_angle_sign_and_zero_length() -> None:
    t = np.array([1.0, 2.0, 3.0])
    assert translation_angle_deg(-t, t) == pytest.approx(0.0, abs=1e-6)
    assert translation_angle_deg(-t, t, signed=True) == pytest.approx(180.0)
    assert translation_angle_deg([1, 0, 0], [0, 0, 1]) == pytest.approx(90.0)
    assert translation_angle_deg([0, 0, 0], t) == 90.0
    assert translation_angle_deg(t, [0, 0, 0], signed=True) == 90.0


@settings(max_examples=100, deadline=None)
@given(
    errors=st.lists(
        st.tuples(st.one_of(st.floats(0, 180), st.sampled_from([0.0, 1.0, 3.0, 5.0, 15.0, 29.5, 30.0, 30.5, 180.0])), st.floats(0, 90)),
        min_size=1,
        max_size=40,
    ),
    tau=st.sampled_from([3, 5, 15, 30]),
)
def test_auc_matches_vggt(errors: list[tuple[float, float]], tau: int) -> None:
    r, t = (np.array(col, dtype=np.float64) for col in zip(*errors))
    expected, _ = calculate_auc_np(r, t, tau)
    assert pose_auc(r, t, tau) == pytest.approx(expected, abs=1e-12)


def test_auc_edges() -> None:
    # np.histogram's last bin is closed: an error of exactly 30 counts in the last bin, 30.01 does not.
    assert pose_auc(np.array([30.0]), np.array([0.0]), 30) == pytest.approx(1 / 30)
    assert pose_auc(np.array([30.01]), np.array([0.0]), 30) == 0.0
    assert pose_auc(np.array([0.0]), np.array([0.0]), 30) == 1.0
    assert math.isnan(pose_auc(np.zeros(0), np.zeros(0), 30))


def test_metrics_against_vggt_with_failures_flips_and_half_turns() -> None:
    rng = np.random.default_rng(0)
    R_gt = Rotation.random(6, random_state=1).as_matrix()
    t_gt = rng.normal(size=(6, 3))
    small = Rotation.from_rotvec([0, math.radians(4), 0]).as_matrix()
    half_turn = Rotation.from_rotvec([math.pi, 0, 0]).as_matrix()
    axis = np.cross(t_gt[5], [1.0, 0.0, 0.0])
    tilt = Rotation.from_rotvec(axis / np.linalg.norm(axis) * math.radians(4)).as_matrix()
    preds = [
        PosePrediction(R_gt[0], t_gt[0] * 3.0),  # exact (scale is ignored)
        PosePrediction(R_gt[1], -t_gt[1]),  # sign-flipped translation
        PosePrediction(R_gt[2] @ half_turn, t_gt[2]),  # 180 degree rotation error
        None,  # parse failure
        PosePrediction(small @ R_gt[4], t_gt[4]),  # 4 degrees off
        PosePrediction(R_gt[5], tilt @ t_gt[5]),  # translation 4 degrees off
    ]
    rot = np.array([0.0, 0.0, 180.0, 180.0, 4.0, 0.0])
    trans = np.array([0.0, 0.0, 0.0, 180.0, 0.0, 4.0])
    trans_signed = np.array([0.0, 180.0, 0.0, 180.0, 0.0, 4.0])
    errors = np.array([pair_errors(p, R, t) for p, R, t in zip(preds, R_gt, t_gt)])
    assert errors[:, 0] == pytest.approx(rot, abs=1e-5)
    assert errors[:, 1] == pytest.approx(trans, abs=1e-5)
    assert errors[:, 2] == pytest.approx(trans_signed, abs=1e-5)

    m = pose_metrics(preds, R_gt, t_gt)
    assert (m["n"], m["parsed"]) == (6, 5)
    for tau in (30, 15, 5, 3):
        assert m[f"auc{tau}"] == pytest.approx(calculate_auc_np(errors[:, 0], errors[:, 1], tau)[0])
        assert m[f"rra{tau}"] == pytest.approx(np.mean(errors[:, 0] < tau))
        assert m[f"rta{tau}"] == pytest.approx(np.mean(errors[:, 1] < tau))
    assert m["auc30_signed"] == pytest.approx(calculate_auc_np(errors[:, 0], errors[:, 2], 30)[0])
    assert m["rra5"] == pytest.approx(4 / 6) and m["rta3"] == pytest.approx(4 / 6)
    assert m["auc30_signed"] < m["auc30"]
    assert "dist_abs_rel" not in m


def test_metrics_distance_and_zero_translation() -> None:
    R = np.eye(3)
    t_gt = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    preds = [PosePrediction(R, np.array([0.0, 0.0, 3.0]), distance=3.0), PosePrediction(R, np.zeros(3), distance=0.5)]
    m = pose_metrics(preds, [R, R], t_gt)
    assert m["dist_abs_rel"] == pytest.approx(0.5)  # the pair with |t_gt| = 0 is left out
    assert m["dist_parsed"] == 1
    # zero-length translation -> 90 degrees: only the first pair is within 30
    assert m["rta30"] == pytest.approx(0.5)


def test_metrics_from_text_answers() -> None:
    T = pose_T(30, -5, 2, [1.0, 0.2, 2.0])
    pred = parse_pose(pose_answer(T, metric=True))
    m = pose_metrics([pred, parse_pose("garbage")], [T[:3, :3]] * 2, [T[:3, 3]] * 2)
    assert m["parsed"] == 1 and m["rra3"] == 0.5 and m["rta3"] == 0.5
    assert m["dist_abs_rel"] < 0.01


def test_metrics_input_errors() -> None:
    with pytest.raises(ValueError):
        pose_metrics([None], np.zeros((2, 3, 3)), np.zeros((2, 3)))
    bad = PosePrediction(np.full((3, 3), np.nan), np.ones(3))
    assert pair_errors(bad, np.eye(3), np.ones(3)) == (180.0, 180.0, 180.0)


# --- pair order: vlm3's T_cam2_from_cam1 and VGGT's T_cam1_from_cam2 --------------------------------


def _world_pose(rotvec: list[float], t: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """A camera-from-world pose (R, t) from a rotation vector in radians."""
    return Rotation.from_rotvec(rotvec).as_matrix(), np.asarray(t, dtype=np.float64)


def _sign_free_angle(u: np.ndarray, v: np.ndarray) -> float:
    return math.degrees(math.acos(min(1.0, abs(float(u @ v)) / (np.linalg.norm(u) * np.linalg.norm(v)))))


def test_pair_orders_differ_on_a_noisy_pair_as_the_closed_form_says() -> None:
    # Ground truth and a noisy prediction as camera-from-world poses of cameras 1 and 2.
    R1, t1 = _world_pose([0.1, -0.2, 0.05], [0.3, -0.1, 1.0])
    R2, t2 = _world_pose([0.0, 0.6, 0.1], [-1.2, 0.2, 0.8])
    R2p, t2p = _world_pose([0.15, 0.95, -0.1], [-1.0, 0.5, 1.1])  # camera 2 ~20 deg and ~0.4 m off
    C1, C2, C2p = -R1.T @ t1, -R2.T @ t2, -R2p.T @ t2p  # camera centres in the world

    # Independent closed form: the translation of T_b_from_a is a's centre in camera b's frame.
    trans_21 = _sign_free_angle(R2p @ C1 + t2p, R2 @ C1 + t2)  # T_cam2_from_cam1: camera 1's centre in camera 2
    trans_12 = _sign_free_angle(R1 @ C2p + t1, R1 @ C2 + t1)  # T_cam1_from_cam2: camera 2's centre in camera 1
    rot = math.degrees(Rotation.from_matrix((R2 @ R1.T).T @ (R2p @ R1.T)).magnitude())

    gt, pred = make_T(R2, t2) @ np.linalg.inv(make_T(R1, t1)), make_T(R2p, t2p) @ np.linalg.inv(make_T(R1, t1))
    p = PosePrediction(pred[:3, :3], pred[:3, 3])
    ours = pair_errors(p, gt[:3, :3], gt[:3, 3])
    vggt = pair_errors(p, gt[:3, :3], gt[:3, 3], pair_order="cam1_from_cam2")
    assert ours[0] == pytest.approx(rot, abs=1e-6) and vggt[0] == pytest.approx(rot, abs=1e-6)  # rotation: same in both
    assert ours[1] == pytest.approx(trans_21, abs=1e-6)
    assert vggt[1] == pytest.approx(trans_12, abs=1e-6)
    assert abs(ours[1] - vggt[1]) > 10  # the orders disagree by more than 10 degrees here

    # pair_in_order is the inverse transform; both orders are named in the metrics.
    R, t = pair_in_order(gt[:3, :3], gt[:3, 3], "cam1_from_cam2")
    assert make_T(R, t) == pytest.approx(np.linalg.inv(gt))
    line = {"pred": {"R": pred[:3, :3].tolist(), "t": pred[:3, 3].tolist(), "distance": None}, "gt": {"R": gt[:3, :3].tolist(), "t": gt[:3, 3].tolist()}}
    assert POSE.metrics([line])["pair_order"] == "cam2_from_cam1"
    m = POSE.metrics([line], options={"pair_order": "cam1_from_cam2"})
    assert m["pair_order"] == "cam1_from_cam2" and m["rta30"] == float(vggt[1] < 30)
    assert set(PAIR_ORDERS) == {"cam2_from_cam1", "cam1_from_cam2"}
    with pytest.raises(ValueError, match="cam1_from_cam2"):
        pose_metrics([p], [gt[:3, :3]], [gt[:3, 3]], pair_order="cam2_to_cam1")


# VGGT's relative pose error, ported to NumPy from facebookresearch/vggt evaluation/test_co3d.py
# (the same functions are in evaluation/test_relpose.py): build_pair_index, closed_form_inverse_se3
# (vggt/utils/geometry.py), rotation_angle, compare_translation_by_angle, translation_angle and
# se3_to_relative_pose_error. Poses are world-to-camera (camera-from-world) 4x4 matrices.


def _vggt_closed_form_inverse_se3(se3: np.ndarray) -> np.ndarray:
    R, T = se3[:, :3, :3], se3[:, :3, 3:]
    out = np.tile(np.eye(4), (len(R), 1, 1))
    out[:, :3, :3] = np.transpose(R, (0, 2, 1))
    out[:, :3, 3:] = -np.matmul(np.transpose(R, (0, 2, 1)), T)
    return out


def _vggt_relative_pose_errors(pred_se3: np.ndarray, gt_se3: np.ndarray, eps: float = 1e-15) -> tuple[np.ndarray, np.ndarray]:
    i1, i2 = np.triu_indices(len(gt_se3), 1)  # torch.combinations(arange(N), 2): (0,1), (0,2), ..., (1,2), ...
    rel_gt = gt_se3[i1] @ _vggt_closed_form_inverse_se3(gt_se3[i2])
    rel_pred = pred_se3[i1] @ _vggt_closed_form_inverse_se3(pred_se3[i2])
    q_pred = Rotation.from_matrix(rel_pred[:, :3, :3]).as_quat()
    q_gt = Rotation.from_matrix(rel_gt[:, :3, :3]).as_quat()
    loss_q = np.maximum(1 - np.sum(q_pred * q_gt, axis=1) ** 2, eps)
    r_err = np.degrees(np.arccos(1 - 2 * loss_q))
    t, t_gt = rel_pred[:, :3, 3], rel_gt[:, :3, 3]
    t = t / (np.linalg.norm(t, axis=1, keepdims=True) + eps)
    t_gt = t_gt / (np.linalg.norm(t_gt, axis=1, keepdims=True) + eps)
    loss_t = np.maximum(1.0 - np.sum(t * t_gt, axis=1) ** 2, eps)
    t_err = np.degrees(np.arccos(np.sqrt(1 - loss_t)))
    t_err = np.minimum(t_err, np.abs(180 - t_err))
    return r_err, t_err


def test_cam1_from_cam2_is_what_vggt_evaluation_computes() -> None:
    rng = np.random.default_rng(7)
    n_frames = 5
    gt_se3 = np.stack([make_T(Rotation.random(random_state=int(s)).as_matrix(), rng.normal(size=3)) for s in rng.integers(1 << 30, size=n_frames)])
    pred_se3 = gt_se3.copy()
    for k in range(n_frames):
        noise = Rotation.from_rotvec(rng.normal(size=3) * math.radians(8)).as_matrix()
        pred_se3[k] = make_T(noise @ gt_se3[k, :3, :3], gt_se3[k, :3, 3] + rng.normal(size=3) * 0.3)
    r_vggt, t_vggt = _vggt_relative_pose_errors(pred_se3, gt_se3)

    # vlm3 lines carry T_cam2_from_cam1 with camera 1 = VGGT's frame i1 and camera 2 = frame i2.
    i1, i2 = np.triu_indices(n_frames, 1)
    preds, R_gt, t_gt = [], [], []
    for a, b in zip(i1, i2):
        gt = gt_se3[b] @ np.linalg.inv(gt_se3[a])
        pred = pred_se3[b] @ np.linalg.inv(pred_se3[a])
        preds.append(PosePrediction(pred[:3, :3], pred[:3, 3]))
        R_gt.append(gt[:3, :3])
        t_gt.append(gt[:3, 3])
    vggt_order = np.array([pair_errors(p, R, t, pair_order="cam1_from_cam2") for p, R, t in zip(preds, R_gt, t_gt)])
    assert vggt_order[:, 0] == pytest.approx(r_vggt, abs=1e-4)
    assert vggt_order[:, 1] == pytest.approx(t_vggt, abs=1e-4)
    default_order = np.array([pair_errors(p, R, t) for p, R, t in zip(preds, R_gt, t_gt)])
    assert default_order[:, 0] == pytest.approx(r_vggt, abs=1e-4)
    assert np.max(np.abs(default_order[:, 1] - t_vggt)) > 1.0  # vlm3's default order is not VGGT's

    m = pose_metrics(preds, R_gt, t_gt, pair_order="cam1_from_cam2")
    for tau in (30, 15, 5, 3):
        assert m[f"auc{tau}"] == pytest.approx(calculate_auc_np(r_vggt, t_vggt, tau)[0])
