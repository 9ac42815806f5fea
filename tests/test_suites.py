"""Benches as the paper runs them: `vlm3 bench list`, suites with the published rows beside, the
ground-truth answerer, and `vlm3 prepare` refusing a root that is not the adapter's layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import IBIMS
from vlm3.cli import app
from vlm3.eval.bench import bench_names, data_missing, load_bench
from vlm3.eval.suite import SuiteError, Table, load_suite, markdown_table, suite_names, table_view

runner = CliRunner()

PAPER_SUITES = {"paper-depth": "depth", "paper-pose": "pose", "paper-corr": "correspondence", "paper-object": "object"}


def test_every_shipped_suite_loads_and_names_shipped_benches_of_its_task():
    assert set(PAPER_SUITES) <= set(suite_names())
    shipped = set(bench_names())
    for name, task in PAPER_SUITES.items():
        suite = load_suite(name)
        assert suite.task == task and suite.source
        assert len(set(suite.benches)) == len(suite.benches)
        for bench in suite.benches:
            assert bench in shipped, f"suite {name} names bench {bench!r}, which is not shipped"
            assert load_bench(bench).task == task


def test_the_paper_benches_are_shipped_14_real_and_4_suites():
    real = {name: load_bench(name) for name in bench_names() if "synth" not in load_bench(name).data}
    by_task: dict[str, int] = {}
    for bench in real.values():
        by_task[bench.task] = by_task.get(bench.task, 0) + 1
        assert bench.description and bench.get, f"{bench.name}: a real bench says what it is and how to get its data"
    assert by_task.get("depth", 0) >= 8 and by_task.get("pose", 0) >= 2 and by_task.get("correspondence", 0) >= 3 and by_task.get("object", 0) >= 1
    printed = runner.invoke(app, ["bench", "list"])
    assert printed.exit_code == 0, printed.output
    for name in [*real, *PAPER_SUITES]:
        assert name in printed.output


def test_bench_list_says_whether_data_is_present(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM3_DATA", str(tmp_path))
    assert data_missing(load_bench("ibims1")) is not None
    (tmp_path / "ibims1").mkdir()
    assert data_missing(load_bench("ibims1")) is None
    assert data_missing(load_bench("synth-depth")) is None  # synthetic: always here


def test_suite_table_reports_like_for_like_partial_averages():
    table = Table.model_validate({
        "title": "t", "columns": [{"title": "A", "bench": "a", "metric": "delta1"}, {"title": "B", "bench": "b", "metric": "delta1"}],
        "summary": [{"title": "Avg", "of": ["A", "B"]}],
        "rows": [{"model": "paper", "values": [0.5, 0.7, 0.6]}],
    })
    full = table_view(table, {"a": {"metrics": {"delta1": 0.9}}, "b": {"metrics": {"delta1": 0.7}}}, "mine")
    assert full.headers == ["A", "B", "Avg"] and full.rows[-1] == ("mine (this run)", [0.9, 0.7, pytest.approx(0.8)])
    part = table_view(table, {"a": {"metrics": {"delta1": 0.9}}}, "mine")
    # The paper's average needs both columns; the partial one averages A for every row.
    assert part.headers == ["A", "B", "Avg", "Avg (1 of 2)"]
    assert part.rows[0] == ("paper", [0.5, 0.7, 0.6, 0.5]) and part.rows[-1] == ("mine (this run)", [0.9, None, None, 0.9])
    assert "| mine (this run) | 0.900 | — | — | 0.900 |" in markdown_table(part)


def test_a_suite_row_with_the_wrong_number_of_values_is_an_error(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "task": "depth", "source": "x",
        "tables": [{"title": "t", "columns": [{"title": "A", "bench": "ibims1", "metric": "delta1"}], "rows": [{"model": "m", "values": [1, 2]}]}],
    }))
    with pytest.raises(SuiteError, match=r"s.yaml.*row 'm' has 2 values for 1 columns"):
        load_suite(path)


@pytest.mark.realdata
@pytest.mark.skipif(not IBIMS.is_dir(), reason="iBims-1 sample not present")
def test_paper_depth_suite_with_only_ibims_runs_it_and_lists_the_missing(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(IBIMS, data / "ibims1")
    monkeypatch.setenv("VLM3_DATA", str(data))
    out = tmp_path / "suite"
    printed = runner.invoke(app, ["eval", "--model", "ground-truth", "--suite", "paper-depth", "--out", str(out), "--limit", "2", "--no-plots"])
    assert printed.exit_code == 0, printed.output
    text = printed.output
    suite = load_suite("paper-depth")
    missing = [b for b in suite.benches if b != "ibims1"]
    assert len(missing) == 7 and f"7 of 8 benches of paper-depth have no data here" in text
    for bench in missing:
        assert f"- {bench}: {data / bench} does not exist" in text
        assert load_bench(bench).get.splitlines()[0].strip() in text  # how to get it
    # The Table 1 layout, the published rows, then this run: δ1 = 1 on iBims-1.
    assert "| model | Argoverse2 |" in text and "| VLM3-4B |" in text and "| DepthLM-7B |" in text
    mine = next(line for line in text.splitlines() if line.startswith("| ground-truth (this run)"))
    assert "1.000" in mine
    metrics = json.loads((out / "ibims1" / "metrics.json").read_text())["metrics"]
    assert metrics["delta1"] == 1.0 and metrics["n"] == 200
    report = json.loads((out / "suite.json").read_text())
    assert set(report["missing"]) == set(missing) and list(report["evaluated"]) == ["ibims1"]
    assert (out / "suite.md").is_file()


def test_eval_needs_exactly_one_of_bench_and_suite(tmp_path):
    for args in ([], ["--bench", "synth-depth", "--suite", "paper-depth"]):
        printed = runner.invoke(app, ["eval", "--model", "ground-truth", "--out", str(tmp_path / "o"), *args])
        assert printed.exit_code == 2 and "exactly one of --bench NAME and --suite NAME" in printed.output


@pytest.mark.parametrize("task", ["depth", "pose", "correspondence", "object"])
def test_the_ground_truth_answerer_scores_the_synthetic_benches_perfectly(task, tmp_path):
    printed = runner.invoke(app, ["eval", "--model", "ground-truth", "--bench", f"synth-{task}", "--out", str(tmp_path / "gt"), "--limit", "3", "--no-plots"])
    assert printed.exit_code == 0, printed.output
    m = json.loads((tmp_path / "gt" / "metrics.json").read_text())["metrics"]
    assert m["failed"] == 0 and m["parsed"] == m["n"] > 0
    if task == "depth":
        assert m["delta1"] == 1.0 and m["abs_rel"] < 0.01
    elif task == "pose":
        assert m["auc30"] == 1.0
    elif task == "correspondence":
        assert m["epe"] < 1.0 and m["pck1"] == 1.0
    else:
        assert m["qualitative_acc"] == m["quantitative_success"] == m["direction_success"] == 1.0


def test_the_ground_truth_answerer_refuses_a_question_it_was_not_built_for(tmp_path):
    from PIL import Image

    from vlm3.models.backend import single_turn
    from vlm3.models.truth import GroundTruthBackend

    backend = GroundTruthBackend(load_bench("synth-depth"), tmp_path / "cache")
    with pytest.raises(KeyError, match="no target for the question 'How tall is the moon"):
        backend.generate([single_turn([Image.new("RGB", (8, 8))], "How tall is the moon?")])


# --- vlm3 prepare on a root of another layout -------------------------------------------------


@pytest.mark.parametrize("adapter", ["depthlm-jsonl", "eth3d", "hpatches", "middlebury", "scannetpp_dslr", "tum"])
def test_prepare_on_a_root_of_another_layout_names_the_expected_tree(adapter, tmp_path):
    from vlm3.data.adapters import get_adapter

    root = tmp_path / "not-a-dataset"
    root.mkdir()
    (root / "notes.txt").write_text("hello")
    printed = runner.invoke(app, ["prepare", adapter, "--root", str(root), "--out", str(tmp_path / "out")])
    assert printed.exit_code == 1, printed.output
    assert "Error:" in printed.output and f"does not look like a {adapter} dataset" in printed.output
    first = get_adapter(adapter).layout.strip().splitlines()[0].strip()
    assert first in printed.output and "0 records" not in printed.output


def test_prepare_units_that_give_nothing_are_a_layout_error(tmp_path):
    """A scene folder that has none of the files a scene needs: not '0 records, 0 rejected', exit 0."""
    root = tmp_path / "tum"
    (root / "rgbd_dataset_freiburg1_desk").mkdir(parents=True)
    printed = runner.invoke(app, ["prepare", "tum", "--root", str(root), "--out", str(tmp_path / "out")])
    assert printed.exit_code == 1 and "does not look like a tum dataset" in printed.output, printed.output
