"""The QEMU program (0x20008087): QMP passthrough, as ``virsh qemu-monitor-command``.

Only MONITOR_COMMAND is described; libvirt marks such domains "tainted" because raw QMP can
change state behind the driver's back, and pyvirt's daemon logs every use.
"""

from __future__ import annotations

import enum

from pyvirt.rpc.packet import QEMU_PROGRAM
from pyvirt.rpc.protocol import ProcSpec, Program
from pyvirt.rpc.remote_types import Domain, NonnullString
from pyvirt.rpc.types import Struct, UInt


class QemuProc(enum.IntEnum):
    MONITOR_COMMAND = 1


QEMU = Program.build("qemu", QEMU_PROGRAM, [
    ProcSpec(
        number=QemuProc.MONITOR_COMMAND, name="MONITOR_COMMAND",
        args_type=Struct("qemu_domain_monitor_command_args",
                         [("dom", Domain), ("cmd", NonnullString), ("flags", UInt)]),
        ret_type=Struct("qemu_domain_monitor_command_ret", [("result", NonnullString)]),
        readonly=False, priority=False, api="virDomainQemuMonitorCommand"),
])
