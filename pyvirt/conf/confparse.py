"""libvirt's configuration file syntax (``virconf``) and a table-driven key schema.

The syntax is the one libvirtd.conf and qemu.conf use (``src/util/virconf.c``)::

    # a whole-line comment
    key = 42                      # trailing comment; integers may carry a sign
    name = "double quoted"        # no escapes: a string ends at its quote or the line
    other = 'single quoted'
    text = \"\"\"triple quoted,
    may span lines\"\"\"
    items = [ "a", "b",           # NOT allowed: a comment inside a list
              "c", ]              # lists span lines, a trailing comma is fine
    a = 1; b = 2                  # ';' separates statements too

Names start with a letter and continue with letters, digits and ``_``. Blanks are space
and tab only. Booleans are the integers 0 and 1 (checked by the schema, not the syntax).

Deviations from virconf, each deliberate:

* A key given twice is an error (virconf silently keeps the *first* one, which surprises
  anyone who appends an override at the end of the file).
* A file holding only blanks is empty (virconf reports "expecting a name").
* Integers longer than 20 digits are refused instead of wrapping around.
* Unterminated strings and unclosed lists are reported at the line where they open.

Every error is a :class:`~pyvirt.errors.ConfSyntaxError` carrying file and line.

The second half of the module is the schema machinery shared by ``daemon_conf`` and
``qemu_conf``: a :class:`Schema` is a table of :class:`Key` (name, value kind, default,
implemented or not, validator) plus cross-key checks. :func:`apply_schema` turns parsed
entries into field values; no key is ever parsed and then ignored: unknown keys and
not-yet-implemented keys set to a non-default value are errors.
"""

from __future__ import annotations

import difflib
import enum
import errno
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from pyvirt.errors import ConfSyntaxError, SystemError_

#: A parsed value: integer, string, or a (possibly nested) list of values.
ConfValue: TypeAlias = "int | str | tuple[ConfValue, ...]"

#: virconf's sanity limit on a configuration file's size.
MAX_CONFIG_FILE_SIZE = 10 * 1024 * 1024

_BLANKS = " \t"
_EOL = "\r\n"
_DIGITS = "0123456789"
_NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NAME_CHARS = _NAME_START + _DIGITS + "_"
#: More digits than any 64-bit integer has: refuse rather than build a huge int.
_MAX_DIGITS = 20


@dataclass(frozen=True)
class ConfEntry:
    """One ``key = value`` statement and the line its key is on."""

    key: str
    value: ConfValue
    line: int


# --------------------------------------------------------------------------- syntax


class _Parser:
    """Recursive-descent parser over the whole text (one instance per parse)."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.pos = 0
        self.end = len(text)

    def error(self, reason: str, pos: int | None = None) -> ConfSyntaxError:
        at = self.pos if pos is None else pos
        # Counting at error time keeps the hot path free of line bookkeeping.
        return ConfSyntaxError(self.path, self.text.count("\n", 0, at) + 1, reason)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < self.end else ""

    def skip(self, chars: str) -> None:
        while self.pos < self.end and self.text[self.pos] in chars:
            self.pos += 1

    def skip_to_eol(self) -> None:
        while self.pos < self.end and self.text[self.pos] not in _EOL:
            self.pos += 1

    def parse(self) -> list[ConfEntry]:
        entries: list[ConfEntry] = []
        self.skip(_BLANKS + _EOL)
        while self.pos < self.end:
            entry = self.statement()
            if entry is not None:
                entries.append(entry)
            self.separator()
            self.skip(_BLANKS + _EOL)
        return entries

    def statement(self) -> ConfEntry | None:
        if self.peek() == "#":
            self.skip_to_eol()
            return None
        start = self.pos
        key = self.name()
        self.skip(_BLANKS)
        if self.peek() != "=":
            raise self.error("expecting an assignment")
        self.pos += 1
        self.skip(_BLANKS)
        value = self.value()
        self.skip(_BLANKS)
        if self.peek() == "#":
            self.skip_to_eol()
        return ConfEntry(key, value, self.text.count("\n", 0, start) + 1)

    def separator(self) -> None:
        self.skip(_BLANKS)
        char = self.peek()
        if char == "" or char in _EOL:
            return
        if char == ";":
            self.pos += 1
            return
        raise self.error("expecting a separator")

    def name(self) -> str:
        start = self.pos
        if self.peek() == "" or self.peek() not in _NAME_START:
            raise self.error("expecting a name")
        self.skip(_NAME_CHARS)
        return self.text[start : self.pos]

    def value(self) -> ConfValue:
        char = self.peek()
        if char == "":
            raise self.error("expecting a value")
        if char in "\"'":
            return self.string()
        if char == "[":
            return self.list()
        if char in _DIGITS or char in "+-":
            return self.number()
        if char == "#":
            raise self.error("expecting a value (a comment cannot start here)")
        raise self.error("expecting a value")

    def string(self) -> str:
        start = self.pos
        if self.text.startswith('"""', start):
            close = self.text.find('"""', start + 3)
            if close < 0:
                raise self.error("unterminated string", start)
            self.pos = close + 3
            return self.text[start + 3 : close]
        quote = self.text[start]
        self.pos += 1
        while self.pos < self.end and self.text[self.pos] != quote:
            if self.text[self.pos] in _EOL:
                break
            self.pos += 1
        if self.peek() != quote:
            raise self.error("unterminated string", start)
        self.pos += 1
        return self.text[start + 1 : self.pos - 1]

    def list(self) -> tuple[ConfValue, ...]:
        start = self.pos
        self.pos += 1
        self.skip(_BLANKS + _EOL)
        items: list[ConfValue] = []
        if self.pos < self.end and self.peek() != "]":
            items.append(self.value())
            self.skip(_BLANKS + _EOL)
        while self.pos < self.end and self.peek() != "]":
            if self.peek() != ",":
                raise self.error("expecting a separator in list")
            self.pos += 1
            self.skip(_BLANKS + _EOL)
            if self.peek() == "]":
                break
            items.append(self.value())
            self.skip(_BLANKS + _EOL)
        if self.peek() != "]":
            raise self.error("list is not closed with ]", start)
        self.pos += 1
        return tuple(items)

    def number(self) -> int:
        start = self.pos
        if self.peek() in ("+", "-"):
            self.pos += 1
        digits_start = self.pos
        self.skip(_DIGITS)
        if self.pos == digits_start:
            raise self.error("unterminated number")
        if self.pos - digits_start > _MAX_DIGITS:
            raise self.error("number out of range", start)
        return int(self.text[start : self.pos])


def parse_entries(text: str, path: str) -> list[ConfEntry]:
    """Parse *text* into its statements, in file order (duplicates kept)."""
    return _Parser(text, path).parse()


def parse_conf(text: str, path: str) -> list[ConfEntry]:
    """Parse *text*; a key given twice is an error (see the module docstring)."""
    entries = parse_entries(text, path)
    first_line: dict[str, int] = {}
    for entry in entries:
        if entry.key in first_line:
            reason = f"duplicate key '{entry.key}' (first set on line {first_line[entry.key]})"
            raise ConfSyntaxError(path, entry.line, reason)
        first_line[entry.key] = entry.line
    return entries


def read_conf_text(path: str) -> str:
    """Read a configuration file (UTF-8, at most :data:`MAX_CONFIG_FILE_SIZE` bytes)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_FILE_SIZE + 1)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise SystemError_(f"Failed to open file '{path}': {reason}") from exc
    if len(data) > MAX_CONFIG_FILE_SIZE:
        reason = os.strerror(errno.EFBIG)
        raise SystemError_(f"Failed to open file '{path}': {reason}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfSyntaxError(path, line, "invalid UTF-8") from exc


def format_value(value: ConfValue) -> str:
    """Format *value* so that :func:`parse_conf` reads it back unchanged.

    Strings pick the first quoting that can hold them, as virconf does when it saves;
    a string that no quoting can hold raises ValueError.
    """
    if isinstance(value, bool):
        raise ValueError("booleans are written as the integers 0 and 1")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _format_string(value)
    return "[ " + ", ".join(format_value(item) for item in value) + " ]" if value else "[ ]"


def _format_string(value: str) -> str:
    single_line = not any(char in value for char in _EOL)
    if single_line and '"' not in value:
        return f'"{value}"'
    if single_line and "'" not in value:
        return f"'{value}'"
    if '"""' in value or value.endswith('"'):
        raise ValueError(f"string cannot be written in a configuration file: {value!r}")
    return f'"""{value}"""'


# --------------------------------------------------------------------------- schema


class Kind(enum.Enum):
    """The value type a key takes, with libvirt's rules (virConfGetValue*)."""

    BOOL = "0 or 1"
    INT = "integer"
    UINT = "unsigned integer"
    STRING = "string"
    STRING_LIST = "list of strings"
    STRING_OR_LIST = "string or list of strings"
    ANY = "any value"


class Status(enum.Enum):
    IMPLEMENTED = "implemented"
    #: Accepted only at its default; anything else is refused at start-up.
    NOT_YET = "not yet implemented"


#: A validator: (key name, typed value) -> stored value; raises ValueError(full reason).
Check = Callable[[str, Any], object]

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_UINT_MAX = 2**32 - 1


@dataclass(frozen=True)
class Key:
    """One configuration key. Implemented keys become a dataclass field of the same name.

    ``default`` is in file form (what one would write after ``=``), or None for "not set".
    """

    name: str
    kind: Kind
    default: ConfValue | None
    status: Status = Status.IMPLEMENTED
    check: Check | None = None

    @property
    def implemented(self) -> bool:
        return self.status is Status.IMPLEMENTED


@dataclass(frozen=True)
class CrossCheck:
    """A rule over several keys; returns the reason it fails, or None."""

    keys: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], str | None]


@dataclass(frozen=True)
class Schema:
    keys: Mapping[str, Key]
    cross_checks: tuple[CrossCheck, ...] = ()

    @classmethod
    def of(cls, keys: Iterable[Key], cross_checks: Iterable[CrossCheck] = ()) -> Schema:
        table: dict[str, Key] = {}
        for key in keys:
            if key.name in table:
                raise ValueError(f"key {key.name!r} listed twice in the schema")
            table[key.name] = key
        return cls(table, tuple(cross_checks))

    def defaults(self) -> dict[str, Any]:
        """The stored value of every implemented key when the file does not set it."""
        return {key.name: stored_default(key) for key in self.keys.values() if key.implemented}


def stored_default(key: Key) -> Any:
    if key.default is None:
        return None
    typed = coerce(key.name, key.kind, key.default)
    return key.check(key.name, typed) if key.check is not None else typed


def coerce(name: str, kind: Kind, raw: object) -> Any:
    """Check *raw* against *kind*; libvirt's messages. Raises ValueError."""
    if kind is Kind.ANY:
        return raw
    if kind is Kind.STRING:
        if not isinstance(raw, str):
            raise ValueError(f"expected a string for '{name}' parameter")
        return raw
    if kind in (Kind.STRING_LIST, Kind.STRING_OR_LIST):
        return _coerce_list(name, kind, raw)
    return _coerce_int(name, kind, raw)


def _coerce_list(name: str, kind: Kind, raw: object) -> tuple[str, ...]:
    if kind is Kind.STRING_OR_LIST and isinstance(raw, str):
        return (raw,)
    if isinstance(raw, tuple | list) and all(isinstance(item, str) for item in raw):
        return tuple(raw)
    if kind is Kind.STRING_OR_LIST:
        raise ValueError(f"expected a string or string list for '{name}' parameter")
    raise ValueError(f"expected a string list for '{name}' parameter")


def _coerce_int(name: str, kind: Kind, raw: object) -> int | bool:
    if kind is Kind.BOOL:
        if not isinstance(raw, int) or raw < 0:
            raise ValueError(f"expected a bool for '{name}' parameter")
        if raw > 1:
            raise ValueError(f"value for '{name}' parameter must be 0 or 1")
        return bool(raw)
    if kind is Kind.INT:
        if not isinstance(raw, int):
            raise ValueError(f"expected a signed integer for '{name}' parameter")
        if not _INT_MIN <= raw <= _INT_MAX:
            raise ValueError(f"value for '{name}' parameter must be in range {_INT_MIN}:{_INT_MAX}")
        return int(raw)
    if not isinstance(raw, int) or raw < 0:
        raise ValueError(f"expected an unsigned integer for '{name}' parameter")
    if raw > _UINT_MAX:
        raise ValueError(f"value for '{name}' parameter must be in range 0:{_UINT_MAX}")
    return int(raw)


def _unknown_key(name: str, schema: Schema) -> str:
    close = difflib.get_close_matches(name, list(schema.keys), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{name}'{hint}"


def convert_entry(schema: Schema, entry: ConfEntry, path: str) -> tuple[Key, Any]:
    """Validate one entry against the schema: (its key, the value to store)."""
    key = schema.keys.get(entry.key)
    if key is None:
        raise ConfSyntaxError(path, entry.line, _unknown_key(entry.key, schema))
    try:
        typed = coerce(key.name, key.kind, entry.value)
        if not key.implemented:
            if key.default is None or typed != coerce(key.name, key.kind, key.default):
                raise ValueError(f"'{key.name}' is not supported by pyvirtd yet")
            return key, None
        return key, key.check(key.name, typed) if key.check is not None else typed
    except ValueError as exc:
        raise ConfSyntaxError(path, entry.line, str(exc)) from exc


def apply_schema(
    schema: Schema,
    entries: Iterable[ConfEntry],
    path: str,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Field values for *entries* on top of *base* (default: the schema's defaults).

    Cross-key checks run on the merged values; a failure is reported at the line of the
    last-set key the rule involves (0 when none of them is in *entries*).
    """
    values = dict(schema.defaults() if base is None else base)
    lines: dict[str, int] = {}
    for entry in entries:
        key, stored = convert_entry(schema, entry, path)
        if key.implemented:
            values[key.name] = stored
            lines[key.name] = entry.line
    for rule in schema.cross_checks:
        reason = rule.check(values)
        if reason is not None:
            line = max((lines.get(name, 0) for name in rule.keys), default=0)
            raise ConfSyntaxError(path, line, reason)
    return values


def example_line(key: Key) -> str | None:
    """The commented-out line an example file shows for *key*: its default, if it has one
    (a key without a default is shown with a sample value instead)."""
    if key.default is None:
        return None
    return f"#{key.name} = {format_value(key.default)}"


# --------------------------------------------------------------- common validators
# Each takes (key name, typed value) and returns the value to store, or raises
# ValueError with the full reason (the caller adds file and line).

_HOST_LABEL_CHARS = frozenset(_NAME_CHARS.replace("_", "") + "-")


def check_positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"'{name}' must be greater than 0")
    return value


def check_port(name: str, value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{name}: port must be between 1 and 65535: {value}")
    return value


def check_keepalive_interval(name: str, value: int) -> int:
    # libvirt: -1 turns keepalive off; 0 would mean a timer firing continuously.
    if value == 0 or value < -1:
        raise ValueError(f"{name}: must be -1 (keepalive off) or a number of seconds >= 1")
    return value


def check_absolute_path(name: str, value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{name}: path must be absolute: '{value}'")
    return os.path.normpath(value)


def check_nonempty(name: str, value: str) -> str:
    if not value:
        raise ValueError(f"{name}: must not be empty")
    return value


def check_address(name: str, value: str) -> str:
    """An IPv4/IPv6 address (brackets around IPv6 allowed, as libvirt strips them) or a
    DNS host name; returns it without brackets. Names are not resolved (no I/O here)."""
    bracketed = value.startswith("[") and value.endswith("]")
    try:
        return str(ipaddress.ip_address(value[1:-1] if bracketed else value))
    except ValueError:
        pass
    if not bracketed and _is_hostname(value):
        return value
    raise ValueError(f"{name}: not an IP address or host name: '{value}'")


def _is_hostname(value: str) -> bool:
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        return False  # a malformed dotted quad, not a name
    return all(
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and set(label) <= _HOST_LABEL_CHARS
        for label in labels
    )
