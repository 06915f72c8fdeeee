"""``unix_sock_group`` and the ``unix_sock_*_perms`` on a live pyvirtd, tried by a user of
the machine who is, then is not, in the sockets' group.

The probes run as ``nobody`` with the system Python (isolated: CI keeps the checkout's venv
where only root can enter) and the stock ``python3-libvirt`` client; their group is
``pyvirt-qemu`` (the sockets' group in these tests) or ``nogroup``, with no supplementary
groups, so the kernel's permission check on the socket file is the only thing deciding.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import UNPRIVILEGED_PYTHON
from tests.functional.daemon_util import (
    DaemonHandle,
    running_daemon,
    tear_down,
    write_configs,
)

SOCK_GROUP = "pyvirt-qemu"
PROBE_USER = "nobody"
OUTSIDER_GROUP = "nogroup"
MISSING_GROUP = "pyvirt-no-such-group"
DOMAIN_XML = """<domain type='qemu'><name>{name}</name><memory unit='KiB'>65536</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"""

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run probes as another user"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="no system Python"),
]

# Opens the URI as the stock client would (read-only for "ro"), then tries a write.
PROBE = textwrap.dedent("""
    import sys
    import libvirt
    libvirt.registerErrorHandler(lambda *args: None, None)
    uri, how, xml = sys.argv[1:4]
    try:
        conn = libvirt.openReadOnly(uri) if how == "ro" else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        print("REFUSED", exc.get_error_message())
        sys.exit(0)
    print("OPEN", len(conn.listAllDomains()))
    try:
        conn.defineXML(xml).undefine()
        print("WROTE")
    except libvirt.libvirtError as exc:
        print("DENIED", exc.get_error_message())
""")


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def probe(uri: str, how: str, group: str) -> str:
    """Run :data:`PROBE` as ``nobody`` with primary group *group* and no other group."""
    proc = subprocess.run(
        [*UNPRIVILEGED_PYTHON, "-c", PROBE, uri, how, DOMAIN_XML.format(name="probe1")],
        user=PROBE_USER, group=group, extra_groups=[], capture_output=True, text=True,
        timeout=30, cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def grouped_daemon() -> Iterator[DaemonHandle]:
    if not group_exists(SOCK_GROUP) or not group_exists(OUTSIDER_GROUP):
        pytest.skip(f"needs the groups {SOCK_GROUP} and {OUTSIDER_GROUP}")
    conf = {"unix_sock_group": SOCK_GROUP, "unix_sock_rw_perms": "0770",
            "unix_sock_ro_perms": "0777", "unix_sock_admin_perms": "0750"}
    with running_daemon(emulator="fake", conf=conf) as daemon:
        yield daemon


def mode_and_group(path: Path) -> tuple[int, str]:
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode)
    return stat.S_IMODE(info.st_mode), grp.getgrgid(info.st_gid).gr_name


def test_sockets_have_the_configured_modes_and_group(grouped_daemon: DaemonHandle) -> None:
    assert mode_and_group(grouped_daemon.sock) == (0o770, SOCK_GROUP)
    assert mode_and_group(grouped_daemon.ro_sock) == (0o777, SOCK_GROUP)
    assert mode_and_group(grouped_daemon.admin_sock) == (0o750, SOCK_GROUP)
    sock_dir = os.stat(grouped_daemon.sock.parent)
    assert stat.S_IMODE(sock_dir.st_mode) == 0o755


def test_rw_socket_refuses_a_user_outside_the_group(grouped_daemon: DaemonHandle) -> None:
    out = probe(grouped_daemon.uri, "rw", OUTSIDER_GROUP)
    assert out.startswith("REFUSED") and "Permission denied" in out, out


def test_rw_socket_serves_a_member_of_the_group(grouped_daemon: DaemonHandle) -> None:
    out = probe(grouped_daemon.uri, "rw", SOCK_GROUP)
    assert out.split() == ["OPEN", "0", "WROTE"], out + grouped_daemon.log()


def test_ro_socket_serves_anyone_read_only(grouped_daemon: DaemonHandle) -> None:
    out = probe(grouped_daemon.ro_uri, "ro", OUTSIDER_GROUP)
    assert out.startswith("OPEN 0\nDENIED"), out
    assert "read only access prevents virDomainDefineXML" in out


def test_admin_socket_mode_is_applied(grouped_daemon: DaemonHandle) -> None:
    # 0750: the group may look at the socket but not connect (connect needs write).
    connect = ("import socket, sys; s = socket.socket(socket.AF_UNIX); "
               "s.connect(sys.argv[1]); print('CONNECTED')")
    proc = subprocess.run(
        [*UNPRIVILEGED_PYTHON, "-c", connect, str(grouped_daemon.admin_sock)],
        user=PROBE_USER, group=SOCK_GROUP, extra_groups=[], capture_output=True, text=True,
        timeout=30, cwd="/")
    assert proc.returncode != 0 and "PermissionError" in proc.stderr, proc.stdout


def test_an_unknown_group_stops_the_daemon_at_start() -> None:
    root = Path(tempfile.mkdtemp(prefix="pvd-", dir="/tmp"))
    try:
        config = write_configs(root, {"unix_sock_group": MISSING_GROUP}, {})
        proc = subprocess.run(
            [sys.executable, "-m", "pyvirt.daemon", "--config", str(config)],
            capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1
        assert f"error: invalid argument: Failed to parse group '{MISSING_GROUP}'" \
            in proc.stderr, proc.stderr
        assert not (root / "sock").exists()
        assert not (root / "run" / "pyvirtd.pid").exists()
    finally:
        tear_down(None, root)
