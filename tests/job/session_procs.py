"""Drives ``session_worker.py`` processes from the tests: each is a real, separate process."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

WORKER = Path(__file__).parent / "session_worker.py"
REPLY_TIMEOUT_S = 20.0


class Worker:
    """One process holding sessions; ``call`` sends a command and returns its reply."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid: int = self._reply()["pid"]
        assert self.pid == self.proc.pid

    def _reply(self) -> dict[str, Any]:
        stdout = self.proc.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], REPLY_TIMEOUT_S)
        assert ready, f"session worker {self.proc.pid} did not answer"
        line = stdout.readline()
        assert line, f"session worker exited with {self.proc.wait()}"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def acquire(self, lock_dir: Path, vm: str, kind: str, owner: str) -> dict[str, Any]:
        return self.call("acquire", dir=str(lock_dir), vm=vm, kind=kind, owner=owner)

    def release(self, lock_dir: Path, vm: str, owner: str) -> None:
        assert self.call("release", dir=str(lock_dir), vm=vm, owner=owner)["ok"]

    def sessions(self, lock_dir: Path, vm: str) -> dict[str, str]:
        out: dict[str, str] = self.call("sessions", dir=str(lock_dir), vm=vm)["sessions"]
        return out

    def exit(self) -> int:
        """End of input: the process exits without releasing anything itself."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=REPLY_TIMEOUT_S)
        self.proc.stdout.close()
        return code

    def sigkill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=REPLY_TIMEOUT_S)
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=REPLY_TIMEOUT_S)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()
