"""Host resources without blocking: ports never looked up in DNS, taps without programs.

The port allocator runs on the daemon's event loop, once per port of a range: a host name as
listen address must not cost one DNS lookup per port. Tap devices are made with ioctls
(libvirt's way) in a private network namespace here, so the test touches no real interface.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from pyvirt.errors import OperationFailedError
from pyvirt.qemu import resources
from pyvirt.qemu.resources import PortAllocator


def free_port_block(size: int) -> int:
    """The start of ``size`` ports nothing listens on (checked by binding each)."""
    for start in range(41000, 60000, size):
        if all(resources._port_free("0.0.0.0", p) for p in range(start, start + size)):
            return start
    raise AssertionError("no free port block")


def test_a_host_name_is_never_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    real = socket.getaddrinfo

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        flags = args[5] if len(args) > 5 else kwargs.get("flags", 0)
        assert flags & socket.AI_NUMERICHOST, f"a lookup that may ask DNS: {args}"
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    monkeypatch.setattr(socket, "gethostbyname", lambda *a: pytest.fail("gethostbyname"))
    low = free_port_block(4)
    ports = PortAllocator(low, low + 3, "test")
    assert ports.allocate("slow.pyvirt.invalid") == low
    assert ports.allocate("[::1]") == low + 1
    assert ports.allocate("127.0.0.1") == low + 2
    assert calls, "numeric addresses go through getaddrinfo with AI_NUMERICHOST"


def test_a_name_skips_ports_held_on_any_address() -> None:
    low = free_port_block(3)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", low))
        holder.listen()
        ports = PortAllocator(low, low + 2, "test")
        # the name may resolve to 127.0.0.1: the held port is not offered
        assert ports.allocate("guest-display.pyvirt.invalid") == low + 1
        # a numeric address is checked exactly (as before)
        assert ports.allocate("127.0.0.2") == low


def test_claim_checks_range_and_use() -> None:
    low = free_port_block(2)
    ports = PortAllocator(low, low + 1, "test")
    ports.claim(low, "name.pyvirt.invalid")
    with pytest.raises(OperationFailedError, match="already in use"):
        ports.claim(low, "127.0.0.1")


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "..", "a b", "a\nb"])
def test_bad_device_names_are_refused(name: str) -> None:
    with pytest.raises(OperationFailedError, match=r"invalid network device name|does not exist"):
        resources.create_tap(name, set())


TAP_SCRIPT = textwrap.dedent("""
    import json, os, subprocess
    from pyvirt.qemu import resources
    subprocess.run(["ip", "link", "add", "br-t", "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "add", "vnet1", "type", "bridge"], check=True)
    first = resources.create_tap("br-t", set())
    second = resources.create_tap("br-t", {"vnet2"})
    net = "/sys/class/net/"
    report = {
        "taps": [first, second],
        "masters": [os.path.basename(os.path.realpath(net + n + "/master"))
                    for n in (first, second)],
        "up": [int(open(net + n + "/flags").read(), 16) & 1 for n in (first, second)],
    }
    resources.delete_tap(first)
    resources.delete_tap(second)
    resources.delete_tap("vnet1")  # not a tap: left alone
    report["after"] = sorted(os.listdir(net))
    print(json.dumps(report))
""")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None
                    or not os.path.exists("/dev/net/tun"), reason="needs root and tun")
def test_tap_created_enslaved_up_and_deleted_in_a_private_namespace() -> None:
    inner = f"mount -t sysfs sysfs /sys && exec {sys.executable} -c '{TAP_SCRIPT}'"
    proc = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private",
                           "sh", "-c", inner], capture_output=True, text=True, timeout=30,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.returncode == 0, proc.stderr

    report = json.loads(proc.stdout)
    # vnet1 exists (a bridge, not a tap), vnet2 is "taken" by the caller: 0 then 3
    assert report["taps"] == ["vnet0", "vnet3"]
    assert report["masters"] == ["br-t", "br-t"]
    assert report["up"] == [1, 1]
    assert report["after"] == ["br-t", "lo", "vnet1"]
