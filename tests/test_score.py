"""``vlm3 score`` end to end through the CLI, including bad input files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.geometry.pose import make_T, t_from_center, ypr_to_rotation
from vlm3.tasks.correspondence import correspondence_answer
from vlm3.tasks.depth import depth_answer, depth_metrics
from vlm3.tasks.pose import PosePrediction, pose_answer, pose_metrics
from vlm3.textref import decode_pixel, encode_pixel

runner = CliRunner()


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def score_json(task: str, path: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["score", task, str(path), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def score_error(task: str, path: Path) -> str:
    result = runner.invoke(app, ["score", task, str(path)])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_depth(tmp_path: Path) -> None:
    rows = [
        {"pred": depth_answer(2.0), "gt": 2.1},
        {"pred": 3.1, "gt": 3.0},
        {"pred": None, "gt": 1.0},
        {"pred": "I do not know", "gt": 1.0},
        {"pred": "-1 m", "gt": 1.0},
    ]
    path = write_jsonl(tmp_path / "depth.jsonl", rows)
    out = score_json("depth", path)
    expected = depth_metrics([2.0, 3.1, None, None, -1.0], [2.1, 3.0, 1.0, 1.0, 1.0])
    assert out == pytest.approx(expected)
    assert (out["n"], out["parsed"], out["failed"], out["delta1"]) == (5, 3, 3, 0.4)


def test_depth_table(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "depth.jsonl", [{"pred": "2", "gt": 2}, "", {"pred": "x", "gt": 2}])
    result = runner.invoke(app, ["score", "depth", str(path)])
    assert result.exit_code == 0, result.output
    assert "delta1" in result.stdout and "0.5000" in result.stdout


def test_nan_metrics_are_null_in_json(tmp_path: Path) -> None:
    out = score_json("depth", write_jsonl(tmp_path / "d.jsonl", [{"pred": None, "gt": 1.0}]))
    assert out["abs_rel"] is None and out["delta1"] == 0.0


def _pose(yaw: float, center: list[float]) -> tuple[np.ndarray, np.ndarray]:
    R = ypr_to_rotation(yaw, 0, 0).T
    return R, t_from_center(R, center)


def test_pose(tmp_path: Path) -> None:
    R1, t1 = _pose(20, [1.0, 0.0, 2.0])
    R2, t2 = _pose(-40, [0.0, 0.0, 1.0])
    rows = [
        {"pred": pose_answer(make_T(R1, t1), metric=True), "R_gt": R1.tolist(), "t_gt": t1.tolist()},
        {"pred": {"R": R2.tolist(), "t": (-t2).tolist()}, "R_gt": R2.tolist(), "t_gt": t2.tolist()},
        {"pred": None, "R_gt": R2.tolist(), "t_gt": t2.tolist()},
        {"pred": "no idea", "R_gt": R2.tolist(), "t_gt": t2.tolist()},
    ]
    out = score_json("pose", write_jsonl(tmp_path / "pose.jsonl", rows))
    assert (out["n"], out["parsed"]) == (4, 2)
    assert out["rra3"] == 0.5 and out["rta3"] == 0.5  # the flipped translation is not an error
    assert out["auc30"] > out["auc30_signed"]
    assert out["dist_abs_rel"] < 0.01 and out["dist_parsed"] == 1
    for key in ("auc30", "auc15", "auc5", "auc3", "rra30", "rta30", "rra15", "rta15", "rra5", "rta5"):
        assert key in out


def test_corr(tmp_path: Path) -> None:
    width, height = 640, 480
    gt = [100.3, 200.7]
    answer = correspondence_answer(*encode_pixel(*gt, width, height))
    rows = [
        {"pred": answer, "gt": gt, "width": width, "height": height},
        {"pred": [103.3, 204.7], "gt": gt},
        {"pred": None, "gt": gt},
        {"pred": "somewhere", "gt": gt, "width": width, "height": height},
    ]
    out = score_json("corr", write_jsonl(tmp_path / "corr.jsonl", rows))
    assert (out["n"], out["parsed"]) == (4, 2)
    assert out["pck1"] == 0.25 and out["pck5"] == 0.5
    decoded = decode_pixel(*encode_pixel(*gt, width, height), width, height)
    text_error = float(np.hypot(decoded[0] - gt[0], decoded[1] - gt[1]))
    assert out["epe"] == pytest.approx((text_error + 5.0) / 2)  # mean over the two parsed answers


def test_corr_n_coords(tmp_path: Path) -> None:
    rows = [{"pred": "(500, 500)", "gt": [50, 50], "width": 100, "height": 100}]
    assert score_json("corr", write_jsonl(tmp_path / "c.jsonl", rows), "--n-coords", "1000")["epe"] == 0.0
    assert score_json("corr", write_jsonl(tmp_path / "c.jsonl", rows))["epe"] == pytest.approx(25 * 2**0.5)


def test_pose_pair_order(tmp_path: Path) -> None:
    R1, t1 = _pose(20, [1.0, 0.0, 2.0])
    R2, t2 = _pose(-40, [0.0, 1.0, 1.0])
    noisy = ypr_to_rotation(6, -4, 2).T
    preds = [PosePrediction(noisy @ R1, t1 + [0.6, -0.4, 0.0]), PosePrediction(R2 @ noisy, t2 + [0.0, 0.8, 0.2])]
    rows = [{"pred": {"R": p.R.tolist(), "t": p.t.tolist()}, "R_gt": R.tolist(), "t_gt": t.tolist()} for p, R, t in zip(preds, [R1, R2], [t1, t2])]
    path = write_jsonl(tmp_path / "pose.jsonl", rows)
    default = score_json("pose", path)
    vggt = score_json("pose", path, "--pair-order", "cam1_from_cam2")
    assert default["pair_order"] == "cam2_from_cam1" and vggt["pair_order"] == "cam1_from_cam2"
    assert score_json("pose", path, "--pair-order", "cam2_from_cam1") == default
    for order, out in (("cam2_from_cam1", default), ("cam1_from_cam2", vggt)):
        expected = pose_metrics(preds, [R1, R2], [t1, t2], pair_order=order)
        assert {k: out[k] for k in expected} == pytest.approx(expected)
    assert default["rra30"] == vggt["rra30"] and default["auc30"] != vggt["auc30"]
    result = runner.invoke(app, ["score", "pose", str(path), "--pair-order", "cam2_to_cam1"])
    assert result.exit_code == 1 and "--pair-order must be one of cam2_from_cam1, cam1_from_cam2" in result.stderr
    result = runner.invoke(app, ["score", "corr", str(path), "--pair-order", "cam1_from_cam2"])
    assert result.exit_code == 1 and "not a scoring option of task 'correspondence'" in result.stderr


def test_corr_epe_norm(tmp_path: Path) -> None:
    width, height = 640, 480
    rows = [
        {"pred": "(500, 520)", "gt": [150.0, 120.0], "width": width, "height": height},  # decodes to (160, 124.8)
        {"pred": [103.0, 204.0], "gt": [100.0, 200.0], "width": width, "height": height},
        {"pred": None, "gt": [1.0, 1.0]},
    ]
    out = score_json("corr", write_jsonl(tmp_path / "c.jsonl", rows), "--n-coords", "2000")
    norm = [math.hypot(10 * 2000 / width, 4.8 * 2000 / height), math.hypot(3 * 2000 / width, 4 * 2000 / height)]
    assert out["n_coords"] == 2000 and out["epe_norm"] == pytest.approx(sum(norm) / 2)
    assert out["epe"] == pytest.approx((math.hypot(10, 4.8) + 5) / 2)
    # A parsed pixel answer without the image size has no text-unit error.
    rows[1] = {"pred": [103.0, 204.0], "gt": [100.0, 200.0]}
    out = score_json("corr", write_jsonl(tmp_path / "c.jsonl", rows))
    assert out["epe_norm"] is None and out["epe"] == pytest.approx((math.hypot(10, 4.8) + 5) / 2)
    rows[1] = {"pred": [103.0, 204.0], "gt": [100.0, 200.0], "width": width}
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    assert 'c.jsonl:2: give both "width" and "height"' in score_error("corr", path)


def test_object(tmp_path: Path) -> None:
    rows = [
        {"pred": "Correct, it is.", "gt": True, "kind": "qualitative", "category": "below_above"},
        {"pred": False, "gt": True, "kind": "qualitative", "category": "below_above"},
        {"pred": "about 110 cm", "gt": 1.0, "kind": "quantitative", "category": "width"},
        {"pred": "at 1 o'clock", "gt": 12, "kind": "direction"},
    ]
    out = score_json("object", write_jsonl(tmp_path / "object.jsonl", rows))
    assert out["qualitative_acc"] == 0.5 and out["quantitative_success"] == 1.0 and out["direction_success"] == 1.0
    assert out["categories"]["below_above"]["score"] == 0.5
    assert out["categories"]["direction"]["n"] == 1


def test_object_zero_metre_ground_truth_scores(tmp_path: Path) -> None:
    # Two objects at the same height: a vertical distance of exactly 0 m, answered exactly.
    rows = [
        {"pred": "The vertical distance is 0.00 meters.", "gt": 0.0, "kind": "quantitative", "category": "vertical_distance"},
        {"pred": "0.01 meters", "gt": 0.008, "kind": "quantitative", "category": "vertical_distance"},
        {"pred": "0.20 meters", "gt": 0.0, "kind": "quantitative", "category": "vertical_distance"},
    ]
    out = score_json("object", write_jsonl(tmp_path / "zero.jsonl", rows))
    assert out["n"] == 3 and out["quantitative_success"] == pytest.approx(2 / 3)


BAD_FILES = [
    ("depth", ['{"pred": 1, "gt": 1}', "{not json"], ":2: invalid JSON"),
    ("depth", ['[1, 2]'], ":1: expected a JSON object"),
    ("depth", ['{"pred": 1}'], ':1: missing key "gt"'),
    ("depth", ['{"pred": 1, "gt": 0}'], ':1: "gt" must be a positive number'),
    ("depth", ['{"pred": 1, "gt": "2"}'], ':1: "gt" must be a positive number'),
    ("depth", ['{"pred": [1], "gt": 2}'], ':1: "pred" must be a number'),
    ("depth", ["", "  "], "no predictions"),
    ("pose", ['{"pred": null, "R_gt": [[1, 0], [0, 1]], "t_gt": [0, 0, 1]}'], ':1: "R_gt" must be a finite 3x3 array'),
    ("pose", ['{"pred": null, "R_gt": [[1,0,0],[0,1,0],[0,0,1]], "t_gt": [0, 0]}'], ':1: "t_gt" must be a finite 3 array'),
    ("pose", ['{"pred": {"R": [[1,0,0],[0,1,0],[0,0,1]]}, "R_gt": [[1,0,0],[0,1,0],[0,0,1]], "t_gt": [0,0,1]}'], ':1: "pred" object is missing key "t"'),
    ("pose", ['{"pred": 3, "R_gt": [[1,0,0],[0,1,0],[0,0,1]], "t_gt": [0,0,1]}'], ':1: "pred" must be answer text'),
    ("corr", ['{"pred": [1, 2], "gt": [1, 2]}', '{"pred": "(10, 20)", "gt": [1, 2]}'], ':2: "pred" is text, so the line must give "width" and "height"'),
    ("corr", ['{"pred": [1, 2, 3], "gt": [1, 2]}'], ':1: "pred" must be a finite 2 array'),
    ("corr", ['{"pred": ["1", "2"], "gt": [1, 2]}'], ':1: "pred" must be a finite 2 array'),
    ("corr", ['{"pred": null, "gt": [1, true]}'], ':1: "gt" must be a finite 2 array'),
    ("object", ['{"pred": true, "gt": true, "kind": "size"}'], ':1: "kind" must be one of'),
    ("object", ['{"pred": true, "gt": 1.0, "kind": "qualitative"}'], ':1: "gt" 1.0 is not valid'),
    ("object", ['{"pred": 1.0, "gt": true, "kind": "qualitative"}'], ':1: "pred" must be text, true/false or null'),
    ("depth", ['{"pred": 1, "gt": 1e999}'], ':1: "gt" must be a positive number'),
    ("depth", ["[" * 100000], ":1: invalid JSON"),
]


@pytest.mark.parametrize(("task", "lines", "message"), BAD_FILES)
def test_bad_files(tmp_path: Path, task: str, lines: list[str], message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    error = score_error(task, path)
    assert error.startswith(f"error: {path}")
    assert message in error


def test_missing_file_and_unknown_task(tmp_path: Path) -> None:
    assert score_error("depth", tmp_path / "missing.jsonl") == f"error: {tmp_path / 'missing.jsonl'}: no such file"
    path = write_jsonl(tmp_path / "d.jsonl", [{"pred": 1, "gt": 1}])
    assert "unknown task 'height'" in score_error("height", path)


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert "cannot read as UTF-8" in score_error("depth", path)


def test_score_help_lists_every_task_with_its_line_format():
    from typer.testing import CliRunner

    from vlm3.cli import app
    from vlm3.tasks import get_task, task_names

    text = " ".join(CliRunner().invoke(app, ["score", "--help"], env={"COLUMNS": "400"}).output.split())
    for name in task_names():
        assert f"{name}: {get_task(name).description}. Lines: {get_task(name).score_format}" in text
