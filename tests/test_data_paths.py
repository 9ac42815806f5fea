"""Where data comes from: the one data setting (``VLM3_DATA``, ``vlm3.paths``) behind the iBims-1
bench and the demo, and relocatable prepared folders (``image_root`` relative to the manifest)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from support import make_depthlm_source
from vlm3.data.io import MANIFEST, image_root, read_manifest, read_records
from vlm3.data.prepare import PrepareOptions, prepare
from vlm3.paths import DATA_ENV, DataPathError, data_dir, dataset_dir, default_data_dir

ROOT = Path(__file__).resolve().parents[1]


# --- one data setting ----------------------------------------------------------------------------


def test_unset_data_setting_is_the_checkouts_shared_data(monkeypatch):
    from vlm3.demo.run import DemoConfig
    from vlm3.eval.bench import load_bench

    monkeypatch.delenv(DATA_ENV, raising=False)
    expected = (ROOT.parent / "shared" / "data").resolve()
    assert default_data_dir() == data_dir() == expected
    assert load_bench("ibims1").data["prepare"]["root"] == str(expected / "ibims1")
    assert DemoConfig().ibims_root == expected / "ibims1"


def test_the_bench_and_the_demo_follow_vlm3_data(monkeypatch, tmp_path):
    from vlm3.demo.run import DemoConfig
    from vlm3.eval.bench import load_bench

    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    bench = load_bench("ibims1")
    assert bench.data["prepare"]["root"] == str(tmp_path.resolve() / "ibims1")
    assert DemoConfig().ibims_root == DemoConfig.quick().ibims_root == tmp_path.resolve() / "ibims1"
    (tmp_path / "ibims1").mkdir()
    assert dataset_dir("ibims1") == tmp_path.resolve() / "ibims1"


def test_a_missing_dataset_names_the_setting_and_the_path(monkeypatch, tmp_path):
    from vlm3.eval.bench import BenchError, load_bench, resolve_data

    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    tried = tmp_path.resolve() / "ibims1"
    with pytest.raises(DataPathError, match=rf"dataset 'ibims1': {tried} does not exist \({DATA_ENV}={tmp_path}\); set {DATA_ENV} to"):
        dataset_dir("ibims1")
    with pytest.raises(BenchError, match=rf"ibims1\.yaml: data\.prepare\.root = {tried} does not exist \({DATA_ENV}={tmp_path}; set {DATA_ENV}"):
        resolve_data(load_bench("ibims1"), tmp_path / "cache", progress=False)
    monkeypatch.delenv(DATA_ENV)
    with pytest.raises(DataPathError, match=r"does not exist \(VLM3_DATA unset, default .*shared/data \(the source checkout's"):
        dataset_dir("no-such-dataset")


def test_the_demo_says_why_it_skips_ibims(monkeypatch, tmp_path, capsys):
    from vlm3.demo.run import DemoConfig, _ibims_heldout
    from vlm3.settings import Settings

    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert _ibims_heldout(DemoConfig.quick(), Settings()) is None
    out = " ".join(capsys.readouterr().out.split())
    assert f"iBims-1 rows skipped: no {tmp_path.resolve() / 'ibims1' / 'ibims1_val.jsonl'} ({DATA_ENV}={tmp_path})" in out


def test_a_users_own_env_vars_still_expand_in_bench_configs(monkeypatch, tmp_path):
    from vlm3.eval.bench import load_bench

    monkeypatch.setenv("MY_DATA", str(tmp_path / "mine"))
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "task": "depth", "data": {"records": "${MY_DATA}/prep"}}))
    bench = load_bench(path)
    assert bench.data["records"] == str((tmp_path / "mine" / "prep").resolve()) and bench.data_setting is None


# --- relocatable prepared folders -----------------------------------------------------------------


def all_images_load(folder: Path) -> int:
    from vlm3.tasks.samples import load_images

    root = image_root(folder)
    return sum(len(load_images(rec, root)) for rec in read_records(folder))


@pytest.fixture
def moved(tmp_path) -> dict[str, Path]:
    """A source and its prepared folder side by side, moved together; a materialised folder moved alone."""
    share = tmp_path / "share"
    make_depthlm_source(share / "src", 4, (64, 48), focal=(60.0, 60.0))
    plain = prepare("depthlm-jsonl", share / "src", share / "prep", PrepareOptions(), progress=False)
    mat = prepare("depthlm-jsonl", share / "src", tmp_path / "mat", PrepareOptions(materialize=True, focal=140.0, size_multiple=28), progress=False)
    assert plain.records == mat.records == 4, (plain.examples, mat.examples)
    assert read_manifest(share / "prep")["image_root"] == "../src"
    assert read_manifest(tmp_path / "mat")["image_root"] == "."
    (tmp_path / "elsewhere").mkdir()
    shutil.move(share, tmp_path / "elsewhere" / "share")
    shutil.move(tmp_path / "mat", tmp_path / "elsewhere" / "mat")
    assert not share.exists() and not (tmp_path / "mat").exists()
    return {"prep": tmp_path / "elsewhere" / "share" / "prep", "src": tmp_path / "elsewhere" / "share" / "src", "mat": tmp_path / "elsewhere" / "mat"}


def test_moved_prepared_folders_still_find_their_images(moved):
    assert image_root(moved["prep"]) == moved["src"].resolve()
    assert image_root(moved["mat"]) == moved["mat"].resolve()
    assert all_images_load(moved["prep"]) == all_images_load(moved["mat"]) == 4


def test_a_folder_moved_without_its_source_falls_back_to_the_recorded_source(tmp_path):
    make_depthlm_source(tmp_path / "src", 4, (64, 48), focal=(60.0, 60.0))
    prepare("depthlm-jsonl", tmp_path / "src", tmp_path / "prep", PrepareOptions(), progress=False)
    (tmp_path / "far" / "away").mkdir(parents=True)
    shutil.move(tmp_path / "prep", tmp_path / "far" / "away" / "prep")
    folder = tmp_path / "far" / "away" / "prep"
    assert read_manifest(folder)["image_root"] == "../src"  # -> far/away/src: not there
    assert image_root(folder) == (tmp_path / "src").resolve()  # manifest source.root
    assert all_images_load(folder) == 4


def test_old_manifests_with_absolute_image_roots_still_read(tmp_path):
    make_depthlm_source(tmp_path / "src", 4, (64, 48), focal=(60.0, 60.0))
    prepare("depthlm-jsonl", tmp_path / "src", tmp_path / "prep", PrepareOptions(), progress=False)
    manifest = read_manifest(tmp_path / "prep")
    manifest["image_root"] = str((tmp_path / "src").resolve())  # as vlm3 wrote it before
    (tmp_path / "prep" / MANIFEST).write_text(json.dumps(manifest))
    assert image_root(tmp_path / "prep") == (tmp_path / "src").resolve()
    assert all_images_load(tmp_path / "prep") == 4


@pytest.mark.slow
def test_moved_folders_train_and_evaluate(moved, tmp_path):
    from vlm3.eval.run import run_eval
    from vlm3.models.tiny import build_tiny_model
    from vlm3.train.config import parse_config
    from vlm3.train.sft import train

    model = build_tiny_model("qwen2_5_vl", tmp_path / "tiny", seed=0)
    cfg = parse_config({
        "model": {"name_or_path": str(model), "dtype": "float32", "min_pixels": 1024, "max_pixels": 50176},
        "data": {"task": "depth", "datasets": [{"path": str(moved["prep"]), "name": "prep"}, {"path": str(moved["mat"]), "name": "mat"}], "focal": 140,
                 "size_multiple": 28, "n_coords": 100, "points_per_sample": 2, "depth_type": "z"},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "per_device_batch_size": 2, "learning_rate": 1e-3,
                  "warmup_ratio": 0.0, "save_steps": 100, "logging_steps": 1},
    })
    result = train(cfg, quiet=True)
    assert result.global_step == 2
    bench = tmp_path / "moved.yaml"
    bench.write_text(yaml.safe_dump({"name": "moved", "task": "depth", "data": {"records": str(moved["prep"])}, "max_new_tokens": 4}))
    ev = run_eval(str(result.final_dir), bench, tmp_path / "eval", limit=2, limit_points=2, progress=False, plots=False)
    assert ev.metrics["metrics"]["n"] == 4 and ev.n_queries == 4


# --- shipped configs by name ---------------------------------------------------------------------


def test_shipped_training_and_mixture_configs_load_by_name(monkeypatch, tmp_path):
    from vlm3.config import ConfigError
    from vlm3.data.mixture import load_mixture_config
    from vlm3.paths import configs_dir
    from vlm3.train.config import load_config

    monkeypatch.chdir(tmp_path)  # no configs/ here: names resolve inside the package
    by_name = load_config("tiny-cpu", ["train.max_steps=3"])
    by_path = load_config(configs_dir() / "tiny-cpu.yaml", ["train.max_steps=3"])
    assert by_name.to_dict() == by_path.to_dict() and by_name.train.max_steps == 3
    assert load_mixture_config("mixture-paper-depth") == load_mixture_config(configs_dir() / "mixture-paper-depth.yaml")
    (tmp_path / "tiny-cpu").write_text("train:\n  max_steps: 7\n")  # a user's own file wins over the name
    assert load_config("tiny-cpu").train.max_steps == 7
    with pytest.raises(ConfigError, match="config file no-such-recipe does not exist"):
        load_config("no-such-recipe")
