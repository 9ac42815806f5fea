"""The ``vlm3-release`` profile reproduces the official VLM3 sample labels exactly.

Values below are copied from facebookresearch/VLM3 ``sample_data/{depth,pose,pixel_corr,spatialrgpt}_labels.json``
(the files the release notebook ``inference.ipynb`` reads): resized image sizes and intrinsics,
normalised coordinates, prompt texts and answer texts. Each is recomputed here from the ORIGINAL
image geometry through vlm3's own sample builder under the profile.
"""

from __future__ import annotations

import numpy as np
import pytest

from vlm3.data.records import DepthLabels, Matches, Object3D, Record, View
from vlm3.geometry.pose import rotation_angle_deg, ypr_to_rotation
from vlm3.profiles import ProfileError, choose_profile, profile_of_checkpoint, profile_settings, task_profile
from vlm3.settings import Settings, SettingsError, make_settings
from vlm3.tasks import get_task
from vlm3.tasks.common import view_text_coords
from vlm3.tasks.correspondence import parse_release_point
from vlm3.tasks.depth import parse_release_depth
from vlm3.tasks.object3d import QUALITATIVE_QUESTIONS, parse_object_answer
from vlm3.tasks.pose import release_pose_answer
from vlm3.tasks.samples import build_sample


def release(task: str) -> Settings:
    return make_settings(profile_settings("vlm3-release", get_task(task)))


def blank(width: int, height: int) -> np.ndarray:
    return np.zeros((height, width, 3), dtype=np.uint8)


# --- depth: sample_data/depth_labels.json --------------------------------------------------------

DEPTH_SIZE = (1215, 920)
DEPTH_K = (1000.0, 1000.0, 609.0563212371728, 458.13176440200186)
# (pixel_coord_resized, pixel_coord_normalized_2000, depth_meters): the file's first 12 samples and two more.
DEPTH_SAMPLES = [
    ((10, 488), (16, 1061), 14.007801910724202),
    ((191, 119), (314, 259), 8.721148387839039),
    ((710, 320), (1169, 696), 17.79998675482096),
    ((223, 406), (367, 883), 8.601240798995265),
    ((1182, 773), (1946, 1680), 6.446899463493242),
    ((481, 513), (792, 1115), 15.669342156048517),
    ((423, 359), (696, 780), 3.165267509544021),
    ((1166, 467), (1919, 1015), 127.90728859254857),
    ((667, 514), (1098, 1117), 16.22504659158102),
    ((879, 411), (1447, 893), 31.625245121343976),
    ((669, 425), (1101, 924), 12.253752228027526),
    ((32, 445), (53, 967), 13.686091509495197),
    ((0, 410), (0, 891), 14.21241843744981),
    ((1179, 485), (1941, 1054), 45.509034775143064),
]


def test_depth_release_sample_reproduces():
    settings = release("depth")
    rec = Record(
        id="depth_sample",
        dataset="vlm3-release",
        views=[View(image="depth.jpeg", intrinsics=[*DEPTH_K, *DEPTH_SIZE])],
        # vlm3 pixels are continuous: integer pixel i of the file is the centre i + 0.5.
        depth=DepthLabels(pixels=[(x + 0.5, y + 0.5) for (x, y), _, _ in DEPTH_SAMPLES], depth=[d for *_, d in DEPTH_SAMPLES], depth_type="range"),
    )
    sample = build_sample(rec, [blank(*DEPTH_SIZE)], "depth", settings)
    assert sample.images[0].size == DEPTH_SIZE
    K = sample.view.record.views[0].K
    assert (K.fx, K.fy, K.cx, K.cy) == pytest.approx(DEPTH_K, abs=1e-9)
    for q, (_, norm, d) in zip(sample.queries, DEPTH_SAMPLES, strict=True):
        assert tuple(q.fields["coords"]) == norm
        assert q.question == (
            f"Given this image, how far is the point at coordinates ({norm[0]}, {norm[1]}) from the camera? The coordinates are "
            "in normalised [0, 2000] format relative to image width and height. Output the thinking process in <think> "
            "</think> and final answer (the meter number only, without the unit) in <answer> </answer> tags."
        )
        assert parse_release_depth(q.answer) == pytest.approx(round(d, 2))
    tp = task_profile("vlm3-release", get_task("depth"))
    assert (tp.max_new_tokens, tp.require) == (256, "</answer>")
    # The notebook's parser: a bare number between the tags, nothing else.
    assert parse_release_depth("<think> far </think>\n\n<answer> 2.35 </answer>") == 2.35
    assert parse_release_depth("<answer> 2.35 meters </answer>") is None
    assert parse_release_depth("2.35") is None


# --- pose: sample_data/pose_labels.json ----------------------------------------------------------

POSE_ORIGINAL = (1752, 1168)
POSE_RESIZED = (2830, 1884)
POSE_K_RESIZED = (750.0, 750.0, 1414.970085501263, 942.1565986220934)
POSE_GT = {"rotation_angle_deg": 89.6547345694857, "yaw_deg": 89.60077227075526, "pitch_deg": 2.598684372865458, "roll_deg": 6.072327841623985,
           "unit": (-0.69, +0.02, +0.72), "translation_distance_m": 1.9806591332884265}
POSE_QA = [
    ("Given these two images captured from different viewpoints, what is the relative rotation angle (in degrees) between the two camera poses?",
     "Rotation angle: 89.7 degrees"),
    ("Treating the first image as the reference viewpoint, describe the camera's reorientation needed to reach the second image's viewpoint as yaw, "
     "pitch and roll about the first camera's local axes, applied intrinsically in the order yaw -> pitch -> roll.  Conventions: yaw is rotation "
     "about the vertical (down) axis, positive = turn right; pitch is about the lateral (right) axis after yaw, positive = look up; roll is about "
     "the optical (forward) axis after yaw and pitch, positive = bank to the right (image content rotates clockwise from the operator's POV).",
     "Yaw=+89.6\u00b0, Pitch=+2.6\u00b0, Roll=+6.1\u00b0"),
    ("Where did the camera move, expressed in the first camera's local frame (X right, Y down, Z forward)?  Give a qualitative direction and the "
     "precise unit direction vector (x, y, z).",
     "The camera moves left, forward, unit vector (-0.69, +0.02, +0.72)."),
    ("Estimate the magnitude of the camera translation between the two viewpoints.", "Translation distance: 1.98 meters"),
]


def pose_T() -> np.ndarray:
    """T_cam2_from_cam1 from the file's yaw/pitch/roll (camera 2's orientation in camera 1) and motion."""
    R = ypr_to_rotation(POSE_GT["yaw_deg"], POSE_GT["pitch_deg"], POSE_GT["roll_deg"]).T
    unit = np.array(POSE_GT["unit"]) / np.linalg.norm(POSE_GT["unit"])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ (unit * POSE_GT["translation_distance_m"])
    return T


def test_pose_release_conventions_match_the_sample():
    T = pose_T()
    # The file's rotation angle follows from its yaw/pitch/roll only if vlm3 composes them as it does.
    assert rotation_angle_deg(T[:3, :3], np.eye(3)) == pytest.approx(POSE_GT["rotation_angle_deg"], abs=1e-6)
    assert release_pose_answer(T, True).split("\n") == [a for _, a in POSE_QA]


def test_pose_release_sample_reproduces():
    # The undistorted DSLR's principal point is the image centre (876, 584); fx and fy follow from
    # the file's resized principal point (cx' = cx * 750 / fx).
    fx = 750.0 * 876.0 / POSE_K_RESIZED[2]
    fy = 750.0 * 584.0 / POSE_K_RESIZED[3]
    K = [fx, fy, 876.0, 584.0, *POSE_ORIGINAL]
    T1 = np.eye(4)
    rec = Record(
        id="pose_sample", dataset="scannetppv2",
        views=[View(image="pose_img1.jpeg", intrinsics=K, T_cam_from_world=T1.tolist()), View(image="pose_img2.jpeg", intrinsics=K, T_cam_from_world=pose_T().tolist())],
    )
    sample = build_sample(rec, [blank(*POSE_ORIGINAL)] * 2, "pose", release("pose"))
    assert [im.size for im in sample.images] == [POSE_RESIZED] * 2
    for view in sample.view.record.views:
        assert (view.K.fx, view.K.fy, view.K.cx, view.K.cy) == pytest.approx(POSE_K_RESIZED, abs=1e-9)
    (query,) = sample.queries
    assert query.parts == [q for q, _ in POSE_QA]
    assert query.answer.split("\n") == [a for _, a in POSE_QA]
    pred = get_task("pose").read(query.answer, query, sample)
    assert np.allclose(pred["R"], query.gt["R"], atol=2e-3)
    assert pred["distance"] == pytest.approx(1.98)
    assert task_profile("vlm3-release", get_task("pose")).max_new_tokens == 512


# --- correspondence: sample_data/pixel_corr_labels.json ------------------------------------------

CORR_ORIGINAL = (600, 400)
CORR_RESIZED = (1024, 683)
# (img1_pixel_orig, img2_pixel_orig, img1_norm_1000, img2_norm_1000, img2_pixel_in_resized) of the first entries.
CORR = [
    ((264.0, 24.0), (202.85787963867188, 20.815250396728516), (440.0, 59.971), (338.096, 52.013), (346.211, 35.525)),
    ((176.0, 32.0), (112.13331604003906, 28.154884338378906), (293.333, 79.961), (186.889, 70.353), (191.374, 48.051)),
    ((296.0, 32.0), (235.70108032226562, 29.229501724243164), (493.333, 79.961), (392.835, 73.038), (402.263, 49.885)),
    ((472.0, 40.0), (410.04901123046875, 38.648502349853516), (786.667, 99.951), (683.415, 96.574), (699.817, 65.96)),
    ((88.0, 120.0), (22.356443405151367, 118.81198120117188), (146.667, 299.854), (37.261, 296.885), (38.155, 202.772)),
]
CORR_PROMPT_0 = (
    "Given these two images, what pixel in the second image corresponds to pixel (440, 60) in the first image? Report the answer as (x, y)."
    ' Please think step by step and follow the format: "<think> [think process] </think>\n\n[answer]".'
)


def test_correspondence_release_sample_reproduces():
    K = [500.0, 500.0, 300.0, 200.0, *CORR_ORIGINAL]  # ETH3D's focal is not used: no focal step
    rec = Record(
        id="corr_sample", dataset="eth3d",
        views=[View(image="pixel_corr_img1.jpeg", intrinsics=K), View(image="pixel_corr_img2.jpeg", intrinsics=K)],
        # The file's pixels are indices (pixel i at i); vlm3's are continuous (its centre at i + 0.5).
        matches=Matches(pixels0=[(a + 0.5, b + 0.5) for (a, b), *_ in CORR], pixels1=[(a + 0.5, b + 0.5) for _, (a, b), *_ in CORR]),
    )
    settings = release("correspondence")
    sample = build_sample(rec, [blank(*CORR_ORIGINAL)] * 2, "correspondence", settings)
    assert [im.size for im in sample.images] == [CORR_RESIZED] * 2
    assert sample.queries[0].question == CORR_PROMPT_0
    for q, (_, _, norm1, norm2, resized2) in zip(sample.queries, CORR, strict=True):
        assert q.fields["coords"] == [int(round(v)) for v in norm1]
        # The ground truth in the profile's units, exactly as the file writes it (3 decimals).
        gt_view = sample.view.transforms[1].forward(np.array([q.gt]))
        assert np.round(view_text_coords(sample.view, 1, gt_view, settings)[0], 3).tolist() == list(norm2)
        assert np.round(gt_view[0] - 0.5 * sample.view.transforms[1].sx, 3).tolist() == list(resized2)
        # An exact answer in the file's units reads back as the original pixel.
        pred = get_task("correspondence").read(f"<think> ... </think>\n\n({norm2[0]}, {norm2[1]})", q, sample)
        assert pred == pytest.approx(q.gt, abs=2e-3)
    assert parse_release_point("<think> (1, 2) </think>\n\n(338, 52)") == (338.0, 52.0)
    tp = task_profile("vlm3-release", get_task("correspondence"))
    assert (tp.max_new_tokens, tp.require) == (2048, "</think>")


# --- object: sample_data/spatialrgpt_labels.json -------------------------------------------------

OBJ_ORIGINAL = (1024, 768)
OBJ_RESIZED = (1134, 851)
OBJ_K = (902.4662475585938, 901.3929443359375, 511.38848876953125, 383.7367858886719)
OBJ_K_RESIZED = (1000.0, 998.8106998731977, 566.6566369135359, 425.2090168765644)
# The boxes in original pixels are not in the file; these are the integer boxes consistent with both
# of its fields (bbox_resized_pixels = round(box * s), bbox_normalized_1000 = round(box / size * 1000)).
OBJ_BOXES = [(0, 30, 668, 767), (6, 292, 233, 432)]
OBJ_RESIZED_PX = [(0, 33, 740, 850), (7, 324, 258, 479)]
OBJ_NORM = [(0, 39, 652, 999), (6, 380, 228, 562)]
OBJ_PROMPT = "Can you confirm if bounding box region (0, 39, 652, 999) is smaller than bounding box region (6, 380, 228, 562)?"
OBJ_ANSWER = "Incorrect, bounding box region (0, 39, 652, 999) is not smaller in size than bounding box region (6, 380, 228, 562)."


def test_object_release_sample_reproduces():
    eye = np.eye(3).tolist()
    rec = Record(
        id="spatialrgpt_sample", dataset="spatialrgpt-bench",
        views=[View(image="spatialrgpt.jpeg", intrinsics=[*OBJ_K, *OBJ_ORIGINAL])],
        objects=[
            Object3D(name="lamp", center=(-0.5, 0.0, 3.0), size=(1.0, 1.5, 1.0), R_cam_from_box=eye, box2d=OBJ_BOXES[0]),
            Object3D(name="television", center=(-1.0, 0.0, 3.5), size=(0.6, 0.4, 0.1), R_cam_from_box=eye, box2d=OBJ_BOXES[1]),
        ],
    )
    sample = build_sample(rec, [blank(*OBJ_ORIGINAL)], "object", release("object"))
    assert sample.images[0].size == OBJ_RESIZED
    K = sample.view.record.views[0].K
    assert (K.fx, K.fy, K.cx, K.cy) == pytest.approx(OBJ_K_RESIZED, abs=1e-9)
    assert [tuple(int(round(v)) for v in o.box2d) for o in sample.view.record.objects] == OBJ_RESIZED_PX
    a, b = (f"bounding box region ({', '.join(map(str, box))})" for box in OBJ_NORM)
    (small,) = [q for q in sample.queries if q.question == f"Is {a} smaller than {b}?"]
    assert small.gt is False  # the lamp is not smaller than the television
    # The file's wording is one of vlm3's question templates, with the same boxes.
    assert QUALITATIVE_QUESTIONS[1].format(a=a, rel="smaller than", b=b) == OBJ_PROMPT
    assert parse_object_answer(OBJ_ANSWER, "qualitative") is False
    assert task_profile("vlm3-release", get_task("object")).max_new_tokens == 512


# --- choosing a profile --------------------------------------------------------------------------


def test_released_checkpoints_select_their_profile():
    for hub_id in ("facebook/VLM3-depth", "facebook/VLM3-pose", "facebook/VLM3-corr", "facebook/VLM3-object", "/models/hf/facebook/VLM3-corr"):
        assert profile_of_checkpoint(hub_id) == "vlm3-release"
    assert profile_of_checkpoint("facebook/DepthLM") == "depthlm"
    assert profile_of_checkpoint("Qwen/Qwen3-VL-4B-Instruct") is None
    chosen = choose_profile(flag=None, stated=None, stated_where=None, model_ids=["facebook/VLM3-depth"], model="facebook/VLM3-depth")
    assert (chosen.name, chosen.source) == ("vlm3-release", "checkpoint facebook/VLM3-depth")


def test_unknown_models_and_profiles_are_refused_by_name():
    with pytest.raises(ProfileError, match="pass --profile"):
        choose_profile(flag=None, stated=None, stated_where=None, model_ids=["http://x/v1"], model="http://x/v1")
    with pytest.raises(ProfileError, match="unknown profile 'vlm4'.*vlm3-release"):
        choose_profile(flag="vlm4", stated=None, stated_where=None, model_ids=[], model="m")
    with pytest.raises(ProfileError, match="vlm3.json says.*'vlm3'.*--profile zero-shot"):
        choose_profile(flag="zero-shot", stated="vlm3", stated_where="m/vlm3.json", model_ids=[], model="m")
    with pytest.raises(ProfileError, match="profile 'depthlm' does not define task 'pose'"):
        task_profile("depthlm", get_task("pose"))
    with pytest.raises(SettingsError, match="unknown profile 'nope'"):
        make_settings({"profile": "nope"})
