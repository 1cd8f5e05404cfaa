"""The name a verification's copy is registered under, within vSphere's 80-character limit.

vSphere refuses a VM name longer than 80 characters, counted after it escapes ``%``, ``/`` and
``\\`` (``%25``, ``%2f``, ``%5c``: "fewer if the characters %, \\ or / are used"). We count
UTF-16 code units of that escaped form, the stricter of the ways a character can be counted,
so a name we accept is never refused by vCenter or by the host.

A copy is ``<vm>-verify-<job id>``. A plan's job ids hold the plan's name, its run id and the
VM's name again (``<plan>-<run>.<vm>``), so a VM name of 30 characters already makes that too
long. Then the job id part is *shortened deterministically*: replaced by the first hex digits
of its SHA-256 (as many as fit, 8 to 16), so the same job always gets the same name (a resumed
or re-run verification finds its copy) and two jobs practically never share one. The VM's name
is never cut: the copy's name starts with the VM's full name and ``-verify-`` so operators and
scripts find a VM's copies by that prefix, and a cut name could be read as another VM's copy.
A VM whose own name leaves no room for ``-verify-`` and 8 hex digits (more than 64 characters
as counted above) is therefore *refused* before anything starts, naming the VM and the limit.
Pure.
"""

from __future__ import annotations

import hashlib

from liverecovery.errors import VerificationRefusedError
from liverecovery.spec import MAX_VM_NAME, vsphere_name_length

__all__ = [
    "MAX_VM_NAME",
    "MIN_ID_DIGITS",
    "verification_name",
    "verification_name_problem",
    "vsphere_name_length",
]

MARKER = "-verify-"
MIN_ID_DIGITS = 8
"""The fewest hex digits of the job id's hash a shortened name keeps (32 bits)."""
_MAX_ID_DIGITS = 16


def verification_name_problem(vm: str) -> str | None:
    """Why no verification copy of ``vm`` can be named within the limit (None: one can)."""
    longest = MAX_VM_NAME - len(MARKER) - MIN_ID_DIGITS
    length = vsphere_name_length(vm)
    if length <= longest:
        return None
    return (
        f"VM {vm!r}: its verification copy cannot be named within vSphere's {MAX_VM_NAME}-"
        f"character limit for VM names: the name counts {length} characters (%, / and \\ "
        f"count 3), and '{MARKER}' with an id of {MIN_ID_DIGITS} needs it at most {longest}"
    )


def verification_name(vm: str, job_id: str) -> str:
    """The name the verification's copy of ``vm`` is registered under: ``<vm>-verify-<job
    id>``, or, when that is over the limit, ``<vm>-verify-<8 to 16 hex digits of the job id's
    SHA-256>``; the same for the same arguments.

    :raises VerificationRefusedError: ``vm``'s own name leaves no room (see the module).
    """
    full = f"{vm}{MARKER}{job_id}"
    if vsphere_name_length(full) <= MAX_VM_NAME:
        return full
    if (problem := verification_name_problem(vm)) is not None:
        raise VerificationRefusedError(f"verification refused: {problem}")
    room = MAX_VM_NAME - vsphere_name_length(vm) - len(MARKER)
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{vm}{MARKER}{digest[: min(room, _MAX_ID_DIGITS)]}"
