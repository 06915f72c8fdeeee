"""virsh's command-line grammar: option definitions, tokenizers and the command parser.

This mirrors ``vshCommandParse`` of libvirt 9.0 (``tools/vsh.c``) as observed with the
stock virsh, because scripts depend on its exact behaviour:

* a command line is ``NAME [ARG]...``; several commands may be joined with ``;`` or a
  newline when the line is one string (argv mode takes each word as it is);
* ``--opt value`` and ``--opt=value``; booleans refuse ``=``; an option given twice is an
  error ("option --x already seen");
* bare words fill, in table order, every non-boolean option that is not marked
  ``positional=False`` (libvirt's VSH_OFLAG_REQ_OPT) and was not given by name;
* ``--`` makes every following word data; a word must be ``--`` + alphanumeric to be an
  option, so ``-a`` and ``---x`` are data;
* option names must be spelled in full (virsh 9.0 accepts no abbreviation, neither for
  options nor for command names);
* ``--help`` on any command becomes ``help COMMAND``; ``help`` itself ignores unknown
  options and stray data.

The whole line is parsed before anything runs: one syntax error and no command runs.
Errors are reported through a callback as soon as they are found (as virsh does), then
:class:`ParseFailed` is raised.

Kept free of heavy imports: this module is on pyvirsh's start-up path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

BOOL = "bool"
STRING = "string"
INT = "int"
DATA = "data"
ARGV = "argv"
ALIAS = "alias"


class Opt:
    """One option of a command (libvirt's vshCmdOptDef)."""

    __slots__ = ("alias", "empty_ok", "help", "kind", "name", "positional", "required")

    def __init__(self, name: str, kind: str, help: str = "", *, required: bool = False,
                 positional: bool = True, empty_ok: bool = False,
                 alias: str | None = None) -> None:  # fmt: skip
        self.name = name
        self.kind = kind
        self.help = help
        self.required = required
        #: may a bare word fill it (libvirt: not VSH_OFLAG_REQ_OPT)
        self.positional = positional and kind not in (BOOL, ALIAS)
        self.empty_ok = empty_ok
        self.alias = alias

    def __repr__(self) -> str:
        return f"Opt({self.name!r}, {self.kind!r})"


def flag(name: str, help: str) -> Opt:
    return Opt(name, BOOL, help)


def string(name: str, help: str, *, positional: bool = True) -> Opt:
    return Opt(name, STRING, help, positional=positional)


def number(name: str, help: str, *, required: bool = False, positional: bool = True) -> Opt:
    return Opt(name, INT, help, required=required, positional=positional)


def data(name: str, help: str, *, required: bool = True) -> Opt:
    return Opt(name, DATA, help, required=required)


def argv(name: str, help: str) -> Opt:
    return Opt(name, ARGV, help)


def alias(name: str, target: str) -> Opt:
    return Opt(name, ALIAS, alias=target)


#: the option every command has implicitly
HELP_OPT = flag("help", "print help for this function")


class Command:
    """A command: its name, help texts, option table and (lazily imported) handler."""

    __slots__ = ("desc", "group", "handler", "help", "name", "noconnect", "opts")

    def __init__(self, name: str, help: str, desc: str, opts: tuple[Opt, ...], handler: str,
                 *, noconnect: bool = False) -> None:  # fmt: skip
        self.name = name
        self.help = help
        self.desc = desc
        self.opts = opts
        #: "module:function" under pyvirt.virsh, imported only when the command runs
        self.handler = handler
        self.noconnect = noconnect
        self.group = ""

    def option(self, name: str) -> Opt | None:
        for opt in self.opts:
            if opt.name == name:
                return opt
        return None


class CommandError(Exception):
    """A command failed: print each message as ``error: ...``, then the cause's message."""

    def __init__(self, *messages: str, cause: BaseException | None = None) -> None:
        super().__init__(*messages)
        self.messages = messages
        self.cause = cause


class ParseFailed(Exception):
    """The line has a syntax error; it has already been reported."""


# -- values ------------------------------------------------------------------------------------
_NUMBER = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")
_LIMITS = {"int": (-(1 << 31), (1 << 31) - 1), "uint": (0, (1 << 32) - 1),
           "ull": (0, (1 << 64) - 1)}  # fmt: skip


def parse_number(text: str, kind: str) -> int | None:
    """``text`` as C's strtol family reads it in base 10 (virStrToLong_*), else None.

    ``kind`` is ``int`` (signed 32-bit), ``uint``/``ull`` (the "positive" variants: any
    minus sign is refused, even ``-0``) or ``ulwrap`` (strtoul: ``-1`` wraps around).
    """
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    sign, digits = match.groups()
    value = int(digits)
    if kind == "ulwrap":
        if value > (1 << 64) - 1:
            return None
        return (-value) % (1 << 64) if sign == "-" else value
    if sign == "-":
        if kind != "int":
            return None
        value = -value
    low, high = _LIMITS[kind]
    return value if low <= value <= high else None


class ParsedCommand:
    """A parsed command with its option values (virsh's vshCmd)."""

    __slots__ = ("spec", "values")

    def __init__(self, spec: Command, values: dict[str, str | list[str]]) -> None:
        self.spec = spec
        #: option name → its text; True-ish "" for booleans; a list for ARGV options
        self.values = values

    @property
    def name(self) -> str:
        return self.spec.name

    def flag(self, name: str) -> bool:
        return name in self.values

    def string(self, name: str) -> str | None:
        """The option's text, None when absent; empty text is an error unless allowed."""
        value = self.values.get(name)
        if value is None:
            return None
        assert isinstance(value, str)
        opt = self.spec.option(name)
        if not value and not (opt is not None and opt.empty_ok):
            raise CommandError(f"Failed to get option '{name}': Option argument is empty")
        return value

    def string_quiet(self, name: str) -> str | None:
        """The option's text; absent and empty are the same (vshCommandOptStringQuiet)."""
        value = self.values.get(name)
        return value if isinstance(value, str) and value else None

    def number(self, name: str, kind: str = "int") -> int | None:
        """The option as a number (see :func:`parse_number`), None when absent."""
        value = self.values.get(name)
        if value is None:
            return None
        assert isinstance(value, str)
        result = parse_number(value, kind)
        if result is None:
            raise CommandError(
                f"Numeric value '{value}' for <{name}> option is malformed or out of range")
        return result

    def words(self, name: str) -> list[str]:
        value = self.values.get(name, [])
        return value if isinstance(value, list) else [value]


# -- tokenizers --------------------------------------------------------------------------------
ARG = 0
END_CMD = 1
END = 2


class StringTokens:
    """Words of one command string, shell-like (vshCommandStringGetArg).

    Blanks separate words; ``'...'`` is literal; ``"..."`` groups and honours backslash;
    a backslash escapes the next character outside single quotes; ``;`` and newline end a
    command; a word starting with ``#`` comments out the rest of the line.
    """

    def __init__(self, line: str) -> None:
        self.line = line
        self.pos = 0

    def next(self) -> tuple[int, str]:
        line, pos = self.line, self.pos
        while pos < len(line) and (line[pos] in " \t" or line.startswith("\\\n", pos)):
            pos += 2 if line[pos] == "\\" else 1
        if pos >= len(line):
            self.pos = pos
            return END, ""
        if line[pos] in ";\n":
            self.pos = pos + 1
            return END_CMD, ""
        if line[pos] == "#":
            end = line.find("\n", pos)
            self.pos = len(line) if end < 0 else end + 1
            return END_CMD, ""
        return ARG, self._word(pos)

    def _word(self, pos: int) -> str:
        line, out = self.line, []
        single = double = False
        while pos < len(line):
            char = line[pos]
            if not single and not double and char in " \t;\n":
                break
            if not double and char == "'":
                single = not single
            elif not single and char == '"':
                double = not double
            elif not single and char == "\\":
                pos += 1
                if pos >= len(line):
                    raise _TokenError("dangling \\")
                if line[pos] != "\n":  # backslash-newline disappears entirely
                    out.append(line[pos])
            else:
                out.append(char)
            pos += 1
        if double:
            raise _TokenError('missing "')
        self.pos = pos
        return "".join(out)


class ArgvTokens:
    """Words already split by the invoking shell: each is taken as it is."""

    def __init__(self, words: list[str]) -> None:
        self.words = iter(words)

    def next(self) -> tuple[int, str]:
        for word in self.words:
            return ARG, word
        return END, ""


class _TokenError(Exception):
    pass


Tokens = StringTokens | ArgvTokens
Report = Callable[[str], None]
Lookup = Callable[[str], "Command | None"]


# -- the parser --------------------------------------------------------------------------------
class _CommandState:
    """What has been parsed so far of one command."""

    def __init__(self, spec: Command, report: Report) -> None:
        self.spec = spec
        self.report = report
        self.values: dict[str, str | list[str]] = {}
        self.seen: set[str] = set()
        #: options a bare word may still fill, in table order
        self.need = [opt for opt in spec.opts if opt.positional]

    def store(self, opt: Opt, value: str) -> None:
        if opt.kind == ARGV:
            words = self.values.setdefault(opt.name, [])
            assert isinstance(words, list)
            words.append(value)
        else:
            self.values[opt.name] = value

    def add_data(self, word: str) -> None:
        if not self.need:
            if self.spec.name == "help":  # help ignores stray words
                return
            self.report(f"unexpected data '{word}'")
            raise ParseFailed
        opt = self.need[0]
        if opt.kind != ARGV:
            del self.need[0]
        self.seen.add(opt.name)
        self.store(opt, word)

    def add_option(self, text: str, tokens: Tokens) -> None:
        name, eq, inline = text.partition("=")
        value: str | None = inline if eq else None
        found = self._find(name, value)
        if found is None:
            if self.spec.name == "help":  # help ignores unknown options
                return
            raise ParseFailed
        opt, value = found
        if opt.kind == BOOL:
            if value is not None:
                self.report(f"invalid '=' after option --{opt.name}")
                raise ParseFailed
            self.store(opt, "")
            return
        if value is None:
            value = _option_value(opt, tokens, self.report)
        if opt.kind != ARGV and opt in self.need:
            self.need.remove(opt)
        self.store(opt, value)

    def _find(self, name: str, value: str | None) -> tuple[Opt, str | None] | None:
        """vshCmddefGetOption: resolve aliases, refuse repeats, report unknown names."""
        if name == HELP_OPT.name:
            return HELP_OPT, value
        for opt in self.spec.opts:
            if opt.name != name:
                continue
            if opt.kind == ALIAS:
                assert opt.alias is not None
                name, eq, preset = opt.alias.partition("=")
                if eq:
                    if value is not None:
                        self.report(f"invalid '=' after option --{opt.name}")
                        return None
                    value = preset
                continue  # an alias always names an option further down the table
            if name in self.seen and opt.kind != ARGV:
                self.report(f"option --{name} already seen")
                return None
            self.seen.add(name)
            return opt, value
        if self.spec.name != "help":
            self.report(f"command '{self.spec.name}' doesn't support option --{name}")
        return None

    def finish(self, lookup: Lookup) -> ParsedCommand:
        if HELP_OPT.name in self.values:  # COMMAND --help is help COMMAND
            helper = lookup("help")
            assert helper is not None
            return ParsedCommand(helper, {"command": self.spec.name})
        missing = [opt for opt in self.spec.opts if opt.required and opt.name not in self.seen]
        for opt in missing:
            shown = f"<{opt.name}>" if opt.kind in (DATA, ARGV) else f"--{opt.name}"
            self.report(f"command '{self.spec.name}' requires {shown} option")
        if missing:
            raise ParseFailed
        return ParsedCommand(self.spec, self.values)


def _option_value(opt: Opt, tokens: Tokens, report: Report) -> str:
    kind, word = _next(tokens, report)
    if kind != ARG:
        report(f"expected syntax: --{opt.name} <{'number' if opt.kind == INT else 'string'}>")
        raise ParseFailed
    return word


def _next(tokens: Tokens, report: Report) -> tuple[int, str]:
    try:
        return tokens.next()
    except _TokenError as exc:
        report(str(exc))
        raise ParseFailed from None


def _is_option_word(word: str) -> bool:
    return len(word) > 2 and word.startswith("--") and word[2].isascii() and word[2].isalnum()


def _parse_one(tokens: Tokens, lookup: Lookup, report: Report) -> tuple[ParsedCommand | None, int]:
    """One command up to ``;``, newline or the end; returns it and the token that ended it."""
    state: _CommandState | None = None
    data_only = False
    while True:
        kind, word = _next(tokens, report)
        if kind != ARG:
            return (state.finish(lookup) if state else None), kind
        if state is None:
            if word.startswith("#"):  # a comment: skip to the end of this command
                while kind == ARG:
                    kind, word = _next(tokens, report)
                return None, kind
            spec = lookup(word)
            if spec is None:
                report(f"unknown command: '{word}'")
                raise ParseFailed
            state = _CommandState(spec, report)
        elif data_only:
            state.add_data(word)
        elif _is_option_word(word):
            state.add_option(word[2:], tokens)
        elif word == "--":
            data_only = True
        else:
            state.add_data(word)


def parse(tokens: Tokens, lookup: Lookup, report: Report) -> list[ParsedCommand]:
    """Every command of a line; raises :class:`ParseFailed` after reporting an error."""
    commands: list[ParsedCommand] = []
    while True:
        command, ended_by = _parse_one(tokens, lookup, report)
        if command is not None:
            commands.append(command)
        if ended_by == END:
            return commands


def iter_visible(opts: tuple[Opt, ...]) -> Iterator[Opt]:
    """The options help shows: aliases are deliberately undocumented."""
    return (opt for opt in opts if opt.kind != ALIAS)
