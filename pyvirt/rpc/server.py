"""The RPC server: listeners, accept control, the worker pool, global request cap.

Processing controls (libvirtd.conf names and defaults), each enforced here:

==========================  ====================================================================
``max_clients``             accepting stops at the limit; further connections wait in the
                            kernel's listen backlog until a client leaves (libvirt does the same)
``max_queued_clients``      the listen backlog
``max_anonymous_clients``   clients not yet authenticated.  A listener whose auth is "none"
                            authenticates by definition (libvirt's rule), so its clients never
                            count; at the limit only listeners that do authenticate stop
                            accepting (libvirt stops every listener: a deliberate deviation)
``handshake_timeout``       (pyvirt) close a client that has not opened within this many seconds
``min/max/prio_workers``    the :class:`~pyvirt.rpc.workers.WorkerPool`
``max_requests``            calls running across all clients; beyond it the reader of the
                            client waits (its socket is not read).  Priority procedures are
                            counted but never wait, so DESTROY is not stuck behind the cap.
                            A call stops counting once its reply is queued
``max_client_requests``     calls in flight per client, until each reply has left the queue;
                            beyond it that client's socket is not read.  Keepalive is
                            answered by the reader before any cap
``keepalive_interval/count``server pings, started when the dispatcher calls
                            ``client.enable_keepalive()`` (on SUPPORTS_FEATURE(10))
``max_client_queued_bytes`` (pyvirt) replies and events queued for one client; a client with
                            more than this unread is dropped (see :mod:`.server_client`)
``max_client_streams``      (pyvirt) open data streams per client; more get an error reply
``max_client_event_callbacks`` (pyvirt) enforced by the daemon's event code
``max_stream_queued_bytes`` (pyvirt) incoming data buffered per stream before the client's
                            socket is no longer read
==========================  ====================================================================

Accepting uses ``loop.add_reader`` on the listening sockets and a synchronous non-blocking
``accept()``, so the client count is exact at the moment of each accept and the limits are
never overshot, even with several listeners.  When ``accept()`` fails for want of a file
descriptor (EMFILE, ENFILE) or memory, the connection stays in the backlog and the socket
stays readable: the server stops accepting on every listener for a delay that doubles from
``ACCEPT_BACKOFF_MIN_S`` to ``ACCEPT_BACKOFF_MAX_S`` (reset by the next successful accept)
and logs at most one line per ``ACCEPT_LOG_INTERVAL_S``, instead of spinning on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from pyvirt.errors import InvalidArgError
from pyvirt.rpc.packet import PACKET_MAX, READER_LIMIT
from pyvirt.rpc.protocol import Program
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.server_client import Dispatcher, ServerClient
from pyvirt.rpc.stream import STREAM_QUEUED_BYTES
from pyvirt.rpc.tls import ServerTLS, tls_accept
from pyvirt.rpc.unix_listen import bind_unix_listener
from pyvirt.rpc.workers import WorkerPool

log = logging.getLogger(__name__)

#: accept() failures that mean "no resources now": back off instead of retrying at once
ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF_MIN_S = 0.05
ACCEPT_BACKOFF_MAX_S = 1.0
ACCEPT_LOG_INTERVAL_S = 10.0
#: listener authentication that needs no exchange: its clients are authenticated at once
AUTH_NONE = "none"


@dataclasses.dataclass
class ServerLimits:
    """Processing controls; defaults are libvirtd's."""

    max_clients: int = 5000
    max_queued_clients: int = 1000
    max_anonymous_clients: int = 20
    min_workers: int = 5
    max_workers: int = 20
    prio_workers: int = 5
    max_requests: int = 20
    max_client_requests: int = 5
    keepalive_interval: float = 5.0
    keepalive_count: int = 5
    handshake_timeout: float | None = 60.0
    max_packet: int = PACKET_MAX
    # pyvirt's per-client caps (pyvirtd.conf keys of the same names)
    max_client_queued_bytes: int = 8 << 20
    max_client_streams: int = 16
    max_client_event_callbacks: int = 256
    max_stream_queued_bytes: int = STREAM_QUEUED_BYTES


@dataclasses.dataclass(frozen=True, slots=True)
class ClientRecord:
    """One connection as the admin interface reports it (libvirt's ``virNetServerClient``)."""

    id: int
    transport: str  # the listener's kind: "unix", "tcp" or "tls"
    connected_at: float  # time.time() at accept (libvirt's conn_time)
    readonly: bool
    opened: bool
    #: tcp and tls: the peer as "addr:port" ("[v6addr]:port")
    sock_addr: str | None = None
    #: unix only: the peer process's credentials (SO_PEERCRED); None when unknown
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _ClientMeta:
    transport: str
    connected_at: float
    sock_addr: str | None
    creds: tuple[int, int, int] | None  # pid, uid, gid


@dataclasses.dataclass(eq=False)
class Listener:
    sock: socket.socket
    kind: str  # "unix", "tcp" or "tls"
    address: str  # socket path, or "host:port"
    readonly: bool
    path: str | None = None
    #: the listener's auth scheme (auth_unix_rw, auth_unix_ro, auth_tcp, auth_tls)
    auth: str = AUTH_NONE
    #: tls only: the context and the checks after the handshake
    tls: ServerTLS | None = None
    #: whether the loop watches the socket for connections now
    accepting: bool = False

    @property
    def authenticates(self) -> bool:
        """Its clients start anonymous (count against max_anonymous_clients)."""
        return self.auth != AUTH_NONE

    @property
    def port(self) -> int:
        if self.kind == "unix":
            raise AttributeError("a unix listener has no port")
        port: int = self.sock.getsockname()[1]
        return port


class RPCServer:
    def __init__(
        self,
        dispatcher: Dispatcher,
        programs: Iterable[Program] = (REMOTE,),
        limits: ServerLimits | None = None,
        *,
        name: str = "rpc-server",
    ) -> None:
        self.dispatcher = dispatcher
        self.name = name
        self.limits = dataclasses.replace(limits) if limits is not None else ServerLimits()
        _check_client_limits(self.limits.max_clients, self.limits.max_anonymous_clients)
        lim = self.limits
        self.pool = WorkerPool(lim.min_workers, lim.max_workers, lim.prio_workers, name=name)
        self._programs = {(p.number, p.version): p for p in programs}
        self._listeners: list[Listener] = []
        self._clients: dict[int, ServerClient] = {}
        self._meta: dict[int, _ClientMeta] = {}  # what the admin interface reports
        self._ids = itertools.count(1)
        self._nclients = 0  # includes connections accepted but not yet set up
        self._nanonymous = 0
        self._running = False
        self._requests = 0
        self._request_room = asyncio.Event()
        self._setup_tasks: set[asyncio.Task[None]] = set()
        self._backoff: asyncio.TimerHandle | None = None
        self._backoff_s = ACCEPT_BACKOFF_MIN_S
        self._accept_failures = 0  # since the last log line about them
        self._accept_logged_at = -ACCEPT_LOG_INTERVAL_S

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.pool.start()
        self._running = True
        self._update_accepting()

    async def close(self) -> None:
        self._running = False
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None
        self._update_accepting()
        for listener in self._listeners:
            listener.sock.close()
            if listener.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(listener.path)
        self._listeners.clear()
        for task in list(self._setup_tasks):
            task.cancel()
        await asyncio.gather(*self._setup_tasks, return_exceptions=True)
        await asyncio.gather(
            *(c.close("server shutting down") for c in list(self._clients.values()))
        )
        await self.pool.close()

    async def __aenter__(self) -> RPCServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- listeners ---------------------------------------------------------------------------
    async def listen_unix(
        self, path: str, *, mode: int = 0o666, group: int | None = None,
        readonly: bool = False, auth: str = AUTH_NONE
    ) -> Listener:
        """*mode* and *group* (a gid; None: the process's) are the socket file's from its
        creation on (:func:`bind_unix_listener`)."""
        sock = bind_unix_listener(path, mode, group)
        try:
            sock.listen(self.limits.max_queued_clients)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return self._add_listener(Listener(sock, "unix", path, readonly, path, auth))

    async def listen_tcp(
        self, host: str, port: int, *, readonly: bool = False, auth: str = AUTH_NONE,
        tls: ServerTLS | None = None,
    ) -> Listener:
        """A TCP listener; with *tls*, clients must complete the TLS handshake and pass
        :meth:`ServerTLS.refusal` before their first packet (see :mod:`.tls`)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(self.limits.max_queued_clients)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        bound = sock.getsockname()
        address = f"{bound[0]}:{bound[1]}"
        transport = "tcp" if tls is None else "tls"
        return self._add_listener(Listener(sock, transport, address, readonly, None, auth, tls))

    def _add_listener(self, listener: Listener) -> Listener:
        self._listeners.append(listener)
        log.info("%s: listening on %s %s%s (auth %s)", self.name, listener.kind,
                 listener.address, " (read-only)" if listener.readonly else "",
                 listener.auth)  # fmt: skip
        if self._running:
            self._update_accepting()
        return listener

    @property
    def listeners(self) -> list[Listener]:
        return list(self._listeners)

    # -- accepting ---------------------------------------------------------------------------
    def _may_accept(self, listener: Listener) -> bool:
        if not self._running or self._backoff is not None:
            return False
        if self._nclients >= self.limits.max_clients:
            return False
        return not listener.authenticates or \
            self._nanonymous < self.limits.max_anonymous_clients

    def _update_accepting(self) -> None:
        """Watch exactly the listeners that may accept now; log when that set changes."""
        changed = False
        for listener in self._listeners:
            want = self._may_accept(listener)
            if want == listener.accepting:
                continue
            loop = asyncio.get_running_loop()
            if want:
                loop.add_reader(listener.sock, self._on_readable, listener)
            else:
                loop.remove_reader(listener.sock)
            listener.accepting = want
            changed = True
        if changed and self._running and self._backoff is None:
            open_ = [lst.address for lst in self._listeners if lst.accepting]
            log.info("%s: accepting on %s (clients %d/%d, anonymous %d/%d)", self.name,
                     ", ".join(open_) or "no listener", self._nclients,
                     self.limits.max_clients, self._nanonymous,
                     self.limits.max_anonymous_clients)  # fmt: skip

    def _on_readable(self, listener: Listener) -> None:
        while self._may_accept(listener):
            try:
                sock, addr = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue  # the peer gave up while queued: take the next one
            except OSError as exc:
                self._accept_failed(listener, exc)
                break
            self._backoff_s = ACCEPT_BACKOFF_MIN_S
            self._nclients += 1
            anonymous = listener.authenticates
            if anonymous:
                self._nanonymous += 1
            task = asyncio.create_task(self._setup_client(sock, addr, listener, anonymous))
            self._setup_tasks.add(task)
            task.add_done_callback(self._setup_tasks.discard)
        self._update_accepting()

    def _accept_failed(self, listener: Listener, exc: OSError) -> None:
        """Stop accepting for a growing delay (the connection stays in the backlog, so
        retrying at once would spin); one log line per ACCEPT_LOG_INTERVAL_S at most."""
        delay = self._backoff_s
        self._backoff_s = min(delay * 2, ACCEPT_BACKOFF_MAX_S)
        if exc.errno not in ACCEPT_RESOURCE_ERRNOS:
            delay = ACCEPT_BACKOFF_MIN_S  # unexpected: retry soon, but never spin
        self._accept_failures += 1
        now = time.monotonic()
        if now - self._accept_logged_at >= ACCEPT_LOG_INTERVAL_S:
            log.warning("%s: accept on %s failed: %s; not accepting for %.2f s "
                        "(%d failures since the last report; clients %d)", self.name,
                        listener.address, exc, delay, self._accept_failures,
                        self._nclients)  # fmt: skip
            self._accept_logged_at, self._accept_failures = now, 0
        self._backoff = asyncio.get_running_loop().call_later(delay, self._end_backoff)
        self._update_accepting()

    def _end_backoff(self) -> None:
        self._backoff = None
        self._update_accepting()

    async def _setup_client(self, sock: socket.socket, addr: Any, listener: Listener,
                            anonymous: bool) -> None:
        sock.setblocking(False)
        peer = _peer_name(sock, addr, listener)
        try:
            if listener.kind == "unix":
                reader, writer = await asyncio.open_unix_connection(sock=sock,
                                                                    limit=READER_LIMIT)
            elif listener.tls is not None:
                streams = await tls_accept(sock, peer, listener.tls,
                                           self.limits.handshake_timeout, self.name)
                if streams is None:
                    self._forget(anonymous=anonymous)
                    return
                reader, writer = streams
            else:
                reader, writer = await asyncio.open_connection(sock=sock, limit=READER_LIMIT)
        except BaseException:
            sock.close()
            self._forget(anonymous=anonymous)
            raise
        client = ServerClient(self, reader, writer, client_id=next(self._ids), peer=peer,
                              readonly=listener.readonly,
                              authenticated=not anonymous)  # fmt: skip
        self._clients[client.id] = client
        self._meta[client.id] = _client_meta(sock, addr, listener)
        client.log.info("connected via %s %s", listener.kind, listener.address)
        client.start()

    # -- client bookkeeping (called by ServerClient) -----------------------------------------
    def program_for(self, prog: int, vers: int) -> Program | None:
        return self._programs.get((prog, vers))

    def client_authenticated(self, client: ServerClient) -> None:
        self._nanonymous -= 1
        self._update_accepting()

    def client_closed(self, client: ServerClient) -> None:
        self._meta.pop(client.id, None)
        if self._clients.pop(client.id, None) is not None:
            client.log.info("disconnected: %s", client.close_reason)
            self._forget(anonymous=client.anonymous)
            # Let the dispatcher drop per-client state (event callbacks, ...).
            on_close = getattr(self.dispatcher, "client_closed", None)
            if on_close is not None:
                on_close(client)

    def _forget(self, *, anonymous: bool) -> None:
        self._nclients -= 1
        if anonymous:
            self._nanonymous -= 1
        if self._running:
            self._update_accepting()

    @property
    def clients(self) -> list[ServerClient]:
        return list(self._clients.values())

    # -- client registry (admin interface) ----------------------------------------------------
    def client_records(self) -> list[ClientRecord]:
        """Every set-up connection, oldest first."""
        records = (self.client_record(client_id) for client_id in sorted(self._clients))
        return [r for r in records if r is not None]

    def client_record(self, client_id: int) -> ClientRecord | None:
        client, meta = self._clients.get(client_id), self._meta.get(client_id)
        if client is None or meta is None:
            return None
        pid, uid, gid = meta.creds if meta.creds is not None else (None, None, None)
        return ClientRecord(client_id, meta.transport, meta.connected_at, client.readonly,
                            client.opened, meta.sock_addr, pid, uid, gid)  # fmt: skip

    def close_client(self, client_id: int, reason: str = "closed by the administrator") -> bool:
        """Disconnect one client (libvirt's virAdmClientClose); False if there is none."""
        client = self._clients.get(client_id)
        if client is None:
            return False
        client.log.info("closing: %s", reason)
        client.abort(reason)
        return True

    # -- global request cap ------------------------------------------------------------------
    async def acquire_request(self, *, priority: bool) -> None:
        while not priority and self._requests >= self.limits.max_requests:
            self._request_room.clear()
            await self._request_room.wait()
        self._requests += 1

    def release_request(self) -> None:
        """Never waits: a worker calls it as soon as the reply is queued."""
        self._requests -= 1
        self._request_room.set()

    @property
    def requests_in_flight(self) -> int:
        return self._requests

    # -- admin interface ---------------------------------------------------------------------
    def threadpool_info(self) -> dict[str, int]:
        return self.pool.info()

    async def set_threadpool_params(
        self,
        *,
        min_workers: int | None = None,
        max_workers: int | None = None,
        prio_workers: int | None = None,
    ) -> None:
        await self.pool.set_params(
            min_workers=min_workers, max_workers=max_workers, prio_workers=prio_workers
        )
        self.limits.min_workers = self.pool.min_workers
        self.limits.max_workers = self.pool.max_workers
        self.limits.prio_workers = self.pool.prio_workers

    def clients_info(self) -> dict[str, int]:
        return {
            "nclients_max": self.limits.max_clients,
            "nclients": self._nclients,
            "nclients_unauth_max": self.limits.max_anonymous_clients,
            "nclients_unauth": self._nanonymous,
        }

    def set_client_limits(
        self, *, max_clients: int | None = None, max_anonymous_clients: int | None = None
    ) -> None:
        new_max = self.limits.max_clients if max_clients is None else max_clients
        new_anon = (
            self.limits.max_anonymous_clients
            if max_anonymous_clients is None
            else max_anonymous_clients
        )
        _check_client_limits(new_max, new_anon)
        self.limits.max_clients, self.limits.max_anonymous_clients = new_max, new_anon
        self._update_accepting()

    async def set_request_limits(
        self, *, max_requests: int | None = None, max_client_requests: int | None = None
    ) -> None:
        """Change the request caps at run time; waiting readers re-check at once."""
        for value in (max_requests, max_client_requests):
            if value is not None and value < 1:
                raise InvalidArgError(f"request limits must be at least 1, got {value}")
        if max_requests is not None:
            self.limits.max_requests = max_requests
        if max_client_requests is not None:
            self.limits.max_client_requests = max_client_requests
        self._request_room.set()
        for client in self.clients:
            await client.limits_changed()


def _check_client_limits(max_clients: int, max_anonymous: int) -> None:
    if max_clients < 1 or max_anonymous < 1:
        raise InvalidArgError("client limits must be at least 1")
    if max_anonymous > max_clients:
        raise InvalidArgError(
            "The overall maximum number of clients must not be less than the number of "
            "clients waiting for authentication"
        )


def _peer_name(sock: socket.socket, addr: Any, listener: Listener) -> str:
    if listener.kind != "unix":
        return f"{addr[0]}:{addr[1]}"
    creds = _peer_creds(sock)
    return f"unix pid={creds[0]}" if creds is not None else "unix"


def _peer_creds(sock: socket.socket) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a unix peer; struct ucred is three native ints."""
    with contextlib.suppress(OSError, AttributeError):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid, uid, gid = (int.from_bytes(raw[i : i + 4], sys.byteorder) for i in (0, 4, 8))
        return pid, uid, gid
    return None


def _client_meta(sock: socket.socket, addr: Any, listener: Listener) -> _ClientMeta:
    if listener.kind == "unix":
        return _ClientMeta(listener.kind, time.time(), None, _peer_creds(sock))
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]  # libvirt's URI form for IPv6
    return _ClientMeta(listener.kind, time.time(), f"{host}:{addr[1]}", None)
