"""Pack + unpack time of the hot NFSv3 messages: the hand-written codecs vs the declared ones.

The old ``nfs3_codec`` is loaded from git (the parent of the commit that added ``xdr_spec``,
or ``--old-ref``) into a module of its own, so both run in one process on the same ``Packer`` and
``Unpacker``. Each op is timed as the server and client do it: a fresh ``Packer``, ``pack``, then
``unpack`` from the bytes; old and new alternate, best of ``--repeat``. The last line is JSON
with ns per op and the ratio new/old.

    python benchmarks/xdr_codecs.py [--repeat 7] [--number 20000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liverecovery.errors import NfsStatus
from liverecovery.nfs import nfs3_codec as new
from liverecovery.nfs.filesystem import FileAttributes, FileType, Stability
from liverecovery.nfs.xdr import Packer, Unpacker

ROOT = Path(__file__).resolve().parent.parent
CODEC = "liverecovery/nfs/nfs3_codec.py"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def load_old(ref: str | None) -> types.ModuleType:
    if ref is None:
        added = _git("log", "--diff-filter=A", "--format=%H", "--", "liverecovery/nfs/xdr_spec.py")
        ref = f"{added.splitlines()[-1]}^"
    source = _git("show", f"{ref}:{CODEC}")
    module = types.ModuleType("old_nfs3_codec")
    module.__file__ = f"<{ref}:{CODEC}>"
    sys.modules[module.__name__] = module  # attrs resolves the module of its classes
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


class _Payload:
    """READ data the server splices from a file: only its length is encoded."""

    nbytes = 4096


def cases(m: Any) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """op → (message, pack arguments after the packer)."""
    a = FileAttributes(
        FileType.REG, 0o644, 1, 1000, 1000, 1 << 30, 1 << 30, 12345,
        1_700_000_000_123_456_789, 1_700_000_001_000_000_000, 1_700_000_002_000_000_001,
    )  # fmt: skip
    fh = bytes(range(40))
    fsid = (42,)
    return {
        "getattr_res": (m.GetattrRes(NfsStatus.OK, a), fsid),
        "read_args": (m.ReadArgs(fh, 1 << 20, 65536), ()),
        "read_res_header": (m.ReadRes(NfsStatus.OK, a, False, b""), fsid),
        "read_res_4k": (m.ReadRes(NfsStatus.OK, a, False, b"r" * 4096), fsid),
        "write_args_4k": (m.WriteArgs(fh, 1 << 20, Stability.UNSTABLE, b"w" * 4096), ()),
        "write_res": (
            m.WriteRes(NfsStatus.OK, m.Wcc(m.WccAttr.of(a), a), 4096, Stability.UNSTABLE),
            fsid,
        ),
        "lookup_res": (m.LookupRes(NfsStatus.OK, fh, a, a), fsid),
        "access_args": (m.AccessArgs(fh, 0x3F), ()),
        "access_res": (m.AccessRes(NfsStatus.OK, a, 0x1F), fsid),
    }


def _timer(msg: Any, extra: tuple[int, ...], number: int) -> Callable[[], int]:
    cls = type(msg)
    pack, unpack = msg.pack, cls.unpack

    def run() -> int:
        start = time.perf_counter_ns()
        for _ in range(number):
            p = Packer()
            pack(p, *extra)
            unpack(Unpacker(p.getvalue()))
        return time.perf_counter_ns() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--old-ref", default=None, help="git ref of the hand-written codecs")
    args = parser.parse_args()
    old = load_old(args.old_ref)
    old_cases, new_cases = cases(old), cases(new)
    for op, (msg, extra) in new_cases.items():  # both encode the same bytes
        p, q = Packer(), Packer()
        msg.pack(p, *extra)
        old_cases[op][0].pack(q, *old_cases[op][1])
        assert p.getvalue() == q.getvalue(), op
    result: dict[str, dict[str, float]] = {}
    for op in new_cases:
        timers = {
            "old": _timer(*old_cases[op], args.number),
            "new": _timer(*new_cases[op], args.number),
        }
        best = {"old": float("inf"), "new": float("inf")}
        for _ in range(args.repeat):
            for name, run in timers.items():
                best[name] = min(best[name], run() / args.number)
        result[op] = {
            "old_ns": round(best["old"]),
            "new_ns": round(best["new"]),
            "ratio": round(best["new"] / best["old"], 3),
        }
        print(f"{op:16} old {best['old']:7.0f} ns  new {best['new']:7.0f} ns  "
              f"new/old {best['new'] / best['old']:.3f}")  # fmt: skip
    print(json.dumps({"unit": "ns per pack+unpack", "ops": result}))


if __name__ == "__main__":
    main()
