"""One sshd per lab host, and the lab's key pair that logs into all of them as root.

Each host's sshd runs inside the host's network and mount namespaces (so a session lands
"on" that host: its address, its ``/var/lib/pyvirt/images``), listens only on the host's
address, port 22, and has its own host key, config and pid file under the host's directory.
Nothing outside the lab directory is touched: the authorized keys come from the lab's own
``authorized_keys`` file (``AuthorizedKeysFile``), not from ``/root/.ssh``. The only system
path used is ``/run/sshd``, the privilege-separation directory every sshd needs.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from pyvirt.lab.netns import LabError, run

SSH_PORT = 22
SSHD_CANDIDATES = (Path("/usr/sbin/sshd"), Path("/usr/bin/sshd"))
PRIVSEP_DIR = Path("/run/sshd")
KEY_NAME = "id_ed25519"
HOST_KEY_NAME = "ssh_host_ed25519_key"
AUTHORIZED_KEYS = "authorized_keys"

#: Options for a client in the root namespace: host keys are regenerated on every fresh
#: ``up``, so they are neither checked nor remembered.
SSH_CLIENT_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=5",
)


def sshd_binary() -> Path:
    for candidate in SSHD_CANDIDATES:
        if candidate.is_file():
            return candidate
    found = shutil.which("sshd")
    if found is None:
        raise LabError("sshd not found (install openssh-server)")
    return Path(found)


def ensure_keypair(key: Path, comment: str) -> None:
    """An ed25519 key pair at *key* (and *key*.pub), generated once, without passphrase."""
    if key.is_file() and key.with_name(key.name + ".pub").is_file():
        return
    key.unlink(missing_ok=True)
    key.with_name(key.name + ".pub").unlink(missing_ok=True)
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)])


def ensure_lab_key(ssh_dir: Path) -> Path:
    """The lab's client key pair and the ``authorized_keys`` every lab sshd reads."""
    key = ssh_dir / KEY_NAME
    ensure_keypair(key, "pyvirt-lab")
    public = key.with_name(key.name + ".pub").read_text()
    authorized = ssh_dir / AUTHORIZED_KEYS
    if not authorized.is_file() or authorized.read_text() != public:
        authorized.write_text(public)
    authorized.chmod(0o600)
    return key


def render_sshd_config(
    address: str, host_key: Path, pidfile: Path, authorized_keys: Path
) -> str:
    """sshd_config for one lab host: root by lab key only, everything else off."""
    return "\n".join(
        [
            "# Written by `pyvirt-lab up`; rewritten on every up.",
            f"ListenAddress {address}:{SSH_PORT}",
            f"HostKey {host_key}",
            f"PidFile {pidfile}",
            f"AuthorizedKeysFile {authorized_keys}",
            "PermitRootLogin yes",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # The lab's files live in root-owned directories sshd's owner checks dislike.
            "StrictModes no",
            # PAM would consult the machine's login setup; the lab needs none of it.
            "UsePAM no",
            "X11Forwarding no",
            "PrintMotd no",
            "AcceptEnv LANG LC_*",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def sshd_argv(config: Path, log_file: Path) -> list[str]:
    # -D: stay in the foreground, so the pid we record is the listener's.
    return [str(sshd_binary()), "-D", "-f", str(config), "-E", str(log_file)]


def check_sshd_config(config: Path) -> None:
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    run([str(sshd_binary()), "-t", "-f", str(config)])


def sshd_ready(address: str, port: int = SSH_PORT, timeout: float = 0.5) -> bool:
    """Does an SSH server answer at *address* (its banner starts with ``SSH-``)?"""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(4) == b"SSH-"
    except OSError:
        return False


def ssh_argv(key: Path, address: str, argv: list[str]) -> list[str]:
    """``ssh`` from the root namespace into a lab host as root, running *argv* there."""
    return ["ssh", "-i", str(key), *SSH_CLIENT_OPTIONS, f"root@{address}", *argv]
