"""The quick demo runs every stage and writes a well-formed report (a smoke test, not accuracy)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vlm3.cli import app


@pytest.mark.slow
def test_quick_demo_writes_report(tmp_path, monkeypatch) -> None:
    import os

    import torch

    out = tmp_path / "demo"
    monkeypatch.delenv("VLM3_DEMO_NUMERICS", raising=False)
    threads, cbwr = torch.get_num_threads(), os.environ.get("MKL_CBWR")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # The demo pins two threads while it runs and gives the caller its own setting back.
    assert torch.get_num_threads() == threads and os.environ.get("MKL_CBWR") == cbwr
    for name in ("report.md", "report.html", "results.json", "learning_curves.png", "dense_depth.png", "point_cloud_gt.ply", "point_cloud_pred.ply"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["numerics"]["pinned"] and results["numerics"]["threads"] == 2
    assert set(results["arms"]) >= {"a", "b"}
    for key in ("a", "b"):
        arm = results["arms"][key]
        assert arm["curve"], "learning curve points were recorded"
        assert {"fixed_rig", "random_rig"} <= set(arm["final"])
        for m in arm["final"].values():
            assert 0.0 <= m["delta1"] <= 1.0 and m["n"] > 0
        assert {"constant median", "row-only", "row + image size"} == set(results["baselines"][key]["fixed_rig"])
    md = (out / "report.md").read_text()
    assert "| run | evaluated on |" in md and "## Reading" in md and "lookup" in md


def test_demo_bad_model_is_a_named_error(tmp_path) -> None:
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "d"), "--model", str(tmp_path / "no-such-model")])
    assert result.exit_code == 2
    assert "no-such-model" in result.output and "no model folder at" in result.output
    assert "Traceback" not in result.output
