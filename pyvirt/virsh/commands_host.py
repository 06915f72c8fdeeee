"""Host commands (version, hostname, uri, capabilities) and virsh's own (help, quit, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from pyvirt.errors import VirtError
from pyvirt.virsh import output, registry
from pyvirt.virsh.options import CommandError, ParsedCommand

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyvirt.virsh.shell import Shell

T = TypeVar("T")


def _call(what: str, call: Callable[[], T]) -> T:
    """A call whose failure virsh reports as ``failed to get WHAT`` plus the cause."""
    try:
        return call()
    except VirtError as exc:
        raise CommandError(f"failed to get {what}", cause=exc) from exc


def cmd_version(shell: Shell, cmd: ParsedCommand) -> bool:
    """virsh's layout; the library lines name pyvirt, which stands where libvirt.so would.

    "Using API" gives the libvirt API level pyvirt implements (virsh 9.0's).
    """
    from pyvirt.virsh.main import VIRSH_VERSION, pyvirt_version

    conn = shell.connection
    hv_type = _call("hypervisor type", conn.getType)
    ours = pyvirt_version()
    shell.out(f"Compiled against library: pyvirt {ours}\n"
              f"Using library: pyvirt {ours}\n"
              f"Using API: {hv_type} {VIRSH_VERSION}\n")  # fmt: skip
    hv_version = _call("the hypervisor version", conn.getVersion)
    if hv_version == 0:
        shell.out(f"Cannot extract running {hv_type} hypervisor version\n")
    else:
        shell.out(f"Running hypervisor: {hv_type} {output.version_string(hv_version)}\n")
    if cmd.flag("daemon"):
        try:
            daemon = conn.getLibVersion()
        except VirtError:  # virsh says so and still succeeds
            shell.error("failed to get the daemon version")
        else:
            shell.out(f"Running against daemon: {output.version_string(daemon)}\n")
    return True


def cmd_hostname(shell: Shell, cmd: ParsedCommand) -> bool:
    shell.out(_call("hostname", shell.connection.getHostname) + "\n")
    return True


def cmd_uri(shell: Shell, cmd: ParsedCommand) -> bool:
    shell.out(_call("URI", shell.connection.getURI) + "\n")
    return True


def cmd_capabilities(shell: Shell, cmd: ParsedCommand) -> bool:
    shell.out(_call("capabilities", shell.connection.getCapabilities) + "\n")
    return True


def cmd_help(shell: Shell, cmd: ParsedCommand) -> bool:
    name = cmd.string_quiet("command")
    if name is None:
        shell.out("Grouped commands:\n\n")
        for group in registry.GROUPS:
            shell.out(output.group_help(group.name, group.keyword, group.commands) + "\n")
        return True
    spec = registry.find_command(name)
    if spec is not None:
        shell.out(output.command_help(spec))
        return True
    found = registry.find_group(name)
    if found is not None:
        shell.out(output.group_help(found.name, found.keyword, found.commands))
        return True
    raise CommandError(f"command or command group '{name}' doesn't exist")


def cmd_quit(shell: Shell, cmd: ParsedCommand) -> bool:
    shell.interactive = False
    return True


def cmd_connect(shell: Shell, cmd: ParsedCommand) -> bool:
    shell.reconnect(cmd.string("name"), cmd.flag("readonly"), force=True)
    return True


_SHELL_SPECIAL = frozenset("\r\t\n !\"#$&'()*;<>?[\\]^`{|}~")
_XML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}


def _shell_quote(text: str) -> str:
    if text and not _SHELL_SPECIAL.intersection(text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def _split_commas(text: str) -> list[str]:
    """Split on ``,`` where ``,,`` stands for a literal comma (vshStringToArray)."""
    pieces, current, index = [], [], 0
    while index < len(text):
        if text[index] == ",":
            if text.startswith(",,", index):
                current.append(",")
                index += 2
                continue
            pieces.append("".join(current))
            current = []
        else:
            current.append(text[index])
        index += 1
    return [*pieces, "".join(current)]


def cmd_echo(shell: Shell, cmd: ParsedCommand) -> bool:
    """Print the arguments (virsh uses it to test its own parser; so do we)."""
    for first, second in (("shell", "split"), ("xml", "split")):
        if cmd.flag(first) and cmd.flag(second):
            raise CommandError(f"Options --{first} and --{second} are mutually exclusive")
    parts: list[str] = []
    for word in cmd.words("string"):
        if cmd.flag("split"):
            parts.append("".join(piece + "\n" for piece in _split_commas(word)))
        elif cmd.flag("xml"):
            parts.append("".join(_XML_ESCAPES.get(char, char) for char in word))
        else:
            parts.append(_shell_quote(word) if cmd.flag("shell") else word)
    text = " ".join(parts)
    if cmd.flag("err"):
        shell.error(text)
    else:
        shell.out(text)
    return True
