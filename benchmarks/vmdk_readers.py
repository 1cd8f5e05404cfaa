"""Benchmark: our VMDK reader against dissect.hypervisor and libvmdk-python, in one run.

The same two 1 GiB disks (monolithicSparse and streamOptimized, made by ``qemu-img convert``
from one raw image of compressible data) are read by each reader:

- sequential: the whole disk in 1 MiB reads, in order;
- random: 64 KiB reads at seeded random (unaligned) offsets.

Each figure is the best of ``--rounds`` rounds that interleave the readers, so load from other
processes on the machine hurts every reader alike.

Targets (from issue 3/6): sequential monolithicSparse >= 1.0x dissect; streamOptimized random
>= 3x dissect. The peers are benchmark-only dependencies, never package dependencies::

    apt-get install qemu-utils
    .venv/bin/pip install dissect.hypervisor libvmdk-python
    .venv/bin/python benchmarks/vmdk_readers.py [--size-mib 1024] [--random-reads 2000] [--rounds 3]

The last line printed is one JSON object with every figure (MiB/s) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from liverecovery.catalog.vmdk import open_vmdk

MiB = 1 << 20
Reader = Callable[[int, int], bytes]


def make_raw(path: Path, size: int) -> None:
    """Compressible data (log-like text with varying numbers), every grain allocated."""
    rng = random.Random(42)
    block = bytearray()
    while len(block) < 4 * MiB:
        block += b"%08x host=esx%02d op=read lba=%012d len=%d status=ok\n" % (
            len(block),
            rng.randrange(64),
            rng.randrange(1 << 40),
            rng.choice((512, 4096, 65536)),
        )
    block = block[: 4 * MiB]
    with path.open("wb") as f:
        for i in range(size // len(block)):
            f.write(bytes(block[i % 7 :]) + bytes(block[: i % 7]))


def ours(path: Path) -> tuple[Reader, Callable[[], None]]:
    disk = open_vmdk(path)
    return disk.read_sync, disk.close


def dissect(path: Path) -> tuple[Reader, Callable[[], None]]:
    from dissect.hypervisor.disk.vmdk import VMDK

    fh = path.open("rb")
    disk = VMDK(fh)

    def read(offset: int, length: int) -> bytes:
        disk.seek(offset)
        data: bytes = disk.read(length)
        return data

    return read, fh.close


def libvmdk(path: Path) -> tuple[Reader, Callable[[], None]]:
    import pyvmdk

    handle = pyvmdk.handle()
    handle.open(str(path))
    handle.open_extent_data_files()

    def read(offset: int, length: int) -> bytes:
        data: bytes = handle.read_buffer_at_offset(length, offset)
        return data

    return read, handle.close


READERS = {"ours": ours, "dissect": dissect, "libvmdk": libvmdk}


def sequential(read: Reader, size: int) -> float:
    start = time.perf_counter()
    for offset in range(0, size, MiB):
        if len(read(offset, MiB)) != MiB:
            raise AssertionError("short read")
    return size / MiB / (time.perf_counter() - start)


def random_reads(read: Reader, size: int, count: int) -> float:
    rng = random.Random(7)
    offsets = [rng.randrange(size - 65536) for _ in range(count)]
    start = time.perf_counter()
    for offset in offsets:
        if len(read(offset, 65536)) != 65536:
            raise AssertionError("short read")
    return count * 65536 / MiB / (time.perf_counter() - start)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--random-reads", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    args = parser.parse_args()
    size = args.size_mib * MiB
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vmdk-bench-") as tmp:
        d = Path(tmp)
        make_raw(d / "source.raw", size)
        for sub in ("monolithicSparse", "streamOptimized"):
            subprocess.run(
                ["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={sub}",
                 "source.raw", f"{sub}.vmdk"],
                check=True,
                cwd=d,
            )  # fmt: skip
        # check once that every reader returns the same bytes as the raw image
        with (d / "source.raw").open("rb") as f:
            f.seek(123_457)
            expected = f.read(3 * MiB)
        for sub in ("monolithicSparse", "streamOptimized"):
            opened = {name: opener(d / f"{sub}.vmdk") for name, opener in READERS.items()}
            try:
                for name, (read, _) in opened.items():
                    if read(123_457, 3 * MiB) != expected:
                        raise AssertionError(f"{name} read wrong bytes from {sub}")
                # rounds interleave the readers so a busy neighbour hurts all alike; best of
                for _ in range(args.rounds):
                    for name, (read, _) in opened.items():
                        seq = f"{sub}.sequential_1MiB.{name}"
                        rnd = f"{sub}.random_64KiB.{name}"
                        figures[seq] = max(figures.get(seq, 0.0), round(sequential(read, size), 1))
                        figures[rnd] = max(
                            figures.get(rnd, 0.0),
                            round(random_reads(read, size, args.random_reads), 1),
                        )
            finally:
                for _, close in opened.values():
                    close()
            for name in READERS:
                print(
                    f"{sub:17} {name:8} sequential {figures[f'{sub}.sequential_1MiB.{name}']:8.1f}"
                    f" MiB/s  random {figures[f'{sub}.random_64KiB.{name}']:8.1f} MiB/s",
                    flush=True,
                )
    ratios = {}
    for sub in ("monolithicSparse", "streamOptimized"):
        for kind in ("sequential_1MiB", "random_64KiB"):
            for peer in ("dissect", "libvmdk"):
                ratios[f"{sub}.{kind}.ours_vs_{peer}"] = round(
                    figures[f"{sub}.{kind}.ours"] / figures[f"{sub}.{kind}.{peer}"], 2
                )
    result = {
        "benchmark": "vmdk_readers",
        "size_mib": args.size_mib,
        "random_reads": args.random_reads,
        "rounds": args.rounds,
        "unit": "MiB/s",
        "cpu": cpu_model(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
        "figures": figures,
        "ratios": ratios,
        "targets_met": {
            "sequential_sparse_ge_1x_dissect": ratios[
                "monolithicSparse.sequential_1MiB.ours_vs_dissect"
            ]
            >= 1.0,
            "stream_random_ge_3x_dissect": ratios["streamOptimized.random_64KiB.ours_vs_dissect"]
            >= 3.0,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
