"""The queue of a tap the daemon opens for QEMU (``-netdev tap,fd=N``), in a private network
namespace so no interface of this machine is touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

QUEUE_SCRIPT = textwrap.dedent("""
    import fcntl, json, os, struct, subprocess
    from pyvirt.errors import OperationFailedError
    from pyvirt.qemu import resources
    subprocess.run(["ip", "link", "add", "br-q", "type", "bridge"], check=True)
    name = resources.create_tap("br-q", set())
    report = {}
    for vnet_hdr in (True, False):
        fd = resources.open_tap_queue(name, vnet_hdr=vnet_hdr)
        got = fcntl.ioctl(fd, resources._TUNGETIFF, bytes(40))
        report[f"flags_{vnet_hdr}"] = struct.unpack_from("H", got, 16)[0]
        resources.delete_tap(name)  # refused by the kernel while QEMU holds the queue
        report[f"kept_{vnet_hdr}"] = name in os.listdir("/sys/class/net")
        os.close(fd)
    resources.delete_tap(name)
    try:
        resources.open_tap_queue("vnet9", vnet_hdr=False)  # no such tap: not created
    except OperationFailedError as exc:
        report["missing"] = str(exc)
    report["after"] = sorted(os.listdir("/sys/class/net"))
    print(json.dumps(report))
""")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None
                    or not os.path.exists("/dev/net/tun"), reason="needs root and tun")
def test_queue_flags_and_a_vanished_tap() -> None:
    inner = f"mount -t sysfs sysfs /sys && exec {sys.executable} -c '{QUEUE_SCRIPT}'"
    proc = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private",
                           "sh", "-c", inner], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    tap, no_pi, vnet_hdr, persist = 0x0002, 0x1000, 0x4000, 0x0800
    assert report["flags_True"] == tap | no_pi | vnet_hdr | persist
    assert report["flags_False"] == tap | no_pi | persist
    assert report["kept_True"] and report["kept_False"]
    assert report["missing"] == "operation failed: tap device vnet9 disappeared"
    assert report["after"] == ["br-q", "lo"]


NETNS_ONLY_SCRIPT = textwrap.dedent("""
    import json, socket, subprocess
    from pyvirt.errors import OperationFailedError
    from pyvirt.qemu import resources
    subprocess.run(["ip", "link", "add", "br-n", "type", "bridge"], check=True)
    report = {"tap": resources.create_tap("br-n", set()), "errors": []}
    for bridge in ("lo", "br-none"):
        try:
            resources.create_tap(bridge, set())
        except OperationFailedError as exc:
            report["errors"].append(str(exc))
    report["links"] = sorted(name for _, name in socket.if_nameindex())
    print(json.dumps(report))
""")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None
                    or not os.path.exists("/dev/net/tun"), reason="needs root and tun")
def test_bridges_are_found_in_the_daemons_namespace_not_in_sysfs() -> None:
    # a daemon in a network namespace of its own whose /sys shows another namespace (the
    # lab's hosts): its bridge is found, a device that is not a bridge refused, no tap left
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", NETNS_ONLY_SCRIPT],
                          capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["tap"] == "vnet0"
    assert report["errors"] == [
        "operation failed: Unable to add bridge lo port vnet1: Operation not supported",
        "operation failed: bridge 'br-none' does not exist"]
    assert report["links"] == ["br-n", "lo", "vnet0"]
