"""Relative camera pose of an image pair, asked as three packed questions.

Conventions follow ``vlm3.geometry.pose``: the labelled pose is ``T_cam2_from_cam1`` (4x4,
R = R_cam2_from_cam1, t), camera axes X right, Y down, Z forward. Everything is described from
camera 1's point of view:

- distance (metric datasets only): |c| in metres, c = centre of camera 2 in camera 1 —
  "Translation distance: 1.98 meters";
- direction: c / |c|, signed, 2 decimals, with words for components of magnitude >= 0.3 (else
  for the largest one): x < 0 left / > 0 right, y < 0 up / > 0 down, z > 0 forward / < 0
  backward — "The camera moves left, forward, unit vector (-0.69, +0.02, +0.72)."; a camera
  that does not move is "The camera does not move, unit vector (+0.00, +0.00, +0.00).";
- rotation: orientation of camera 2 in camera 1 (R^T) as intrinsic yaw -> pitch -> roll in
  degrees, 1 decimal (+yaw = turn right, +pitch = look up) — "Yaw=+89.6°, Pitch=+2.6°, Roll=+6.1°".

Metrics are those of VGGT / Depth-Anything-3: geodesic rotation error, translation direction
angle with the sign ambiguity removed, per-pair max, AUC of the 1-degree cumulative histogram.
They compare the relative transform named by the scoring option ``pair_order``: vlm3's default
``"cam2_from_cam1"`` (R, t of T_cam2_from_cam1, what the lines carry) or ``"cam1_from_cam2"``
(its inverse, R^T and -R^T t: VGGT's evaluation order). The rotation error is the same in both
orders; the translation angle differs once the rotation is wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm3 import plotting
from vlm3.geometry.pose import (
    camera2_center_in_cam1,
    relative_pose,
    rotation_angle_deg,
    rotation_to_ypr,
    t_from_center,
    ypr_to_rotation,
)
from vlm3.tasks.common import (
    as_float,
    assistant_turn,
    extract_answer,
    format_signed,
    mean_or_nan,
    normalise_text,
    parse_length,
    share,
    user_turn,
)
from vlm3.profiles import ZERO_SHOT_SETTINGS, ZERO_SHOT_SYSTEM, TaskProfile
from vlm3.tasks.base import Query, ScoreLine, Task, is_numeric, register, short

DISTANCE_QUESTION = "How far did the camera move between the first and the second image? Answer in meters."
DIRECTION_QUESTION = (
    "In which direction did the camera move from the first image to the second? Describe it in the first "
    "camera's frame (X right, Y down, Z forward) and give the unit vector."
)
ROTATION_QUESTION = (
    "How did the camera rotate from the first image to the second? Give yaw (turning right is positive), "
    "pitch (looking up is positive) and roll in degrees."
)

AUC_THRESHOLDS: tuple[int, ...] = (30, 15, 5, 3)
WORD_THRESHOLD = 0.3
FAILURE_ERROR_DEG = 180.0
# Which relative transform the metrics compare (scoring option ``pair_order``; see pair_in_order).
PAIR_ORDERS: tuple[str, ...] = ("cam2_from_cam1", "cam1_from_cam2")
DEFAULT_PAIR_ORDER = "cam2_from_cam1"
# Below this |c| (in the pose's units) the camera is taken as not moving.
_STILL = 1e-9

_FLOAT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_ANGLE = re.compile(rf"\b(yaw|pitch|roll)\b\s*(?:=|:|is|of)?\s*({_FLOAT})", re.IGNORECASE)
_TRIPLE = re.compile(rf"\(\s*({_FLOAT})\s*,\s*({_FLOAT})\s*,\s*({_FLOAT})\s*\)")
_DISTANCE = re.compile(r"distance\b(.*)", re.IGNORECASE)


# --- prompts and answers ------------------------------------------------------------------------


def pose_questions(metric: bool) -> list[str]:
    """The questions of one pair, in answer order (distance only for metric-scale data)."""
    return ([DISTANCE_QUESTION] if metric else []) + [DIRECTION_QUESTION, ROTATION_QUESTION]


def pose_prompt(metric: bool) -> str:
    """The packed user text: the questions numbered, one per line."""
    return "\n".join(f"{i}. {q}" for i, q in enumerate(pose_questions(metric), start=1))


def _check_T(T_cam2_from_cam1: np.ndarray) -> np.ndarray:
    T = np.asarray(T_cam2_from_cam1, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"T_cam2_from_cam1 must be a finite 4x4 matrix, got shape {T.shape}")
    return T


def motion_words(direction: Sequence[float]) -> list[str]:
    """Qualitative words for a unit direction in camera 1 (X right, Y down, Z forward)."""
    names = (("left", "right"), ("up", "down"), ("backward", "forward"))
    d = np.asarray(direction, dtype=np.float64).reshape(3)
    axes = [i for i in range(3) if abs(d[i]) >= WORD_THRESHOLD] or [int(np.argmax(np.abs(d)))]
    return [names[i][int(d[i] > 0)] for i in axes]


def distance_answer(T_cam2_from_cam1: np.ndarray) -> str:
    """"Translation distance: 1.98 meters" — distance between the camera centres (metric data)."""
    c = camera2_center_in_cam1(_check_T(T_cam2_from_cam1))
    return f"Translation distance: {np.linalg.norm(c):.2f} meters"


def direction_answer(T_cam2_from_cam1: np.ndarray) -> str:
    """"The camera moves left, forward, unit vector (-0.69, +0.02, +0.72)." (camera-1 frame)."""
    c = camera2_center_in_cam1(_check_T(T_cam2_from_cam1))
    norm = float(np.linalg.norm(c))
    if norm < _STILL:
        return "The camera does not move, unit vector (+0.00, +0.00, +0.00)."
    unit = [format_signed(v, 2) for v in c / norm]
    # Words follow the printed (rounded) vector so the sentence agrees with itself.
    words = motion_words([float(v) for v in unit])
    return f"The camera moves {', '.join(words)}, unit vector ({', '.join(unit)})."


def rotation_answer(T_cam2_from_cam1: np.ndarray) -> str:
    """"Yaw=+89.6°, Pitch=+2.6°, Roll=+6.1°" — camera 2's orientation in camera 1, degrees."""
    R = _check_T(T_cam2_from_cam1)[:3, :3]
    yaw, pitch, roll = rotation_to_ypr(R.T)
    return f"Yaw={format_signed(yaw, 1)}°, Pitch={format_signed(pitch, 1)}°, Roll={format_signed(roll, 1)}°"


def pose_answer(T_cam2_from_cam1: np.ndarray, metric: bool) -> str:
    """The packed assistant text: one answer per line, in :func:`pose_questions` order."""
    lines = [distance_answer(T_cam2_from_cam1)] if metric else []
    lines += [direction_answer(T_cam2_from_cam1), rotation_answer(T_cam2_from_cam1)]
    return "\n".join(lines)


# The released VLM3-pose questions (facebookresearch/VLM3 sample_data/pose_labels.json, verbatim),
# asked one at a time, in this order; the answers use the formats above (and the angle line).
RELEASE_POSE_QUESTIONS: dict[str, str] = {
    "rotation_angle": "Given these two images captured from different viewpoints, what is the relative rotation angle (in degrees) between the two camera poses?",
    "euler_natural": (
        "Treating the first image as the reference viewpoint, describe the camera's reorientation needed to reach the second image's "
        "viewpoint as yaw, pitch and roll about the first camera's local axes, applied intrinsically in the order yaw -> pitch -> roll.  "
        "Conventions: yaw is rotation about the vertical (down) axis, positive = turn right; pitch is about the lateral (right) axis "
        "after yaw, positive = look up; roll is about the optical (forward) axis after yaw and pitch, positive = bank to the right "
        "(image content rotates clockwise from the operator's POV)."
    ),
    "translation_direction": (
        "Where did the camera move, expressed in the first camera's local frame (X right, Y down, Z forward)?  "
        "Give a qualitative direction and the precise unit direction vector (x, y, z)."
    ),
    "translation_distance": "Estimate the magnitude of the camera translation between the two viewpoints.",
}

ZERO_SHOT_POSE_PROMPT = (
    "The two images show one scene from two camera positions. Describe how the camera moved from the first image to "
    "the second, in the first camera's frame (X right, Y down, Z forward). Answer in exactly these lines, filling in "
    "the values:\n{lines}\nThe unit vector is the direction from the first camera centre to the second; yaw, pitch "
    "and roll are in degrees, applied intrinsically in that order about the first camera's axes: positive yaw turns "
    "right, positive pitch looks up, positive roll banks to the right."
)


def rotation_angle_answer(T_cam2_from_cam1: np.ndarray) -> str:
    """"Rotation angle: 89.7 degrees" — the geodesic angle of the relative rotation."""
    R = _check_T(T_cam2_from_cam1)[:3, :3]
    return f"Rotation angle: {rotation_angle_deg(R, np.eye(3)):.1f} degrees"


def release_pose_parts(metric: bool) -> list[str]:
    """The released checkpoint's questions for one pair, in order (distance only for metric data)."""
    keys = ["rotation_angle", "euler_natural", "translation_direction"] + (["translation_distance"] if metric else [])
    return [RELEASE_POSE_QUESTIONS[k] for k in keys]


def release_pose_answer(T_cam2_from_cam1: np.ndarray, metric: bool) -> str:
    """The released checkpoint's answers to :func:`release_pose_parts`, one per line, in order."""
    lines = [rotation_angle_answer(T_cam2_from_cam1), rotation_answer(T_cam2_from_cam1), direction_answer(T_cam2_from_cam1)]
    return "\n".join(lines + ([distance_answer(T_cam2_from_cam1)] if metric else []))


def zero_shot_pose_prompt(metric: bool) -> str:
    """One question stating the conventions and the exact answer lines (distance for metric data)."""
    lines = (["Translation distance: <meters> meters"] if metric else []) + [
        "The camera moves <left/right, up/down, forward/backward>, unit vector (<x>, <y>, <z>).",
        "Yaw=<degrees>°, Pitch=<degrees>°, Roll=<degrees>°",
    ]
    return ZERO_SHOT_POSE_PROMPT.format(lines="\n".join(lines))


def pose_query(settings: Any, metric: bool, gt: Any = None, T_cam2_from_cam1: np.ndarray | None = None) -> Query:
    """The query of one pair in the wording of ``settings.profile`` (with its target answer when
    the pose is known): vlm3's packed questions, the released checkpoint's four separate ones
    (``Query.parts``), or the zero-shot question that states the conventions."""
    T = T_cam2_from_cam1
    fields = {"metric": bool(metric)}
    if settings.profile == "vlm3-release":
        parts = release_pose_parts(metric)
        answer = None if T is None else release_pose_answer(T, metric)
        return Query("\n".join(parts), answer, gt, None, fields, parts=parts)
    question = zero_shot_pose_prompt(metric) if settings.profile == "zero-shot" else pose_prompt(metric)
    return Query(question, None if T is None else pose_answer(T, metric), gt, None, fields)


def pose_messages(T_cam2_from_cam1: np.ndarray, metric: bool) -> list[dict]:
    """Chat messages (HF format): one user turn with both images and the packed questions."""
    return [user_turn(pose_prompt(metric), n_images=2), assistant_turn(pose_answer(T_cam2_from_cam1, metric))]


# --- parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PosePrediction:
    """A predicted T_cam2_from_cam1: rotation ``R`` (3x3) and translation ``t`` (3,).

    ``distance`` is the predicted distance between camera centres in metres, None when not
    given; ``t`` then has unit length (only its direction is meaningful).
    """

    R: np.ndarray
    t: np.ndarray
    distance: float | None = None


def parse_rotation(text: Any) -> np.ndarray | None:
    """R_cam2_from_cam1 from "Yaw=…, Pitch=…, Roll=…" (degrees), or None. Never raises."""
    try:
        angles: dict[str, float] = {}
        for name, value in _ANGLE.findall(normalise_text(text)):
            angles[name.lower()] = float(value)
        if len(angles) < 3 or not all(math.isfinite(v) for v in angles.values()):
            return None
        return ypr_to_rotation(angles["yaw"], angles["pitch"], angles["roll"]).T
    except Exception:  # a parser must never take an evaluation down
        return None


def parse_direction(text: Any) -> np.ndarray | None:
    """Unit direction of camera 2's centre in camera 1 from the last ``(x, y, z)``, or None.

    The vector is renormalised; a zero vector (no motion) is returned as zeros.
    """
    try:
        triples = _TRIPLE.findall(normalise_text(text))
        if not triples:
            return None
        v = np.array([float(x) for x in triples[-1]], dtype=np.float64)
        norm = float(np.linalg.norm(v))
        if not math.isfinite(norm):
            return None
        return v / norm if norm > 0 else np.zeros(3)
    except Exception:  # a parser must never take an evaluation down
        return None


def parse_distance(text: Any) -> float | None:
    """Distance in metres from the last line mentioning "distance", or None (also if negative)."""
    try:
        lines = [m.group(1) for m in _DISTANCE.finditer(normalise_text(text))]
        value = parse_length(lines[-1]) if lines else None
        return value if value is not None and value >= 0 else None
    except Exception:  # a parser must never take an evaluation down
        return None


def parse_pose(text: Any) -> PosePrediction | None:
    """A :class:`PosePrediction` from raw answer text (or several texts, one per turn), or None.

    Needs both the rotation and the direction; the distance is optional. The translation is
    t = -R @ c with c = direction * distance, or the unit direction when no distance is given.
    """
    try:
        texts = [text] if isinstance(text, str) else list(text)
        span = "\n".join(extract_answer(t) for t in texts)
        R = parse_rotation(span)
        direction = parse_direction(span)
        if R is None or direction is None:
            return None
        distance = parse_distance(span)
        c = direction * (distance if distance is not None else 1.0)
        return PosePrediction(R=R, t=t_from_center(R, c), distance=distance)
    except Exception:  # a parser must never take an evaluation down
        return None


# --- metrics ------------------------------------------------------------------------------------


def rotation_error_deg(R_pred: np.ndarray, R_gt: np.ndarray) -> float:
    """Geodesic angle between two rotations, degrees in [0, 180]."""
    return rotation_angle_deg(R_gt, R_pred)


def translation_angle_deg(t_pred: np.ndarray, t_gt: np.ndarray, *, signed: bool = False) -> float:
    """Angle between two translation directions in degrees.

    Sign-invariant by default (min(a, 180 - a), in [0, 90]) as in VGGT; ``signed=True`` gives
    the plain angle in [0, 180]. A zero-length vector (gt or pred) has no direction and scores
    90 degrees either way — what VGGT's eps-normalisation yields.
    """
    a = np.asarray(t_pred, dtype=np.float64).reshape(3)
    b = np.asarray(t_gt, dtype=np.float64).reshape(3)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if not (na > 0 and nb > 0) or not (math.isfinite(na) and math.isfinite(nb)):
        return 90.0
    angle = math.degrees(math.acos(float(np.clip(a @ b / (na * nb), -1.0, 1.0))))
    return angle if signed else min(angle, 180.0 - angle)


def pose_auc(rot_err: np.ndarray, trans_err: np.ndarray, max_threshold: int) -> float:
    """VGGT's ``calculate_auc_np``: mean cumulative share of max(rot, trans) in 1-degree bins.

    Bins are [0, 1), [1, 2), …, [τ-1, τ]; as with ``np.histogram`` the last bin includes τ, and
    errors above τ fall outside every bin. NaN for no pairs.
    """
    errors = np.maximum(np.asarray(rot_err, dtype=np.float64), np.asarray(trans_err, dtype=np.float64))
    if errors.size == 0:
        return float("nan")
    histogram, _ = np.histogram(errors, bins=np.arange(max_threshold + 1))
    return float(np.mean(np.cumsum(histogram.astype(np.float64) / errors.size)))


def check_pair_order(pair_order: str) -> str:
    """``pair_order`` if it is one of :data:`PAIR_ORDERS`, else ValueError naming the choices."""
    if pair_order not in PAIR_ORDERS:
        raise ValueError(f"pair_order must be one of {', '.join(PAIR_ORDERS)}, got {pair_order!r}")
    return pair_order


def pair_in_order(R_cam2_from_cam1: np.ndarray, t_cam2_from_cam1: np.ndarray, pair_order: str = DEFAULT_PAIR_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) of the relative transform that ``pair_order`` names, from those of T_cam2_from_cam1.

    - ``"cam2_from_cam1"`` (vlm3's default): T_cam2_from_cam1 = T_cam2_from_world @ T_world_from_cam1,
      returned as given.
    - ``"cam1_from_cam2"``: its inverse T_cam1_from_cam2 = T_cam1_from_world @ T_world_from_cam2,
      i.e. (R^T, -R^T t); t is then camera 2's centre in camera 1. This is VGGT's evaluation order:
      ``se3_to_relative_pose_error`` (evaluation/test_co3d.py, test_relpose.py) composes
      ``se3[i1] @ closed_form_inverse_se3(se3[i2])`` from world-to-camera poses with i1 < i2.
    """
    R = np.asarray(R_cam2_from_cam1, dtype=np.float64).reshape(3, 3)
    t = np.asarray(t_cam2_from_cam1, dtype=np.float64).reshape(3)
    if check_pair_order(pair_order) == "cam2_from_cam1":
        return R, t
    return R.T, -R.T @ t


def pair_errors(
    pred: PosePrediction | None, R_gt: np.ndarray, t_gt: np.ndarray, *, pair_order: str = DEFAULT_PAIR_ORDER
) -> tuple[float, float, float]:
    """(rotation error, sign-invariant translation angle, signed translation angle) in degrees.

    ``pred`` and (``R_gt``, ``t_gt``) are T_cam2_from_cam1; both are first put in ``pair_order``
    (:func:`pair_in_order`). An unparsed pair (None) or a non-finite prediction scores 180
    degrees for all three.
    """
    check_pair_order(pair_order)
    if pred is None:
        return FAILURE_ERROR_DEG, FAILURE_ERROR_DEG, FAILURE_ERROR_DEG
    R, t = np.asarray(pred.R, dtype=np.float64), np.asarray(pred.t, dtype=np.float64)
    if R.shape != (3, 3) or t.size != 3 or not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
        return FAILURE_ERROR_DEG, FAILURE_ERROR_DEG, FAILURE_ERROR_DEG
    R, t = pair_in_order(R, t, pair_order)
    R_gt, t_gt = pair_in_order(R_gt, t_gt, pair_order)
    return (
        rotation_error_deg(R, R_gt),
        translation_angle_deg(t, t_gt),
        translation_angle_deg(t, t_gt, signed=True),
    )


def pose_metrics(
    preds: Sequence[PosePrediction | None],
    R_gt: Sequence[np.ndarray] | np.ndarray,
    t_gt: Sequence[np.ndarray] | np.ndarray,
    *,
    pair_order: str = DEFAULT_PAIR_ORDER,
) -> dict[str, Any]:
    """Pose metrics over pairs, all shares in [0, 1] (papers print them x100).

    ``R_gt`` (n, 3, 3) and ``t_gt`` (n, 3) are the labelled T_cam2_from_cam1, and predictions
    are too; errors compare the transform ``pair_order`` names (:func:`pair_in_order`:
    ``"cam2_from_cam1"``, the default, or ``"cam1_from_cam2"``, VGGT's evaluation order), which
    the result states as ``pair_order``. Unparsed pairs
    (None) get 180 degrees for rotation and translation. Keys: ``n``, ``parsed``, ``pair_order``, ``auc30``,
    ``auc15``, ``auc5``, ``auc3`` (sign-invariant translation), ``rraτ`` / ``rtaτ`` (share of
    pairs with error < τ, τ in 30, 15, 5, 3), ``auc30_signed`` (AUC@30 with the signed
    translation angle), and — when some prediction carries a distance — ``dist_abs_rel``, the
    mean |d - |t_gt|| / |t_gt| over those predictions (pairs with |t_gt| = 0 left out), and
    ``dist_parsed``, their count. A zero-length translation (gt or predicted, e.g. "does not
    move") has no direction and scores 90 degrees, as in VGGT.
    """
    R_gt = np.asarray(R_gt, dtype=np.float64).reshape(-1, 3, 3)
    t_gt = np.asarray(t_gt, dtype=np.float64).reshape(-1, 3)
    n = len(preds)
    if R_gt.shape[0] != n or t_gt.shape[0] != n:
        raise ValueError(f"{n} predictions for {R_gt.shape[0]} rotations and {t_gt.shape[0]} translations")
    check_pair_order(pair_order)
    errors = np.array([pair_errors(p, R, t, pair_order=pair_order) for p, R, t in zip(preds, R_gt, t_gt)], dtype=np.float64).reshape(-1, 3)
    rot, trans, trans_signed = errors[:, 0], errors[:, 1], errors[:, 2]
    out: dict[str, Any] = {"n": n, "parsed": sum(p is not None for p in preds), "pair_order": pair_order}
    for tau in AUC_THRESHOLDS:
        out[f"auc{tau}"] = pose_auc(rot, trans, tau)
    for tau in AUC_THRESHOLDS:
        out[f"rra{tau}"] = share(rot < tau, n)
        out[f"rta{tau}"] = share(trans < tau, n)
    out["auc30_signed"] = pose_auc(rot, trans_signed, 30)
    rel = []
    for pred, t in zip(preds, t_gt):
        distance = None if pred is None else as_float(pred.distance)
        gt_distance = float(np.linalg.norm(t))
        if distance is not None and gt_distance > 0:
            rel.append(abs(distance - gt_distance) / gt_distance)
    if any(p is not None and p.distance is not None for p in preds):
        out["dist_abs_rel"] = mean_or_nan(rel)
        out["dist_parsed"] = len(rel)
    return out


# --- the task -----------------------------------------------------------------------------------


def _prediction(value: dict[str, Any] | None) -> PosePrediction | None:
    return None if value is None else PosePrediction(np.asarray(value["R"]), np.asarray(value["t"]), value.get("distance"))


ROTATION_ATOL = 1e-3  # `vlm3 score pose`: a rotation has |R^T R - I| and |det R - 1| within this


def _score_rotation(line: ScoreLine, key: str, value: Any) -> np.ndarray:
    """``value`` as a 3x3 rotation matrix, or an error naming the line (within :data:`ROTATION_ATOL`)."""
    R = line.array(key, (3, 3), value)
    off = float(np.abs(R.T @ R - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if off > ROTATION_ATOL or abs(det - 1.0) > ROTATION_ATOL:
        raise line.error(
            f'"{key}" is not a rotation matrix (R^T R = I and det R = 1 within {ROTATION_ATOL:g}; '
            f"here max |R^T R - I| = {off:.3g}, det R = {det:.6g})"
        )
    return R


class PoseTask(Task):
    """Relative pose of an image pair whose views both have poses.

    ``gt`` and ``pred`` are ``{"R": 3x3, "t": [3]}`` of T_cam2_from_cam1 (``pred`` also has
    ``distance``, metres or None; ``t`` has unit length without a distance).
    """

    name = "pose"
    profiles = {
        # inference.ipynb: both images at f = 750 px (fx and fy), four questions asked one at a
        # time (rotation angle, yaw/pitch/roll, direction, distance), 512 new tokens each.
        "vlm3-release": TaskProfile({"unify": True, "focal": 750.0, "focal_axes": "xy", "size_multiple": None}, max_new_tokens=512),
        "zero-shot": TaskProfile(ZERO_SHOT_SETTINGS, max_new_tokens=512, system=ZERO_SHOT_SYSTEM),
    }
    description = "relative camera pose of an image pair: distance, direction, yaw/pitch/roll"
    n_images = 2
    label_prefix = "pair"
    headline = "auc30"
    max_new_tokens = 96
    score_format = '{"pred": answer text | {"R": 3x3, "t": [3], "distance"?} | null, "R_gt": 3x3, "t_gt": [3]} (T_cam2_from_cam1, OpenCV axes)'
    scoring_options = ("pair_order",)

    def has_labels(self, record) -> bool:
        return len(record.views) == 2 and all(v.T_cam_from_world is not None for v in record.views)

    def build(self, view, settings, rng, labels):
        rec = view.record
        T = relative_pose(rec.views[0].pose, rec.views[1].pose)
        gt = {"R": T[:3, :3].tolist(), "t": T[:3, 3].tolist()}
        query = pose_query(settings, rec.metric_scale, gt, T)
        if settings.profile == "vlm3":
            return pose_messages(T, rec.metric_scale), [query]
        questions, answers = query.parts or [query.question], query.answer.split("\n") if query.parts else [query.answer]
        messages = []
        for i, (q, a) in enumerate(zip(questions, answers)):
            messages += [user_turn(q, n_images=2 if i == 0 else 0), assistant_turn(a)]
        return messages, [query]

    def prompts(self, settings) -> list[str]:
        moved = np.eye(4)
        moved[:3, :3] = ypr_to_rotation(30.0, -5.0, 2.0).T
        moved[:3, 3] = -moved[:3, :3] @ np.array([-0.69, 0.02, 0.72])
        if settings.profile == "vlm3-release":
            return [*release_pose_parts(True), release_pose_answer(np.eye(4), True), release_pose_answer(moved, True)]
        if settings.profile == "zero-shot":
            return [zero_shot_pose_prompt(True), zero_shot_pose_prompt(False), pose_answer(moved, True)]
        return [pose_prompt(True), pose_prompt(False), pose_answer(np.eye(4), True), pose_answer(moved, True)]

    def read(self, raw, query, sample):
        p = parse_pose(raw)
        return None if p is None else {"R": np.asarray(p.R).tolist(), "t": np.asarray(p.t).tolist(), "distance": p.distance}

    def metrics(self, lines, options=None):
        """Pose metrics; ``options["pair_order"]`` (default ``"cam2_from_cam1"``) picks the order
        the pairs are compared in (:func:`pair_in_order`), and the result names it."""
        pair_order = (options or {}).get("pair_order") or DEFAULT_PAIR_ORDER
        preds = [_prediction(line["pred"]) for line in lines]
        m = pose_metrics(preds, [line["gt"]["R"] for line in lines], [line["gt"]["t"] for line in lines], pair_order=pair_order)
        return {**m, "failed": m["n"] - m["parsed"]}

    def score_line(self, line: ScoreLine, n_coords: int) -> dict[str, Any]:
        pred = line.get("pred")
        if isinstance(pred, str):
            value = self.read(pred, None, None)
        elif pred is None:
            value = None
        elif isinstance(pred, dict):
            for key in ("R", "t"):
                if key not in pred:
                    raise line.error(f'"pred" object is missing key "{key}"')
            distance = pred.get("distance")
            if distance is not None and (as_float(distance) is None or not is_numeric(distance)):
                raise line.error(f'"pred.distance" must be a finite number, got {short(distance)}')
            value = {
                "R": _score_rotation(line, "pred.R", pred["R"]).tolist(),
                "t": line.array("pred.t", (3,), pred["t"]).tolist(),
                "distance": None if distance is None else as_float(distance),
            }
        else:
            raise line.error(f'"pred" must be answer text, an object {{"R", "t"}} or null, got {short(pred)}')
        t_gt = line.array("t_gt", (3,))
        if not np.linalg.norm(t_gt) > 0:
            raise line.error('"t_gt" is a zero vector: the translation direction is undefined (give a pair whose cameras moved)')
        gt = {"R": _score_rotation(line, "R_gt", line.get("R_gt")).tolist(), "t": t_gt.tolist()}
        return {"pred": value, "gt": gt, "parsed": value is not None}

    def plots(self, folder, lines):
        errors = np.array([pair_errors(_prediction(line["pred"]), np.asarray(line["gt"]["R"]), np.asarray(line["gt"]["t"]))[:2] for line in lines]).reshape(-1, 2)
        rot, trans = errors[:, 0], errors[:, 1]
        fig = plotting.figure()
        ax = fig.add_subplot()
        x = np.linspace(0, 180, 721)
        for values, label in ((rot, "rotation"), (trans, "translation direction (sign-free)"), (np.maximum(rot, trans), "max (AUC)")):
            ax.plot(x, [(values <= t).mean() for t in x], label=label)
        ax.axvline(30, color="k", ls="--", lw=1)
        ax.set_xlabel("error (degrees; failures at 180)")
        ax.set_ylabel("share of pairs")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right")
        ax.set_title(f"pose error CDF over {len(lines)} pairs")
        return [(plotting.save(fig, folder, "pose_error_cdf.png"), "pose error CDF")]

    def example(self, record, images, lines):
        fig, ax = plotting.image_axes(plotting.side_by_side(images), width=8, extra_height=0.9)
        line = lines[0]
        R, t = np.asarray(line["gt"]["R"]), np.asarray(line["gt"]["t"])
        g = rotation_to_ypr(R.T)
        text = f"gt yaw/pitch/roll {g[0]:+.1f}/{g[1]:+.1f}/{g[2]:+.1f} deg, distance {np.linalg.norm(R.T @ t):.2f} m"
        if line["pred"] is not None:
            p = rotation_to_ypr(np.asarray(line["pred"]["R"]).T)
            d = line["pred"].get("distance")
            text += f"; pred {p[0]:+.1f}/{p[1]:+.1f}/{p[2]:+.1f} deg" + (f", {d:.2f} m" if d is not None else "")
        else:
            text += "; pred unparsed"
        ax.set_title(f"{record.id}\n{text}", fontsize=8)
        return fig


POSE = register(PoseTask())
