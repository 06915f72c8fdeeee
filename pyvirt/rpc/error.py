"""``remote_error`` ↔ :class:`~pyvirt.errors.VirtError`: the one place that maps them.

Server side, :func:`error_to_wire` turns any exception raised while serving a call into the
``remote_error`` payload of a REPLY/ERROR.  Client side, :func:`error_from_wire` rebuilds a
:class:`VirtError` with libvirt's numbers, including the client-side rewrite of
"unknown procedure" (code RPC) into NO_SUPPORT that makes unimplemented procedures degrade
gracefully (``reference/libvirt-wire.md`` §4).
"""

from __future__ import annotations

import dataclasses
import logging

from pyvirt.errors import ErrorCode, ErrorDomain, ErrorLevel, RPCError, VirtError
from pyvirt.rpc.remote_types import RemoteError, RemoteErrorXDR
from pyvirt.rpc.xdr import XDRError

log = logging.getLogger(__name__)

UNKNOWN_PROCEDURE_PREFIX = "unknown procedure"


def remote_error_from_exception(exc: BaseException) -> RemoteError:
    """The ``remote_error`` a server sends for ``exc``.

    Non-VirtError exceptions are internal faults; their text is not leaked to the peer.
    """
    if isinstance(exc, VirtError):
        return RemoteError(
            code=int(exc.code), domain=int(exc.domain), message=exc.message, level=int(exc.level)
        )
    return RemoteError(
        code=int(ErrorCode.INTERNAL_ERROR),
        domain=int(ErrorDomain.RPC),
        message="internal error: unexpected failure while handling the call",
        level=int(ErrorLevel.ERROR),
    )


def error_to_wire(exc: BaseException) -> bytes:
    """The REPLY/ERROR payload for ``exc``; never raises (a message that cannot be encoded,
    e.g. with lone surrogates from an undecodable name, becomes a generic one)."""
    err = remote_error_from_exception(exc)
    try:
        return bytes(RemoteErrorXDR.encode(err))
    except (XDRError, UnicodeError, ValueError) as fault:
        log.debug("cannot encode the error %r: %s", err.message, fault)
        plain = dataclasses.replace(
            err, message="internal error: the error message could not be encoded")
        return bytes(RemoteErrorXDR.encode(plain))


def exception_from_remote_error(err: RemoteError) -> VirtError:
    message = err.message if err.message is not None else "unknown error"
    code = err.code
    # libvirt's client does the same rewrite (virnetclientprogram.c): a server that lacks a
    # procedure is "not supported", which callers such as virsh treat as a soft failure
    if code == ErrorCode.RPC and message.startswith(UNKNOWN_PROCEDURE_PREFIX):
        code = ErrorCode.NO_SUPPORT
    return VirtError(message, code=code, domain=err.domain, level=err.level)


def error_from_wire(payload: bytes | memoryview) -> VirtError:
    """Decode a REPLY/ERROR payload; a payload that does not decode is itself an RPC error."""
    try:
        err: RemoteError = RemoteErrorXDR.decode(payload)
    except XDRError as exc:
        log.debug("undecodable remote_error payload: %s", exc)
        return RPCError("Unable to decode message payload")
    return exception_from_remote_error(err)


def unknown_procedure(proc: int) -> RPCError:
    return RPCError(f"{UNKNOWN_PROCEDURE_PREFIX}: {proc}")


def unknown_program(prog: int, vers: int) -> RPCError:
    # libvirtd's wording (virNetServerProgramUnknownError)
    return RPCError(f"Cannot find program {prog} version {vers}")
