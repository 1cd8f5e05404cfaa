"""A process that holds live browse / live recovery sessions, for the cross-process tests.

    python session_worker.py    # then one JSON command per line on stdin, one JSON reply each

Commands: ``{"op": "acquire", "dir", "vm", "kind", "owner"}``, ``{"op": "release", "dir", "vm",
"owner"}``, ``{"op": "sessions", "dir", "vm"}``, ``{"op": "release_all"}``. Each lock directory
gets its own ``SessionRegistry``, as one process running ``LiveRecovery`` would have. The first
line printed is ``{"pid": ...}``; end of input ends the process without releasing anything.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from liverecovery.errors import ConcurrentSessionError
from liverecovery.job.sessions import SessionKind, SessionRegistry


def main() -> None:
    registries: dict[str, SessionRegistry] = {}
    print(json.dumps({"pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd: dict[str, Any] = json.loads(line)
        reply: dict[str, Any] = {"ok": True}
        op = cmd["op"]
        if op == "release_all":
            for registry in registries.values():
                registry.release_all()
        else:
            registry = registries.setdefault(cmd["dir"], SessionRegistry(lock_dir=cmd["dir"]))
            if op == "acquire":
                try:
                    registry.acquire(cmd["vm"], SessionKind[cmd["kind"]], cmd["owner"])
                except ConcurrentSessionError as exc:
                    reply = {"ok": False, "error": str(exc), "holders": list(exc.holders)}
            elif op == "release":
                registry.release(cmd["vm"], cmd["owner"])
            elif op == "sessions":
                reply["sessions"] = {o: k.name for o, k in registry.sessions(cmd["vm"]).items()}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
