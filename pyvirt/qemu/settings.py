"""Settings of the QEMU driver: where it keeps things and which resources it may use.

The daemon builds these from pyvirtd.conf and qemu.conf; tests build them directly with
temporary directories. Kept separate from the config parser so the driver can run (and be
tested) without a daemon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pyvirt.qemu.identity import DEFAULT_QEMU_GROUP, DEFAULT_QEMU_USER

#: libvirt's virDomainDefGetShortName keeps the first 20 characters
SHORT_NAME_MAX = 20
_UNSAFE_IN_SHORT_NAME = re.compile(r"[^A-Za-z0-9_.+-]")


def short_name(name: str) -> str:
    """The first 20 characters of ``name``, each outside ``[A-Za-z0-9_.+-]`` as ``_``, and
    no leading dot (so never ``.``/``..``). The domain id keeps directories unique."""
    short = _UNSAFE_IN_SHORT_NAME.sub("_", name[:SHORT_NAME_MAX])
    return "_" + short[1:] if short.startswith(".") else short or "_"


@dataclass(frozen=True)
class DriverSettings:
    #: the driver's own directories (qemu.conf's, e.g. /var/lib/pyvirt/qemu):
    #: persistent definitions and autostart marks
    state_dir: Path
    #: runtime status of running domains, monitor sockets, pid files (a tmpfs on real hosts)
    run_dir: Path
    #: per-domain QEMU logs and serial logs
    log_dir: Path
    emulator: str = "/usr/bin/qemu-system-x86_64"
    vnc_listen: str = "127.0.0.1"
    spice_listen: str = "127.0.0.1"
    remote_display_port_min: int = 5900
    remote_display_port_max: int = 65535
    #: seconds QEMU gets to exit on SIGTERM before SIGKILL (libvirt waits 10 s)
    kill_grace_s: float = 10.0
    #: seconds to wait for QEMU's monitor socket after spawning it
    monitor_timeout_s: float = 30.0
    #: seconds a caller waits for a domain's state-change lock (libvirt: 30 s)
    job_wait_s: float = 30.0
    extra_env: dict[str, str] = field(default_factory=dict)
    #: this host's UUID (a migration peer with the same one is refused)
    host_uuid: str = "00000000-0000-4000-8000-000000000000"
    #: where incoming migrations listen (None: any address) and the host name advertised
    migration_address: str | None = None
    migration_host: str | None = None
    migration_port_min: int = 49152
    migration_port_max: int = 49215
    #: directories holding shared storage (a disk there needs no copy to migrate)
    shared_filesystems: tuple[str, ...] = ()
    #: keepalive of the peer-to-peer connection to a destination daemon
    p2p_keepalive_interval: int = 5
    p2p_keepalive_count: int = 5
    #: qemu.conf's stdio_handler: "logd" (logs through a log writer that caps and rotates
    #: them at log_max_size bytes, log_max_backups copies) or "file" (QEMU writes, no cap)
    stdio_handler: str = "logd"
    log_max_size: int = 2 * 1024 * 1024
    log_max_backups: int = 3
    #: host name lookups: seconds a caller waits at most, threads doing them
    dns_lookup_timeout_s: float = 5.0
    dns_lookup_threads: int = 4
    #: qemu.conf's user/group: who QEMU runs as (names or "+N"), see pyvirt.qemu.identity
    user: str = DEFAULT_QEMU_USER
    group: str = DEFAULT_QEMU_GROUP
    #: hand disk images, kernels and the like to QEMU's user at start and back at stop
    dynamic_ownership: bool = True
    #: record the original owner (xattrs, refcounted) so the right one is given back
    remember_owner: bool = True
    #: QEMU's seccomp sandbox: 1 on (-sandbox on,...deny), 0 off
    seccomp_sandbox: int = 1

    @property
    def config_dir(self) -> Path:
        return self.state_dir / "config"

    @property
    def autostart_dir(self) -> Path:
        return self.state_dir / "autostart"

    @property
    def status_dir(self) -> Path:
        return self.run_dir

    @property
    def qemu_log_dir(self) -> Path:
        return self.log_dir

    def domain_run_dir(self, dom_id: int, name: str) -> Path:
        """``domain-<id>-<shortname>`` as libvirt's, built from a safe encoding of the name
        (never the raw name: it must not be able to leave ``run_dir``)."""
        return self.status_dir / f"domain-{dom_id}-{short_name(name)}"

    def ensure_dirs(self) -> None:
        for path in (self.config_dir, self.autostart_dir, self.status_dir, self.qemu_log_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # QEMU (not root) must pass through run_dir to its own domain-* directory; it may
        # not list it (status files are 0600 anyway)
        self.status_dir.chmod(0o711)
