"""The one way vlm3 reads an image file or image bytes: a pixel cap, then a full decode.

Every reader of images (``vlm3 prepare`` and its record checks, evaluation and training via
``vlm3.tasks.samples.load_images``, ``vlm3 predict``, the answer server) goes through
:func:`open_image` / :func:`open_rgb`, which

1. read the header only and refuse an image of more than ``max_pixels`` pixels
   (:class:`ImageTooLargeError`, naming the file and its size) before any pixel is decoded: a
   140 KB PNG can claim 12000 x 12000 pixels and would take 432 MB of RAM as RGB;
2. decode fully (a truncated or garbled file is an :class:`UnreadableImageError`);
3. convert to RGB (:func:`open_rgb`), or keep the mode (:func:`open_image`).

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
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

DEFAULT_MAX_PIXELS = 64_000_000
"""Default cap on width x height of any image vlm3 decodes (64 Mpx)."""
MAX_PIXELS_ENV = "VLM3_MAX_IMAGE_PIXELS"
"""Environment variable overriding :data:`DEFAULT_MAX_PIXELS` (a positive integer: pixels)."""

ImageSource = str | os.PathLike | bytes | bytearray | memoryview


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
        try:
            im.load()  # full decode: catches truncated or garbled data, not only a bad header
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
    """(width, height) from the header alone, with the same pixel cap and errors as :func:`open_image`
    (a truncated file can pass: only the header is read)."""
    cap = max_image_pixels(max_pixels)
    with _open(source, where, cap, formats) as (im, label):
        _check_size(im.size, cap, label)
        return im.size


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
