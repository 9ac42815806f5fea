"""A task is one registered object: a toy task defined only here goes through every stage.

Nothing under ``vlm3/`` knows the toy task: sample building, ``vlm3 eval`` on a synthetic bench,
the report and ``vlm3 score`` find it in the registry. Also: prompt snapshots of the built-in
tasks (a wording change must be deliberate), and one name per task.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.settings import Settings
from vlm3.tasks import Query, Task, get_task, register, task_names, unregister
from vlm3.tasks.base import UnknownTask
from vlm3.tasks.common import extract_answer

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


class Brightness(Task):
    """Toy task: the mean grey level (0..255) of a box of the image, named by text coordinates."""

    name = "toy-brightness"
    aliases = ("toy",)
    label_prefix = "b"
    headline = "within10"
    max_new_tokens = 8

    def has_labels(self, record):
        return True

    def n_labels(self, record):
        return 4  # the four quadrants

    def build(self, view, settings, rng, labels):
        image = np.asarray(view.images[0], dtype=np.float64).mean(axis=2)
        h, w = image.shape
        chosen = list(range(4)) if labels is None else labels
        queries = []
        for q in chosen:
            y0, x0 = (q // 2) * h // 2, (q % 2) * w // 2
            value = int(round(image[y0 : y0 + h // 2, x0 : x0 + w // 2].mean()))
            n = settings.n_coords
            box = (x0 * n // w, y0 * n // h, (x0 + w // 2) * n // w, (y0 + h // 2) * n // h)
            queries.append(Query(f"What is the mean grey level of region {box}?", str(value), value, q, {"quadrant": q}))
        messages = [m for q in queries for m in ({"role": "user", "content": [{"type": "text", "text": q.question}]}, {"role": "assistant", "content": [{"type": "text", "text": q.answer}]})]
        return messages, queries

    def prompts(self, settings):
        return ["What is the mean grey level of region {box}?"]

    def read(self, raw, query, sample):
        found = re.findall(r"\d+", extract_answer(raw))
        return int(found[-1]) if found and int(found[-1]) <= 255 else None

    def metrics(self, lines, options=None):
        ok = [line["pred"] is not None and abs(line["pred"] - line["gt"]) <= 10 for line in lines]
        parsed = sum(line["pred"] is not None for line in lines)
        return {"n": len(lines), "parsed": parsed, "failed": len(lines) - parsed, "within10": sum(ok) / len(lines)}

    def score_line(self, line, n_coords):
        pred = line.get("pred")
        value = self.read(pred, None, None) if isinstance(pred, str) else pred
        return {"pred": value, "gt": int(line.number("gt")), "parsed": value is not None}

    def plots(self, folder, lines):
        from vlm3 import plotting

        fig = plotting.figure()
        ax = fig.add_subplot()
        ax.hist([line["gt"] for line in lines], bins=8)
        return [(plotting.save(fig, folder, "toy_gt_hist.png"), "ground-truth grey levels")]


@pytest.fixture
def toy():
    task = register(Brightness())
    yield task
    unregister(task.name)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    from vlm3.data.synth import generate, get_family

    out = tmp_path_factory.mktemp("toy-data") / "scenes"
    generate(get_family("fixed_rig"), 3, out, seed=7, tasks=["depth"], points=4, split="test", progress=False)
    return out


def test_a_toy_task_runs_through_samples_eval_report_and_score(toy, synth_data, answering_model, tmp_path):
    from vlm3.data.io import image_root, read_records
    from vlm3.tasks.samples import build_sample, load_images

    assert get_task("toy") is toy and "toy-brightness" in task_names()

    # Sample building: the registry hands the toy task the transformed view.
    rec = next(iter(read_records(synth_data)))
    settings = Settings(focal=140, size_multiple=28)
    sample = build_sample(rec, load_images(rec, image_root(synth_data)), "toy", settings, labels=[2, 0])
    assert [q.label for q in sample.queries] == [2, 0] and sample.task == "toy-brightness"
    assert sample.images[0].size == (sample.view.record.views[0].K.width, sample.view.record.views[0].K.height)
    assert sample.to_trl()["messages"][1]["content"][0]["text"] == sample.queries[0].answer

    # vlm3 eval on a tiny synthetic bench, through the CLI.
    bench = {"name": "toy-bench", "task": "toy", "data": {"records": str(synth_data)}, "settings": {"focal": 140, "size_multiple": 28}}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(bench))
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "--model", str(answering_model), "--bench", str(tmp_path / "toy.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "toy-bench: within10 = " in result.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["task"] == "toy-brightness" and doc["metrics"]["n"] == doc["metrics"]["labels"] == 12 and doc["metrics"]["not_asked"] == 0
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(line["label"] for line in lines) == sorted([f"b{q}" for q in range(4)] * 3)
    assert all(isinstance(line["gt"], int) and "quadrant" in line for line in lines)

    # The report: the task's headline and its own plot.
    report = (out / "report.md").read_text()
    assert "**within10 = " in report and (out / "plots" / "toy_gt_hist.png").is_file()

    # vlm3 score: predictions made elsewhere, scored by the same task.
    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"pred": "about 100", "gt": 105}\n{"pred": 200, "gt": 150}\n{"pred": "dark", "gt": 3}\n')
    result = runner.invoke(app, ["score", "toy", str(scores), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"n": 3, "parsed": 2, "failed": 1, "within10": 1 / 3}


def test_unknown_and_clashing_task_names_are_named_errors(toy):
    with pytest.raises(UnknownTask, match="unknown task 'dpeth': choose one of depth, pose, correspondence, object"):
        get_task("dpeth")

    class Clash(Brightness):
        name = "other"
        aliases = ("corr",)

    with pytest.raises(ValueError, match="'corr' is already used by task 'correspondence'"):
        register(Clash())
    result = runner.invoke(app, ["score", "nope", str(REPO / "README.md")])
    assert result.exit_code == 1 and "unknown task 'nope'" in result.output


# --- prompt snapshots ---------------------------------------------------------------------------

SNAPSHOTS = {
    "depth": [
        "How far is the pixel at (0, 0) from the camera? Both x and y are normalized to between [0, 2000).",
        "1.00",
        "1. 1.00\n2. 2.50",
    ],
    "pose": [
        "1. How far did the camera move between the first and the second image? Answer in meters.\n"
        "2. In which direction did the camera move from the first image to the second? Describe it in the first camera's frame (X right, Y down, Z forward) and give the unit vector.\n"
        "3. How did the camera rotate from the first image to the second? Give yaw (turning right is positive), pitch (looking up is positive) and roll in degrees.",
        "1. In which direction did the camera move from the first image to the second? Describe it in the first camera's frame (X right, Y down, Z forward) and give the unit vector.\n"
        "2. How did the camera rotate from the first image to the second? Give yaw (turning right is positive), pitch (looking up is positive) and roll in degrees.",
        "Translation distance: 0.00 meters\nThe camera does not move, unit vector (+0.00, +0.00, +0.00).\nYaw=+0.0°, Pitch=+0.0°, Roll=+0.0°",
        "Translation distance: 1.00 meters\nThe camera moves left, forward, unit vector (-0.69, +0.02, +0.72).\nYaw=+30.0°, Pitch=-5.0°, Roll=+2.0°",
    ],
}


@pytest.mark.parametrize("name", sorted(SNAPSHOTS))
def test_prompt_snapshots(name):
    assert get_task(name).prompts(Settings()) == SNAPSHOTS[name]


def test_correspondence_and_object_prompts_are_stable():
    corr = get_task("correspondence").prompts(Settings())
    assert corr[0] == "Given these two images, what pixel in the second image corresponds to pixel (0, 0) in the first image? Report the answer as (x2, y2)."
    assert corr[-1] == "The corresponding pixel is (0, 0)."
    obj = get_task("object").prompts(Settings())
    a, b = "bounding box region (0, 39, 652, 999)", "bounding box region (6, 380, 228, 562)"
    assert obj[0] == f"Is {a} above {b}?" and f"If you are at {a}, where will you find {b}?" in obj
    assert f"{a[0].upper()}{a[1:]} is 50.0 centimeters wide." in obj and len(obj) == 201
    depthlm = get_task("depth").prompts(Settings(answer_style="depthlm"))[1]
    assert depthlm == "<think> The point is around 1.00 meters away from the camera. </think>\n\n<answer> 1.00 </answer>"


# --- one name, one default ----------------------------------------------------------------------


def _grep(pattern: str) -> list[str]:
    out = subprocess.run(["grep", "-rnE", pattern, "vlm3", "--include=*.py"], cwd=REPO, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


@pytest.mark.parametrize("name", ["pose", "correspondence", "object"])
def test_each_task_name_is_written_once(name):
    # Not counted: JSON keys (the OpenAI protocol's "object": ...) and adapters' paths of public
    # dataset layouts (ScanNet's pose/ folder), which are not task names.
    hits = [h for h in _grep(f"[\"']{name}[\"'][^:]|[\"']{name}[\"']$") if not (h.startswith("vlm3/data/adapters/") and "_dir /" in h)]
    assert len(hits) == 1 and re.search(rf'name = "{name}"', hits[0]), hits


def test_no_code_names_a_task_by_a_string():
    # "depth" is also a record field and a file name in dataset layouts; as a task name it is
    # written only in vlm3/tasks/depth.py. No line that mentions a task names one by a literal.
    names = "depth|pose|correspondence|corr|object"
    assert _grep(f"(task|Task).*[\"']({names})[\"']|[\"']({names})[\"'].*(task|Task)") == []
    assert len(_grep('name = "depth"')) == 1


def test_the_defaults_are_written_once():
    focal = _grep(r"focal.*\b1000(\.0)?\b|\b1000(\.0)?\b.*focal")
    assert len(focal) == 1 and focal[0].startswith("vlm3/settings.py") and "DEFAULT_FOCAL_PX = 1000.0" in focal[0], focal
    coords = _grep(r"\b2000\b")
    assert len(coords) == 1 and "DEFAULT_N_COORDS = 2000" in coords[0], coords


def test_reading_vlm3_json_imports_neither_torch_nor_transformers(tmp_path):
    (tmp_path / "vlm3.json").write_text(json.dumps({"task": "depth", "focal": 700, "n_coords": 1000}))
    code = (
        "import sys; from vlm3.settings import model_settings_for; import vlm3.eval.run, vlm3.eval.score, vlm3.ask;"
        "assert vlm3.eval.run.versions()['torch'] != 'not installed';"
        f"m = model_settings_for({str(tmp_path)!r}); assert m.settings.focal == 700 and m.settings.n_coords == 1000;"
        "assert model_settings_for('http://127.0.0.1:9/v1') is None;"
        "print(sorted(k for k in ('torch', 'transformers') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
