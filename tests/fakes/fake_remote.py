"""A fake REMOTE-program daemon for client tests: in-memory domains, every call recorded.

Serve it with :func:`serve` (unix + read-only unix + optional TCP, in a private directory)
or hand it to :func:`pyvirt.rpc.testing.running_server`.  Knobs:

* ``features``: SUPPORTS_FEATURE answers (feature 10 = 1 also starts server pings);
* ``auth_types``: AUTH_LIST's answer (None: answer "unknown procedure", like old daemons);
* ``errors[PROC_NAME] = VirtError(...)``: fail that procedure;
* ``unsupported``: procedure names answered with "unknown procedure: N";
* ``calls``: ``[(PROC_NAME, args), ...]`` in arrival order; ``names()`` just the names.

Events are pushed with :meth:`FakeRemoteDispatcher.emit_lifecycle` and friends, to every
client registration that matches (per-domain filters honoured).

Migration: the phase procedures (302-307) answer with canned cookies; set
``fake.migration = FakeMigration(...)`` to script them as a real daemon behaves: how long
Perform runs and what GET_JOB_INFO (163) reports meanwhile, what ends it (a number of
progress polls, a time, or the client's suspend / post-copy switch / abort), the
MIGRATION_ITERATION events it sends, and how it fails.  ``fake.errors[PROC_NAME]`` still
fails any phase outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from pyvirt.constants import DomainState, JobType, ListFlags, MigrateFlags
from pyvirt.errors import (
    ErrorCode,
    NoDomainError,
    OperationAbortedError,
    OperationInvalidError,
    VirtError,
)
from pyvirt.rpc.error import unknown_procedure
from pyvirt.rpc.protocol import ProcSpec
from pyvirt.rpc.remote_protocol import REMOTE, RemoteProc
from pyvirt.rpc.remote_types import NonnullDomain, TypedParam
from pyvirt.rpc.server import RPCServer, ServerLimits
from pyvirt.rpc.server_client import ClientContext

RP = RemoteProc
_NAME = re.compile(r"<name>([^<]+)</name>")


@dataclasses.dataclass
class FakeDomain:
    name: str
    uuid: bytes = dataclasses.field(default_factory=lambda: uuid.uuid4().bytes)
    id: int = -1
    state: int = DomainState.SHUTOFF
    reason: int = 0
    persistent: bool = True
    autostart: bool = False
    xml: str = ""

    @property
    def handle(self) -> NonnullDomain:
        return NonnullDomain(self.name, self.uuid, self.id)

    @property
    def active(self) -> bool:
        return self.id != -1


#: what a real source reports when the client aborts the job (qemuMigrationJobCheckStatus)
ABORTED_MESSAGE = "migration out job: canceled by client"


@dataclasses.dataclass
class FakeMigration:
    """A script for the migration procedures of one fake daemon (source or destination).

    Perform (305) runs until one of its end conditions holds; with none set it returns at
    once.  Meanwhile GET_JOB_INFO (163) answers an UNBOUNDED job whose data_total and
    data_remaining are the next entry of ``progress`` (the last one repeats).
    """

    #: (data_total, data_remaining) for each GET_JOB_INFO answered while Perform runs
    progress: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    #: Perform returns once this many GET_JOB_INFO calls were answered during it
    perform_polls: int | None = None
    #: ... or after this many seconds
    perform_seconds: float | None = None
    #: ... or once the client did this: "suspend", "postcopy" (START_POST_COPY) or "abort"
    perform_until: str | None = None
    #: MIGRATION_ITERATION events sent when Perform starts, ``iteration_gap`` s apart
    iterations: tuple[int, ...] = ()
    iteration_gap: float = 0.05
    #: Perform fails with this once it ends (an abort fails it with libvirt's message)
    perform_error: VirtError | None = None
    #: PREPARE3_PARAMS' uri_out
    uri_out: str | None = "tcp://127.0.0.1:49152"
    #: a Perform still running after this long fails (a test that forgot to end it)
    max_seconds: float = 10.0
    # -- what happened -------------------------------------------------------------------
    performing: bool = False
    #: domains Begin was called for (a Perform without Begin and p2p is pyvirt's --direct)
    begun: set[str] = dataclasses.field(default_factory=set)
    polls: int = 0
    suspended: int = 0
    postcopy: int = 0
    aborted: int = 0

    def happened(self, what: str) -> bool:
        return bool({"suspend": self.suspended, "postcopy": self.postcopy,
                     "abort": self.aborted}.get(what, 0))  # fmt: skip

    def finished(self, elapsed: float) -> bool:
        if self.aborted:
            return True
        ends = [self.perform_polls is not None and self.polls >= self.perform_polls,
                self.perform_seconds is not None and elapsed >= self.perform_seconds,
                self.perform_until is not None and self.happened(self.perform_until)]
        unset = self.perform_polls is None and self.perform_seconds is None \
            and self.perform_until is None  # fmt: skip
        return unset or any(ends)

    def job_info(self) -> dict[str, int]:
        total, remaining = self.progress[min(self.polls, len(self.progress) - 1)] \
            if self.progress else (0, 0)  # fmt: skip
        self.polls += 1
        return {"type": JobType.UNBOUNDED, "time_elapsed": 500 * self.polls,
                "data_total": total, "data_processed": total - remaining,
                "data_remaining": remaining, "mem_total": total,
                "mem_processed": total - remaining, "mem_remaining": remaining}  # fmt: skip


@dataclasses.dataclass
class Registration:
    client: ClientContext
    event_id: int
    uuid: bytes | None


class FakeRemoteDispatcher:
    """Serves :data:`~pyvirt.rpc.remote_protocol.REMOTE` from memory."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        #: shared by several fakes to see the order of calls across daemons: (side, name, args)
        self.journal: list[tuple[str, str, Any]] | None = None
        self.side = ""
        self.features: dict[int, int] = {4: 1, 6: 1, 9: 1, 10: 1, 13: 1, 14: 1, 15: 1}
        self.auth_types: list[int] | None = [0]
        self.errors: dict[str, VirtError] = {}
        self.unsupported: set[str] = set()
        self.domains: dict[str, FakeDomain] = {}
        self.registrations: dict[int, Registration] = {}
        self.tunnel_data = bytearray()
        self.tunnel_done: asyncio.Future[str] | None = None
        self.tuning = {"downtime": 300, "bandwidth": 8796093022207, "cache_size": 67108864}
        self.job_stats: list[TypedParam] = []
        #: None: canned migration answers; set it to script the migration procedures
        self.migration: FakeMigration | None = None
        self._ids = itertools.count(1)
        self._callback_ids = itertools.count(100)  # distinct from client-side IDs on purpose

    # -- setup and inspection ----------------------------------------------------------------
    def add(self, name: str, *, running: bool = False, **kw: Any) -> FakeDomain:
        dom = FakeDomain(name, **kw)
        if running:
            dom.id, dom.state, dom.reason = next(self._ids), DomainState.RUNNING, 1
        self.domains[name] = dom
        return dom

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def last(self, proc_name: str) -> Any:
        return [args for name, args in self.calls if name == proc_name][-1]

    # -- dispatch ----------------------------------------------------------------------------
    async def dispatch(self, client: ClientContext, spec: ProcSpec, args: Any) -> Any:
        self.calls.append((spec.name, args))
        if self.journal is not None:
            self.journal.append((self.side, spec.name, args))
        if spec.name in self.errors:
            raise self.errors[spec.name]
        handler = getattr(self, f"do_{spec.name.lower()}", None)
        if handler is None or spec.name in self.unsupported:
            raise unknown_procedure(spec.number)
        result = handler(client, args)
        return await result if asyncio.iscoroutine(result) else result

    def _dom(self, handle: NonnullDomain) -> FakeDomain:
        for dom in self.domains.values():
            if dom.uuid == handle.uuid:
                return dom
        raise NoDomainError.by_uuid(str(uuid.UUID(bytes=handle.uuid)))

    def _find(self, pred: Any, error: VirtError) -> dict[str, Any]:
        for dom in self.domains.values():
            if pred(dom):
                return {"dom": dom.handle}
        raise error

    # -- connection --------------------------------------------------------------------------
    def do_auth_list(self, client: ClientContext, args: None) -> Any:
        if self.auth_types is None:
            raise unknown_procedure(RP.AUTH_LIST)
        return {"types": self.auth_types}

    def do_auth_polkit(self, client: ClientContext, args: None) -> Any:
        return {"complete": 1}

    def do_connect_supports_feature(self, client: ClientContext, args: Any) -> Any:
        supported = self.features.get(args["feature"], 0)
        if args["feature"] == 10 and supported:
            client.enable_keepalive()
        return {"supported": supported}

    def do_connect_open(self, client: ClientContext, args: Any) -> None:
        client.mark_opened()

    def do_connect_close(self, client: ClientContext, args: None) -> None:
        return None

    do_connect_register_close_callback = do_connect_close
    do_connect_unregister_close_callback = do_connect_close

    def do_connect_get_type(self, client: ClientContext, args: None) -> Any:
        return {"type": "QEMU"}

    def do_connect_get_version(self, client: ClientContext, args: None) -> Any:
        return {"hv_ver": 10_000_000}

    def do_connect_get_lib_version(self, client: ClientContext, args: None) -> Any:
        return {"lib_ver": 9_000_000}

    def do_connect_get_hostname(self, client: ClientContext, args: None) -> Any:
        return {"hostname": "fakehost"}

    def do_connect_get_capabilities(self, client: ClientContext, args: None) -> Any:
        return {"capabilities": "<capabilities/>"}

    def do_connect_get_max_vcpus(self, client: ClientContext, args: Any) -> Any:
        return {"max_vcpus": 255}

    def do_node_get_info(self, client: ClientContext, args: None) -> Any:
        return {"model": b"x86_64".ljust(32, b"\0"), "memory": 8 * 1024 * 1024, "cpus": 4,
                "mhz": 2000, "nodes": 1, "sockets": 1, "cores": 2, "threads": 2}  # fmt: skip

    # -- listing and lookup ------------------------------------------------------------------
    def do_connect_list_all_domains(self, client: ClientContext, args: Any) -> Any:
        flags = args["flags"]
        doms = [d for d in self.domains.values()
                if not flags & (ListFlags.ACTIVE | ListFlags.INACTIVE)
                or (flags & ListFlags.ACTIVE and d.active)
                or (flags & ListFlags.INACTIVE and not d.active)]  # fmt: skip
        return {"domains": [d.handle for d in doms] if args["need_results"] else [],
                "ret": len(doms)}  # fmt: skip

    def do_connect_num_of_domains(self, client: ClientContext, args: None) -> Any:
        return {"num": sum(d.active for d in self.domains.values())}

    def do_connect_list_domains(self, client: ClientContext, args: Any) -> Any:
        return {"ids": [d.id for d in self.domains.values() if d.active][: args["maxids"]]}

    def do_connect_num_of_defined_domains(self, client: ClientContext, args: None) -> Any:
        return {"num": sum(not d.active for d in self.domains.values())}

    def do_connect_list_defined_domains(self, client: ClientContext, args: Any) -> Any:
        names = [d.name for d in self.domains.values() if not d.active]
        return {"names": names[: args["maxnames"]]}

    def do_domain_lookup_by_name(self, client: ClientContext, args: Any) -> Any:
        return self._find(lambda d: d.name == args["name"], NoDomainError.by_name(args["name"]))

    def do_domain_lookup_by_id(self, client: ClientContext, args: Any) -> Any:
        wanted = args["id"]
        return self._find(lambda d: d.active and d.id == wanted, NoDomainError.by_id(wanted))

    def do_domain_lookup_by_uuid(self, client: ClientContext, args: Any) -> Any:
        text = str(uuid.UUID(bytes=args["uuid"]))
        return self._find(lambda d: d.uuid == args["uuid"], NoDomainError.by_uuid(text))

    # -- information -------------------------------------------------------------------------
    def do_domain_get_os_type(self, client: ClientContext, args: Any) -> Any:
        self._dom(args["dom"])
        return {"type": "hvm"}

    def do_domain_get_info(self, client: ClientContext, args: Any) -> Any:
        dom = self._dom(args["dom"])
        return {"state": dom.state, "max_mem": 1048576, "memory": 524288, "nr_virt_cpu": 2,
                "cpu_time": 123456789 if dom.active else 0}  # fmt: skip

    def do_domain_get_state(self, client: ClientContext, args: Any) -> Any:
        dom = self._dom(args["dom"])
        return {"state": dom.state, "reason": dom.reason}

    def do_domain_get_control_info(self, client: ClientContext, args: Any) -> Any:
        self._dom(args["dom"])
        return {"state": 0, "details": 0, "state_time": 0}

    def do_domain_get_xml_desc(self, client: ClientContext, args: Any) -> Any:
        dom = self._dom(args["dom"])
        return {"xml": dom.xml or f"<domain type='kvm'><name>{dom.name}</name></domain>"}

    def do_domain_is_active(self, client: ClientContext, args: Any) -> Any:
        return {"active": int(self._dom(args["dom"]).active)}

    def do_domain_is_persistent(self, client: ClientContext, args: Any) -> Any:
        return {"persistent": int(self._dom(args["dom"]).persistent)}

    def do_domain_get_autostart(self, client: ClientContext, args: Any) -> Any:
        return {"autostart": int(self._dom(args["dom"]).autostart)}

    def do_domain_set_autostart(self, client: ClientContext, args: Any) -> None:
        self._dom(args["dom"]).autostart = bool(args["autostart"])

    def do_domain_has_managed_save_image(self, client: ClientContext, args: Any) -> Any:
        self._dom(args["dom"])
        return {"result": 0}

    # -- lifecycle ---------------------------------------------------------------------------
    def _define(self, xml: str, *, persistent: bool = True) -> FakeDomain:
        match = _NAME.search(xml)
        if match is None:
            raise VirtError("XML error: missing name", code=27)
        dom = self.domains.get(match.group(1)) or self.add(match.group(1))
        dom.xml, dom.persistent = xml, dom.persistent or persistent
        return dom

    def do_domain_define_xml(self, client: ClientContext, args: Any) -> Any:
        return {"dom": self._define(args["xml"]).handle}

    def do_domain_define_xml_flags(self, client: ClientContext, args: Any) -> Any:
        return {"dom": self._define(args["xml"]).handle}

    def do_domain_create_xml(self, client: ClientContext, args: Any) -> Any:
        dom = self._define(args["xml_desc"], persistent=False)
        self._start(dom)
        return {"dom": dom.handle}

    def _start(self, dom: FakeDomain) -> None:
        if dom.active:
            raise OperationInvalidError("domain is already running")
        dom.id, dom.state, dom.reason = next(self._ids), DomainState.RUNNING, 1

    def _stop(self, handle: NonnullDomain, reason: int) -> None:
        dom = self._dom(handle)
        if not dom.active:
            raise OperationInvalidError("domain is not running")
        dom.id, dom.state, dom.reason = -1, DomainState.SHUTOFF, reason
        if not dom.persistent:
            del self.domains[dom.name]

    def do_domain_create(self, client: ClientContext, args: Any) -> None:
        self._start(self._dom(args["dom"]))

    def do_domain_create_with_flags(self, client: ClientContext, args: Any) -> Any:
        dom = self._dom(args["dom"])
        self._start(dom)
        return {"dom": dom.handle}

    def do_domain_destroy(self, client: ClientContext, args: Any) -> None:
        self._stop(args["dom"], 2)

    do_domain_destroy_flags = do_domain_destroy

    def do_domain_shutdown(self, client: ClientContext, args: Any) -> None:
        self._stop(args["dom"], 1)

    do_domain_shutdown_flags = do_domain_shutdown

    def do_domain_reboot(self, client: ClientContext, args: Any) -> None:
        self._dom(args["dom"])

    def do_domain_suspend(self, client: ClientContext, args: Any) -> None:
        dom = self._dom(args["dom"])
        dom.state, dom.reason = DomainState.PAUSED, 1
        if self.migration is not None and self.migration.performing:
            self.migration.suspended += 1

    def do_domain_resume(self, client: ClientContext, args: Any) -> None:
        dom = self._dom(args["dom"])
        dom.state, dom.reason = DomainState.RUNNING, 5

    def do_domain_undefine(self, client: ClientContext, args: Any) -> None:
        dom = self._dom(args["dom"])
        if dom.active:
            dom.persistent = False
        else:
            del self.domains[dom.name]

    do_domain_undefine_flags = do_domain_undefine

    # -- jobs and tuning ---------------------------------------------------------------------
    def do_domain_get_job_info(self, client: ClientContext, args: Any) -> Any:
        self._dom(args["dom"])
        fields = ("time_elapsed", "time_remaining", "data_total", "data_processed",
                  "data_remaining", "mem_total", "mem_processed", "mem_remaining",
                  "file_total", "file_processed", "file_remaining")  # fmt: skip
        if self.migration is not None:
            info = self.migration.job_info() if self.migration.performing else \
                {"type": JobType.NONE}  # fmt: skip
            return {"type": info.pop("type"), **{f: info.get(f, 0) for f in fields}}
        fields = ("time_elapsed", "time_remaining", "data_total", "data_processed",
                  "data_remaining", "mem_total", "mem_processed", "mem_remaining",
                  "file_total", "file_processed", "file_remaining")  # fmt: skip
        return {"type": JobType.UNBOUNDED, **{f: i + 1 for i, f in enumerate(fields)}}

    def do_domain_get_job_stats(self, client: ClientContext, args: Any) -> Any:
        self._dom(args["dom"])
        return {"type": JobType.COMPLETED, "params": self.job_stats}

    def do_domain_abort_job(self, client: ClientContext, args: Any) -> None:
        self._dom(args["dom"])
        if self.migration is not None and self.migration.performing:
            self.migration.aborted += 1
            return
        raise OperationInvalidError("no job is active on the domain")

    do_domain_abort_job_flags = do_domain_abort_job

    def _set(self, key: str, args: Any) -> None:
        self._dom(args["dom"])
        self.tuning[key] = args[key]

    def _get(self, key: str, args: Any) -> Any:
        self._dom(args["dom"])
        return {key: self.tuning[key]}

    def do_domain_migrate_set_max_downtime(self, client: ClientContext, args: Any) -> None:
        self._set("downtime", args)

    def do_domain_migrate_get_max_downtime(self, client: ClientContext, args: Any) -> Any:
        return self._get("downtime", args)

    def do_domain_migrate_set_max_speed(self, client: ClientContext, args: Any) -> None:
        self._set("bandwidth", args)

    def do_domain_migrate_get_max_speed(self, client: ClientContext, args: Any) -> Any:
        return self._get("bandwidth", args)

    def do_domain_migrate_set_compression_cache(self, client: ClientContext, args: Any) -> None:
        self._set("cache_size", args)

    def do_domain_migrate_get_compression_cache(self, client: ClientContext, args: Any) -> Any:
        return self._get("cache_size", args)

    def do_domain_migrate_start_post_copy(self, client: ClientContext, args: Any) -> None:
        self._dom(args["dom"])
        if self.migration is not None:
            if not self.migration.performing:
                raise OperationInvalidError("domain is not being migrated")
            self.migration.postcopy += 1

    # -- migration phases (canned answers, or as self.migration scripts them) --------------
    def do_domain_migrate_begin3_params(self, client: ClientContext, args: Any) -> Any:
        dom = self._dom(args["dom"])
        if self.migration is not None:
            self.migration.begun.add(dom.name)
        return {"cookie_out": b"<cookie-begin/>\0", "xml": f"<domain><name>{dom.name}</name>"
                                                           "</domain>"}  # fmt: skip

    def do_domain_migrate_prepare3_params(self, client: ClientContext, args: Any) -> Any:
        uri_out = self.migration.uri_out if self.migration else "tcp://127.0.0.1:49152"
        return {"cookie_out": b"<cookie-prepare/>\0", "uri_out": uri_out}

    async def do_domain_migrate_perform3_params(self, client: ClientContext, args: Any) -> Any:
        dom = self._dom(args["dom"])
        if self.migration is None:
            return {"cookie_out": b"<cookie-perform/>\0"}
        await self._perform(self.migration, dom)
        # a real source answers a peer-to-peer (§11.4) or direct Perform with no cookie
        managed = not args["flags"] & MigrateFlags.PEER2PEER and dom.name in self.migration.begun
        self.migration.begun.discard(dom.name)
        return {"cookie_out": b"<cookie-perform/>\0" if managed else b""}

    async def _perform(self, mig: FakeMigration, dom: FakeDomain) -> None:
        mig.performing, started = True, time.monotonic()
        try:
            for iteration in mig.iterations:
                await asyncio.sleep(mig.iteration_gap)
                await self.emit_iteration(dom.name, iteration)
            while not mig.finished(time.monotonic() - started):
                if time.monotonic() - started > mig.max_seconds:
                    raise VirtError("internal error: fake Perform was never ended")
                await asyncio.sleep(0.01)
        finally:
            mig.performing = False
        if mig.aborted:
            raise OperationAbortedError(ABORTED_MESSAGE)
        if mig.perform_error is not None:
            raise mig.perform_error

    def do_domain_migrate_finish3_params(self, client: ClientContext, args: Any) -> Any:
        if self.migration is not None and args["cancelled"]:
            # qemuMigrationDstFinish: no domain, and this "error" (virsh never prints it)
            raise VirtError("migration successfully aborted", code=ErrorCode.MIGRATE_FINISH_OK)
        names = [p.value for p in args["params"] if p.field == "destination_name"]
        name = str(names[-1]) if names else "migrated"
        dom = self.domains.get(name) or self.add(name, running=True)
        if args["flags"] & MigrateFlags.OFFLINE:
            dom.id, dom.state, dom.reason = -1, DomainState.SHUTOFF, 0
        elif args["flags"] & MigrateFlags.PAUSED:
            dom.state, dom.reason = DomainState.PAUSED, 2
        return {"dom": dom.handle, "cookie_out": b"<cookie-finish/>\0"}

    def do_domain_migrate_confirm3_params(self, client: ClientContext, args: Any) -> None:
        dom = self._dom(args["dom"])
        if self.migration is None or args["cancelled"] or args["flags"] & MigrateFlags.OFFLINE:
            return
        dom.id, dom.state, dom.reason = -1, DomainState.SHUTOFF, 4  # shut off, migrated
        if args["flags"] & MigrateFlags.UNDEFINE_SOURCE:
            del self.domains[dom.name]

    def do_domain_migrate_prepare_tunnel3_params(self, client: ClientContext, args: Any) -> Any:
        stream = client.stream()
        self.tunnel_done = asyncio.get_running_loop().create_future()

        async def sink() -> None:
            while data := await stream.recv():
                self.tunnel_data += data
            await stream.finish()
            assert self.tunnel_done is not None
            self.tunnel_done.set_result("finished")

        client.user_data.setdefault("tasks", []).append(asyncio.ensure_future(sink()))
        return {"cookie_out": b"<cookie-tunnel/>\0"}

    # -- events ------------------------------------------------------------------------------
    def do_connect_domain_event_callback_register_any(self, client: ClientContext,
                                                      args: Any) -> Any:  # fmt: skip
        callback_id = next(self._callback_ids)
        dom = args["dom"]
        self.registrations[callback_id] = Registration(client, args["event_id"],
                                                       dom.uuid if dom else None)  # fmt: skip
        return {"callback_id": callback_id}

    def do_connect_domain_event_callback_deregister_any(self, client: ClientContext,
                                                        args: Any) -> None:  # fmt: skip
        if self.registrations.pop(args["callback_id"], None) is None:
            raise VirtError(f"invalid argument: callback ID {args['callback_id']} not found",
                            code=8)  # fmt: skip

    async def _emit(self, event_id: int, dom: FakeDomain, proc: RemoteProc,
                    body: dict[str, Any]) -> int:  # fmt: skip
        sent = 0
        for callback_id, reg in list(self.registrations.items()):
            if reg.event_id == event_id and reg.uuid in (None, dom.uuid):
                await reg.client.send_message(REMOTE, proc, {"callback_id": callback_id, **body})
                sent += 1
        return sent

    async def emit_lifecycle(self, name: str, event: int, detail: int) -> int:
        dom = self.domains[name]
        msg = {"dom": dom.handle, "event": event, "detail": detail}
        return await self._emit(0, dom, RP.DOMAIN_EVENT_CALLBACK_LIFECYCLE, {"msg": msg})

    async def emit_iteration(self, name: str, iteration: int) -> int:
        dom = self.domains[name]
        body = {"dom": dom.handle, "iteration": iteration}
        return await self._emit(20, dom, RP.DOMAIN_EVENT_CALLBACK_MIGRATION_ITERATION, body)

    async def emit_job_completed(self, name: str, params: list[TypedParam]) -> int:
        dom = self.domains[name]
        body = {"dom": dom.handle, "params": params}
        return await self._emit(21, dom, RP.DOMAIN_EVENT_CALLBACK_JOB_COMPLETED, body)


@dataclasses.dataclass
class Served:
    server: RPCServer
    fake: FakeRemoteDispatcher
    dir: str
    sock: str
    sock_ro: str
    tcp_port: int | None

    def uri(self, extra: str = "") -> str:
        return f"qemu+unix:///system?socket={self.sock}{extra}"


@contextlib.asynccontextmanager
async def serve(fake: FakeRemoteDispatcher | None = None, *, tcp: bool = False,
                limits: ServerLimits | None = None) -> AsyncIterator[Served]:  # fmt: skip
    """A server for ``fake`` on ``DIR/libvirt-sock`` (+ ``-ro``, + 127.0.0.1 TCP)."""
    tmpdir = tempfile.mkdtemp(prefix="pv-cl-")  # short: unix socket paths are limited
    fake = fake or FakeRemoteDispatcher()
    server = RPCServer(fake, (REMOTE,), limits)
    try:
        await server.listen_unix(f"{tmpdir}/libvirt-sock")
        await server.listen_unix(f"{tmpdir}/libvirt-sock-ro", readonly=True)
        port = (await server.listen_tcp("127.0.0.1", 0)).port if tcp else None
        await server.start()
        yield Served(server, fake, tmpdir, f"{tmpdir}/libvirt-sock",
                     f"{tmpdir}/libvirt-sock-ro", port)  # fmt: skip
    finally:
        await server.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


T = TypeVar("T")


class ServedPair:
    """A migration source and destination, each a :func:`serve`, on one thread and loop of
    their own (as daemons in other processes), recording into one shared ``journal``.

    ``src.uri()`` / ``dst.uri()`` are unix URIs; ``dst_tcp_uri`` is the destination over
    TCP (a peer-to-peer dconnuri the client does not refuse as local).
    """

    def __init__(self) -> None:
        self.journal: list[tuple[str, str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="fake-daemons")  # fmt: skip
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()
        self.src: Served = self.run(self._stack.enter_async_context(serve(tcp=True)))
        self.dst: Served = self.run(self._stack.enter_async_context(serve(tcp=True)))
        for side, served in (("SRC", self.src), ("DST", self.dst)):
            served.fake.journal, served.fake.side = self.journal, side

    @property
    def dst_tcp_uri(self) -> str:
        return f"qemu+tcp://127.0.0.1:{self.dst.tcp_port}/system"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self._stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
        self.loop.close()


# -- a stand-in for ssh ----------------------------------------------------------------------
#: checks ssh's option layout (options, HOST, "--", ONE command word), records its argv
#: NUL-separated in $FAKE_SSH_DIR/argv, says something on stderr (as a prompt would), then
#: runs the command as sshd does (``sh -c``) in $FAKE_SSH_DIR/remote, the "remote host",
#: whose ``python3`` is this interpreter
FAKE_SSH_SCRIPT = r"""#!/bin/sh
printf '%s\0' "$@" > "$FAKE_SSH_DIR/argv"
printf 'fake-ssh: pretend prompt\n' >&2
while [ $# -gt 0 ]; do
  case "$1" in
    -p|-l|-i|-o|-e) shift 2 ;;
    -T) shift ;;
    --) shift; break ;;
    -*) echo "fake-ssh: unexpected option $1" >&2; exit 255 ;;
    *) host=$1; shift ;;
  esac
done
[ -n "$host" ] || { echo "fake-ssh: no host" >&2; exit 255; }
[ $# -eq 1 ] || { echo "fake-ssh: want one command word after --, got $#" >&2; exit 255; }
cd "$FAKE_SSH_DIR/remote" || exit 255
PATH="$FAKE_SSH_DIR/bin:$PATH" exec sh -c "$1"
"""


def write_script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def install_fake_ssh(base_dir: str, setenv: Callable[[str, str], None]) -> str:
    """Install the stand-in under ``base_dir``; returns its path (``setenv`` is pytest's)."""
    base = Path(base_dir)
    (base / "remote").mkdir()
    (base / "bin").mkdir()
    (base / "bin" / "python3").symlink_to(sys.executable)
    setenv("FAKE_SSH_DIR", str(base))
    return write_script(base / "fake-ssh", FAKE_SSH_SCRIPT)
