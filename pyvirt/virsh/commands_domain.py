"""Domain commands: listing, information and the lifecycle (virsh-domain*.c's behaviour).

Messages name the domain the way virsh does: lifecycle messages repeat the text the user
typed (``destroy 1`` says ``Domain '1' destroyed``), while ``start``, ``create`` and
``define`` name the domain itself.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from pyvirt.constants import REASON_NAMES, STATE_NAMES, DomainState, ListFlags, XMLFlags
from pyvirt.errors import ErrorCode, VirtError
from pyvirt.virsh import output
from pyvirt.virsh.options import CommandError, ParsedCommand
from pyvirt.virsh.shell import BY_ID, BY_NAME, BY_UUID

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pyvirt.virsh.api import Domain
    from pyvirt.virsh.shell import Shell

#: virsh reads at most this much of an XML file (VSH_MAX_XML_FILE)
MAX_XML_FILE = 10 * 1024 * 1024
#: ``info()`` reports this maximum memory for "no limit"
NO_MEMORY_LIMIT = 4294967295


def state_name(state: int) -> str:
    try:
        return STATE_NAMES[DomainState(state)]
    except ValueError:
        return "no state"


def reason_name(state: int, reason: int) -> str:
    try:
        return REASON_NAMES[DomainState(state)].get(reason, "unknown")
    except ValueError:
        return "unknown"


def exclusive(cmd: ParsedCommand, *pairs: tuple[str, str]) -> None:
    """VSH_EXCLUSIVE_OPTIONS, for each pair in order."""
    for first, second in pairs:
        if cmd.flag(first) and cmd.flag(second):
            raise CommandError(f"Options --{first} and --{second} are mutually exclusive")


def require(cmd: ParsedCommand, *pairs: tuple[str, str]) -> None:
    """VSH_REQUIRE_OPTION: (option, the option it needs), for each pair in order."""
    for option, needed in pairs:
        if cmd.flag(option) and not cmd.flag(needed):
            raise CommandError(f"Option --{needed} is required by option --{option}")


def flags_of(cmd: ParsedCommand, table: Mapping[str, int]) -> int:
    flags = 0
    for option, value in table.items():
        if cmd.flag(option):
            flags |= value
    return flags


def attempt(message: str, call: Callable[[], object]) -> None:
    """Make a call; on failure report ``message`` then the call's own error."""
    try:
        call()
    except VirtError as exc:
        raise CommandError(message, cause=exc) from exc


def optional_method(obj: object, name: str) -> Callable[..., object]:
    method = getattr(obj, name, None)
    if method is None:
        raise CommandError(f"this connection does not provide {name}()")
    return method  # type: ignore[no-any-return]


def read_xml_file(path: str) -> str:
    """The file's text, failing with libvirt's virFileReadAll messages."""
    import os

    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_XML_FILE + 1)
    except IsADirectoryError:
        raise CommandError(f"Failed to read file '{path}': {os.strerror(21)}") from None
    except OSError as exc:
        reason = os.strerror(exc.errno or 0)
        raise CommandError(f"Failed to open file '{path}': {reason}") from None
    if len(data) > MAX_XML_FILE:
        raise CommandError(f"Failed to read file '{path}': {os.strerror(27)}")  # EFBIG
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise CommandError(f"Failed to read file '{path}': invalid UTF-8: {exc}") from None


def _refuse(cmd: ParsedCommand, *options: str) -> None:
    """Options pyvirsh parses (for virsh compatibility) but cannot honour."""
    for option in options:
        if option in cmd.values:
            raise CommandError(f"option --{option} is not supported by pyvirsh")


# -- list --------------------------------------------------------------------------------------
_LIST_FILTERS = {
    "persistent": ListFlags.PERSISTENT, "transient": ListFlags.TRANSIENT,
    "with-managed-save": ListFlags.MANAGEDSAVE, "without-managed-save": ListFlags.NO_MANAGEDSAVE,
    "autostart": ListFlags.AUTOSTART, "no-autostart": ListFlags.NO_AUTOSTART,
    "with-snapshot": ListFlags.HAS_SNAPSHOT, "without-snapshot": ListFlags.NO_SNAPSHOT,
    "with-checkpoint": ListFlags.HAS_CHECKPOINT, "without-checkpoint": ListFlags.NO_CHECKPOINT,
    "state-running": ListFlags.RUNNING, "state-paused": ListFlags.PAUSED,
    "state-shutoff": ListFlags.SHUTOFF, "state-other": ListFlags.OTHER,
}  # fmt: skip


def list_flags(cmd: ParsedCommand) -> int:
    """virsh's list filter: active by default, --inactive/--state-shutoff switch to
    inactive, --all takes both; every other filter is added to that."""
    flags = int(ListFlags.ACTIVE)
    if cmd.flag("inactive") or cmd.flag("state-shutoff"):
        flags = ListFlags.INACTIVE
    if cmd.flag("all"):
        flags = ListFlags.ACTIVE | ListFlags.INACTIVE
    return flags | flags_of(cmd, _LIST_FILTERS)


def _sort_key(dom: Domain) -> tuple[int, int, str]:
    """Running domains by ID first, then inactive ones by name, case-insensitively."""
    dom_id = dom.ID()
    if dom_id == -1:
        return (1, 0, dom.name().lower())
    return (0, dom_id, "")


def _title(dom: Domain) -> str:
    metadata = getattr(dom, "metadata", None)
    if metadata is None:
        return ""
    try:
        title = metadata(0, None, 0)  # VIR_DOMAIN_METADATA_TITLE
    except VirtError:  # no title (NO_DOMAIN_METADATA) is the common case
        return ""
    return str(title)


def _state_cell(dom: Domain, managed_save: bool) -> str:
    state = dom.state()[0]
    if managed_save and state == DomainState.SHUTOFF and dom.hasManagedSaveImage(0) > 0:
        return "saved"
    return state_name(state)


def cmd_list(shell: Shell, cmd: ParsedCommand) -> bool:
    exclusive(cmd, ("table", "name"), ("table", "uuid"), ("table", "id"))
    try:
        domains = shell.connection.listAllDomains(list_flags(cmd))
    except VirtError as exc:
        raise CommandError("Failed to list domains", cause=exc) from exc
    domains = sorted(domains, key=_sort_key)
    if any(cmd.flag(name) for name in ("name", "uuid", "id")):
        _print_plain(shell, cmd, domains)
        return True
    header = ["Id", "Name", "State"] + (["Title"] if cmd.flag("title") else [])
    rows = []
    for dom in domains:
        dom_id = dom.ID()
        row = ["-" if dom_id == -1 else str(dom_id), dom.name(),
               _state_cell(dom, cmd.flag("managed-save"))]  # fmt: skip
        if cmd.flag("title"):
            row.append(_title(dom))
        rows.append(row)
    shell.out(output.table(header, rows, show_header=not shell.quiet))
    return True


def _print_plain(shell: Shell, cmd: ParsedCommand, domains: list[Domain]) -> None:
    """``--uuid``, ``--id``, ``--name`` in any mix: those fields, in that order."""
    for dom in domains:
        dom_id = dom.ID()
        if cmd.flag("id") and dom_id == -1 and not (cmd.flag("uuid") or cmd.flag("name")):
            continue  # IDs alone: only running domains have one
        fields = []
        if cmd.flag("uuid"):
            fields.append(dom.UUIDString())
        if cmd.flag("id"):
            fields.append("-" if dom_id == -1 else str(dom_id))
        if cmd.flag("name"):
            fields.append(dom.name())
        shell.out(" ".join(fields) + "\n")


# -- information -------------------------------------------------------------------------------
def _line(shell: Shell, label: str, value: object) -> None:
    shell.out(f"{label:<15} {value}\n")


def _optional_line(shell: Shell, label: str, call: Callable[[], object]) -> None:
    """A line virsh leaves out when its call fails."""
    try:
        value = call()
    except VirtError:
        return
    _line(shell, label, value)


def _yes_no(call: Callable[[], int]) -> str:
    try:
        return "yes" if call() else "no"
    except VirtError:
        return "unknown"


def cmd_dominfo(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd)
    dom_id = dom.ID()
    _line(shell, "Id:", "-" if dom_id == -1 else dom_id)
    _line(shell, "Name:", dom.name())
    _optional_line(shell, "UUID:", dom.UUIDString)
    _optional_line(shell, "OS Type:", dom.OSType)
    failure: VirtError | None = None
    try:
        _info_lines(shell, dom.info())
    except VirtError as exc:  # virsh carries on and fails at the end
        failure = exc
    _line(shell, "Persistent:", _yes_no(dom.isPersistent))
    with contextlib.suppress(VirtError):
        _line(shell, "Autostart:", "enable" if dom.autostart() else "disable")
    _line(shell, "Managed save:", _yes_no(lambda: dom.hasManagedSaveImage(0)))
    _security_lines(shell, dom)
    if failure is not None:
        raise CommandError(cause=failure)
    return True


def _info_lines(shell: Shell, info: list[int]) -> None:
    state, max_mem, memory, vcpus, cpu_time = info[:5]
    _line(shell, "State:", state_name(state))
    _line(shell, "CPU(s):", vcpus)
    if cpu_time != 0:
        _line(shell, "CPU time:", f"{cpu_time / 1000000000.0:.1f}s")
    _line(shell, "Max memory:", "no limit" if max_mem == NO_MEMORY_LIMIT else f"{max_mem} KiB")
    _line(shell, "Used memory:", f"{memory} KiB")


def _security_lines(shell: Shell, dom: Domain) -> None:
    """Security model lines, only when the host has an active model (pyvirt has none)."""
    get_model = getattr(shell.connection, "getSecurityModel", None)
    if get_model is None:
        return
    try:
        model, doi = get_model()
    except VirtError as exc:
        if exc.code == ErrorCode.NO_SUPPORT:
            return
        raise
    if not model:
        return
    _line(shell, "Security model:", model)
    _line(shell, "Security DOI:", doi)
    seclabel = optional_method(dom, "securityLabel")()
    assert isinstance(seclabel, list | tuple)
    label, enforcing = seclabel[0], seclabel[1]
    if label:
        shell.out(f"{'Security label:':<15} {label} "
                  f"({'enforcing' if enforcing else 'permissive'})\n")  # fmt: skip


def cmd_domstate(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd)
    state, reason = dom.state()[:2]
    if cmd.flag("reason"):
        shell.out(f"{state_name(state)} ({reason_name(state, reason)})\n")
    else:
        shell.out(state_name(state) + "\n")
    return True


_XML_FLAGS = {"inactive": XMLFlags.INACTIVE, "security-info": XMLFlags.SECURE,
              "update-cpu": XMLFlags.UPDATE_CPU, "migratable": XMLFlags.MIGRATABLE}


def cmd_dumpxml(shell: Shell, cmd: ParsedCommand) -> bool:
    _refuse(cmd, "xpath", "wrap")
    flags = flags_of(cmd, _XML_FLAGS)
    dom, _ = shell.domain(cmd)
    shell.out(dom.XMLDesc(flags))
    return True


def cmd_domid(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd, BY_NAME | BY_UUID)
    dom_id = dom.ID()
    shell.out(("-" if dom_id == -1 else str(dom_id)) + "\n")
    return True


def cmd_domname(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd, BY_ID | BY_UUID)
    shell.out(dom.name() + "\n")
    return True


def cmd_domuuid(shell: Shell, cmd: ParsedCommand) -> bool:
    dom, _ = shell.domain(cmd, BY_NAME | BY_ID)
    try:
        shell.out(dom.UUIDString() + "\n")
    except VirtError as exc:
        raise CommandError("failed to get domain UUID", cause=exc) from exc
    return True
