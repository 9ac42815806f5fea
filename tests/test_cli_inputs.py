"""Command-line input the way people type it: `vlm3 predict --points` in every documented form, and
`vlm3 synth --help` listing every registered scene family."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from test_predict import H, W, DepthStub, EchoStub
from vlm3.cli import app
from vlm3.infer.cli import gather_option_values, parse_cli_points

runner = CliRunner()


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    """A W x H test image (the stubs' answers depend only on the asked pixels)."""
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.new("RGB", (W, H), (90, 120, 150)).save(path)
    return path


@pytest.fixture
def stubs(monkeypatch):
    monkeypatch.setattr("vlm3.models.backend.open_backend", lambda spec, *a, **k: {"depth-stub": DepthStub(), "echo-stub": EchoStub()}[spec])


POINT_FORMS = {
    "separate arguments": ["--points", "18,57", "93,47"],
    "one quoted string": ["--points", "18,57 93,47"],
    "semicolons": ["--points", "18,57;93,47"],
    "repeated option": ["--points", "18,57", "--points", "93,47"],
    "option=value then more": ["--points=18,57", "93,47"],
    "spaces around commas": ["--points", "18, 57 ; 93 ,47"],
}


@pytest.mark.parametrize("form", POINT_FORMS.values(), ids=list(POINT_FORMS))
def test_predict_depth_points_in_every_form(stubs, image_path, tmp_path, form):
    args = ["predict", "depth", str(image_path), "--model", "depth-stub", "--profile", "vlm3", "--fx", "100", *form, "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "points.json").read_text())
    assert [(p["x"], p["y"]) for p in doc["points"]] == [(18.0, 57.0), (93.0, 47.0)]


def test_predict_points_before_the_images_and_for_matches(stubs, image_path, tmp_path):
    """Pairs after --points stop at the first argument that is not one (the image files)."""
    result = runner.invoke(app, ["predict", "depth", "--points", "18,57", "93,47", str(image_path), "--model", "depth-stub",
                                 "--profile", "vlm3", "--fx", "100", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "d" / "points.json").read_text())["points"]) == 2
    for command in ("correspondence", "corr"):
        out = tmp_path / command
        result = runner.invoke(app, ["predict", command, "--points", "10,20", "50,60", str(image_path), str(image_path), "--model", "echo-stub",
                                     "--profile", "vlm3", "--fx", "100", "--out", str(out)])
        assert result.exit_code == 0, result.output
        matches = json.loads((out / "matches.json").read_text())["matches"]
        assert [(m["x1"], m["y1"]) for m in matches] == [(10.0, 20.0), (50.0, 60.0)]


@pytest.mark.parametrize(
    "form, bad",
    [
        (["--points", "18,57", "93"], "'93'"),
        (["--points", "18,57 93"], "'93'"),
        (["--points", "18,57;93,47,1"], "'93,47,1'"),
        (["--points", "18,57", "--points", "x,1"], "'x,1'"),
        (["--points", "nan,3"], "'nan,3'"),
        (["--points", " ; "], "holds no x,y pair"),
    ],
)
def test_predict_malformed_points_name_the_value(stubs, image_path, tmp_path, form, bad):
    result = runner.invoke(app, ["predict", "depth", str(image_path), "--model", "depth-stub", "--profile", "vlm3", "--fx", "100", *form, "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert bad in result.output and "--points" in result.output and "Traceback" not in result.output


def test_points_argument_gathering():
    assert gather_option_values(["a.png", "--points", "1,2", "3,4", "-5,6", "b.png", "7,8"]) == \
        ["a.png", "--points", "1,2", "--points", "3,4", "--points", "-5,6", "b.png", "7,8"]
    assert gather_option_values(["--points", "1,2", "--", "3,4"]) == ["--points", "1,2", "--", "3,4"]  # -- ends options
    assert gather_option_values(["--points", "1,2", "--fx", "100", "3,4"]) == ["--points", "1,2", "--fx", "100", "3,4"]
    assert gather_option_values(["--points"]) == ["--points"]  # Click reports the missing value
    assert parse_cli_points(["1,2 3.5,4e1", "5,6;7,8"]).tolist() == [[1, 2], [3.5, 40], [5, 6], [7, 8]]


def test_synth_help_lists_every_registered_family():
    from vlm3.data.synth import FAMILIES

    result = runner.invoke(app, ["synth", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "cluttered" in FAMILIES and len(FAMILIES) >= 4
    help_line = next(line for line in result.output.splitlines() if "--family" in line)
    for name in FAMILIES:
        assert name in help_line, (name, help_line)


def test_synth_help_follows_the_registry(monkeypatch):
    """A family registered later shows up in the help (the list is read from the registry, not written out)."""
    from vlm3 import cli
    from vlm3.data.synth import scene

    monkeypatch.setitem(scene.FAMILIES, "zz_test_family", scene.FAMILIES["fixed_rig"])
    assert cli._synth_family_help().endswith("random_rig, zz_test_family")
