"""QEMU probing: version floor, machine aliases."""

from __future__ import annotations

import pytest

from pyvirt.errors import ConfigUnsupportedError, OperationFailedError
from pyvirt.qemu.capabilities import check_version, parse_machines, parse_version, probe

MACHINE_HELP = """Supported machines are:
microvm              microvm (i386)
pc-i440fx-9.2        Standard PC (i440FX + PIIX, 1996)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-10.0)
pc-i440fx-10.0       Standard PC (i440FX + PIIX, 1996) (default)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)
pc-q35-10.0          Standard PC (Q35 + ICH9, 2009)
none                 empty machine
"""


def test_parse_version() -> None:
    text = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"
    assert parse_version(text) == (10, 0, 2)


def test_parse_version_garbage() -> None:
    with pytest.raises(OperationFailedError):
        parse_version("not qemu")


def test_qemu_7_2_refused_with_reason() -> None:
    with pytest.raises(ConfigUnsupportedError) as info:
        check_version("/usr/bin/qemu-system-x86_64", (7, 2, 22))
    message = str(info.value)
    assert "7.2.22" in message and ">= 9.0" in message and "migration" in message


def test_qemu_9_accepted() -> None:
    check_version("/x", (9, 0, 0))
    check_version("/x", (10, 0, 2))


def test_parse_machines() -> None:
    machines, aliases, default = parse_machines(MACHINE_HELP)
    assert aliases == {"pc": "pc-i440fx-10.0", "q35": "pc-q35-10.0"}
    assert default == "pc-i440fx-10.0"
    assert "pc-q35-10.0" in machines and "pc" not in machines


def test_probe_installed_qemu() -> None:
    caps = probe("/usr/bin/qemu-system-x86_64")
    assert caps.version >= (9, 0, 0)
    assert caps.machine_aliases["pc"] in caps.machines
    assert caps.version_number == caps.version[0] * 1_000_000 + caps.version[1] * 1000 + \
        caps.version[2]


def test_probe_missing_binary() -> None:
    with pytest.raises(OperationFailedError, match="cannot find QEMU binary"):
        probe("/nonexistent/qemu")
