"""QEMU runs unprivileged and sandboxed (issue 11), checked on live processes.

A real pyvirtd starts real QEMUs, through pyvirsh's library and through the stock virsh;
``/proc/PID/status`` is the oracle: every uid is QEMU's user, every gid its group, no
supplementary groups, ``NoNewPrivs: 1`` and ``Seccomp: 2`` (a filter). A custom
``<emulator>`` never runs as root, a ``<serial type='file'>`` cannot write a root-owned
file elsewhere on the host, and ``seccomp_sandbox = 0`` turns only the filter off.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyvirt
from pyvirt.errors import VirtError
from pyvirt.lab.guest import GuestImage, build_guest, domain_xml
from tests.functional.daemon_util import DaemonHandle, real_qemu_pids, run, running_daemon

pytestmark = pytest.mark.qemu

QEMU_USER = "pyvirt-qemu"


@pytest.fixture(scope="module")
def guest() -> GuestImage:
    return build_guest()


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonHandle]:
    with running_daemon() as handle:
        yield handle


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def qemu_pid(handle: DaemonHandle, name: str) -> int:
    (pid,) = real_qemu_pids(handle.root, name)
    return pid


def refused(handle: DaemonHandle, xml: str) -> str:
    """The error of a start of ``xml`` that must fail."""
    conn = pyvirt.open(handle.uri)
    try:
        with pytest.raises(VirtError) as failed:
            conn.createXML(xml)
    finally:
        conn.close()
    return str(failed.value)


def assert_unprivileged(pid: int, *, seccomp: bool = True) -> None:
    user = pwd.getpwnam(QEMU_USER)
    status = status_of(pid)
    assert status["Uid"].split() == [str(user.pw_uid)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(user.pw_gid)] * 4, status["Gid"]
    assert status["Groups"] == ""
    assert status["CapEff"] == "0000000000000000"
    assert status["Seccomp"] == ("2" if seccomp else "0")
    if seccomp:
        assert status["NoNewPrivs"] == "1"


def test_guest_started_through_the_api_is_unprivileged_and_sandboxed(
        daemon: DaemonHandle, guest: GuestImage) -> None:
    conn = pyvirt.open(daemon.uri)
    try:
        dom = conn.createXML(domain_xml("lp-api", guest=guest))
        try:
            pid = qemu_pid(daemon, "lp-api")
            assert_unprivileged(pid)
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"-sandbox" in argv
            run_dir = next(p for p in (daemon.root / "run" / "qemu").iterdir()
                           if p.name.startswith("domain-") and p.name.endswith("lp-api"))
            assert run_dir.stat().st_uid == pwd.getpwnam(QEMU_USER).pw_uid
        finally:
            dom.destroy()
    finally:
        conn.close()


def test_guest_started_by_stock_virsh_is_unprivileged(
        daemon: DaemonHandle, guest: GuestImage, tmp_path: Path) -> None:
    if shutil.which("virsh") is None:
        pytest.skip("the stock virsh is not installed")
    xml = tmp_path / "lp-virsh.xml"
    xml.write_text(domain_xml("lp-virsh", guest=guest))
    created = run(["virsh", "-c", daemon.uri, "create", str(xml)])
    assert created.returncode == 0, created.stderr
    try:
        assert_unprivileged(qemu_pid(daemon, "lp-virsh"))
    finally:
        run(["virsh", "-c", daemon.uri, "destroy", "lp-virsh"])


def test_custom_emulator_never_runs_as_root(daemon: DaemonHandle, guest: GuestImage) -> None:
    # The <emulator> is a script that prints who it is and exits: QEMU's start fails,
    # and the reason QEMU "gave" (what the script printed) names QEMU's user.
    script = daemon.root / "who-am-i.sh"
    script.write_text("#!/bin/sh\necho \"emulator ran as $(id -un):$(id -gn) "
                      "groups=$(id -G)\"\nexit 1\n")
    script.chmod(0o755)
    xml = domain_xml("lp-emu", guest=guest).replace(
        "<devices>", f"<devices><emulator>{script}</emulator>", 1)
    gid = pwd.getpwnam(QEMU_USER).pw_gid
    assert f"emulator ran as {QEMU_USER}:{QEMU_USER} groups={gid}" in refused(daemon, xml)


def test_serial_file_cannot_write_a_root_owned_file(
        daemon: DaemonHandle, guest: GuestImage) -> None:
    # A <serial type='file'> naming a root-owned file outside the daemon's directories:
    # QEMU opens it as its own user, is refused, and the file is untouched.
    victim = daemon.root / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    serial = (f"<serial type='file'><source path='{victim}'/>"
              "<target port='1'/></serial>")
    xml = domain_xml("lp-serial", guest=guest).replace("</devices>", serial + "</devices>")
    assert f"Could not open '{victim}': Permission denied" in refused(daemon, xml)
    assert victim.read_text() == "precious\n" and victim.stat().st_uid == 0
    assert not [d for d in (daemon.root / "run" / "qemu").iterdir()
                if d.name.startswith("domain-")]


def test_sandbox_off_keeps_the_user(guest: GuestImage) -> None:
    with running_daemon(qemu_conf={"seccomp_sandbox": 0}) as handle:
        conn = pyvirt.open(handle.uri)
        try:
            dom = conn.createXML(domain_xml("lp-nosandbox", guest=guest))
            try:
                pid = qemu_pid(handle, "lp-nosandbox")
                assert_unprivileged(pid, seccomp=False)
                assert b"-sandbox" not in Path(f"/proc/{pid}/cmdline").read_bytes()
            finally:
                dom.destroy()
        finally:
            conn.close()


def test_missing_qemu_user_refuses_to_start() -> None:
    refused = r"pyvirtd exited: .*Failed to parse user 'no-such-pyvirt-user': no such user"
    with pytest.raises(AssertionError, match=refused), \
            running_daemon(qemu_conf={"user": "no-such-pyvirt-user"}):
        pass


def test_probe_runs_as_qemu_user(short_tmp: Path) -> None:
    from pyvirt.qemu.capabilities import probe
    from pyvirt.qemu.identity import resolve_identity

    seen = short_tmp / "seen"
    seen.touch()
    seen.chmod(0o666)
    fake = short_tmp / "qemu"
    fake.write_text(f"#!/bin/sh\nid -u >> {seen}\n"
                    "case \"$1\" in --version) echo 'QEMU emulator version 10.0.0';;\n"
                    "*) printf 'Supported machines are:\\npc-i440fx-10.0 Standard PC "
                    "(default)\\n';; esac\n")
    fake.chmod(0o755)
    identity = resolve_identity(QEMU_USER, QEMU_USER)
    caps = probe(str(fake), identity)
    assert caps.version == (10, 0, 0)
    assert seen.read_text().split() == [str(identity.uid)] * 2
    assert os.stat(seen).st_uid == 0  # the probe wrote into the file, did not own it
