"""Helpers of the real-QEMU storage-migration tests between lab hosts.

Images live in each host's private ``/var/lib/pyvirt/images`` (seen from the root namespace
under the host's own directory) or on ``/var/lib/pyvirt/shared`` (the same everywhere). The
test guest writes a verifiable pattern to ``/dev/vda`` (``PVW DISK`` lines on its console).

``assert_nothing_left`` is the "a failed storage migration leaves nothing" oracle (O5): no
domain and no QEMU for the guest on the destination, no image it pre-created, no listening
migration/NBD port in its network namespace, the same definitions as before; on the source
no mirror job and no ``migration-*`` NBD client node left in the guest's QEMU.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyvirt.lab.guest import domain_xml
from pyvirt.lab.hosts import LAB_ROOT, LabHost, host_exec_argv
from tests.functional.guestlog import SerialLog
from tests.functional.labutil import serial
from tests.functional.migrationutil import beat, qemu_pids, qmp, qmp_socket, virsh

IMAGES = "/var/lib/pyvirt/images"
SHARED = "/var/lib/pyvirt/shared"
MIB = 1024 * 1024
DISK_LINE = re.compile(r"PVW DISK \d+ gen=(\d+) written=(\d+) verified=(\d+) corrupt=(\d+)")
#: qemu.conf's default migration_port_min/max (the NBD server's ports come from there too)
MIGRATION_PORTS = range(49152, 49216)


# -- images ------------------------------------------------------------------------------------
def on_host(host: LabHost, path: str) -> Path:
    """Where ``path`` (as the hosts see it) is from the root namespace."""
    if path.startswith(SHARED + "/"):
        return LAB_ROOT / "shared" / path[len(SHARED) + 1:]
    assert path.startswith(IMAGES + "/"), path
    return host.images_dir / path[len(IMAGES) + 1:]


def make_image(host: LabHost, path: str, fmt: str, size_mib: int, seed_mib: int = 8,
               backing: str | None = None) -> None:
    """An image with ``seed_mib`` MiB of data at 32 MiB (beyond the guest's 4 MiB)."""
    real = on_host(host, path)
    real.parent.mkdir(parents=True, exist_ok=True)
    argv = ["qemu-img", "create", "-q", "-f", fmt]
    if backing is not None:
        argv += ["-b", str(on_host(host, backing)), "-F", "raw"]
    subprocess.run([*argv, str(real), f"{size_mib}M"], check=True)
    if backing is not None:  # the overlay names its backing file as the hosts see it
        subprocess.run(["qemu-img", "rebase", "-u", "-f", fmt, "-b", backing, "-F", "raw",
                        str(real)], check=True)
        return
    if seed_mib:
        subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P 0x5a 32M {seed_mib}M",
                        str(real)], check=True, capture_output=True)


def exists_on(host: LabHost, path: str) -> bool:
    """``path`` exists as ``host`` sees it (inside its mount namespace: loop mounts too)."""
    return subprocess.run(host_exec_argv(host, ["test", "-e", path])).returncode == 0


def remove_images(hosts: list[LabHost], *paths: str) -> None:
    for host in hosts:
        for path in paths:
            on_host(host, path).unlink(missing_ok=True)


# -- the guest ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Disk:
    path: str
    fmt: str
    target: str = "vda"


def guest_xml(name: str, disks: list[Disk]) -> str:
    xml = domain_xml(name, memory_mib=128, dirty_mb=8, disk=disks[0].path,
                     disk_format=disks[0].fmt)
    xml = xml.replace("pvw.disk=/dev/vda", "pvw.disk=/dev/vda pvw.disk_mb=4 pvw.disk_rate=4")
    extra = "".join(
        f"    <disk type='file' device='disk'>\n"
        f"      <driver name='qemu' type='{d.fmt}' cache='none'/>\n"
        f"      <source file='{d.path}'/>\n      <target dev='{d.target}' bus='virtio'/>\n"
        f"    </disk>\n" for d in disks[1:])
    return xml.replace("    <serial type='pty'>", extra + "    <serial type='pty'>", 1)


def disk_progress(log: SerialLog) -> list[tuple[int, int, int, int]]:
    """(gen, written, verified, corrupt) of every ``PVW DISK`` line."""
    out = []
    for line in log.lines():
        m = DISK_LINE.search(line)
        if m is not None:
            gen, written, verified, corrupt = (int(g) for g in m.groups())
            out.append((gen, written, verified, corrupt))
    return out


def wait_disk(log: SerialLog, min_gen: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(gen >= min_gen for gen, *_ in disk_progress(log)):
        assert time.monotonic() < deadline, "\n".join(log.lines()[-10:])
        time.sleep(0.2)


def start(host: LabHost, name: str, tmp: Path, disks: list[Disk]) -> SerialLog:
    xml = tmp / f"{name}.xml"
    xml.write_text(guest_xml(name, disks))
    rc, _, err = virsh(host.uri, "create", str(xml))
    assert rc == 0, err
    log = serial(host, name)
    beat(log, above=2)
    wait_disk(log, min_gen=2)  # the pattern wrapped: verification of old blocks runs
    return log


def assert_no_corruption(*logs: SerialLog) -> None:
    for log in logs:
        assert log.corrupt_lines() == [], log.corrupt_lines()
        assert all(corrupt == 0 for *_, corrupt in disk_progress(log))


def assert_disk_verifies(log: SerialLog) -> None:
    """The guest keeps writing and re-verifying its disk (one more pattern generation)."""
    last = max(gen for gen, *_ in disk_progress(log))
    wait_disk(log, min_gen=last + 1)
    assert_no_corruption(log)


def when_copying(src: LabHost, dst: LabHost, name: str, timeout: float = 60) -> None:
    """Until the destination's QEMU runs and the source's job counts disk bytes."""
    deadline = time.monotonic() + timeout
    while not (qemu_pids(dst, name)
               and "File processed:" in virsh(src.uri, "domjobinfo", name)[1]):
        assert time.monotonic() < deadline, "the disk copy did not start"
        time.sleep(0.1)


# -- what a host holds -------------------------------------------------------------------------
def qmp_direct(host: LabHost, name: str, command: str) -> Any:
    """A QMP command straight to the guest's QEMU monitor socket (from its command line),
    for when ``host``'s daemon is dead (QEMU takes one monitor client at a time)."""
    pids = qemu_pids(host, name)
    assert len(pids) == 1, pids
    argv = Path(f"/proc/{pids[0]}/cmdline").read_bytes().decode().split("\0")
    chardev = next(a for a in argv if "id=charmonitor" in a)
    path = next(p[len("path="):] for p in chardev.split(",") if p.startswith("path="))
    return qmp_socket(path, command)


def block_leftovers(host: LabHost, name: str) -> list[str]:
    """Block jobs and ``migration-*`` nodes (the mirrors' NBD clients) in the guest's QEMU."""
    jobs = [f"job {j['device']}" for j in qmp(host, name, "query-block-jobs")]
    nodes = [f"node {n['node-name']}" for n in qmp(host, name, "query-named-block-nodes")
             if str(n.get("node-name", "")).startswith("migration-")]
    return jobs + nodes


def listening_ports(host: LabHost) -> set[int]:
    """The TCP ports something listens on inside ``host``'s network namespace."""
    out = subprocess.run(host_exec_argv(host, ["ss", "-ltnH"]), capture_output=True,
                         text=True, check=True).stdout
    ports = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            ports.add(int(fields[3].rpartition(":")[2]))
    return ports


def definitions(host: LabHost) -> list[str]:
    """The names of every domain ``host`` knows (running or defined), sorted."""
    rc, out, err = virsh(host.uri, "list", "--all", "--name")
    assert rc == 0, err
    return sorted(line for line in out.split() if line)


def assert_nothing_left(src: LabHost, dst: LabHost, name: str, created: tuple[str, ...] = (),
                        ports: tuple[int, ...] = (), dst_domains: list[str] | None = None,
                        timeout: float = 15) -> None:
    """O5 after a failed storage migration (see the module doc). ``created``: images the
    destination had to pre-create (as the hosts see them); ``ports``: NBD ports given by
    the user; ``dst_domains``: the destination's definitions before the migration."""
    deadline = time.monotonic() + timeout
    while True:  # a restarted daemon or a dying QEMU may need a moment to settle
        left = _destination_leftovers(dst, name, created, ports)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, left
    if dst_domains is not None:
        assert definitions(dst) == dst_domains
    assert block_leftovers(src, name) == []


def _destination_leftovers(dst: LabHost, name: str, created: tuple[str, ...],
                           ports: tuple[int, ...]) -> list[str]:
    left = []
    if virsh(dst.uri, "dominfo", name)[0] != 1:
        left.append("domain")
    if qemu_pids(dst, name):
        left.append("QEMU")
    left += [f"image {path}" for path in created if exists_on(dst, path)]
    listening = listening_ports(dst)
    left += [f"port {port}" for port in sorted(listening)
             if port in MIGRATION_PORTS or port in ports]
    return left
