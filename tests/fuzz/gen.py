"""Type-directed argument encodings: walk a procedure's XDR descriptor and write bytes.

Every node of the type is written either with a *valid* value (chosen by the field's name:
a known domain's UUID for ``uuid``, domain XML for ``xml``, a loopback URI for ``dconnuri``,
...) or, with probability ``boundary``, with a *boundary* one: extreme or out-of-range
integers, strings of the maximal length or claiming a huge length that is never sent,
unknown union and enum values, invalid presence flags, array counts at and over the
maximum. The bytes are written directly (not through :class:`~pyvirt.rpc.xdr.Packer`, whose
checks would refuse most of these), so the decoder sees exactly what an attacker sends.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyvirt.rpc.remote_types import TypedParamType, TypedParamXDR
from pyvirt.rpc.types import (
    Array,
    CharArray,
    Enum,
    FixedArray,
    FixedCharArray,
    FixedOpaque,
    Opaque,
    Optional,
    String,
    Struct,
    Union,
    Void,
    XDRType,
)
from tests.fuzz.hostile import HostileCorpus, fresh_uuid

WORDS_4 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
           0xFFFFFFFE, 0xFFFFFFFF)
WORDS_8 = (0, 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1)
DOUBLES = (0.0, -0.0, 1.5, float("nan"), float("inf"), float("-inf"), 1e308, 5e-324, -1.0)
#: how the string of a slot is made, by field name (the last part of the hint)
XML_FIELDS = frozenset({"xml", "xml_desc", "xmlin", "destination_xml", "persistent_xml"})
URI_FIELDS = frozenset({"dconnuri", "uri", "migrate_uri", "graphics_uri", "disks_uri"})
NAME_FIELDS = frozenset({"dname", "destination_name", "migrate_disks", "name",
                         "migrate_disks_detect_zeroes"})
HOST_FIELDS = frozenset({"listen_address"})
#: typed parameter names and types per argument struct (the lists the daemon validates)
_S, _I, _U, _L, _UL = (TypedParamType.STRING, TypedParamType.INT, TypedParamType.UINT,
                       TypedParamType.LLONG, TypedParamType.ULLONG)
MIGRATE_KEYS: dict[str, TypedParamType] = {
    "migrate_uri": _S, "destination_name": _S, "destination_xml": _S, "persistent_xml": _S,
    "bandwidth": _UL, "bandwidth.postcopy": _UL, "bandwidth.avail.switchover": _UL,
    "graphics_uri": _S, "listen_address": _S, "migrate_disks": _S,
    "migrate_disks_detect_zeroes": _S, "disks_port": _I, "disks_uri": _S, "compression": _S,
    "compression.xbzrle.cache": _UL, "compression.zlib.level": _I,
    "compression.zstd.level": _I, "auto_converge.initial": _I,
    "auto_converge.increment": _I, "parallel.connections": _I, "compression.mt.level": _I,
    "tls.destination": _S,
}
IDENTITY_KEYS: dict[str, TypedParamType] = {
    "user-name": _S, "user-id": _UL, "group-name": _S, "group-id": _UL, "process-id": _L,
    "process-time": _UL, "sasl-user-name": _S, "x509-distinguished-name": _S,
    "selinux-context": _S,
}
#: admin values never below the defaults in "valid" frames: a lower cap is an
#: administrator's legitimate choice, but it would starve the watchdog, not find a bug
THREADPOOL_KEYS: dict[str, TypedParamType] = {"minWorkers": _U, "maxWorkers": _U,
                                              "prioWorkers": _U, "nWorkers": _U}
CLIENT_LIMIT_KEYS: dict[str, TypedParamType] = {"nclients_max": _U, "nclients_unauth_max": _U}
ADMIN_VALID: dict[str, tuple[int, ...]] = {
    "minWorkers": (5, 6), "maxWorkers": (20, 24), "prioWorkers": (5, 6),
    "nclients_max": (5000, 4000), "nclients_unauth_max": (20, 40),
}
MIGRATE_FLAG_BITS = tuple(1 << bit for bit in range(21))


@dataclass(frozen=True, slots=True)
class DomainRef:
    name: bytes
    uuid: bytes
    id: int


@dataclass
class World:
    """What the daemon holds right now (refreshed by the runner): handles that make
    calls reach past "domain not found"."""

    domains: list[DomainRef] = field(default_factory=list)
    client_ids: list[int] = field(default_factory=lambda: [1, 2, 3])
    server_names: tuple[bytes, ...] = (b"libvirtd", b"admin")


def word(value: int) -> bytes:
    return struct.pack(">I", value & 0xFFFFFFFF)


def dword(value: int) -> bytes:
    return struct.pack(">Q", value & 0xFFFFFFFFFFFFFFFF)


def pad(data: bytes) -> bytes:
    return data + b"\0" * ((4 - len(data) % 4) % 4)


class ArgGen:
    """Encodes values of any :class:`~pyvirt.rpc.types.XDRType` used by the tables."""

    def __init__(self, rng: random.Random, corpus: HostileCorpus, world: World) -> None:
        self.rng = rng
        self.corpus = corpus
        self.world = world
        self.boundary = 0.0
        self._big_left = 1
        self._fresh = 0

    def encode(self, xdr_type: XDRType[Any], boundary: float, hint: str = "") -> bytes:
        """One value of ``xdr_type``; each node is a boundary value with this probability."""
        self.boundary = boundary
        self._big_left = 1  # one maximal string per frame: 4 MiB, not 4 MiB per element
        out = bytearray()
        self._emit(xdr_type, out, hint)
        return bytes(out)

    def _edge(self) -> bool:
        return self.boundary > 0 and self.rng.random() < self.boundary

    # -- dispatch -----------------------------------------------------------------------------
    def _emit(self, t: XDRType[Any], out: bytearray, hint: str) -> None:
        if t is Void:
            return
        if t is TypedParamXDR:
            self._typed_param(out, hint)
            return
        emitter = self._emitter(t)
        emitter(t, out, hint)

    def _emitter(self, t: XDRType[Any]) -> Callable[[Any, bytearray, str], None]:
        table: list[tuple[type, Callable[[Any, bytearray, str], None]]] = [
            (Struct, self._struct), (String, self._string), (Opaque, self._opaque),
            (FixedOpaque, self._fixed_opaque), (CharArray, self._char_array),
            (FixedCharArray, self._fixed_char_array), (Optional, self._optional),
            (Array, self._array), (FixedArray, self._fixed_array), (Union, self._union),
            (Enum, self._enum),
        ]
        for cls, emitter in table:
            if isinstance(t, cls):
                return emitter
        if t.name in _SCALARS:
            return self._scalar
        raise TypeError(f"the fuzzer cannot generate {t!r}: teach tests/fuzz/gen.py")

    # -- scalars ------------------------------------------------------------------------------
    def _scalar(self, t: XDRType[Any], out: bytearray, hint: str) -> None:
        kind = t.name
        if kind == "double":
            out += struct.pack(">d", self.rng.choice(DOUBLES)) if self._edge() or \
                self.rng.random() < 0.5 else struct.pack(">d", self.rng.uniform(-10, 1e6))
            return
        size = t.min_size
        if self._edge():
            out += dword(self.rng.choice(WORDS_8)) if size == 8 else word(self._edge_word(kind))
            return
        value = self._valid_int(kind, hint.rsplit(".", 1)[-1])
        out += dword(value) if size == 8 else word(value)

    def _edge_word(self, kind: str) -> int:
        extra = {"bool": (2, 0xFFFFFFFF), "char": (128, 0xFFFFFF7F, 255),
                 "unsigned char": (256, 0xFFFFFFFF), "short": (0x8000, 0xFFFF7FFF),
                 "unsigned short": (0x10000,)}.get(kind, ())
        return self.rng.choice(WORDS_4 + extra)

    def _valid_int(self, kind: str, name: str) -> int:
        rng = self.rng
        if kind == "bool":
            return rng.randint(0, 1)
        if kind in ("char", "short"):
            return rng.randint(-100, 100)
        if kind in ("unsigned char", "unsigned short"):
            return rng.randint(0, 200)
        if name == "flags":
            return 0 if rng.random() < 0.6 else rng.choice(MIGRATE_FLAG_BITS) | (
                rng.choice(MIGRATE_FLAG_BITS) if rng.random() < 0.5 else 0)
        if name == "id" and self.world.domains and rng.random() < 0.7:
            return rng.choice(self.world.domains).id
        choices = {"need_results": (0, 1), "feature": tuple(range(16)), "autostart": (0, 1),
                   "cancelled": (0, 1), "event_id": tuple(range(30)), "nil": (0, 1),
                   "transport": (0, 1, 2), "callback_id": tuple(range(6)),
                   "maxids": (0, 1, 10, 1000), "maxnames": (0, 1, 10, 1000),
                   "timeout": (0,)}.get(name)
        if choices is not None:
            return rng.choice(choices)
        if name == "id" and self.world.client_ids:
            return rng.choice(self.world.client_ids)
        return rng.choice((0, 1, 2, 5, 100, 1024, 65536))

    def _enum(self, t: Enum, out: bytearray, hint: str) -> None:
        if self._edge():
            out += word(self.rng.choice(WORDS_4))
        else:
            out += word(self.rng.choice(sorted(t.values.values())))

    # -- strings and opaques ------------------------------------------------------------------
    def _string(self, t: String, out: bytearray, hint: str) -> None:
        edge = self._edge()
        self._counted(out, self._string_value(hint, edge), t.max_len, edge, unit=1)

    def _string_value(self, hint: str, edge: bool) -> bytes:
        name = hint.rsplit(".", 1)[-1]
        rng, corpus = self.rng, self.corpus
        if name in XML_FIELDS:
            if edge and rng.random() < 0.5:
                return corpus.hostile_xml(rng)
            return corpus.domain_xml(rng, self._domain_name(edge), self._uuid_text())
        if name in URI_FIELDS or (name == "name" and "connect_open" in hint):
            return rng.choice(corpus.uris)
        if name in HOST_FIELDS:
            return rng.choice((b"127.0.0.1", b"::1", b"localhost")) if not edge \
                else rng.choice(corpus.uris + corpus.names)
        if name == "cmd":
            return corpus.qmp_command(rng)
        if name == "name" and "admin" in hint:
            return rng.choice(self.world.server_names) if not edge else corpus.string(rng)
        if name in NAME_FIELDS:
            if not edge and self.world.domains and rng.random() < 0.5:
                return rng.choice(self.world.domains).name
            return self._domain_name(True)
        if name == "compression" and not edge:
            return rng.choice((b"xbzrle", b"zlib", b"zstd", b"mt", b"bogus"))
        if edge:
            return corpus.string(rng)
        return rng.choice((b"", b"a", b"qemu", b"PLAIN", b"1:stderr", b"3:pyvirt"))

    def _domain_name(self, hostile: bool) -> bytes:
        if hostile and self.rng.random() < 0.7:
            return self.corpus.domain_name(self.rng)
        self._fresh += 1
        return b"fz-new-%d" % self._fresh

    def _uuid_text(self) -> str | None:
        return fresh_uuid(self.rng) if self.rng.random() < 0.8 else None

    def _opaque(self, t: Opaque, out: bytearray, hint: str) -> None:
        edge = self._edge()
        if "cookie" in hint:
            data = self.corpus.cookie(self.rng, self._domain_name(edge),
                                      fresh_uuid(self.rng))
        else:
            data = self.rng.randbytes(self.rng.choice((0, 1, 16, 300)))
        self._counted(out, data, t.max_len, edge, unit=1)

    def _char_array(self, t: CharArray, out: bytearray, hint: str) -> None:
        edge = self._edge()
        data = self.rng.randbytes(self.rng.choice((0, 1, 5, 64)))
        self._counted(out, data, t.max_len, edge, unit=4)

    def _counted(self, out: bytearray, data: bytes, max_len: int, edge: bool,
                 unit: int) -> None:
        """A count and its items (bytes, or one word per byte when ``unit`` is 4); at a
        boundary the count lies, the data is as long as the maximum (or one more), or
        the padding is not zero."""
        body = pad(data) if unit == 1 else b"".join(word(b) for b in data)
        if not edge:
            out += word(len(data)) + body
            return
        pick = self.rng.random()
        if pick < 0.45:  # a length claimed but never sent
            claimed = self.rng.choice((max_len, max_len + 1, 0xFFFFFFFF, 0x7FFFFFFF,
                                       len(data) + 1, len(data) + 4096))
            out += word(claimed) + body
        elif pick < 0.5 and max_len <= 1 << 22 and self._big_left:  # the maximum, or one more
            self._big_left -= 1
            count = max_len + self.rng.randint(0, 1)
            fill = self.rng.choice((b"A", b"/", b"\0", b"\xff"))
            out += word(count) + (pad(fill * count) if unit == 1 else word(fill[0]) * count)
        elif pick < 0.7 and unit == 1 and len(data) % 4:  # non-zero padding
            out += word(len(data)) + data + b"\xff" * (4 - len(data) % 4)
        elif pick < 0.8 and unit == 4:  # words that are no char
            out += word(2) + word(0x100) + word(0xFFFFFF00)
        else:
            out += word(len(data)) + body

    def _fixed_opaque(self, t: FixedOpaque, out: bytearray, hint: str) -> None:
        if t.size == 16 and self.world.domains and not self._edge() and self.rng.random() < 0.8:
            out += self.rng.choice(self.world.domains).uuid
            return
        fill = self.rng.choice((b"\0" * t.size, b"\xff" * t.size, self.rng.randbytes(t.size)))
        out += pad(fill)

    def _fixed_char_array(self, t: FixedCharArray, out: bytearray, hint: str) -> None:
        out += b"".join(word(self.rng.choice((0, 65, 0xFFFFFFFF, 0x100)) if self._edge()
                             else self.rng.randint(0, 127)) for _ in range(t.size))

    # -- composites ---------------------------------------------------------------------------
    def _optional(self, t: Optional[Any], out: bytearray, hint: str) -> None:
        if self._edge():
            flag = self.rng.choice((0, 1, 2, 0xFFFFFFFF))
        else:
            flag = 1 if self.rng.random() < 0.6 else 0
        out += word(flag)
        if flag:
            self._emit(t.item, out, hint)

    def _array(self, t: Array[Any], out: bytearray, hint: str) -> None:
        if self._edge():
            pick = self.rng.random()
            if pick < 0.5:  # a count far above the items that follow
                out += word(self.rng.choice((t.max_count, t.max_count + 1, 0xFFFFFFFF,
                                             0x40000000)))
                count = self.rng.randint(0, 2)
            else:  # really the maximum, or one over (only for small maximums)
                count = min(t.max_count, 4096) + self.rng.randint(0, 1)
                out += word(count)
        elif t.item is TypedParamXDR and "migrate" in hint and self.rng.random() < 0.5:
            self._migration_request(out)
            return
        else:
            count = self.rng.choice((0, 1, 1, 2, 3))
            out += word(count)
        for index in range(count):
            self._emit(t.item, out, f"{hint}[{index}]")

    def _migration_request(self, out: bytearray) -> None:
        """The parameters a real migration sends (a definition to start, often a new
        name, sometimes a URI): so that hostile names and URIs get past the parameter
        checks to where the destination would create objects and files."""
        params = [("destination_xml", self.corpus.domain_xml(
            self.rng, self._domain_name(self.rng.random() < 0.5), self._uuid_text()))]
        if self.rng.random() < 0.6:
            params.append(("destination_name", self._domain_name(True)))
        if self.rng.random() < 0.4:
            params.append(("migrate_uri", self.rng.choice(self.corpus.uris)))
        out += word(len(params))
        for key, value in params:
            out += word(len(key)) + pad(key.encode()) + word(int(TypedParamType.STRING))
            out += word(len(value)) + pad(value)

    def _fixed_array(self, t: FixedArray[Any], out: bytearray, hint: str) -> None:
        for index in range(t.count):
            self._emit(t.item, out, f"{hint}[{index}]")

    def _union(self, t: Union, out: bytearray, hint: str) -> None:
        if self._edge() or (t.default is None and not t.arms):
            out += word(self.rng.choice(WORDS_4))
            return
        disc = self.rng.choice(sorted(t.arms))
        out += word(disc)
        self._emit(t.arms[disc], out, hint)

    def _struct(self, t: Struct, out: bytearray, hint: str) -> None:
        if t.name == "remote_nonnull_domain" and self.world.domains and not self._edge():
            ref = self.rng.choice(self.world.domains)
            out += word(len(ref.name)) + pad(ref.name) + ref.uuid + word(ref.id)
            return
        for fname, ftype in t.fields:
            self._emit(ftype, out, f"{t.name}.{fname}")

    # -- typed parameters ---------------------------------------------------------------------
    def _typed_param(self, out: bytearray, hint: str) -> None:
        keys = _keys_for(hint)
        rng = self.rng
        if self._edge():
            key = rng.choice((self.corpus.string(rng), b"x" * 300,
                              *(k.encode() for k in keys)))
            kind = rng.choice((0, 8, -1, 0x7FFFFFFF, *range(1, 8)))
        else:
            key_text = rng.choice(sorted(keys)) if keys else "x"
            key = key_text.encode()
            kind = int(keys.get(key_text, rng.choice(list(TypedParamType))))
        out += word(len(key)) + pad(key) + word(kind)
        self._typed_value(out, kind, key.decode("utf-8", "replace"))

    def _typed_value(self, out: bytearray, kind: int, key: str) -> None:
        rng = self.rng
        if kind in (TypedParamType.INT, TypedParamType.UINT):
            valid = ADMIN_VALID.get(key) or (0, 1, 3, 9, 100, 65535)
            out += word(rng.choice(valid) if not self._edge() else rng.choice(WORDS_4))
        elif kind in (TypedParamType.LLONG, TypedParamType.ULLONG):
            out += dword(rng.choice((0, 1, 100, 1 << 20)) if not self._edge()
                         else rng.choice(WORDS_8))
        elif kind == TypedParamType.DOUBLE:
            out += struct.pack(">d", rng.choice(DOUBLES))
        elif kind == TypedParamType.BOOLEAN:
            out += word(rng.randint(0, 1) if not self._edge() else rng.choice(WORDS_4))
        elif kind == TypedParamType.STRING:
            edge = self._edge()
            self._counted(out, self._string_value(key, edge), 4_194_304, edge, 1)
        # any other discriminant: no arm; the decoder must refuse it


def _keys_for(hint: str) -> dict[str, TypedParamType]:
    if "identity" in hint:
        return IDENTITY_KEYS
    if "threadpool" in hint:
        return THREADPOOL_KEYS
    if "client_limits" in hint:
        return CLIENT_LIMIT_KEYS
    if "migrate" in hint:
        return MIGRATE_KEYS
    return {}


_SCALARS = frozenset({"int", "unsigned int", "hyper", "unsigned hyper", "double", "bool",
                      "char", "unsigned char", "short", "unsigned short"})
