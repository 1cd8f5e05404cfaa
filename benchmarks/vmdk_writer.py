"""Benchmark: the pure-Python VMDK writer vs qemu-img convert, on the same data.

Writes a disk with boot-like known-pattern data (lazy runs) as monolithicSparse and streamOptimized
with our writer, and converts the same data from a sparse raw image with qemu-img. Prints one JSON
object last: seconds, on-disk bytes, and our/qemu time ratios.

    .venv/bin/python benchmarks/vmdk_writer.py [--disk-gib 1024] [--data-mib 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from liverecovery.testing.samples import pattern_runs, sample_spans
from liverecovery.testing.vmdk_writer import (
    write_monolithic_sparse,
    write_raw,
    write_stream_optimized,
)

MiB = 1024 * 1024
GiB = 1024 * MiB


def timed(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def qemu_convert(raw: Path, out: Path, subformat: str) -> None:
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            f"subformat={subformat}",
            raw,
            out,
        ],
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--disk-gib", type=int, default=1024)
    parser.add_argument("--data-mib", type=int, default=256)
    args = parser.parse_args()
    size = args.disk_gib * GiB
    runs = pattern_runs(sample_spans(size, 1, head=args.data_mib * MiB), 1)
    data = sum(len(d) for d in runs.values())
    figures: dict[str, float | int] = {"disk_bytes": size, "data_bytes": data}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        raw = folder / "disk.raw"
        figures["raw_write_s"] = timed(write_raw, raw, size, runs)
        for name, ours, subformat in (
            ("sparse", write_monolithic_sparse, "monolithicSparse"),
            ("stream", write_stream_optimized, "streamOptimized"),
        ):
            mine = folder / f"ours-{name}.vmdk"
            theirs = folder / f"qemu-{name}.vmdk"
            figures[f"ours_{name}_s"] = timed(ours, mine, size, runs)
            figures[f"qemu_{name}_s"] = timed(qemu_convert, raw, theirs, subformat)
            figures[f"ours_{name}_disk_bytes"] = mine.stat().st_blocks * 512
            figures[f"qemu_{name}_disk_bytes"] = theirs.stat().st_blocks * 512
            figures[f"{name}_time_ratio_ours_to_qemu"] = round(
                figures[f"ours_{name}_s"] / figures[f"qemu_{name}_s"], 3
            )
            mine.unlink()
            theirs.unlink()
    for key, value in figures.items():
        if key.endswith("_s"):
            figures[key] = round(value, 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
