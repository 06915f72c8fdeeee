"""Remote procedures about domains: listing, lookup, information, lifecycle, jobs."""

from __future__ import annotations

from typing import Any

from pyvirt.constants import CreateFlags, DestroyFlags, ListFlags, UndefineFlags, XMLFlags
from pyvirt.daemon.context import Call, Handler, check_flags, handle_of
from pyvirt.errors import ErrorCode, VirtError
from pyvirt.rpc.remote_protocol import RemoteProc as RP

_ALL_LIST_FLAGS = sum(int(f) for f in ListFlags)
_XML_FLAGS = int(XMLFlags.SECURE | XMLFlags.INACTIVE | XMLFlags.UPDATE_CPU | XMLFlags.MIGRATABLE)
#: undefine flags that name metadata pyvirt never creates: removing "none of it" is right
_UNDEFINE_FLAGS = int(UndefineFlags.MANAGED_SAVE | UndefineFlags.SNAPSHOTS_METADATA
                      | UndefineFlags.NVRAM | UndefineFlags.KEEP_NVRAM
                      | UndefineFlags.CHECKPOINTS_METADATA | UndefineFlags.TPM
                      | UndefineFlags.KEEP_TPM)
SHUTDOWN_ACPI = 1
REBOOT_ACPI = 1


# -- listing and lookup ----------------------------------------------------------------------

async def list_all(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], _ALL_LIST_FLAGS, "virConnectListAllDomains")
    objs = call.driver.list_all(args["flags"])
    domains = [handle_of(obj) for obj in objs] if args["need_results"] else []
    return {"domains": domains, "ret": len(objs)}


async def lookup_by_id(call: Call, args: Any) -> Any:
    call.require_open()
    return {"dom": handle_of(call.driver.lookup_by_id(args["id"]))}


async def lookup_by_name(call: Call, args: Any) -> Any:
    call.require_open()
    return {"dom": handle_of(call.driver.lookup_by_name(args["name"]))}


async def lookup_by_uuid(call: Call, args: Any) -> Any:
    import uuid as uuidlib

    call.require_open()
    uuid = str(uuidlib.UUID(bytes=bytes(args["uuid"])))
    return {"dom": handle_of(call.driver.lookup_by_uuid(uuid))}


async def num_of_domains(call: Call, args: Any) -> Any:
    call.require_open()
    return {"num": len(call.driver.list_all(ListFlags.ACTIVE))}


async def list_domains(call: Call, args: Any) -> Any:
    call.require_open()
    ids = [obj.dom_id for obj in call.driver.list_all(ListFlags.ACTIVE)]
    return {"ids": ids[: max(args["maxids"], 0)]}


async def num_of_defined(call: Call, args: Any) -> Any:
    call.require_open()
    return {"num": len(call.driver.list_all(ListFlags.INACTIVE))}


async def list_defined(call: Call, args: Any) -> Any:
    call.require_open()
    names = [obj.name for obj in call.driver.list_all(ListFlags.INACTIVE)]
    return {"names": names[: max(args["maxnames"], 0)]}


# -- information -----------------------------------------------------------------------------

async def get_xml_desc(call: Call, args: Any) -> Any:
    call.require_open()
    flags = args["flags"]
    check_flags(flags, _XML_FLAGS, "virDomainGetXMLDesc")
    if flags & XMLFlags.SECURE and call.client.readonly:
        raise VirtError("operation forbidden: virDomainGetXMLDesc with secure flag",
                        code=ErrorCode.OPERATION_DENIED)
    return {"xml": call.driver.get_xml(call.domain(args["dom"]), flags)}


async def get_autostart(call: Call, args: Any) -> Any:
    call.require_open()
    return {"autostart": int(call.driver.get_autostart(call.domain(args["dom"])))}


async def get_info(call: Call, args: Any) -> Any:
    call.require_open()
    state, max_mem, memory, vcpus, cpu_time = call.driver.get_info(call.domain(args["dom"]))
    return {"state": state, "max_mem": max_mem, "memory": memory, "nr_virt_cpu": vcpus,
            "cpu_time": cpu_time}


async def get_os_type(call: Call, args: Any) -> Any:
    call.require_open()
    return {"type": call.domain(args["dom"]).current.os.type}


async def get_security_label(call: Call, args: Any) -> Any:
    call.require_open()
    call.domain(args["dom"])
    return {"label": b"", "enforcing": 0}


async def is_active(call: Call, args: Any) -> Any:
    call.require_open()
    return {"active": int(call.domain(args["dom"]).active)}


async def is_persistent(call: Call, args: Any) -> Any:
    call.require_open()
    return {"persistent": int(call.domain(args["dom"]).persistent)}


async def has_managed_save(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], 0, "virDomainHasManagedSaveImage")
    call.domain(args["dom"])
    return {"result": 0}


async def snapshot_num(call: Call, args: Any) -> Any:
    call.require_open()
    call.domain(args["dom"])
    return {"num": 0}


async def get_state(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], 0, "virDomainGetState")
    state, reason = call.driver.get_state(call.domain(args["dom"]))
    return {"state": state, "reason": reason}


async def get_control_info(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], 0, "virDomainGetControlInfo")
    obj = call.domain(args["dom"])
    # 0 = VIR_DOMAIN_CONTROL_OK, 1 = JOB (a state-changing job holds the domain)
    return {"state": 1 if obj.job else 0, "details": 0, "state_time": 0}


async def get_messages(call: Call, args: Any) -> Any:
    call.require_open()
    call.domain(args["dom"])
    return {"msgs": []}


# -- lifecycle -------------------------------------------------------------------------------

async def create(call: Call, args: Any) -> Any:
    call.require_open()
    await call.driver.create(call.domain(args["dom"]))
    return None


async def create_with_flags(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], CreateFlags.START_PAUSED, "virDomainCreateWithFlags")
    obj = call.domain(args["dom"])
    await call.driver.create(obj, args["flags"])
    return {"dom": handle_of(obj)}


async def create_xml(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], CreateFlags.START_PAUSED | CreateFlags.START_VALIDATE,
                "virDomainCreateXML")
    obj = await call.driver.create_xml(args["xml_desc"], args["flags"])
    return {"dom": handle_of(obj)}


async def define_xml(call: Call, args: Any) -> Any:
    call.require_open()
    return {"dom": handle_of(await call.driver.define_xml(args["xml"]))}


async def define_xml_flags(call: Call, args: Any) -> Any:
    call.require_open()
    # VALIDATE: pyvirt always validates strictly, so the flag changes nothing
    check_flags(args["flags"], 1, "virDomainDefineXMLFlags")
    return {"dom": handle_of(await call.driver.define_xml(args["xml"]))}


async def destroy(call: Call, args: Any) -> Any:
    call.require_open()
    await call.driver.destroy(call.domain(args["dom"]))
    return None


async def destroy_flags(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], DestroyFlags.GRACEFUL, "virDomainDestroyFlags")
    await call.driver.destroy(call.domain(args["dom"]), args["flags"])
    return None


async def reboot(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], REBOOT_ACPI, "virDomainReboot")
    await call.driver.reboot(call.domain(args["dom"]), args["flags"])
    return None


async def resume(call: Call, args: Any) -> Any:
    call.require_open()
    await call.driver.resume(call.domain(args["dom"]))
    return None


async def suspend(call: Call, args: Any) -> Any:
    call.require_open()
    await call.driver.suspend(call.domain(args["dom"]))
    return None


async def set_autostart(call: Call, args: Any) -> Any:
    call.require_open()
    await call.driver.set_autostart(call.domain(args["dom"]), bool(args["autostart"]))
    return None


async def shutdown(call: Call, args: Any) -> Any:
    call.require_open()
    await call.driver.shutdown(call.domain(args["dom"]))
    return None


async def shutdown_flags(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], SHUTDOWN_ACPI, "virDomainShutdownFlags")
    await call.driver.shutdown(call.domain(args["dom"]))
    return None


async def undefine(call: Call, args: Any) -> Any:
    call.require_open()
    await call.driver.undefine(call.domain(args["dom"]))
    return None


async def undefine_flags(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], _UNDEFINE_FLAGS, "virDomainUndefineFlags")
    await call.driver.undefine(call.domain(args["dom"]), args["flags"])
    return None


HANDLERS: dict[int, Handler] = {
    RP.CONNECT_LIST_ALL_DOMAINS: list_all,
    RP.DOMAIN_LOOKUP_BY_ID: lookup_by_id,
    RP.DOMAIN_LOOKUP_BY_NAME: lookup_by_name,
    RP.DOMAIN_LOOKUP_BY_UUID: lookup_by_uuid,
    RP.CONNECT_NUM_OF_DOMAINS: num_of_domains,
    RP.CONNECT_LIST_DOMAINS: list_domains,
    RP.CONNECT_NUM_OF_DEFINED_DOMAINS: num_of_defined,
    RP.CONNECT_LIST_DEFINED_DOMAINS: list_defined,
    RP.DOMAIN_GET_XML_DESC: get_xml_desc,
    RP.DOMAIN_GET_AUTOSTART: get_autostart,
    RP.DOMAIN_GET_INFO: get_info,
    RP.DOMAIN_GET_OS_TYPE: get_os_type,
    RP.DOMAIN_GET_SECURITY_LABEL: get_security_label,
    RP.DOMAIN_IS_ACTIVE: is_active,
    RP.DOMAIN_IS_PERSISTENT: is_persistent,
    RP.DOMAIN_HAS_MANAGED_SAVE_IMAGE: has_managed_save,
    RP.DOMAIN_SNAPSHOT_NUM: snapshot_num,
    RP.DOMAIN_GET_STATE: get_state,
    RP.DOMAIN_GET_CONTROL_INFO: get_control_info,
    RP.DOMAIN_GET_MESSAGES: get_messages,
    RP.DOMAIN_CREATE: create,
    RP.DOMAIN_CREATE_WITH_FLAGS: create_with_flags,
    RP.DOMAIN_CREATE_XML: create_xml,
    RP.DOMAIN_DEFINE_XML: define_xml,
    RP.DOMAIN_DEFINE_XML_FLAGS: define_xml_flags,
    RP.DOMAIN_DESTROY: destroy,
    RP.DOMAIN_DESTROY_FLAGS: destroy_flags,
    RP.DOMAIN_REBOOT: reboot,
    RP.DOMAIN_RESUME: resume,
    RP.DOMAIN_SUSPEND: suspend,
    RP.DOMAIN_SET_AUTOSTART: set_autostart,
    RP.DOMAIN_SHUTDOWN: shutdown,
    RP.DOMAIN_SHUTDOWN_FLAGS: shutdown_flags,
    RP.DOMAIN_UNDEFINE: undefine,
    RP.DOMAIN_UNDEFINE_FLAGS: undefine_flags,
}
