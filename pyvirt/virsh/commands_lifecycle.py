"""Lifecycle commands: define/undefine, create/start, shutdown/reboot/destroy, pause, autostart.

Each prints virsh's message (suppressed by ``--quiet``) or fails with virsh's
``Failed to ... domain 'NAME'`` followed by the client's own error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyvirt.constants import CreateFlags, DefineFlags, DestroyFlags, UndefineFlags
from pyvirt.errors import ErrorCode, VirtError
from pyvirt.virsh.commands_domain import (
    attempt,
    exclusive,
    flags_of,
    optional_method,
    read_xml_file,
    require,
)
from pyvirt.virsh.options import CommandError, ParsedCommand
from pyvirt.virsh.shell import BY_NAME, BY_UUID

if TYPE_CHECKING:
    from pyvirt.virsh.api import Domain
    from pyvirt.virsh.shell import Shell

#: --mode words of shutdown and reboot (virDomainShutdownFlagValues)
SHUTDOWN_MODES = {"acpi": 1, "agent": 2, "initctl": 4, "signal": 8, "paravirt": 16}

_CREATE_FLAGS = {"paused": CreateFlags.START_PAUSED, "autodestroy": CreateFlags.START_AUTODESTROY,
                 "validate": CreateFlags.START_VALIDATE,
                 "reset-nvram": CreateFlags.START_RESET_NVRAM}  # fmt: skip
_START_FLAGS = {"paused": CreateFlags.START_PAUSED, "autodestroy": CreateFlags.START_AUTODESTROY,
                "bypass-cache": CreateFlags.START_BYPASS_CACHE,
                "force-boot": CreateFlags.START_FORCE_BOOT,
                "reset-nvram": CreateFlags.START_RESET_NVRAM}  # fmt: skip
_UNDEFINE_FLAGS = {
    "managed-save": UndefineFlags.MANAGED_SAVE,
    "snapshots-metadata": UndefineFlags.SNAPSHOTS_METADATA,
    "checkpoints-metadata": UndefineFlags.CHECKPOINTS_METADATA,
    "nvram": UndefineFlags.NVRAM, "keep-nvram": UndefineFlags.KEEP_NVRAM,
    "tpm": UndefineFlags.TPM, "keep-tpm": UndefineFlags.KEEP_TPM,
}  # fmt: skip


def _refuse_console_and_fds(cmd: ParsedCommand) -> None:
    """pyvirsh has no console client and cannot pass descriptors over the wire yet."""
    if cmd.flag("console"):
        raise CommandError("--console is not supported by pyvirsh")
    if cmd.string("pass-fds") is not None:
        raise CommandError("--pass-fds is not supported by pyvirsh")


def cmd_define(shell: Shell, cmd: ParsedCommand) -> bool:
    path = cmd.string("file") or ""
    flags = DefineFlags.VALIDATE if cmd.flag("validate") else 0
    xml = read_xml_file(path)
    conn = shell.connection
    try:
        dom = _define(conn, xml, flags)
    except VirtError as exc:
        raise CommandError(f"Failed to define domain from {path}", cause=exc) from exc
    shell.extra(f"Domain '{dom.name()}' defined from {path}\n")
    return True


def _define(conn: object, xml: str, flags: int) -> Domain:
    """virshDomainDefine: with --validate, fall back to plain define if unsupported."""
    define_flags = getattr(conn, "defineXMLFlags", None)
    if flags and define_flags is not None:
        try:
            dom: Domain = define_flags(xml, flags)
            return dom
        except VirtError as exc:
            if exc.code != ErrorCode.NO_SUPPORT or flags != DefineFlags.VALIDATE:
                raise
    plain: Domain = conn.defineXML(xml)  # type: ignore[attr-defined]
    return plain


def cmd_create(shell: Shell, cmd: ParsedCommand) -> bool:
    path = cmd.string("file") or ""
    xml = read_xml_file(path)
    _refuse_console_and_fds(cmd)
    try:
        dom = shell.connection.createXML(xml, flags_of(cmd, _CREATE_FLAGS))
    except VirtError as exc:
        raise CommandError(f"Failed to create domain from {path}", cause=exc) from exc
    shell.extra(f"Domain '{dom.name()}' created from {path}\n")
    return True


def cmd_start(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd, BY_NAME | BY_UUID)
    if dom.ID() != -1:
        raise CommandError("Domain is already active")
    _refuse_console_and_fds(cmd)
    flags = flags_of(cmd, _START_FLAGS)
    name = dom.name()
    attempt(f"Failed to start domain '{name}'",
            lambda: dom.createWithFlags(flags) if flags else dom.create())  # fmt: skip
    shell.extra(f"Domain '{name}' started\n")
    return True


def shutdown_flags(mode: str | None, oxford_comma: bool) -> int:
    """``--mode acpi,agent`` → flags; virsh's two commands word the error differently."""
    if mode is None:
        return 0
    flags = 0
    for word in mode.split(","):
        if word not in SHUTDOWN_MODES:
            last = "'signal', or 'paravirt'" if oxford_comma else "'signal' or 'paravirt'"
            raise CommandError(f"Unknown mode {word} value, expecting "
                               f"'acpi', 'agent', 'initctl', {last}")  # fmt: skip
        flags |= SHUTDOWN_MODES[word]
    return flags


def cmd_shutdown(shell: Shell, cmd: ParsedCommand) -> bool:
    flags = shutdown_flags(cmd.string("mode"), oxford_comma=True)
    dom, name = shell.domain(cmd)
    if flags:
        shutdown = optional_method(dom, "shutdownFlags")
        attempt(f"Failed to shutdown domain '{name}'", lambda: shutdown(flags))
    else:
        attempt(f"Failed to shutdown domain '{name}'", dom.shutdown)
    shell.extra(f"Domain '{name}' is being shutdown\n")
    return True


def cmd_reboot(shell: Shell, cmd: ParsedCommand) -> bool:
    flags = shutdown_flags(cmd.string("mode"), oxford_comma=False)
    dom, name = shell.domain(cmd)
    attempt(f"Failed to reboot domain '{name}'", lambda: dom.reboot(flags))
    shell.extra(f"Domain '{name}' is being rebooted\n")
    return True


def cmd_destroy(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, name = shell.domain(cmd)
    flags = flags_of(cmd, {"graceful": DestroyFlags.GRACEFUL,
                           "remove-logs": DestroyFlags.REMOVE_LOGS})  # fmt: skip
    if flags:
        destroy = optional_method(dom, "destroyFlags")
        attempt(f"Failed to destroy domain '{name}'", lambda: destroy(flags))
    else:
        attempt(f"Failed to destroy domain '{name}'", dom.destroy)
    shell.extra(f"Domain '{name}' destroyed\n")
    return True


def cmd_suspend(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, name = shell.domain(cmd)
    attempt(f"Failed to suspend domain '{name}'", dom.suspend)
    shell.extra(f"Domain '{name}' suspended\n")
    return True


def cmd_resume(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, name = shell.domain(cmd)
    attempt(f"Failed to resume domain '{name}'", dom.resume)
    shell.extra(f"Domain '{name}' resumed\n")
    return True


def cmd_autostart(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, name = shell.domain(cmd)
    prefix = "un" if cmd.flag("disable") else ""
    attempt(f"Failed to {prefix}mark domain '{name}' as autostarted",
            lambda: dom.setAutostart(0 if prefix else 1))  # fmt: skip
    shell.extra(f"Domain '{name}' {prefix}marked as autostarted\n")
    return True


def cmd_undefine(shell: Shell, cmd: ParsedCommand) -> bool:
    exclusive(cmd, ("nvram", "keep-nvram"), ("tpm", "keep-tpm"))
    require(cmd, ("delete-storage-volume-snapshots", "remove-all-storage"))
    remove_storage = cmd.string_quiet("storage") is not None or cmd.flag("remove-all-storage")
    if cmd.flag("wipe-storage") and not remove_storage:
        raise CommandError("'--wipe-storage' requires '--storage <string>' or "
                           "'--remove-all-storage'")  # fmt: skip
    flags = flags_of(cmd, _UNDEFINE_FLAGS)
    dom, name = shell.domain(cmd)
    if remove_storage:
        if dom.isActive():
            raise CommandError("Storage volume deletion is supported only on stopped domains")
        raise CommandError("Storage volume deletion is not supported by pyvirsh")
    attempt(f"Failed to undefine domain '{name}'",
            lambda: dom.undefineFlags(flags) if flags else dom.undefine())  # fmt: skip
    shell.extra(f"Domain '{name}' has been undefined\n")
    return True
