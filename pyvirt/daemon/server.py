"""pyvirtd: the QEMU driver behind libvirt's remote protocol.

Start-up: resolve the host UUID, take the pid file, load the driver (definitions, re-attach
running QEMUs, autostart), then listen: ``libvirt-sock`` (read-write) and ``libvirt-sock-ro``
(read-only) under ``unix_sock_dir``, TLS and TCP with ``--listen`` (daemon/network.py),
and the admin socket. SIGTERM/SIGINT stop the daemon but never the guests:
the next pyvirtd re-attaches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
from pathlib import Path
from typing import Any

from pyvirt.conf.daemon_conf import DaemonConfig, resolve_host_uuid
from pyvirt.conf.qemu_conf import QemuConfig
from pyvirt.daemon import domain_procs, host_procs, migration_procs, qemu_procs
from pyvirt.daemon.admin import AdminDispatcher, admin_server_limits
from pyvirt.daemon.context import STATE_KEY, Call, ClientState, Handler
from pyvirt.daemon.loopwatch import LoopWatch
from pyvirt.daemon.network import listen_network, network_tls
from pyvirt.errors import OperationFailedError
from pyvirt.qemu.driver import QemuDriver
from pyvirt.qemu.settings import DriverSettings
from pyvirt.rpc.admin_protocol import ADMIN
from pyvirt.rpc.error import unknown_procedure
from pyvirt.rpc.protocol import ProcSpec
from pyvirt.rpc.qemu_protocol import QEMU
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.server import RPCServer, ServerLimits
from pyvirt.rpc.server_client import ClientContext
from pyvirt.rpc.unix_listen import ensure_socket_dir, group_id
from pyvirt.uri import ADMIN_SOCKET_NAME, RO_SOCKET_NAME, RW_SOCKET_NAME

log = logging.getLogger(__name__)


class RemoteDispatcher:
    """Serves the REMOTE program from the handler tables; the rest is "unknown procedure"."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._tasks: set[asyncio.Task[None]] = set()
        self.handlers: dict[int, Handler] = {**host_procs.HANDLERS, **domain_procs.HANDLERS,
                                             **migration_procs.HANDLERS}
        self.qemu_handlers: dict[int, Handler] = dict(qemu_procs.HANDLERS)

    async def dispatch(self, client: ClientContext, spec: ProcSpec, args: Any) -> Any:
        # procedure numbers repeat across programs: the spec object tells which one it is
        table = self.qemu_handlers if QEMU.get(spec.number) is spec else self.handlers
        handler = table.get(spec.number)
        if handler is None:
            raise unknown_procedure(spec.number)
        return await handler(Call(self.daemon, client), args)

    def client_closed(self, client: ClientContext) -> None:
        state = client.user_data.get(STATE_KEY)
        if isinstance(state, ClientState) and state.events is not None:
            state.events.close()
        # an incoming migration whose controlling client vanished is cleaned up
        task = asyncio.get_running_loop().create_task(
            self.daemon.driver.migration.client_closed(client.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def driver_settings(daemon_cfg: DaemonConfig, qemu_cfg: QemuConfig,
                    host_uuid: str) -> DriverSettings:
    qemu_cfg = qemu_cfg.with_daemon_dirs(daemon_cfg)
    assert qemu_cfg.state_dir and qemu_cfg.run_dir and qemu_cfg.log_dir
    return DriverSettings(
        state_dir=Path(qemu_cfg.state_dir), run_dir=Path(qemu_cfg.run_dir),
        log_dir=Path(qemu_cfg.log_dir), emulator=qemu_cfg.emulator or DriverSettings.emulator,
        vnc_listen=qemu_cfg.vnc_listen, spice_listen=qemu_cfg.spice_listen,
        remote_display_port_min=qemu_cfg.remote_display_port_min,
        remote_display_port_max=qemu_cfg.remote_display_port_max,
        host_uuid=host_uuid, migration_address=qemu_cfg.migration_address,
        migration_host=qemu_cfg.migration_host,
        migration_port_min=qemu_cfg.migration_port_min,
        migration_port_max=qemu_cfg.migration_port_max,
        shared_filesystems=tuple(qemu_cfg.shared_filesystems),
        p2p_keepalive_interval=qemu_cfg.keepalive_interval,
        p2p_keepalive_count=qemu_cfg.keepalive_count,
        stdio_handler=qemu_cfg.stdio_handler, log_max_size=qemu_cfg.max_size,
        log_max_backups=qemu_cfg.max_backups,
        dns_lookup_timeout_s=float(qemu_cfg.dns_lookup_timeout),
        dns_lookup_threads=qemu_cfg.dns_lookup_threads,
        user=qemu_cfg.user, group=qemu_cfg.group,
        dynamic_ownership=qemu_cfg.dynamic_ownership, remember_owner=qemu_cfg.remember_owner,
        seccomp_sandbox=qemu_cfg.seccomp_sandbox,
    )


def unix_sock_gid(cfg: DaemonConfig) -> int | None:
    """The gid owning the rw, ro and admin sockets; None: the daemon's own group."""
    return None if cfg.unix_sock_group is None else group_id(cfg.unix_sock_group)


def server_limits(cfg: DaemonConfig) -> ServerLimits:
    return ServerLimits(
        max_clients=cfg.max_clients, max_queued_clients=cfg.max_queued_clients,
        max_anonymous_clients=cfg.max_anonymous_clients, min_workers=cfg.min_workers,
        max_workers=cfg.max_workers, prio_workers=cfg.prio_workers,
        max_requests=cfg.max_requests, max_client_requests=cfg.max_client_requests,
        keepalive_interval=cfg.keepalive_interval, keepalive_count=cfg.keepalive_count,
        max_client_queued_bytes=cfg.max_client_queued_bytes,
        max_client_streams=cfg.max_client_streams,
        max_client_event_callbacks=cfg.max_client_event_callbacks,
        max_stream_queued_bytes=cfg.max_stream_queued_bytes,
        handshake_timeout=cfg.handshake_timeout or None,
    )


class Daemon:
    def __init__(self, cfg: DaemonConfig, qemu_cfg: QemuConfig, *, listen: bool = False,
                 driver: QemuDriver | None = None) -> None:
        self.cfg = cfg
        self.qemu_cfg = qemu_cfg.with_daemon_dirs(cfg)
        self.listen = listen
        self.host_uuid = resolve_host_uuid(cfg)
        # An unknown unix_sock_group stops the daemon before it touches anything.
        self.sock_gid = unix_sock_gid(cfg)
        self.driver = driver or QemuDriver(driver_settings(cfg, qemu_cfg, self.host_uuid))
        self.server = RPCServer(RemoteDispatcher(self), programs=(REMOTE, QEMU),
                                limits=server_limits(cfg), name="libvirtd")
        self.admin: RPCServer | None = None
        self._stop = asyncio.Event()
        self._pidfile_fd: int | None = None
        self.loop_watch = LoopWatch(cfg.event_loop_tick_ms, cfg.event_loop_lag_warn_ms)

    @property
    def sock_dir(self) -> Path:
        return Path(self.cfg.unix_sock_dir)

    async def start(self) -> None:
        self._take_pidfile()
        tls = network_tls(self.cfg, listen=self.listen)
        self.loop_watch.start()
        await self.driver.initialize(autostart=True)
        ensure_socket_dir(self.sock_dir)
        await self.server.listen_unix(str(self.sock_dir / RW_SOCKET_NAME),
                                      mode=self.cfg.unix_sock_rw_perms, group=self.sock_gid,
                                      auth=self.cfg.auth_unix_rw)
        await self.server.listen_unix(str(self.sock_dir / RO_SOCKET_NAME),
                                      mode=self.cfg.unix_sock_ro_perms, group=self.sock_gid,
                                      readonly=True, auth=self.cfg.auth_unix_ro)
        await listen_network(self.server, self.cfg, listen=self.listen, tls=tls)
        await self.server.start()
        await self._start_admin()
        log.info("pyvirtd ready (host uuid %s)", self.host_uuid)

    async def _start_admin(self) -> None:
        """The admin socket, where virt-admin reads and changes the processing controls."""
        dispatcher = AdminDispatcher(
            {"libvirtd": self.server}, lib_version=host_procs.LIB_VERSION,
            loop_stats=lambda: self.loop_watch.stats().as_admin_fields())
        self.admin = RPCServer(dispatcher, programs=(ADMIN,), limits=admin_server_limits(),
                               name="admin")
        dispatcher.add_server("admin", self.admin)
        await self.admin.listen_unix(str(self.sock_dir / ADMIN_SOCKET_NAME),
                                     mode=self.cfg.unix_sock_admin_perms, group=self.sock_gid)
        await self.admin.start()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self.start()
            await self._stop.wait()
            log.info("pyvirtd stopping; guests keep running")
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        self.loop_watch.stop()
        for server in (self.admin, self.server):
            if server is not None:
                await server.close()
        await self.driver.close()
        for name in (RW_SOCKET_NAME, RO_SOCKET_NAME, ADMIN_SOCKET_NAME):
            with contextlib.suppress(OSError):
                (self.sock_dir / name).unlink()
        self._release_pidfile()

    def _take_pidfile(self) -> None:
        """One daemon per state: a second pyvirtd on the same run_dir refuses to start."""
        run_dir = Path(self.cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        path = run_dir / "pyvirtd.pid"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise OperationFailedError(
                f"another pyvirtd is running with run_dir {run_dir} ({path} is locked)"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._pidfile_fd = fd

    def _release_pidfile(self) -> None:
        if self._pidfile_fd is not None:
            with contextlib.suppress(OSError):
                (Path(self.cfg.run_dir) / "pyvirtd.pid").unlink()
            os.close(self._pidfile_fd)
            self._pidfile_fd = None
