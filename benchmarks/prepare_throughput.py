"""Throughput of ``vlm3 prepare`` on the real iBims-1 sample: 1 vs 2 worker processes.

Each run converts the 100 images of ``/work/shared/data/ibims1`` with the depthlm-jsonl adapter,
checks every image, unifies it to fx = fy = 1000 px and writes the unified PNG (``--materialize``),
into a fresh temporary folder. Prints records/s, images/s and the 2-vs-1 speed-up.

    python benchmarks/prepare_throughput.py [--data DIR] [--chunk-size 10] [--focal 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ibims1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="iBims-1 sample folder")
    parser.add_argument("--chunk-size", type=int, default=10, help="JSONL lines per work unit")
    parser.add_argument("--focal", type=float, default=1000.0, help="unified focal length (pixels)")
    args = parser.parse_args(argv)
    if not (args.data / "ibims1_val.jsonl").is_file():
        print(f"skipped: no iBims-1 sample at {args.data}")
        return 0

    from rich.console import Console
    from rich.table import Table

    from vlm3.data.prepare import PrepareOptions, prepare

    console = Console()
    rows = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory(prefix="vlm3-bench-") as tmp:
            opts = PrepareOptions(
                focal=args.focal, materialize=True, workers=workers, options={"chunk_size": str(args.chunk_size)}
            )
            report = prepare("depthlm-jsonl", args.data, Path(tmp) / "out", opts, progress=False)
        if report.records != 100 or report.rejected:
            console.print(f"unexpected result: {report.records} records, rejected {report.rejected}")
            return 1
        rows[workers] = report
    table = Table(title=f"vlm3 prepare depthlm-jsonl, iBims-1 (100 images, unify f={args.focal:g}, PNG write)")
    for col in ("workers", "seconds", "records/s", "images/s"):
        table.add_column(col, justify="right")
    for workers, r in rows.items():
        table.add_row(str(workers), f"{r.seconds:.2f}", f"{r.records_per_s:.1f}", f"{r.images_per_s:.1f}")
    console.print(table)
    console.print(f"speed-up 2 vs 1 workers: {rows[2].records_per_s / rows[1].records_per_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
