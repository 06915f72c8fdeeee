"""Facts about this host for the remote program: node info and the capabilities XML."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from pyvirt.qemu.capabilities import QemuCaps

#: libvirt's QEMU driver limit for x86_64 i440fx guests
MAX_VCPUS = 255


def node_info() -> dict[str, Any]:
    """virNodeGetInfo: CPU model, memory (KiB), CPUs, MHz, NUMA nodes, topology."""
    cpus = os.cpu_count() or 1
    return {
        "model": platform.machine().encode()[:31].ljust(32, b"\0"),
        "memory": _mem_total_kib(),
        "cpus": cpus,
        "mhz": _cpu_mhz(),
        "nodes": 1,
        "sockets": 1,
        "cores": cpus,
        "threads": 1,
    }


def _mem_total_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def _cpu_mhz() -> int:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]))
    except OSError:
        pass
    return 0


def capabilities_xml(caps: QemuCaps, host_uuid: str) -> str:
    """The host capabilities document, in libvirt's layout (the parts pyvirt fills)."""
    machines = "".join(
        f"      <machine canonical='{escape(target)}' maxCpus='{MAX_VCPUS}'>"
        f"{escape(alias)}</machine>\n"
        for alias, target in sorted(caps.machine_aliases.items()))
    machines += "".join(f"      <machine maxCpus='{MAX_VCPUS}'>{escape(name)}</machine>\n"
                        for name in sorted(caps.machines) if name.startswith("pc"))
    kvm = "      <domain type='kvm'/>\n" if os.path.exists("/dev/kvm") else ""
    return (
        "<capabilities>\n\n"
        "  <host>\n"
        f"    <uuid>{host_uuid}</uuid>\n"
        "    <cpu>\n"
        f"      <arch>{platform.machine()}</arch>\n"
        "    </cpu>\n"
        "    <migration_features>\n"
        "      <live/>\n"
        "      <uri_transports>\n"
        "        <uri_transport>tcp</uri_transport>\n"
        "      </uri_transports>\n"
        "    </migration_features>\n"
        "  </host>\n\n"
        "  <guest>\n"
        "    <os_type>hvm</os_type>\n"
        "    <arch name='x86_64'>\n"
        "      <wordsize>64</wordsize>\n"
        f"      <emulator>{escape(caps.emulator)}</emulator>\n"
        f"{machines}"
        "      <domain type='qemu'/>\n"
        f"{kvm}"
        "    </arch>\n"
        "    <features>\n"
        "      <acpi default='on' toggle='yes'/>\n"
        "      <apic default='on' toggle='no'/>\n"
        "    </features>\n"
        "  </guest>\n\n"
        "</capabilities>\n"
    )
