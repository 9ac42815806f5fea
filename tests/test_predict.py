"""vlm3 predict: depth points and grids (depth map, point cloud), pose, matches, object questions."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.infer import cli as C
from vlm3.infer import predict as P
from vlm3.geometry.camera import Intrinsics, project
from vlm3.geometry.pose import make_T, ypr_to_rotation
from vlm3.models.backend import Backend, Completion
from vlm3.settings import Settings, write_model_settings
from vlm3.textref import encode_pixels

runner = CliRunner()
POINT = re.compile(r"\(\d+, \d+\)")
W, H = 120, 90
K = Intrinsics(100.0, 104.0, 61.0, 44.5, W, H)
SETTINGS = dict(focal=140.0, n_coords=2000)


def question_text(request) -> str:
    return request.messages[-1]["content"][-1]["text"]


class DepthStub(Backend):
    """Answers a depth question with 1 + (nx + ny) / 1000 metres, from the asked text coordinates."""

    name = "depth-stub"

    def generate(self, requests, max_new_tokens=64):
        out = []
        for r in requests:
            nx, ny = map(int, re.search(r"\((\d+), (\d+)\)", question_text(r)).groups())
            out.append(f"{1 + (nx + ny) / 1000:.2f}")
        return out


class EchoStub(Backend):
    """Answers a correspondence question with the very text coordinates it was asked about."""

    name = "echo-stub"

    def generate(self, requests, max_new_tokens=64):
        points = [POINT.search(question_text(r)).group(0) for r in requests]
        return [f"The corresponding pixel is {p}." for p in points]


class Fixed(Backend):
    name = "fixed"

    def __init__(self, text: str) -> None:
        self.text, self.questions = text, []

    def generate(self, requests, max_new_tokens=64):
        self.questions += [question_text(r) for r in requests]
        return [self.text for _ in requests]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    img = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(img).save(path)
    return path


# --- depth --------------------------------------------------------------------------------------


def test_depth_grid_writes_png_and_a_ply_that_projects_back(image_path, tmp_path):
    opts = Settings(**SETTINGS)
    pred = P.predict_depth(DepthStub(), image_path, K, grid=10, settings=opts)
    assert pred.grid_shape == (9, 12) and pred.valid.all()
    # The pixel asked about is the grid pixel mapped through the focal transform.
    U = K.scaled(140 / K.fx, 140 / K.fy)
    expected = encode_pixels(pred.uv * [140 / K.fx, 140 / K.fy], U.width, U.height, 2000)
    np.testing.assert_array_equal(pred.coords, expected)
    np.testing.assert_allclose(pred.depth, [float(f"{1 + v / 1000:.2f}") for v in expected.sum(axis=1)])

    paths = P.write_depth_outputs(pred, image_path, tmp_path)
    assert Image.open(paths["depth_map"]).size[0] > 500
    import trimesh

    cloud = trimesh.load(paths["ply"])
    xyz = np.asarray(cloud.vertices)
    assert xyz.shape == (108, 3) and np.all(xyz[:, 2] > 0)
    uv, _ = project(K, xyz)
    np.testing.assert_allclose(uv, pred.uv, atol=1e-3)  # every point lands on the pixel it came from
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=1), pred.depth, rtol=1e-5)  # range answers
    colours = np.asarray(cloud.colors)[:, :3]
    img = np.asarray(Image.open(image_path))
    np.testing.assert_array_equal(colours, img[np.floor(pred.uv[:, 1]).astype(int), np.floor(pred.uv[:, 0]).astype(int)])

    doc = json.loads(paths["points"].read_text())
    first = doc["points"][0]
    assert (first["x"], first["y"]) == (5.0, 5.0)  # grid starts stride // 2 in; integer = pixel centre
    assert doc["depth_type"] == "range" and doc["valid"] == 108 and doc["grid"] == {"rows": 9, "cols": 12}
    assert math.isclose(first["range_m"], first["depth_m"]) and first["z_m"] < first["range_m"]


def test_depth_z_answers_and_points_at_the_padded_edge(image_path):
    # size_multiple 28 pads the unified 168 x 121.2 image to 168 x 140 (rounding to the nearest
    # multiple cropped it to 112 rows): points in the bottom rows are asked like any other.
    opts = Settings(focal=140.0, depth_type="range").with_values(size_multiple=28, depth_type="z")
    assert (opts.focal, opts.size_multiple, opts.depth_type, opts.n_coords) == (140.0, 28, "z", 2000)
    pts = np.array([[10.5, 10.5], [60.5, 88.5], [119.5, 89.5]])
    pred = P.predict_depth(DepthStub(), image_path, K, points=pts, settings=opts)
    assert pred.valid.all() and pred.not_asked == [None] * 3 and pred.failures == [None] * 3
    # The bottom-right pixel is named inside the image content (121.2 of 140 rows), not in the padding.
    assert pred.coords[2].tolist() == encode_pixels(np.array([[119.5 * 1.4, 89.5 * 140 / 104]]), 168, 140).tolist()[0]
    assert math.isclose(pred.points_cam()[0, 2], pred.depth[0]) and math.isclose(pred.points_cam()[1, 2], pred.depth[1])
    with pytest.raises(ValueError, match="outside the 120x90 image"):
        P.predict_depth(DepthStub(), image_path, K, points=[[200, 5]], settings=opts)
    with pytest.raises(ValueError, match="nothing to ask"):
        P.predict_depth(DepthStub(), image_path, K, settings=opts)


def test_points_never_asked_are_shown_with_their_reason_not_as_failed(image_path, tmp_path):
    """A point that could not be shown to the model (lens distortion moved it off the canvas) says
    "not asked: <why>" in the API, points.json and its count, never "the answer did not parse"."""
    from vlm3.ask import UNPARSED
    from vlm3.data.unify import NOT_ASKED

    uv = np.array([[10.5, 10.5], [60.5, 40.5], [1.5, 88.5]])
    pred = P.DepthPrediction(uv, np.array([2.0, np.nan, np.nan]), "z", ["2.0", "far", ""], np.array([True, False, False]), K,
                             np.array([[100, 100], [900, 900], [-1, -1]]), not_asked=[None, None, "outside_undistorted_image"])
    why = "not asked: " + NOT_ASKED["outside_undistorted_image"]
    assert pred.failures == [None, UNPARSED, why]
    doc = json.loads(P.write_depth_outputs(pred, image_path, tmp_path / "d")["points"].read_text())
    assert [p["failure"] for p in doc["points"]] == [None, UNPARSED, why]
    assert (doc["n"], doc["valid"], doc["parsed"], doc["not_asked"]) == (3, 1, 1, 1)
    match = P.MatchPrediction(uv[:2], np.array([[5.0, 5.0], [np.nan, np.nan]]), ["(1, 1)", ""], np.array([True, False]),
                              not_asked=[None, "outside_undistorted_image"])
    assert match.failures == [None, why]


@pytest.mark.slow
def test_tiny_model_answers_go_through_the_task_parsers(image_path, tmp_path):
    """A real local backend: every raw answer is read by the task's parser, the files count what
    parsed, and the processor note describes the unified image the model was shown."""
    import torch

    from vlm3.models.local import LocalBackend
    from vlm3.models.tiny import build_tiny_model
    from vlm3.tasks.depth import parse_depth
    from vlm3.tasks.pose import parse_pose

    torch.set_num_threads(1)
    backend = LocalBackend.from_pretrained(build_tiny_model("qwen2_5_vl", tmp_path / "m"), batch_size=8)
    pred = P.predict_depth(backend, image_path, K, grid=30, settings=Settings(focal=140.0, size_multiple=28), max_new_tokens=4)
    # An answer cut off at max_new_tokens is a failure whatever its start reads as.
    parsed = [parse_depth(r) is not None and not cut for r, cut in zip(pred.raw, pred.truncated)]
    assert len(pred.raw) == 12 and pred.parsed.tolist() == parsed
    assert pred.valid.tolist() == [p and parse_depth(r) > 0 for p, r in zip(parsed, pred.raw)]
    assert pred.processor["images"][0]["size"] == [168, 140]  # 120x90 at fx 100, fy 104 -> focal 140, padded up to 28s
    doc = json.loads(P.write_depth_outputs(pred, image_path, tmp_path / "o")["points"].read_text())
    assert (doc["n"], doc["parsed"], doc["valid"]) == (12, sum(parsed), int(pred.valid.sum()))
    pose = P.predict_pose(backend, image_path, image_path, K, settings=Settings(focal=140.0), max_new_tokens=4)
    assert pose.parsed == (not pose.truncated and parse_pose(pose.raw) is not None) and (pose.R is None) == (not pose.parsed)


# --- pose, matches, objects ---------------------------------------------------------------------


def test_pose_answer_maps_to_T_cam2_from_cam1(image_path):
    from vlm3.tasks.pose import pose_answer

    R = ypr_to_rotation(20.0, -5.0, 2.0).T  # camera 2 turned 20 degrees right, looking down a little
    c = np.array([0.6, 0.0, 0.8]) * 1.5  # ...and moved right and forward, 1.5 m
    T = make_T(R, -R @ c)
    result = P.predict_pose(Fixed(pose_answer(T, True)), image_path, image_path, K, settings=Settings(focal=140.0))
    assert result.parsed and math.isclose(result.distance, 1.5)
    assert (round(result.yaw, 1), round(result.pitch, 1), round(result.roll, 1)) == (20.0, -5.0, 2.0)
    np.testing.assert_allclose(result.R, R, atol=1e-3)
    np.testing.assert_allclose(result.t, T[:3, 3], atol=0.02)
    np.testing.assert_allclose(result.direction, [0.6, 0.0, 0.8], atol=0.01)
    failed = P.predict_pose(Fixed("no idea"), image_path, image_path, K, settings=Settings(focal=140.0))
    assert not failed.parsed and failed.R is None and failed.to_dict()["raw"] == "no idea"


def test_matches_come_back_in_the_second_images_own_pixels(image_path, tmp_path):
    # Image 2 is image 1 at half size, with K scaled to match: both unify to the same image, so the
    # matching pixel has the same text coordinates, and must map back to half the position.
    img = np.asarray(Image.open(image_path))
    small = np.asarray(Image.fromarray(img).resize((W // 2, H // 2), Image.BILINEAR))
    K2 = K.scaled(0.5, 0.5, width=W // 2, height=H // 2)
    pts = np.array([[10.5, 20.5], [100.5, 70.5], [60.0, 45.0]])
    opts = Settings(**SETTINGS)
    pred = P.predict_match(EchoStub(), img, small, pts, K, K2, opts)
    assert pred.parsed.all()
    np.testing.assert_allclose(pred.uv2, pts * 0.5, atol=W / 2000)
    path = P.plot_matches(pred, img, small, tmp_path / "m.png")
    assert Image.open(path).size[0] > 500


def test_object_questions_use_unified_boxes(image_path):
    backend = Fixed("Correct, it is.")
    opts = Settings(**SETTINGS)
    answers = P.predict_object(backend, image_path, K, [[0, 0, 60, 45], [60, 45, 120, 90], [10, 10, 20, 20]], ask="above", settings=opts)
    assert [a.boxes for a in answers] == [[0, 1], [0, 2]] and all(a.value is True for a in answers)
    # The unified image is 168 x 121 px (fx, fy -> 140): y = 45 maps to 60.58 px = 1001 of 2000.
    assert answers[0].question == "Is bounding box region (0, 0, 1000, 1001) above bounding box region (1000, 1001, 1999, 1999)?"
    widths = P.predict_object(Fixed("It is 0.5 meters wide."), image_path, K, [[0, 0, 60, 45], [60, 45, 120, 90]], ask="width", settings=opts)
    assert [a.value for a in widths] == [0.5, 0.5] and widths[1].boxes == [1]
    free = P.predict_object(Fixed("3 o'clock"), image_path, K, [[0, 0, 60, 45], [60, 45, 120, 90]], question="Where is {B} seen from {A}?", kind="direction", settings=opts)
    assert free[0].value == 3 and "{" not in free[0].question
    with pytest.raises(ValueError, match=r"\{A\}, \{B\}"):
        P.predict_object(backend, image_path, K, [[0, 0, 60, 45]], question="Is it big?", settings=opts)
    with pytest.raises(ValueError, match="unknown question 'bigger'"):
        P.predict_object(backend, image_path, K, [[0, 0, 60, 45], [1, 1, 5, 5]], ask="bigger", settings=opts)


def test_intrinsics_guess_and_cli_conventions():
    guess = P.estimate_intrinsics(640, 480)
    assert math.isclose(guess.fx, 320 / math.tan(math.radians(30))) and (guess.cx, guess.cy) == (320, 240)
    K1, estimated = C.resolve_cli_intrinsics(640, 480, 500.0)
    assert not estimated and (K1.fx, K1.fy, K1.cx, K1.cy) == (500.0, 500.0, 320.0, 240.0)
    K2, _ = C.resolve_cli_intrinsics(640, 480, 500.0, 510.0, 319.5, 239.5)
    assert (K2.fy, K2.cx, K2.cy) == (510.0, 320.0, 240.0)  # OpenCV principal point +0.5
    np.testing.assert_array_equal(C.parse_cli_points(["1,2 3,4", "5.5,6;7,8"]), [[1, 2], [3, 4], [5.5, 6], [7, 8]])
    with pytest.raises(ValueError, match="intrinsics are required"):
        C.resolve_cli_intrinsics(640, 480, None)
    with pytest.raises(ValueError, match="not both"):
        C.resolve_cli_intrinsics(640, 480, 500.0, estimate=True)
    with pytest.raises(ValueError, match="must be x,y"):
        C.parse_cli_points(["12"])


# --- command line -------------------------------------------------------------------------------


@pytest.fixture()
def stubbed(monkeypatch):
    """Route every --model to a stub backend chosen by its name (no model is loaded)."""
    from vlm3.tasks.pose import pose_answer

    stubs = {
        "depth-stub": DepthStub(),
        "echo-stub": EchoStub(),
        "pose-stub": Fixed(pose_answer(make_T(np.eye(3), [0.0, 0.0, -1.0]), True)),
        "object-stub": Fixed("No, it is not."),
    }
    monkeypatch.setattr("vlm3.models.backend.open_backend", lambda spec, *a, **k: stubs[spec])
    return stubs


def test_cli_predict_depth_grid_and_points(stubbed, image_path, tmp_path):
    out = tmp_path / "grid"
    result = runner.invoke(app, ["predict", "depth", str(image_path), "--model", "depth-stub", "--profile", "vlm3", "--fx", "100", "--fy", "104", "--cx", "60.5", "--cy", "44", "--grid", "15", "--focal", "140", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"points.json", "points.ply", "depth_map.png"}
    doc = json.loads((out / "points.json").read_text())
    assert doc["intrinsics"]["cx"] == 60.5 and doc["settings"]["focal"] == 140.0 and doc["valid"] == 48

    import trimesh

    xyz = np.asarray(trimesh.load(out / "points.ply").vertices)
    uv, _ = project(K, xyz)  # the same camera as --fx 100 --fy 104 --cx 60.5 --cy 44
    np.testing.assert_allclose(uv - 0.5, [[p["x"], p["y"]] for p in doc["points"]], atol=1e-3)

    # Settings: the checkpoint's vlm3.json (--meta), then command-line overrides, then defaults.
    meta = write_model_settings(tmp_path / "ckpt", "depth", Settings(focal=150.0, n_coords=1000, depth_type="z"))
    result = runner.invoke(app, ["predict", "depth", str(image_path), "--model", "depth-stub", "--profile", "vlm3", "--estimate-intrinsics", "--points", "3,4 100,80", "--meta", str(meta.parent), "--n-coords", "500", "--out", str(tmp_path / "pts")])
    assert result.exit_code == 0, result.output
    assert "intrinsics guessed" in result.output and "60 degree" in result.output
    doc = json.loads((tmp_path / "pts" / "points.json").read_text())
    assert [(p["x"], p["y"]) for p in doc["points"]] == [(3.0, 4.0), (100.0, 80.0)] and doc["intrinsics_estimated"]
    assert (doc["settings"]["focal"], doc["settings"]["n_coords"], doc["depth_type"], doc["settings_from"]) == (150.0, 500, "z", str(meta))


def test_cli_predict_pose_match_object(stubbed, image_path, tmp_path):
    result = runner.invoke(app, ["predict", "pose", str(image_path), str(image_path), "--model", "pose-stub", "--profile", "vlm3", "--fx", "100", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "pose.json").read_text())
    assert doc["parsed"] and doc["distance_m"] == 1.0 and doc["direction"] == [0.0, 0.0, 1.0] and doc["yaw_deg"] == 0.0

    result = runner.invoke(app, ["predict", "corr", str(image_path), str(image_path), "--model", "echo-stub", "--profile", "vlm3", "--fx", "100", "--points", "10,20", "--points", "50,60", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    matches = json.loads((tmp_path / "matches.json").read_text())["matches"]
    assert [(round(m["x2"]), round(m["y2"])) for m in matches] == [(10, 20), (50, 60)] and (tmp_path / "matches.png").is_file()

    result = runner.invoke(app, ["predict", "object", str(image_path), "--model", "object-stub", "--profile", "vlm3", "--fx", "100", "--box", "0,0,50,40", "--box", "60,40,119,89", "--ask", "behind"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)["answers"][0]
    assert answer["value"] is False and answer["boxes"] == ["A", "B"] and answer["kind"] == "qualitative"


class CutOff(Backend):
    """Another stub's answers, those to questions about text x < 1000 (or about no pixel) cut off
    at the token limit (finish_reason "length")."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.name = inner, f"cut-{inner.name}"

    def generate(self, requests, max_new_tokens=64):
        return [c.text for c in self.complete(requests, max_new_tokens)]

    def complete(self, requests, max_new_tokens=64):
        out = []
        for r, text in zip(requests, self.inner.generate(requests, max_new_tokens)):
            point = re.search(r"\((\d+), \d+\)", question_text(r))
            cut = point is None or int(point.group(1)) < 1000
            out.append(Completion(text, finish_reason="length" if cut else "stop"))
        return out


def test_cli_predict_reports_answers_cut_off_at_the_token_limit(monkeypatch, image_path, tmp_path):
    """A truncated answer is a failure with its reason in the files and on the terminal, even
    when its text would parse; an answer that ended but did not parse says so instead."""
    from vlm3.ask import TRUNCATED, UNPARSED
    from vlm3.tasks.pose import pose_answer

    stubs = {"cut-depth": CutOff(DepthStub()), "cut-pose": CutOff(Fixed(pose_answer(make_T(np.eye(3), [0.0, 0.0, -1.0]), True)))}
    monkeypatch.setattr("vlm3.models.backend.open_backend", lambda spec, *a, **k: stubs[spec])
    result = runner.invoke(app, ["predict", "depth", str(image_path), "--model", "cut-depth", "--profile", "vlm3", "--fx", "100", "--points", "3,4 100,80", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "d" / "points.json").read_text())
    cut, whole = doc["points"]
    assert cut["failure"] == TRUNCATED and not cut["parsed"] and cut["depth_m"] is None and float(cut["raw"]) > 0
    assert whole["failure"] is None and whole["parsed"] and whole["depth_m"] > 0
    assert (doc["n"], doc["parsed"], doc["valid"], doc["truncated"]) == (2, 1, 1, 1)
    assert f"1 of 2 depths failed: {TRUNCATED}" in result.output and "1 of 2 depths parsed" in result.output

    result = runner.invoke(app, ["predict", "pose", str(image_path), str(image_path), "--model", "cut-pose", "--profile", "vlm3", "--fx", "100", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "p" / "pose.json").read_text())
    assert not doc["parsed"] and doc["failure"] == TRUNCATED and doc["R"] is None and "Yaw" in doc["raw"]
    assert f"failed: {TRUNCATED}" in result.output

    failed = P.predict_pose(Fixed("no idea"), image_path, image_path, K, settings=Settings(focal=140.0))
    assert failed.failure == UNPARSED and not failed.truncated
    cut_match = P.predict_match(CutOff(EchoStub()), image_path, image_path, [[3.5, 4.5], [100.5, 80.5]], K, settings=Settings(**SETTINGS))
    assert cut_match.failures == [TRUNCATED, None] and cut_match.parsed.tolist() == [False, True]


@pytest.mark.parametrize(
    "args, message",
    [
        (["depth", "{img}", "--grid", "10", "--out", "{out}"], "intrinsics are required"),
        (["depth", "{img}", "--grid", "10", "--fx", "100", "--estimate-intrinsics", "--out", "{out}"], "not both"),
        (["depth", "{img}", "--fx", "100", "--out", "{out}"], "nothing to ask"),
        (["depth", "{img}", "--fx", "100", "--points", "1;2", "--out", "{out}"], "must be x,y"),
        (["depth", "{img}", "--fx", "100", "--points", "500,2", "--out", "{out}"], "outside the 120x90 image"),
        (["depth", "{out}/missing.png", "--fx", "100", "--grid", "8", "--out", "{out}"], "does not exist"),
        (["depth", "{img}", "--fx", "-3", "--grid", "8", "--out", "{out}"], "must be a positive number"),
        (["object", "{img}", "--fx", "100", "--box", "1,2,3", "--ask", "above"], "x_min,y_min,x_max,y_max"),
        (["object", "{img}", "--fx", "100", "--box", "1,2,3,4"], "exactly one of --question"),
    ],
)
def test_cli_errors_are_one_clean_line(stubbed, image_path, tmp_path, args, message):
    args = [a.format(img=image_path, out=tmp_path) for a in args]
    result = runner.invoke(app, ["predict", *args, "--model", "depth-stub", "--profile", "vlm3"])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_predict_over_http_uses_the_served_settings_and_the_api_key(answering_model, image_path, tmp_path):
    from support import serve_in_thread
    from vlm3.models.local import LocalBackend
    from vlm3.serve.server import create_app

    published = {"task": "depth", "settings": Settings(focal=120.0, size_multiple=28, n_coords=100).model_dump(mode="json")}
    served = create_app(LocalBackend.from_pretrained(answering_model, batch_size=8), model_name="tiny", api_key="K", vlm3=published)
    with serve_in_thread(served, timeout=30) as url:
        args = ["predict", "depth", str(image_path), "--model", url, "--fx", "100", "--points", "10,20", "--out", str(tmp_path / "o"), "--max-new-tokens", "4"]
        ok = runner.invoke(app, [*args, "--api-key", "K"])
        wrong = runner.invoke(app, [*args, "--api-key", "nope"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads((tmp_path / "o" / "points.json").read_text())
    assert (doc["settings"]["focal"], doc["settings"]["n_coords"]) == (120.0, 100) and doc["settings_from"].endswith("/models")
    assert wrong.exit_code == 1 and "invalid API key" in wrong.output and "Traceback" not in wrong.output


# --- profiles -----------------------------------------------------------------------------------


class Recording(Backend):
    """Records every request (images and text) and answers a fixed text."""

    name = "recording"

    def __init__(self, text: str) -> None:
        self.text, self.requests = text, []

    def generate(self, requests, max_new_tokens=64):
        self.requests += list(requests)
        return [self.text for _ in requests]


def test_predict_depth_asks_in_the_profiles_way(image_path):
    from vlm3.profiles import profile_settings
    from vlm3.tasks import get_task
    from vlm3.tasks.depth import DEPTHLM_QUESTION

    depthlm = Settings(**profile_settings("depthlm", get_task("depth")))
    backend = Recording("<think> The point is around 2.00 meters away from the camera. </think>\n\n<answer> 2.00 </answer>")
    pred = P.predict_depth(backend, image_path, K, points=[[30.5, 40.5], [80.5, 20.5]], settings=depthlm)
    assert pred.depth.tolist() == [2.0, 2.0]
    # One image per point, each with DepthLM's red arrow ending one pixel left of the asked pixel.
    assert [question_text(r) for r in backend.requests] == [DEPTHLM_QUESTION] * 2
    s = 750.0 / K.fx
    for request, (col, row) in zip(backend.requests, [(30, 40), (80, 20)], strict=True):
        im = np.asarray(request.images[0])
        assert im.shape[:2] == (int(H * s), int(W * s))
        x, y = int(col * s), int(row * s)
        assert (im[y, x - 5 : x] == [255, 0, 0]).all() and (im[y - 2, x - 3] == [255, 0, 0]).all()
    released = Settings(**profile_settings("vlm3-release", get_task("depth")))
    backend = Recording("<answer> 3.5 </answer>")
    pred = P.predict_depth(backend, image_path, K, points=[[30.5, 40.5]], settings=released)
    assert pred.depth.tolist() == [3.5] and "normalised [0, 2000] format" in question_text(backend.requests[0])
    assert [m["role"] for m in backend.requests[0].messages] == ["user"]  # the release asks with no system prompt
    zero_shot = Settings(**profile_settings("zero-shot", get_task("depth")))
    backend = Recording("2.5")
    pred = P.predict_depth(backend, image_path, K, points=[[30.5, 40.5]], settings=zero_shot)
    system, user = backend.requests[0].messages
    assert pred.depth.tolist() == [2.5] and system["role"] == "system" and "format" in system["content"][0]["text"]
    assert np.asarray(backend.requests[0].images[0]).shape[:2] == (H, W)  # the native image
    assert "in meters" in user["content"][-1]["text"] and "[0, 1000)" in user["content"][-1]["text"]


def test_predict_without_a_known_profile_is_a_named_error(stubbed, image_path, tmp_path):
    base = ["predict", "depth", str(image_path), "--model", "depth-stub", "--fx", "100", "--points", "10,20", "--out", str(tmp_path / "o")]
    missing = runner.invoke(app, base)
    unknown = runner.invoke(app, [*base, "--profile", "vlm9"])
    for result, message in ((missing, "pass --profile"), (unknown, "unknown profile 'vlm9'")):
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
