"""A local control socket so ``liverecovery jobs``, ``status``, ``cancel``, ``stop`` and
``migrate-now`` reach a running ``liverecovery recover`` process.

A Unix socket at ``<job_results_dir>/control.sock``, owner-only (0600), one JSON request and one
JSON reply per line:

- ``{"op": "jobs"}`` lists the jobs;
- ``{"op": "status", "job": ID}`` (``job`` optional: every job) answers each job's state, time
  in state, bytes served and restored, and last warning;
- ``{"op": "cancel", "job": ID}`` cancels a job not yet powered on and answers once it has
  rolled back (refused, with the reason, once its VM runs from the backup);
- ``{"op": "stop", "job": ID, "power_off": true}`` is the operator's explicit request to power
  off a VM running from the backup and undo everything (without ``power_off``: refused once the
  VM runs; a cancel before);
- ``{"op": "migrate_now", "job": ID}`` starts (or retries) the storage vMotion now;
- ``{"op": "plan_status"}`` answers each plan's summary and table, plan runs and plan
  verifications alike (``kind``: ``recovery`` or ``verification``); ``{"op": "plan_cancel",
  "plan": NAME}`` cancels a running one: a plan run starts no more groups and its running VMs
  keep running; a plan verification stops its checks and powers off and undoes every copy.

Errors come back as ``{"error": "..."}``. Only the process's owner can connect, so there is no
authentication beyond the file's permissions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from liverecovery.errors import BackendError, JobStateError
from liverecovery.io.private_dirs import make_private_dirs
from liverecovery.plan.runner import PlanRun
from liverecovery.plan.verify import PlanVerificationRun
from liverecovery.recovery.live import LiveRecovery

__all__ = ["ControlServer", "request", "socket_path"]

_MAX_LINE = 64 * 1024


def socket_path(job_results_dir: str | os.PathLike[str]) -> Path:
    """Where a running process listens."""
    return Path(job_results_dir) / "control.sock"


class ControlServer:
    """Answers control requests for one ``LiveRecovery``."""

    def __init__(self, lr: LiveRecovery, path: Path) -> None:
        self._lr = lr
        self._path = path

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled; the socket file is removed afterwards."""
        make_private_dirs(self._path.parent)
        if self._path.is_socket():
            self._path.unlink()
        old_umask = os.umask(0o077)
        try:
            listener = await anyio.create_unix_listener(self._path)
        finally:
            os.umask(old_umask)
        os.chmod(self._path, 0o600)
        try:
            async with listener:
                task_status.started()
                await listener.serve(self._handle)
        finally:
            self._path.unlink(missing_ok=True)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            try:
                line = await reader.receive_until(b"\n", _MAX_LINE)
                reply = await self.answer(json.loads(line))
            except (ValueError, anyio.IncompleteRead, anyio.DelimiterNotFound) as exc:
                reply = {"error": f"bad request: {exc}"}
            except anyio.EndOfStream:
                return
            await stream.send(json.dumps(reply).encode() + b"\n")

    async def answer(self, req: Any) -> dict[str, Any]:
        """The reply to one decoded request."""
        if not isinstance(req, dict):
            return {"error": "a request is a JSON object"}
        op = req.get("op")
        if op == "jobs":
            return {
                "jobs": [
                    {"job_id": j.id, "vm": j.spec.vm, "state": j.state.value}
                    for j in self._lr.jobs()
                ]
            }
        if op == "plan_status":
            return {"plans": [run.summary() for run in self._plans()]}
        if op == "plan_cancel":
            return self._plan_cancel(req.get("plan"))
        try:
            if op == "status":
                jobs = [self._lr.job(str(req["job"]))] if req.get("job") else self._lr.jobs()
                return {"jobs": [j.status().to_json() for j in jobs]}
            if op == "cancel":
                job = self._lr.job(str(req.get("job")))
                return {"job_id": job.id, "state": (await job.cancel()).value}
            if op == "stop":
                job = self._lr.job(str(req.get("job")))
                state = await job.stop(power_off=bool(req.get("power_off", False)))
                return {"job_id": job.id, "state": state.value}
            if op == "migrate_now":
                job = self._lr.job(str(req.get("job")))
                await job.migrate_now()
                return {"job_id": job.id, "state": job.state.value}
        except JobStateError as exc:
            return {"error": str(exc)}
        return {"error": f"unknown op {op!r}"}

    def _plans(self) -> list[PlanRun | PlanVerificationRun]:
        return [*self._lr.plans(), *self._lr.verifications()]

    def _plan_cancel(self, wanted: object) -> dict[str, Any]:
        """Cancel the running plan or plan verification named ``wanted`` (its name, run id, or
        ``name-run``; None: the only one running)."""
        running = [r for r in self._plans() if not r.done]
        if wanted is not None:
            w = str(wanted)
            running = [
                r for r in running if w in (r.plan.name, r.run_id, f"{r.plan.name}-{r.run_id}")
            ]
        if not running:
            return {"error": "no running plan" + (f" {wanted!r}" if wanted is not None else "")}
        if len(running) > 1:
            names = ", ".join(f"{r.plan.name}-{r.run_id}" for r in running)
            return {"error": f"several plans are running ({names}): name one"}
        run = running[0]
        run.cancel()
        return {
            "plan": run.plan.name,
            "run_id": run.run_id,
            "kind": run.kind,
            "state": "cancelling",
        }


async def request(path: Path, req: dict[str, Any]) -> dict[str, Any]:
    """Send one request to a running process and return its reply (bound it with fail_after).

    :raises BackendError: no process listens at ``path``, or it answered nonsense.
    """
    try:
        async with await anyio.connect_unix(path) as stream:
            await stream.send(json.dumps(req).encode() + b"\n")
            reader = BufferedByteReceiveStream(stream)
            line = await reader.receive_until(b"\n", _MAX_LINE)
    except (OSError, anyio.EndOfStream, anyio.IncompleteRead) as exc:
        raise BackendError(
            f"no liverecovery process answers at {path}: {exc}", operation="control"
        ) from None
    try:
        reply = json.loads(line)
    except ValueError:
        raise BackendError(f"bad reply from {path}", operation="control") from None
    if not isinstance(reply, dict):
        raise BackendError(f"bad reply from {path}", operation="control")
    return reply
