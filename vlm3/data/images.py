"""The one way vlm3 reads an image file or image bytes: a pixel cap, a full decode, EXIF orientation.

**Pixel convention: every pixel coordinate in vlm3 refers to the DISPLAYED image**, i.e. the image
after its EXIF Orientation is applied (what photo viewers and browsers show), never the raster as
stored. A phone photo stored as 640 x 480 with Orientation 6 is a 480 x 640 image to vlm3: its
size, its pixels (x = column, y = row), its intrinsics and every answer about it.

Every reader of images (``vlm3 prepare`` and its record checks, evaluation and training via
``vlm3.tasks.samples.load_images``, ``vlm3 predict``, the answer server, the adapters' size reads)
goes through :func:`open_image` / :func:`open_rgb` / :func:`image_size`, which

1. read the header only and refuse an image of more than ``max_pixels`` pixels
   (:class:`ImageTooLargeError`, naming the file and its size) before any pixel is decoded: a
   140 KB PNG can claim 12000 x 12000 pixels and would take 432 MB of RAM as RGB;
2. decode fully (a truncated or garbled file is an :class:`UnreadableImageError`);
3. apply the EXIF Orientation (1-8: the transposes of ``PIL.ImageOps.exif_transpose``; PIL's
   TIFF reader applies it itself); the returned image carries no orientation any more;
4. convert to RGB (:func:`open_rgb`), or keep the mode (:func:`open_image`).

:func:`image_size` reads the header only and returns the displayed size: (height, width) of the
raster for orientations 5-8 (those that turn the image by 90 degrees). :func:`read_exif` gives the
orientation and the focal-length tags (for :func:`vlm3.geometry.camera.estimate_uncalibrated`).
Orientation comes from the EXIF block (JPEG APP1, TIFF, WebP, PNG eXIf before or after the pixel
data), or from XMP ``tiff:Orientation`` when EXIF has none, as PIL reads them.

Bad EXIF never stops an image from loading: a block PIL cannot parse, or an Orientation that is
not 1..8, is ignored (orientation 1: the stored raster as is), and an :class:`ExifWarning` naming
the image says so. A readable block keeps its valid Orientation even if PIL skipped other tags.

The cap: :data:`DEFAULT_MAX_PIXELS` (64 Mpx, e.g. 8000 x 8000; the largest camera images of the
supported datasets are about 24 Mpx), overridden per call (``max_pixels=``) or for a whole run by
the environment variable ``VLM3_MAX_IMAGE_PIXELS``. PIL's own decompression-bomb limit (about
179 Mpx) still applies above that: such images are an :class:`ImageTooLargeError` too.

Record image paths. :func:`record_image_path` is where a record's image path is joined with its
dataset root, for every reader of records (prepare's checks, ``load_images`` for evaluation,
training, demos, reports). The rule: a record's image path must be a RELATIVE path with no
``..`` component (``/`` and ``\\`` both count as separators), so the path as written stays inside
the root: ``../x.png``, ``a/../../x.png``, ``/etc/passwd`` and absolute paths (even ones that
point inside the root: records are relative to their root, so that a dataset can move) are an
:class:`ImagePathError`. Symbolic links INSIDE the root are followed: they were placed by whoever
owns the dataset folder (a dataset made of links to a shared copy of the images is a supported
layout), while the record text, which comes from converted annotation files, cannot leave the root.

All errors derive from :class:`ImageError`, an ``OSError`` (a missing file is also a
``FileNotFoundError``): command lines print them as one line, and training's "skip a record whose
labels make no sample" (ValueError) does not swallow them.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from PIL.Image import Exif
    from PIL.Image import Image as PILImage

DEFAULT_MAX_PIXELS = 64_000_000
"""Default cap on width x height of any image vlm3 decodes (64 Mpx)."""
MAX_PIXELS_ENV = "VLM3_MAX_IMAGE_PIXELS"
"""Environment variable overriding :data:`DEFAULT_MAX_PIXELS` (a positive integer: pixels)."""

ImageSource = str | os.PathLike | bytes | bytearray | memoryview

ORIENTATION_TAG = 0x0112
"""EXIF IFD0 tag Orientation (1 = upright; 2-8 = flips and 90/180/270 degree turns)."""
EXIF_IFD_TAG = 0x8769
"""EXIF IFD0 pointer to the Exif sub-IFD, where the camera's focal-length tags live."""
FOCAL_TAGS: dict[str, int] = {
    "FocalLength": 0x920A,  # RATIONAL, mm (the lens's actual focal length)
    "FocalLengthIn35mmFilm": 0xA405,  # SHORT, mm (35 mm-equivalent); 0 = unknown
    "FocalPlaneXResolution": 0xA20E,  # RATIONAL, sensor pixels per unit along the stored raster's x
    "FocalPlaneYResolution": 0xA20F,  # RATIONAL, same along the stored raster's y
    "FocalPlaneResolutionUnit": 0xA210,  # SHORT: 2 inch (the EXIF default), 3 cm, 4 mm, 5 um
}
"""The EXIF tags :func:`read_exif` reads for a focal-length estimate (Exif sub-IFD, else IFD0)."""
MAX_PNG_EXIF_BYTES = 1 << 20
"""A PNG eXIf chunk after the pixel data longer than this (1 MiB) is not read (orientation 1, stated)."""


class ImageError(OSError):
    """An image that vlm3 refuses or cannot read; the message names the image and the reason.

    ``path`` is the file (or the ``where`` label of in-memory data)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ImageNotFoundError(ImageError, FileNotFoundError):
    """The image file does not exist."""


class UnreadableImageError(ImageError):
    """Not an image PIL can decode, or a truncated/garbled one. ``stage`` is "header" (not an
    image, or not one of the accepted formats) or "pixels" (the header was fine, the data not);
    ``detail`` is the underlying error (e.g. PIL's message)."""

    def __init__(self, message: str, *, path: str | None = None, stage: str = "header", detail: str = "") -> None:
        super().__init__(message, path=path)
        self.stage, self.detail = stage, detail


class ImageTooLargeError(ImageError):
    """More pixels than the cap (checked from the header, before decoding).

    ``size`` is (width, height) when the header was read (None when PIL refused the header
    itself), ``max_pixels`` the cap."""

    def __init__(self, message: str, *, path: str | None = None, size: tuple[int, int] | None = None, max_pixels: int | None = None) -> None:
        super().__init__(message, path=path)
        self.size = size
        self.max_pixels = max_pixels


class ImagePathError(ImageError):
    """A record's image path is absolute or leaves its dataset root (see the module doc)."""


class ExifWarning(UserWarning):
    """An image's EXIF was unreadable or invalid and is ignored (orientation 1); names the image."""


@dataclass(frozen=True)
class ImageExif:
    """What vlm3 reads from an image's EXIF (header only, no pixel decoded).

    ``orientation``: EXIF Orientation 1..8 (1 when absent or unreadable); ``stored_size``: the
    raster as stored, (width, height) in pixels; ``size``: the displayed size (swapped for
    orientations 5-8), the one every vlm3 pixel refers to. The focal tags are the values as found
    (None: absent; NaN: not a number), not checked: mm for the focal lengths, sensor pixels per
    ``focal_plane_resolution_unit`` for the focal-plane resolutions (along the STORED raster's x
    and y). ``problems``: why EXIF (or a part of it) was ignored, one sentence each, naming the image.
    """

    orientation: int
    stored_size: tuple[int, int]
    size: tuple[int, int]
    focal_length_35mm: float | None = None
    focal_length_mm: float | None = None
    focal_plane_x_resolution: float | None = None
    focal_plane_y_resolution: float | None = None
    focal_plane_resolution_unit: float | None = None
    problems: tuple[str, ...] = ()


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The cap in force: ``max_pixels`` if given (0 refuses every image, e.g. a spent per-request
    budget), else ``$VLM3_MAX_IMAGE_PIXELS``, else 64 Mpx."""
    if max_pixels is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} must be a positive integer (pixels)") from None
        if max_pixels < 1:
            raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} must be a positive integer (pixels)")
        return max_pixels
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0:
        raise ValueError(f"max_pixels must be a non-negative integer, got {max_pixels!r}")
    return max_pixels


def megapixels(n: int) -> str:
    """``144000000`` -> ``"144 Mpx"``."""
    return f"{n / 1e6:.4g} Mpx"


def open_image(
    source: ImageSource,
    *,
    max_pixels: int | None = None,
    where: str | None = None,
    mode: str | None = None,
    formats: tuple[str, ...] | None = None,
) -> PILImage:
    """Decode an image file (path) or encoded image data (bytes) after checking its pixel count.

    ``where`` names the image in errors (default: the path, or "image data"); ``mode`` converts
    (e.g. "RGB"), None keeps the file's mode; ``formats`` limits the PIL formats tried (None: all).
    Returns a decoded, detached PIL image (no open file). Raises :class:`ImageNotFoundError`,
    :class:`ImageTooLargeError`, :class:`UnreadableImageError`.
    """
    from PIL import Image

    cap = max_image_pixels(max_pixels)
    with _open(source, where, cap, formats) as (im, label):
        _check_size(im.size, cap, label)
        exif, problems = _header_exif(im, label)
        orientation = _orientation(exif, label, problems)
        _warn(problems)
        try:
            im.load()  # full decode: catches truncated or garbled data, not only a bad header
            if not _pil_orients(im):
                im = _transpose(im, orientation)
            return im.convert(mode) if mode is not None and im.mode != mode else im
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            detail = f"{type(e).__name__}: {e}"
            raise UnreadableImageError(f"image {label} cannot be decoded ({detail})", path=label, stage="pixels", detail=detail) from None


def open_rgb(
    source: ImageSource, *, max_pixels: int | None = None, where: str | None = None, formats: tuple[str, ...] | None = None
) -> PILImage:
    """:func:`open_image` converted to RGB: the shared image loader of vlm3 (see the module doc)."""
    return open_image(source, max_pixels=max_pixels, where=where, mode="RGB", formats=formats)


def image_size(
    source: ImageSource, *, max_pixels: int | None = None, where: str | None = None, formats: tuple[str, ...] | None = None
) -> tuple[int, int]:
    """The DISPLAYED (width, height) from the header alone (swapped for EXIF orientations 5-8), with
    the same pixel cap, errors and EXIF handling as :func:`open_image` (a truncated file can pass:
    only the header is read)."""
    return _read_header(source, max_pixels, where, formats, focal=False).size


def read_exif(
    source: ImageSource, *, max_pixels: int | None = None, where: str | None = None, formats: tuple[str, ...] | None = None
) -> ImageExif:
    """EXIF orientation, stored and displayed size and focal-length tags of an image, from its
    header (no pixel decoded; same pixel cap and errors as :func:`open_image`). Unreadable EXIF is
    an :class:`ExifWarning` and listed in ``problems``, never an error."""
    return _read_header(source, max_pixels, where, formats, focal=True)


def _read_header(source: ImageSource, max_pixels: int | None, where: str | None, formats: tuple[str, ...] | None, *, focal: bool) -> ImageExif:
    """:func:`read_exif`; the focal tags only when ``focal``."""
    cap = max_image_pixels(max_pixels)
    with _open(source, where, cap, formats) as (im, label):
        _check_size(im.size, cap, label)
        exif, problems = _header_exif(im, label)
        orientation = _orientation(exif, label, problems)
        tags = _focal_tags(exif, label, problems) if focal and exif is not None else {}
    _warn(problems)
    turned = orientation >= 5
    if _pil_orients(im):  # the header size is the displayed one already
        shown = im.size
        stored = (shown[1], shown[0]) if turned else shown
    else:
        stored = im.size
        shown = (stored[1], stored[0]) if turned else stored
    return ImageExif(orientation, stored, shown, problems=tuple(problems), **tags)


def oriented(image: PILImage, *, where: str = "image") -> PILImage:
    """A PIL image in its displayed orientation: an image that still carries an EXIF Orientation
    (e.g. straight from ``PIL.Image.open``) is transposed as :func:`open_image` would; others are
    returned as they are. Bad EXIF: an :class:`ExifWarning`, the image as it is."""
    image.load()  # (PIL's TIFF reader turns the raster itself when it loads it)
    problems: list[str] = []
    exif = _parse_exif(image, where, problems)
    orientation = _orientation(exif, where, problems)
    _warn(problems)
    return _transpose(image, orientation)


def check_record_image(image: str, *, where: str | None = None) -> None:
    """Refuse a record image path that is empty, absolute or has a ``..`` component (module doc)."""
    label = where or "record image path"
    if not isinstance(image, str) or not image.strip():
        raise ImagePathError(f"{label} {image!r} is empty", path=str(image))
    if "\x00" in image:
        raise ImagePathError(f"{label} {image!r} contains a NUL character", path=image)
    if image.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[/\\]", image):
        raise ImagePathError(
            f"{label} {image!r} is absolute; record image paths must be relative to the dataset root", path=image
        )
    if ".." in image.replace("\\", "/").split("/"):
        raise ImagePathError(f"{label} {image!r} leaves the dataset root ('..'); record image paths must stay inside it", path=image)


def record_image_path(root: str | Path, image: str, *, where: str | None = None) -> Path:
    """``root / image`` for a record's image path, after :func:`check_record_image` (ImagePathError)."""
    check_record_image(image, where=where)
    return Path(root) / image


# --- internals ---------------------------------------------------------------------------------


class _open:
    """Context manager: (PIL image with its header read, label); maps open errors to ImageError.

    The file is opened here and handed to PIL as a file object, so leaving the block closes the
    file but keeps a decoded image usable (PIL's ``Image.close`` would free its pixels)."""

    def __init__(self, source: ImageSource, where: str | None, cap: int, formats: tuple[str, ...] | None = None) -> None:
        self.source, self.where, self.cap, self.formats = source, where, cap, formats
        self.fh = None

    def __enter__(self):
        from PIL import Image, UnidentifiedImageError

        source = self.source
        if isinstance(source, (bytes, bytearray, memoryview)):
            label = self.where or "image data"
            fp = io.BytesIO(bytes(source))
        else:
            label = self.where or str(source)
            path = Path(source)
            if not path.exists():
                raise ImageNotFoundError(f"image {label} does not exist", path=label)
            if not path.is_file():
                raise UnreadableImageError(f"image {label} is not a file", path=label)
            try:
                fp = self.fh = open(path, "rb")
            except FileNotFoundError:
                raise ImageNotFoundError(f"image {label} does not exist", path=label) from None
            except OSError as e:
                raise UnreadableImageError(f"image {label} cannot be opened ({type(e).__name__}: {e})", path=label) from None
        try:
            with warnings.catch_warnings():
                # PIL warns above 89 Mpx; the cap below decides (and names the file) instead.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(fp, formats=self.formats)  # reads the header only
        except Image.DecompressionBombError as e:
            # Beyond PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS): PIL refuses the header itself.
            m = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{megapixels(int(m.group(1)))}" if m else "more than PIL's own limit"
            raise ImageTooLargeError(
                f"image {label} is {size}, over the {megapixels(self.cap)} limit (PIL refuses to open it: {e})", path=label, max_pixels=self.cap
            ) from None
        except FileNotFoundError:
            raise ImageNotFoundError(f"image {label} does not exist", path=label) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
            detail = f"{type(e).__name__}: {e}"
            raise UnreadableImageError(f"image {label} cannot be read ({detail})", path=label, detail=detail) from None
        return im, label

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()


def _check_size(size: tuple[int, int], cap: int, label: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise UnreadableImageError(f"image {label} has no pixels ({w}x{h})", path=label)
    if w * h > cap:
        raise ImageTooLargeError(
            f"image {label} is {w}x{h} = {megapixels(w * h)}, over the {megapixels(cap)} limit "
            f"(set {MAX_PIXELS_ENV} to change it)",
            path=label,
            size=(w, h),
            max_pixels=cap,
        )


def _transpose(im: PILImage, orientation: int) -> PILImage:
    """``im`` turned upright for an EXIF ``orientation`` (the transposes of
    ``PIL.ImageOps.exif_transpose``), without orientation metadata; ``im`` itself for 1."""
    from PIL import Image

    T = Image.Transpose
    method = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90}.get(orientation)
    if method is None:
        return im
    out = im.transpose(method)
    # The copy keeps ``info``: drop what would make it turn again (EXIF and XMP orientation).
    for key in ("exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp"):
        out.info.pop(key, None)
    return out


def _pil_orients(im: PILImage) -> bool:
    """PIL's TIFF reader applies the Orientation itself: its header size is the displayed size and
    loading turns the raster (and drops the tag). Other formats are turned here."""
    return im.format == "TIFF"


def _header_exif(im: PILImage, label: str) -> tuple[Exif | None, list[str]]:
    """The EXIF of a header-read image, without decoding pixels, and the problems met."""
    problems: list[str] = []
    if im.format == "PNG" and "exif" not in im.info and not _png_late_exif(im, label, problems):
        return None, problems  # no eXIf chunk (PIL's getexif would decode the pixels to look)
    return _parse_exif(im, label, problems), problems


def _parse_exif(im: PILImage, label: str, problems: list[str]) -> Exif | None:
    """``im.getexif()`` with its errors caught: None (and a problem) when the block cannot be read.

    Corrupt: PIL raises, or the block has no TIFF header, or not one IFD0 entry can be read (PIL
    then skips the bad entries, and warns with its own UserWarning). Warnings are not captured
    here: ``warnings.catch_warnings`` is process-wide, and the server decodes in threads."""
    raw = im.info.get("exif")
    try:
        exif = im.getexif()
        orientation = exif.get(ORIENTATION_TAG)
        entries = len(exif)
    except Exception as e:  # PIL raises many types for corrupt EXIF; none may stop an image loading
        problems.append(f"image {label}: EXIF block cannot be read ({type(e).__name__}: {e}); orientation taken as 1 (the stored raster)")
        return None
    if orientation is not None or not isinstance(raw, (bytes, bytearray)):
        return exif  # an orientation (checked by _orientation), or no EXIF block in ``info`` (TIFF: PIL's own)
    why = "no TIFF header" if not _tiff_header(bytes(raw)) else "no readable IFD0 entry" if entries == 0 else None
    if why is not None:
        problems.append(f"image {label}: EXIF block is corrupt ({why}); orientation taken as 1 (the stored raster)")
        return None
    return exif


def _tiff_header(raw: bytes) -> bool:
    data = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    return data[:4] in (b"II*\x00", b"MM\x00*") and len(data) >= 8


def _orientation(exif: Exif | None, label: str, problems: list[str]) -> int:
    """EXIF Orientation 1..8; 1 when absent, unreadable or invalid (the last stated in ``problems``)."""
    if exif is None:
        return 1
    value = exif.get(ORIENTATION_TAG, 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        problems.append(f"image {label}: EXIF Orientation={value!r} is not 1..8; orientation taken as 1 (the stored raster)")
        return 1
    return value


def _focal_tags(exif: Exif, label: str, problems: list[str]) -> dict[str, Any]:
    """The :data:`FOCAL_TAGS` values (Exif sub-IFD first, then IFD0) as :class:`ImageExif` fields."""
    try:
        sub = dict(exif.get_ifd(EXIF_IFD_TAG))
    except Exception as e:
        problems.append(f"image {label}: EXIF sub-IFD cannot be read ({type(e).__name__}: {e}); no focal length from EXIF")
        return {}
    found: dict[str, Any] = {}
    for name, tag in FOCAL_TAGS.items():
        try:
            value = sub.get(tag, exif.get(tag))
        except Exception:  # a lazily decoded IFD0 value that is garbled
            value = None
        found[name] = None if value is None else _number(value)
    return {
        "focal_length_35mm": found["FocalLengthIn35mmFilm"],
        "focal_length_mm": found["FocalLength"],
        "focal_plane_x_resolution": found["FocalPlaneXResolution"],
        "focal_plane_y_resolution": found["FocalPlaneYResolution"],
        "focal_plane_resolution_unit": found["FocalPlaneResolutionUnit"],
    }


def _number(value: object) -> float:
    """An EXIF value as a float: NaN for what is not one number (a string, several values, 0/0)."""
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return math.nan


def _png_late_exif(im: PILImage, label: str, problems: list[str]) -> bool:
    """Look for a PNG eXIf chunk after the pixel data by reading chunk headers only; when there is
    one, put it in ``im.info["exif"]`` (as PIL does after a full decode). True when found."""
    fp: BinaryIO | None = getattr(im, "fp", None)
    if fp is None:
        return False
    pos = fp.tell()
    try:
        fp.seek(8)  # after the PNG signature
        while True:
            head = fp.read(8)
            if len(head) < 8:
                return False
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                return False
            if kind == b"eXIf":
                if length > MAX_PNG_EXIF_BYTES:
                    problems.append(f"image {label}: PNG eXIf chunk of {length} bytes is over {MAX_PNG_EXIF_BYTES}; orientation taken as 1 (the stored raster)")
                    return False
                data = fp.read(length)
                if len(data) < length:
                    return False
                im.info["exif"] = b"Exif\x00\x00" + data
                return True
            fp.seek(length + 4, os.SEEK_CUR)  # data and CRC
    except (OSError, struct.error, ValueError):
        return False
    finally:
        fp.seek(pos)


def _warn(problems: list[str]) -> None:
    for problem in problems:
        warnings.warn(problem, ExifWarning, stacklevel=3)
