"""Host resources a domain takes when it starts: display ports and tap devices.

Ports are checked by binding them (another program may hold one) and remembered in a
driver-wide set so two guests starting at once never get the same port. Tap devices are
created with iproute2 and attached to the bridge the XML names.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path

from pyvirt.errors import InternalError, OperationFailedError


class PortAllocator:
    def __init__(self, low: int, high: int, name: str) -> None:
        self.low = low
        self.high = high
        self.name = name
        self._used: set[int] = set()

    def allocate(self, listen: str) -> int:
        for port in range(self.low, self.high + 1):
            if port in self._used or not _port_free(listen, port):
                continue
            self._used.add(port)
            return port
        raise InternalError(f"Unable to find an unused port in range '{self.name}' "
                            f"({self.low}-{self.high})")

    def claim(self, port: int, listen: str) -> None:
        """Take the port a client chose (it must lie in this allocator's range)."""
        if not self.low <= port <= self.high:
            raise OperationFailedError(
                f"port {port} is outside the {self.name} port range ({self.low}-{self.high})")
        if port in self._used or not _port_free(listen, port):
            raise OperationFailedError(f"port {port} is already in use")
        self._used.add(port)

    def reserve(self, port: int) -> None:
        """Mark a port taken by a reattached domain."""
        self._used.add(port)

    def release(self, port: int) -> None:
        self._used.discard(port)


def _port_free(listen: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen, port))
        except OSError:
            return False
    return True


def create_tap(bridge: str, taken: set[str]) -> str:
    """Create a tap device ``vnetN`` enslaved to ``bridge`` and return its name."""
    if not Path(f"/sys/class/net/{bridge}/bridge").exists():
        raise OperationFailedError(f"bridge '{bridge}' does not exist")
    index = 0
    while f"vnet{index}" in taken or Path(f"/sys/class/net/vnet{index}").exists():
        index += 1
    name = f"vnet{index}"
    try:
        _ip("tuntap", "add", "dev", name, "mode", "tap")
        _ip("link", "set", "dev", name, "master", bridge)
        _ip("link", "set", "dev", name, "up")
    except OperationFailedError:
        delete_tap(name)
        raise
    return name


def delete_tap(name: str) -> None:
    with contextlib.suppress(OperationFailedError):
        _ip("link", "del", "dev", name)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise OperationFailedError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
