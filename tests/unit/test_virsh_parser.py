"""pyvirsh's grammar: tokenizer, command parser, numbers, global options."""

from __future__ import annotations

import io

import pytest

from pyvirt.virsh import main as virsh_main
from pyvirt.virsh import output, registry
from pyvirt.virsh.options import (
    ALIAS,
    ARG,
    BOOL,
    END,
    END_CMD,
    ArgvTokens,
    CommandError,
    ParsedCommand,
    ParseFailed,
    StringTokens,
    parse,
    parse_number,
)


def words(line: str) -> list[list[str]]:
    """The words of each command of a line."""
    tokens, commands, current = StringTokens(line), [], []
    while True:
        kind, word = tokens.next()
        if kind == ARG:
            current.append(word)
            continue
        commands.append(current)
        current = []
        if kind == END:
            return [c for c in commands if c]


def parse_line(source: str | list[str]) -> tuple[list[ParsedCommand], list[str]]:
    errors: list[str] = []
    tokens = StringTokens(source) if isinstance(source, str) else ArgvTokens(source)
    try:
        return parse(tokens, registry.find_command, errors.append), errors
    except ParseFailed:
        return [], errors


def one(source: str | list[str]) -> ParsedCommand:
    commands, errors = parse_line(source)
    assert not errors and len(commands) == 1, errors
    return commands[0]


def failure(source: str | list[str]) -> list[str]:
    commands, errors = parse_line(source)
    assert commands == [] and errors
    return errors


# -- tokenizer ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("line", "expected"), [
    ("list --all", [["list", "--all"]]),
    ("  list\t--all  ", [["list", "--all"]]),
    ("a 'b c' \"d e\" f\\ g", [["a", "b c", "d e", "f g"]]),
    ("a 'it'\\''s'", [["a", "it's"]]),
    ('a "x\\"y" \'x\\y\'', [["a", 'x"y', "x\\y"]]),
    ("a;b ; c", [["a"], ["b"], ["c"]]),
    ("a 'x;y' x\\;y", [["a", "x;y", "x;y"]]),
    ("a\nb", [["a"], ["b"]]),
    ("a \\\nb", [["a", "b"]]),
    ("a #comment ; b\nc", [["a"], ["c"]]),
    ("a b#c", [["a", "b#c"]]),
    ("a ''", [["a", ""]]),
    ("a 'unterminated", [["a", "unterminated"]]),
])
def test_tokenizer(line: str, expected: list[list[str]]) -> None:
    assert words(line) == expected


@pytest.mark.parametrize(("line", "message"), [('a "open', 'missing "'), ("a b\\", "dangling \\")])
def test_tokenizer_errors(line: str, message: str) -> None:
    assert failure(f"echo {line}") == [message]


def test_token_kinds() -> None:
    tokens = StringTokens("a;")
    assert [tokens.next(), tokens.next(), tokens.next()] == [(ARG, "a"), (END_CMD, ""), (END, "")]
    assert ArgvTokens(["a b"]).next() == (ARG, "a b")


# -- the parser --------------------------------------------------------------------------------
def test_bare_words_fill_positional_options_in_table_order() -> None:
    cmd = one("migrate --live g1 qemu+tcp://h/system tcp://h:49152")
    assert cmd.values == {"live": "", "domain": "g1", "desturi": "qemu+tcp://h/system",
                          "migrateuri": "tcp://h:49152"}  # fmt: skip
    assert one("reboot g1 acpi").values == {"domain": "g1", "mode": "acpi"}


def test_named_options_are_skipped_by_bare_words() -> None:
    cmd = one("migrate --desturi qemu:///x g1 tcp://h")
    assert (cmd.values["domain"], cmd.values["desturi"], cmd.values["migrateuri"]) == \
        ("g1", "qemu:///x", "tcp://h")


def test_option_value_forms() -> None:
    assert one("dominfo --domain=g1").values == {"domain": "g1"}
    assert one("dominfo --domain g1").values == {"domain": "g1"}
    assert one("dominfo --domain=a=b").values == {"domain": "a=b"}
    assert one("dominfo --domain=").values == {"domain": ""}
    assert one(["dominfo", "--domain", "--all"]).values == {"domain": "--all"}


@pytest.mark.parametrize(("line", "errors"), [
    ("nosuch", ["unknown command: 'nosuch'"]),
    ("lis", ["unknown command: 'lis'"]),
    ("list --bogus", ["command 'list' doesn't support option --bogus"]),
    ("list --al", ["command 'list' doesn't support option --al"]),
    ("dominfo", ["command 'dominfo' requires <domain> option"]),
    ("migrate", ["command 'migrate' requires <domain> option",
                 "command 'migrate' requires <desturi> option"]),
    ("migrate-setmaxdowntime g1", ["command 'migrate-setmaxdowntime' requires --downtime option"]),
    ("dominfo g1 x", ["unexpected data 'x'"]),
    ("list -a", ["unexpected data '-a'"]),
    ("list ---x", ["unexpected data '---x'"]),
    ("list --all --all", ["option --all already seen"]),
    ("dominfo g1 --domain g1", ["option --domain already seen"]),
    ("domstate --reason=x g1", ["invalid '=' after option --reason"]),
    ("dominfo --domain", ["expected syntax: --domain <string>"]),
    ("migrate-compcache g1 --size", ["expected syntax: --size <number>"]),
    ("migrate-compcache g1 100", ["unexpected data '100'"]),
    ("dumpxml g1 /x", ["unexpected data '/x'"]),
    ("dominfo --domain; uri", ["expected syntax: --domain <string>"]),
    ("uri; nosuch", ["unknown command: 'nosuch'"]),
])
def test_syntax_errors(line: str, errors: list[str]) -> None:
    assert failure(line) == errors


def test_double_dash_makes_the_rest_data() -> None:
    assert one("dominfo -- --all").values == {"domain": "--all"}
    assert one("list --").values == {}
    assert failure("list -- --all") == ["unexpected data '--all'"]


def test_aliases() -> None:
    assert one("migrate --tunneled g1 x").values["tunnelled"] == ""
    assert one("undefine g1 --delete-snapshots").flag("delete-storage-volume-snapshots")
    assert failure("migrate --tunneled --tunnelled g1 x") == ["option --tunnelled already seen"]


def test_help_option_becomes_help_command() -> None:
    cmd = one("dominfo g1 --help")
    assert (cmd.name, cmd.values) == ("help", {"command": "dominfo"})
    assert one("migrate --help").values == {"command": "migrate"}  # required options waived


def test_help_ignores_stray_options_and_data() -> None:
    assert one("help --bogus list extra").values == {"command": "list"}
    commands, errors = parse_line("help list --command dominfo")
    assert errors == ["option --command already seen"] and commands[0].values == {
        "command": "list"}


def test_several_commands_and_comments() -> None:
    commands, errors = parse_line("uri; hostname # ; version\n list")
    assert not errors and [c.name for c in commands] == ["uri", "hostname", "list"]
    assert parse_line(["#", "uri"]) == ([], [])


def test_argv_words_are_not_split() -> None:
    assert one(["domid", "a b;c"]).values == {"domain": "a b;c"}
    assert failure(["domid test", "x"]) == ["unknown command: 'domid test'"]


def test_echo_collects_every_word() -> None:
    assert one("echo a --str b c").words("string") == ["a", "b", "c"]


# -- option values -----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "kind", "value"), [
    ("5", "int", 5), (" +5", "int", 5), ("-5", "int", -5), ("2147483647", "int", 2**31 - 1),
    ("2147483648", "int", None), ("-2147483649", "int", None), ("5 ", "int", None),
    ("0x5", "int", None), ("", "int", None), ("5abc", "int", None), ("05", "int", 5),
    ("4294967295", "uint", 2**32 - 1), ("4294967296", "uint", None), ("-0", "uint", None),
    ("-1", "ull", None), ("18446744073709551615", "ull", 2**64 - 1),
    ("18446744073709551616", "ull", None), ("-1", "ulwrap", 2**64 - 1),
    ("-18446744073709551615", "ulwrap", 1), ("18446744073709551616", "ulwrap", None),
])
def test_numbers_read_like_strtol(text: str, kind: str, value: int | None) -> None:
    assert parse_number(text, kind) == value


def test_value_errors_happen_when_the_command_reads_them() -> None:
    cmd = one("migrate-setmaxdowntime g1 abc")
    with pytest.raises(CommandError, match="Numeric value 'abc' for <downtime> option is "
                       "malformed or out of range"):  # fmt: skip
        cmd.number("downtime", "ull")
    with pytest.raises(CommandError, match="Failed to get option 'domain': Option argument "
                       "is empty"):  # fmt: skip
        one("dominfo ''").string("domain")
    assert one("help ''").string_quiet("command") is None


# -- the command table -------------------------------------------------------------------------
def test_tables_are_consistent() -> None:
    for cmd, opt in registry.all_options():
        assert opt.name != "help", cmd.name
        if opt.kind == ALIAS:
            target = opt.alias or ""
            later = cmd.opts[cmd.opts.index(opt) + 1:]
            assert any(o.name == target.partition("=")[0] for o in later), (cmd.name, opt.name)
        if opt.kind == BOOL:
            assert not opt.required and not opt.positional
    for name, cmd in registry.COMMANDS.items():
        names = [opt.name for opt in cmd.opts]
        assert len(names) == len(set(names)) and cmd.name == name
        module, _, function = cmd.handler.partition(":")
        imported = __import__(f"pyvirt.virsh.{module}", fromlist=[function])
        assert callable(getattr(imported, function)), cmd.handler


def test_command_help_layout() -> None:
    text = output.command_help(registry.COMMANDS["migrate-setmaxdowntime"])
    assert "    migrate-setmaxdowntime <domain> <downtime>\n" in text
    assert "    [--downtime] <number>  maximum tolerable downtime" in text
    echo = output.command_help(registry.COMMANDS["echo"])
    assert "[--err] [<string>]...\n" in echo and "    <string>         arguments" in echo


# -- global options ----------------------------------------------------------------------------
def settings(*args: str) -> virsh_main.Settings:
    return virsh_main.parse_global(list(args), io.StringIO(), io.StringIO(), "pyvirsh")


def test_global_options() -> None:
    got = settings("-rq", "-ctest:///x", "--timing", "-d", "2", "list", "--all")
    assert (got.readonly, got.quiet, got.timing, got.uri, got.debug) == (
        True, True, True, "test:///x", 2)
    assert got.words == ["list", "--all"]
    assert settings("--conn=a", "--read", "--", "-x").words == ["-x"]
    assert settings("--conn", "a", "uri").uri == "a"
    assert settings("-k", "0x10", "-K", "3").keepalive == (16, 3)
    assert settings("-e", "^a").escape == "^a" and settings("-l", "/dev/null").logfile


@pytest.mark.parametrize(("args", "message"), [
    (["--ke", "5"], "error: unsupported option '--ke'. See --help.\n"),
    (["-z"], "error: unsupported option '-z'. See --help.\n"),
    (["--quiet=1"], "error: unsupported option '-q'. See --help.\n"),
    (["-c"], "error: option '-c'/'--connect' requires an argument\n"),
    (["--debug=x"], "error: option --debug takes a numeric argument\n"),
    (["-K", "-2"], "error: option -K requires a positive integer argument\n"),
    (["--keepalive-count=x"], "error: Invalid value for option --keepalive-count\n"),
    (["-e", "ab"], "error: Invalid string 'ab' for escape sequence\n"),
])
def test_global_option_errors(args: list[str], message: str) -> None:
    err = io.StringIO()
    with pytest.raises(virsh_main.Exit) as stop:
        virsh_main.parse_global(args, io.StringIO(), err, "pyvirsh")
    assert stop.value.status == 1 and err.getvalue() == message


def test_versions() -> None:
    out = io.StringIO()
    with pytest.raises(virsh_main.Exit):
        virsh_main.parse_global(["-v"], out, io.StringIO(), "pyvirsh")
    assert out.getvalue() == virsh_main.pyvirt_version() + "\n"
    out = io.StringIO()
    with pytest.raises(virsh_main.Exit):
        virsh_main.parse_global(["--version=long"], out, io.StringIO(), "pyvirsh")
    assert out.getvalue().startswith("pyvirsh command line tool of pyvirt ")


def test_uri_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYVIRT_DEFAULT_URI", raising=False)
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    assert virsh_main.resolve_uri(settings()) == "qemu:///system"
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+tcp://b/system")
    assert virsh_main.resolve_uri(settings()) == "qemu+tcp://b/system"
    monkeypatch.setenv("PYVIRT_DEFAULT_URI", "qemu+tcp://a/system")
    assert virsh_main.resolve_uri(settings()) == "qemu+tcp://a/system"
    assert virsh_main.resolve_uri(settings("-c", "test:///default")) == "test:///default"
