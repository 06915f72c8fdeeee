"""``pyvirsh``: a virsh-compatible shell for pyvirt (and any libvirt-speaking daemon).

``pyvirsh [OPTION]... [COMMAND_STRING | COMMAND [ARG]...]``: one argument is a command
string (``'list; dominfo g1'``), several are one command's words, none starts the
interactive shell. Global options are parsed like virsh's ``getopt_long`` with
``+:c:d:e:hk:K:l:qrtvV``: long names may be abbreviated to a unique prefix, parsing stops
at the first command word, ``--`` ends the options.

The connection URI is ``-c``/``--connect``, else ``$PYVIRT_DEFAULT_URI``, else
``$LIBVIRT_DEFAULT_URI``, else ``qemu:///system``. As in virsh, a URI given with ``-c`` is
opened before the first command runs (failing early), a default one only when a command
first needs it (so ``help`` works without a daemon).

Start-up must stay fast (first RPC within 100 ms): this module imports nothing heavy and
the command handlers are imported only when their command runs.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from pyvirt.virsh.api import ConnectFactory, Connection
    from pyvirt.virsh.shell import Shell

DEFAULT_URI = "qemu:///system"
#: the virsh whose behaviour pyvirsh reproduces, and the libvirt API level it speaks
VIRSH_VERSION = "9.0.0"

# (long name, argument: "no" | "required" | "optional", short letter)
_LONG_OPTS = (
    ("connect", "required", "c"), ("debug", "required", "d"), ("escape", "required", "e"),
    ("help", "no", "h"), ("keepalive-interval", "required", "k"),
    ("keepalive-count", "required", "K"), ("log", "required", "l"), ("quiet", "no", "q"),
    ("readonly", "no", "r"), ("timing", "no", "t"), ("version", "optional", "v"),
)
_SHORT_WITH_ARG = frozenset("cdekKl")
_SHORT_FLAGS = frozenset("hqrtvV")


class Exit(Exception):
    """Stop with this exit status (after printing whatever was due)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Settings:
    """The global options."""

    def __init__(self) -> None:
        self.uri: str | None = None
        self.readonly = False
        self.quiet = False
        self.timing = False
        self.debug = 4
        self.escape = "^]"
        self.keepalive: tuple[int | None, int | None] = (None, None)
        self.logfile: str | None = None
        self.words: list[str] = []


def pyvirt_version() -> str:
    try:
        from importlib.metadata import version

        return version("pyvirt")
    except Exception:  # not installed as a distribution (a source tree): the tree's version
        return "0.1.0"


def default_connect(uri: str, readonly: bool) -> Connection:
    """Open ``uri`` with pyvirt's client library (``pyvirt.open``, libvirt-python's names).

    The client's machinery (asyncio, RPC) is imported by this first call, not at start-up.
    """
    import pyvirt
    from pyvirt.errors import ErrorCode, VirtError

    opener = getattr(pyvirt, "openReadOnly" if readonly else "open", None)
    if opener is None:
        raise VirtError("internal error: pyvirt's client library is not available",
                        code=ErrorCode.INTERNAL_ERROR)  # fmt: skip
    conn: Connection = opener(uri)
    return conn


# -- global options (getopt_long) ----------------------------------------------------------------
def _match_long(word: str) -> tuple[str, str, str, str | None]:
    """``--name[=value]`` → (name, argument kind, short letter, inline value)."""
    text = word[2:]
    name, eq, value = text.partition("=")
    exact = [opt for opt in _LONG_OPTS if opt[0] == name]
    found = exact or [opt for opt in _LONG_OPTS if opt[0].startswith(name)]
    if len(found) != 1:  # unknown, or an ambiguous prefix
        raise _Unsupported(word)
    return found[0][0], found[0][1], found[0][2], (value if eq else None)


class _Unsupported(Exception):
    pass


class _GetOpt:
    """Walks argv the way glibc's getopt_long does for virsh's option string."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.index = 0

    def __iter__(self) -> _GetOpt:
        return self

    def __next__(self) -> tuple[str, str | None, bool]:
        """(short letter, argument, given as a long option)."""
        if self.index >= len(self.args):
            raise StopIteration
        word = self.args[self.index]
        if word == "--":
            self.index += 1
            raise StopIteration
        if not word.startswith("-") or word == "-":
            raise StopIteration  # '+' in the option string: stop at the first command word
        self.index += 1
        if word.startswith("--"):
            return self._long(word)
        return self._short(word)

    def _long(self, word: str) -> tuple[str, str | None, bool]:
        name, kind, letter, value = _match_long(word)
        if kind == "no" and value is not None:
            raise _Unsupported(f"-{letter}")
        if kind == "required" and value is None:
            value = self._take(letter, name)
        return letter, value, True

    def _short(self, word: str) -> tuple[str, str | None, bool]:
        letter, rest = word[1], word[2:]
        if letter in _SHORT_FLAGS:
            if rest:  # a cluster like -rq: hand the rest back for the next round
                self.index -= 1
                self.args[self.index] = "-" + rest
            return letter, None, False
        if letter not in _SHORT_WITH_ARG:
            raise _Unsupported(f"-{letter}")
        name = next(opt[0] for opt in _LONG_OPTS if opt[2] == letter)
        return letter, rest or self._take(letter, name), False

    def _take(self, letter: str, name: str) -> str:
        if self.index >= len(self.args):
            raise _MissingArgument(f"option '-{letter}'/'--{name}' requires an argument")
        self.index += 1
        return self.args[self.index - 1]


class _MissingArgument(Exception):
    pass


def _int_c(text: str, base10: bool = True) -> int | None:
    """strtol(text, base 10 or 0) with the whole text consumed, as virStrToLong_i."""
    from pyvirt.virsh.options import parse_number

    if base10:
        return parse_number(text, "int")
    try:
        value = int(text.strip(" \t\n\v\f\r"), 0)
    except ValueError:
        return None
    return value if -(1 << 31) <= value < (1 << 31) else None


def _apply(settings: Settings, letter: str, value: str | None, long: bool,
           out: TextIO, err: TextIO, progname: str) -> None:  # fmt: skip
    """Apply one global option, as virshParseArgv does (including its messages)."""
    if letter == "c":
        settings.uri = value
    elif letter == "d":
        _apply_debug(settings, value or "", long, err)
    elif letter == "e":
        _apply_escape(settings, value or "", err)
    elif letter in "kK":
        _apply_keepalive(settings, letter, value or "", long, err)
    elif letter == "l":
        settings.logfile = value
    elif letter in "qrt":
        setattr(settings, {"q": "quiet", "r": "readonly", "t": "timing"}[letter], True)
    elif letter == "h":
        out.write(usage(progname))
        raise Exit(0)
    else:  # -v, -V, --version[=short|long]
        if letter == "v" and value != "long":
            out.write(pyvirt_version() + "\n")
        else:
            out.write(long_version())
        raise Exit(0)


def _apply_debug(settings: Settings, value: str, long: bool, err: TextIO) -> None:
    level = _int_c(value)
    if level is None:
        _fail(err, f"option {'--debug' if long else '-d'} takes a numeric argument")
    elif not 0 <= level <= 4:
        err.write(f"error: ignoring debug level {level} out of range [0-4]\n")
    else:
        settings.debug = level


def _apply_escape(settings: Settings, value: str, err: TextIO) -> None:
    allowed = len(value) == 2 and value[0] == "^" and ("a" <= value[1] <= "z"
                                                      or "@" <= value[1] <= "_")
    if not (allowed or (len(value) == 1 and value != "^")):
        _fail(err, f"Invalid string '{value}' for escape sequence")
    settings.escape = value


def _apply_keepalive(settings: Settings, letter: str, value: str, long: bool,
                     err: TextIO) -> None:  # fmt: skip
    shown = ("--keepalive-interval" if letter == "k" else "--keepalive-count") if long \
        else f"-{letter}"
    number = _int_c(value, base10=False)
    if number is None:
        _fail(err, f"Invalid value for option {shown}")
    elif number < 0:
        _fail(err, f"option {shown} requires a positive integer argument")
    interval, count = settings.keepalive
    settings.keepalive = (number, count) if letter == "k" else (interval, number)


def _fail(err: TextIO, message: str) -> None:
    err.write(f"error: {message}\n")
    raise Exit(1)


def parse_global(args: list[str], out: TextIO, err: TextIO, progname: str) -> Settings:
    settings = Settings()
    getopt = _GetOpt(list(args))
    try:
        for letter, value, long in getopt:
            _apply(settings, letter, value, long, out, err, progname)
    except _Unsupported as exc:
        _fail(err, f"unsupported option '{exc}'. See --help.")
    except _MissingArgument as exc:
        _fail(err, str(exc))
    settings.words = getopt.args[getopt.index:]
    return settings


def resolve_uri(settings: Settings) -> str:
    return (settings.uri or os.environ.get("PYVIRT_DEFAULT_URI")
            or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI)  # fmt: skip


# -- texts -------------------------------------------------------------------------------------
def usage(progname: str) -> str:
    from pyvirt.virsh import output, registry

    head = (f"\n{progname} [options]... [<command_string>]\n"
            f"{progname} [options]... <command> [args...]\n\n"
            "  options:\n"
            "    -c | --connect=URI      hypervisor connection URI\n"
            "    -d | --debug=NUM        debug level [0-4]\n"
            "    -e | --escape <char>    set escape sequence for console\n"
            "    -h | --help             this help\n"
            "    -k | --keepalive-interval=NUM\n"
            "                            keepalive interval in seconds, 0 for disable\n"
            "    -K | --keepalive-count=NUM\n"
            "                            number of possible missed keepalive messages\n"
            "    -l | --log=FILE         output logging to file\n"
            "    -q | --quiet            quiet mode\n"
            "    -r | --readonly         connect readonly\n"
            "    -t | --timing           print timing information\n"
            "    -v                      short version\n"
            "    -V                      long version\n"
            "         --version[=TYPE]   version, TYPE is short or long (default short)\n"
            "  commands (non interactive mode):\n\n")  # fmt: skip
    groups = "".join(output.group_help(g.name, g.keyword, g.commands, colon=False) + "\n"
                     for g in registry.GROUPS)  # fmt: skip
    tail = ("\n  (specify help <group> for details about the commands in the group)\n"
            "\n  (specify help <command> for details about the command)\n\n")
    return head + groups + tail


def long_version() -> str:
    """``-V``: virsh's layout; pyvirsh names itself and the virsh it reproduces."""
    return (f"pyvirsh command line tool of pyvirt {pyvirt_version()}\n"
            f"Compatible with virsh of libvirt {VIRSH_VERSION}\n\n"
            "Compiled with support for:\n"
            " Hypervisors: QEMU/KVM\n"
            " Networking: Remote\n"
            " Storage:\n"
            " Miscellaneous: Readline\n")  # fmt: skip


# -- entry points ------------------------------------------------------------------------------
def main(argv: list[str] | None = None, connect: ConnectFactory | None = None, *,
         stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:  # fmt: skip
    """Run pyvirsh; returns the exit status. ``connect`` replaces the client (tests)."""
    args = list(sys.argv if argv is None else argv)
    progname = os.path.basename(args[0]) if args else "pyvirsh"
    if progname.endswith(".py"):  # python -m pyvirt.virsh
        progname = "pyvirsh"
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        settings = parse_global(args[1:], out, err, progname)
    except Exit as stop:
        return stop.status
    from pyvirt.virsh.shell import Shell

    shell = Shell(connect or default_connect, resolve_uri(settings),
                  readonly=settings.readonly, quiet=settings.quiet, timing=settings.timing,
                  progname=progname, stdout=out, stderr=err)  # fmt: skip
    try:
        return _session(shell, settings, stdin or sys.stdin)
    finally:
        shell.close()
        out.flush()


def _session(shell: Shell, settings: Settings, stdin: TextIO) -> int:
    from pyvirt.virsh.options import CommandError

    words = settings.words
    commands = shell.parse(words[0] if len(words) == 1 else words) if words else []
    if commands is None:
        return 1
    if settings.uri is not None:  # an explicit URI must work before anything runs
        try:
            shell.reconnect(settings.uri, settings.readonly)
        except CommandError as exc:
            shell.fail(exc)
            return 1
    if not words:
        shell.interact(stdin)
        return 0
    return 0 if shell.run(commands) else 1


def run() -> None:
    """Console-script entry point (``pyvirsh = "pyvirt.virsh.main:run"``)."""
    try:
        status = main()
    except KeyboardInterrupt:
        status = 1
    except BrokenPipeError:  # e.g. `pyvirsh list | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    # The connections are closed and nothing is registered with atexit: skip the
    # interpreter's teardown (module and thread cleanup), ~10 ms of every command.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: what it held is lost
            status = status or 1
    os._exit(status)


if __name__ == "__main__":
    run()
