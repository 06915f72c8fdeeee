"""pyvirsh against the stock virsh, byte for byte (stdout, stderr, exit status).

Both run the same command line: the stock virsh on libvirt's built-in ``test:///default``
driver, pyvirsh on the in-memory fake holding the same domain. Lines that depend on the
driver and not on virsh (CPU time, the test driver's security model) are dropped from
both sides before comparing. Skipped where no virsh is installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pyvirt.virsh import registry
from tests.fakes.fake_client import (
    Result,
    default_host,
    like_test_driver,
    run_pyvirsh,
    run_virsh,
)

pytestmark = pytest.mark.skipif(shutil.which("virsh") is None, reason="no stock virsh")

URI = "test:///default"
TEST_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
DRIVER_LINES = ("CPU time:", "Security model:", "Security DOI:", "Security label:")


def _scrub(result: Result) -> Result:
    lines = result.out.splitlines(keepends=True)
    kept = "".join(line for line in lines if not line.startswith(DRIVER_LINES))
    return Result(result.status, kept, result.err)


def both(args: list[str], stdin: str = "", progname: str = "virsh") -> tuple[Result, Result]:
    """(stock virsh, pyvirsh) for the same arguments; pyvirsh on the test-driver fake."""
    theirs = _scrub(run_virsh(args, stdin=stdin))
    ours = _scrub(run_pyvirsh(args, like_test_driver(), stdin=stdin, progname=progname))
    return theirs, ours


def assert_same(args: list[str], stdin: str = "") -> Result:
    theirs, ours = both(args, stdin)
    assert ours == theirs
    return ours


# -- output formats ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    "list", "list --all", "list --name", "list --uuid", "list --id", "list --table",
    "list --all --name --uuid --id", "list --id --name", "list --inactive", "list --transient",
    "list --persistent --transient", "list --state-running", "list --all --title",
    "list --managed-save", "list --table --name",
    "domstate test", "domstate --reason test", "domstate 1 --reason",
    "domid test", f"domid {TEST_UUID}", "domid 1", "domname 1", f"domname {TEST_UUID}",
    "domname test", "domuuid test", "domuuid 1", "domuuid nope",
    "dominfo test", "dominfo 1", f"dominfo {TEST_UUID}", "dominfo --domain=test",
    "uri", "hostname", "quit", "exit", "quit; uri", "uri; quit; uri",
])
def test_output(command: str) -> None:
    assert_same(["-c", URI, command])


@pytest.mark.parametrize("command", sorted(registry.COMMANDS))
def test_help_of_every_command(command: str) -> None:
    assert_same(["-c", URI, f"help {command}"])
    assert_same(["help", command])  # help needs no connection


@pytest.mark.parametrize("command", [
    "help nosuch", "help list extra", "help --bogus list", "help list --command dominfo",
    "dominfo --help", "dominfo test --help", "help --command list", "help help",
    "version --daemon --help", "help --command",
])
def test_help_variants(command: str) -> None:
    assert_same([command])


def test_help_of_groups_keeps_virsh_layout() -> None:
    """Groups list only pyvirsh's commands, each line as virsh formats it."""
    theirs = run_virsh(["help", "monitor"]).out.splitlines()
    ours = run_pyvirsh(["help", "monitor"]).out.splitlines()
    assert ours[0] == theirs[0]
    assert set(ours[1:]) <= set(theirs)
    global_ours = run_pyvirsh(["help"]).out
    assert global_ours.startswith("Grouped commands:\n\n Domain Management (help keyword "
                                  "'domain'):\n    autostart                      autostart "
                                  "a domain\n")  # fmt: skip
    assert set(global_ours.splitlines()) <= set(run_virsh(["help"]).out.splitlines())


# -- the parser and its errors -----------------------------------------------------------------
@pytest.mark.parametrize("command", [
    "foo", "lis", "list --bogus", "list --al", "dominfo", "dominfo test x", "dominfo --domain",
    "dominfo --domain=", "dominfo ''", "domstate --reason=x test", "list --all --all",
    "dominfo test --domain test", "dominfo --domain test --domain test", "list -a", "list --",
    "list --=x", "list ---x", "list --1", "dominfo -- test", "dominfo -- --all",
    "dominfo --domain=test=x", "list --all=", "migrate", "migrate test", "migrate --desturi x",
    "migrate-setmaxdowntime test", "migrate-setspeed test", "migrate-compcache test --size",
    "domid test; foo", "domid test; dominfo", "domid nope", "domname nope",
    "dominfo test;domid test", "dominfo 'test'", 'dominfo "te st"', "dominfo te\\st",
    "domid test ; domname 1", "domid test #comment", "domid test #x ; domid test",
    "  ;  ; domid test", 'domid "te"st', "domid te'st", 'domid "test', "domid test\\",
    "echo a b 'c d'", "echo --shell a 'b c'", "echo --shell \"it's\" '' x", "echo --xml '<a>&'",
    "echo --split a,b,,c d", "echo --err hi", "echo", "echo --str x y",
    "echo --shell 'a=b' 'x:y@z' '%^' '-a'", "echo --shell --split a", "echo a\\;b",
])
def test_parser(command: str) -> None:
    assert_same(["-c", URI, command])


def test_argv_mode_takes_words_as_they_are() -> None:
    assert_same(["-c", URI, "domid", "te st"])
    assert_same(["-c", URI, "domid test", "x"])
    assert_same(["-c", URI, "domid", "test;", "domname"])


@pytest.mark.parametrize("args", [
    ["-c"], ["--connect"], ["-k", "x", "uri"], ["-k", "-1", "uri"], ["-K", "x", "uri"],
    ["-K", "-1", "uri"], ["--ke", "5", "uri"], ["--k", "5", "uri"], ["-d"], ["-k"],
    ["--debug"], ["--help=x"], ["--quiet=x"], ["-x"], ["--x=1"], ["---x"],
    ["-c", URI, "-d", "5", "uri"], ["-c", URI, "-d", "-1", "uri"], ["-c", URI, "-d", "4x", "uri"],
    ["-c", URI, "--debug=x", "uri"], ["--connect=" + URI, "uri"], ["-c" + URI, "uri"],
    ["--conn", URI, "uri"], ["--read", "-c", URI, "uri"], ["-rq", "-c", URI, "uri"],
    ["-c", URI, "--", "uri"], ["-c", URI, "uri", "--"], ["-e", "x", "-c", URI, "uri"],
    ["-e", "^", "-c", URI, "uri"], ["-e", "^a", "-c", URI, "uri"], ["-e", "^^", "-c", URI, "uri"],
    ["-l", "/dev/null", "-c", URI, "uri"],
    ["-q", "-c", URI, "nosuch"], ["-c", URI, "-- dominfo test"],
])
def test_global_options(args: list[str]) -> None:
    assert_same(args)


def test_usage_header() -> None:
    theirs, ours = both(["-h"])
    head = theirs.out.split("  commands (non interactive mode):")[0]
    assert ours.out.startswith(head) and ours.status == theirs.status == 0
    assert ours.out.endswith("\n  (specify help <group> for details about the commands in the "
                             "group)\n\n  (specify help <command> for details about the "
                             "command)\n\n")  # fmt: skip


# -- quiet mode, interactive mode --------------------------------------------------------------
@pytest.mark.parametrize("command", [
    "list --all", "dominfo test", "suspend test; domstate test --reason", "list --name",
    "help list", "domid test", "uri; uri",
])
def test_quiet(command: str) -> None:
    assert_same(["-q", "-c", URI, command])


@pytest.mark.parametrize("stdin", [
    "uri\ndomid test; domname 1\nfoo\nquit\nuri\n", "uri\n", "foo\n", "exit\n", "",
    "dominfo nope\n", "\n\nlist\n", "list --bogus\nhelp domid\n",
])
@pytest.mark.parametrize("flags", [[], ["-q"], ["-r"]])
def test_interactive(stdin: str, flags: list[str]) -> None:
    assert_same([*flags, "-c", URI], stdin=stdin)


# -- lifecycle messages ------------------------------------------------------------------------
GUEST_XML = """<domain type='test'>
  <name>{name}</name>
  <uuid>11111111-2222-3333-4444-55555555555{n}</uuid>
  <memory>1048576</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type></os>
</domain>
"""


@pytest.fixture
def guest_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for n, name in enumerate(("g1", "a-very-long-domain-name-g2", "g3")):
        path = tmp_path / f"{name}.xml"
        path.write_text(GUEST_XML.format(name=name, n=n))
        files[name] = str(path)
    return files


def test_lifecycle_messages(guest_files: dict[str, str]) -> None:
    g1, g2 = guest_files["g1"], guest_files["a-very-long-domain-name-g2"]
    assert_same(["-c", URI, f"define {g1}; list --all; start g1; list; domstate --reason g1; "
                 "suspend g1; domstate --reason g1; list; resume g1; domstate --reason g1; "
                 "reboot g1; autostart g1; list --autostart --name; autostart --disable g1; "
                 "shutdown g1; domstate --reason g1; list --all; start g1; destroy 2; "
                 "domstate --reason g1; undefine g1; list --all"])  # fmt: skip
    assert_same(["-c", URI, f"create {g2}; list --all; list --all --uuid --name; "
                 f"destroy a-very-long-domain-name-g2; list --all"])  # fmt: skip
    assert_same(["-c", URI, f"define {g1}; define {g2}; list --all; list --inactive --name; "
                 "suspend 1; resume 1; destroy 1; list --all; start test; list"])  # fmt: skip


def test_lifecycle_errors(guest_files: dict[str, str], tmp_path: Path) -> None:
    g1 = guest_files["g1"]
    assert_same(["-c", URI, "start test"])
    assert_same(["-c", URI, f"define {g1}; destroy g1"])
    assert_same(["-c", URI, "define /nonexistent"])
    assert_same(["-c", URI, f"define {tmp_path}"])
    assert_same(["-c", URI, "create ''"])
    assert_same(["-c", URI, "destroy test; destroy test; list --all"])
    assert_same(["-c", URI, "undefine test; list --all --transient"])
    assert_same(["-c", URI, "shutdown test --mode foo"])
    assert_same(["-c", URI, "reboot nope --mode foo"])
    assert_same(["-c", URI, "shutdown test --mode acpi,"])
    assert_same(["-c", URI, "undefine test --nvram --keep-nvram"])
    assert_same(["-c", URI, "undefine test --wipe-storage"])
    assert_same(["-c", URI, "undefine test --delete-snapshots"])
    assert_same(["-c", URI, "undefine test --remove-all-storage"])
    assert_same(["-q", "-c", URI, f"define {g1}; start g1; suspend g1; resume g1; reboot g1; "
                 "shutdown g1; autostart g1; autostart --disable g1; undefine g1"])


# -- job and migration commands ----------------------------------------------------------------
@pytest.mark.parametrize("command", [
    "domjobinfo test", "domjobinfo test --completed", "domjobinfo test --rawstats",
    "domjobinfo nope --keep-completed", "domjobabort test", "migrate-getmaxdowntime test",
    "migrate-setmaxdowntime test 100", "migrate-setmaxdowntime test abc",
    "migrate-setmaxdowntime test -5", "migrate-setmaxdowntime test 0",
    "migrate-setmaxdowntime test ''", "migrate-setmaxdowntime nope abc",
    "migrate-compcache test", "migrate-compcache test --size 100",
    "migrate-compcache test --size abc", "migrate-compcache test 100", "migrate-getspeed test",
    "migrate-getspeed test --postcopy", "migrate-setspeed test 100", "migrate-setspeed test -1",
    "migrate-setspeed test 18446744073709551616", "migrate-setspeed test 5 x",
    "migrate-postcopy test", "domjobinfo test x",
])
def test_job_commands(command: str) -> None:
    assert_same(["-c", URI, command])


def test_connect_command() -> None:
    assert_same(["-c", URI, "connect; uri"])
    assert_same(["-c", URI, "connect test:///default; uri"])
    assert_same(["-c", URI, "connect --name test:///default --readonly; suspend test"])


def test_default_fake_matches_the_test_driver_domain() -> None:
    """The fake's starting domain is the test driver's, field by field."""
    ours = _scrub(run_pyvirsh(["-c", URI, "dominfo test; domstate --reason test"],
                              default_host()))  # fmt: skip
    assert ours == _scrub(run_virsh(["-c", URI, "dominfo test; domstate --reason test"]))
