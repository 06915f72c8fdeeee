"""Hostile values for every string slot: names that climb towards the canaries, URIs that
would make QEMU or the daemon run or write something, domain XML and migration cookies.

Everything is bytes: the generator writes the wire encoding itself, so values that are not
UTF-8 (or contain NUL) travel exactly as an attacker would send them. URIs and host names
only ever point at loopback (or at nothing): the fuzzer must not reach the network.
"""

from __future__ import annotations

import random
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

#: the canary layout (relative to the canary directory) the harness creates and checks
CANARY_FILES = ("victim/inner/file", "victim/keep", "secret", "x", "passwd")
CANARY_DIRS = ("victim", "victim/inner", "empty")
#: written into every canary file: a reply carrying it means a file was read for a client
SECRET_TOKEN = b"pyvirt-fuzz-canary-0c9f5e"
#: a host UUID no real daemon uses: cookies "from another host"
PEER_HOST_UUID = "5b0f6f5e-8d4c-4a9e-bd51-3f2a9c7e1d04"

_CONTROL = bytes(range(1, 32)) + b"\x7f"
_NOT_UTF8 = (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc", b"a\xf0\x28\x8c\x28")


def _climbs(target: bytes) -> list[bytes]:
    """``target`` (relative to the canary's parent) reached by 1..8 ``../`` from wherever
    the daemon joins a name, plus the dname attack's form (a name that starts normally)."""
    out = [b"../" * depth + target for depth in range(1, 9)]
    out.append(b"x/" + b"../" * 14 + target)
    return out


@dataclass
class HostileCorpus:
    """Values aimed at one fuzzing root: ``canary`` is the directory the daemon must not
    touch, ``own_socket`` the daemon's read-write socket (the only URI a p2p call may
    reach besides closed loopback ports)."""

    canary: Path
    own_socket: Path
    paths: list[bytes] = field(init=False)
    names: list[bytes] = field(init=False)
    uris: list[bytes] = field(init=False)

    def __post_init__(self) -> None:
        canary = bytes(self.canary)
        rel = self.canary.name.encode()
        targets = [rel + b"/victim", rel + b"/victim.log", rel + b"/new", rel]
        absolute = [canary + b"/victim", canary + b"/victim/inner", canary + b"/secret",
                    canary + b"/new-file", canary + b"/", canary]
        self.paths = absolute + [c for t in targets for c in _climbs(t)]
        self.names = [
            b"", b".", b"..", b"/", b"//", b"../", b"./x", b"a/b", b"x\0y", b"\0",
            b"-rf", b"--help", b"~root", b"$(touch " + canary + b"/pwned)",
            b"`touch " + canary + b"/pwned`", b"x;touch " + canary + b"/pwned",
            b"x\ny", b"x\ry", b"\t", b" ", b"name ", b"%s%s%n", b"%2e%2e%2f",
            b"..\\..\\x", b"\xc0\xae\xc0\xae/", b"\xe2\x80\xae", b"x" * 255, b"x" * 256,
            b"\xe2\x82\xac" * 86, b"y" * 4096, b"fz-0", b"fz-1", b"qemu:///system", b"*",
        ] + [bytes([c]) for c in _CONTROL[:8]] + list(_NOT_UTF8)
        sock = bytes(self.own_socket)
        self.uris = [
            b"", b"qemu:///system", b"qemu+unix:///system?socket=" + sock,
            b"qemu+tcp://127.0.0.1:1/system", b"qemu+tcp://[::1]:1/system",
            b"qemu+ssh://127.0.0.1:1/system", b"qemu+tls://127.0.0.1:1/system",
            b"qemu+ext:///system?command=/bin/touch%20" + canary + b"/pwned",
            b"qemu+unix:///system?socket=" + canary + b"/victim",
            b"tcp://127.0.0.1:1", b"tcp:127.0.0.1:1", b"tcp://[::1]:1", b"tcp://127.0.0.1:0",
            b"tcp://127.0.0.1:65536", b"tcp://127.0.0.1:-1", b"tcp://localhost:1",
            b"tcp://127.0.0.1", b"tcp://", b"tcp://:1", b"rdma://127.0.0.1:1",
            b"unix://" + canary + b"/victim", b"unix:" + canary + b"/victim",
            b"unix:///" + canary + b"/new.sock", b"exec:touch " + canary + b"/pwned",
            b"exec:/bin/sh -c 'touch " + canary + b"/pwned'", b"file:" + canary + b"/victim",
            b"file://" + canary + b"/new", b"fd:3", b"fd:-1", b"spice://127.0.0.1:1",
            b"vnc://127.0.0.1:1", b"nbd:unix:" + canary + b"/victim",
            b"tcp://127.0.0.1:1?x=" + b"a" * 300, b"tcp://127.0.0.1:1/\0",
        ]

    # -- picks --------------------------------------------------------------------------------
    def string(self, rng: random.Random) -> bytes:
        """Any hostile string: a path, a name, a URI, or random bytes."""
        pick = rng.random()
        if pick < 0.4:
            return rng.choice(self.paths)
        if pick < 0.75:
            return rng.choice(self.names)
        if pick < 0.85:
            return rng.choice(self.uris)
        return rng.randbytes(rng.choice((1, 3, 8, 40)))

    def domain_name(self, rng: random.Random) -> bytes:
        return rng.choice(self.paths) if rng.random() < 0.5 else rng.choice(self.names)

    # -- structured documents -----------------------------------------------------------------
    def domain_xml(self, rng: random.Random, name: bytes, uuid: str | None = None) -> bytes:
        """A domain definition the fake QEMU can run, with ``name`` (raw, unescaped when
        the dice say so) and, sometimes, a channel whose target name is hostile."""
        esc = name if rng.random() < 0.2 else xml_escape(name)
        channel = b""
        if rng.random() < 0.3:
            target = xml_escape(self.domain_name(rng))
            channel = (b"<channel type='unix'><target type='virtio' name='" + target
                       + b"'/></channel>")
        return _domain_xml(esc, uuid, channel)

    def domain_xml_plain(self, name: bytes, uuid: str) -> bytes:
        return _domain_xml(xml_escape(name), uuid, b"")

    def hostile_xml(self, rng: random.Random) -> bytes:
        """XML attacks: entities, external files, depth, size, garbage."""
        canary = bytes(self.canary)
        choices = [
            b"<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY x SYSTEM 'file://" + canary
            + b"/secret'>]><domain type='qemu'><name>&x;</name></domain>",
            b"<!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;'>]>"
            b"<domain><name>&b;</name></domain>",
            b"<domain>" * 2000 + b"</domain>" * 2000,
            b"<domain type='qemu'><name>x</name>" + b"<a/>" * 20000 + b"</domain>",
            b"<domain type='qemu'><name>" + b"n" * 70000 + b"</name></domain>",
            b"<xi:include xmlns:xi='http://www.w3.org/2001/XInclude' href='file://" + canary
            + b"/secret'/>",
            b"<domain", b"", b"\0", b"<domain type='qemu'><name>x</name></domain>" + b"\0junk",
            b"<qemu-migration/>", b"\xef\xbb\xbf<domain/>",
        ]
        return rng.choice(choices)

    def cookie(self, rng: random.Random, name: bytes, uuid: str) -> bytes:
        """A migration cookie "from another host" naming ``name``, often with a hostile
        NBD disk target or graphics listen address; sometimes not a cookie at all."""
        pick = rng.random()
        if pick < 0.15:
            return rng.choice((b"", b"\0", b"<qemu-migration>", b"x" * 100 + b"\0",
                               b"<qemu-migration>" * 3000 + b"\0", rng.randbytes(64)))
        if pick < 0.25:
            return self.hostile_xml(rng) + b"\0"
        parts = [self._cookie_head(name, uuid, xml_escape(self.domain_name(rng)))]
        if rng.random() < 0.4:
            target = xml_escape(self.domain_name(rng))
            parts += [b"<nbd port='1'><disk target='", target,
                      b"' capacity='1048576'/></nbd>"]
        if rng.random() < 0.2:
            parts.append(b"<graphics type='vnc' port='1' listen='127.0.0.1'/>")
        parts.append(b"</qemu-migration>\0")
        return b"".join(parts)

    def peer_cookie(self, name: bytes, uuid: str) -> bytes:
        """A well-formed cookie from another host, as a source sends to Prepare."""
        return self._cookie_head(name, uuid, b"fuzz-peer") + b"</qemu-migration>\0"

    @staticmethod
    def _cookie_head(name: bytes, uuid: str, hostname: bytes) -> bytes:
        return (b"<qemu-migration><name>" + xml_escape(name) + b"</name><uuid>"
                + uuid.encode() + b"</uuid><hostname>" + hostname + b"</hostname><hostuuid>"
                + PEER_HOST_UUID.encode() + b"</hostuuid>")

    def qmp_command(self, rng: random.Random) -> bytes:
        """QMP commands that read state or change only the guest (never files)."""
        return rng.choice((b'{"execute":"query-status"}', b'{"execute":"stop"}',
                           b'{"execute":"cont"}', b'{"execute":"query-version","id":1}',
                           b'{"execute":"nonexistent"}', b'{"execute":7}', b"[]", b"{",
                           b'{"execute":"query-status","arguments":' + b"[" * 5000 + b"}"))


def _domain_xml(name: bytes, uuid: str | None, devices: bytes) -> bytes:
    uuid_elem = f"<uuid>{uuid}</uuid>".encode() if uuid else b""
    return (b"<domain type='qemu'><name>" + name + b"</name>" + uuid_elem
            + b"<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            b"<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            b"<devices><memballoon model='none'/>" + devices + b"</devices></domain>")


def xml_escape(raw: bytes) -> bytes:
    return (raw.replace(b"&", b"&amp;").replace(b"<", b"&lt;").replace(b">", b"&gt;")
            .replace(b"'", b"&apos;").replace(b'"', b"&quot;"))


def fresh_uuid(rng: random.Random) -> str:
    return str(uuidlib.UUID(bytes=rng.randbytes(16), version=4))
