"""vlm3 eval: benches, the fixed sample list, resumable predictions, backends agreeing, the report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.eval.bench import BenchError, bench_dir, bench_from_dict, load_bench, make_sample_list, read_sample_list
from vlm3.eval.run import EvalError, read_predictions, run_eval
from vlm3.settings import SettingsError, model_settings_for, resolve_settings
from support import serve_in_thread
from vlm3.models.backend import Backend, Completion
from conftest import IBIMS

runner = CliRunner()


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(answering_model) -> Path:
    return answering_model


@pytest.fixture(scope="module")
def backend(model_dir):
    from vlm3.models.local import LocalBackend

    return LocalBackend.from_pretrained(model_dir, batch_size=8)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


def synth_bench(task: str, folder: Path, **changes) -> object:
    """A copy of vlm3/configs/bench/synth-<task>.yaml with its sample list kept in ``folder``."""
    raw = yaml.safe_load((bench_dir() / f"synth-{task}.yaml").read_text())
    raw["data"]["synth"]["scenes"] = 6
    raw.update(changes)
    path = folder / f"synth-{task}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_bench(path)


class Counting(Backend):
    """Counts query_many calls and questions; optionally fails on call number ``fail_at``."""

    def __init__(self, inner: Backend, fail_at: int | None = None) -> None:
        self.inner, self.fail_at = inner, fail_at
        self.name = inner.name
        self.calls = self.questions = 0

    def generate(self, requests, max_new_tokens=64):
        return self.inner.generate(requests, max_new_tokens)

    def query_many(self, images, questions, max_new_tokens=64, system=None):
        if self.fail_at is not None and self.calls + 1 == self.fail_at:
            raise KeyboardInterrupt("injected interruption")
        self.calls += 1
        self.questions += len(questions)
        return self.inner.query_many(images, questions, max_new_tokens, system)


class Oracle(Backend):
    """Answers every question with the bench's own target answer (looked up by image and text)."""

    name = "oracle"

    def __init__(self, bench, cache: Path) -> None:
        from vlm3.data.io import image_root
        from vlm3.eval.bench import load_records, resolve_data
        from vlm3.tasks.samples import build_sample, load_images

        data = resolve_data(bench, cache, progress=False)
        settings, _ = resolve_settings(None, bench.settings)
        self.table: dict[tuple[str, str], str] = {}
        for rec in load_records(data).values():
            try:
                sample = build_sample(rec, load_images(rec, image_root(data)), bench.task, settings)
            except ValueError:
                continue  # no labels of this task
            key = self._key(sample.images)
            self.table.update({(key, q.question): q.answer for q in sample.queries})

    @staticmethod
    def _key(images) -> str:
        return hashlib.sha1(b"".join(np.asarray(im).tobytes() for im in images)).hexdigest()

    def generate(self, requests, max_new_tokens=64):
        return [self.table[(self._key(r.images), r.messages[-1]["content"][-1]["text"])] for r in requests]


class Scripted(Backend):
    """Cycles through fixed answers, whatever the question (malformed output on purpose)."""

    name = "scripted"

    def __init__(self, answers) -> None:
        self.answers, self.i = list(answers), 0

    def generate(self, requests, max_new_tokens=64):
        out = []
        for _ in requests:
            out.append(self.answers[self.i % len(self.answers)])
            self.i += 1
        return out


def preds(out: Path) -> dict[str, str]:
    return {k: v.get("raw") for k, v in read_predictions(out / "predictions.jsonl").items()}


# --- iBims-1 through the local and the HTTP backend ---------------------------------------------


@pytest.fixture(scope="module")
def served(model_dir):
    """URL of an OpenAI-compatible vlm3 server on a free 127.0.0.1 port, running in a thread."""
    from vlm3.models.local import LocalBackend
    from vlm3.serve.server import create_app

    from vlm3.serve.server import published_settings

    backend = LocalBackend.from_pretrained(model_dir, batch_size=8)
    app_ = create_app(backend, model_name="tiny", max_concurrency=1, max_batch_size=8, vlm3=published_settings(str(model_dir)))
    with serve_in_thread(app_, timeout=30) as url:
        yield url


@pytest.mark.realdata
@pytest.mark.skipif(not IBIMS.is_dir(), reason="iBims-1 sample not present")
def test_ibims_local_and_http_give_identical_predictions(model_dir, served, cache, tmp_path):
    args = ["--bench", "ibims1", "--limit", "2", "--limit-points", "8", "--max-new-tokens", "6", "--cache", str(cache)]
    local = runner.invoke(app, ["eval", "--model", str(model_dir), "--out", str(tmp_path / "local"), *args])
    assert local.exit_code == 0, local.output
    http = runner.invoke(app, ["eval", "--model", served, "--out", str(tmp_path / "http"), *args])
    assert http.exit_code == 0, http.output
    a, b = preds(tmp_path / "local"), preds(tmp_path / "http")
    assert len(a) == 16 and a == b
    ma = json.loads((tmp_path / "local" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "http" / "metrics.json").read_text())
    assert ma["metrics"] == mb["metrics"] and ma["questions_hash"] == mb["questions_hash"]
    assert ma["metrics"]["n"] == 16 and ma["metrics"]["failed"] <= 16
    # iBims-1 stores z-depth; the prompt asks range, so ground truth is converted per pixel.
    line = next(iter(read_predictions(tmp_path / "local" / "predictions.jsonl").values()))
    assert ma["settings"]["depth_type"] == "range" and ma["bench"]["samples"].endswith("vlm3/configs/bench/ibims1.samples.json")
    assert ma["model"]["processor"]["max_pixels"] > 0 and mb["model"]["processor"] is None
    assert line["gt"] > 0 and len(line["pixel"]) == 2


@pytest.mark.realdata
@pytest.mark.skipif(not IBIMS.is_dir(), reason="iBims-1 sample not present")
def test_ibims_oracle_answers_score_perfectly(cache, tmp_path):
    bench = load_bench("ibims1")
    result = run_eval(Oracle(bench, cache), bench, tmp_path / "o", limit=3, cache_dir=cache, progress=False, plots=False, profile="vlm3")
    m = result.metrics["metrics"]
    assert m["n"] == 300 and m["failed"] == 0 and m["delta1"] == 1.0 and m["abs_rel"] < 0.002


# --- determinism, batching, resuming ------------------------------------------------------------


def test_batch_size_one_equals_eight(backend, cache, tmp_path):
    bench = synth_bench("depth", tmp_path)
    kw = dict(limit=3, limit_points=4, max_new_tokens=5, cache_dir=cache, progress=False, plots=False)
    r1 = run_eval(backend, bench, tmp_path / "b1", batch_size=1, **kw)
    r8 = run_eval(backend, bench, tmp_path / "b8", batch_size=8, **kw)
    assert preds(tmp_path / "b1") == preds(tmp_path / "b8")
    assert r1.metrics["metrics"] == r8.metrics["metrics"] and r1.metrics["metrics"]["n"] == r1.metrics["metrics"]["asked"] == 12


def test_interrupted_eval_resumes_without_recomputing(backend, cache, tmp_path):
    bench = synth_bench("depth", tmp_path)
    kw = dict(limit=4, limit_points=3, max_new_tokens=5, cache_dir=cache, progress=False, plots=False)
    clean = run_eval(backend, bench, tmp_path / "clean", **kw)

    out = tmp_path / "resumed"
    first = Counting(backend, fail_at=3)  # answers two records, then "Ctrl-C"
    with pytest.raises(KeyboardInterrupt):
        run_eval(first, bench, out, **kw)
    done = read_predictions(out / "predictions.jsonl")
    assert first.calls == 2 and len({line["record"] for line in done.values()}) == 2
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"key": "torn line from a kil')  # a write cut short by a kill

    second = Counting(backend)
    result = run_eval(second, bench, out, **kw)
    remaining = [k for k, line in read_predictions(tmp_path / "clean" / "predictions.jsonl").items() if k not in done and "not_asked" not in line]
    assert second.calls == 2 and result.n_cached == len(done) and second.questions == len(remaining)
    assert preds(out) == preds(tmp_path / "clean")
    assert result.metrics["metrics"] == clean.metrics["metrics"]

    third = Counting(backend)  # everything cached: nothing is asked again
    again = run_eval(third, bench, out, **kw)
    assert third.calls == 0 and again.metrics["metrics"] == clean.metrics["metrics"]
    assert again.metrics["run"]["backend_calls"] == 0 and again.metrics["run"]["cached"] == again.n_queries


def test_resume_refuses_a_different_run(backend, cache, tmp_path):
    bench = synth_bench("depth", tmp_path)
    kw = dict(limit=1, limit_points=2, cache_dir=cache, progress=False, plots=False)
    run_eval(backend, bench, tmp_path / "o", max_new_tokens=4, **kw)
    with pytest.raises(EvalError, match="max_new_tokens"):
        run_eval(backend, bench, tmp_path / "o", max_new_tokens=5, **kw)
    run_eval(backend, bench, tmp_path / "o", max_new_tokens=5, overwrite=True, **kw)


# --- the sample list ----------------------------------------------------------------------------


def test_sample_list_is_deterministic_versioned_and_checked(cache, tmp_path):
    from vlm3.eval.bench import load_records, resolve_data, sample_list_for

    bench = synth_bench("correspondence", tmp_path)
    records = load_records(resolve_data(bench, cache, progress=False))
    a = sample_list_for(bench, records)
    assert a.path == tmp_path / "synth-correspondence.samples.json" and a.path.is_file()
    assert make_sample_list(bench, records).to_dict() == a.to_dict()  # same seed, same list
    assert all(len(e.labels) == 10 for e in a.entries) and read_sample_list(a.path).hash == a.hash
    mtime = a.path.stat().st_mtime_ns
    assert sample_list_for(bench, records).hash == a.hash and a.path.stat().st_mtime_ns == mtime  # reused, not redrawn

    with pytest.raises(BenchError, match="seed=0.*seed=1"):
        sample_list_for(synth_bench("correspondence", tmp_path, seed=1), records)
    edited = json.loads(a.path.read_text())
    edited["entries"][0]["labels"][0] = 99
    a.path.write_text(json.dumps(edited))
    with pytest.raises(BenchError, match="content hash"):
        read_sample_list(a.path)


def test_bench_config_errors_name_file_field_and_value(tmp_path):
    good = {"name": "b", "task": "depth", "data": {"records": "x"}}
    with pytest.raises(BenchError, match=r"unknown field\(s\) settings.focall"):
        bench_from_dict({**good, "settings": {"focall": 3}}, tmp_path / "b.yaml")
    with pytest.raises(BenchError, match=r"b.yaml: task = 'dpeth'"):
        bench_from_dict({**good, "task": "dpeth"}, tmp_path / "b.yaml")
    with pytest.raises(BenchError, match=r"settings.depth_type = 'euclid'"):
        bench_from_dict({**good, "settings": {"depth_type": "euclid"}}, tmp_path / "b.yaml")
    with pytest.raises(BenchError, match=r"limits.records = 0"):
        bench_from_dict({**good, "limits": {"records": 0}}, tmp_path / "b.yaml")
    with pytest.raises(BenchError, match="VLM3_NOT_SET"):
        bench_from_dict({**good, "data": {"records": "${VLM3_NOT_SET}/x"}}, tmp_path / "b.yaml")
    result = runner.invoke(app, ["eval", "--model", "m", "--bench", "no-such-bench", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no-such-bench" in result.output and "Traceback" not in result.output


def test_settings_come_from_the_model_then_the_bench_then_defaults(tmp_path):
    (tmp_path / "vlm3.json").write_text(json.dumps({"task": "depth", "unify": True, "focal": 140, "size_multiple": 28, "resize_to": None, "n_coords": 1000, "packing": "multi_turn", "answer_style": "short", "depth_type": "z"}))
    meta = model_settings_for(str(tmp_path))
    assert meta.path == str(tmp_path / "vlm3.json") and meta.task == "depth"
    opts, sources = resolve_settings(meta.stated(), {"focal": 1000, "depth_type": "range"})
    assert (opts.focal, opts.size_multiple, opts.n_coords, opts.depth_type) == (140, 28, 1000, "z")
    assert sources["focal"] == "model"
    # A field the file does not state (an older vlm3.json has no prompt_version) is the bench's.
    opts, sources = resolve_settings(meta.stated(), {"prompt_version": "bench-v"})
    assert (opts.prompt_version, sources["prompt_version"], sources["focal"]) == ("bench-v", "bench", "model")
    opts, sources = resolve_settings(None, {"focal": 750})
    assert (opts.focal, opts.n_coords, opts.depth_type, sources["focal"], sources["n_coords"]) == (750, 2000, "range", "bench", "default")
    assert model_settings_for("http://127.0.0.1:1") is None
    with pytest.raises(SettingsError, match="no vlm3.json"):
        model_settings_for("http://127.0.0.1:1", tmp_path / "nothing")


# --- every task on synthetic data ---------------------------------------------------------------


@pytest.mark.parametrize("task", ["depth", "pose", "correspondence", "object"])
def test_synthetic_bench_runs_for_each_task(task, backend, cache, tmp_path):
    bench = synth_bench(task, tmp_path)
    out = tmp_path / "tiny"
    result = run_eval(backend, bench, out, limit=2, limit_points=3, max_new_tokens=4, cache_dir=cache, progress=False)
    m = result.metrics["metrics"]
    assert m["n"] == m["labels"] == m["asked"] + m["not_asked"] == result.n_queries and 0 <= m["failed"] <= m["n"] and m["parsed"] <= m["n"]
    assert (out / "report.md").is_file() and any((out / "plots").glob("example_*.png"))

    # The bench's own answers, parsed back, must score (near) perfectly: labels, coordinates and
    # the mapping back to the original frames agree end to end.
    oracle = run_eval(Oracle(bench, cache), bench, tmp_path / "oracle", limit=4, cache_dir=cache, progress=False, plots=False, profile="vlm3")
    om = oracle.metrics["metrics"]
    assert om["failed"] == 0 and om["n"] > 0
    if task == "depth":
        assert om["delta1"] == 1.0
    elif task == "pose":
        assert om["auc30"] > 0.95 and om["rra3"] == 1.0
    elif task == "correspondence":
        assert om["pck1"] == 1.0 and om["epe"] < 0.1  # original pixels
    else:
        assert om["qualitative_acc"] == 1.0 and om["direction_success"] == 1.0


def test_malformed_answers_are_failures_not_crashes(cache, tmp_path):
    bench = synth_bench("depth", tmp_path)
    answers = ["", "<answer>", "1e999 m", "-3", "0", "(812, 430)", "about 2.5 meters", "\x00\ufffd", "1,234.5"]
    result = run_eval(Scripted(answers), bench, tmp_path / "o", limit=3, limit_points=3, cache_dir=cache, progress=False, profile="vlm3")
    m = result.metrics["metrics"]
    assert m["n"] == m["labels"] == 9 and m["failed"] >= 6 and m["parsed"] >= 2
    report = (tmp_path / "o" / "report.md").read_text()
    assert "Unparsed answers" in report

    pose = synth_bench("pose", tmp_path)
    result = run_eval(Scripted(["Yaw=+1.0°, Pitch=nope", "(1, 2, 3) Yaw=1 Pitch=2 Roll=3"]), pose, tmp_path / "p", limit=2, cache_dir=cache, progress=False, plots=False, profile="vlm3")
    assert result.metrics["metrics"]["parsed"] == 1 and result.metrics["metrics"]["failed"] == 1


def test_metrics_json_has_the_documented_keys(backend, cache, tmp_path):
    bench = synth_bench("depth", tmp_path)
    run_eval(backend, bench, tmp_path / "o", limit=1, limit_points=2, max_new_tokens=3, cache_dir=cache, progress=False)
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert {"task", "metrics", "model", "bench", "settings", "settings_source", "prompt_template_hash", "questions_hash", "max_new_tokens", "versions", "run"} <= set(doc)
    assert {"n", "parsed", "failed", "delta1", "abs_rel", "labels", "asked", "not_asked", "not_asked_reasons"} <= set(doc["metrics"])
    assert {"spec", "backend", "processor", "settings_from"} <= set(doc["model"])
    assert {"min_pixels", "max_pixels", "patch_multiple", "images_resized", "effective_fx"} <= set(doc["model"]["processor"])
    assert {"name", "samples", "samples_hash", "seed", "records", "limit", "limit_points"} <= set(doc["bench"])
    assert {"vlm3", "torch", "transformers"} <= set(doc["versions"])
    assert {"unify", "focal", "size_multiple", "n_coords", "depth_type"} <= set(doc["settings"])
    assert {"seconds", "queries", "computed", "cached", "backend_calls", "queries_per_s"} <= set(doc["run"])
    assert doc["bench"]["samples_hash"].startswith("sha256:") and doc["settings"]["focal"] == 140


# --- a served vlm3 model is asked the way it was trained ------------------------------------------


def test_http_eval_uses_the_settings_the_server_publishes(answering_model, cache, tmp_path):
    """`vlm3 serve` publishes the checkpoint's vlm3.json in /v1/models; `vlm3 eval` over HTTP then
    asks exactly what the local evaluation asks, with no extra flag but the API key."""
    import shutil

    from vlm3.models.local import LocalBackend
    from vlm3.serve.server import create_app, published_settings

    folder = tmp_path / "trained"
    shutil.copytree(answering_model, folder)
    # Not the bench's settings (focal 140, coordinates in [0, 2000)): a model trained otherwise.
    (folder / "vlm3.json").write_text(json.dumps({"task": "depth", "unify": True, "focal": 120, "size_multiple": 28, "n_coords": 100}))
    bench = synth_bench("depth", tmp_path)
    args = ["--bench", str(bench.source), "--limit", "2", "--limit-points", "4", "--max-new-tokens", "4", "--cache", str(cache)]
    local = runner.invoke(app, ["eval", "--model", str(folder), "--out", str(tmp_path / "local"), *args])
    assert local.exit_code == 0, local.output

    served_app = create_app(LocalBackend.from_pretrained(folder, batch_size=8), model_name="tiny", api_key="K", vlm3=published_settings(str(folder)))
    with serve_in_thread(served_app, timeout=30) as url:
        http = runner.invoke(app, ["eval", "--model", url, "--api-key", "K", "--out", str(tmp_path / "http"), *args])
        wrong = runner.invoke(app, ["eval", "--model", url, "--api-key", "nope", "--out", str(tmp_path / "wrong"), *args])
    assert http.exit_code == 0, http.output
    assert preds(tmp_path / "http") == preds(tmp_path / "local")
    docs = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("local", "http")]
    assert docs[0]["metrics"] == docs[1]["metrics"] and docs[0]["settings"] == docs[1]["settings"]
    assert (docs[1]["settings"]["focal"], docs[1]["settings"]["n_coords"]) == (120, 100)
    assert docs[1]["settings_source"]["focal"] == "model" and docs[1]["model"]["settings_from"].endswith("/models")
    assert wrong.exit_code == 1 and "invalid API key" in wrong.output and "Traceback" not in wrong.output
    local_key = runner.invoke(app, ["eval", "--model", str(folder), "--api-key", "K", "--out", str(tmp_path / "x"), *args])
    assert local_key.exit_code != 0 and "apply to http:// models only" in local_key.output


def oracle_server(oracle: Oracle, finish_reason: str):
    """An OpenAI-compatible app answering the bench's target answer to every question (looked up
    by the decoded images and the text), with the given ``finish_reason``."""
    from support import answer_server

    return answer_server(oracle.table, oracle._key, finish_reason)


@pytest.mark.parametrize("finish_reason", ["stop", "length"])
def test_answers_cut_off_at_the_token_limit_are_truncated_failures(finish_reason, cache, tmp_path):
    """A server that gives the right answer but says it hit the token limit ("length") scores no
    answer: each is a failure counted as ``truncated`` in metrics.json, the report and the
    predictions; the same answers with "stop" score perfectly."""
    from vlm3.tasks.depth import parse_depth

    bench = synth_bench("depth", tmp_path)
    oracle = Oracle(bench, cache)
    out = tmp_path / finish_reason
    with serve_in_thread(oracle_server(oracle, finish_reason)) as url:
        result = runner.invoke(app, ["eval", "--model", url, "--bench", str(bench.source), "--limit", "3", "--limit-points", "4",
                                     "--cache", str(cache), "--out", str(out), "--no-plots", "--profile", "vlm3"])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    lines = [line for line in read_predictions(out / "predictions.jsonl").values() if "not_asked" not in line]
    n = len(lines)
    assert n > 0 and m["n"] == n
    # Every answer is the right one: only the finish reason differs between the two runs.
    assert all(abs(parse_depth(line["raw"]) / line["gt"] - 1) < 0.01 for line in lines)
    if finish_reason == "stop":
        assert (m["failed"], m["truncated"], m["parsed"], m["delta1"]) == (0, 0, n, 1.0)
        assert not any(line["truncated"] for line in lines)
    else:
        assert (m["failed"], m["truncated"], m["parsed"]) == (n, n, 0) and m["delta1"] == 0.0
        assert all(line["truncated"] and line["pred"] is None and not line["parsed"] and line["raw"] for line in lines)
        assert f"truncated={n}" in result.output
        report = (out / "report.md").read_text()
        assert f"{n} failed (counted wrong; {n} of them truncated at the token limit)" in report
        assert "| truncated | " + str(n) + " |" in report and "(truncated at the token limit)" in report


def test_truncated_answers_are_counted_per_dataset():
    """metrics.json counts truncated answers overall and per dataset, inside ``failed``."""
    from vlm3.eval.report import compute_metrics

    def line(dataset: str, pred, truncated: bool | None) -> dict:
        out = {"key": f"{dataset}-{pred}", "dataset": dataset, "pred": pred, "gt": 2.0, "parsed": pred is not None}
        return out if truncated is None else {**out, "truncated": truncated}

    lines = [line("a", 2.0, False), line("a", None, True), line("a", None, False), line("b", None, True), line("b", 2.0, None)]
    m = compute_metrics("depth", lines)
    assert (m["n"], m["failed"], m["truncated"]) == (5, 3, 2)
    assert list(m).index("truncated") == list(m).index("failed") + 1
    assert {d: (dm["failed"], dm["truncated"]) for d, dm in m["by_dataset"].items()} == {"a": (2, 1), "b": (1, 1)}


@pytest.mark.parametrize("task", ["depth", "pose", "correspondence", "object"])
def test_shipped_synthetic_bench_lists_match_their_data(task, cache):
    """The versioned lists in vlm3/configs/bench are checked against freshly rendered data: a change to
    the scene families must come with new lists, never a stale one that refuses to run."""
    from vlm3.eval.bench import load_records, resolve_data, sample_list_for

    bench = load_bench(f"synth-{task}")
    before = bench.samples_path.read_text()
    samples = sample_list_for(bench, load_records(resolve_data(bench, cache, progress=False)))
    assert samples.path == bench.samples_path and bench.samples_path.read_text() == before


class Outage(Oracle):
    """The oracle behind a server that is down: every request fails after its retries (finish
    reason "error") until ``down`` is cleared."""

    down = True

    def complete(self, requests, max_new_tokens=64):
        if self.down:
            return [Completion("", None, None, "error") for _ in requests]
        return super().complete(requests, max_new_tokens)


def test_failed_requests_are_failures_and_asked_again_on_resume(cache, tmp_path):
    """Questions whose requests failed count as failed ("the request failed", not truncated) and a
    re-run asks them again instead of keeping the failure."""
    bench = synth_bench("depth", tmp_path)
    out = tmp_path / "o"
    kw = dict(limit=2, limit_points=3, cache_dir=cache, progress=False, plots=False, profile="vlm3")
    backend = Outage(bench, cache)
    down = run_eval(backend, bench, out, **kw)
    m = down.metrics["metrics"]
    lines = [line for line in read_predictions(out / "predictions.jsonl").values() if "not_asked" not in line]
    assert m["n"] == m["failed"] == len(lines) > 0 and m["truncated"] == 0
    assert all(line["error"] and not line["truncated"] and line["pred"] is None for line in lines)
    backend.down = False
    again = run_eval(backend, bench, out, **kw)
    assert again.n_queries - again.n_cached == len(lines)  # every failed question asked again
    assert again.metrics["metrics"]["delta1"] == 1.0 and again.metrics["metrics"]["failed"] == 0


# --- every label scored: labels, asked, not asked -----------------------------------------------


class OracleAt(Oracle):
    """The oracle for questions asked with ``settings`` (a model's vlm3.json), not the bench's."""

    def __init__(self, bench, cache: Path, settings) -> None:
        from vlm3.data.io import image_root
        from vlm3.eval.bench import load_records, resolve_data
        from vlm3.tasks.samples import build_sample, load_images

        data = resolve_data(bench, cache, progress=False)
        self.table = {}
        for rec in load_records(data).values():
            sample = build_sample(rec, load_images(rec, image_root(data)), bench.task, settings)
            self.table.update({(self._key(sample.images), q.question): q.answer for q in sample.queries})


@pytest.mark.realdata
@pytest.mark.skipif(not IBIMS.is_dir(), reason="iBims-1 sample not present")
def test_ibims_at_focal_140_multiple_28_scores_every_label(cache, tmp_path):
    """The issue's case (a model trained at focal 140 px, size multiple 28): nothing is skipped,
    every label is asked, and metrics.json and the report say so."""
    from vlm3.settings import Settings

    meta = tmp_path / "model"
    meta.mkdir()
    (meta / "vlm3.json").write_text(json.dumps({"task": "depth", "profile": "vlm3", "focal": 140, "size_multiple": 28, "n_coords": 2000, "depth_type": "range"}))
    bench = load_bench("ibims1")
    oracle = OracleAt(bench, cache, Settings(focal=140, size_multiple=28, n_coords=2000, depth_type="range"))
    result = run_eval(oracle, bench, tmp_path / "o", limit=5, meta=meta, cache_dir=cache, progress=False, plots=False)
    m = result.metrics["metrics"]
    assert (m["labels"], m["asked"], m["not_asked"], m["not_asked_reasons"]) == (500, 500, 0, {})
    assert m["n"] == 500 and m["failed"] == 0 and m["delta1"] == 1.0
    assert result.metrics["settings"]["size_multiple"] == 28 and json.loads((tmp_path / "o" / "run.json").read_text())["canvas"] == "padded up to size_multiple"
    assert "over all 500 labels: 500 asked, 0 not asked;" in (tmp_path / "o" / "report.md").read_text()


def distorted_bench(tmp_path: Path, cache: Path):
    """synth-depth with strong barrel distortion (k1 = -0.5) declared on view 0: the corners'
    undistorted positions leave the unified canvas, so some labels cannot be shown to any model."""
    import shutil

    from vlm3.data.io import read_records, shard_path, shard_paths, write_shard
    from vlm3.eval.bench import resolve_data

    data = resolve_data(synth_bench("depth", tmp_path), cache, progress=False)
    folder = tmp_path / "distorted"
    shutil.copytree(data, folder)
    records = [r.model_copy(update={"views": [r.views[0].model_copy(update={"dist": [-0.5, 0.0, 0.0, 0.0]}), *r.views[1:]]}) for r in read_records(data)]
    for path in shard_paths(folder):
        path.unlink()
    write_shard(records, shard_path(folder, 0))
    raw = {"name": "synth-depth-distorted", "task": "depth", "data": {"records": str(folder)},
           "settings": {"focal": 140, "size_multiple": 28, "n_coords": 2000, "depth_type": "range"}}
    (tmp_path / "distorted.yaml").write_text(yaml.safe_dump(raw))
    return load_bench(tmp_path / "distorted.yaml")


def test_labels_no_model_can_be_asked_are_counted_failures_the_same_for_every_model(cache, tmp_path):
    """Labels the undistorted view cannot show are never asked, for any model: metrics.json, the
    printed line and the report give labels / asked / not asked by reason; δ1 is over ALL labels
    with them as misses, AbsRel over the usable answers; an older run's "skipped" lines are redone."""
    from vlm3.data.unify import NOT_ASKED

    bench = distorted_bench(tmp_path, cache)
    oracle = Oracle(bench, cache)
    args = ["--bench", str(bench.source), "--cache", str(cache), "--no-plots", "--profile", "vlm3"]
    with serve_in_thread(oracle_server(oracle, "stop")) as url:
        printed = runner.invoke(app, ["eval", "--model", url, "--out", str(tmp_path / "oracle"), *args])
        assert printed.exit_code == 0, printed.output
        best = json.loads((tmp_path / "oracle" / "metrics.json").read_text())["metrics"]
        worst = run_eval(Scripted(["no idea"]), bench, tmp_path / "worst", cache_dir=cache, progress=False, plots=False, profile="vlm3").metrics["metrics"]

        counts = lambda m: {k: m[k] for k in ("n", "labels", "asked", "not_asked", "not_asked_reasons")}  # noqa: E731
        assert counts(best) == counts(worst)  # the same labels, whatever the model answers
        labels, asked, missing = best["labels"], best["asked"], best["not_asked"]
        assert labels == 60 and 0 < missing < labels and asked + missing == labels == best["n"]
        assert best["not_asked_reasons"] == {"outside_undistorted_image": missing}
        assert best["failed"] == missing and best["delta1"] == pytest.approx(asked / labels) and best["abs_rel"] < 0.01
        assert worst["failed"] == labels and worst["delta1"] == 0.0
        why = NOT_ASKED["outside_undistorted_image"]
        assert f"over {labels} labels ({asked} asked, {missing} not asked ({missing} {why})" in " ".join(printed.output.split())
        report = (tmp_path / "oracle" / "report.md").read_text()
        assert f"over all {labels} labels: {asked} asked, {missing} not asked ({missing} {why})" in report
        assert f"{missing} of them not asked" in report and "## Labels not asked" in report

        lines = {name: read_predictions(tmp_path / name / "predictions.jsonl") for name in ("oracle", "worst")}
        unasked = {name: {k for k, line in got.items() if "not_asked" in line} for name, got in lines.items()}
        assert unasked["oracle"] == unasked["worst"] and len(unasked["oracle"]) == missing
        for key in unasked["oracle"]:
            line = lines["oracle"][key]
            assert line["not_asked"] == "outside_undistorted_image" and line["pred"] is None and not line["parsed"]
            assert line["gt"] > 0 and "raw" not in line and "question" not in line and len(line["pixel"]) == 2

        # An older vlm3 wrote "skipped" lines without ground truth: resuming asks those labels again.
        asked_key = next(k for k, line in lines["oracle"].items() if "not_asked" not in line)
        with open(tmp_path / "oracle" / "predictions.jsonl", "a") as f:
            f.write(json.dumps({"key": asked_key, "record": asked_key.split("#")[0], "label": asked_key.split("#")[1], "skipped": "outside the transformed image"}) + "\n")
        again = runner.invoke(app, ["eval", "--model", url, "--out", str(tmp_path / "oracle"), *args])
    assert again.exit_code == 0, again.output
    assert "1 asked now" in again.output  # the one label the old line had skipped
    assert json.loads((tmp_path / "oracle" / "metrics.json").read_text())["metrics"] == best
