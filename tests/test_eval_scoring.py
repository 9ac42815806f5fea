"""Scoring options through `vlm3 eval`: the pose pair order (bench config and override) and the
correspondence end-point error in text units, checked against the transformed images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_eval import Oracle, Scripted, synth_bench
from vlm3.eval.bench import BenchError, bench_from_dict
from vlm3.eval.run import EvalError, read_predictions, run_eval
from vlm3.geometry.pose import make_T, t_from_center, ypr_to_rotation
from vlm3.tasks.pose import POSE, parse_pose, pose_answer

ANSWER = "Translation distance: 1.00 meters\nThe camera moves right, unit vector (+0.80, +0.10, +0.59).\nYaw=+20.0°, Pitch=-3.0°, Roll=+1.0°"
KEYS = ("auc30", "auc15", "auc5", "auc3", "rra30", "rta30", "rta15", "rta5", "auc30_signed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


class Turned(Oracle):
    """The bench's own pose answers with camera 2 turned 10 degrees more to the right, its centre
    kept: right in VGGT's order (translation = camera 2's centre in camera 1), off in vlm3's."""

    name = "turned"

    def generate(self, requests, max_new_tokens=64):
        out = []
        for text in super().generate(requests, max_new_tokens):
            pose = parse_pose(text)
            center = -pose.R.T @ pose.t
            R = (ypr_to_rotation(10, 0, 0).T) @ pose.R
            out.append(pose_answer(make_T(R, t_from_center(R, center)), metric=pose.distance is not None))
        return out


def test_pose_pair_order_from_the_bench_config_and_the_override(cache, tmp_path):
    bench = synth_bench("pose", tmp_path)
    out = tmp_path / "o"
    first = run_eval(Scripted([ANSWER]), bench, out, limit=4, cache_dir=cache, progress=False, plots=False, profile="vlm3")
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["metrics"]["pair_order"] == "cam2_from_cam1" and doc["scoring"] == {"pair_order": "cam2_from_cam1"}
    assert "| pair_order | cam2_from_cam1 |" in (out / "report.md").read_text()

    # The order changes no question: a re-run with the other order reuses every answer.
    again = run_eval(Scripted(["never asked"]), bench, out, limit=4, cache_dir=cache, progress=False, plots=False, profile="vlm3", pair_order="cam1_from_cam2")
    assert again.n_cached == again.n_queries == first.n_queries and again.backend_calls == 0
    lines = list(read_predictions(out / "predictions.jsonl").values())
    for result, order in ((first, "cam2_from_cam1"), (again, "cam1_from_cam2")):
        m = result.metrics["metrics"]
        expected = POSE.metrics(lines, options={"pair_order": order})
        assert m["pair_order"] == order and {k: m[k] for k in KEYS} == pytest.approx({k: expected[k] for k in KEYS})
    assert json.loads((out / "metrics.json").read_text())["scoring"] == {"pair_order": "cam1_from_cam2"}

    configured = synth_bench("pose", tmp_path, scoring={"pair_order": "cam1_from_cam2"})
    result = run_eval(Scripted([ANSWER]), configured, tmp_path / "c", limit=4, cache_dir=cache, progress=False, plots=False, profile="vlm3")
    assert result.metrics["metrics"]["pair_order"] == "cam1_from_cam2"
    assert {k: result.metrics["metrics"][k] for k in KEYS} == pytest.approx({k: again.metrics["metrics"][k] for k in KEYS})
    turned = run_eval(Turned(bench, cache), bench, tmp_path / "t", limit=4, cache_dir=cache, progress=False, plots=False, profile="vlm3")
    vggt = run_eval(Turned(bench, cache), bench, tmp_path / "t", limit=4, cache_dir=cache, progress=False, plots=False, profile="vlm3", pair_order="cam1_from_cam2")
    assert turned.metrics["metrics"]["rra15"] == vggt.metrics["metrics"]["rra15"] == 1.0
    assert vggt.metrics["metrics"]["rta3"] == 1.0 and turned.metrics["metrics"]["rta3"] < 1.0  # the orders disagree
    with pytest.raises(EvalError, match="pair_order must be one of"):
        run_eval(Scripted([ANSWER]), bench, tmp_path / "x", limit=1, cache_dir=cache, progress=False, plots=False, profile="vlm3", pair_order="vggt")


def test_bench_scoring_is_validated(tmp_path):
    good = {"name": "b", "task": "pose", "data": {"records": "x"}}
    assert bench_from_dict(good, tmp_path / "b.yaml").scoring == {"pair_order": "cam2_from_cam1"}
    assert bench_from_dict({**good, "scoring": {"pair_order": "cam1_from_cam2"}}, tmp_path / "b.yaml").scoring == {"pair_order": "cam1_from_cam2"}
    with pytest.raises(BenchError, match=r"b.yaml: scoring.pair_order = 'cam2_to_cam1': choose one of cam2_from_cam1, cam1_from_cam2"):
        bench_from_dict({**good, "scoring": {"pair_order": "cam2_to_cam1"}}, tmp_path / "b.yaml")
    with pytest.raises(BenchError, match=r"pair_order: not a scoring option of task 'depth'"):
        bench_from_dict({**good, "task": "depth", "scoring": {"pair_order": "cam1_from_cam2"}}, tmp_path / "b.yaml")
    with pytest.raises(BenchError, match=r"unknown field scoring.order"):
        bench_from_dict({**good, "scoring": {"order": "cam1_from_cam2"}}, tmp_path / "b.yaml")
    assert bench_from_dict({**good, "task": "depth"}, tmp_path / "b.yaml").scoring == {}


def test_correspondence_epe_norm_is_in_the_text_units_of_the_transformed_image(cache, tmp_path):
    """The bench's own answers are the targets rounded to whole text units; their error in text
    units, computed here from each transformed image 2, is what metrics.json reports."""
    from vlm3.data.io import image_root
    from vlm3.eval.bench import load_records, resolve_data
    from vlm3.settings import resolve_settings
    from vlm3.tasks.correspondence import parse_correspondence
    from vlm3.tasks.samples import load_images, transform_views

    bench = synth_bench("correspondence", tmp_path)
    result = run_eval(Oracle(bench, cache), bench, tmp_path / "o", limit=3, cache_dir=cache, progress=False, plots=False, profile="vlm3")
    m = result.metrics["metrics"]
    assert m["n_coords"] == 2000 and m["failed"] == 0 and m["epe"] < 0.1

    data = resolve_data(bench, cache, progress=False)
    records = load_records(data)
    settings, _ = resolve_settings(None, bench.settings)
    errors = []
    for line in read_predictions(tmp_path / "o" / "predictions.jsonl").values():
        if "not_asked" in line:
            continue
        rec = records[line["record"]]
        view = transform_views(rec, load_images(rec, image_root(data)), settings)
        K = view.record.views[1].K
        gt_text = view.transforms[1].forward(np.array([line["gt"]]))[0] / [K.width, K.height] * settings.n_coords
        errors.append(float(np.hypot(*(np.array(parse_correspondence(line["raw"], settings.n_coords)) - gt_text))))
    assert len(errors) == m["n"]
    assert m["epe_norm"] == pytest.approx(np.mean(errors), rel=1e-9)
    assert m["epe_norm"] <= 0.5 * 2**0.5  # rounding to whole text units only
