"""Host resources a domain takes when it starts: display ports and tap devices.

Ports are checked by binding them (another program may hold one) and remembered in a
driver-wide set so two guests starting at once never get the same port. Tap devices are
created and attached to the bridge the XML names with the kernel's ioctls, as libvirt does
(``virNetDevTapCreate``, ``virNetDevBridgeAddPort``). QEMU runs unprivileged and cannot
open ``/dev/net/tun`` (root's only): the daemon opens a queue of the tap and QEMU inherits
it (``-netdev tap,fd=N``, libvirt's way).

Nothing here may block the daemon's event loop, so nothing here resolves a name or runs a
program: a listen address that is a host name is checked on the wildcard addresses (free
there means free on every address, libvirt's ``virPortAllocator`` check), never looked up
per port; a tap is a few ioctls instead of three ``ip`` processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct

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
    """True when ``port`` can be bound on ``listen`` (an address; a name never resolved)."""
    address = _numeric_address(listen)
    if address is not None:
        return _bindable(address, port, v6only=False)
    # a host name: whatever it resolves to, the port is free there if it is on both wildcards
    return _bindable("0.0.0.0", port, v6only=False) and _bindable("::", port, v6only=True)


def _numeric_address(listen: str) -> str | None:
    bare = listen[1:-1] if listen.startswith("[") and listen.endswith("]") else listen
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return None


def _bindable(address: str, port: int, *, v6only: bool) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        # no IPv6 on this host: nothing can hold the port there
        return exc.errno == errno.EAFNOSUPPORT
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6only:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            # a numeric address: the flag makes sure the C library never asks DNS
            info = socket.getaddrinfo(address, port, family, socket.SOCK_STREAM, 0,
                                      socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
            sock.bind(info[0][4])
        except OSError as exc:
            return v6only and exc.errno == errno.EADDRNOTAVAIL
    return True


# -- tap devices ----------------------------------------------------------------------------
#: <linux/if_tun.h> and <linux/sockios.h>
_TUNSETIFF = 0x400454CA
_TUNSETPERSIST = 0x400454CB
_TUNGETIFF = 0x800454D2
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
#: frames carry a virtio-net header (QEMU probes the fd for it; libvirt sets it for virtio)
_IFF_VNET_HDR = 0x4000
_IFF_PERSIST = 0x0800
#: TUNSETIFF fails with EBUSY instead of attaching to an existing device
_IFF_TUN_EXCL = 0x8000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_SIOCBRADDIF = 0x89A2
_IFF_UP = 0x1
#: IFNAMSIZ, with the terminating NUL
_IFNAMSIZ = 16
#: vnetN names tried before giving up
_MAX_TAPS = 4096


def create_tap(bridge: str, taken: set[str]) -> str:
    """Create a persistent tap device ``vnetN`` enslaved to ``bridge``, up; return its name."""
    _check_ifname(bridge)
    # names are looked up in the daemon's network namespace, not in /sys: a daemon in a
    # namespace of its own (the lab's hosts) may see another namespace's sysfs; a device
    # that is not a bridge is refused by SIOCBRADDIF
    if not _link_exists(bridge):
        raise OperationFailedError(f"bridge '{bridge}' does not exist")
    for index in range(_MAX_TAPS):
        name = f"vnet{index}"
        if name in taken or _link_exists(name):
            continue
        try:
            _tun_ioctl(name, _IFF_TAP | _IFF_NO_PI | _IFF_TUN_EXCL, persist=True)
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # created meanwhile by someone else
                continue
            raise OperationFailedError(f"Unable to create tap device {name}: "
                                       f"{os.strerror(exc.errno or 0)}") from None
        try:
            _attach_and_raise(name, bridge)
        except OperationFailedError:
            delete_tap(name)
            raise
        return name
    raise OperationFailedError(f"no free tap device name (vnet0-vnet{_MAX_TAPS - 1})")


def open_tap_queue(name: str, *, vnet_hdr: bool) -> int:
    """An open queue (fd) of the existing persistent tap ``name``, for QEMU to inherit.

    ``vnet_hdr`` for a virtio NIC: QEMU reads the flag back from the fd (``vnet_hdr=`` is
    refused next to ``fd=``) and then hands the guest's offloads to the host.
    """
    _check_ifname(name)
    flags = _IFF_TAP | _IFF_NO_PI | (_IFF_VNET_HDR if vnet_hdr else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, _ifreq(name, struct.pack("H", flags)))
        got = fcntl.ioctl(fd, _TUNGETIFF, _ifreq(name, b""))
    except OSError as exc:
        os.close(fd)
        raise OperationFailedError(f"Unable to open tap device {name}: "
                                   f"{os.strerror(exc.errno or 0)}") from None
    if not struct.unpack_from("H", got, _IFNAMSIZ)[0] & _IFF_PERSIST:
        # TUNSETIFF made a new device: ours was deleted meanwhile (closing drops this one)
        os.close(fd)
        raise OperationFailedError(f"tap device {name} disappeared")
    return fd


def delete_tap(name: str) -> None:
    """Remove the persistent tap ``name``; any other kind of device by that name is left."""
    with contextlib.suppress(OSError, OperationFailedError):
        _check_ifname(name)
        _tun_ioctl(name, _IFF_TAP | _IFF_NO_PI, persist=False)


def _link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _check_ifname(name: str) -> None:
    if not name or len(name.encode()) >= _IFNAMSIZ or "/" in name or not name.isprintable() \
            or name in (".", "..") or any(c.isspace() for c in name):
        raise OperationFailedError(f"invalid network device name '{name[:32]}'")


def _ifreq(name: str, payload: bytes) -> bytes:
    return struct.pack("16s", name.encode()) + payload.ljust(24, b"\0")


def _tun_ioctl(name: str, flags: int, *, persist: bool) -> None:
    """TUNSETIFF (create, or attach to an existing tap) then TUNSETPERSIST."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, _ifreq(name, struct.pack("H", flags)))
        fcntl.ioctl(fd, _TUNSETPERSIST, int(persist))
    finally:
        os.close(fd)


def _attach_and_raise(name: str, bridge: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            index = socket.if_nametoindex(name)
            fcntl.ioctl(sock, _SIOCBRADDIF, _ifreq(bridge, struct.pack("i", index)))
        except OSError as exc:
            raise OperationFailedError(f"Unable to add bridge {bridge} port {name}: "
                                       f"{os.strerror(exc.errno or 0)}") from None
        try:
            got = fcntl.ioctl(sock, _SIOCGIFFLAGS, _ifreq(name, b""))
            flags = struct.unpack_from("H", got, _IFNAMSIZ)[0]
            fcntl.ioctl(sock, _SIOCSIFFLAGS, _ifreq(name, struct.pack("H", flags | _IFF_UP)))
        except OSError as exc:
            raise OperationFailedError(f"Cannot set interface flags on '{name}': "
                                       f"{os.strerror(exc.errno or 0)}") from None
