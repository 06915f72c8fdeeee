"""Remote procedures of migration: the v3 phases with parameters, jobs and tuning."""

from __future__ import annotations

from typing import Any

from pyvirt.constants import AbortJobFlags, JobStatsFlags, MigrateMaxSpeedFlags
from pyvirt.daemon.context import Call, Handler, check_flags, handle_of
from pyvirt.errors import ErrorCode, InvalidArgError, OperationInvalidError, VirtError
from pyvirt.qemu.migration.params import MigrationRequest, Side, parse_request
from pyvirt.rpc.remote_protocol import RemoteProc as RP
from pyvirt.rpc.remote_types import TypedParam, TypedParamType


def request_of(args: Any, side: Side, api: str) -> MigrationRequest:
    """Flags and typed parameters, checked once at the edge (libvirt's rules)."""
    return parse_request(args["flags"], args["params"], side=side, api=api)


async def begin3(call: Call, args: Any) -> Any:
    call.require_open()
    obj = call.domain(args["dom"])
    request = request_of(args, Side.SOURCE, "qemuDomainMigrateBegin3Params")
    cookie, xml = await call.driver.migration.begin(obj, request, call.client.id)
    return {"cookie_out": cookie, "xml": xml}


async def prepare3(call: Call, args: Any) -> Any:
    call.require_open()
    request = request_of(args, Side.DESTINATION, "qemuDomainMigratePrepare3Params")
    cookie, uri = await call.driver.migration.prepare(call.client.id, request,
                                                      bytes(args["cookie_in"]))
    return {"cookie_out": cookie, "uri_out": uri}


async def prepare_tunnel3(call: Call, args: Any) -> Any:
    call.require_open()
    request = request_of(args, Side.DESTINATION, "qemuDomainMigratePrepareTunnel3Params")
    if not request.tunnelled:
        raise InvalidArgError("PREPARE_TUNNEL3 needs the VIR_MIGRATE_TUNNELLED flag")
    cookie, _ = await call.driver.migration.prepare(call.client.id, request,
                                                    bytes(args["cookie_in"]),
                                                    stream=call.client.stream())
    return {"cookie_out": cookie}


async def perform3(call: Call, args: Any) -> Any:
    call.require_open()
    obj = call.domain(args["dom"])
    cookie = await call.driver.migration.perform(obj, args["dconnuri"], args["flags"],
                                                 args["params"], bytes(args["cookie_in"]))
    return {"cookie_out": cookie}


async def perform3_legacy(call: Call, args: Any) -> Any:
    """MIGRATE_PERFORM3 (216): the old argument list, mapped onto typed parameters."""
    params = [TypedParam.of_string(name, args[key])
              for name, key in (("migrate_uri", "uri"), ("destination_xml", "xmlin"),
                                ("destination_name", "dname")) if args[key]]
    if args["resource"]:
        params.append(TypedParam.of_ullong("bandwidth", args["resource"]))
    return await perform3(call, {"dom": args["dom"], "dconnuri": args["dconnuri"],
                                 "params": params, "cookie_in": args["cookie_in"],
                                 "flags": args["flags"]})


async def finish3(call: Call, args: Any) -> Any:
    call.require_open()
    request = request_of(args, Side.DESTINATION, "qemuDomainMigrateFinish3Params")
    obj, cookie = await call.driver.migration.finish(request, bytes(args["cookie_in"]),
                                                     bool(args["cancelled"]))
    if obj is None:
        # libvirt's answer to a cancelled Finish: the client keeps Perform's own error
        raise VirtError("migration successfully aborted", code=ErrorCode.MIGRATE_FINISH_OK)
    return {"dom": handle_of(obj), "cookie_out": cookie}


async def confirm3(call: Call, args: Any) -> Any:
    call.require_open()
    obj = call.domain(args["dom"])
    request = request_of(args, Side.SOURCE, "qemuDomainMigrateConfirm3Params")
    await call.driver.migration.confirm(obj, request, bool(args["cancelled"]))
    return None


async def job_info(call: Call, args: Any) -> Any:
    call.require_open()
    return await call.driver.migration.job_info(call.domain(args["dom"]))


#: job statistics libvirt types as INT (virsh reads them with virTypedParamsGetInt and fails
#: on any other type); all the others are ULLONG
SIGNED_JOB_STATS = frozenset({"operation", "auto_converge_throttle"})


async def job_stats(call: Call, args: Any) -> Any:
    call.require_open()
    flags = args["flags"]
    check_flags(flags, JobStatsFlags.COMPLETED | JobStatsFlags.KEEP_COMPLETED,
                "virDomainGetJobStats")
    job_type, stats = await call.driver.migration.job_stats(
        call.domain(args["dom"]), bool(flags & JobStatsFlags.COMPLETED))
    params = [TypedParam(name, TypedParamType.INT if name in SIGNED_JOB_STATS
                         else TypedParamType.ULLONG, value) for name, value in stats.items()]
    return {"type": job_type, "params": params}


async def abort_job(call: Call, args: Any) -> Any:
    call.require_open()
    await call.driver.migration.abort(call.domain(args["dom"]))
    return None


async def abort_job_flags(call: Call, args: Any) -> Any:
    """virDomainAbortJobFlags: 0 aborts as DOMAIN_ABORT_JOB does; POSTCOPY interrupts an
    outgoing post-copy migration instead (it cannot be aborted: see pause_postcopy)."""
    call.require_open()
    flags = args["flags"]
    check_flags(flags, AbortJobFlags.POSTCOPY, "qemuDomainAbortJobFlags")
    obj = call.domain(args["dom"])
    if flags & AbortJobFlags.POSTCOPY:
        await call.driver.migration.pause_postcopy(obj)
    else:
        await call.driver.migration.abort(obj)
    return None


async def set_max_downtime(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], 0, "virDomainMigrateSetMaxDowntime")
    await call.driver.migration.set_max_downtime(call.domain(args["dom"]), args["downtime"])
    return None


async def get_max_downtime(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], 0, "virDomainMigrateGetMaxDowntime")
    return {"downtime": await call.driver.migration.get_max_downtime(call.domain(args["dom"]))}


async def set_max_speed(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], 0, "virDomainMigrateSetMaxSpeed")
    await call.driver.migration.set_max_speed(call.domain(args["dom"]), args["bandwidth"])
    return None


async def get_max_speed(call: Call, args: Any) -> Any:
    call.require_open()
    if args["flags"] & MigrateMaxSpeedFlags.POSTCOPY:
        raise OperationInvalidError("post-copy migration is not supported yet")
    check_flags(args["flags"], 0, "virDomainMigrateGetMaxSpeed")
    return {"bandwidth": call.driver.migration.get_max_speed(call.domain(args["dom"]))}


async def set_compression_cache(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], 0, "virDomainMigrateSetCompressionCache")
    await call.driver.migration.set_compression_cache(call.domain(args["dom"]),
                                                      args["cache_size"])
    return None


async def get_compression_cache(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], 0, "virDomainMigrateGetCompressionCache")
    size = await call.driver.migration.get_compression_cache(call.domain(args["dom"]))
    return {"cache_size": size}


async def start_postcopy(call: Call, args: Any) -> Any:
    call.require_open()
    check_flags(args["flags"], 0, "virDomainMigrateStartPostCopy")
    await call.driver.migration.start_postcopy(call.domain(args["dom"]))
    return None


HANDLERS: dict[int, Handler] = {
    RP.DOMAIN_MIGRATE_START_POST_COPY: start_postcopy,
    RP.DOMAIN_MIGRATE_BEGIN3_PARAMS: begin3,
    RP.DOMAIN_MIGRATE_PREPARE3_PARAMS: prepare3,
    RP.DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS: prepare_tunnel3,
    RP.DOMAIN_MIGRATE_PERFORM3_PARAMS: perform3,
    RP.DOMAIN_MIGRATE_PERFORM3: perform3_legacy,
    RP.DOMAIN_MIGRATE_FINISH3_PARAMS: finish3,
    RP.DOMAIN_MIGRATE_CONFIRM3_PARAMS: confirm3,
    RP.DOMAIN_GET_JOB_INFO: job_info,
    RP.DOMAIN_GET_JOB_STATS: job_stats,
    RP.DOMAIN_ABORT_JOB: abort_job,
    RP.DOMAIN_ABORT_JOB_FLAGS: abort_job_flags,
    RP.DOMAIN_MIGRATE_SET_MAX_DOWNTIME: set_max_downtime,
    RP.DOMAIN_MIGRATE_GET_MAX_DOWNTIME: get_max_downtime,
    RP.DOMAIN_MIGRATE_SET_MAX_SPEED: set_max_speed,
    RP.DOMAIN_MIGRATE_GET_MAX_SPEED: get_max_speed,
    RP.DOMAIN_MIGRATE_SET_COMPRESSION_CACHE: set_compression_cache,
    RP.DOMAIN_MIGRATE_GET_COMPRESSION_CACHE: get_compression_cache,
}
