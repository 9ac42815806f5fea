"""Readers shared by adapters: image sizes, matrix text files, uint16 depth PNGs, COLMAP models.

They raise :class:`~vlm3.data.scenes.FrameError` (reason of ``base.REASONS``) for bad files, or
ValueError naming the file where noted. Option getters live in ``base``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from vlm3.data.images import ImageError, ImageTooLargeError
from vlm3.data.images import image_size as header_size
from vlm3.data.scenes import FrameError


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header; FrameError when missing, unreadable or over
    the pixel cap (``image_too_large``, :func:`vlm3.data.images.image_size`)."""
    if not path.is_file():
        raise FrameError("missing_file", f"{path} does not exist")
    try:
        return header_size(path)
    except ImageTooLargeError as e:
        raise FrameError("image_too_large", str(e)) from None
    except ImageError as e:
        raise FrameError("unreadable_file", str(e)) from None
    except Exception as e:  # PIL raises several types for corrupt files
        raise FrameError("unreadable_file", f"{path}: {e}") from None


def read_matrix(path: Path, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """A whitespace-separated matrix text file; FileNotFoundError / ValueError naming the file."""
    try:
        values = np.array([float(x) for x in path.read_text().split()], dtype=np.float64)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except ValueError as e:
        raise ValueError(f"{path}: not a numeric matrix ({e})") from None
    if values.size != shape[0] * shape[1]:
        raise ValueError(f"{path}: expected {shape[0]}x{shape[1]} = {shape[0] * shape[1]} numbers, found {values.size}")
    return values.reshape(shape)


def read_depth_png(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A uint16 depth PNG (0 = invalid; the caller converts units), checked against ``shape`` (H, W).

    FrameError: missing_file, unreadable_file (not a single-channel uint16 PNG), size_mismatch,
    no_valid_depth (every pixel 0).
    """
    if not path.is_file():
        raise FrameError("missing_file", f"{path} does not exist")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FrameError("unreadable_file", f"{path}: not a readable PNG")
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise FrameError("unreadable_file", f"{path}: expected a single-channel uint16 PNG, got {raw.dtype} with shape {raw.shape}")
    if shape is not None and raw.shape != tuple(shape):
        raise FrameError("size_mismatch", f"{path}: {raw.shape[1]}x{raw.shape[0]}, expected {shape[1]}x{shape[0]}")
    if not (raw > 0).any():
        raise FrameError("no_valid_depth", f"{path}: every pixel is 0 (invalid)")
    return raw


def load_reconstruction(path: Path):
    """pycolmap reconstruction of a COLMAP model folder (binary or text); ValueError naming it."""
    import pycolmap

    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return pycolmap.Reconstruction(str(path))
    except Exception as e:  # pycolmap raises ValueError/RuntimeError with its own check message
        raise ValueError(f"{path}: not a readable COLMAP model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def cam_from_world(image) -> np.ndarray:
    """4x4 camera-from-world of a pycolmap image (COLMAP stores this direction)."""
    T = np.eye(4)
    T[:3, :] = image.cam_from_world().matrix()
    return T


# --- 3D boxes (omni3d, kitti-objects) -------------------------------------------------------------

LENGTH_X_TO_VLM3 = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
"""``R_src_from_vlm3`` for a box whose length is along its x axis, height along y and width along z
(KITTI's ``compute_box_3d``, Omni3D's ``get_cuboid_verts_faces``): the columns are vlm3's box axes
(x = width, y = height, z = length) in the source box's axes: vlm3 x = -source z, y = source y,
z = source x (the heading). A proper rotation (det +1); a box is symmetric, so the sign of the
width axis changes no corner."""


def length_x_box(R_cam_from_src: np.ndarray, length: float, height: float, width: float) -> tuple[tuple[float, float, float], np.ndarray]:
    """vlm3 ``(size, R_cam_from_box)`` of a source box with length along its x axis, height along y
    and width along z: size = (width, height, length), R = R_cam_from_src @ :data:`LENGTH_X_TO_VLM3`
    (the same 8 corners, see the constant)."""
    R = np.asarray(R_cam_from_src, dtype=np.float64).reshape(3, 3) @ LENGTH_X_TO_VLM3
    return (float(width), float(height), float(length)), R


def nearest_rotation(R: np.ndarray, atol: float = 1e-3) -> np.ndarray | None:
    """The proper rotation nearest to ``R`` (SVD), or None when ``R`` is not one within ``atol``
    (not finite, not orthonormal, or a reflection). Removes JSON rounding so downstream checks
    (``vlm3.geometry.pose.is_rotation``, 1e-4) pass."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3) or not np.all(np.isfinite(R)):
        return None
    if not np.allclose(R.T @ R, np.eye(3), atol=atol) or abs(np.linalg.det(R) - 1) > atol:
        return None
    U, _, Vt = np.linalg.svd(R)
    return U @ Vt


def projection_camera(P: np.ndarray, width: int, height: int, source: str):
    """(Intrinsics, t) of a rectified 3x4 projection ``P = K [I | t]`` with OpenCV (centre-origin)
    pixels, e.g. KITTI's P2: K converted to vlm3's corner origin (``Intrinsics.from_center_origin``)
    and ``t = K^-1 P[:, 3]``, the offset of this camera's frame from the reference frame (a point X
    in the reference frame is X + t in this camera's, no rotation). ValueError naming ``source``."""
    from vlm3.geometry.camera import Intrinsics

    P = np.asarray(P, dtype=np.float64)
    if P.size != 12 or not np.all(np.isfinite(P)):
        raise ValueError(f"{source}: projection has {P.size} numbers, expected 12 finite (3x4)")
    P = P.reshape(3, 4)
    if abs(P[0, 1]) > 1e-9 or abs(P[1, 0]) > 1e-9 or np.abs(P[2, :3] - [0, 0, 1]).max() > 1e-9:
        raise ValueError(f"{source}: {P.tolist()} is not a rectified pinhole projection [fx 0 cx tx; 0 fy cy ty; 0 0 1 tz]")
    K = Intrinsics.from_center_origin(P[0, 0], P[1, 1], P[0, 2], P[1, 2], width, height)
    t = np.linalg.solve(P[:, :3], P[:, 3])
    return K, t


# --- OpenEXR scanline images (WAI depth maps) -----------------------------------------------------
_EXR_MAGIC = b"\x76\x2f\x31\x01"
_EXR_LINES_PER_CHUNK = {0: 1, 1: 1, 2: 1, 3: 16}  # NONE, RLE, ZIPS, ZIP (the compressions read here)
_EXR_COMPRESSION = {0: "NONE", 1: "RLE", 2: "ZIPS", 3: "ZIP", 4: "PIZ", 5: "PXR24", 6: "B44", 7: "B44A", 8: "DWAA", 9: "DWAB"}
_EXR_DTYPE = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}  # UINT, HALF, FLOAT


def _exr_unpredict(buf: bytes) -> bytes:
    """Undo OpenEXR's ZIP/RLE byte preprocessing (ImfZip.cpp): delta predictor, then de-interleave."""
    d = np.frombuffer(buf, dtype=np.uint8).astype(np.int64)
    if d.size == 0:
        return b""
    t = d.copy()
    t[1:] -= 128
    t = (np.cumsum(t) & 0xFF).astype(np.uint8)  # t[i] = t[i-1] + d[i] - 128 (mod 256)
    out = np.empty_like(t)
    half = (t.size + 1) // 2
    out[0::2], out[1::2] = t[:half], t[half:]
    return out.tobytes()


def _exr_rle(buf: bytes, size: int) -> bytes:
    out = bytearray()
    i = 0
    while i < len(buf) and len(out) < size:
        n = int.from_bytes(buf[i : i + 1], "little", signed=True)
        if n < 0:
            out += buf[i + 1 : i + 1 - n]
            i += 1 - n
        else:
            out += buf[i + 1 : i + 2] * (n + 1)
            i += 2
    return bytes(out)


def _exr_attributes(data: bytes, path: Path) -> tuple[dict[str, tuple[str, bytes]], int]:
    attrs: dict[str, tuple[str, bytes]] = {}
    pos = 8
    while True:
        end = data.index(b"\0", pos)
        name = data[pos:end].decode("latin-1")
        pos = end + 1
        if not name:
            return attrs, pos
        end = data.index(b"\0", pos)
        kind = data[pos:end].decode("latin-1")
        size = int.from_bytes(data[end + 1 : end + 5], "little", signed=True)
        pos = end + 5
        if size < 0 or pos + size > len(data):
            raise ValueError(f"{path}: attribute {name!r} runs past the end of the file")
        attrs[name] = (kind, data[pos : pos + size])
        pos += size


def _exr_channels(raw: bytes) -> list[tuple[str, int, int, int]]:
    """(name, pixel type, x sampling, y sampling) of a chlist attribute, in stored (sorted) order."""
    out, pos = [], 0
    while pos < len(raw) and raw[pos] != 0:
        end = raw.index(b"\0", pos)
        name = raw[pos:end].decode("latin-1")
        ptype, xs, ys = (int.from_bytes(raw[i : i + 4], "little", signed=True) for i in (end + 1, end + 9, end + 13))
        out.append((name, ptype, xs, ys))
        pos = end + 17
    return out


def read_exr(path: Path, channel: str | None = None) -> np.ndarray:
    """One channel of a single-part scanline OpenEXR file as a float32 (H, W) array.

    The channel is ``channel`` when given, else the only one, else ``Y`` (OpenCV writes a
    single-channel image, e.g. a WAI depth map, as ``Y``). Compressions NONE, RLE, ZIPS and ZIP
    (OpenCV's and WAI's default) are decoded here with numpy/zlib; other files (PIZ, DWA, tiled,
    multi-part) are read with the ``OpenEXR`` package when it is installed. FrameError
    ``missing_file`` / ``unreadable_file`` otherwise.
    """
    import zlib

    if not path.is_file():
        raise FrameError("missing_file", f"{path} does not exist")
    data = path.read_bytes()
    if data[:4] != _EXR_MAGIC:
        raise FrameError("unreadable_file", f"{path}: not an OpenEXR file")
    try:
        version = int.from_bytes(data[4:8], "little")
        attrs, pos = _exr_attributes(data, path)
        channels = _exr_channels(attrs["channels"][1]) if "channels" in attrs else []
        compression = attrs["compression"][1][0] if "compression" in attrs else -1
        if version & 0x1A00 or compression not in _EXR_LINES_PER_CHUNK or any(xs != 1 or ys != 1 or p not in _EXR_DTYPE for _, p, xs, ys in channels):
            return _read_exr_library(path, channel, f"flags {version & ~0xFF:#x}, compression {_EXR_COMPRESSION.get(compression, compression)}")
        if "dataWindow" not in attrs or not channels:
            raise ValueError("no dataWindow or channels attribute")
        x0, y0, x1, y1 = np.frombuffer(attrs["dataWindow"][1][:16], dtype="<i4").tolist()
        width, height = x1 - x0 + 1, y1 - y0 + 1
        names = [c[0] for c in channels]
        pick = channel if channel is not None else (names[0] if len(names) == 1 else "Y")
        if pick not in names:
            raise FrameError("unreadable_file", f"{path}: no channel {pick!r} (channels {names}); expected a single-channel map")
        lines = _EXR_LINES_PER_CHUNK[compression]
        n_chunks = -(-height // lines)
        offsets = np.frombuffer(data[pos : pos + 8 * n_chunks], dtype="<u8")
        if offsets.size != n_chunks:
            raise ValueError("truncated offset table")
        line_bytes = [width * _EXR_DTYPE[p].itemsize for _, p, _, _ in channels]
        k = names.index(pick)
        dtype = _EXR_DTYPE[channels[k][1]]
        before = sum(line_bytes[:k])
        out = np.zeros((height, width), dtype=np.float32)
        for off in offsets.tolist():
            y = int.from_bytes(data[off : off + 4], "little", signed=True)
            size = int.from_bytes(data[off + 4 : off + 8], "little", signed=True)
            payload = data[off + 8 : off + 8 + size]
            n = min(lines, y1 + 1 - y)
            expected = n * sum(line_bytes)
            if len(payload) != size or n <= 0:
                raise ValueError(f"chunk at line {y} is truncated or outside the data window")
            if compression == 0 or size == expected:  # OpenEXR stores a chunk raw when compressing does not pay
                raw = payload
            elif compression == 1:
                raw = _exr_unpredict(_exr_rle(payload, expected))
            else:
                raw = _exr_unpredict(zlib.decompress(payload))
            if len(raw) != expected:
                raise ValueError(f"chunk at line {y} decodes to {len(raw)} bytes, expected {expected}")
            block = np.frombuffer(raw, dtype=np.uint8).reshape(n, sum(line_bytes))
            values = block[:, before : before + line_bytes[k]].copy().view(dtype).reshape(n, width)
            out[y - y0 : y - y0 + n] = values.astype(np.float32)
        return out
    except FrameError:
        raise
    except (ValueError, IndexError, KeyError, zlib.error) as e:
        raise FrameError("unreadable_file", f"{path}: not a readable OpenEXR file ({e})") from None


def _read_exr_library(path: Path, channel: str | None, why: str) -> np.ndarray:
    """Fallback for EXR variants the numpy reader does not decode: the ``OpenEXR`` package (>= 3.3)."""
    try:
        import OpenEXR  # type: ignore[import-not-found]
    except ImportError:
        raise FrameError("unreadable_file", f"{path}: OpenEXR variant ({why}) needs `pip install OpenEXR`") from None
    try:
        with OpenEXR.File(str(path)) as f:
            chans = f.channels()
            names = sorted(chans)
            pick = channel if channel is not None else (names[0] if len(names) == 1 else "Y")
            if pick not in chans:
                raise FrameError("unreadable_file", f"{path}: no channel {pick!r} (channels {names})")
            return np.asarray(chans[pick].pixels, dtype=np.float32)
    except FrameError:
        raise
    except Exception as e:  # the bindings raise several types for corrupt files
        raise FrameError("unreadable_file", f"{path}: {e}") from None
