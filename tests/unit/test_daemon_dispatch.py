"""Every procedure pyvirtd describes is served, or deliberately not (STYLE habit 2).

The procedure tables (pyvirt.rpc.remote_protocol, qemu_protocol, admin_protocol) decode what
a client sends; the daemon's handler tables (pyvirt.daemon.*_procs, gathered by
RemoteDispatcher; AdminDispatcher's for the admin socket) serve it. A CALL described but not
served answers "unknown procedure" (DOMAIN_ABORT_JOB_FLAGS once did, for ``virsh domjobabort
--postcopy``): each such procedure must be listed below with the reason, so adding a
procedure forces a decision.
"""

from __future__ import annotations

from typing import Any

import pytest

from pyvirt.constants import ConnectFlags, CreateFlags
from pyvirt.daemon.admin import AdminDispatcher
from pyvirt.daemon.context import check_flags
from pyvirt.daemon.server import RemoteDispatcher
from pyvirt.errors import InvalidArgError
from pyvirt.rpc.admin_protocol import ADMIN
from pyvirt.rpc.admin_protocol import AdminProc as AP
from pyvirt.rpc.protocol import Program
from pyvirt.rpc.qemu_protocol import QEMU
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.remote_protocol import RemoteProc as RP

_NO_SASL = ("pyvirtd authenticates no one itself: auth_unix_rw, auth_unix_ro and auth_tcp "
            "take only \"none\" (pyvirt.conf.daemon_conf); described so pyvirt's client can "
            "speak to a libvirtd, and so a client's attempt decodes")
#: CALL procedures described but deliberately not served, with why
NOT_SERVED: dict[int, str] = {
    RP.AUTH_SASL_INIT: _NO_SASL,
    RP.AUTH_SASL_START: _NO_SASL,
    RP.AUTH_SASL_STEP: _NO_SASL,
    RP.AUTH_POLKIT: "pyvirtd never offers polkit in AUTH_LIST (auth \"none\" only); pyvirt's "
                    "client calls it on a libvirtd that does",
    RP.CONNECT_SET_IDENTITY: "for libvirt's split daemons (virtproxyd tells virtqemud whose "
                             "call it forwards); pyvirtd is one daemon that sees its clients",
}

_LOGGING = ("pyvirtd's log outputs and filters come from pyvirtd.conf (log_outputs, "
            "log_filters) at start; changing them at run time is not implemented yet")
#: the same for the admin socket's program
ADMIN_NOT_SERVED: dict[int, str] = {
    AP.CONNECT_GET_LOGGING_OUTPUTS: _LOGGING,
    AP.CONNECT_GET_LOGGING_FILTERS: _LOGGING,
    AP.CONNECT_SET_LOGGING_OUTPUTS: _LOGGING,
    AP.CONNECT_SET_LOGGING_FILTERS: _LOGGING,
    AP.SERVER_UPDATE_TLS_FILES: "pyvirtd has no TLS listener yet (listen_tls: not yet)",
    AP.CONNECT_SET_DAEMON_TIMEOUT: "pyvirtd has no idle exit (libvirtd's --timeout) to set",
}


def _dispatcher() -> RemoteDispatcher:
    daemon: Any = None  # building the tables needs no daemon
    return RemoteDispatcher(daemon)


def _calls(program: Program) -> set[int]:
    return {number for number, spec in program.procs.items() if not spec.is_message}


def test_every_remote_call_has_a_handler_or_a_reason() -> None:
    served = set(_dispatcher().handlers)
    missing = {RP(n).name for n in _calls(REMOTE) - served - set(NOT_SERVED)}
    assert not missing, f"procedures without a handler (serve them or list them): {missing}"


def test_the_not_served_list_holds_no_stale_entry() -> None:
    served = set(_dispatcher().handlers)
    assert not set(NOT_SERVED) & served, "listed as not served, yet served"
    assert set(NOT_SERVED) <= _calls(REMOTE), "listed, but not a CALL procedure of REMOTE"
    assert all(len(reason) > 20 for reason in NOT_SERVED.values())


def test_handlers_serve_only_described_procedures() -> None:
    dispatcher = _dispatcher()
    assert set(dispatcher.handlers) <= _calls(REMOTE)
    assert set(dispatcher.qemu_handlers) == _calls(QEMU)


def test_every_admin_call_has_a_handler_or_a_reason() -> None:
    served = set(AdminDispatcher({})._handlers)
    missing = {AP(n).name for n in _calls(ADMIN) - served - set(ADMIN_NOT_SERVED)}
    assert not missing, f"admin procedures without a handler: {missing}"
    assert not set(ADMIN_NOT_SERVED) & served, "listed as not served, yet served"
    assert served | set(ADMIN_NOT_SERVED) == _calls(ADMIN)


def test_abort_job_flags_is_served() -> None:
    assert RP.DOMAIN_ABORT_JOB_FLAGS in _dispatcher().handlers


# -- check_flags -----------------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "allowed"), [
    (4, ConnectFlags.RO | ConnectFlags.NO_ALIASES),  # ~ of all an IntFlag's members is 0
    (64, CreateFlags.START_PAUSED),  # ~ of one member covers only the others
])  # fmt: skip
def test_check_flags_refuses_bits_outside_an_intflag(flags: int, allowed: int) -> None:
    with pytest.raises(InvalidArgError, match=rf"unsupported flags \(0x{flags:x}\) in function f"):
        check_flags(flags, allowed, "f")
    check_flags(int(allowed), allowed, "f")
