"""``pyvirt-lab up/down/status/exec``: several pyvirt hosts on one machine.

Host N (``hostN``) is a network namespace ``pvlab-hostN`` at 10.77.0.N/24, reached from the
root namespace through the bridge ``pvlab-br0`` (10.77.0.254), plus a persistent mount
namespace in which ``/var/lib/pyvirt/images`` is the host's own directory and
``/var/lib/pyvirt/shared`` one directory common to all hosts. Inside both namespaces each
host runs a pyvirtd (TCP on 10.77.0.N:16509) and an sshd (10.77.0.N:22, root by the lab key).

Everything lives under :data:`LAB_ROOT`::

    /var/lib/pyvirt-lab/
      ssh/id_ed25519{,.pub} authorized_keys    the lab key (see lab_ssh_key())
      shared/                                  /var/lib/pyvirt/shared on every host
      mntns/hostN                              host N's mount namespace (nsfs bind)
      hostN/images/                            /var/lib/pyvirt/images on host N
      hostN/etc/pyvirtd.conf, etc/qemu.conf    host N's daemon configuration
      hostN/state/ run/ log/ ssh/              daemon dirs, pid files, logs, sshd config

``up`` is declarative and idempotent: it checks every piece, repairs or recreates what is
missing or stale (namespaces, binds, dead daemons, stale pid files) and keeps what is
healthy; hosts beyond the requested count are removed. ``down`` removes everything above,
including ``LAB_ROOT``. The guest kernel cache (``/var/cache/pyvirt``) is not the lab's.

The daemon command is ``python -m pyvirt.daemon --listen --config {config}``; ``$PYVIRT_LAB_DAEMON``
(or ``lab_up(daemon_argv=...)``) replaces it, e.g. with a stand-in for tests. It is an argv
template: split like a shell would (shlex, no shell runs it), then in each word
``{python} {host} {index} {address} {port} {config} {hostdir}`` are replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import grp
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pyvirt.lab import netns as ns
from pyvirt.lab import sshd
from pyvirt.lab.netns import LabError as LabError  # re-exported: the API raises it
from pyvirt.qemu.identity import DEFAULT_QEMU_GROUP

_Parser = TypeVar("_Parser", bound=argparse.ArgumentParser)

log = logging.getLogger("pyvirt.lab.hosts")  # not __name__: also run as __main__

LAB_ROOT = Path("/var/lib/pyvirt-lab")
#: The same paths on every host; what they show differs per mount namespace.
IMAGES_MOUNT = Path("/var/lib/pyvirt/images")
SHARED_MOUNT = Path("/var/lib/pyvirt/shared")
DAEMON_PORT = 16509
DAEMON_ENV = "PYVIRT_LAB_DAEMON"
DAEMON_MODULE = "pyvirt.daemon"
DEFAULT_HOSTS = 2
MAX_HOSTS = 32
#: Seeds each host's UUID: uuid5(this, "hostN") is stable across ups and distinct per host.
LAB_UUID_NAMESPACE = uuid.UUID("36c652f7-bccc-4d93-affe-b508894094e4")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOCK_FILE = Path("/run/lock/pyvirt-lab.lock")
#: Mount targets ``up`` had to create in the root filesystem, so ``down`` removes only those.
CREATED_DIRS_FILE = "created-dirs.json"
REQUIRED_TOOLS = ("ip", "nsenter", "unshare", "setsid", "mount", "umount", "stat", "ssh-keygen")


# ------------------------------------------------------------------------------ hosts


@dataclass(frozen=True)
class LabHost:
    """One lab host: its names, address, namespaces and directories."""

    name: str
    index: int
    address: str
    uri: str
    netns: str
    #: the nsfs file holding the network namespace (``/run/netns/<netns>``)
    netns_path: Path
    #: the nsfs file holding the mount namespace
    mount_ns: Path
    dir: Path
    host_uuid: str

    @property
    def veth(self) -> str:
        return ns.veth_name(self.index)

    @property
    def images_dir(self) -> Path:
        return self.dir / "images"

    @property
    def etc_dir(self) -> Path:
        return self.dir / "etc"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def sock_dir(self) -> Path:
        return self.run_dir / "sock"

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    @property
    def ssh_dir(self) -> Path:
        return self.dir / "ssh"

    @property
    def pyvirtd_conf(self) -> Path:
        return self.etc_dir / "pyvirtd.conf"

    @property
    def qemu_conf(self) -> Path:
        return self.etc_dir / "qemu.conf"

    @property
    def daemon_pidfile(self) -> Path:
        return self.run_dir / "pyvirtd.pid"

    @property
    def daemon_log(self) -> Path:
        return self.log_dir / "pyvirtd.log"

    @property
    def sshd_config(self) -> Path:
        return self.ssh_dir / "sshd_config"

    @property
    def sshd_pidfile(self) -> Path:
        return self.run_dir / "sshd.pid"

    @property
    def sshd_log(self) -> Path:
        return self.log_dir / "sshd.log"


def host_uuid(index: int) -> str:
    return str(uuid.uuid5(LAB_UUID_NAMESPACE, f"host{index}"))


def lab_host(index: int, root: Path = LAB_ROOT) -> LabHost:
    address = ns.host_address(index)
    return LabHost(
        name=f"host{index}",
        index=index,
        address=address,
        uri=f"qemu+tcp://{address}/system",
        netns=ns.netns_name(index),
        netns_path=ns.netns_path(ns.netns_name(index)),
        mount_ns=root / "mntns" / f"host{index}",
        dir=root / f"host{index}",
        host_uuid=host_uuid(index),
    )


def host_line(host: LabHost) -> str:
    """What ``up`` prints for a host (the one stable, parseable output)."""
    return f"{host.name} {host.address} {host.uri}"


def parse_host(spec: str) -> int:
    """``host3`` or ``3`` → 3."""
    match = re.fullmatch(r"(?:host)?([1-9][0-9]*)", spec)
    if match is None or int(match[1]) > MAX_HOSTS:
        raise LabError(f"unknown host '{spec}' (expected host1..host{MAX_HOSTS})")
    return int(match[1])


def lab_ssh_key() -> Path:
    """The private key that logs into every lab host as root (``ssh -i``)."""
    return LAB_ROOT / "ssh" / sshd.KEY_NAME


def host_exec_argv(host: LabHost, argv: Sequence[str], *, cwd: str | None = None) -> list[str]:
    """*argv* run inside both of *host*'s namespaces. Entering a mount namespace moves to
    its root directory unless *cwd* is given."""
    enter = ["nsenter", f"--net={host.netns_path}", f"--mount={host.mount_ns}"]
    if cwd is not None:
        enter.append(f"--wd={cwd}")
    return [*enter, "--", *argv]


# ----------------------------------------------------------------- config rendering


def render_pyvirtd_conf(host: LabHost) -> str:
    return "\n".join(
        [
            f"# pyvirtd.conf of lab {host.name}, written by `pyvirt-lab up` on every up.",
            "# --listen defaults to TLS only (libvirtd's rule); the lab uses plain TCP.",
            "listen_tls = 0",
            "listen_tcp = 1",
            f'listen_addr = "{host.address}"',
            f'tcp_port = "{DAEMON_PORT}"',
            "# pyvirt's documented default until SASL exists; the lab network is local.",
            'auth_tcp = "none"',
            f'unix_sock_dir = "{host.sock_dir}"',
            f'host_uuid = "{host.host_uuid}"',
            f'state_dir = "{host.state_dir}"',
            f'run_dir = "{host.run_dir}"',
            f'log_dir = "{host.log_dir}"',
            "# Test-friendly keepalive: a silent client or peer is dropped after",
            "# interval x (count + 1) = 4 s instead of libvirt's 30 s, so failure tests are quick.",
            "keepalive_interval = 1",
            "keepalive_count = 3",
            "",
        ]
    )


def render_qemu_conf(host: LabHost) -> str:
    return "\n".join(
        [
            f"# qemu.conf of lab {host.name}, written by `pyvirt-lab up` on every up.",
            f'migration_address = "{host.address}"',
            f'migration_host = "{host.address}"',
            "# The same directory on every lab host; /var/lib/pyvirt/images is per host.",
            f'shared_filesystems = [ "{SHARED_MOUNT}" ]',
            "# The peer-to-peer migration connection uses the same quick keepalive.",
            "keepalive_interval = 1",
            "keepalive_count = 3",
            "",
        ]
    )


# ---------------------------------------------------------------------- daemon argv


def default_daemon_template() -> list[str]:
    return ["{python}", "-m", DAEMON_MODULE, "--listen", "--config", "{config}"]


def daemon_template(daemon_argv: Sequence[str] | None = None) -> list[str]:
    """The daemon argv template: *daemon_argv*, else ``$PYVIRT_LAB_DAEMON``, else pyvirtd."""
    if daemon_argv is not None:
        template = list(daemon_argv)
    elif os.environ.get(DAEMON_ENV, "").strip():
        try:
            template = shlex.split(os.environ[DAEMON_ENV])
        except ValueError as exc:
            raise LabError(f"${DAEMON_ENV}: {exc}") from exc
    else:
        return default_daemon_template()
    if not template:
        raise LabError("the daemon command is empty")
    return template


def expand_argv(template: Sequence[str], host: LabHost) -> list[str]:
    """Replace the ``{key}`` placeholders (only those: other braces stay as they are)."""
    values = {
        "python": sys.executable,
        "host": host.name,
        "index": str(host.index),
        "address": host.address,
        "port": str(DAEMON_PORT),
        "config": str(host.pyvirtd_conf),
        "hostdir": str(host.dir),
    }
    pattern = re.compile(r"\{(" + "|".join(values) + r")\}")
    return [pattern.sub(lambda m: values[m[1]], word) for word in template]


def check_daemon_available(template: Sequence[str]) -> None:
    """Refuse, before anything is created, a daemon command that cannot start."""
    if list(template) == default_daemon_template():
        try:
            found = importlib.util.find_spec(f"{DAEMON_MODULE}.__main__")
        except ImportError:
            found = None
        if found is None:
            raise LabError(
                f"the pyvirtd daemon is missing (no module {DAEMON_MODULE}.__main__ for "
                f"{sys.executable}); set ${DAEMON_ENV} to run another command"
            )
        return
    program = expand_argv(template[:1], lab_host(1))[0]
    if shutil.which(program) is None:
        raise LabError(f"daemon command not found or not executable: {program}")


# ------------------------------------------------------------------ locking, preflight


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One up/down at a time on this machine."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("pyvirt-lab must run as root (namespaces, mounts and the bridge need it)")


def _preflight(n: int, template: Sequence[str]) -> None:
    _require_root()
    if not 1 <= n <= MAX_HOSTS:
        raise LabError(f"--hosts must be between 1 and {MAX_HOSTS}, not {n}")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)} (iproute2, util-linux, openssh)")
    sshd.sshd_binary()
    check_daemon_available(template)
    ns.check_subnet_free()


def _existing_indices() -> set[int]:
    """Hosts with any trace: a namespace, a veth, a mount namespace or a directory."""
    names = ns.list_lab_netns() + ns.list_lab_veths()
    for directory in (LAB_ROOT, LAB_ROOT / "mntns"):
        if directory.is_dir():
            names += [entry.name for entry in directory.iterdir()]
    pattern = re.compile(r"(?:pvlab-host|pvlab-h|host)([1-9][0-9]*)")
    return {int(m[1]) for name in names if (m := pattern.fullmatch(name))}


def _lab_exists() -> bool:
    return LAB_ROOT.exists() or ns.link_exists(ns.BRIDGE) or bool(_existing_indices())


# ------------------------------------------------------------------------ processes


def _host_ns_keys(host: LabHost) -> set[ns.NsKey]:
    """The host's namespaces that still exist (an unmounted file is no namespace)."""
    files = [f for f in (host.netns_path, host.mount_ns) if ns.is_mountpoint(f)]
    return {key for f in files if (key := ns.ns_key(f)) is not None}


def _pidfile_pid(pidfile: Path, host: LabHost, *, strict: bool) -> int | None:
    """The live process named by *pidfile*, if it is really this host's: inside its network
    namespace, or (unless *strict*) with the host directory on its command line."""
    pid = ns.read_pidfile(pidfile)
    if pid is None or not ns.process_alive(pid):
        return None
    key = ns.ns_key(host.netns_path)
    if key is not None and ns.ns_key(f"/proc/{pid}/ns/net") == key:
        return pid
    if not strict and str(host.dir) in ns.process_cmdline(pid):
        return pid
    return None


def _stop_processes(hosts: Sequence[LabHost]) -> None:
    """Daemons first (they may still be talking to QEMU), then QEMU and anything else
    in the hosts' namespaces, then sshd, then whatever appeared meanwhile."""
    daemons = [p for h in hosts if (p := _pidfile_pid(h.daemon_pidfile, h, strict=False))]
    ns.terminate(daemons, STOP_TIMEOUT)
    sshds = {p for h in hosts if (p := _pidfile_pid(h.sshd_pidfile, h, strict=False))}
    keys = set().union(*(_host_ns_keys(h) for h in hosts)) if hosts else set()
    ns.terminate([p for p in ns.pids_in_namespaces(keys) if p not in sshds], STOP_TIMEOUT)
    ns.terminate(sshds, STOP_TIMEOUT)
    ns.terminate(ns.pids_in_namespaces(keys), STOP_TIMEOUT)


@dataclass(frozen=True)
class _Service:
    """A long-running process of a host, started detached inside its namespaces."""

    name: str
    argv: list[str]
    pidfile: Path
    log_file: Path
    ready: Callable[[], bool]
    endpoint: str


def _daemon_service(host: LabHost, template: Sequence[str]) -> _Service:
    return _Service(
        "pyvirtd", expand_argv(template, host), host.daemon_pidfile, host.daemon_log,
        lambda: _port_open(host.address, DAEMON_PORT), f"{host.address}:{DAEMON_PORT}",
    )


def _sshd_service(host: LabHost) -> _Service:
    return _Service(
        "sshd", sshd.sshd_argv(host.sshd_config, host.sshd_log), host.sshd_pidfile,
        host.sshd_log, lambda: sshd.sshd_ready(host.address), f"{host.address}:{sshd.SSH_PORT}",
    )


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _poll_ready(service: _Service, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not service.ready():
        if not ns.process_alive(pid) or time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _ensure_service(host: LabHost, service: _Service, *, restart: bool, timeout: float) -> int:
    """Keep a healthy running *service*; otherwise (re)start it and wait until it answers."""
    pid = _pidfile_pid(service.pidfile, host, strict=True)
    if pid is not None and not restart:
        if _poll_ready(service, pid, min(timeout, 5.0)):
            return pid
        log.info("%s: %s (pid %d) does not answer; restarting it", host.name, service.name, pid)
    if pid is not None:
        ns.terminate([pid], STOP_TIMEOUT)
    log.info("%s: starting %s", host.name, shlex.join(service.argv))
    pid = ns.spawn_detached(host_exec_argv(host, service.argv), service.log_file, service.pidfile)
    if _poll_ready(service, pid, timeout):
        return pid
    died = not ns.process_alive(pid)
    ns.terminate([pid], STOP_TIMEOUT)
    what = "exited during start-up" if died else (
        f"did not accept connections on {service.endpoint} within {timeout:g} s")
    raise LabError(
        f"{host.name}: {service.name} {what}; last lines of {service.log_file}:\n"
        + ns.log_tail(service.log_file)
    )


# ------------------------------------------------------------------------------- up


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _ensure_mount_targets() -> None:
    """Create the mount targets in the root filesystem, remembering those we created."""
    record = LAB_ROOT / CREATED_DIRS_FILE
    created: list[str] = json.loads(record.read_text()) if record.is_file() else []
    for path in (IMAGES_MOUNT.parent, IMAGES_MOUNT, SHARED_MOUNT):
        if not path.is_dir():
            path.mkdir(mode=0o755)
            created.append(str(path))
    _write_if_changed(record, json.dumps(sorted(set(created))))


def _prepare_shared_dir(shared: Path) -> None:
    """The lab's shared storage, set up as an operator sets up an NFS export for QEMU:
    QEMU's group may create files there (e.g. the unix socket of ``--disks-uri unix://``,
    which the destination's QEMU creates as its own user), new files keep that group."""
    shared.mkdir(exist_ok=True)
    try:
        gid = grp.getgrnam(DEFAULT_QEMU_GROUP).gr_gid
    except KeyError:
        raise LabError(f"group {DEFAULT_QEMU_GROUP} does not exist: run 'make setup'") \
            from None
    os.chown(shared, 0, gid)
    shared.chmod(0o2775)


def _prepare_lab() -> None:
    """The parts every host shares: the bridge, dirs, mount targets, the lab key."""
    LAB_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    _prepare_shared_dir(LAB_ROOT / "shared")
    _ensure_mount_targets()
    ns.ensure_private_dir(LAB_ROOT / "mntns")
    sshd.ensure_lab_key(LAB_ROOT / "ssh")
    ns.ensure_bridge()


def _prepare_host_files(host: LabHost) -> None:
    for directory in (host.images_dir, host.etc_dir, host.state_dir, host.sock_dir,
                      host.log_dir, host.ssh_dir):
        directory.mkdir(parents=True, exist_ok=True)
    _write_if_changed(host.pyvirtd_conf, render_pyvirtd_conf(host))
    _write_if_changed(host.qemu_conf, render_qemu_conf(host))
    host_key = host.ssh_dir / sshd.HOST_KEY_NAME
    sshd.ensure_keypair(host_key, f"root@{host.name}")
    authorized = LAB_ROOT / "ssh" / sshd.AUTHORIZED_KEYS
    config = sshd.render_sshd_config(host.address, host_key, host.sshd_pidfile, authorized)
    _write_if_changed(host.sshd_config, config)
    sshd.check_sshd_config(host.sshd_config)


def _ensure_namespaces(host: LabHost) -> bool:
    """Repair *host*'s namespaces; True if one was recreated (its processes must restart:
    they were stopped, or live in a namespace that is gone)."""
    net_ok, mnt_ok = ns.netns_ok(host.index), ns.is_mountpoint(host.mount_ns)
    if not (net_ok and mnt_ok):
        _stop_processes([host])
    if not net_ok:
        ns.remove_netns(host.netns, host.veth)
        ns.create_netns(host.index)
    if not mnt_ok:
        ns.remove_mntns(host.mount_ns)
        ns.create_mntns(host.mount_ns)
    ns.ensure_binds(host.mount_ns, [(host.images_dir, IMAGES_MOUNT),
                                    (LAB_ROOT / "shared", SHARED_MOUNT)])
    return not (net_ok and mnt_ok)


def _up_host(host: LabHost, template: Sequence[str], timeout: float) -> None:
    _prepare_host_files(host)
    recreated = _ensure_namespaces(host)
    _ensure_service(host, _sshd_service(host), restart=recreated, timeout=timeout)
    _ensure_service(host, _daemon_service(host, template), restart=recreated, timeout=timeout)


def lab_up(
    n: int = DEFAULT_HOSTS,
    *,
    daemon_argv: Sequence[str] | None = None,
    start_timeout: float = START_TIMEOUT,
) -> list[LabHost]:
    """Bring hosts host1..host*n* up (or repair them); remove any host beyond *n*.

    *daemon_argv* is an argv template (see the module doc) replacing ``$PYVIRT_LAB_DAEMON``
    and the real pyvirtd. If this call created the lab and fails, it removes it again;
    a lab that existed before is left as it is for inspection (``status``, the logs)."""
    template = daemon_template(daemon_argv)
    _preflight(n, template)
    hosts = [lab_host(i) for i in range(1, n + 1)]
    with _locked():
        fresh = not _lab_exists()
        try:
            extra = sorted(i for i in _existing_indices() if i > n)
            if extra:
                _remove_hosts([lab_host(i) for i in extra])
            _prepare_lab()
            for host in hosts:
                _up_host(host, template, start_timeout)
        except BaseException:
            if fresh:
                with contextlib.suppress(LabError):
                    _teardown()
            raise
    return hosts


# ----------------------------------------------------------------------------- down


def _remove_hosts(hosts: Sequence[LabHost]) -> None:
    _stop_processes(hosts)
    for host in hosts:
        log.info("removing %s", host.name)
        ns.remove_mntns(host.mount_ns)
        ns.remove_netns(host.netns, host.veth)
        _remove_tree(host.dir)


def _remove_tree(path: Path) -> None:
    # Never delete through a mount: whatever is still mounted below goes first.
    for mount in ns.mounts_under(path):
        ns.unmount(mount)
    if ns.mounts_under(path):
        raise LabError(f"{path} still has mounts; not removing it")
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise LabError(f"cannot remove {path}")


def _remove_created_dirs() -> None:
    record = LAB_ROOT / CREATED_DIRS_FILE
    created: list[str] = json.loads(record.read_text()) if record.is_file() else []
    for path in sorted(created, key=len, reverse=True):
        with contextlib.suppress(OSError):  # not empty: someone else's files now; keep them
            os.rmdir(path)


def _teardown() -> None:
    _remove_hosts([lab_host(i) for i in sorted(_existing_indices())])
    for veth in ns.list_lab_veths():  # a veth whose host dir and namespace are both gone
        ns.run(["ip", "link", "del", veth], check=False)
    ns.remove_bridge()
    if LAB_ROOT.exists():
        _remove_created_dirs()
        _remove_tree(LAB_ROOT)


def lab_down() -> None:
    """Stop every lab process and remove every lab namespace, mount, link and directory.
    Idempotent; fine when nothing is up."""
    _require_root()
    with _locked():
        _teardown()


def lab_leftovers() -> list[str]:
    """Traces of the lab on this machine (empty after a complete ``down``)."""
    found = [f"netns {name}" for name in ns.list_lab_netns()]
    found += [f"link {name}" for name in ns.list_lab_veths()]
    found += [f"link {ns.BRIDGE}"] if ns.link_exists(ns.BRIDGE) else []
    prefixes = (str(LAB_ROOT), str(ns.NETNS_DIR / ns.NETNS_PREFIX))
    found += [f"mount {m}" for m in ns.mount_points() if m.startswith(prefixes)]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        cmdline = ns.process_cmdline(int(entry.name))
        if str(LAB_ROOT) + "/" in cmdline and ns.process_alive(int(entry.name)):
            found.append(f"process {entry.name}: {cmdline}")
    found += [f"directory {LAB_ROOT}"] if LAB_ROOT.exists() else []
    return found


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class HostStatus:
    host: LabHost
    network: bool
    mounts: bool
    daemon_pid: int | None
    sshd_pid: int | None

    @property
    def healthy(self) -> bool:
        return self.network and self.mounts and None not in (self.daemon_pid, self.sshd_pid)

    def line(self) -> str:
        def state(pid: int | None) -> str:
            return "down" if pid is None else f"running:{pid}"

        net = "up" if self.network and self.mounts else "down"
        return (f"{host_line(self.host)} net={net} pyvirtd={state(self.daemon_pid)} "
                f"sshd={state(self.sshd_pid)}")


def lab_status() -> list[HostStatus]:
    """The state of every host that has any trace on this machine, by index."""
    statuses = []
    for index in sorted(_existing_indices()):
        host = lab_host(index)
        statuses.append(HostStatus(
            host, ns.netns_ok(index), ns.is_mountpoint(host.mount_ns),
            _pidfile_pid(host.daemon_pidfile, host, strict=True),
            _pidfile_pid(host.sshd_pidfile, host, strict=True),
        ))
    return statuses


# ------------------------------------------------------------------------------ CLI


def _cmd_up(args: argparse.Namespace) -> int:
    for host in lab_up(args.hosts, start_timeout=args.timeout):
        print(host_line(host), flush=True)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    lab_down()
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    statuses = lab_status()
    if not statuses:
        raise LabError("no lab hosts are up (run: pyvirt-lab up)")
    for status in statuses:
        print(status.line(), flush=True)
    degraded = [s.host.name for s in statuses if not s.healthy]
    if degraded:
        raise LabError(f"not healthy: {', '.join(degraded)} (repair with: pyvirt-lab up)")
    return 0


def _cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.exec_argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise LabError("exec: no command given (pyvirt-lab exec HOST -- CMD...)")
    host = lab_host(parse_host(args.host))
    if not (ns.is_mountpoint(host.netns_path) and ns.is_mountpoint(host.mount_ns)):
        raise LabError(f"{host.name} is not up (run: pyvirt-lab up)")
    try:
        code = subprocess.run(host_exec_argv(host, command, cwd=os.getcwd())).returncode
    except OSError as exc:
        raise LabError(f"exec: {exc}") from exc
    return 128 - code if code < 0 else code


def _handled(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run *handler*; a LabError becomes ``error: ...`` on stderr and exit code 1."""

    def wrapper(args: argparse.Namespace) -> int:
        if getattr(args, "lab_verbose", False) or getattr(args, "verbose", False):
            _log_to_stderr()
        try:
            return handler(args)
        except LabError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 1

    return wrapper


def _set_handler(
    parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]
) -> None:
    # Its own dest: a subparser's default would overwrite a top-level --verbose.
    parser.add_argument("-v", "--verbose", dest="lab_verbose", action="store_true",
                        help="progress on stderr")
    wrapped = _handled(handler)
    parser.set_defaults(func=wrapped, handler=wrapped)


def _log_to_stderr() -> None:
    logger = logging.getLogger("pyvirt.lab")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("pyvirt-lab: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def register_commands(subparsers: argparse._SubParsersAction[_Parser]) -> None:
    """Add ``up``, ``down``, ``status`` and ``exec`` to a ``pyvirt-lab`` argument parser.
    Each sets both ``func`` and ``handler`` (the name pyvirt.lab.cli dispatches on)."""
    up = subparsers.add_parser("up", help="bring the lab hosts up (or repair them)")
    up.add_argument("--hosts", type=int, default=DEFAULT_HOSTS, metavar="N",
                    help=f"number of hosts (default {DEFAULT_HOSTS})")
    up.add_argument("--timeout", type=float, default=START_TIMEOUT, metavar="SECONDS",
                    help=f"wait this long for each daemon to listen (default {START_TIMEOUT:g})")
    _set_handler(up, _cmd_up)
    _set_handler(subparsers.add_parser("down", help="remove every lab host"), _cmd_down)
    _set_handler(subparsers.add_parser("status", help="show the lab hosts"), _cmd_status)
    run = subparsers.add_parser("exec", help="run a command on a lab host")
    run.add_argument("host", help="hostN or N")
    # Not dest="command": pyvirt-lab's parser may use that name for the subcommand.
    run.add_argument("exec_argv", nargs=argparse.REMAINDER, metavar="-- CMD",
                     help="the command and its arguments")
    _set_handler(run, _cmd_exec)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m pyvirt.lab.hosts``) until pyvirt-lab's CLI wires these."""
    parser = argparse.ArgumentParser(prog="pyvirt-lab")
    register_commands(parser.add_subparsers(dest="command_name", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
