"""``vlm3 prepare`` and record validation: real iBims-1 output, rejections, resuming, sharding, clean CLI errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.data.adapters.base import Rejection
from vlm3.data.adapters.depthlm_jsonl import DepthLMJsonlAdapter
from vlm3.data.io import image_root, read_manifest, read_records, shard_paths
from vlm3.data.prepare import PrepareError, PrepareOptions, prepare, unified_image_name
from vlm3.data.records import Record
from vlm3.data.adapters.base import REASONS
from vlm3.data.validate import check_images, load_images, make_record
from conftest import IBIMS
from support import make_depthlm_source as make_dataset

needs_ibims = pytest.mark.skipif(not (IBIMS / "ibims1_val.jsonl").is_file(), reason="iBims-1 sample not available")
runner = CliRunner()


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in shard_paths(out)}


# --- validate -----------------------------------------------------------------------------------


def _fields(**kw):
    base = dict(id="x", dataset="t", views=[{"image": "a.png", "intrinsics": [10, 10, 2, 2, 4, 4]}],
                depth={"pixels": [(1.5, 1.5)], "depth": [2.0], "depth_type": "z"})
    return {**base, **kw}


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(depth={"pixels": [(1.5, 1.5)], "depth": [math.inf], "depth_type": "z"}), "bad_depth"),
        (dict(depth={"pixels": [(1.5, 1.5)], "depth": [0.0], "depth_type": "z"}), "bad_depth"),
        (dict(depth={"pixels": [(1.5, 1.5)], "depth": [1.0, 2.0], "depth_type": "z"}), "invalid_record"),
        (dict(depth={"pixels": [(math.nan, 1.5)], "depth": [1.0], "depth_type": "z"}), "pixel_outside_image"),
        (dict(views=[{"image": "a.png", "intrinsics": [10, 10, 2, 2, 4, -4]}]), "bad_calibration"),
        (dict(views=[{"image": "a.png", "intrinsics": [10, 10, 2, 2, 4, 4], "T_cam_from_world": [[1, 0], [0, 1]]}]), "bad_pose"),
        (dict(depth={"pixels": [(1.5, 1.5)], "depth": [1.0], "depth_type": "disparity"}), "invalid_record"),
        (dict(colour="red"), "invalid_record"),
        (dict(views=[{"image": "a.png", "intrinsics": [10, 10, 2, 2, 4, 4], "dist": [0.1, 0.0, 0.0]}]), "bad_calibration"),
    ],
)
def test_make_record_reasons(change, reason):
    r = make_record("f.jsonl:3", **_fields(**change))
    assert isinstance(r, Rejection) and r.reason == reason and r.source == "f.jsonl:3"
    assert r.reason in REASONS and r.detail


def test_make_record_missing_field():
    fields = _fields()
    del fields["views"]
    r = make_record("s", **fields)
    assert r.reason == "invalid_record" and "views" in r.detail


def test_check_images(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    rec = make_record("s", **_fields())
    assert isinstance(rec, Record) and check_images(rec, tmp_path) is None
    arrays = load_images(rec, tmp_path)
    assert [a.shape for a in arrays] == [(4, 4, 3)]
    assert check_images(rec, tmp_path / "nowhere").reason == "missing_file"
    out = make_record("s", **_fields(depth={"pixels": [(4.0, 1.0)], "depth": [1.0], "depth_type": "z"}))
    assert check_images(out, tmp_path).reason == "pixel_outside_image"
    small = make_record("s", **_fields(views=[{"image": "a.png", "intrinsics": [10, 10, 2, 2, 5, 4]}]))
    assert check_images(small, tmp_path).reason == "size_mismatch"
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    assert check_images(rec, tmp_path).reason == "unreadable_file"


# --- real data ----------------------------------------------------------------------------------


@pytest.mark.realdata
@needs_ibims
@pytest.mark.parametrize("materialize", [False, True])
def test_cli_prepares_ibims1(tmp_path, materialize):
    out = tmp_path / "out"
    args = ["prepare", "depthlm-jsonl", "--root", str(IBIMS), "--out", str(out)]
    if materialize:
        args += ["--materialize", "--option", "chunk_size=50", "--workers", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "records written" in res.output
    report = json.loads((out / "prepare_report.json").read_text())
    assert (report["records"], report["depth_points"], report["rejected"]) == (100, 10_000, {})
    manifest = read_manifest(out)
    assert manifest["size"] == 100 and manifest["dataset"] == "ibims1" and manifest["seed"] == 0
    assert manifest["label_conventions"]["depth_types"] == {"z": 100}
    records = list(read_records(out))
    assert len(records) == 100 and sum(len(r.depth.pixels) for r in records) == 10_000
    root = image_root(out, manifest)
    if not materialize:
        assert manifest["focal"] is None and root == IBIMS.resolve()
        assert records[0].views[0].image == "rgb/corridor_01.png"
        return
    assert manifest["focal"] == 1000.0 and root == out.resolve()
    src = DepthLMJsonlAdapter(IBIMS)
    originals = {r.id: r for r in src.convert_all()}
    for rec in records[::9]:
        K = rec.views[0].K
        assert (K.fx, K.fy) == (1000.0, 1000.0)
        with Image.open(root / rec.views[0].image) as im:
            assert im.size == (K.width, K.height)
        orig = originals[rec.id]
        s_x, s_y = 1000.0 / orig.views[0].K.fx, 1000.0 / orig.views[0].K.fy
        assert K.width == round(640 * s_x) and K.height == round(480 * s_y)
        # Exact label mapping u' = s * u (corner-origin), depth unchanged.
        np.testing.assert_allclose(rec.depth.pixels, np.asarray(orig.depth.pixels) * [s_x, s_y], rtol=1e-12)
        assert rec.depth.depth == orig.depth.depth
        assert rec.meta["source_image"] == orig.views[0].image


@pytest.mark.realdata
@needs_ibims
def test_damaged_copy_gives_97_records_and_three_named_rejections(tmp_path):
    src = tmp_path / "src"
    (src / "rgb").mkdir(parents=True)
    for p in (IBIMS / "rgb").glob("*.png"):
        os.symlink(p, src / "rgb" / p.name)
    lines = [json.loads(x) for x in (IBIMS / "ibims1_val.jsonl").read_text().splitlines() if x.strip()]
    # 1) a corrupt image file: a truncated copy replaces the link
    corrupt = src / lines[4]["image"]
    data = corrupt.read_bytes()
    corrupt.unlink()
    corrupt.write_bytes(data[: len(data) // 3])
    # 2) a NaN depth, 3) a pixel one column beyond the right edge
    lines[20]["depth"][7] = math.nan
    lines[60]["pixel_coords"][3] = [lines[60]["intrinsics"][4], 10]
    (src / "ibims1_val.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    report = prepare("depthlm-jsonl", src, tmp_path / "out", PrepareOptions(options={"chunk_size": "40"}), progress=False)
    assert report.records == 97 and report.depth_points == 9_700
    assert report.rejected == {"unreadable_file": 1, "bad_depth": 1, "pixel_outside_image": 1}
    assert report.examples["unreadable_file"][0].startswith("ibims1_val.jsonl:5:")
    assert report.examples["bad_depth"][0].startswith("ibims1_val.jsonl:21:")
    assert report.examples["pixel_outside_image"][0].startswith("ibims1_val.jsonl:61:")
    assert len(list(read_records(tmp_path / "out"))) == 97
    assert read_manifest(tmp_path / "out")["rejected"] == report.rejected


# --- resuming, determinism, sharding (tiny fixture) -----------------------------------------------


OPTS = dict(options={"chunk_size": "2"}, materialize=True, focal=60.0)


def test_rerun_skips_finished_shards(tmp_path):
    make_dataset(tmp_path / "src")
    out = tmp_path / "out"
    first = prepare("depthlm-jsonl", tmp_path / "src", out, PrepareOptions(**OPTS), progress=False)
    assert (first.units_total, first.units_converted, first.records, first.complete) == (5, 5, 9, True)
    stamps = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in shard_paths(out)}
    images = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    second = prepare("depthlm-jsonl", tmp_path / "src", out, PrepareOptions(**OPTS), progress=False)
    assert (second.units_converted, second.units_skipped) == (0, 5)
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in shard_paths(out)} == stamps
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == images
    # The report still counts everything, from the done files.
    assert (second.records, second.depth_points, second.rejected) == (first.records, first.depth_points, first.rejected)


def test_interrupted_run_resumes_to_the_same_output(tmp_path, monkeypatch):
    make_dataset(tmp_path / "src")
    clean = tmp_path / "clean"
    prepare("depthlm-jsonl", tmp_path / "src", clean, PrepareOptions(**OPTS), progress=False)

    out = tmp_path / "out"
    real_convert = DepthLMJsonlAdapter.convert

    def interrupted(self, unit):
        if unit.endswith("00000005-00000006"):
            raise KeyboardInterrupt
        yield from real_convert(self, unit)

    monkeypatch.setattr(DepthLMJsonlAdapter, "convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare("depthlm-jsonl", tmp_path / "src", out, PrepareOptions(**OPTS), progress=False)
    monkeypatch.setattr(DepthLMJsonlAdapter, "convert", real_convert)
    assert len(shard_paths(out)) == 2 and not (out / "manifest.json").exists()
    # A run killed between writing a shard and its done file: that unit is redone.
    (out / "done" / "00001.json").unlink()

    resumed = prepare("depthlm-jsonl", tmp_path / "src", out, PrepareOptions(**OPTS), progress=False)
    assert (resumed.units_skipped, resumed.units_converted) == (1, 4)
    assert shard_bytes(out) == shard_bytes(clean)
    assert read_manifest(out) == read_manifest(clean)
    assert sorted(p.name for p in (out / "images" / "rgb").iterdir()) == sorted(p.name for p in (clean / "images" / "rgb").iterdir())


def test_workers_and_shards_give_identical_output(tmp_path):
    make_dataset(tmp_path / "src")
    one = tmp_path / "one"
    prepare("depthlm-jsonl", tmp_path / "src", one, PrepareOptions(**OPTS), progress=False)
    two = tmp_path / "two"
    prepare("depthlm-jsonl", tmp_path / "src", two, PrepareOptions(workers=2, **OPTS), progress=False)
    assert shard_bytes(two) == shard_bytes(one)

    split = tmp_path / "split"
    part = prepare("depthlm-jsonl", tmp_path / "src", split, PrepareOptions(num_shards=2, shard_index=1, **OPTS), progress=False)
    assert (part.units_converted, part.complete, part.manifest) == (2, False, None)
    assert sorted(p.name for p in shard_paths(split)) == ["00001.jsonl", "00003.jsonl"]
    last = prepare("depthlm-jsonl", tmp_path / "src", split, PrepareOptions(num_shards=2, shard_index=0, **OPTS), progress=False)
    assert last.complete and last.units_converted == 3
    assert shard_bytes(split) == shard_bytes(one)
    assert read_manifest(split) == read_manifest(one)


def tmp_files(out: Path) -> list[str]:
    return sorted(str(q.relative_to(out)) for q in out.rglob("*.tmp"))


def test_killed_prepare_takes_its_workers_along_and_a_rerun_cleans_up(tmp_path):
    """kill -9 of ``vlm3 prepare --workers 2``: no fork server, worker or resource tracker outlives
    it (they used to keep converting queued units, then wait forever); a re-run removes the
    temporaries a killed run leaves and completes."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    make_dataset(tmp_path / "src", n_images=48, size=(320, 240))
    out = tmp_path / "out"
    opts = dict(options={"chunk_size": "2"}, materialize=True, focal=90.0)  # 24 units of two ~640x460 PNGs (fx 45 -> 90)
    cmd = [sys.executable, "-m", "vlm3.cli", "prepare", "depthlm-jsonl", "--root", str(tmp_path / "src"), "--out", str(out),
           "--workers", "2", "--materialize", "--focal", "90", "-o", "chunk_size=2"]
    main = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not any((out / "done").glob("*.json")) if (out / "done").is_dir() else True:  # the workers are converting
            assert main.poll() is None, "prepare ended before its first unit was done"
            assert time.monotonic() < deadline, "no unit done within 120 s"
            time.sleep(0.02)
        children = psutil.Process(main.pid).children(recursive=True)  # fork server, workers, resource tracker
        assert len(children) >= 3
        names = {c.pid: " ".join(c.cmdline())[:60] for c in children}
        main.send_signal(signal.SIGKILL)
        assert main.wait(timeout=30) == -signal.SIGKILL
    finally:
        if main.poll() is None:
            main.kill()

    def running() -> list[psutil.Process]:  # a zombie runs nothing: it only waits to be reaped
        alive = []
        for child in children:
            try:
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child)
            except psutil.NoSuchProcess:
                pass
        return alive

    deadline = time.monotonic() + 5
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = running()
    for child in left:
        child.kill()
    assert not left, f"processes still running 5 s after the main process was killed: {[names[c.pid] for c in left]}"
    assert not (out / "manifest.json").exists(), "prepare finished before it was killed"

    # What a worker killed mid-write leaves behind, in this run's naming and in the older pid-only one.
    stale = [out / "images" / "rgb" / ".im7.png.s0of1.4242.tmp", out / "done" / ".00003.json.s0of1.4242.tmp",
             out / "records" / "00005.jsonl.tmp", out / "images" / "rgb" / ".im9.png.4242.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    report = prepare("depthlm-jsonl", tmp_path / "src", out, PrepareOptions(workers=2, **opts), progress=False)
    assert report.complete and report.records == 48 and report.units_skipped >= 1
    assert tmp_files(out) == []
    assert len(list((out / "images" / "rgb").glob("*.png"))) == 48


def test_a_sharded_rerun_removes_only_its_own_temporaries(tmp_path):
    make_dataset(tmp_path / "src", n_images=4)
    out = tmp_path / "out"
    shard = PrepareOptions(num_shards=2, shard_index=1, **OPTS)
    prepare("depthlm-jsonl", tmp_path / "src", out, shard, progress=False)
    mine = [".im1.png.s1of2.11.tmp", "../../records/00001.jsonl.tmp"]  # shard 1 of 2 owns unit 1
    others = [".im0.png.s0of2.12.tmp", ".im2.png.s1of3.13.tmp", ".im3.png.14.tmp", "../../records/00000.jsonl.tmp", "../../manifest.json.tmp"]
    for name in mine + others:
        (out / "images" / "rgb" / name).write_bytes(b"partial")
    prepare("depthlm-jsonl", tmp_path / "src", out, shard, progress=False)
    assert tmp_files(out) == sorted(os.path.normpath(f"images/rgb/{n}") for n in others)
    # The unsharded run that closes a sharded preparation owns the whole folder.
    assert prepare("depthlm-jsonl", tmp_path / "src", out, PrepareOptions(**OPTS), progress=False).complete
    assert tmp_files(out) == []


def test_materialized_size_multiple_pads_and_keeps_every_label(tmp_path):
    make_dataset(tmp_path / "src", n_images=2)
    # size_multiple pads the unified 40 x 28.7 image up to 64 x 32 (rounding to the nearest
    # multiple cropped it to 32 x 32 and lost the labels right of x = 32).
    report = prepare("depthlm-jsonl", tmp_path / "src", tmp_path / "out",
                     PrepareOptions(materialize=True, focal=45.0, size_multiple=32), progress=False)
    kept = list(read_records(tmp_path / "out"))
    assert all(r.views[0].K.width == 64 and r.views[0].K.height == 32 for r in kept)
    assert report.dropped_labels == 0 and report.depth_points == 12 and report.records == 2
    assert all(x < 40 and y < 28.8 for r in kept for x, y in r.depth.pixels)  # inside the content, not the padding


def test_settings_or_source_change_is_refused(tmp_path):
    make_dataset(tmp_path / "src", n_images=2)
    prepare("depthlm-jsonl", tmp_path / "src", tmp_path / "out", PrepareOptions(), progress=False)
    with pytest.raises(PrepareError, match="other settings.*seed"):
        prepare("depthlm-jsonl", tmp_path / "src", tmp_path / "out", PrepareOptions(seed=3), progress=False)
    with open(tmp_path / "src" / "d.jsonl", "a") as f:
        f.write(json.dumps({"image": "rgb/im0.png", "intrinsics": [45, 47, 20, 15, 40, 30], "pixel_coords": [[1, 1]], "depth": [2.0]}) + "\n")
    with pytest.raises(PrepareError, match="other settings.*source_version"):
        prepare("depthlm-jsonl", tmp_path / "src", tmp_path / "out", PrepareOptions(), progress=False)


def test_unified_image_names():
    assert unified_image_name("rgb/a.png") == "images/rgb/a.png"
    assert unified_image_name("/rgb/a.jpg") == "images/rgb/a.jpg.png"
    assert unified_image_name("../../etc/x.png") == "images/etc/x.png"


# --- CLI errors ---------------------------------------------------------------------------------


def _cli_error(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    return res.output


def test_cli_errors_are_clean(tmp_path):
    make_dataset(tmp_path / "src", n_images=2)
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    assert "unknown adapter 'nope'" in _cli_error(["prepare", "nope", "--root", src, "--out", out])
    assert "does not exist" in _cli_error(["prepare", "depthlm-jsonl", "--root", str(tmp_path / "missing"), "--out", out])
    assert "key=value" in _cli_error(["prepare", "depthlm-jsonl", "--root", src, "--out", out, "--option", "chunk_size"])
    assert "depth_type" in _cli_error(["prepare", "depthlm-jsonl", "--root", src, "--out", out, "-o", "depth_type=disparity"])
    assert "shard-index" in _cli_error(["prepare", "depthlm-jsonl", "--root", src, "--out", out, "--num-shards", "2", "--shard-index", "2"])
    assert "--root SRC and --out DST are required" in _cli_error(["prepare", "depthlm-jsonl"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert "not empty" in _cli_error(["prepare", "depthlm-jsonl", "--root", src, "--out", str(tmp_path / "busy")])
    res = runner.invoke(app, ["prepare", "depthlm-jsonl", "--help-adapter"])
    assert res.exit_code == 0 and "depth_type" in res.output


# --- materialisation choice, unit sizing, linear bookkeeping ----------------------------------------


def test_write_images_values():
    from vlm3.data.prepare import parse_write_images

    assert [parse_write_images(v) for v in ("none", "PNG", "jpeg", "jpg", "jpeg:80", " jpeg:100 ")] == [
        "none", "png", "jpeg:95", "jpeg:95", "jpeg:80", "jpeg:100"]
    for bad in ("gif", "jpeg:0", "jpeg:101", "jpeg:", "jpeg:q", "png:9", "none:1"):
        with pytest.raises(PrepareError, match="expected none, jpeg"):
            parse_write_images(bad)
    # The older flag: materialize alone is png; with a format it is that format; with none a contradiction.
    assert (PrepareOptions().write_images, PrepareOptions().materialize) == ("none", False)
    assert PrepareOptions(materialize=True).write_images == "png"
    assert (PrepareOptions(write_images="jpeg").materialize, PrepareOptions(materialize=True, write_images="jpeg:90").write_images) == (True, "jpeg:90")
    with pytest.raises(PrepareError, match="give one of them"):
        PrepareOptions(materialize=True, write_images="none")


def test_jpeg_materialisation_names_jpg_images_and_records_the_choice(tmp_path):
    make_dataset(tmp_path / "src", size=(80, 60))
    yy, xx = np.mgrid[0:60, 0:80]
    for i, path in enumerate(sorted((tmp_path / "src" / "rgb").glob("*.png"))):  # smooth, photo-like images
        Image.fromarray(np.stack([xx * 3, yy * 4, (xx + yy + 20 * i) % 256], -1).astype(np.uint8)).save(path)
    png, jpeg = tmp_path / "png", tmp_path / "jpeg"
    prepare("depthlm-jsonl", tmp_path / "src", png, PrepareOptions(write_images="png", focal=60.0), progress=False)
    report = prepare("depthlm-jsonl", tmp_path / "src", jpeg, PrepareOptions(write_images="jpeg:95", focal=60.0), progress=False)
    assert report.records == 9 and report.images_this_run == 9
    manifest = read_manifest(jpeg)
    assert (manifest["write_images"], manifest["unified"], manifest["focal"]) == ("jpeg:95", True, 60.0)
    assert read_manifest(png)["write_images"] == "png"
    assert json.loads((jpeg / "prepare_settings.json").read_text())["write_images"] == "jpeg:95"
    by_id = {r.id: r for r in read_records(png)}
    for rec in read_records(jpeg):
        ref = by_id[rec.id]
        assert rec.views[0].image == ref.views[0].image + ".jpg" == unified_image_name(ref.meta["source_image"], ".jpg")
        assert rec.views[0].intrinsics == ref.views[0].intrinsics and rec.depth == ref.depth  # only the encoding differs
        a = np.asarray(Image.open(jpeg / rec.views[0].image).convert("RGB"), dtype=float)
        b = np.asarray(Image.open(png / ref.views[0].image), dtype=float)
        assert a.shape == b.shape == (rec.views[0].K.height, rec.views[0].K.width, 3)
        mse = np.mean((a - b) ** 2)
        assert 0 < mse and 10 * np.log10(255**2 / mse) > 35  # lossy, but close (PSNR in dB)
    assert all(p.suffix == ".jpg" for p in (jpeg / "images").rglob("*.*"))
    # Another encoding into the same DST is other settings, named.
    with pytest.raises(PrepareError, match="other settings.*write_images"):
        prepare("depthlm-jsonl", tmp_path / "src", jpeg, PrepareOptions(write_images="png", focal=60.0), progress=False)


def test_png_choice_is_the_older_materialize_output(tmp_path):
    make_dataset(tmp_path / "src")
    old = tmp_path / "old"
    prepare("depthlm-jsonl", tmp_path / "src", old, PrepareOptions(**OPTS), progress=False)
    new = tmp_path / "new"
    opts = {**OPTS, "materialize": False, "write_images": "png"}
    prepare("depthlm-jsonl", tmp_path / "src", new, PrepareOptions(**opts), progress=False)
    assert shard_bytes(new) == shard_bytes(old)
    assert (new / "prepare_settings.json").read_bytes() == (old / "prepare_settings.json").read_bytes()
    assert "write_images" not in json.loads((old / "prepare_settings.json").read_text())  # earlier DSTs stay resumable
    assert {p.name: p.read_bytes() for p in (new / "images" / "rgb").iterdir()} == {p.name: p.read_bytes() for p in (old / "images" / "rgb").iterdir()}


def test_only_8bit_images_may_be_jpeg():
    from vlm3.data.prepare import _is_8bit_image

    assert _is_8bit_image(np.zeros((4, 5, 3), np.uint8)) and _is_8bit_image(np.zeros((4, 5), np.uint8))
    for depth_like in (np.zeros((4, 5), np.uint16), np.zeros((4, 5), np.float32), np.zeros((4, 5, 4), np.uint8)):
        assert not _is_8bit_image(depth_like)


def test_cli_write_images_and_threads(tmp_path):
    import cv2

    make_dataset(tmp_path / "src", n_images=3)
    before = cv2.getNumThreads()
    out = tmp_path / "out"
    res = runner.invoke(app, ["prepare", "depthlm-jsonl", "--root", str(tmp_path / "src"), "--out", str(out),
                              "--write-images", "jpeg:90", "--focal", "60", "--threads", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "prepare_report.json").read_text())
    assert (report["records"], report["threads"]) == (3, 1)
    assert read_manifest(out)["write_images"] == "jpeg:90"
    assert cv2.getNumThreads() == before  # the command's thread choice ends with it
    assert "expected none, jpeg" in _cli_error(["prepare", "depthlm-jsonl", "--root", str(tmp_path / "src"), "--out", str(tmp_path / "o2"), "--write-images", "webp"])
    assert "give one of them" in _cli_error(["prepare", "depthlm-jsonl", "--root", str(tmp_path / "src"), "--out", str(tmp_path / "o2"),
                                             "--materialize", "--write-images", "none"])


def test_small_datasets_split_into_units_for_the_workers(tmp_path):
    from vlm3.data.adapters.depthlm_jsonl import MIN_UNITS, auto_chunk_size

    assert [auto_chunk_size(n) for n in (1, 9, 32, 33, 100, 8192, 8193, 10**6)] == [1, 1, 1, 2, 4, 256, 256, 256]
    make_dataset(tmp_path / "src", n_images=40)
    one = prepare("depthlm-jsonl", tmp_path / "src", tmp_path / "one", PrepareOptions(), progress=False)
    assert one.units_total == 20 and MIN_UNITS == 32  # 2 lines per unit; before: one unit of 256 lines, nothing to share
    two = prepare("depthlm-jsonl", tmp_path / "src", tmp_path / "two", PrepareOptions(workers=2), progress=False)
    assert (two.units_total, two.records) == (20, 40)
    assert shard_bytes(tmp_path / "two") == shard_bytes(tmp_path / "one")  # the unit size depends on the data, not on --workers
    assert read_manifest(tmp_path / "two") == read_manifest(tmp_path / "one")


@needs_ibims
def test_readme_ibims_example_has_units_for_two_workers():
    from vlm3.data.adapters.depthlm_jsonl import DepthLMJsonlAdapter

    assert len(DepthLMJsonlAdapter(IBIMS).units()) == 25  # 100 lines, 4 per unit


def test_bookkeeping_reads_each_done_file_once(tmp_path, monkeypatch):
    """Resume scan, progress and report are linear: no done file is read twice, none after its own unit ran."""
    import vlm3.data.prepare as P

    make_dataset(tmp_path / "src", n_images=12)
    reads: list[str] = []
    real = P._read_done
    monkeypatch.setattr(P, "_read_done", lambda path, unit, h: reads.append(path.name) or real(path, unit, h))
    opts = dict(options={"chunk_size": "1"})
    first = prepare("depthlm-jsonl", tmp_path / "src", tmp_path / "out", PrepareOptions(**opts), progress=False)
    assert (first.units_converted, first.records, reads) == (12, 12, [])  # results come from the run itself
    again = prepare("depthlm-jsonl", tmp_path / "src", tmp_path / "out", PrepareOptions(**opts), progress=False)
    assert again.units_skipped == 12 and sorted(reads) == sorted(set(reads)) and len(reads) == 12
    assert (again.records, again.depth_points) == (first.records, first.depth_points)

    reads.clear()
    split = tmp_path / "split"
    prepare("depthlm-jsonl", tmp_path / "src", split, PrepareOptions(num_shards=3, shard_index=0, **opts), progress=False)
    assert reads == []  # the other shards have nothing done yet (their listing is empty)
    last = prepare("depthlm-jsonl", tmp_path / "src", split, PrepareOptions(num_shards=3, shard_index=1, **opts), progress=False)
    assert sorted(reads) == [f"{i:05d}.json" for i in range(0, 12, 3)]  # shard 0's units, read once at the end
    assert not last.complete and last.units_done == 8
