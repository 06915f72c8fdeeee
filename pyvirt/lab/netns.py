"""Namespaces and processes for the lab hosts: the bridge, veths, network and mount namespaces.

Everything this module creates is named with the ``pvlab`` prefix, so teardown can find exactly
the lab's objects and nothing else:

* ``pvlab-br0``: a bridge in the root namespace at 10.77.0.254/24;
* ``pvlab-hostN``: host N's network namespace (``ip netns``, so ``/run/netns/pvlab-hostN``);
* ``pvlab-hN``: the root end of host N's veth, enslaved to the bridge; its peer is ``eth0``
  inside the namespace, with 10.77.0.N/24.

Mount namespaces are persisted the way ``ip netns`` persists network namespaces: a file
bind-mounted from ``/proc/PID/ns/mnt`` (``unshare --mount=FILE``). The kernel refuses such a
bind under a *shared* mount (it could propagate into the namespace itself), so the directory
holding the files is first made a private bind mount of itself.

Commands run through :func:`run`: argv lists only (never a shell), output captured, and any
failure becomes a :class:`LabError` that names the command and its stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BRIDGE = "pvlab-br0"
SUBNET = "10.77.0"
PREFIXLEN = 24
BRIDGE_ADDRESS = f"{SUBNET}.254"
#: The veth end inside each host: a real host's NIC name, so tools inside look ordinary.
HOST_IFACE = "eth0"
#: Fixed, locally administered MACs (02:70:76 = "pv"): a recreated host or bridge keeps
#: its MAC, so the neighbours' ARP caches stay right (a stale entry would black-hole
#: traffic for up to 30 s). The bridge's would otherwise follow its lowest port's MAC.
MAC_PREFIX = "02:70:76:00:00"
BRIDGE_MAC = f"{MAC_PREFIX}:fe"
NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "pvlab-host"
VETH_PREFIX = "pvlab-h"

#: A (st_dev, st_ino) pair: how the kernel identifies a namespace through nsfs.
NsKey = tuple[int, int]


class LabError(Exception):
    """A refusal or failure of a lab command; the CLI prints it as ``error: <message>``."""


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run *argv* (no shell), capturing its output; a failure raises LabError if *check*."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]}: command not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{shlex.join(argv)}: timed out after {timeout:g} s") from exc
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise LabError(f"{shlex.join(argv)} failed (exit {done.returncode}): {detail}")
    return done


def netns_name(index: int) -> str:
    return f"{NETNS_PREFIX}{index}"


def veth_name(index: int) -> str:
    return f"{VETH_PREFIX}{index}"


def host_address(index: int) -> str:
    return f"{SUBNET}.{index}"


def host_mac(index: int) -> str:
    return f"{MAC_PREFIX}:{index:02x}"


# ------------------------------------------------------------------------- mount table


def _unescape_mountinfo(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mount_points(mountinfo: str | None = None) -> list[str]:
    """Every mount point of the caller's mount namespace, in mount order."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    return [_unescape_mountinfo(line.split()[4]) for line in mountinfo.splitlines() if line]


def is_mountpoint(path: Path) -> bool:
    return str(path) in mount_points()


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below *root*, deepest (last mounted) first, for unmounting."""
    prefix = str(root).rstrip("/") + "/"
    found = [m for m in mount_points() if m == str(root) or m.startswith(prefix)]
    return list(reversed(found))


def unmount(path: str) -> None:
    """Unmount every mount stacked on *path*; a busy one is detached lazily."""
    for _ in range(16):  # stacked binds: one umount per layer
        if path not in mount_points():
            return
        if run(["umount", path], check=False).returncode != 0:
            run(["umount", "-l", path])
    raise LabError(f"cannot unmount {path}")


# -------------------------------------------------------------------------- the bridge


def _ip_json(argv: Sequence[str]) -> list[dict[str, Any]]:
    done = run(["ip", "-j", *argv], check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return []
    parsed: list[dict[str, Any]] = json.loads(done.stdout)
    return parsed


def link_exists(name: str) -> bool:
    return bool(_ip_json(["link", "show", "dev", name]))


def check_subnet_free() -> None:
    """Refuse when something that is not ours already has an address in the lab's subnet."""
    for iface in _ip_json(["-4", "addr", "show"]):
        name = str(iface.get("ifname", ""))
        for info in iface.get("addr_info", []):
            if str(info.get("local", "")).startswith(SUBNET + ".") and not name.startswith("pvlab"):
                raise LabError(
                    f"{name} already has {info['local']}: the lab needs {SUBNET}.0/{PREFIXLEN}"
                )


def ensure_bridge() -> None:
    if not link_exists(BRIDGE):
        log.info("creating bridge %s", BRIDGE)
        run(["ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge"])
    run(["ip", "link", "set", BRIDGE, "address", BRIDGE_MAC])
    run(["ip", "addr", "replace", f"{BRIDGE_ADDRESS}/{PREFIXLEN}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def remove_bridge() -> None:
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE])


# -------------------------------------------------------------- network namespaces


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def list_lab_netns() -> list[str]:
    """Names of the lab's network namespaces (``ip netns list`` may append ``(id: N)``)."""
    done = run(["ip", "netns", "list"], check=False)
    names = (line.split()[0] for line in done.stdout.splitlines() if line.strip())
    return [name for name in names if name.startswith(NETNS_PREFIX)]


def list_lab_veths() -> list[str]:
    return [
        str(link["ifname"])
        for link in _ip_json(["link", "show"])
        if str(link.get("ifname", "")).startswith(VETH_PREFIX)
    ]


def _has_address(links: list[dict[str, Any]], iface: str, address: str) -> bool:
    for link in links:
        if link.get("ifname") == iface and "UP" in link.get("flags", []):
            return any(a.get("local") == address for a in link.get("addr_info", []))
    return False


def netns_ok(index: int) -> bool:
    """Is host *index*'s network complete: namespace, veth in the bridge, addresses up?"""
    name = netns_name(index)
    if not is_mountpoint(netns_path(name)):
        return False
    root_end = _ip_json(["link", "show", "dev", veth_name(index)])
    if not root_end or root_end[0].get("master") != BRIDGE or "UP" not in root_end[0]["flags"]:
        return False
    inside = _ip_json(["-n", name, "addr", "show"])
    return _has_address(inside, HOST_IFACE, host_address(index)) and _has_address(
        inside, "lo", "127.0.0.1"
    )


def create_netns(index: int) -> None:
    """Create host *index*'s namespace and veth from scratch (call :func:`remove_netns` first)."""
    name, veth = netns_name(index), veth_name(index)
    log.info("creating network namespace %s", name)
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    peer = ["peer", "name", HOST_IFACE, "address", host_mac(index), "netns", name]
    run(["ip", "link", "add", veth, "type", "veth", *peer])
    run(["ip", "link", "set", veth, "master", BRIDGE])
    run(["ip", "link", "set", veth, "up"])
    address = f"{host_address(index)}/{PREFIXLEN}"
    run(["ip", "-n", name, "addr", "add", address, "dev", HOST_IFACE])
    run(["ip", "-n", name, "link", "set", HOST_IFACE, "up"])


def remove_netns(name: str, veth: str) -> None:
    # The veth is deleted explicitly: a namespace outlives its name while any mount
    # namespace still holds a copy of its nsfs file, and its veth with it.
    if link_exists(veth):
        run(["ip", "link", "del", veth])
    if netns_path(name).exists():
        run(["ip", "netns", "del", name])


# ---------------------------------------------------------------- mount namespaces


def ensure_private_dir(directory: Path) -> None:
    """Make *directory* a private bind mount of itself, so mount-namespace files can live in it."""
    directory.mkdir(parents=True, exist_ok=True)
    if not is_mountpoint(directory):
        run(["mount", "--bind", str(directory), str(directory)])
    run(["mount", "--make-private", str(directory)])


def create_mntns(ns_file: Path) -> None:
    """A new persistent mount namespace, bound on *ns_file*, with private propagation
    (so the binds made inside stay inside)."""
    log.info("creating mount namespace %s", ns_file)
    ns_file.touch()
    run(["unshare", f"--mount={ns_file}", "--propagation", "private", "true"])


def _stat_inside(ns_file: Path, path: Path) -> str:
    done = run(["nsenter", f"--mount={ns_file}", "--", "stat", "-L", "-c", "%d:%i", str(path)])
    return done.stdout.strip()


def ensure_binds(ns_file: Path, binds: Iterable[tuple[Path, Path]]) -> None:
    """Inside the mount namespace at *ns_file*, make each target show its source directory.
    Compared by device and inode, so a missing or wrong bind is (re)done and a right one kept."""
    for source, target in binds:
        st = source.stat()
        if _stat_inside(ns_file, target) != f"{st.st_dev}:{st.st_ino}":
            log.info("binding %s on %s in %s", source, target, ns_file)
            enter = ["nsenter", f"--mount={ns_file}", "--"]
            run([*enter, "mount", "--bind", str(source), str(target)])


def remove_mntns(ns_file: Path) -> None:
    unmount(str(ns_file))
    ns_file.unlink(missing_ok=True)


# ------------------------------------------------------------------------- processes


def ns_key(path: Path | str) -> NsKey | None:
    """The namespace behind an nsfs file (``/run/netns/X``, ``/proc/PID/ns/net``)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def process_alive(pid: int) -> bool:
    """Running and not a zombie (an orphan may wait a moment for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def process_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def pids_in_namespaces(keys: set[NsKey]) -> list[int]:
    """Live processes whose network or mount namespace is one of *keys* (never ourselves)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        if (ns_key(entry / "ns/net") in keys or ns_key(entry / "ns/mnt") in keys) and process_alive(
            pid
        ):
            found.append(pid)
    return sorted(found)


def _reap(pid: int) -> None:
    # A process we spawned ourselves stays a zombie until we wait for it.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive:
        for pid in alive:
            _reap(pid)
        alive = [pid for pid in alive if process_alive(pid)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return alive


def terminate(pids: Iterable[int], timeout: float) -> None:
    """SIGTERM *pids*, then SIGKILL whatever is still alive after *timeout* seconds."""
    pids = [pid for pid in pids if process_alive(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        pids = _wait_gone(pids, timeout if sig == signal.SIGTERM else 5.0)
        if not pids:
            return
    raise LabError(f"processes {pids} survived SIGKILL")


#: Run by the detached starter: record our pid (atomically), then become the service.
_PIDFILE_EXEC = (
    "import os, sys\n"
    "tmp = sys.argv[1] + '.tmp'\n"
    "with open(tmp, 'w') as f:\n"
    "    f.write(f'{os.getpid()}\\n')\n"
    "os.replace(tmp, sys.argv[1])\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def read_pidfile(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def spawn_detached(
    argv: Sequence[str], log_file: Path, pidfile: Path, timeout: float = 10.0
) -> int:
    """Start *argv* fully detached (own session, parent init: it outlives the caller and is
    never its zombie), output appended to *log_file*; returns its pid, also in *pidfile*."""
    pidfile.unlink(missing_ok=True)
    starter = ["setsid", "--fork", sys.executable, "-c", _PIDFILE_EXEC, str(pidfile), *argv]
    with open(log_file, "ab") as out:
        subprocess.run(
            starter, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            check=True, timeout=timeout,
        )
    deadline = time.monotonic() + timeout
    while (pid := read_pidfile(pidfile)) is None:
        if time.monotonic() >= deadline:
            raise LabError(f"{shlex.join(argv)}: no pid in {pidfile} after {timeout:g} s")
        time.sleep(0.02)
    return pid


def log_tail(log_file: Path, lines: int = 20) -> str:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return f"(no log at {log_file})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"({log_file} is empty)"
