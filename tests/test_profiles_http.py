"""Every profile, every task it defines, over HTTP: a server that answers the ground truth in the
profile's own format scores perfectly through ``vlm3 eval --model http://... --profile P``; the same
answers cut off at the token limit are counted failures, never values.

The server is this file's: an OpenAI-compatible app that looks up the target answer of each
question (by the images it was sent and the text) in a table built with vlm3's own sample builder
under the profile. It knows nothing of how answers are parsed or scored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import answer_server, serve_in_thread
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.data.io import image_root
from vlm3.eval.bench import load_bench, load_records, resolve_data
from vlm3.profiles import PROFILES
from vlm3.settings import settings_for_model
from vlm3.tasks import get_task, task_names
from vlm3.tasks.samples import build_sample, load_images

runner = CliRunner()
BENCHES = Path(__file__).resolve().parents[1] / "vlm3" / "configs" / "bench"
# The headline of a perfect answer sheet, per task.
PERFECT = {"depth": ("delta1", 1.0), "pose": ("auc30", 1.0), "correspondence": ("pck1", 1.0), "object": ("qualitative_acc", 1.0)}


def combos() -> list[tuple[str, str]]:
    out = []
    for profile in PROFILES.values():
        for task in task_names():
            if not profile.fixed or profile.name in get_task(task).profiles:
                out.append((profile.name, task))
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


def bench_for(task: str, folder: Path):
    raw = yaml.safe_load((BENCHES / f"synth-{task}.yaml").read_text())
    raw["data"]["synth"]["scenes"] = 4
    path = folder / f"synth-{task}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_bench(path)


def key(images) -> str:
    return hashlib.sha1(b"".join(np.asarray(im.convert("RGB")).tobytes() for im in images)).hexdigest()


def answer_table(bench, cache: Path, profile: str) -> dict[tuple[str, str], str]:
    """(images, question) -> the target answer, built as evaluation builds its questions."""
    task = get_task(bench.task)
    settings, _, _ = settings_for_model(task, None, bench.settings, profile=profile, model_ids=[], model="oracle")
    data = resolve_data(bench, cache, progress=False)
    table = {}
    for rec in load_records(data).values():
        if not task.has_labels(rec):
            continue
        sample = build_sample(rec, load_images(rec, image_root(data)), task, settings)
        for q in sample.queries:
            images = key(q.images or sample.images)
            parts, answers = q.parts or [q.question], q.answer.split("\n") if q.parts else [q.answer]
            table.update({(images, p): a for p, a in zip(parts, answers, strict=True)})
    return table




@pytest.mark.parametrize(("profile", "task"), combos())
def test_ground_truth_in_the_profiles_format_scores_perfectly_over_http(profile, task, cache, tmp_path):
    bench = bench_for(task, tmp_path)
    table = answer_table(bench, cache, profile)
    args = ["--bench", str(bench.source), "--limit", "3", "--limit-points", "6", "--cache", str(cache), "--no-plots", "--profile", profile]
    outs = {}
    for finish in ("stop", "length"):
        with serve_in_thread(answer_server(table, key, finish)) as url:
            result = runner.invoke(app, ["eval", "--model", url, "--out", str(tmp_path / finish), *args])
        assert result.exit_code == 0, result.output
        outs[finish] = json.loads((tmp_path / finish / "metrics.json").read_text())
    doc = outs["stop"]
    m = doc["metrics"]
    metric, best = PERFECT[task]
    assert m["n"] > 0 and m["failed"] == 0 and m[metric] == pytest.approx(best), m
    assert doc["settings"]["profile"] == profile and doc["profile"]["name"] == profile and doc["profile"]["from"] == "--profile"
    assert doc["profile"]["hash"].startswith("sha256:")
    cut = outs["length"]["metrics"]
    assert cut["n"] == m["n"] and cut["failed"] == cut["truncated"] == m["n"] and cut["parsed"] == 0


def test_profiles_ask_differently_and_hash_differently(cache, tmp_path):
    """Each profile's questions for one depth record differ, and so do their hashes."""
    from vlm3.profiles import profile_hash

    bench = bench_for("depth", tmp_path)
    task = get_task("depth")
    hashes = {}
    for profile in ("vlm3", "vlm3-release", "depthlm", "zero-shot"):
        settings, _, _ = settings_for_model(task, None, bench.settings, profile=profile, model_ids=[], model="m")
        hashes[profile] = profile_hash(settings, task)
    assert len(set(hashes.values())) == 4


def test_a_missing_answer_tag_is_a_truncated_answer(cache, tmp_path):
    """The released depth checkpoint closes its <answer> tag; an answer without it was cut off."""
    bench = bench_for("depth", tmp_path)
    table = {k: v.replace(" </answer>", "") for k, v in answer_table(bench, cache, "vlm3-release").items()}
    with serve_in_thread(answer_server(table, key, "stop")) as url:
        result = runner.invoke(app, ["eval", "--model", url, "--out", str(tmp_path / "o"), "--bench", str(bench.source), "--limit", "2",
                                     "--limit-points", "3", "--cache", str(cache), "--no-plots", "--profile", "vlm3-release"])
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())["metrics"]
    assert m["n"] > 0 and m["failed"] == m["truncated"] == m["n"]


def test_bad_profile_input_is_a_named_error(cache, tmp_path):
    bench = bench_for("pose", tmp_path)
    table = answer_table(bench, cache, "vlm3")
    base = ["--bench", str(bench.source), "--limit", "1", "--cache", str(cache), "--no-plots"]
    with serve_in_thread(answer_server(table, key, "stop")) as url:
        none = runner.invoke(app, ["eval", "--model", url, "--out", str(tmp_path / "a"), *base])
        unknown = runner.invoke(app, ["eval", "--model", url, "--out", str(tmp_path / "b"), *base, "--profile", "vlm9"])
        undefined = runner.invoke(app, ["eval", "--model", url, "--out", str(tmp_path / "c"), *base, "--profile", "depthlm"])
    for result, message in (
        (none, "pass --profile (one of vlm3, vlm3-release, depthlm, zero-shot)"),
        (unknown, "unknown profile 'vlm9'"),
        (undefined, "profile 'depthlm' does not define task 'pose'"),
    ):
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
