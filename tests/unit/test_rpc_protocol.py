"""The procedure tables: well-formed, complete for the reference subset, libvirt's metadata."""

from __future__ import annotations

import pytest

from pyvirt.rpc.keepalive_protocol import KEEPALIVE, KeepaliveProc
from pyvirt.rpc.packet import KEEPALIVE_PROGRAM, REMOTE_PROGRAM
from pyvirt.rpc.protocol import ProcKind, ProcSpec, Program, StreamKind
from pyvirt.rpc.remote_protocol import REMOTE, RemoteProc
from pyvirt.rpc.remote_types import NonnullDomain, TypedParam
from pyvirt.rpc.types import XDRType

# reference §10 and §15, plus REBOOT (27) and SET_AUTOSTART (29: the brief's "40" is
# NETWORK_CREATE_XML in libvirt's numbering)
REQUIRED = {
    "connection": [1, 2, 3, 4, 5, 6, 7, 59, 60, 66, 110, 122, 149, 157, 360, 361],
    "listing": [273, 22, 23, 24, 51, 37, 25, 21],
    "info": [14, 15, 16, 19, 121, 150, 151, 183, 212, 229, 426, 187],
    "lifecycle": [9, 10, 11, 350, 12, 234, 28, 33, 258, 34, 35, 231, 196, 27, 29],
    "jobs": [163, 164, 442, 166, 387, 207, 242, 298, 299, 300, 364],
    "migration": [216, 302, 303, 304, 305, 306, 307],
    "events": [316, 317, 167, 168],
    "messages": [318, 359, 362, 363],
}

MESSAGES = {107, 318, 359, 362, 363}
# libvirt's @priority: high, for the procedures in the table
PRIORITY = {
    1, 2, 3, 4, 5, 6, 59, 60, 66, 67, 68, 69, 70, 110, 122, 149, 157, 360, 361,
    273, 22, 23, 24, 51, 37, 25, 21,
    15, 19, 121, 150, 151, 187, 212, 229,
    11, 350, 12, 234, 29, 35, 231,
    316, 317, 167, 168,
}  # fmt: skip
# changes state (or libvirt's API refuses it on a read-only connection)
NOT_READONLY = {
    9, 10, 11, 350, 12, 234, 27, 28, 29, 33, 258, 34, 35, 231, 196,
    164, 442, 166, 387, 207, 242, 299, 300, 364,
    216, 302, 303, 304, 305, 306, 307, 419,
}  # fmt: skip


@pytest.mark.parametrize("program", [REMOTE, KEEPALIVE])
def test_entries_well_formed(program: Program) -> None:
    names = set()
    for number, spec in program.procs.items():
        assert isinstance(spec, ProcSpec)
        assert spec.number == number > 0
        assert spec.name and spec.name.isupper() and spec.name not in names
        names.add(spec.name)
        assert isinstance(spec.args_type, XDRType)
        assert isinstance(spec.ret_type, XDRType)
        assert spec.api, spec.name
        if spec.is_message:
            assert spec.ret_type.encode(None) == b""


def test_duplicate_numbers_refused() -> None:
    with pytest.raises(ValueError, match="used twice"):
        Program.build("x", 1, [ProcSpec(1, "A", api="a"), ProcSpec(1, "B", api="b")])


def test_remote_program_identity() -> None:
    assert REMOTE.number == REMOTE_PROGRAM == 0x20008086
    assert REMOTE.version == 1
    assert {p.value: p.name for p in RemoteProc} == {n: s.name for n, s in REMOTE.procs.items()}


@pytest.mark.parametrize("group", sorted(REQUIRED))
def test_reference_subset_present(group: str) -> None:
    missing = [n for n in REQUIRED[group] if n not in REMOTE.procs]
    assert not missing


def test_message_procedures_marked() -> None:
    assert {n for n, s in REMOTE.procs.items() if s.kind is ProcKind.MESSAGE} == MESSAGES


def test_priority_matches_libvirt() -> None:
    assert {n for n, s in REMOTE.procs.items() if s.priority} == PRIORITY


def test_readonly_classification() -> None:
    writable = {n for n, s in REMOTE.procs.items() if not s.readonly}
    assert writable == NOT_READONLY
    # getters, lookups, lists, open/close, auth, supports_feature, event registration
    for n in (1, 2, 60, 66, 273, 23, 212, 16, 163, 298, 316, 317):
        assert REMOTE.procs[n].readonly


def test_auth_procedures_need_no_auth() -> None:
    no_auth = {n for n, s in REMOTE.procs.items() if not s.needs_auth}
    assert no_auth == {66, 67, 68, 69, 70}


def test_tunnel_prepare_opens_write_stream() -> None:
    streams = {n: s.stream for n, s in REMOTE.procs.items() if s.stream is not None}
    assert streams == {304: StreamKind.WRITE}


def test_keepalive_program() -> None:
    assert KEEPALIVE.number == KEEPALIVE_PROGRAM
    assert set(KEEPALIVE.procs) == {KeepaliveProc.PING, KeepaliveProc.PONG}
    assert all(s.is_message for s in KEEPALIVE.procs.values())


UUID = bytes(range(16))
DOM = NonnullDomain("web01", UUID, 3)


@pytest.mark.parametrize(
    ("proc", "args", "size"),
    [
        (RemoteProc.CONNECT_OPEN, {"name": "qemu:///system", "flags": 0}, 28),
        (RemoteProc.CONNECT_LIST_ALL_DOMAINS, {"need_results": 1, "flags": 3}, 8),
        (RemoteProc.DOMAIN_GET_STATE, {"dom": DOM, "flags": 0}, 4 + 8 + 16 + 4 + 4),
        (RemoteProc.DOMAIN_SET_AUTOSTART, {"dom": DOM, "autostart": 1}, 36),
        (RemoteProc.DOMAIN_REBOOT, {"dom": DOM, "flags": 0}, 36),
    ],
)
def test_args_encode(proc: RemoteProc, args: object, size: int) -> None:
    spec = REMOTE.procs[proc]
    data = spec.encode_args(args)
    assert len(data) == size
    assert spec.decode_args(data) == args


def test_migration_round_trip() -> None:
    spec = REMOTE.procs[RemoteProc.DOMAIN_MIGRATE_PERFORM3_PARAMS]
    args = {
        "dom": DOM,
        "dconnuri": None,
        "params": [TypedParam.of_string("migrate_uri", "tcp://10.77.0.2:49152")],
        "cookie_in": b"<qemu-migration/>\0",
        "flags": 0x101,
    }
    assert spec.decode_args(spec.encode_args(args)) == args
    finish = REMOTE.procs[RemoteProc.DOMAIN_MIGRATE_FINISH3_PARAMS]
    ret = {"dom": DOM, "cookie_out": b""}
    assert finish.decode_ret(finish.encode_ret(ret)) == ret


def test_job_info_reply_is_92_bytes() -> None:
    spec = REMOTE.procs[RemoteProc.DOMAIN_GET_JOB_INFO]
    fields = [name for name, _ in spec.ret_type.fields]  # type: ignore[attr-defined]
    ret = dict.fromkeys(fields, 0)
    assert len(spec.encode_ret(ret)) == 92


def test_event_message_layout() -> None:
    spec = REMOTE.procs[RemoteProc.DOMAIN_EVENT_CALLBACK_LIFECYCLE]
    body = {"callback_id": 1, "msg": {"dom": DOM, "event": 2, "detail": 1}}
    assert spec.decode_args(spec.encode_args(body)) == body
