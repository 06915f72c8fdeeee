"""libvirt's config syntax (virconf) and the shared schema machinery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvirt.conf.confparse import (
    MAX_CONFIG_FILE_SIZE,
    ConfEntry,
    ConfValue,
    CrossCheck,
    Key,
    Kind,
    Schema,
    Status,
    apply_schema,
    check_address,
    check_keepalive_interval,
    coerce,
    format_value,
    parse_conf,
    parse_entries,
    read_conf_text,
)
from pyvirt.errors import ConfSyntaxError, ErrorCode, ErrorDomain, SystemError_


def values(text: str) -> dict[str, ConfValue]:
    return {entry.key: entry.value for entry in parse_conf(text, "t.conf")}


# ------------------------------------------------------------------------ value forms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a = 0", 0),
        ("a = 1", 1),
        ("a = 42", 42),
        ("a = -7", -7),
        ("a = +7", 7),
        ("a = 007", 7),
        ('a = "text"', "text"),
        ("a = 'text'", "text"),
        ('a = ""', ""),
        ("a = ''", ""),
        ('a = "it\'s"', "it's"),
        ("a = 'say \"hi\"'", 'say "hi"'),
        ('a = "back\\slash \\n"', "back\\slash \\n"),  # no escape sequences
        ('a = "# not a comment"', "# not a comment"),
        ('a = """two\nlines"""', "two\nlines"),
        ('a = """has "quotes" and \'these\'"""', "has \"quotes\" and 'these'"),
        ("a = []", ()),
        ("a = [ ]", ()),
        ('a = [ "x" ]', ("x",)),
        ('a = ["x","y"]', ("x", "y")),
        ('a = [ "x", ]', ("x",)),
        ("a = [ 1, -2, 'three' ]", (1, -2, "three")),
        ("a = [ [ 1 ], [] ]", ((1,), ())),
        ("a=1", 1),
        ("a\t=\t1\t", 1),
        ("  a = 1", 1),
    ],
)
def test_value_forms(text: str, expected: ConfValue) -> None:
    assert values(text) == {"a": expected}


def test_multiline_list_with_trailing_comma_and_blank_lines() -> None:
    text = 'paths = [\n    "/a",\n\n    "/b",\n    ]\nnext = 1\n'
    entries = parse_conf(text, "t.conf")
    assert entries == [ConfEntry("paths", ("/a", "/b"), 1), ConfEntry("next", 1, 6)]


def test_comments_and_blank_lines() -> None:
    text = "# header\n\n   # indented comment\nkey = 1 # trailing\nother = 'x'# tight\n#\n"
    assert values(text) == {"key": 1, "other": "x"}


def test_names_take_letters_digits_underscores() -> None:
    assert values("Key_2_x = 1") == {"Key_2_x": 1}


def test_semicolon_separates_statements() -> None:
    assert values("a = 1; b = 2;\nc = 3") == {"a": 1, "b": 2, "c": 3}


def test_crlf_line_ends() -> None:
    entries = parse_conf("a = 1\r\nb = [ 1,\r\n 2 ]\r\nc = 3\r\n", "t.conf")
    assert [(e.key, e.value, e.line) for e in entries] == [
        ("a", 1, 1),
        ("b", (1, 2), 2),
        ("c", 3, 4),
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "   \t\n  ", "# only\n# comments"])
def test_empty_files(text: str) -> None:
    assert parse_conf(text, "t.conf") == []


def test_line_numbers_count_triple_quoted_lines() -> None:
    entries = parse_conf('a = """1\n2\n3"""\nb = 1\n', "t.conf")
    assert [e.line for e in entries] == [1, 4]


def test_file_without_final_newline() -> None:
    assert values("a = 1\nb = 'x'") == {"a": 1, "b": "x"}


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("a =", 1, "expecting a value"),
        ("a = \nb = 1", 1, "expecting a value"),
        ("a = yes", 1, "expecting a value"),
        ("a = # nothing", 1, "expecting a value (a comment cannot start here)"),
        ('ok = 1\na = "open', 2, "unterminated string"),
        ("a = 'open\n'", 1, "unterminated string"),
        ('a = "line\nbreak"', 1, "unterminated string"),
        ('x = 1\na = """never\nclosed\n', 2, "unterminated string"),
        ("a 1", 1, "expecting an assignment"),
        ("a-b = 1", 1, "expecting an assignment"),
        ("1a = 1", 1, "expecting a name"),
        ("_a = 1", 1, "expecting a name"),
        ("= 1", 1, "expecting a name"),
        ("a = 1 2", 1, "expecting a separator"),
        ("a = 12abc", 1, "expecting a separator"),
        ("a = 'x' 'y'", 1, "expecting a separator"),
        ("a = -", 1, "unterminated number"),
        ("a = +x", 1, "unterminated number"),
        ("a = 1" + "0" * 30, 1, "number out of range"),
        ("a = [ 1 2 ]", 1, "expecting a separator in list"),
        ("a = [ 1,\n 2\n 3 ]", 3, "expecting a separator in list"),
        ("a = [ , ]", 1, "expecting a value"),
        ("a = [ 1, , ]", 1, "expecting a value"),
        ('a = [ "x", # no comments here\n "y" ]', 1, "expecting a value"),
        ("x = 1\na = [ 1,\n 2,\n", 4, "expecting a value"),
        ("x = 1\na = [ 1\n", 2, "list is not closed with ]"),
        ("a = 1\nb = 2\na = 3", 3, "duplicate key 'a' (first set on line 1)"),
    ],
)
def test_syntax_errors(text: str, line: int, reason: str) -> None:
    with pytest.raises(ConfSyntaxError) as info:
        parse_conf(text, "/etc/pyvirt/t.conf")
    err = info.value
    assert (err.path, err.line) == ("/etc/pyvirt/t.conf", line)
    assert err.reason.startswith(reason)
    assert str(err) == f"configuration file syntax error: /etc/pyvirt/t.conf:{line}: {err.reason}"
    assert (err.code, err.domain) == (ErrorCode.CONF_SYNTAX, ErrorDomain.CONF)


def test_parse_entries_keeps_duplicates_in_order() -> None:
    assert [e.value for e in parse_entries("a = 1\na = 2", "t")] == [1, 2]


# ----------------------------------------------------------------------- file reading


def test_read_conf_text(tmp_path: Path) -> None:
    path = tmp_path / "x.conf"
    path.write_text("a = 'é'\n", encoding="utf-8")
    assert read_conf_text(str(path)) == "a = 'é'\n"


def test_read_missing_file_is_a_system_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.conf")
    with pytest.raises(SystemError_, match=r"Failed to open file '.*nope\.conf': No such file"):
        read_conf_text(missing)


def test_read_refuses_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "big.conf"
    path.write_bytes(b"#" * (MAX_CONFIG_FILE_SIZE + 1))
    with pytest.raises(SystemError_, match="too large"):
        read_conf_text(str(path))


def test_read_reports_invalid_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_bytes(b"a = 1\nb = '\xff'\n")
    with pytest.raises(ConfSyntaxError) as info:
        read_conf_text(str(path))
    assert (info.value.line, info.value.reason) == (2, "invalid UTF-8")


# ------------------------------------------------------------------------- formatting


def _representable(text: str) -> bool:
    try:
        format_value(text)
    except ValueError:
        return False
    return True


# Syntax characters are drawn often, so quoting choices and multi-line strings get exercised.
_strings = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]) | st.sampled_from("\"'\r\n#[],;= \t"),
    max_size=30,
).filter(_representable)
_scalars = st.integers(min_value=-(2**63), max_value=2**64 - 1) | _strings
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=12
)


@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True), _values, max_size=5
    )
)
def test_format_round_trips(settings: dict[str, ConfValue]) -> None:
    text = "".join(f"{key} = {format_value(value)}  # c\n" for key, value in settings.items())
    assert values(text) == settings


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (5, "5"),
        (-5, "-5"),
        ("plain", '"plain"'),
        ('say "x"', "'say \"x\"'"),
        ("both ' and \"x", '"""both \' and "x"""'),
        ("two\nlines", '"""two\nlines"""'),
        ((), "[ ]"),
        (("a", 1), '[ "a", 1 ]'),
    ],
)
def test_format_value(value: ConfValue, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize("value", ["a'b\"", 'x"""y\n', 'line\nends with quote"', True])
def test_format_value_refuses_unwritable(value: Any) -> None:
    with pytest.raises(ValueError):
        format_value(value)


# -------------------------------------------------------------------------- coercion


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        (Kind.BOOL, 0, False),
        (Kind.BOOL, 1, True),
        (Kind.INT, -1, -1),
        (Kind.INT, 2**31 - 1, 2**31 - 1),
        (Kind.UINT, 0, 0),
        (Kind.UINT, 2**32 - 1, 2**32 - 1),
        (Kind.STRING, "x", "x"),
        (Kind.STRING_LIST, (), ()),
        (Kind.STRING_LIST, ("a", "b"), ("a", "b")),
        (Kind.STRING_LIST, ["a"], ("a",)),
        (Kind.STRING_OR_LIST, "a", ("a",)),
        (Kind.STRING_OR_LIST, ("a",), ("a",)),
        (Kind.ANY, (1, "x"), (1, "x")),
    ],
)
def test_coerce_accepts(kind: Kind, raw: object, expected: object) -> None:
    assert coerce("k", kind, raw) == expected


@pytest.mark.parametrize(
    ("kind", "raw", "message"),
    [
        (Kind.BOOL, 2, "value for 'k' parameter must be 0 or 1"),
        (Kind.BOOL, -1, "expected a bool for 'k' parameter"),
        (Kind.BOOL, "1", "expected a bool for 'k' parameter"),
        (Kind.INT, "1", "expected a signed integer for 'k' parameter"),
        (Kind.INT, 2**31, "value for 'k' parameter must be in range -2147483648:2147483647"),
        (Kind.UINT, -1, "expected an unsigned integer for 'k' parameter"),
        (Kind.UINT, 2**32, "value for 'k' parameter must be in range 0:4294967295"),
        (Kind.UINT, (), "expected an unsigned integer for 'k' parameter"),
        (Kind.STRING, 1, "expected a string for 'k' parameter"),
        (Kind.STRING, ("a",), "expected a string for 'k' parameter"),
        (Kind.STRING_LIST, "a", "expected a string list for 'k' parameter"),
        (Kind.STRING_LIST, ("a", 1), "expected a string list for 'k' parameter"),
        (Kind.STRING_OR_LIST, 1, "expected a string or string list for 'k' parameter"),
    ],
)
def test_coerce_refuses(kind: Kind, raw: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        coerce("k", kind, raw)
    assert str(info.value) == message


# ---------------------------------------------------------------------------- schema


def _double(name: str, value: int) -> int:
    if value > 100:
        raise ValueError(f"{name}: too big")
    return value * 2


_SCHEMA = Schema.of(
    [
        Key("low", Kind.UINT, 1, check=_double),
        Key("high", Kind.UINT, 10),
        Key("name", Kind.STRING, None),
        Key("later", Kind.BOOL, 0, Status.NOT_YET),
        Key("someday", Kind.STRING, None, Status.NOT_YET),
    ],
    [CrossCheck(("low", "high"), lambda v: "low > high" if v["low"] > v["high"] else None)],
)


def _apply(text: str) -> dict[str, Any]:
    return apply_schema(_SCHEMA, parse_conf(text, "s.conf"), "s.conf")


def _apply_error(text: str) -> tuple[int, str]:
    with pytest.raises(ConfSyntaxError) as info:
        _apply(text)
    return info.value.line, info.value.reason


def test_schema_defaults_only_cover_implemented_keys() -> None:
    assert _SCHEMA.defaults() == {"low": 2, "high": 10, "name": None}
    assert _apply("") == {"low": 2, "high": 10, "name": None}


def test_schema_stores_checked_values() -> None:
    assert _apply("low = 3\nname = 'n'") == {"low": 6, "high": 10, "name": "n"}


def test_schema_check_error_has_line() -> None:
    assert _apply_error("\n\nlow = 101") == (3, "low: too big")


def test_schema_type_error_has_line() -> None:
    assert _apply_error("name = 'x'\nhigh = 'x'") == (
        2,
        "expected an unsigned integer for 'high' parameter",
    )


def test_schema_unknown_key_suggests() -> None:
    assert _apply_error("# c\nhihg = 1") == (2, "unknown key 'hihg' (did you mean 'high'?)")
    assert _apply_error("zzz = 1") == (1, "unknown key 'zzz'")


def test_schema_not_yet_keys_accept_only_their_default() -> None:
    assert _apply("later = 0") == _apply("")
    assert _apply_error("later = 1") == (1, "'later' is not supported by pyvirtd yet")
    assert _apply_error("someday = ''") == (1, "'someday' is not supported by pyvirtd yet")


def test_schema_not_yet_keys_are_type_checked_first() -> None:
    assert _apply_error("later = 'yes'") == (1, "expected a bool for 'later' parameter")


def test_cross_check_reports_latest_line_of_involved_keys() -> None:
    assert _apply_error("high = 3\n\nlow = 4") == (3, "low > high")
    assert _apply_error("low = 4\nname = 'x'\nhigh = 3") == (3, "low > high")
    assert _apply_error("low = 50") == (1, "low > high")


def test_apply_on_a_base() -> None:
    base = {"low": 2, "high": 10, "name": "kept"}
    entries = [ConfEntry("high", 20, 0)]
    assert apply_schema(_SCHEMA, entries, "<o>", base) == {"low": 2, "high": 20, "name": "kept"}


def test_schema_refuses_duplicate_keys() -> None:
    with pytest.raises(ValueError):
        Schema.of([Key("a", Kind.UINT, 1), Key("a", Kind.UINT, 2)])


# ------------------------------------------------------------------ common validators


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.168.0.1", "192.168.0.1"),
        ("::", "::"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("host.example.com", "host.example.com"),
        ("host-1", "host-1"),
        ("host.example.com.", "host.example.com."),
    ],
)
def test_check_address_accepts(value: str, expected: str) -> None:
    assert check_address("k", value) == expected


@pytest.mark.parametrize(
    "value", ["", "256.1.1.1", "1.2.3", "-host", "host_name", "a..b", "[host]", "a b", "x" * 64]
)
def test_check_address_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or host name"):
        check_address("k", value)


@pytest.mark.parametrize(("value", "ok"), [(-1, True), (1, True), (0, False), (-2, False)])
def test_check_keepalive_interval(value: int, ok: bool) -> None:
    if ok:
        assert check_keepalive_interval("k", value) == value
    else:
        with pytest.raises(ValueError):
            check_keepalive_interval("k", value)
