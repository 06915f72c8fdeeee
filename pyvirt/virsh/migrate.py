"""``migrate``: options → a :class:`MigrateRequest`, and running it the way virsh 9.0 does.

Parsed once, at the edge, the way virsh 9.0 does it, including the order of its checks
(the first failing check is the one reported, so the order is part of the behaviour):

1. option combinations (``--live``/``--offline``, ``--timeout-*``, options that need
   another option) — before the domain is even looked up;
2. ``--timeout`` and its action;
3. the typed parameters, in virsh's order (each option's value is checked as it is read);
4. the flags (``--copy-storage-synchronous-writes`` needs a storage copy);
5. the checks libvirt's client library makes before any RPC (virDomainMigrate3 /
   virDomainMigrateToURI3): read-only connection, mutually exclusive flags, tunnelled
   without peer-to-peer. The stock virsh makes them client-side too.

Checks that need the daemon (driver features, offline without --persistent, ...) are the
daemon's business and are not repeated here. The flag rules of steps 1, 4 and 5 are data in
:mod:`pyvirt.migrate_flags`, shared with the client library and the daemon.

Running (cmdMigrate / doMigrate): steps 1-2 on the main thread, then the
MIGRATION_ITERATION registration (``--postcopy-after-precopy``), then the destination
connection (normal mode only: ``--p2p`` and ``--direct`` talk to the source alone); the
worker thread looks the domain up again, does steps 3-5 and calls ``migrate3`` or
``migrateToURI3`` while the main thread watches (:mod:`pyvirt.virsh.progress`). Success
prints nothing (the shell's blank line follows); failure is ``error: <message>``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyvirt.constants import EventID, MigrateFlags
from pyvirt.errors import VirtError
from pyvirt.migrate_flags import (
    LIBRARY_CHECKS,
    LIVE_OFFLINE_EXCLUSIVE,
    SYNC_WRITES_NEED_STORAGE_COPY,
    VIRSH_OPTIONS,
    FlagRule,
    Layer,
    first_broken,
)
from pyvirt.virsh.commands_domain import exclusive, optional_method, read_xml_file, require
from pyvirt.virsh.options import CommandError, ParsedCommand
from pyvirt.virsh.progress import JobWatcher

if TYPE_CHECKING:
    from pyvirt.virsh.api import Connection, Domain
    from pyvirt.virsh.shell import Shell

log = logging.getLogger(__name__)


class TimeoutAction(enum.IntEnum):
    """What ``--timeout`` does when it expires (virsh's virshMigrateTimeoutAction)."""

    DEFAULT = 0  # suspend
    SUSPEND = 1
    POSTCOPY = 2


@dataclass(frozen=True)
class MigrateParam:
    """One typed parameter: libvirt's field name, its virTypedParameterType, its value."""

    name: str
    type: str  # "STRING" | "INT" | "ULLONG"
    value: str | int


@dataclass(frozen=True)
class MigrateRequest:
    domain: str  # as the user typed it
    desturi: str
    flags: MigrateFlags
    params: tuple[MigrateParam, ...]
    direct: bool  # --direct: the hypervisor migrates by itself (no pyvirtd on the peer)
    verbose: bool
    timeout: int  # seconds; 0: none
    timeout_action: TimeoutAction
    postcopy_after_precopy: bool

    @property
    def p2p(self) -> bool:
        return MigrateFlags.PEER2PEER in self.flags

    @property
    def tunnelled(self) -> bool:
        return MigrateFlags.TUNNELLED in self.flags

    @property
    def api(self) -> str:
        """The client call virsh makes: the source drives p2p and direct migrations."""
        return "migrateToURI3" if self.p2p or self.direct else "migrate3"

    def params_dict(self) -> dict[str, str | int | list[str]]:
        """The parameters as libvirt-python takes them (repeated names become a list)."""
        out: dict[str, str | int | list[str]] = {}
        for param in self.params:
            if param.name in ("migrate_disks", "compression"):
                values = out.setdefault(param.name, [])
                assert isinstance(values, list)
                values.append(str(param.value))
            else:
                out[param.name] = param.value
        return out


# -- 1 and 2: combinations and the timeout -----------------------------------------------------
#: flag rules virsh checks on its options, before the domain lookup (pyvirt.migrate_flags)
OPTION_RULES: tuple[FlagRule, ...] = (LIVE_OFFLINE_EXCLUSIVE,)
#: flag rules virsh checks once it has built the flags
FLAG_RULES: tuple[FlagRule, ...] = (SYNC_WRITES_NEED_STORAGE_COPY,)


def check_combinations(cmd: ParsedCommand) -> None:
    _refuse_broken(_flags_given(cmd), OPTION_RULES, Layer.VIRSH)
    exclusive(cmd, ("timeout-suspend", "timeout-postcopy"))
    require(cmd, ("postcopy-after-precopy", "postcopy"), ("timeout-postcopy", "postcopy"),
            ("persistent-xml", "persistent"), ("tls-destination", "tls"))  # fmt: skip


def timeout_of(cmd: ParsedCommand) -> tuple[int, TimeoutAction]:
    action = TimeoutAction.DEFAULT
    if cmd.flag("timeout-suspend"):
        action = TimeoutAction.SUSPEND
    if cmd.flag("timeout-postcopy"):
        action = TimeoutAction.POSTCOPY
    timeout = cmd.number("timeout", "uint") or 0  # 0 means no timeout
    if timeout > 0:
        if not cmd.flag("live"):
            raise CommandError("migrate: Unexpected timeout for offline migration")
    elif action != TimeoutAction.DEFAULT:
        raise CommandError("migrate: Unexpected --timeout-* option without --timeout")
    return timeout, action


# -- 3: typed parameters -----------------------------------------------------------------------
def _string(cmd: ParsedCommand, option: str, name: str) -> list[MigrateParam]:
    value = cmd.string(option)
    return [] if value is None else [MigrateParam(name, "STRING", value)]


def _int(cmd: ParsedCommand, option: str, name: str) -> list[MigrateParam]:
    value = cmd.number(option, "int")
    return [] if value is None else [MigrateParam(name, "INT", value)]


def _nonzero_int(cmd: ParsedCommand, option: str, name: str) -> list[MigrateParam]:
    """virsh passes ``--disks-port 0`` as no port at all."""
    value = cmd.number(option, "int")
    return [MigrateParam(name, "INT", value)] if value else []


def _ullong(cmd: ParsedCommand, option: str, name: str) -> list[MigrateParam]:
    value = cmd.number(option, "ull")
    return [] if value is None else [MigrateParam(name, "ULLONG", value)]


def _list(cmd: ParsedCommand, option: str, name: str) -> list[MigrateParam]:
    """A comma-separated list becomes the parameter repeated (g_strsplit: no escapes)."""
    value = cmd.string(option)
    if value is None:
        return []
    return [MigrateParam(name, "STRING", item) for item in value.split(",")]


def _file(cmd: ParsedCommand, option: str, name: str) -> list[MigrateParam]:
    """An XML file's content; virsh names the file, then gives the reason."""
    path = cmd.string(option)
    if path is None:
        return []
    try:
        return [MigrateParam(name, "STRING", read_xml_file(path))]
    except CommandError as exc:
        raise CommandError(f"cannot read file '{path}'",
                           cause=VirtError(" ".join(exc.messages))) from None  # fmt: skip


_Reader = Callable[[ParsedCommand, str, str], list[MigrateParam]]

#: (option, parameter, reader), in the order virsh reads them
PARAMETERS: tuple[tuple[str, str, _Reader], ...] = (
    ("migrateuri", "migrate_uri", _string),
    ("graphicsuri", "graphics_uri", _string),
    ("listen-address", "listen_address", _string),
    ("disks-port", "disks_port", _nonzero_int),
    ("disks-uri", "disks_uri", _string),
    ("dname", "destination_name", _string),
    ("migrate-disks", "migrate_disks", _list),
    ("comp-methods", "compression", _list),
    ("comp-mt-level", "compression.mt.level", _int),
    ("comp-mt-threads", "compression.mt.threads", _int),
    ("comp-mt-dthreads", "compression.mt.dthreads", _int),
    ("comp-xbzrle-cache", "compression.xbzrle.cache", _ullong),
    ("xml", "destination_xml", _file),
    ("persistent-xml", "persistent_xml", _file),
    ("auto-converge-initial", "auto_converge.initial", _int),
    ("auto-converge-increment", "auto_converge.increment", _int),
    ("postcopy-bandwidth", "bandwidth.postcopy", _ullong),
    ("parallel-connections", "parallel.connections", _int),
    ("bandwidth", "bandwidth", _ullong),
    ("tls-destination", "tls.destination", _string),
)


def parameters_of(cmd: ParsedCommand) -> tuple[MigrateParam, ...]:
    params: list[MigrateParam] = []
    for option, name, reader in PARAMETERS:
        params.extend(reader(cmd, option, name))
    return tuple(params)


# -- 4: flags ----------------------------------------------------------------------------------
#: option → flag, in the order virsh sets them
FLAGS = VIRSH_OPTIONS


def _flags_given(cmd: ParsedCommand) -> MigrateFlags:
    flags = MigrateFlags(0)
    for option, value in FLAGS:
        if cmd.flag(option):
            flags |= value
    return flags


def flags_of(cmd: ParsedCommand) -> MigrateFlags:
    flags = _flags_given(cmd)
    _refuse_broken(flags, FLAG_RULES, Layer.VIRSH)
    return flags


def _refuse_broken(flags: MigrateFlags, rules: tuple[FlagRule, ...], layer: Layer) -> None:
    broken = first_broken(flags, rules)
    if broken is not None:
        raise CommandError(broken.message_for(layer))


# -- 5: the client library's checks --------------------------------------------------------------
def library_checks(request: MigrateRequest, readonly: bool) -> None:
    """What libvirt.so refuses before sending anything, in its order for each API."""
    api = f"virDomain{request.api[0].upper()}{request.api[1:]}"
    if readonly:
        raise CommandError(f"operation forbidden: read only access prevents {api}")
    _refuse_broken(request.flags, LIBRARY_CHECKS[api], Layer.LIBRARY)


def build_request(cmd: ParsedCommand, domain: str) -> MigrateRequest:
    """Steps 2-4 (step 1 runs before the domain lookup, step 5 needs the connection)."""
    timeout, action = timeout_of(cmd)
    desturi = cmd.string("desturi") or ""
    params = parameters_of(cmd)
    return MigrateRequest(
        domain=domain, desturi=desturi, flags=flags_of(cmd), params=params,
        direct=cmd.flag("direct"), verbose=cmd.flag("verbose"), timeout=timeout,
        timeout_action=action, postcopy_after_precopy=cmd.flag("postcopy-after-precopy"),
    )


# -- running it ------------------------------------------------------------------------------
def run(shell: Shell, cmd: ParsedCommand) -> bool:
    """cmdMigrate."""
    check_combinations(cmd)
    dom, _ = shell.domain(cmd)
    timeout, action = timeout_of(cmd)
    return Migration(shell, cmd, dom).run(timeout, action)


class Migration:
    """One ``migrate`` command: the main thread's part and the worker's (doMigrate)."""

    def __init__(self, shell: Shell, cmd: ParsedCommand, dom: Domain) -> None:
        self.shell = shell
        self.cmd = cmd
        self.dom = dom

    def run(self, timeout: int, action: TimeoutAction) -> bool:
        callback_id = self._register_iteration() \
            if self.cmd.flag("postcopy-after-precopy") else None  # fmt: skip
        try:
            dconn = None if self.cmd.flag("p2p") or self.cmd.flag("direct") else \
                self._connect_destination()  # fmt: skip
            try:
                watcher = JobWatcher(self.dom, label="Migration", verbose=self.cmd.flag("verbose"),
                                     stdout=self.shell.stdout, stderr=self.shell.stderr,
                                     timeout=timeout, on_timeout=self._timeout_action(action))
                watcher.run(lambda: self._migrate(dconn))
            finally:
                if dconn is not None:
                    _quietly(dconn.close)
        finally:
            if callback_id is not None:
                deregister = optional_method(self.shell.connection, "domainEventDeregisterAny")
                _quietly(lambda: deregister(callback_id))
        return True

    def _connect_destination(self) -> Connection:
        """virshConnect(desturi, read-write); its failure is the command's error."""
        return self.shell.connect_factory(self.cmd.string("desturi") or "", False)

    def _register_iteration(self) -> int:
        register = optional_method(self.shell.connection, "domainEventRegisterAny")
        callback_id = register(self.dom, EventID.MIGRATION_ITERATION, _on_iteration, None)
        assert isinstance(callback_id, int)
        return callback_id

    def _timeout_action(self, action: TimeoutAction) -> Callable[[], object]:
        """virshMigrateTimeout: suspend (the default) or switch to post-copy."""
        if action == TimeoutAction.POSTCOPY:
            return lambda: self.dom.migrateStartPostCopy(0)
        return self.dom.suspend

    def _migrate(self, dconn: Connection | None) -> None:
        """doMigrate, in the worker thread."""
        dom, name = self.shell.domain(self.cmd)  # virsh looks the domain up again here
        request = build_request(self.cmd, name)
        library_checks(request, self.shell.readonly)
        params, flags = request.params_dict(), int(request.flags)
        if request.api == "migrateToURI3":
            optional_method(dom, "migrateToURI3")(request.desturi, params, flags)
        else:
            optional_method(dom, "migrate3")(dconn, params, flags)


def _on_iteration(conn: object, dom: Any, iteration: int, opaque: object) -> None:
    """virshMigrateIteration: after the first full pass, switch to post-copy."""
    if iteration == 2:
        try:
            dom.migrateStartPostCopy(0)
        except VirtError as exc:  # virsh only says so at debug level
            log.debug("switching to post-copy failed: %s", exc)


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except VirtError as exc:
        log.debug("cleanup after migrate failed: %s", exc)
