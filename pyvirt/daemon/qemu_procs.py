"""The QEMU program's procedures: raw QMP for ``virsh qemu-monitor-command``."""

from __future__ import annotations

import json
import logging
from typing import Any

from pyvirt.daemon.context import Call, Handler, check_flags
from pyvirt.errors import InvalidArgError
from pyvirt.qemu.monitor import MonitorError
from pyvirt.rpc.qemu_protocol import QemuProc

log = logging.getLogger(__name__)

#: VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP: pyvirt speaks QMP only
_HMP = 1


async def monitor_command(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], 0, "virDomainQemuMonitorCommand")
    obj = call.domain(args["dom"])
    obj.require_active()
    try:
        request = json.loads(args["cmd"])
        command = str(request["execute"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InvalidArgError(f"the monitor command must be a QMP JSON object: {exc}") from exc
    log.warning("[dom=%s] raw QMP from a client: %s", obj.name, command)
    try:
        result = await call.driver.runner.monitor(obj).execute(
            command, request.get("arguments"))
        reply: dict[str, Any] = {"return": result}
    except MonitorError as exc:
        reply = {"error": {"class": exc.error_class, "desc": exc.desc}}
    if "id" in request:
        reply["id"] = request["id"]
    return {"result": json.dumps(reply)}


HANDLERS: dict[int, Handler] = {QemuProc.MONITOR_COMMAND: monitor_command}
