"""The fast migration grid's infrastructure: the daemon pair, guests, what each QEMU was told,
the oracles, and the worker of successful migrations (``_migrate``).

Used by test_migration_grid.py (modes x options, failures) and test_migration_grid_storage.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pyvirt
from pyvirt.constants import UNLIMITED_BANDWIDTH_BYTES
from pyvirt.constants import MigrateFlags as F
from tests.functional.daemon_util import (
    DaemonHandle,
    listening_tcp_ports,
    local_address,
    run,
    running_daemon_pair,
)

MIB = 1024 * 1024


#: virsh's options for each way of migrating (--tunnelled: the stream inside the RPC link)
MODES: Mapping[str, tuple[str, ...]] = {
    "normal": (), "p2p": ("--p2p",), "tunnelled": ("--p2p", "--tunnelled")}


SETTLE_S = 5.0  # O5: leftovers must be gone this soon after the client returns


# -- the two daemons -------------------------------------------------------------------------
@dataclass
class Pair:
    src: DaemonHandle
    dst: DaemonHandle
    tmp: Path
    #: a directory both daemons list in shared_filesystems
    shared: Path
    #: processes a test started itself (direct-mode destinations), killed afterwards
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        """Where the destination is reached (the pair's migration_host)."""
        return local_address() or socket.gethostname()


def virsh(daemon: DaemonHandle | str, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    uri = daemon if isinstance(daemon, str) else daemon.uri
    proc = run(["virsh", "-c", uri, *args], timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def domstate(daemon: DaemonHandle, name: str) -> str:
    rc, out, _ = virsh(daemon, "domstate", "--reason", name)
    return out.strip() if rc == 0 else "absent"


def persistent(daemon: DaemonHandle, name: str) -> bool:
    return "Persistent:     yes" in virsh(daemon, "dominfo", name)[1]


def fake_qemus(daemon: DaemonHandle, name: str | None = None) -> list[int]:
    """Live fake QEMUs started by this daemon (for the guest ``name``)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        mine = b"fake_qemu" in cmd and str(daemon.root).encode() + b"/" in cmd
        if mine and state != "Z" and (name is None or f"guest={name},".encode() in cmd):
            found.append(int(entry.name))
    return found


def eventually(check: Callable[[], bool], what: str, timeout: float = SETTLE_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- guests ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Guest:
    name: str
    uuid: str


def guest_xml(name: str, uuid: str, memory_mib: int = 64, description: str = "",
              disk: Path | None = None) -> str:
    disk_xml = "" if disk is None else (
        f"<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>")
    return (f"<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>"
            f"<description>{description}</description>"
            f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"<devices>{disk_xml}<memballoon model='none'/></devices></domain>")


_counter = iter(range(1, 10**6))


def disk_image(pair: Pair, where: str | None) -> Path | None:
    """A disk image outside shared storage ("local") or on it ("shared")."""
    if where is None:
        return None
    image = (pair.shared if where == "shared" else pair.tmp) / f"disk{next(_counter)}.img"
    image.write_bytes(b"\0" * 4096)
    return image


def new_guest(pair: Pair, *, defined: bool = False, running: bool = True,
              faults: Mapping[str, Any] | None = None, disk: Path | None = None) -> Guest:
    """A guest on the source: created (transient) or defined (+ started); ``faults`` for
    its fake QEMU."""
    name, uuid = f"g{next(_counter)}", str(uuidlib.uuid4())
    path = pair.tmp / f"{name}.xml"
    path.write_text(guest_xml(name, uuid, disk=disk))
    pair.src.set_faults(dict(faults or {}))
    try:
        if defined:
            assert virsh(pair.src, "define", str(path))[0] == 0
            if running:
                assert virsh(pair.src, "start", name)[0] == 0
        else:
            assert virsh(pair.src, "create", str(path))[0] == 0
    finally:
        pair.src.set_faults({})
    return Guest(name, uuid)


# -- what each fake QEMU was told ----------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """The capabilities a QEMU ended with on, and every migration parameter it was given."""

    caps: frozenset[str]
    params: Mapping[str, object]


SRC_CAPS = frozenset({"events", "return-path"})


#: late-block-activate: libvirt's always-on destination capability
DST_CAPS = frozenset({"events", "return-path", "late-block-activate"})


#: no --bandwidth: libvirt programs "unlimited"
SRC_PARAMS: Mapping[str, object] = {"max-bandwidth": UNLIMITED_BANDWIDTH_BYTES}


def src_setup(caps: tuple[str, ...] = (), params: Mapping[str, object] | None = None,
              **more: object) -> Setup:
    """The source's setup: the base plus ``caps`` and parameters (``_`` for ``-``)."""
    return Setup(SRC_CAPS | set(caps), {**SRC_PARAMS, **_qemu_names({**(params or {}), **more})})


def dst_setup(caps: tuple[str, ...] = (), params: Mapping[str, object] | None = None,
              **more: object) -> Setup:
    return Setup(DST_CAPS | set(caps), _qemu_names({**(params or {}), **more}))


def _qemu_names(params: Mapping[str, object]) -> dict[str, object]:
    return {key.replace("_", "-"): value for key, value in params.items()}


def observed_setup(daemon: DaemonHandle, mark: int, name: str) -> Setup:
    caps: dict[str, bool] = {}
    params: dict[str, object] = {}
    for entry in daemon.journal_entries(mark, name):
        if entry["cmd"] == "migrate-set-capabilities":
            caps.update((c["capability"], c["state"]) for c in entry["args"]["capabilities"])
        elif entry["cmd"] == "migrate-set-parameters":
            params.update(entry["args"])
    return Setup(frozenset(c for c, on in caps.items() if on), params)


def commands(daemon: DaemonHandle, mark: int, name: str) -> list[str]:
    return [entry["cmd"] for entry in daemon.journal_entries(mark, name)]


# -- O5: nothing left behind -----------------------------------------------------------------
def assert_no_listening_ports(pair: Pair) -> None:
    ours = set(pair.src.migration_ports or ()) | set(pair.dst.migration_ports or ())
    eventually(lambda: not ours & listening_tcp_ports(),
               f"migration ports still listening: {sorted(ours & listening_tcp_ports())}")


def assert_no_job(daemon: DaemonHandle, name: str) -> None:
    rc, out, err = virsh(daemon, "domjobinfo", name)
    assert rc == 0 and "Job type:         None" in out, out + err


def assert_destination_clean(pair: Pair, name: str) -> None:
    eventually(lambda: domstate(pair.dst, name) == "absent",
               f"destination still holds {name}: {domstate(pair.dst, name)}")
    eventually(lambda: not fake_qemus(pair.dst, name), f"a QEMU for {name} on the destination")
    assert_no_listening_ports(pair)


def assert_source_runs(pair: Pair, guest: Guest) -> None:
    eventually(lambda: domstate(pair.src, guest.name).startswith("running"),
               f"source guest not running: {domstate(pair.src, guest.name)}")
    assert len(fake_qemus(pair.src, guest.name)) == 1
    assert_no_job(pair.src, guest.name)


# -- worker 1: migrations that succeed -----------------------------------------------------
@dataclass(frozen=True)
class Case:
    options: tuple[str, ...] = ("--live",)
    #: a key of MODES (stock virsh), or api | api-p2p (pyvirt client, with ``api``)
    mode: str = "normal"
    src: Setup = field(default_factory=src_setup)
    dst: Setup = field(default_factory=dst_setup)
    defined: bool = False  # the source guest is persistent
    running: bool = True  # False: defined only (offline migration)
    suspended: bool = False  # virsh suspend before migrating
    dst_state: str = "running (migrated)"
    dst_persistent: bool = False
    src_kept: bool = False  # the source keeps its (shut off) definition
    dname: str | None = None
    faults: Mapping[str, Any] = field(default_factory=dict)  # the source QEMU's
    api: tuple[Mapping[str, Any], int] = ({}, 0)  # (params, flags) for the pyvirt client
    disk: str | None = None  # "local" or "shared": a disk image there (cache=none)


@dataclass(frozen=True)
class Outcome:
    guest: Guest
    name_on_dst: str
    src_mark: int
    dst_mark: int


def _migrate(pair: Pair, case: Case, xml_changes: Mapping[str, Any] | None = None) -> Outcome:
    # Checks: the client reports success; the destination holds the guest running
    # (migrated) or paused (user) with --suspend or a paused source, and persistent exactly
    # with --persistent; the source's QEMU is gone and its domain shut off (migrated) when it
    # stays defined, else gone (transient, --undefinesource); each side's fake QEMU ended
    # with exactly the migration capabilities and parameters the options imply (journal);
    # no job on either side and no migration port listening (O5).
    guest = new_guest(pair, defined=case.defined, running=case.running, faults=case.faults,
                      disk=disk_image(pair, case.disk))
    if case.suspended:
        assert virsh(pair.src, "suspend", guest.name)[0] == 0
    context = {"xml": _write_xml(pair, guest, "given", **xml_changes)} if xml_changes else {}
    marks = pair.src.journal_mark(), pair.dst.journal_mark()
    _run_client(pair, case, guest, context)
    on_dst = case.dname or guest.name
    assert domstate(pair.dst, on_dst) == case.dst_state
    assert persistent(pair.dst, on_dst) == case.dst_persistent
    expected_src = "shut off (migrated)" if case.running else "shut off (unknown)"
    assert domstate(pair.src, guest.name) == (expected_src if case.src_kept else "absent")
    eventually(lambda: not fake_qemus(pair.src, guest.name), "source QEMU still alive")
    if case.src_kept:
        assert_no_job(pair.src, guest.name)
    if case.running:
        assert observed_setup(pair.src, marks[0], guest.name) == case.src
        assert observed_setup(pair.dst, marks[1], on_dst) == case.dst
        assert_no_job(pair.dst, on_dst)
    else:  # offline: no QEMU anywhere
        assert not commands(pair.src, marks[0], guest.name)
        assert not fake_qemus(pair.dst, on_dst)
    assert_no_listening_ports(pair)
    return Outcome(guest, on_dst, *marks)


def _run_client(pair: Pair, case: Case, guest: Guest, context: Mapping[str, str]) -> None:
    if case.mode in ("api", "api-p2p"):
        _pyvirt_client(pair, case, guest)
        return
    options = [option.format(**context) for option in case.options]
    rc, _, err = virsh(pair.src, "migrate", *options, *MODES[case.mode], guest.name,
                       pair.dst.uri)
    assert rc == 0, err


def _pyvirt_client(pair: Pair, case: Case, guest: Guest) -> None:
    params, flags = case.api
    src = pyvirt.open(pair.src.uri)
    try:
        dom = src.lookupByName(guest.name)
        if case.mode == "api-p2p":
            dom.migrateToURI3(pair.dst.uri, dict(params), flags | F.PEER2PEER)
            return
        dconn = pyvirt.open(pair.dst.uri)
        try:
            assert dom.migrate3(dconn, dict(params), flags).name() == (case.dname or guest.name)
        finally:
            dconn.close()
    finally:
        src.close()


def _write_xml(pair: Pair, guest: Guest, tag: str, **changes: Any) -> str:
    path = pair.tmp / f"{guest.name}-{tag}.xml"
    path.write_text(guest_xml(guest.name, guest.uuid, **changes))
    return str(path)


@dataclass
class Background:
    """``virsh migrate`` running in a thread; ``result`` once it ended."""

    thread: threading.Thread
    result: list[tuple[int, str, str]]

    def wait(self) -> tuple[int, str, str]:
        self.thread.join(60)
        assert self.result, "virsh migrate did not return"
        return self.result[0]


@contextlib.contextmanager
def daemon_pair(tmp_path_factory: pytest.TempPathFactory, label: str) -> Iterator[Pair]:
    """Two pyvirtd with fake QEMUs for a test module, sharing one "shared" directory."""
    shared = tmp_path_factory.mktemp("shared")
    with running_daemon_pair(ports=32, qemu_conf={"shared_filesystems": [str(shared)]}) \
            as (src, dst):
        yield Pair(src, dst, tmp_path_factory.mktemp(label), shared)


def emptied_after_test(daemons: Pair) -> Iterator[Pair]:
    """Body of the ``pair`` fixture: the module's daemons, emptied after the test (domains,
    faults, extra processes, fake QEMUs). What the daemons logged meanwhile is printed
    (pytest shows it when the test failed)."""
    logs = [(daemon, len(daemon.log())) for daemon in (daemons.src, daemons.dst)]
    yield daemons
    for daemon, start in logs:
        print(f"--- {daemon.root} log ---\n{daemon.log()[start:][-6000:]}")
    for proc in daemons.extra:
        proc.kill()
        proc.wait(5)
    daemons.extra.clear()
    for daemon in (daemons.src, daemons.dst):
        assert daemon.proc.poll() is None, "pyvirtd died"  # O7
        daemon.set_faults({})
        names = virsh(daemon, "list", "--all", "--name")[1].split()
        for name in names:
            virsh(daemon, "destroy", name)
            virsh(daemon, "undefine", name)
        leftovers = fake_qemus(daemon)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"fake QEMUs outlived their domains: {leftovers}"
