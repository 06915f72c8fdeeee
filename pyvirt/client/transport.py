"""Byte streams under the RPC client: a unix socket, TCP, or ssh running a remote bridge.

============  =====================================================================
``unix``      ``qemu:///system`` → ``/run/pyvirt/libvirt-sock`` (``-ro`` when read-only),
              or ``?socket=PATH``
``tcp``       ``qemu+tcp://HOST[:PORT]/system``, port 16509 by default
``tls``       ``qemu+tls://HOST[:PORT]/system``, port 16514 by default: libvirt's client
              PKI (``pkipath=``, else /etc/pki or ``~/.pki/libvirt``, see
              :mod:`pyvirt.rpc.tls`), the server's certificate and name checked unless
              ``no_verify=1``, then the server's one-byte confirmation awaited
``ssh``       ``qemu+ssh://[USER@]HOST[:PORT]/system``: ``ssh`` as a subprocess, its
              stdin/stdout carrying the RPC bytes, running on the remote host a command
              that joins them to the daemon's unix socket (see :func:`ssh_argv`)
============  =====================================================================

The ssh argv is a list (no local shell), but the *remote* command is one string that the
remote login shell parses, so every piece of it is ``shlex.quote``-d; a host or user name
starting with ``-`` would be read as an ssh option and is refused.  ssh's stderr is copied
through to ours as it arrives (so its messages appear as usual; password and host-key
prompts go to the terminal directly) and its tail is kept for the error message when ssh
exits early, as libvirt does ("End of file while reading data: <stderr>: ...").

Failures are libvirt's errors: VIR_ERR_SYSTEM_ERROR from VIR_FROM_RPC with libvirt's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from pyvirt.client.ssh_bridge import BRIDGE_SCRIPT, REMOTE_PYTHON
from pyvirt.errors import ErrorCode, ErrorDomain, VirtError
from pyvirt.rpc.packet import READER_LIMIT
from pyvirt.rpc.tls import TLS_CONFIRMATION, client_context, locate_client_pki
from pyvirt.uri import DEFAULT_TCP_PORT, DEFAULT_TLS_PORT, ConnectURI

#: environment variable naming the ssh program (tests point it at a stand-in)
SSH_PROGRAM_ENV = "PYVIRT_SSH"
DEFAULT_SSH_PROGRAM = "ssh"
#: how long closing waits for ssh to exit on its own before terminating it
SSH_EXIT_TIMEOUT = 0.5
#: how much of ssh's stderr is kept for error messages
STDERR_TAIL_BYTES = 2048
_STDERR_CHUNK = 4096


class TransportError(VirtError):
    """Could not reach the daemon (libvirt's virNetSocket errors)."""

    code = ErrorCode.SYSTEM_ERROR
    domain = ErrorDomain.RPC


class _StderrTee:
    """Copies a child's stderr to ours as it arrives and keeps the tail."""

    def __init__(self, stream: asyncio.StreamReader, echo_fd: int = 2) -> None:
        self._stream = stream
        self._echo_fd = echo_fd
        self._tail = bytearray()
        self.task = asyncio.create_task(self._run(), name="pyvirt ssh stderr")

    async def _run(self) -> None:
        while chunk := await self._stream.read(_STDERR_CHUNK):
            self._echo(chunk)
            self._tail += chunk
            del self._tail[:-STDERR_TAIL_BYTES]

    def _echo(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        with contextlib.suppress(OSError):  # our stderr closed: only the tail matters then
            while view:
                view = view[os.write(self._echo_fd, view) :]

    def text(self) -> str:
        text = self._tail.decode("utf-8", "replace").strip()
        if len(self._tail) >= STDERR_TAIL_BYTES and "\n" in text:
            text = text.split("\n", 1)[1]  # drop the partial first line
        return text.replace("\r", "")


@dataclasses.dataclass(eq=False)
class Transport:
    """An open byte stream; the RPC client owns ``reader``/``writer``, we own the rest."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    description: str
    process: asyncio.subprocess.Process | None = None
    stderr: _StderrTee | None = None

    def stderr_tail(self) -> str:
        """What the transport command said on stderr (empty for sockets)."""
        return self.stderr.text() if self.stderr is not None else ""

    async def settle(self, timeout: float = 1.0) -> None:
        """Wait (bounded) until the command's stderr is complete, e.g. after it died;
        then stop copying it."""
        if self.stderr is None or self.stderr.task.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.stderr.task), timeout)
        self.stderr.task.cancel()

    async def aclose(self, settle_timeout: float = 0.2) -> None:
        """After the RPC client closed: reap the ssh process (it exits on stdin EOF), then
        let the stderr copy finish (a grandchild may hold the pipe: bounded)."""
        self.writer.close()
        proc = self.process
        if proc is None:
            return
        if not await _wait_exit(proc):
            # e.g. a remote netcat that ignores stdin EOF: libvirt terminates ssh too
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            if not await _wait_exit(proc):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        await self.settle(settle_timeout)


async def _wait_exit(proc: asyncio.subprocess.Process) -> bool:
    try:
        await asyncio.wait_for(proc.wait(), SSH_EXIT_TIMEOUT)
    except TimeoutError:
        return False
    return True


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))


# -- unix and tcp ----------------------------------------------------------------------------
async def _open_unix(uri: ConnectURI, readonly: bool, ssh_program: str | None) -> Transport:
    path = uri.socket_path(readonly)
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=READER_LIMIT)
    except OSError as exc:
        raise TransportError(f"Failed to connect socket to '{path}': {_strerror(exc)}") from None
    return Transport(reader, writer, f"unix:{path}")


async def _open_tcp(uri: ConnectURI, readonly: bool, ssh_program: str | None) -> Transport:
    host = uri.host or "localhost"
    port = uri.port or DEFAULT_TCP_PORT
    reader, writer = await _open_stream(host, port)
    return Transport(reader, writer, f"tcp:{host}:{port}")


async def _open_tls(uri: ConnectURI, readonly: bool, ssh_program: str | None) -> Transport:
    host = uri.host or "localhost"
    port = uri.port or DEFAULT_TLS_PORT
    verify = not uri.no_verify
    context = client_context(locate_client_pki(uri.params.get("pkipath")), verify=verify)
    reader, writer = await _open_stream(host, port, ssl=context,
                                        server_hostname=host if verify else None)
    await _read_tls_confirmation(reader, writer)
    return Transport(reader, writer, f"tls:{host}:{port}")


async def _open_stream(host: str, port: int, **tls: Any,
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection (TLS when ``tls`` holds ``ssl=``), failures in libvirt's words."""
    try:
        return await asyncio.open_connection(host, port, limit=READER_LIMIT, **tls)
    except ssl.SSLCertVerificationError as exc:
        raise TransportError(f"Unable to verify TLS peer: {exc.verify_message}") from None
    except ssl.SSLError as exc:
        raise TransportError(f"TLS handshake failed: {exc.reason or exc}") from None
    except socket.gaierror as exc:
        raise TransportError(f"Unable to resolve address '{host}' service '{port}': "
                             f"{exc.strerror}") from None  # fmt: skip
    except OSError as exc:
        raise TransportError(f"unable to connect to server at '{host}:{port}': "
                             f"{_strerror(exc)}") from None  # fmt: skip


async def _read_tls_confirmation(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
    """The server checked our certificate: one byte ``\1`` means accepted; a close
    without it, refused (libvirt's messages for both)."""
    try:
        byte = await reader.read(1)
    except (ssl.SSLError, OSError) as exc:
        writer.close()
        reason = exc.reason if isinstance(exc, ssl.SSLError) else _strerror(exc)
        raise TransportError(f"Unable to read TLS confirmation: {reason}") from None
    if byte != TLS_CONFIRMATION:
        writer.close()
        raise TransportError("server verification (of our certificate or IP address) failed")


# -- ssh -------------------------------------------------------------------------------------
def _safe_name(what: str, value: str | None) -> str:
    # a leading "-" would be parsed by ssh as an option (-oProxyCommand=... runs anything)
    if not value or value.startswith("-") or any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise VirtError(f"invalid argument: refusing ssh {what} {value!r}",
                        code=ErrorCode.INVALID_ARG, domain=ErrorDomain.REMOTE)  # fmt: skip
    return value


def remote_command(uri: ConnectURI, readonly: bool) -> str:
    """The command ssh runs remotely: ONE string for the remote shell, every word quoted."""
    sock = uri.socket_path(readonly)
    netcat = uri.params.get("netcat")
    words = [netcat, "-U", sock] if netcat else [REMOTE_PYTHON, "-c", BRIDGE_SCRIPT, sock]
    return " ".join(shlex.quote(word) for word in words)


def ssh_program(explicit: str | None = None) -> str:
    return explicit or os.environ.get(SSH_PROGRAM_ENV) or DEFAULT_SSH_PROGRAM


def ssh_argv(uri: ConnectURI, readonly: bool, program: str | None = None) -> list[str]:
    """``ssh [-p P] [-l U] [-i K] [no_verify opts] [-T -o BatchMode=yes] -e none HOST -- CMD``.

    ``--`` after HOST matters: OpenSSH resumes option parsing after the host name, so
    without it a command starting with ``-`` would be read as options.
    """
    if "command" in uri.params:
        raise VirtError("the 'command' URI parameter is not supported; set "
                        f"{SSH_PROGRAM_ENV} to choose the ssh program",
                        code=ErrorCode.NO_SUPPORT, domain=ErrorDomain.REMOTE)  # fmt: skip
    argv = [ssh_program(program)]
    if uri.port is not None:
        argv += ["-p", str(uri.port)]
    if uri.user is not None:
        argv += ["-l", _safe_name("user name", uri.user)]
    if keyfile := uri.params.get("keyfile"):
        argv += ["-i", keyfile]
    if uri.no_verify:
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    if uri.no_tty:
        # libvirt's no_tty: no pseudo-terminal, and never prompt for a password
        argv += ["-T", "-o", "BatchMode=yes"]
    argv += ["-e", "none", _safe_name("host name", uri.host), "--", remote_command(uri, readonly)]
    return argv


async def _open_ssh(uri: ConnectURI, readonly: bool, program: str | None) -> Transport:
    argv = ssh_argv(uri, readonly, program)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise TransportError(f"Cannot run '{argv[0]}': {_strerror(exc)}") from None
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    return Transport(proc.stdout, proc.stdin, f"ssh:{uri.host}", process=proc,
                     stderr=_StderrTee(proc.stderr))  # fmt: skip


_Opener = Callable[[ConnectURI, bool, "str | None"], Awaitable[Transport]]
_OPENERS: dict[str, _Opener] = {"unix": _open_unix, "tcp": _open_tcp, "tls": _open_tls,
                                "ssh": _open_ssh}


async def open_transport(
    uri: ConnectURI, readonly: bool = False, *, ssh_program: str | None = None
) -> Transport:
    """Connect the byte stream for ``uri`` (ssh: ``ssh_program`` or $PYVIRT_SSH or ssh)."""
    opener = _OPENERS.get(uri.transport)
    if opener is None:
        raise VirtError(f"transport '{uri.transport}' is not supported",
                        code=ErrorCode.NO_SUPPORT, domain=ErrorDomain.REMOTE)  # fmt: skip
    return await opener(uri, readonly, ssh_program)
