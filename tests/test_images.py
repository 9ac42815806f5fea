"""Image loading (vlm3.data.images): the pixel cap against decompression bombs, and record image
paths that must stay inside their dataset root, in prepare, eval, training and predict."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.data.adapters.base import ADAPTERS, REASONS, Adapter
from vlm3.data.images import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageError,
    ImageNotFoundError,
    ImagePathError,
    ImageTooLargeError,
    UnreadableImageError,
    check_record_image,
    image_size,
    open_rgb,
    record_image_path,
)
from vlm3.data.io import image_root, write_manifest, write_shard
from vlm3.data.prepare import PrepareOptions, prepare
from vlm3.data.records import Record
from vlm3.data.validate import check_images, make_record

runner = CliRunner()
BOMB = (12000, 12000)  # 144 Mpx: over the 64 Mpx cap, under PIL's own 179 Mpx refusal
W, H = 40, 30


def png_of_zeros(width: int, height: int, *, pixels: bool = True) -> bytes:
    """A valid 1-bit grey PNG of zeros, compressed row by row (the image is never in memory);
    ``pixels=False`` leaves out the pixel data (a header that claims the size, nothing more)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    if pixels:
        z = zlib.compressobj(9)
        row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
        out += chunk(b"IDAT", b"".join(z.compress(row) for _ in range(height)) + z.flush())
    return out + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb_bytes() -> bytes:
    data = png_of_zeros(*BOMB)
    assert len(data) < 100_000  # ~18 KB on disk, 432 MB as RGB
    return data


@pytest.fixture()
def root(tmp_path, bomb_bytes) -> Path:
    """A dataset root with a good image and a bomb; a readable image OUTSIDE it (tmp/x.png)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "root"
    (root / "rgb").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "rgb" / "good.png")
    (root / "rgb" / "bomb.png").write_bytes(bomb_bytes)
    (root / "rgb" / "huge.png").write_bytes(png_of_zeros(20000, 20000, pixels=False))  # PIL's own refusal
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    return root


# --- the loader ---------------------------------------------------------------------------------


def test_open_rgb_refuses_a_bomb_from_its_header(root, bomb_bytes):
    with pytest.raises(ImageTooLargeError) as e:
        open_rgb(root / "rgb" / "bomb.png")
    assert str(e.value) == (
        f"image {root / 'rgb' / 'bomb.png'} is 12000x12000 = 144 Mpx, over the 64 Mpx limit (set {MAX_PIXELS_ENV} to change it)"
    )
    assert e.value.size == BOMB and e.value.max_pixels == DEFAULT_MAX_PIXELS == 64_000_000
    assert isinstance(e.value, ImageError) and isinstance(e.value, OSError)
    with pytest.raises(ImageTooLargeError, match=r"^image upload #1 is 12000x12000"):
        open_rgb(bomb_bytes, where="upload #1")
    with pytest.raises(ImageTooLargeError):
        image_size(root / "rgb" / "bomb.png")
    # Beyond PIL's own limit PIL refuses the header; still the named error, with the size.
    with pytest.raises(ImageTooLargeError, match=r"is 400 Mpx, over the 64 Mpx limit"):
        open_rgb(png_of_zeros(20000, 20000, pixels=False))


def test_the_cap_is_overridable(root, monkeypatch):
    good = root / "rgb" / "good.png"
    im = open_rgb(good)
    assert im.mode == "RGB" and im.size == (W, H) and image_size(good) == (W, H)
    with pytest.raises(ImageTooLargeError, match=r"is 40x30 = 0.0012 Mpx, over the 0.001 Mpx limit"):
        open_rgb(good, max_pixels=1000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageTooLargeError):
        open_rgb(good)
    assert open_rgb(good, max_pixels=1200).size == (W, H)  # the argument beats the environment
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_PIXELS_ENV):
        open_rgb(good)


def test_missing_and_unreadable_files_are_named_errors(tmp_path):
    with pytest.raises(ImageNotFoundError, match="does not exist") as e:
        open_rgb(tmp_path / "none.png")
    assert isinstance(e.value, FileNotFoundError)
    (tmp_path / "t.txt").write_text("not an image")
    with pytest.raises(UnreadableImageError, match="cannot be read"):
        open_rgb(tmp_path / "t.txt")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    with pytest.raises(UnreadableImageError, match="cannot be decoded"):
        open_rgb(data[: len(data) // 2])


@pytest.mark.parametrize("image", ["a.png", "rgb/a.png", "./rgb/a.png", "rgb/a..b.png", "a:b.png"])
def test_relative_paths_inside_the_root_are_allowed(image, tmp_path):
    assert record_image_path(tmp_path, image) == tmp_path / image


@pytest.mark.parametrize(
    "image, why",
    [
        ("../x.png", "leaves the dataset root"),
        ("rgb/../../x.png", "leaves the dataset root"),
        ("rgb\\..\\..\\x.png", "leaves the dataset root"),
        ("/etc/passwd", "is absolute"),
        ("C:/data/x.png", "is absolute"),
        ("", "is empty"),
    ],
)
def test_paths_leaving_the_root_are_refused(image, why):
    with pytest.raises(ImagePathError, match=why):
        check_record_image(image)


def test_symlinks_inside_the_root_are_followed(root, tmp_path):
    """The rule is about the record's text: a link placed in the dataset folder is its owner's choice."""
    (root / "linked").symlink_to(tmp_path, target_is_directory=True)
    rec = record_for("linked/x.png", (W, H))
    assert check_images(rec, root) is None


# --- every reader: a named error or a counted rejection ---------------------------------------


def record_for(image: str, size: tuple[int, int], rid: str = "bad"):
    w, h = size
    rec = make_record(f"{rid}.json:1", id=rid, dataset="t", views=[{"image": image, "intrinsics": [30.0, 30.0, w / 2, h / 2, w, h]}],
                      depth={"pixels": [(1.5, 1.5), (10.5, 20.5)], "depth": [2.0, 3.0], "depth_type": "z"})
    assert isinstance(rec, Record), rec
    return rec


class ListAdapter(Adapter):
    """Test adapter: one good record, then the record whose image path is in ``ROOT/bad.json``."""

    name = "test-image-list"

    def units(self):
        return ["all"]

    def convert(self, unit):
        bad = json.loads((self.root / "bad.json").read_text())
        yield record_for("rgb/good.png", (W, H), "good")
        yield record_for(bad["image"], tuple(bad["size"]))


BAD = {
    "bomb": ("rgb/bomb.png", BOMB, ImageTooLargeError, "image_too_large", "12000x12000 = 144 Mpx, over the 64 Mpx limit"),
    "pil-refuses": ("rgb/huge.png", (20000, 20000), ImageTooLargeError, "image_too_large", "is 400 Mpx, over the 64 Mpx limit"),
    "dotdot": ("../x.png", (W, H), ImagePathError, "image_outside_root", "leaves the dataset root"),
    "etc-passwd": ("/etc/passwd", (W, H), ImagePathError, "image_outside_root", "is absolute"),
    # Decision: an absolute path is refused even when it points inside the root (records are relative).
    "absolute-inside-root": ("{root}/rgb/good.png", (W, H), ImagePathError, "image_outside_root", "is absolute"),
}


def bad_input(name: str, root: Path):
    image, size, error, reason, text = BAD[name]
    return image.format(root=root), size, error, reason, text


def prepared_folder(root: Path, image: str, size, out: Path) -> Path:
    """A prepared dataset (manifest + shard) holding a good record and the bad one, images in ``root``."""
    write_shard([record_for("rgb/good.png", (W, H), "good"), record_for(image, size)], out / "records" / "00000.jsonl")
    write_manifest(out, {"dataset": "t", "split": "val", "size": 2, "image_root": str(root.resolve())})
    return out


@pytest.mark.parametrize(
    "where, name",
    [
        ("prepare", "bomb"),
        ("prepare --materialize", "bomb"),
        ("prepare", "pil-refuses"),
        ("prepare", "dotdot"),
        ("prepare --materialize", "dotdot"),
        ("prepare", "etc-passwd"),
        ("prepare", "absolute-inside-root"),
        ("eval", "bomb"),
        ("eval", "pil-refuses"),
        ("eval", "dotdot"),
        ("eval", "etc-passwd"),
        ("eval", "absolute-inside-root"),
        ("train", "bomb"),
        ("train", "dotdot"),
        ("train", "etc-passwd"),
        ("train", "absolute-inside-root"),
        ("predict", "bomb"),
    ],
)
def test_bad_images_are_named_errors_or_counted_rejections(where, name, root, tmp_path, monkeypatch):
    image, size, error, reason, text = bad_input(name, root)
    assert reason in REASONS
    if where.startswith("prepare"):
        monkeypatch.setitem(ADAPTERS, ListAdapter.name, ListAdapter)
        (root / "bad.json").write_text(json.dumps({"image": image, "size": size}))
        out = tmp_path / "out"
        materialize = where.endswith("--materialize")
        report = prepare(ListAdapter.name, root, out, PrepareOptions(materialize=materialize, focal=30.0), progress=False)
        assert report.complete and report.records == 1 and report.rejected == {reason: 1}
        assert text in report.examples[reason][0]
        assert json.loads((out / "prepare_report.json").read_text())["rejected"] == {reason: 1}
        if materialize:  # only the good image was copied
            assert sorted(p.name for p in (out / "images").rglob("*") if p.is_file()) == ["good.png"]
        return
    if where == "predict":
        from vlm3.infer import predict as P
        from vlm3.geometry.camera import Intrinsics

        with pytest.raises(error, match=text):
            P.load_image(root / image)
        with pytest.raises(error, match=text):
            P.predict_depth(NeverAsked(), root / image, Intrinsics(100.0, 100.0, 6000.0, 6000.0, *size), points=[[1, 1]])
        return
    data = prepared_folder(root, image, size, tmp_path / "data")
    if where == "eval":
        from vlm3.data.io import read_records
        from vlm3.tasks.samples import load_images

        records = {r.id: r for r in read_records(data)}
        assert len(load_images(records["good"], image_root(data))) == 1
        with pytest.raises(error, match=text) as e:
            load_images(records["bad"], image_root(data))
        assert "record bad" in str(e.value)
        return
    from vlm3.settings import Settings
    from vlm3.train.dataset import SampleBuilder, load_datasets

    entries = [SimpleNamespace(path=str(data), name=None, weight=None)]
    if error is ImagePathError:  # refused before training starts, no file opened
        with pytest.raises(error, match=text) as e:
            load_datasets(entries, "depth")
        assert "data.datasets[0]" in str(e.value) and "record bad" in str(e.value)
        return
    datasets = load_datasets(entries, "depth")
    builder = SampleBuilder(datasets, "depth", Settings(focal=30.0), seed=0)
    bad = [r.id for r in datasets[0].records].index("bad")
    with pytest.raises(error, match=text):  # not swallowed as "no sample from this record" (ValueError)
        builder.example(0, bad, 0)


class NeverAsked:
    """A backend that fails if a question reaches it."""

    name = "never"

    def generate(self, requests, max_new_tokens=64):
        raise AssertionError("the image should have been refused before any question")

    def query_many(self, *a, **k):
        raise AssertionError("the image should have been refused before any question")


# --- command lines: one line, no traceback ---------------------------------------------------------


def test_cli_prepare_reports_the_bad_images_and_keeps_going(root, tmp_path):
    lines = [
        {"image": "rgb/good.png", "intrinsics": [30, 30, W / 2, H / 2, W, H], "pixel_coords": [[1, 1]], "depth": [2.0]},
        {"image": "rgb/bomb.png", "intrinsics": [30, 30, 6000, 6000, *BOMB], "pixel_coords": [[1, 1]], "depth": [2.0]},
        {"image": "../x.png", "intrinsics": [30, 30, W / 2, H / 2, W, H], "pixel_coords": [[1, 1]], "depth": [2.0]},
    ]
    (root / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    res = runner.invoke(app, ["prepare", "depthlm-jsonl", "--root", str(root), "--out", str(out), "--materialize", "--focal", "30"])
    assert res.exit_code == 0, res.output
    assert "image_too_large" in res.output and "image_outside_root" in res.output and "Traceback" not in res.output
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["records"] == 1 and report["rejected"] == {"image_outside_root": 1, "image_too_large": 1}
    assert report["examples"]["image_too_large"][0].startswith("d.jsonl:2: views[0].image = 'rgb/bomb.png': image ")
    assert not (out / "images" / "rgb" / "bomb.png").exists() and not (out / "images" / "x.png").exists()


def test_cli_predict_refuses_a_bomb_in_one_line(root, tmp_path, monkeypatch):
    monkeypatch.setattr("vlm3.models.backend.open_backend", lambda spec, *a, **k: NeverAsked())
    args = ["predict", "depth", str(root / "rgb" / "bomb.png"), "--model", "never", "--profile", "vlm3", "--fx", "100", "--grid", "8", "--out", str(tmp_path)]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "12000x12000 = 144 Mpx, over the 64 Mpx limit" in res.output and "Traceback" not in res.output


def test_the_server_decodes_through_the_shared_loader(bomb_bytes):
    from vlm3.serve.server import APIError, ImageTooLarge, decode_image

    with pytest.raises(ImageTooLarge) as e:
        decode_image(bomb_bytes, where="messages[0].content[0]", max_pixels=4096 * 4096)
    assert e.value.size == BOMB and e.value.code == "image_too_large"
    with pytest.raises(APIError, match="far larger") as e:
        decode_image(png_of_zeros(20000, 20000, pixels=False), where="m", max_pixels=4096 * 4096)
    assert e.value.code == "image_too_large"
    with pytest.raises(APIError, match="not a readable image in an accepted format") as e:
        decode_image(b"text", where="m", max_pixels=100)
    assert e.value.code == "invalid_image"
    small = png_of_zeros(64, 64)
    with pytest.raises(APIError, match="could not be decoded"):
        decode_image(small[:-30], where="m", max_pixels=100_000)
    assert decode_image(small, where="m", max_pixels=64 * 64).mode == "RGB"
