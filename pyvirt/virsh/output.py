"""Text layouts of virsh 9.0: tables, sizes and help pages, byte for byte.

Tables follow ``vsh-table.c``: every cell is preceded by one space; every column but the
last is padded to its widest cell plus two spaces; the dashed line under the header is
``sum(width + 3)`` long. Widths count display columns (wide characters count two), and
non-printable characters are shown as ``\\xNN``, as virsh does.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from pyvirt.virsh.options import BOOL, DATA, INT, STRING, Command, iter_visible


def _safe_cell(text: str) -> tuple[str, int]:
    """The cell as printed and its width in columns (vshTableSafeEncode)."""
    out: list[str] = []
    width = 0
    for char in text:
        if char.isprintable():
            out.append(char)
            if unicodedata.combining(char):
                continue
            width += 2 if unicodedata.east_asian_width(char) in "WF" else 1
        else:
            escaped = "".join(f"\\x{byte:02x}" for byte in char.encode())
            out.append(escaped)
            width += len(escaped)
    return "".join(out), width


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, show_header: bool) -> str:
    """A table as ``vshTablePrintToStdout`` prints it (no header in quiet mode)."""
    all_rows = [header, *rows] if show_header else list(rows)
    cells = [[_safe_cell(cell) for cell in row] for row in all_rows]
    widths = [0] * len(header)
    for row in cells:
        for index, (_, width) in enumerate(row):
            widths[index] = max(widths[index], width)
    lines: list[str] = []
    for number, row in enumerate(cells):
        parts: list[str] = []
        for index, (text, width) in enumerate(row):
            parts.append(" " + text)
            if index < len(row) - 1:
                parts.append(" " * (widths[index] - width + 2))
        lines.append("".join(parts) + "\n")
        if show_header and number == 0:
            lines.append("-" * sum(width + 3 for width in widths) + "\n")
    return "".join(lines)


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def pretty_capacity(value: int) -> tuple[float, str]:
    """``vshPrettyCapacity``: the value scaled to the largest unit below 1024 of it."""
    limit = 1024
    for unit in _UNITS[:-1]:
        if value < limit:
            return value / (limit // 1024), unit
        limit *= 1024
    return value / (limit // 1024), _UNITS[-1]


def version_string(encoded: int) -> str:
    """libvirt's major * 1,000,000 + minor * 1,000 + release as ``major.minor.release``."""
    return f"{encoded // 1000000}.{encoded % 1000000 // 1000}.{encoded % 1000}"


# -- help --------------------------------------------------------------------------------------
def _synopsis_word(kind: str, name: str, required: bool, shortopt: bool) -> str:
    if kind == BOOL:
        return f"[--{name}]"
    if kind == INT:
        return f"<{name}>" if required else f"[--{name} <number>]"
    if kind == STRING:
        return f"[--{name} <string>]"
    if kind == DATA:
        return f"<{name}>" if required else f"[<{name}>]"
    if shortopt:  # ARGV after options a bare word can fill
        return f"{{[--{name}] <string>}}..." if required else f"[[--{name}] <string>]..."
    return f"<{name}>..." if required else f"[<{name}>]..."


def _option_label(kind: str, name: str, required: bool, shortopt: bool) -> str:
    if kind == BOOL:
        return f"--{name}"
    if kind == INT:
        return f"[--{name}] <number>" if required else f"--{name} <number>"
    if kind == STRING:
        return f"--{name} <string>"
    if kind == DATA:
        return f"[--{name}] <string>"
    return f"[--{name}] <string>" if shortopt else f"<{name}>"


def command_help(cmd: Command) -> str:
    """``help COMMAND``: the NAME / SYNOPSIS / DESCRIPTION / OPTIONS page (vshCmddefHelp)."""
    opts = list(iter_visible(cmd.opts))
    # when a bare word can fill some option, an ARGV option's name is shown as optional
    shortopt = any(opt.kind in (INT, STRING, DATA) and opt.positional for opt in opts)
    words = [cmd.name]
    words.extend(_synopsis_word(o.kind, o.name, o.required, shortopt) for o in opts)
    text = [f"  NAME\n    {cmd.name} - {cmd.help}\n",
            "\n  SYNOPSIS\n    " + " ".join(words) + "\n"]  # fmt: skip
    if cmd.desc:
        text.append(f"\n  DESCRIPTION\n    {cmd.desc}\n")
    if opts:
        text.append("\n  OPTIONS\n")
        for opt in opts:
            label = _option_label(opt.kind, opt.name, opt.required, shortopt)
            text.append(f"    {label:<15}  {opt.help}\n")
    text.append("\n")
    return "".join(text)


def group_help(name: str, keyword: str, commands: Sequence[Command], *, colon: bool = True) -> str:
    """A group's heading and one line per command (vshCmdGrpHelp)."""
    head = f" {name} (help keyword '{keyword}'){':' if colon else ''}\n"
    return head + "".join(f"    {cmd.name:<30} {cmd.help}\n" for cmd in commands)
