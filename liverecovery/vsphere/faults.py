"""Turn what pyVmomi raises into liverecovery's errors, keeping the vSphere fault's type and message.

vSphere reports failures as ``vmodl.MethodFault`` subclasses (``InvalidPowerState``,
``DuplicateName``...) whose useful detail often sits in fault-specific properties rather than in
``msg``; the translated message carries both, so a log line says what vSphere objected to.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Callable, Sequence
from typing import cast
from xml.parsers.expat import ExpatError

from pyVmomi import vmodl

from liverecovery.errors import BackendError, VSphereError

__all__ = ["describe_fault", "fault_error", "fault_name", "translate"]

# Properties every MethodFault has; the rest are the fault's own details.
_BASE_PROPERTIES = frozenset(
    {"dynamicType", "dynamicProperty", "msg", "faultCause", "faultMessage"}
)


def fault_name(fault: vmodl.MethodFault) -> str:
    """The vSphere type name of a fault, e.g. ``InvalidPowerState`` (no ``vim.fault.`` prefix)."""
    name = getattr(type(fault), "_wsdlName", None)
    return name if isinstance(name, str) and name else type(fault).__name__.rsplit(".", 1)[-1]


def _detail_value(value: object) -> str | None:
    moid = getattr(value, "_moId", None)
    if isinstance(moid, str):
        return moid
    if isinstance(value, str | int | float | bool) and value != "":
        return str(value)
    return None


def describe_fault(fault: vmodl.MethodFault) -> str:
    """``msg`` plus the fault's own simple properties (``requestedState=poweredOn``...)."""
    parts: list[str] = []
    msg = getattr(fault, "msg", None)
    # "*types.X" is no message: the govmomi simulator's placeholder (its Go type name).
    if isinstance(msg, str) and msg and not msg.startswith("*types."):
        parts.append(msg)
    for message in getattr(fault, "faultMessage", None) or ():
        text = getattr(message, "message", None)
        if isinstance(text, str) and text and text not in parts:
            parts.append(text)
    details = []
    properties = cast(Callable[[], Sequence[object]], fault._GetPropertyList)()
    for prop in properties:
        name = getattr(prop, "name", None)
        if not isinstance(name, str) or name in _BASE_PROPERTIES:
            continue
        value = _detail_value(getattr(fault, name, None))
        if value is not None:
            details.append(f"{name}={value}")
    if details:
        parts.append(", ".join(details))
    cause = getattr(fault, "faultCause", None)
    if isinstance(cause, vmodl.MethodFault):
        parts.append(f"caused by {fault_name(cause)}: {describe_fault(cause)}")
    return "; ".join(parts) if parts else "no detail given"


def fault_error(
    fault: vmodl.MethodFault, operation: str, where: str, subject: str = ""
) -> VSphereError:
    """``VSphereError`` for a vSphere fault, with its type name and details in the message."""
    what = f"{operation} of {subject}" if subject else operation
    name = fault_name(fault)
    return VSphereError(
        f"{what} on {where} failed: {name}: {describe_fault(fault)}",
        operation=operation,
        fault=name,
    )


def translate(
    exc: BaseException, operation: str, where: str, subject: str = ""
) -> BackendError | None:
    """The library error for ``exc`` raised by ``operation`` (on ``subject``) against ``where``.

    None means ``exc`` is not a failure of the outside system (a programming error, a
    cancellation) and must propagate unchanged.
    """
    what = f"{operation} of {subject}" if subject else operation
    if isinstance(exc, vmodl.MethodFault):
        return fault_error(exc, operation, where, subject)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BackendError(
            f"{what}: the TLS certificate of {where} is not trusted "
            f"({exc.verify_message or exc.reason}); give its CA certificate "
            "(--ca-file PEM on the command line, ca_file= in Python), or skip verification "
            "(--insecure, insecure=True)",
            operation=operation,
        )
    if isinstance(exc, ssl.SSLError):
        return BackendError(f"{what}: TLS error with {where}: {exc}", operation=operation)
    if isinstance(exc, TimeoutError):
        return BackendError(f"{what}: {where} did not answer in time", operation=operation)
    if isinstance(exc, OSError | http.client.HTTPException):
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
        return BackendError(f"{what}: cannot talk to {where}: {detail}", operation=operation)
    if isinstance(exc, ExpatError):
        return BackendError(
            f"{what}: {where} sent a malformed SOAP response: {exc}", operation=operation
        )
    return None
