"""What changes the demo's numbers: the thread count and the CPU kernels, side by side.

Runs ``vlm3 demo --quick`` (every stage: synthetic data, four trained tiny models, held-out
evaluation) once per variant in a fresh process and says which earlier variant, if any, gave the
same trained weights for every arm (bit for bit) and every number of ``results.json`` except
wall-clock times.

Variants: the machine's defaults twice (is a re-run identical?), one thread instead of two, and
torch / MKL / oneDNN pinned to AVX2 kernels (what a CPU without AVX-512 would run), each with and
without the demo's own pinning (``VLM3_DEMO_NUMERICS=native`` turns it off).

    python benchmarks/determinism.py --out /tmp/determinism
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
VARIANTS: dict[str, dict[str, str]] = {
    "native, 2 threads": {"VLM3_DEMO_NUMERICS": "native", "OMP_NUM_THREADS": "2"},
    "native, 2 threads (re-run)": {"VLM3_DEMO_NUMERICS": "native", "OMP_NUM_THREADS": "2"},
    "native, 1 thread": {"VLM3_DEMO_NUMERICS": "native", "OMP_NUM_THREADS": "1"},
    "native, AVX2 kernels": {"VLM3_DEMO_NUMERICS": "native", "OMP_NUM_THREADS": "2", **AVX2},
    "pinned (the demo's default)": {},
    "pinned, 1 core's OMP setting": {"OMP_NUM_THREADS": "1"},
    "pinned, AVX2 already set": dict(AVX2),
}


def fingerprint(out: Path) -> dict:
    """Hashes of every arm's final weights and the results without wall-clock fields."""
    results = json.loads((out / "results.json").read_text())

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if "second" not in k and k != "numerics"}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    weights = {}
    for path in sorted(out.glob("runs/*/final/model.safetensors")):
        weights[path.parent.parent.name] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    # Paths name the variant's folder: compare what is in it, not where it is.
    numbers = json.dumps(strip(results), sort_keys=True, default=str).replace(str(out), "OUT")
    return {"weights": weights, "results": hashlib.sha256(numbers.encode()).hexdigest()[:12], "raw": strip(results),
            "numerics": results.get("numerics", {})}


def headline(raw: dict) -> str:
    arms = raw.get("arms", {})
    out = []
    for name, arm in (arms.items() if isinstance(arms, dict) else []):
        final = arm.get("final", {}) if isinstance(arm, dict) else {}
        for dataset, m in final.items():
            if isinstance(m, dict) and "delta1" in m:
                out.append(f"{name}/{dataset} {m['delta1']:.3f}")
    return ", ".join(out[:4])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/vlm3-determinism"))
    ap.add_argument("--only", nargs="*", help="run only these variants (names as listed)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    rows: list[tuple[str, dict, str | None, float]] = []
    for name, env in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        folder = args.out / "".join(c if c.isalnum() else "_" for c in name)
        full_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", *AVX2, "VLM3_DEMO_NUMERICS")}
        full_env.update(env)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vlm3.cli", "demo", "--quick", "--out", str(folder)], env=full_env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fp = fingerprint(folder)
        same = next((n for n, f, _, _ in rows if f["weights"] == fp["weights"] and f["results"] == fp["results"]), None)
        rows.append((name, fp, same, time.perf_counter() - start))
        numerics = fp["numerics"]
        print(f"{name:30s} threads {numerics.get('threads')} kernels {str(numerics.get('cpu_capability')):7s} "
              f"{'identical to: ' + same if same else 'new weights and numbers':45s} {rows[-1][3]:5.0f} s  {headline(fp['raw'])}", flush=True)
    (args.out / "determinism.json").write_text(json.dumps([{"variant": n, "weights": f["weights"], "results_hash": f["results"],
                                                            "identical_to": same, "seconds": round(s)} for n, f, same, s in rows], indent=2))


if __name__ == "__main__":
    main()
