"""DepthLM-style JSONL: one JSON object per image with sampled pixels and their metric depth.

Layout (``ROOT`` is the folder given with ``--root``)::

    ROOT/
      *.jsonl, **/*.jsonl     one object per line (``glob`` option picks the files)
      <images>                at the paths named by ``image``, relative to ROOT

Each line::

    {"image": "rgb/corridor_01.png",                 # relative to ROOT ("image_path" also accepted)
     "intrinsics": [fx, fy, cx, cy, width, height],  # pixels of that image
     "pixel_coords": [[x, y], ...],                  # integer pixel indices, x = column, y = row
     "depth": [d, ...]}                              # metres, same order as pixel_coords

This is the format of DepthLM's curated data and of its released example
``examples/ibims1/ibims1_val.jsonl`` (repository facebookresearch/DepthLM_Official).

Conventions and what DepthLM's code says about them
---------------------------------------------------
Pixels. The curation scripts take ``pixel_coords`` from array indices (``np.argwhere`` on the depth
map, stored as ``[col, row]``; Argoverse 2 rounds projected lidar points to the nearest index), so a
coordinate names a whole pixel. vlm3 records store its centre: (x + 0.5, y + 0.5).

Depth type (option ``depth_type``, default ``"z"``). DepthLM's files do not say, and its scripts
differ. The only curated data it releases, ``examples/ibims1/ibims1_val.jsonl``, has no curation
script (``prepare_data.sh`` has no iBims-1 step), but its labels are z-depth: back-projected as z,
the points of each image lie on planes (walls, floors) far more often than as range (best RANSAC
plane, 1 % threshold: z wins in 96 of 100 images, 4133 vs 2456 inliers; tested in
``tests/test_depthlm_adapter.py``). So z is the default. The curation scripts named in its
``prepare_data.sh`` store range, sqrt(X^2 + Y^2 + Z^2), for ``utils/curate_argoverse.py`` (norm of
the lidar point in the camera frame), ``utils/curate_sunRGBD.py``, ``utils/curate_matterport3d.py``
and ``utils/curate_eth3d.py`` (z-depth converted with the intrinsics) and ``utils/curate_waymo.py``
(``range_image_utils.build_camera_depth_image``: "the distance between a lidar point and camera
frame origin"), ``utils/curate_NYU.py`` (NYUv2 images of SUN RGB-D, as ``curate_sunRGBD.py``):
pass ``depth_type=range`` for those files. The nuScenes scripts
(``utils/curate_nuscenes_*.py``: the lidar point's camera z) and ``utils/curate_ddad.py`` (dgp's
projected depth map) store z. ``utils/curate_scannet.py`` (ScanNet++) computes
sqrt(xn^2 + yn^2 + z^2) with *normalised* xn, yn, which is neither (equal to z at the image centre,
closer to z than to range beyond ~1.4 m); z is the nearer choice. Records always carry the type,
so downstream code converts (the depth prompt "how far ... from the camera" asks for range).

Principal point (option ``principal_point``, default ``"center"``). The same scripts convert depth
to range with ``(x - cx) / fx`` on the *integer* index x, and their calibrations come from
OpenCV-style sources (ScanNet++ writes cx = 959.5 for a 1920-pixel-wide image, the centre of an
image whose first pixel centre is at 0). So cx, cy are in the pixel-centre-origin convention, and
vlm3 converts them with ``Intrinsics.from_center_origin`` (+0.5), which keeps every stored range
exactly consistent with the stored pixel. ``principal_point=corner`` takes them as they are.
(DepthLM's own loader scales cx by s without the half-pixel shift and truncates mapped pixels with
``int()``; vlm3 maps labels exactly, see ``vlm3.geometry.unify``.)

Options (``--option key=value``)
--------------------------------
- ``depth_type``: ``z`` (default) or ``range``.
- ``principal_point``: ``center`` (default) or ``corner``.
- ``chunk_size``: lines per work unit (default 256, fewer for datasets under 8192 lines so that
  there are at least 32 units for ``--workers`` to share; the size depends on the data only).
- ``glob``: which files under ROOT to read (default ``**/*.jsonl``).
- ``dataset``: the dataset name written into records (default: the ROOT folder's name).
- ``line_range``: ``START:END``, fractions of each file's lines: keep the lines with 0-based
  index in ``[int(n * START), int(n * END))`` (n = the file's line count; END defaults to 1).
  ``line_range=0.98:`` is DepthLM's ScanNet++ evaluation split: its ``utils/datasets.py`` keeps
  ``list_data_dict[int(len(list_data_dict) * 0.98):]`` ("keep the last 2% for evaluation") of any
  JSONL whose path contains "scannet", and trains on the first 98 %.

``--points N`` keeps a seeded random subset of N labelled pixels per image (all when fewer).
Each bad line becomes a rejection whose source is ``file:line``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from vlm3.data.adapters.base import Adapter, AdapterOptions, LayoutError, Rejection, register
from vlm3.data.records import Record
from vlm3.data.sampling import item_rng
from vlm3.data.validate import make_record

DEFAULT_CHUNK = 256
MIN_UNITS = 32  # without chunk_size a small dataset still gets this many units (~4 per worker at --workers 8)
OPTION_KEYS = ("depth_type", "principal_point", "chunk_size", "glob", "dataset", "line_range")


@register
class DepthLMJsonlAdapter(Adapter):
    """DepthLM curated JSONL (image, intrinsics, integer pixels, metric depth) -> depth records."""

    name: ClassVar[str] = "depthlm-jsonl"
    description: ClassVar[str] = (
        "DepthLM-style JSONL: per line image, intrinsics [fx, fy, cx, cy, w, h], integer pixel_coords [[x, y]], depth (m)"
    )
    layout: ClassVar[str] = (
        "ROOT/*.jsonl (or **/*.jsonl)  one JSON object per line: image, intrinsics, pixel_coords, depth\n"
        "ROOT/<image paths named in the JSONL>\n"
        "options: depth_type=z|range (default z), principal_point=center|corner (default center),\n"
        "         chunk_size=N (lines per unit, default 256; at least 32 units), glob=PATTERN, dataset=NAME,\n"
        "         line_range=START:END (fractions of each file's lines, e.g. 0.98: = its last 2 %)"
    )
    labels: ClassVar[tuple[str, ...]] = ("depth",)

    def __init__(self, root: str | Path, options: AdapterOptions | None = None) -> None:
        super().__init__(root, options)
        if not self.root.is_dir():
            raise NotADirectoryError(
                f"{self.name}: --root {self.root} must be the folder holding the JSONL files and images "
                "(pick files with --option glob=NAME.jsonl)"
            )
        extra = dict(self.options.extra)
        unknown = sorted(set(extra) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; known: {', '.join(OPTION_KEYS)}")
        self.depth_type = extra.get("depth_type", "z")
        if self.depth_type not in ("range", "z"):
            raise ValueError(f"{self.name}: option depth_type={self.depth_type!r} must be 'range' or 'z'")
        self.principal_point = extra.get("principal_point", "center")
        if self.principal_point not in ("center", "corner"):
            raise ValueError(f"{self.name}: option principal_point={self.principal_point!r} must be 'center' or 'corner'")
        try:
            self.chunk_size: int | None = int(extra["chunk_size"]) if "chunk_size" in extra else None  # None: auto_chunk_size
        except ValueError:
            raise ValueError(f"{self.name}: option chunk_size={extra['chunk_size']!r} must be a positive integer") from None
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"{self.name}: option chunk_size={self.chunk_size} must be >= 1")
        self.pattern = extra.get("glob", "**/*.jsonl")
        self.dataset = extra.get("dataset") or self.root.resolve().name
        self.line_range = _parse_line_range(self.name, extra.get("line_range"))
        if self.options.points is not None and self.options.points < 1:
            raise ValueError(f"{self.name}: points={self.options.points} must be >= 1 (or unset for all)")
        self.files = sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(self.pattern) if p.is_file())
        if not self.files:
            raise LayoutError(f"{self.name}: no files matching {self.pattern!r} under {self.root}")
        self._offsets: dict[str, list[int]] = {}
        self._file_set = frozenset(self.files)  # unit checks stay O(1) with many files

    # --- units ---------------------------------------------------------------------------------
    def units(self) -> list[str]:
        """``"<file>:<first line>-<last line>"`` chunks (1-based, zero-padded so names sort in file order)
        of ``chunk_size`` lines, or of :func:`auto_chunk_size` lines without it."""
        spans = {rel: self._span(rel) for rel in self.files}
        size = self.chunk_size or auto_chunk_size(sum(hi - lo for lo, hi in spans.values()))
        out = []
        for rel in self.files:
            lo, hi = spans[rel]
            for start in range(lo + 1, hi + 1, size):
                out.append(f"{rel}:{start:08d}-{min(start + size - 1, hi):08d}")
        return out

    def _span(self, rel: str) -> tuple[int, int]:
        """0-based [first, end) of the lines of ``rel`` that ``line_range`` keeps (all without it)."""
        n = len(self._chunk_offsets(rel)[1])
        if self.line_range is None:
            return 0, n
        start, end = self.line_range
        return int(n * start), int(n * end)  # int() truncates as DepthLM's int(len(data) * 0.98) does

    def _chunk_offsets(self, rel: str) -> tuple[list[int], list[int]]:
        """Byte offsets of the chunk starts and of every line start (computed once per file)."""
        if rel not in self._offsets:
            starts, pos = [], 0
            with open(self.root / rel, "rb") as f:
                for line in f:
                    starts.append(pos)
                    pos += len(line)
            self._offsets[rel] = starts
        starts = self._offsets[rel]
        return starts[:: self.chunk_size], starts

    def _parse_unit(self, unit: str) -> tuple[str, int, int]:
        try:
            rel, span = unit.rsplit(":", 1)
            start, end = (int(x) for x in span.split("-"))
        except ValueError:
            raise ValueError(f"{self.name}: bad unit {unit!r}, expected 'FILE:FIRST-LAST'") from None
        if rel not in self._file_set:
            raise ValueError(f"{self.name}: unit {unit!r} names a file that is not under {self.root} ({self.pattern})")
        return rel, start, end

    # --- conversion ----------------------------------------------------------------------------
    def convert(self, unit: str) -> Iterator[Record | Rejection]:
        rel, start, end = self._parse_unit(unit)
        _, starts = self._chunk_offsets(rel)
        lo, hi = self._span(rel)
        if not (lo + 1 <= start <= end <= hi):
            raise ValueError(f"{self.name}: unit {unit!r} is outside lines {lo + 1}..{hi} of {rel}")
        with open(self.root / rel, "rb") as f:
            f.seek(starts[start - 1])
            for lineno in range(start, end + 1):
                raw = f.readline()
                if not raw.strip():
                    continue  # blank lines are layout, not data
                yield self._convert_line(rel, lineno, raw)

    def _convert_line(self, rel: str, lineno: int, raw: bytes) -> Record | Rejection:
        source = f"{rel}:{lineno}"
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return Rejection(source, "invalid_record", f"not valid JSON ({e})")
        if not isinstance(obj, dict):
            return Rejection(source, "invalid_record", f"expected a JSON object, got {type(obj).__name__}")
        if "image" not in obj and "image_path" in obj:  # curate_matterport3d.py writes "image_path"
            obj["image"] = obj["image_path"]
        missing = [k for k in ("image", "intrinsics", "pixel_coords", "depth") if k not in obj]
        if missing:
            return Rejection(source, "invalid_record", f"missing {', '.join(missing)}")

        image = obj["image"]
        if not isinstance(image, str) or not image.strip("/ "):
            return Rejection(source, "invalid_record", f"image = {image!r} is not a relative path")
        intr = obj["intrinsics"]
        if not isinstance(intr, list) or len(intr) != 6 or not all(_is_number(v) for v in intr):
            return Rejection(source, "bad_calibration", f"intrinsics = {intr!r} is not [fx, fy, cx, cy, width, height]")
        intr = [float(v) for v in intr]
        if self.principal_point == "center":
            intr[2] += 0.5
            intr[3] += 0.5
        pixels = _integer_pixels(obj["pixel_coords"])
        if isinstance(pixels, str):
            return Rejection(source, "invalid_record", pixels)
        depth = obj["depth"]
        if not isinstance(depth, list) or not all(_is_number(v) for v in depth):
            bad = next((v for v in depth if not _is_number(v)), depth) if isinstance(depth, list) else depth
            return Rejection(source, "invalid_record", f"depth must be a list of numbers (metres), found {bad!r}")
        if len(depth) != len(pixels):
            return Rejection(source, "invalid_record", f"{len(pixels)} pixel_coords but {len(depth)} depth values")
        if not pixels:
            return Rejection(source, "no_labels", "pixel_coords is empty")

        record_id = f"{self.dataset}:{source}"
        keep = range(len(pixels))
        if self.options.points is not None and len(pixels) > self.options.points:
            keep = item_rng(self.options.seed, record_id).choice(len(pixels), size=self.options.points, replace=False).tolist()
        return make_record(
            source,
            id=record_id,
            dataset=self.dataset,
            split=self.options.split,
            views=[{"image": image.lstrip("/"), "intrinsics": intr}],
            depth={
                "pixels": [(pixels[i][0] + 0.5, pixels[i][1] + 0.5) for i in keep],
                "depth": [float(depth[i]) for i in keep],
                "depth_type": self.depth_type,
            },
            meta={"source": source},
        )

    def manifest_info(self) -> dict:
        return {
            "dataset": self.dataset,
            "source_format": "DepthLM JSONL (facebookresearch/DepthLM_Official)",
            "source_files": self.files,
            "source_version": self._fingerprint(),
            "depth_type": self.depth_type,
            "depth_units": "m",
            "principal_point": self.principal_point,
            "pixel_coords": "integer indices (x = column, y = row), stored as pixel centres (+0.5)",
            **({"line_range": list(self.line_range)} if self.line_range is not None else {}),
        }

    def _fingerprint(self) -> str:
        """sha256 over each file's name, size and first/last MiB: cheap even for very large files."""
        h = hashlib.sha256()
        for rel in self.files:
            path = self.root / rel
            size = path.stat().st_size
            h.update(f"{rel}\0{size}\0".encode())
            with open(path, "rb") as f:
                h.update(f.read(1 << 20))
                if size > 2 << 20:
                    f.seek(size - (1 << 20))
                    h.update(f.read())
        return "sha256:" + h.hexdigest()[:16]


def auto_chunk_size(lines: int) -> int:
    """Lines per unit when ``chunk_size`` is not given: 256 (DEFAULT_CHUNK), fewer for a dataset of
    under 32 x 256 lines so that it still splits into MIN_UNITS units. It depends on the dataset
    alone, never on ``--workers``, so units, shards and resuming are the same for any worker count."""
    return max(1, min(DEFAULT_CHUNK, math.ceil(lines / MIN_UNITS)))


def _parse_line_range(adapter: str, raw: str | None) -> tuple[float, float] | None:
    """``"START:END"`` (fractions, END optional = 1) -> (start, end); None without the option."""
    if raw is None:
        return None
    text = str(raw).strip()
    head, sep, tail = text.partition(":")
    try:
        if not sep:
            raise ValueError
        start = float(head) if head.strip() else 0.0
        end = float(tail) if tail.strip() else 1.0
    except ValueError:
        raise ValueError(f"{adapter}: option line_range={raw!r} must be START:END, fractions of a file's lines (e.g. 0.98:)") from None
    if not (0.0 <= start < end <= 1.0):
        raise ValueError(f"{adapter}: option line_range={raw!r} needs 0 <= START < END <= 1")
    return start, end


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer_pixels(value: Any) -> list[tuple[int, int]] | str:
    """``[[x, y], ...]`` of integer-valued numbers -> list of int pairs, or the reason it is not."""
    if not isinstance(value, list):
        return f"pixel_coords = {value!r} is not a list of [x, y]"
    out = []
    for i, p in enumerate(value):
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(c) for c in p)):
            return f"pixel_coords[{i}] = {p!r} is not [x, y]"
        x, y = p
        if not (math.isfinite(x) and math.isfinite(y)) or x != int(x) or y != int(y):
            return f"pixel_coords[{i}] = {p!r} is not an integer pixel index"
        out.append((int(x), int(y)))
    return out
