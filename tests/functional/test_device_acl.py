"""A live pyvirtd grants QEMU's user its devices: /dev/kvm and /dev/userfaultfd by ACL.

The daemon runs in a mount namespace of its own where ``/dev/kvm`` and ``/dev/userfaultfd``
are private nodes of the same devices, root's only (0600, no ACL): the host's own devices,
which running guests use, are never touched. The daemon must add QEMU's user to both at
start-up, so that a KVM guest's unprivileged QEMU opens /dev/kvm itself; a restarted daemon
finds the grant in place and changes nothing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.qemu import devacl
from pyvirt.qemu.devacl import ACL_USER, ACL_XATTR
from pyvirt.qemu.identity import DEFAULT_QEMU_USER
from tests.functional.daemon_util import (
    REAL_QEMU,
    real_qemu_pids,
    run,
    start_daemon,
    stop_daemon,
    tear_down,
)

DEVICES = ("kvm", "userfaultfd")

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None
                       or shutil.which("virsh") is None or not os.path.exists(REAL_QEMU)
                       or not all(os.path.exists(f"/dev/{d}") for d in DEVICES),
                       reason="needs root, unshare, virsh, QEMU, /dev/kvm and /dev/userfaultfd"),
]

GUEST = ("<domain type='kvm'><name>aclguest</name><memory unit='MiB'>64</memory>"
         "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
         "<devices><memballoon model='none'/></devices></domain>")


@pytest.fixture
def private_devices(short_tmp: Path) -> Iterator[Path]:
    """Root-only nodes of the host's kvm and userfaultfd devices in a directory of ours."""
    nodes = short_tmp / "dev"
    nodes.mkdir()
    for name in DEVICES:
        os.mknod(nodes / name, stat.S_IFCHR | 0o600, os.stat(f"/dev/{name}").st_rdev)
    yield nodes


def wrapper(nodes: Path) -> tuple[str, ...]:
    binds = " && ".join(f"mount --bind {nodes / d} /dev/{d}" for d in DEVICES)
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'{binds} && exec "$@"', "devns-daemon")


def test_daemon_grants_qemu_user_kvm_and_userfaultfd(private_devices: Path,
                                                     short_tmp: Path) -> None:
    # Checks: root-only devices get one named-user entry (rw) for QEMU's user when pyvirtd
    # starts; a KVM guest then starts with QEMU unprivileged, holding /dev/kvm open; a
    # second daemon start rewrites nothing.
    qemu_uid = pwd.getpwnam(DEFAULT_QEMU_USER).pw_uid
    root = short_tmp / "daemon"
    root.mkdir()
    root.chmod(0o711)
    handle = None
    try:
        handle = start_daemon(root, wrapper=wrapper(private_devices))
        granted = {}
        for name in DEVICES:
            acl = devacl.read_acl(str(private_devices / name))
            assert acl is not None and devacl.AclEntry(ACL_USER, qemu_uid, 6) in acl, acl
            granted[name] = os.getxattr(private_devices / name, ACL_XATTR)
        xml = short_tmp / "guest.xml"
        xml.write_text(GUEST)
        started = run(["virsh", "-c", handle.uri, "create", str(xml)])
        assert started.returncode == 0, started.stderr + handle.log()
        (pid,) = real_qemu_pids(root)
        assert os.stat(f"/proc/{pid}").st_uid == qemu_uid
        assert "/dev/kvm" in {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        assert run(["virsh", "-c", handle.uri, "destroy", "aclguest"]).returncode == 0

        stop_daemon(handle)
        changed = {name: os.stat(private_devices / name).st_ctime_ns for name in DEVICES}
        time.sleep(0.01)
        handle = start_daemon(root, wrapper=wrapper(private_devices))
        for name in DEVICES:
            assert os.getxattr(private_devices / name, ACL_XATTR) == granted[name]
            assert os.stat(private_devices / name).st_ctime_ns == changed[name]
    finally:
        tear_down(handle, root)
