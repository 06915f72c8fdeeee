"""A misbehaving client costs the others nothing: attacks on a live pyvirtd (fake QEMU).

Each test runs the attack against a real daemon while another, well-behaved client keeps
asking for the domain list; throughout, that list answers in under a second and the
daemon's event-loop lag monitor (:mod:`pyvirt.daemon.loopwatch`) logs no late tick.

The daemon logs to ``<root>/log/pyvirtd.log`` (its stderr is not a terminal, so
``log_outputs``' default is the file in ``log_dir``); the lag monitor's line there is
``event loop lag: tick late by N ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyvirt.errors import ErrorCode, VirtError
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.error import error_from_wire
from pyvirt.rpc.keepalive_protocol import KeepaliveProc, keepalive_header
from pyvirt.rpc.packet import Header, MessageStatus, MessageType, encode_packet
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.remote_protocol import RemoteProc as RP
from pyvirt.rpc.testing import RawPeer
from tests.functional.daemon_util import (
    DaemonHandle,
    fake_emulator,
    kill_processes_mentioning,
    run,
    running_daemon,
    stop_daemon,
    write_configs,
)
from tests.functional.daemon_util import _wait_socket as wait_socket

LIST_BUDGET_S = 1.0


# -- helpers -----------------------------------------------------------------------------------
def admin_values(daemon: DaemonHandle, command: str) -> dict[str, str]:
    proc = run(["virt-admin", "-c", daemon.admin_uri, command, "libvirtd"], timeout=10)
    assert proc.returncode == 0, proc.stderr
    return dict(line.replace(" ", "").split(":", 1) for line in proc.stdout.strip().splitlines())


async def opened(sock: Path) -> RPCClient:
    client = await RPCClient.connect_unix(str(sock))
    await client.call(REMOTE, RP.CONNECT_OPEN, {"name": "qemu:///system", "flags": 0})
    return client


async def list_seconds(client: RPCClient) -> float:
    began = time.monotonic()
    await client.call(REMOTE, RP.CONNECT_LIST_ALL_DOMAINS, {"need_results": 1, "flags": 0},
                      timeout=10)
    return time.monotonic() - began


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# -- the lag monitor ---------------------------------------------------------------------------
async def test_lag_monitor_logs_a_stalled_loop_and_virt_admin_shows_it() -> None:
    with running_daemon(emulator="fake") as daemon:
        client = await opened(daemon.sock)
        try:
            assert await list_seconds(client) < LIST_BUDGET_S
            await asyncio.sleep(0.3)
            assert daemon.lag_lines() == []
            before = admin_values(daemon, "srv-threadpool-info")
            assert before["eventLoopLateTicks"] == "0"
            os.kill(daemon.proc.pid, signal.SIGSTOP)  # the whole loop stalls, as a block would
            await asyncio.sleep(0.4)
            os.kill(daemon.proc.pid, signal.SIGCONT)
            await wait_for(lambda: daemon.lag_lines())
            line = daemon.lag_lines()[0]
            assert "WARNING pyvirt.daemon.loopwatch: event loop lag: tick late by " in line
            assert int(line.rsplit(" ", 2)[-2]) >= 300
            after = admin_values(daemon, "srv-threadpool-info")
            assert after["eventLoopLateTicks"] == "1"
            assert int(after["eventLoopLagMaxMs"]) >= 300
            assert after["minWorkers"] == "5"  # libvirt's fields still come first
        finally:
            await client.close()


# -- attackers ---------------------------------------------------------------------------------
def call_packet(proc: int, args: Any = None, serial: int = 1) -> bytes:
    spec = REMOTE.procs[proc]
    payload = spec.encode_args(args) if args is not None else b""
    header = Header(REMOTE.number, REMOTE.version, proc, MessageType.CALL, serial,
                    MessageStatus.OK)  # fmt: skip
    return encode_packet(header, payload)


OPEN_CALL = call_packet(RP.CONNECT_OPEN, {"name": "qemu:///system", "flags": 0}, serial=0)
LIST_ARGS = {"need_results": 1, "flags": 0}


class NonReader:
    """A client that opens, then sends ``calls`` over and over (or once, ``forever=False``)
    as fast as the daemon takes them, and never reads a byte (small receive buffer)."""

    def __init__(self, path: Path | str, calls: bytes, *, repeat: int = 200,
                 forever: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(str(path))
        self.sock.setblocking(False)
        self.sent = 0
        self._blob = calls * repeat
        self._forever = forever
        self._task = asyncio.get_running_loop().create_task(self._flood())

    async def _flood(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            await loop.sock_sendall(self.sock, OPEN_CALL)
            while True:
                await loop.sock_sendall(self.sock, self._blob)
                self.sent += len(self._blob)
                if not self._forever:
                    return

    def dropped(self) -> bool:
        """The daemon closed the connection (EOF after whatever it had sent)."""
        try:
            while data := self.sock.recv(1 << 16):
                del data
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close()


@contextlib.asynccontextmanager
async def non_readers(path: Path, calls: list[bytes],
                      **kw: Any) -> AsyncIterator[list[NonReader]]:
    made: list[NonReader] = []
    try:
        for call in calls:
            made.append(NonReader(path, call, **kw))
        yield made
    finally:
        for attacker in made:
            await attacker.close()


async def worst_list_while(client: RPCClient, seconds: float,
                           also: Callable[[], Awaitable[Any]] | None = None) -> float:
    """The slowest ``list`` (and ``also``) answer over ``seconds`` of asking every 50 ms."""
    worst = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        worst = max(worst, await list_seconds(client))
        if also is not None:
            began = time.monotonic()
            await asyncio.wait_for(also(), 10)
            worst = max(worst, time.monotonic() - began)
        await asyncio.sleep(0.05)
    return worst


async def virsh_list_seconds(daemon: DaemonHandle) -> float:
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "virsh", "-c", daemon.uri, "list", "--all", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert b"Name" in out
    return time.monotonic() - began


# -- 1. slow readers ---------------------------------------------------------------------------
async def test_clients_that_never_read_pin_no_worker() -> None:
    # Before: each non-reading client's replies filled its send queue and then held the
    # worker that answered it (send() waited), up to max_client_requests workers per client;
    # 4 such clients took the 20 normal workers and the global request cap, 5 sending
    # priority calls took the priority workers too, and then nothing was answered.
    attacks = [call_packet(RP.CONNECT_GET_CAPABILITIES)] * 4 + \
        [call_packet(RP.CONNECT_LIST_ALL_DOMAINS, LIST_ARGS)] * 4
    with running_daemon(emulator="fake") as daemon:
        client = await opened(daemon.sock)
        try:
            async with non_readers(daemon.sock, attacks) as attackers:
                await asyncio.sleep(1.0)  # their replies pile up unread
                worst = await worst_list_while(
                    client, 1.5, lambda: client.call(REMOTE, RP.CONNECT_GET_CAPABILITIES))
                assert worst < LIST_BUDGET_S
                assert await virsh_list_seconds(daemon) < 2 * LIST_BUDGET_S
                pool = admin_values(daemon, "srv-threadpool-info")
                assert pool["freeWorkers"] == pool["nWorkers"]  # no worker waits for them
                assert all(a.sent > 100_000 for a in attackers)  # the attack did run
            assert daemon.lag_lines() == []
        finally:
            await client.close()


async def test_a_flood_of_cheap_packets_costs_only_its_sender() -> None:
    # Packets already buffered are handled without the reader suspending; before, a
    # client flooding refused calls or pings held the loop for its whole buffer (megabytes
    # of packets, well over 100 ms).  The reader now yields every few milliseconds.
    unknown = encode_packet(Header(REMOTE.number, REMOTE.version, 9999, MessageType.CALL, 1,
                                   MessageStatus.OK))  # fmt: skip
    ping = encode_packet(keepalive_header(KeepaliveProc.PING))
    with running_daemon(emulator="fake") as daemon:
        client = await opened(daemon.sock)
        try:
            async with non_readers(daemon.sock, [unknown, ping, unknown, ping], repeat=2000):
                assert await worst_list_while(client, 2.0) < LIST_BUDGET_S
            assert daemon.lag_lines() == []
        finally:
            await client.close()


# -- events and keepalive a client does not read -----------------------------------------------
def register_packet(serial: int) -> bytes:
    return call_packet(RP.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
                       {"event_id": 0, "dom": None}, serial)  # fmt: skip


async def define_undefine(client: RPCClient, name: str) -> None:
    """Two lifecycle events (defined, undefined)."""
    ret = await client.call(REMOTE, RP.DOMAIN_DEFINE_XML, {"xml": XML.format(name=name)},
                            timeout=10)  # fmt: skip
    await client.call(REMOTE, RP.DOMAIN_UNDEFINE, {"dom": ret["dom"]}, timeout=10)


def drop_lines(daemon: DaemonHandle) -> list[str]:
    return [line for line in daemon.daemon_log().splitlines()
            if "dropping the connection" in line]


async def test_a_client_that_lets_events_and_pongs_pile_up_is_dropped() -> None:
    # Events and keepalive answers are not bounded by max_client_requests: before, they
    # queued without limit (events) or held the reader (pongs); now a client with more than
    # max_client_queued_bytes unread is dropped, with one log line.
    bound = 64 * 1024
    registrations = b"".join(register_packet(serial) for serial in range(1, 101))
    ping = encode_packet(keepalive_header(KeepaliveProc.PING))
    with running_daemon(emulator="fake", conf={"max_client_queued_bytes": bound}) as daemon:
        client = await opened(daemon.sock)
        try:
            async with non_readers(daemon.sock, [ping], repeat=500) as (pinger,), \
                    non_readers(daemon.sock, [registrations], repeat=1,
                                forever=False) as (event_sink,):
                await asyncio.sleep(0.3)  # registrations done
                for index in range(60):  # 100 lifecycle messages per event for the sink
                    await define_undefine(client, f"ev{index}")
                    if len(drop_lines(daemon)) == 2:
                        break
                assert await worst_list_while(client, 0.5) < LIST_BUDGET_S
                # (dropped() reads what is left: only ask once the daemon has given up)
                await wait_for(lambda: len(drop_lines(daemon)) == 2)
                await wait_for(event_sink.dropped)
                await wait_for(pinger.dropped)
            dropped = drop_lines(daemon)
            assert len(dropped) == 2, dropped  # one line per dropped client
            assert f"(limit {bound})" in dropped[0]
            assert daemon.lag_lines() == []
        finally:
            await client.close()


# -- 4. per-client caps ------------------------------------------------------------------------
XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><memballoon model='none'/></devices></domain>"""


async def test_event_registration_flood_is_capped() -> None:
    # Before: registrations were unbounded, and every driver event cost one message per
    # registration.  Now the 4th is refused (RPC error), logged once for the client.
    with running_daemon(emulator="fake", conf={"max_client_event_callbacks": 3}) as daemon:
        client, flooder = await opened(daemon.sock), await opened(daemon.sock)
        try:
            args = {"event_id": 0, "dom": None}
            ids = [await flooder.call(REMOTE, RP.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY, args)
                   for _ in range(3)]
            assert len({r["callback_id"] for r in ids}) == 3
            for _ in range(50):
                with pytest.raises(VirtError) as refused:
                    await flooder.call(REMOTE, RP.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
                                       args, timeout=10)  # fmt: skip
            assert refused.value.code == ErrorCode.RPC
            assert "Too many event callbacks registered on this connection " \
                "(max_client_event_callbacks = 3)" in refused.value.message
            assert await list_seconds(client) < LIST_BUDGET_S
            # deregistering frees a place
            await flooder.call(REMOTE, RP.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY,
                               {"callback_id": ids[0]["callback_id"]})  # fmt: skip
            await flooder.call(REMOTE, RP.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY, args)
            logged = [line for line in daemon.daemon_log().splitlines()
                      if "refusing event registrations" in line]
            assert len(logged) == 1, logged
            assert daemon.lag_lines() == []
        finally:
            await client.close()
            await flooder.close()


def prepare_tunnel_packet(serial: int) -> bytes:
    args = {"params": [], "cookie_in": b"", "flags": 0x7}  # LIVE | PEER2PEER | TUNNELLED
    return call_packet(RP.DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS, args, serial)


def stream_data_packet(serial: int, size: int) -> bytes:
    header = Header(REMOTE.number, REMOTE.version, RP.DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS,
                    MessageType.STREAM, serial, MessageStatus.CONTINUE)  # fmt: skip
    return encode_packet(header, b"\0" * size)


@dataclasses.dataclass
class BusyWorker:
    daemon: DaemonHandle
    client: RPCClient  # opened; its slow domain start holds the only worker
    peer: RawPeer  # opened before the worker got busy


@contextlib.asynccontextmanager
async def busy_single_worker(**conf: Any) -> AsyncIterator[BusyWorker]:
    """A daemon with one normal worker, kept busy for SLOW_S by a slow domain start, so
    that the calls after it wait in the pool with their streams already open (priority
    calls such as ``list`` have their own worker)."""
    conf = {"min_workers": 1, "max_workers": 1, "prio_workers": 1, **conf}
    with running_daemon(emulator="fake", faults={"delay_commands": {"cont": SLOW_S}},
                        conf=conf) as daemon:
        client = await opened(daemon.sock)
        peer = await RawPeer.connect_unix(str(daemon.sock))
        try:
            await peer.send_bytes(OPEN_CALL)
            opened_reply = await peer.recv()
            assert opened_reply is not None and opened_reply.header.status == MessageStatus.OK
            ret = await client.call(REMOTE, RP.DOMAIN_DEFINE_XML, {"xml": XML.format(name="s")})
            start = asyncio.ensure_future(
                client.call(REMOTE, RP.DOMAIN_CREATE, {"dom": ret["dom"]}, timeout=30))
            await asyncio.sleep(0.3)
            yield BusyWorker(daemon, client, peer)
            await start
        finally:
            peer.writer.transport.abort()
            await peer.close()
            await client.close()


SLOW_S = 3.0


async def test_streams_beyond_the_cap_are_refused_at_once() -> None:
    async with busy_single_worker(max_client_streams=2) as busy:
        began = time.monotonic()
        await busy.peer.send_bytes(b"".join(prepare_tunnel_packet(s) for s in range(1, 5)))
        refused = [await busy.peer.recv(), await busy.peer.recv()]  # 3, 4; 1, 2 wait
        assert time.monotonic() - began < LIST_BUDGET_S
        for packet in refused:
            assert packet is not None and packet.header.status == MessageStatus.ERROR
            error = error_from_wire(packet.payload)
            assert error.code == ErrorCode.RPC
            assert "Too many open streams on this connection (max_client_streams = 2)" \
                in error.message
        assert sorted(p.header.serial for p in refused if p is not None) == [3, 4]
        daemon = busy.daemon
        logged = [line for line in daemon.daemon_log().splitlines()
                  if "refusing streams beyond max_client_streams" in line]
        assert len(logged) == 1


# -- 5. stream buffers bounded in bytes --------------------------------------------------------
def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_stream_data_nobody_consumes_is_bounded_in_bytes() -> None:
    # Before: 16 chunks of any size were buffered per stream (16 x 32 MiB).  Now at most
    # max_stream_queued_bytes (or one packet) is, then the client's socket is not read.
    packet_size = 16 << 20
    async with busy_single_worker() as busy:
        daemon, peer = busy.daemon, busy.peer
        before = rss_bytes(daemon.proc.pid)
        await peer.send_bytes(prepare_tunnel_packet(1))  # waits for the busy worker
        data = stream_data_packet(1, packet_size)
        sent = 0
        with contextlib.suppress(TimeoutError):
            for _ in range(16):  # 256 MiB offered; stops when the daemon stops reading
                await asyncio.wait_for(peer.send_bytes(data), 0.5)
                sent += 1
        assert sent < 8
        assert await list_seconds(busy.client) < LIST_BUDGET_S
        grown = rss_bytes(daemon.proc.pid) - before
        assert grown < 100 << 20, f"daemon grew by {grown >> 20} MiB"
    assert daemon.lag_lines() == []


# -- 2. idle connections -----------------------------------------------------------------------
def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_idle_tcp_flood_leaves_every_listener_accepting() -> None:
    # Before: every connection counted as anonymous until CONNECT_OPEN, so 20 idle ones
    # (max_anonymous_clients) stopped accepting on every socket for the handshake timeout
    # (60 s).  auth "none" clients are authenticated by definition and never count.
    port = free_tcp_port()
    conf = {"listen_tcp": 1, "listen_addr": "127.0.0.1", "tcp_port": str(port)}
    with running_daemon(emulator="fake", conf=conf, listen=True) as daemon:
        unix_client = await opened(daemon.sock)
        idle: list[socket.socket] = []
        try:
            for _ in range(25):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            await asyncio.sleep(0.3)
            assert await list_seconds(unix_client) < LIST_BUDGET_S
            began = time.monotonic()
            tcp_client = await asyncio.wait_for(RPCClient.connect_tcp("127.0.0.1", port), 5)
            try:
                await tcp_client.call(REMOTE, RP.CONNECT_OPEN,
                                      {"name": "qemu:///system", "flags": 0}, timeout=5)
                assert await list_seconds(tcp_client) < LIST_BUDGET_S
            finally:
                await tcp_client.close()
            assert time.monotonic() - began < LIST_BUDGET_S
            late_unix = await asyncio.wait_for(opened(daemon.sock), LIST_BUDGET_S)
            await late_unix.close()
            clients = admin_values(daemon, "srv-clients-info")
            assert clients["nclients_unauth"] == "0"
            assert int(clients["nclients"]) >= 26  # the idle ones are still connected
            assert "accepting on no listener" not in daemon.daemon_log()
            assert daemon.lag_lines() == []
        finally:
            for sock in idle:
                sock.close()
            await unix_client.close()


# -- 3. out of file descriptors ----------------------------------------------------------------
@contextlib.contextmanager
def limited_daemon(nofile: tuple[int, int], conf: dict[str, Any]) -> Iterator[DaemonHandle]:
    """A fake-QEMU pyvirtd started under RLIMIT_NOFILE ``(soft, hard)``."""
    root = Path(tempfile.mkdtemp(prefix="pvd-", dir="/tmp"))
    handle = None
    try:
        config = write_configs(root, conf, {"emulator": fake_emulator(root)})
        out = open(root / "out.log", "wb")  # noqa: SIM115 - the daemon owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyvirt.daemon", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile))
        out.close()
        handle = DaemonHandle(root, proc)
        wait_socket(handle)
        yield handle
    finally:
        if handle is not None:
            stop_daemon(handle)
        kill_processes_mentioning(root)
        shutil.rmtree(root, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files limit")


def accept_failures(daemon: DaemonHandle) -> list[str]:
    return [line for line in daemon.daemon_log().splitlines() if "accept on" in line]


async def test_emfile_backs_off_and_accepting_resumes() -> None:
    # Before: accept() failing with EMFILE left the connection in the backlog and the
    # socket readable, so the loop retried at once: 100 % CPU, ~100 000 log lines a second.
    conf = {"max_clients": 60, "max_anonymous_clients": 20, "nofile_reserve": 60}
    with limited_daemon((128, 128), conf) as daemon:
        client = await opened(daemon.sock)
        hogs: list[socket.socket] = []
        waiting: list[socket.socket] = []
        try:
            for _ in range(90):  # admin connections: not bounded by max_clients
                hogs.append(socket.socket(socket.AF_UNIX))
                hogs[-1].connect(str(daemon.admin_sock))
            for _ in range(40):  # these find no descriptor left (they wait in the backlog)
                waiting.append(socket.socket(socket.AF_UNIX))
                waiting[-1].connect(str(daemon.sock))
            await wait_for(lambda: accept_failures(daemon))
            cpu_before = cpu_seconds(daemon.proc.pid)
            worst = await worst_list_while(client, 2.0)
            cpu = cpu_seconds(daemon.proc.pid) - cpu_before
            assert worst < LIST_BUDGET_S
            assert cpu < 0.5, f"{cpu:.2f} s of CPU in 2 s while out of descriptors"
            assert len(accept_failures(daemon)) == 1  # rate-limited: one line per 10 s
            assert "Too many open files" in accept_failures(daemon)[0]
            for hog in hogs:
                hog.close()
            hogs.clear()
            late = await asyncio.wait_for(opened(daemon.sock), 5)  # accepting resumed
            assert await list_seconds(late) < LIST_BUDGET_S
            await late.close()
            assert daemon.lag_lines() == []
        finally:
            for sock in hogs + waiting:
                sock.close()
            await client.close()


def test_soft_nofile_raised_to_fit_max_clients() -> None:
    conf = {"max_clients": 100, "max_anonymous_clients": 20, "nofile_reserve": 60}
    with limited_daemon((64, 256), conf) as daemon:
        assert soft_nofile(daemon.proc.pid) == 160


def test_config_that_cannot_fit_the_hard_limit_is_refused() -> None:
    root = Path(tempfile.mkdtemp(prefix="pvd-", dir="/tmp"))
    try:
        config = write_configs(root, {"max_clients": 500}, {"emulator": fake_emulator(root)})
        proc = subprocess.run(
            [sys.executable, "-m", "pyvirt.daemon", "--config", str(config)],
            capture_output=True, text=True, timeout=30,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
        assert proc.returncode == 1
        assert ("error: unsupported configuration: max_clients (500) plus nofile_reserve "
                "(1024) need 1524 file descriptors, more than the hard RLIMIT_NOFILE (256)"
                ) in proc.stderr
        assert not (root / "sock" / "libvirt-sock").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
