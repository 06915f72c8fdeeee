"""Well-formed upkeep beside the fuzzing: domains to aim at, bounded guests, admin limits.

* The fuzzer aims at real domains (their UUIDs make calls reach past "domain not found"):
  two base domains always exist, one running; the :class:`~tests.fuzz.gen.World` is
  refreshed from the daemon's list.
* Fuzzed calls start guests (each a fake QEMU process): extra running guests are
  destroyed and extra definitions removed, so a long run stays within bounds.
* Admin frames may legitimately lower the daemon's limits (an administrator may); after
  each admin session the limits read at start are put back, so the watchdog measures the
  daemon and not a starvation the fuzzer ordered.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from pyvirt.errors import VirtError
from pyvirt.rpc.admin_protocol import ADMIN, AdminProc, AdminServer
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.connection import ConnectionClosedError
from pyvirt.rpc.remote_protocol import REMOTE, RemoteProc
from pyvirt.rpc.remote_types import NonnullDomain, TypedParam
from tests.fuzz.gen import DomainRef, World
from tests.fuzz.hostile import HostileCorpus
from tests.fuzz.scenarios import Sockets
from tests.fuzz.session import INTERNAL, Stats

RP, AP = RemoteProc, AdminProc
BASE = {b"fz-base-0": "6f1c2b7e-0d4a-4c59-9a6e-1b2c3d4e5f60",
        b"fz-base-1": "6f1c2b7e-0d4a-4c59-9a6e-1b2c3d4e5f61"}
RUNNING_BASE = b"fz-base-0"
MAX_RUNNING = 3
MAX_DEFINED = 6
CALL_TIMEOUT = 30.0
_THREADPOOL_SET = ("minWorkers", "maxWorkers", "prioWorkers")
_LIMITS_SET = ("nclients_max", "nclients_unauth_max")


class Keeper:
    def __init__(self, sockets: Sockets, world: World, corpus: HostileCorpus) -> None:
        self.sockets = sockets
        self.world = world
        self.corpus = corpus
        self._rw: RPCClient | None = None
        self._admin: RPCClient | None = None
        self._admin_defaults: dict[str, dict[str, int]] = {}
        self.errors: list[str] = []

    async def start(self) -> None:
        admin = await self._admin_client()
        for server in ("libvirtd", "admin"):
            self._admin_defaults[server] = await _admin_settings(admin, server)
        await self.housekeeping(None)

    async def close(self) -> None:
        for client in (self._rw, self._admin):
            if client is not None:
                await client.close()

    # -- domains --------------------------------------------------------------------------------
    async def _rw_client(self) -> RPCClient:
        if self._rw is None or not self._rw.is_running:
            self._rw = await RPCClient.connect_unix(self.sockets.rw)
            await self._rw.call(REMOTE, RP.CONNECT_OPEN, {"name": "qemu:///system", "flags": 0},
                                timeout=CALL_TIMEOUT)
        return self._rw

    async def housekeeping(self, stats: Stats | None) -> None:
        try:
            client = await self._rw_client()
            domains = await self._listing(client)
            await self._ensure_base(client, domains)
            await self._trim(client, domains)
            self.world.domains[:] = await self._listing(client)
        except (VirtError, OSError, TimeoutError) as exc:
            self._note(stats, f"housekeeping: {exc}")

    async def _listing(self, client: RPCClient) -> list[DomainRef]:
        ret = await client.call(REMOTE, RP.CONNECT_LIST_ALL_DOMAINS,
                                {"need_results": 1, "flags": 0}, timeout=CALL_TIMEOUT)
        return [DomainRef(d.name.encode("utf-8", "surrogateescape"), bytes(d.uuid), d.id)
                for d in ret["domains"]]

    async def _ensure_base(self, client: RPCClient, domains: list[DomainRef]) -> None:
        present = {d.name: d for d in domains}
        for name, uuid in BASE.items():
            if name not in present:
                xml = self.corpus.domain_xml_plain(name, uuid)
                await self._quiet(client, RP.DOMAIN_DEFINE_XML, {"xml": xml.decode()})
        base = present.get(RUNNING_BASE)
        if base is None or base.id == -1:
            dom = NonnullDomain(RUNNING_BASE.decode(), uuidlib.UUID(BASE[RUNNING_BASE]).bytes)
            await self._quiet(client, RP.DOMAIN_CREATE, {"dom": dom})

    async def _trim(self, client: RPCClient, domains: list[DomainRef]) -> None:
        running = [d for d in domains if d.id != -1 and d.name not in BASE]
        inactive = [d for d in domains if d.id == -1 and d.name not in BASE]
        for ref in running[MAX_RUNNING:]:
            await self._quiet(client, RP.DOMAIN_DESTROY, {"dom": _handle(ref)})
        for ref in inactive[MAX_DEFINED:]:
            await self._quiet(client, RP.DOMAIN_UNDEFINE, {"dom": _handle(ref)})

    async def _quiet(self, client: RPCClient, proc: int, args: dict[str, Any]) -> None:
        """A call whose refusal is fine (the fuzzer may have changed the domain meanwhile);
        only the daemon's generic internal error counts."""
        try:
            await client.call(REMOTE, proc, args, timeout=CALL_TIMEOUT)
        except VirtError as exc:
            if INTERNAL in exc.message:
                self.errors.append(f"{RemoteProc(proc).name}: {exc.message}")

    # -- admin limits ---------------------------------------------------------------------------
    async def _admin_client(self) -> RPCClient:
        if self._admin is None or not self._admin.is_running:
            self._admin = await RPCClient.connect_unix(self.sockets.admin, programs=(ADMIN,))
            await self._admin.call(ADMIN, AP.CONNECT_OPEN, {"flags": 0}, timeout=CALL_TIMEOUT)
        return self._admin

    async def restore_admin(self) -> None:
        """Put back the thread-pool and client limits read at start, where they changed.
        A fuzzed CLIENT_CLOSE may have closed this connection: it is reopened once."""
        for attempt in range(2):
            try:
                await self._restore_admin(await self._admin_client())
                return
            except ConnectionClosedError as exc:
                if attempt:
                    self.errors.append(f"restoring admin limits: {exc}")
            except (VirtError, OSError, TimeoutError) as exc:
                self.errors.append(f"restoring admin limits: {exc}")
                return

    async def _restore_admin(self, admin: RPCClient) -> None:
        for server, defaults in self._admin_defaults.items():
            now = await _admin_settings(admin, server)
            srv = AdminServer(server)
            for proc, keys in ((AP.SERVER_SET_THREADPOOL_PARAMETERS, _THREADPOOL_SET),
                               (AP.SERVER_SET_CLIENT_LIMITS, _LIMITS_SET)):
                changed = [TypedParam.of_uint(k, defaults[k]) for k in keys
                           if now[k] != defaults[k]]
                if changed:
                    await admin.call(ADMIN, proc, {"srv": srv, "params": changed, "flags": 0},
                                     timeout=CALL_TIMEOUT)

    def _note(self, stats: Stats | None, what: str) -> None:
        if stats is not None:
            stats.sessions["housekeeping-error"] += 1
        if INTERNAL in what:
            self.errors.append(what)


async def _admin_settings(admin: RPCClient, server: str) -> dict[str, int]:
    args = {"srv": AdminServer(server), "flags": 0}
    pool = await admin.call(ADMIN, AP.SERVER_GET_THREADPOOL_PARAMETERS, args,
                            timeout=CALL_TIMEOUT)
    limits = await admin.call(ADMIN, AP.SERVER_GET_CLIENT_LIMITS, args, timeout=CALL_TIMEOUT)
    return {p.field: int(p.value) for p in [*pool["params"], *limits["params"]]}


def _handle(ref: DomainRef) -> NonnullDomain:
    return NonnullDomain(ref.name.decode("utf-8", "surrogateescape"), ref.uuid, ref.id)
