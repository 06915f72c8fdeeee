"""Character device logs through the log writer's pipes: the argv and the driver agree.

The driver makes one pipe per log the argv names (``chardev_logs``) before it builds the
argv; every golden domain is built both ways: with files (the goldens) and with pipes
(``-add-fd`` + ``logfile=/dev/fdset/N``), and the two lists of logs must match.
"""

from __future__ import annotations

import dataclasses

import pytest

from pyvirt.qemu.argv import build_argv
from pyvirt.qemu.argv_chardev import ChardevLog, chardev_logs
from tests.unit.test_xml2argv import CASES, fill_runtime, launch_options, launch_paths, load

BUILT = [c for c in CASES if not c.startswith("err-")]
#: the first fd a test hands out (the driver's are whatever os.pipe2 returns)
FIRST_FD = 40


def chardev_values(argv: list[str], key: str) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        if arg == "-chardev":
            values += [part.split("=", 1)[1] for part in argv[i + 1].split(",")
                       if part.startswith(f"{key}=")]
    return values


def built(case: str, with_pipes: bool) -> tuple[list[str], list[ChardevLog]]:
    dom = load(case)
    fill_runtime(dom)
    paths = launch_paths(dom)
    logs = chardev_logs(dom, paths.serial_log_prefix)
    if with_pipes:
        fds = {log.path: FIRST_FD + i for i, log in enumerate(logs)}
        paths = dataclasses.replace(paths, log_fds=fds)
    return build_argv(dom, paths, launch_options(case)), logs


@pytest.mark.parametrize("case", BUILT)
def test_the_driver_knows_every_log_the_argv_writes(case: str) -> None:
    argv, logs = built(case, with_pipes=False)
    assert sorted(set(chardev_values(argv, "logfile"))) == sorted(log.path for log in logs)


@pytest.mark.parametrize("case", BUILT)
def test_with_pipes_every_log_is_an_fdset(case: str) -> None:
    argv, logs = built(case, with_pipes=True)
    logfiles = chardev_values(argv, "logfile")
    assert all(f.startswith("/dev/fdset/") for f in logfiles)
    assert set(chardev_values(argv, "logappend")) <= {"on"}  # QEMU cannot truncate a pipe
    add_fds = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-add-fd"]
    for logfile in logfiles:
        fd = int(logfile.rsplit("/", 1)[1])
        assert any(a.startswith(f"set={fd},fd={fd},opaque=") for a in add_fds), logfile
        # the fdset is declared before the chardev that opens it
        assert argv.index(next(a for a in add_fds if a.startswith(f"set={fd},"))) < \
            next(i for i, a in enumerate(argv) if f"logfile={logfile}" in a)
    assert len(add_fds) == len(logs)


def test_append_follows_the_xml() -> None:
    _, logs = built("serial-file-log", with_pipes=False)
    by_name = {log.path.rsplit("/", 1)[1]: log.append for log in logs}
    assert by_name == {"serialfile-ttyS0.log": True, "serialfile-ttyS1.log": False,
                       "serialfile-serial2.log": True}


def test_a_serial_console_without_serial_logs_as_serial0() -> None:
    argv, logs = built("serial-pty-console", with_pipes=True)
    assert [log.path.rsplit("/", 1)[1] for log in logs] == ["serialpty-serial0.log"]
    assert f"set={FIRST_FD},fd={FIRST_FD},opaque=serial0-log" in argv
