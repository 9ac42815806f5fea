"""EXIF in user photos: every pixel is a pixel of the DISPLAYED image (EXIF orientation applied,
also for size-only reads), the EXIF focal length is an estimate that is printed and recorded, and
bad EXIF never stops an image from loading (vlm3.data.images, vlm3.geometry.camera, vlm3 predict)."""

from __future__ import annotations

import io
import json
import math
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, features
from typer.testing import CliRunner

from vlm3.cli import app
from vlm3.data.adapters.kit import image_size as adapter_image_size
from vlm3.data.images import ExifWarning, image_size, open_image, open_rgb, read_exif
from vlm3.data.records import Record, View
from vlm3.data.validate import check_images
from vlm3.geometry.camera import FULL_FRAME_DIAGONAL_MM, HFOV_GUESS_DEG, Intrinsics, estimate_uncalibrated, focal_px_from_35mm
from vlm3.geometry.pose import make_T
from vlm3.infer import cli as C
from vlm3.infer import predict as P
from vlm3.models.backend import Backend
from vlm3.settings import Settings
from vlm3.tasks.pose import pose_answer
from vlm3.tasks.samples import load_images

runner = CliRunner()
W, H = 48, 64  # displayed size: a portrait photo (multiples of 8: JPEG blocks map onto blocks)
T = Image.Transpose
#: Orientation -> the transpose that makes the STORED raster from the displayed image (the inverse
#: of what PIL.ImageOps.exif_transpose applies).
STORE = {1: None, 2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_90, 7: T.TRANSVERSE, 8: T.ROTATE_270}
#: Displayed pixels (OpenCV: integer = pixel centre) that a viewer of the portrait photo can pick;
#: (40, 60) lies outside the 64 x 48 stored raster of orientations 5-8.
PICKED = [(5, 7), (40, 60), (24, 10)]


def displayed() -> np.ndarray:
    """A displayed H x W RGB image with content: a random colour per 8 x 8 block. Flat JPEG blocks
    decode exactly alike in every orientation (4:4:4, no chroma upsampling), so the loaded arrays of
    the eight files can be compared for equality."""
    blocks = np.random.default_rng(7).integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))


def exif_bytes(orientation: int | None = None, **focal: float) -> bytes:
    """An EXIF block with Orientation and focal tags (Exif sub-IFD) by their EXIF names."""
    from vlm3.data.images import FOCAL_TAGS

    ex = Image.Exif()
    if orientation is not None:
        ex[0x0112] = orientation
    sub = ex.get_ifd(0x8769)
    for name, value in focal.items():
        sub[FOCAL_TAGS[name]] = value
    return ex.tobytes()


def save_photo(path: Path, orientation: int, fmt: str = "JPEG", image: np.ndarray | None = None, **focal: float) -> Path:
    """Store the displayed image's raster transformed inversely, tagged with ``orientation``, so that
    ``exif_transpose`` returns the displayed image."""
    shown = Image.fromarray(displayed() if image is None else image)
    raw = shown if STORE[orientation] is None else shown.transpose(STORE[orientation])
    extra = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    raw.save(path, fmt, exif=exif_bytes(orientation, **focal), **extra)
    return path


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """A JPEG with an APP1 segment ``payload`` inserted after SOI (a hand-made EXIF block)."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


class Fixed(Backend):
    """Answers every question with ``text`` (no model is loaded)."""

    name = "fixed"

    def __init__(self, text: str) -> None:
        self.text = text

    def generate(self, requests, max_new_tokens=64):
        return [self.text for _ in requests]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[int, Path]:
    """The same displayed photo stored with each EXIF orientation 1..8 (JPEG)."""
    root = tmp_path_factory.mktemp("photos")
    return {o: save_photo(root / f"o{o}.jpg", o) for o in range(1, 9)}


# --- (1) orientation: the loader and depth answers ----------------------------------------------


def test_every_orientation_loads_the_displayed_image(photos):
    reference = np.asarray(open_rgb(photos[1]))
    assert reference.shape == (H, W, 3) and np.abs(reference.astype(int) - displayed()).max() <= 2
    for o, path in photos.items():
        stored = Image.open(path)
        assert stored.size == ((H, W) if o >= 5 else (W, H))  # the raster really is stored turned
        loaded = np.asarray(open_rgb(path))
        np.testing.assert_array_equal(loaded, reference, err_msg=f"orientation {o}")
        np.testing.assert_array_equal(loaded, np.asarray(ImageOps.exif_transpose(stored).convert("RGB")))
        # Every entry point: bytes (the server), records (eval/training), predict (path and PIL image).
        np.testing.assert_array_equal(np.asarray(open_rgb(path.read_bytes())), reference)
        record = Record(id=f"o{o}", dataset="t", views=[View(image=path.name, intrinsics=[50.0, 50.0, W / 2, H / 2, W, H])])
        np.testing.assert_array_equal(load_images(record, path.parent)[0], reference)
        np.testing.assert_array_equal(P.load_image(path), reference)
        np.testing.assert_array_equal(P.load_image(Image.open(path)), reference)
        # The returned image carries no orientation: turning it again changes nothing.
        once = open_image(path)
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(once)), np.asarray(once))
        assert read_exif(path).orientation == o


@pytest.mark.parametrize("fmt, suffix, extra", [("TIFF", "tif", {}), ("WEBP", "webp", {"lossless": True})])
def test_tiff_and_webp_orientation(fmt, suffix, extra, tmp_path):
    """PIL's TIFF reader turns the raster itself (its header size is already the displayed one);
    WebP is turned by vlm3: both end up as the displayed image, once."""
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("PIL built without WebP")
    for o in (3, 6, 7):
        shown = Image.fromarray(displayed())
        path = tmp_path / f"o{o}.{suffix}"
        shown.transpose(STORE[o]).save(path, fmt, exif=exif_bytes(o), **extra)
        info = read_exif(path)
        assert (info.orientation, info.size, info.stored_size) == (o, (W, H), (H, W) if o >= 5 else (W, H)), (fmt, o)
        assert image_size(path) == (W, H)
        np.testing.assert_array_equal(open_rgb(path), displayed())
        np.testing.assert_array_equal(P.load_image(Image.open(path)), displayed())


def test_png_exif_orientation_before_and_after_the_pixel_data(tmp_path):
    before = save_photo(tmp_path / "before.png", 6, "PNG")
    data = before.read_bytes()
    chunks, pos = [], 8
    while pos < len(data):  # split the PNG into its chunks
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos : pos + 12 + length])
        pos += 12 + length
    kinds = [c[4:8] for c in chunks]
    assert kinds.index(b"eXIf") < kinds.index(b"IDAT")
    exif = chunks.pop(kinds.index(b"eXIf"))
    after = tmp_path / "after.png"
    after.write_bytes(data[:8] + b"".join(chunks[:-1]) + exif + chunks[-1])  # eXIf between IDAT and IEND
    for path in (before, after):
        assert image_size(path) == (W, H), path.name
        np.testing.assert_array_equal(open_rgb(path), displayed())
        np.testing.assert_array_equal(open_rgb(path), np.asarray(ImageOps.exif_transpose(Image.open(path))))


@pytest.fixture(scope="module")
def backend(answering_model):
    from vlm3.models.local import LocalBackend

    return LocalBackend.from_pretrained(answering_model, batch_size=8)


SETTINGS = Settings(focal=60.0, n_coords=100)  # what `vlm3 predict --focal 60 --n-coords 100` asks with
K_SHOWN = Intrinsics.from_center_origin(50.0, 50.0, (W - 1) / 2, (H - 1) / 2, W, H)


def test_every_orientation_gives_the_same_depth_answers(photos, backend, answering_model, tmp_path):
    uv = P.from_cli_pixels(PICKED)
    preds = {o: P.predict_depth(backend, path, K_SHOWN, points=uv, settings=SETTINGS, max_new_tokens=6) for o, path in photos.items()}
    reference = preds[1]
    assert len(reference.raw) == len(PICKED) and all(reference.raw)
    for o, pred in preds.items():
        assert pred.raw == reference.raw, f"orientation {o}"
        np.testing.assert_array_equal(pred.depth, reference.depth)
    # The answers depend on the pixels: the stored raster read as is (the old behaviour) answers
    # otherwise about the same coordinates of a same-size image.
    stored = np.asarray(Image.open(photos[3]).convert("RGB"))  # orientation 3: same size, turned 180
    other = P.predict_depth(backend, stored, K_SHOWN, points=uv, settings=SETTINGS, max_new_tokens=6)
    assert other.raw != reference.raw

    # `vlm3 predict depth` on the orientation-6 photo: a pixel outside the stored raster is accepted,
    # and the answers are the Python ones.
    pts = " ".join(f"{x},{y}" for x, y in PICKED)
    out = tmp_path / "o6"
    result = runner.invoke(app, ["predict", "depth", str(photos[6]), "--model", str(answering_model), "--fx", "50",
                                 "--points", pts, "--focal", "60", "--n-coords", "100", "--max-new-tokens", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "points.json").read_text())
    assert (doc["width"], doc["height"]) == (W, H) and not doc["intrinsics_estimated"] and doc["intrinsics_estimate"] is None
    assert [(p["x"], p["y"]) for p in doc["points"]] == [(float(x), float(y)) for x, y in PICKED]
    assert [p["raw"] for p in doc["points"]] == reference.raw


# --- (2) EXIF focal length: an estimate, printed and recorded -----------------------------------


def test_35mm_equivalent_focal_is_defined_on_the_diagonal():
    assert math.isclose(FULL_FRAME_DIAGONAL_MM, 43.2666, rel_tol=1e-5)
    # A 36 x 24 px "frame" at f35 = 36 mm: one pixel per mm, f = 36 px; the definition is per pixel
    # of the diagonal, so it does not depend on the aspect ratio or the orientation.
    assert math.isclose(focal_px_from_35mm(36.0, 36, 24), 36.0)
    assert focal_px_from_35mm(26.0, 480, 640) == focal_px_from_35mm(26.0, 640, 480)
    assert math.isclose(focal_px_from_35mm(26.0, 4032, 3024), 26.0 * 5040 / FULL_FRAME_DIAGONAL_MM)


def test_exif_focal_gives_estimated_intrinsics_printed_and_recorded(answering_model, tmp_path):
    photo = save_photo(tmp_path / "phone.jpg", 6, FocalLengthIn35mmFilm=26, FocalLength=4.25)
    f = 26 * math.hypot(W, H) / math.hypot(36, 24)  # displayed 48 x 64 -> f = 48.08 px
    est = P.estimate_image_intrinsics(photo)
    assert est.source == "exif_35mm" and est.fallback is None
    assert math.isclose(est.K.fx, f) and est.K.fy == est.K.fx and (est.K.width, est.K.height, est.K.cx, est.K.cy) == (W, H, W / 2, H / 2)

    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", "depth", str(photo), "--model", str(answering_model), "--estimate-intrinsics",
                                 "--points", "40,60", "--focal", "60", "--n-coords", "100", "--max-new-tokens", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"intrinsics estimated from EXIF FocalLengthIn35mmFilm=26 mm (35 mm-equivalent on the image diagonal): fx=fy={f:.1f} px" in result.output
    assert "not calibrated" in result.output
    doc = json.loads((out / "points.json").read_text())
    assert doc["intrinsics_estimated"] is True
    rec = doc["intrinsics_estimate"]
    assert rec["source"] == "exif_35mm" and rec["basis"].startswith("EXIF FocalLengthIn35mmFilm=26 mm") and rec["fallback"] is None
    assert math.isclose(rec["fx"], f) and math.isclose(doc["intrinsics"]["fx"], f) and (rec["width"], rec["height"]) == (W, H)

    # --hfov asks for the field-of-view guess: EXIF is not used, and that is said too.
    result = runner.invoke(app, ["predict", "depth", str(photo), "--model", str(answering_model), "--estimate-intrinsics", "--hfov", "70",
                                 "--points", "40,60", "--focal", "60", "--n-coords", "100", "--max-new-tokens", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "intrinsics guessed, not calibrated" in result.output and "70 degree horizontal field of view" in result.output
    assert json.loads((out / "points.json").read_text())["intrinsics_estimate"]["source"] == "fov_guess"


def test_focal_length_with_the_focal_plane_resolution(tmp_path):
    # 4.25 mm lens, 250 sensor pixels per mm along the stored x, 200 along the stored y.
    tags = dict(FocalLength=4.25, FocalPlaneXResolution=250.0, FocalPlaneYResolution=200.0, FocalPlaneResolutionUnit=4)
    upright = P.estimate_image_intrinsics(save_photo(tmp_path / "a.jpg", 1, **tags))
    assert upright.source == "exif_focal_plane" and math.isclose(upright.K.fx, 4.25 * 250) and upright.K.fy == upright.K.fx
    assert "FocalLength=4.25 mm, FocalPlaneXResolution=250 per mm" in upright.message()
    turned = P.estimate_image_intrinsics(save_photo(tmp_path / "b.jpg", 6, **tags))  # displayed x = stored y
    assert math.isclose(turned.K.fx, 4.25 * 200) and "FocalPlaneYResolution=200" in turned.basis
    inch = P.estimate_image_intrinsics(save_photo(tmp_path / "c.jpg", 1, FocalLength=5.0, FocalPlaneXResolution=2540.0))  # no unit: inch
    assert math.isclose(inch.K.fx, 5.0 * 2540 / 25.4)
    # FocalLengthIn35mmFilm wins when both are there.
    both = P.estimate_image_intrinsics(save_photo(tmp_path / "d.jpg", 1, FocalLengthIn35mmFilm=28, **tags))
    assert both.source == "exif_35mm"


@pytest.mark.parametrize(
    "tags, reason",
    [
        (dict(FocalLengthIn35mmFilm=0), "EXIF FocalLengthIn35mmFilm=0 mm is not a focal length (0 means unknown)"),
        (dict(FocalLength=0.0, FocalPlaneXResolution=250.0, FocalPlaneResolutionUnit=4), "EXIF FocalLength=0 mm is not a positive focal length"),
        (dict(FocalLength=4.25), "EXIF FocalLength=4.25 mm but no FocalPlaneXResolution (sensor size unknown)"),
        (dict(FocalLength=4.25, FocalPlaneXResolution=250.0, FocalPlaneResolutionUnit=1), "FocalPlaneResolutionUnit=1 is not a length unit"),
        (dict(FocalLengthIn35mmFilm=65535), "gives fx = 121174 px, a 0.0227 degree horizontal field of view (outside 1..179)"),
        ({}, "no EXIF focal length"),
    ],
)
def test_invalid_exif_focal_falls_back_to_the_field_of_view_guess_with_the_reason(tags, reason, tmp_path):
    path = save_photo(tmp_path / "p.jpg", 1, **tags)
    est = P.estimate_image_intrinsics(path)
    guess = P.estimate_intrinsics(W, H)
    assert est.source == "fov_guess" and reason in est.fallback and est.K == guess
    assert f"intrinsics guessed, not calibrated: fx = fy = {guess.fx:.1f} px ({HFOV_GUESS_DEG:g} degree horizontal field of view) ({est.fallback})" in est.message()
    K, found = C.resolve_cli_intrinsics(W, H, None, estimate=True, image=path)
    assert K == guess and found == est


def test_cli_reports_the_fallback_reason_and_each_image_of_a_pair(monkeypatch, tmp_path):
    stub = Fixed("1.5")
    monkeypatch.setattr("vlm3.models.backend.open_backend", lambda spec, *a, **k: stub)
    zero = save_photo(tmp_path / "zero.jpg", 1, FocalLengthIn35mmFilm=0)
    result = runner.invoke(app, ["predict", "depth", str(zero), "--model", "stub", "--profile", "vlm3", "--estimate-intrinsics", "--points", "1,2", "--out", str(tmp_path / "z")])
    assert result.exit_code == 0, result.output
    assert "intrinsics guessed, not calibrated" in result.output and "EXIF FocalLengthIn35mmFilm=0 mm is not a focal length" in result.output
    rec = json.loads((tmp_path / "z" / "points.json").read_text())["intrinsics_estimate"]
    assert rec["source"] == "fov_guess" and "FocalLengthIn35mmFilm=0" in rec["fallback"]

    # A pair: each image's own EXIF, each printed and recorded.
    phone = save_photo(tmp_path / "phone.jpg", 8, FocalLengthIn35mmFilm=26)
    stub.text = pose_answer(make_T(np.eye(3), [0.0, 0.0, -1.0]), True)
    result = runner.invoke(app, ["predict", "pose", str(phone), str(zero), "--model", "stub", "--profile", "vlm3", "--estimate-intrinsics", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "image 1: intrinsics estimated from EXIF FocalLengthIn35mmFilm=26 mm" in result.output
    assert "image 2: intrinsics guessed, not calibrated" in result.output
    doc = json.loads((tmp_path / "p" / "pose.json").read_text())
    assert doc["intrinsics_estimated"] is True and [e["source"] for e in doc["intrinsics_estimate"]] == ["exif_35mm", "fov_guess"]
    # --hfov without --estimate-intrinsics is a named error, not silently ignored.
    result = runner.invoke(app, ["predict", "depth", str(zero), "--model", "stub", "--profile", "vlm3", "--fx", "50", "--hfov", "70", "--points", "1,2", "--out", str(tmp_path / "h")])
    assert result.exit_code == 1 and "--hfov 70 needs --estimate-intrinsics" in result.output


# --- (3) size-only reads ------------------------------------------------------------------------


def test_size_only_reads_return_displayed_sizes(photos, tmp_path):
    for o, path in photos.items():
        assert image_size(path) == (W, H), f"orientation {o}"
        assert image_size(path.read_bytes()) == (W, H)
        assert adapter_image_size(path) == (W, H)
        info = read_exif(path)
        assert info.size == (W, H) and info.stored_size == ((H, W) if o >= 5 else (W, H)) and info.problems == ()
    # Record checks without decoding (prepare --no-decode): displayed intrinsics pass, stored ones do not.
    shown = Record(id="shown", dataset="t", views=[View(image="o6.jpg", intrinsics=[50.0, 50.0, W / 2, H / 2, W, H])])
    raster = Record(id="raster", dataset="t", views=[View(image="o6.jpg", intrinsics=[50.0, 50.0, H / 2, W / 2, H, W])])
    assert check_images(shown, photos[6].parent, decode=False) is None
    rejected = check_images(raster, photos[6].parent, decode=False)
    assert rejected.reason == "size_mismatch" and f"image is {W}x{H} but intrinsics say {H}x{W}" in rejected.detail
    assert check_images(shown, photos[6].parent, decode=True) is None


def test_adapters_read_displayed_sizes(tmp_path):
    """Middlebury checks its images' sizes against calib.txt: a turned phone-style im0.png counts as displayed."""
    from support import run_adapter
    from test_adapters_pairs2d import H as MH, W as MW, make_scene

    root = tmp_path / "mb"
    grey = np.full((MH, MW, 3), 128, np.uint8)
    ok = make_scene(root, "A-turned")  # im0 stored turned (MH x MW raster), displayed MW x MH = calib
    Image.fromarray(grey).transpose(T.ROTATE_90).save(ok / "im0.png", exif=exif_bytes(6))
    bad = make_scene(root, "B-turned")  # im0 stored MW x MH but displayed MH x MW: not the calibrated camera
    Image.fromarray(grey).save(bad / "im0.png", exif=exif_bytes(6))
    recs, rejs = run_adapter("middlebury", root, points=10, seed=0)
    assert {r.id.split("/")[1] for r in recs} == {"A-turned"}
    assert [(r.source, r.reason) for r in rejs] == [("B-turned/im0.png", "size_mismatch")]


def test_no_module_opens_images_around_the_shared_loader():
    """Every image read goes through vlm3.data.images (cv2.imread stays for uint16 depth maps)."""
    root = Path(__file__).resolve().parents[1] / "vlm3"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "images.py" and re.search(r"Image\.open\(|imageio|ImageOps\.exif_transpose", p.read_text())]
    assert offenders == []


# --- bad EXIF never crashes ---------------------------------------------------------------------


def jpeg_of(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=95, subsampling=0)
    return buf.getvalue()


@pytest.mark.parametrize(
    "payload, said",
    [
        (b"Exif\x00\x00" + b"\x13\x37" * 20, "EXIF block is corrupt (no TIFF header)"),
        (b"Exif\x00\x00II*\x00\xff\xff\xff\x7f", "EXIF block is corrupt"),  # IFD0 offset past the end
        (b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\xff\xff\xff\x7f\x06\x00\x00\x00", "EXIF block is corrupt"),  # absurd count
        (b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x02\x00\x04\x00\x00\x00abc\x00\x00\x00\x00\x00", "EXIF Orientation='abc' is not 1..8"),
        (b"Exif\x00\x00" + exif_bytes(9), "EXIF Orientation=9 is not 1..8"),
        (b"Exif\x00\x00" + exif_bytes(0), "EXIF Orientation=0 is not 1..8"),
    ],
)
def test_bad_exif_is_ignored_as_orientation_1_and_stated(payload, said, tmp_path):
    raster = displayed().transpose(1, 0, 2).copy()  # a W x H raster: wrong if it were turned
    path = tmp_path / "bad.jpg"
    path.write_bytes(with_app1(jpeg_of(raster), payload))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = np.asarray(open_rgb(path))
        size = image_size(path)
        info = read_exif(path)
    assert size == (H, W) and loaded.shape == (W, H, 3) and np.abs(loaded.astype(int) - raster).max() <= 2  # the stored raster
    messages = [str(w.message) for w in caught if issubclass(w.category, ExifWarning)]
    assert messages and all(str(path) in m and said in m and "orientation taken as 1" in m for m in messages)
    assert info.orientation == 1 and any(said in p for p in info.problems)
    # Estimation falls back to the field-of-view guess and says why.
    est = estimate_uncalibrated(*info.size, info)
    assert est.source == "fov_guess" and said in est.fallback


def test_cli_states_bad_exif_in_one_line_and_answers(monkeypatch, tmp_path):
    stub = Fixed("2.0")
    monkeypatch.setattr("vlm3.models.backend.open_backend", lambda spec, *a, **k: stub)
    path = tmp_path / "bad.jpg"
    path.write_bytes(with_app1(jpeg_of(displayed()), b"Exif\x00\x00" + b"\x13\x37" * 20))
    result = runner.invoke(app, ["predict", "depth", str(path), "--model", "stub", "--profile", "vlm3", "--estimate-intrinsics", "--points", "40,60", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "ExifWarning" not in result.output
    line = f"warning: image {path}: EXIF block is corrupt (no TIFF header); orientation taken as 1 (the stored raster)"
    assert result.output.count(line) == 1
    assert "intrinsics guessed, not calibrated" in result.output
    assert json.loads((tmp_path / "o" / "points.json").read_text())["points"][0]["depth_m"] == 2.0
