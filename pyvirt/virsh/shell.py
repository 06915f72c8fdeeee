"""The running shell: output, the connection, domain lookup, and running commands.

:class:`Shell` plays the part of virsh's ``vshControl``: it prints (``out`` always,
``extra`` unless ``--quiet``, ``error`` as ``error: ...`` on stderr), owns the connection
(opened lazily, re-opened after a lost connection), runs parsed commands the way
``vshCommandRun`` does (a blank line after each, errors reported after the command) and
drives the interactive mode.

On pyvirsh's start-up path: no heavy imports here; handlers are imported per command.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from pyvirt.errors import ErrorCode, ErrorDomain, VirtError
from pyvirt.virsh import registry
from pyvirt.virsh.options import (
    ArgvTokens,
    CommandError,
    ParsedCommand,
    ParseFailed,
    StringTokens,
    Tokens,
    parse,
    parse_number,
)

if TYPE_CHECKING:
    from pyvirt.virsh.api import ConnectFactory, Connection, Domain

BY_ID = 1
BY_UUID = 2
BY_NAME = 4
BY_ANY = BY_ID | BY_UUID | BY_NAME

PROMPT_RW = "virsh # "
PROMPT_RO = "virsh > "

Handler = Callable[["Shell", ParsedCommand], bool]

#: errors after which virsh assumes the connection is gone and reconnects
_DISCONNECT_CODES = frozenset({ErrorCode.RPC, ErrorCode.NO_CONNECT, ErrorCode.INVALID_CONN})


class Shell:
    def __init__(self, connect: ConnectFactory, uri: str, *, readonly: bool = False,
                 quiet: bool = False, timing: bool = False, progname: str = "pyvirsh",
                 stdout: TextIO, stderr: TextIO) -> None:  # fmt: skip
        self.connect_factory = connect
        self.connname = uri
        self.readonly = readonly
        self.quiet = quiet
        self.timing = timing
        self.progname = progname
        self.stdout = stdout
        self.stderr = stderr
        self.conn: Connection | None = None
        self.interactive = False
        self.disconnected = 0

    # -- output ------------------------------------------------------------------------------
    def out(self, text: str) -> None:
        self.stdout.write(text)

    def extra(self, text: str) -> None:
        """Output that ``--quiet`` suppresses (virsh's vshPrintExtra)."""
        if not self.quiet:
            self.stdout.write(text)

    def error(self, message: str) -> None:
        self.stdout.flush()
        self.stderr.write(f"error: {message}\n")
        self.stderr.flush()

    def report(self, exc: BaseException) -> None:
        """Print a failed call's error (vshReportError) and note a lost connection."""
        code = getattr(exc, "code", ErrorCode.INTERNAL_ERROR)
        message = getattr(exc, "message", None) or str(exc)
        self.error(message if code != ErrorCode.OK else "unknown error")
        domain = getattr(exc, "domain", None)
        if code in _DISCONNECT_CODES or (
                code == ErrorCode.SYSTEM_ERROR and domain == ErrorDomain.REMOTE):
            self.disconnected += 1

    def fail(self, exc: CommandError) -> None:
        """A failed command's messages, then its cause's (vshError, then vshReportError)."""
        for message in exc.messages:
            self.error(message)
        if exc.cause is not None:
            self.report(exc.cause)

    # -- the connection ----------------------------------------------------------------------
    def reconnect(self, name: str | None = None, readonly: bool = False,
                  force: bool = False) -> None:  # fmt: skip
        """virshReconnect: drop the connection and open ``name`` (or the current URI)."""
        if not readonly and name is None:
            readonly = self.readonly
        connected = self.conn is not None
        self.close()
        try:
            self.conn = self.connect_factory(name or self.connname, readonly)
        except VirtError as exc:
            what = "Failed to reconnect" if self.disconnected else "failed to connect"
            raise CommandError(f"{what} to the hypervisor", cause=exc) from exc
        if name:
            self.connname = name
        self.readonly = readonly
        if connected and not force:
            self.error("Reconnected to the hypervisor")
        self.disconnected = 0

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.close()
        except VirtError:
            self.error("Failed to disconnect from the hypervisor")

    @property
    def connection(self) -> Connection:
        """The open connection; handlers run only after :meth:`run_one` ensured one."""
        if self.conn is None:
            raise CommandError("no valid connection")
        return self.conn

    # -- domains -----------------------------------------------------------------------------
    def domain(self, cmd: ParsedCommand, by: int = BY_ANY) -> tuple[Domain, str]:
        """The domain named by ``--domain``, tried as ID, then UUID, then name.

        Returns it with the text the user typed, which virsh echoes in its messages.
        """
        text = cmd.string("domain") or ""
        conn = self.connection
        dom: Domain | None = None
        if by & BY_ID:
            dom_id = parse_number(text, "int")
            if dom_id is not None and dom_id >= 0:
                dom = _quietly(lambda: conn.lookupByID(dom_id))
        if dom is None and by & BY_UUID and len(text) == 36:
            dom = _quietly(lambda: conn.lookupByUUIDString(text))
        if dom is None and by & BY_NAME:
            dom = _quietly(lambda: conn.lookupByName(text))
        if dom is None:
            raise CommandError(f"failed to get domain '{text}'")
        return dom, text

    # -- parsing and running -----------------------------------------------------------------
    def parse(self, source: str | list[str]) -> list[ParsedCommand] | None:
        """A command string (``;``-separated) or argv words → commands; None on error."""
        tokens: Tokens = StringTokens(source) if isinstance(source, str) else ArgvTokens(source)
        try:
            return parse(tokens, registry.find_command, self.error)
        except ParseFailed:
            return None

    def run(self, commands: list[ParsedCommand]) -> bool:
        """Run in order; the result is the last command's (vshCommandRun)."""
        ok = True
        for cmd in commands:
            started = time.monotonic()
            ok = self.run_one(cmd)
            if cmd.name in ("quit", "exit"):
                return ok
            if self.timing:
                elapsed = (time.monotonic() - started) * 1000
                self.extra(f"\n(Time: {elapsed:.3f} ms)\n\n")
            else:
                self.extra("\n")
        return ok

    def run_one(self, cmd: ParsedCommand) -> bool:
        try:
            if not cmd.spec.noconnect and (self.conn is None or self.disconnected):
                self.reconnect()
            return _handler(cmd.spec.handler)(self, cmd)
        except CommandError as exc:
            self.fail(exc)
        except VirtError as exc:
            self.report(exc)
        return False

    # -- interactive mode --------------------------------------------------------------------
    def interact(self, stdin: TextIO) -> None:
        if not self.quiet:
            self.out(f"Welcome to {self.progname}, the virtualization interactive terminal.\n\n"
                     "Type:  'help' for help with commands\n       'quit' to quit\n\n")
        read = _line_reader(stdin, self.stdout)
        self.interactive = True
        while self.interactive:
            line = read(PROMPT_RO if self.readonly else PROMPT_RW)
            if line is None:
                break
            if line:
                commands = self.parse(line)
                if commands is not None:
                    self.run(commands)
        self.out("\n")  # the line break after the last prompt


def _quietly(call: Callable[[], Domain]) -> Domain | None:
    """A lookup that may fail: virsh resets the error and tries the next way."""
    try:
        return call()
    except VirtError:
        return None


def _handler(path: str) -> Handler:
    module, _, function = path.partition(":")
    handler: Handler = getattr(importlib.import_module(f"pyvirt.virsh.{module}"), function)
    return handler


def _line_reader(stdin: TextIO, stdout: TextIO) -> Callable[[str], str | None]:
    """Read one line after a prompt; None at end of input.

    On a terminal this is readline (editing, history). Otherwise the prompt and the line
    are echoed, which is what readline prints when its input is not a terminal, so piped
    sessions produce the same bytes as the stock virsh.
    """
    if stdin.isatty() and stdout.isatty():
        import readline  # noqa: F401  (editing and history for input())

        def read_tty(prompt: str) -> str | None:
            try:
                return input(prompt)
            except EOFError:
                return None

        return read_tty

    def read_pipe(prompt: str) -> str | None:
        stdout.write(prompt)
        line = stdin.readline()
        if not line:
            stdout.flush()
            return None
        line = line.removesuffix("\n")
        stdout.write(line + "\n")
        stdout.flush()
        return line

    return read_pipe
