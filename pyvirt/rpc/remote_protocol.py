"""The REMOTE program (0x20008086): procedures pyvirt speaks, described as data.

Numbers, layouts, ``@priority: high`` and read-only classification follow libvirt
(``src/remote/remote_protocol.x`` annotations; ``reference/libvirt-wire.md`` §10).  The
specs are written here by hand; nothing is copied from the ``.x`` file.

Field names are snake_case forms of libvirt's (``maxMem`` → ``max_mem``, ``callbackID`` →
``callback_id``); structs decode to dicts, ``remote_nonnull_domain`` to
:class:`~pyvirt.rpc.remote_types.NonnullDomain`, typed params to
:class:`~pyvirt.rpc.remote_types.TypedParam`.

Read-only rule: libvirt refuses, on a read-only connection, every public API that calls
``virCheckReadOnlyGoto`` — in practice every procedure whose ACL is not a pure
read/getattr/search (setters, lifecycle, migration *including* the migration getters such
as MIGRATE_GET_MAX_SPEED).  Flag-dependent refusals (GET_XML_DESC with SECURE) are the
dispatcher's business.  Procedures not listed here answer "unknown procedure: N".
"""

from __future__ import annotations

import enum
from typing import Any

from pyvirt.rpc.packet import REMOTE_PROGRAM
from pyvirt.rpc.protocol import ProcKind, ProcSpec, Program, StreamKind
from pyvirt.rpc.remote_types import (
    AUTH_SASL_DATA_MAX,
    AUTH_TYPE_LIST_MAX,
    CONNECT_IDENTITY_PARAMS_MAX,
    DOMAIN_LIST_MAX,
    DOMAIN_MESSAGES_MAX,
    SECURITY_DOI_MAX,
    SECURITY_LABEL_MAX,
    SECURITY_MODEL_MAX,
    UUID,
    Cookie,
    Domain,
    DomainList,
    JobStatsParams,
    MigrateParams,
    NonnullString,
    OptDomain,
    OptString,
    typed_params,
)
from pyvirt.rpc.types import (
    Array,
    CharArray,
    Enum,
    Field,
    FixedCharArray,
    Int,
    Struct,
    UChar,
    UHyper,
    UInt,
    UShort,
    Void,
    XDRType,
)


class RemoteProc(enum.IntEnum):
    """Numbers of the REMOTE procedures pyvirt describes (libvirt's numbering)."""

    CONNECT_OPEN = 1
    CONNECT_CLOSE = 2
    CONNECT_GET_TYPE = 3
    CONNECT_GET_VERSION = 4
    CONNECT_GET_MAX_VCPUS = 5
    NODE_GET_INFO = 6
    CONNECT_GET_CAPABILITIES = 7
    DOMAIN_CREATE = 9
    DOMAIN_CREATE_XML = 10
    DOMAIN_DEFINE_XML = 11
    DOMAIN_DESTROY = 12
    DOMAIN_GET_XML_DESC = 14
    DOMAIN_GET_AUTOSTART = 15
    DOMAIN_GET_INFO = 16
    DOMAIN_GET_OS_TYPE = 19
    CONNECT_LIST_DEFINED_DOMAINS = 21
    DOMAIN_LOOKUP_BY_ID = 22
    DOMAIN_LOOKUP_BY_NAME = 23
    DOMAIN_LOOKUP_BY_UUID = 24
    CONNECT_NUM_OF_DEFINED_DOMAINS = 25
    DOMAIN_REBOOT = 27
    DOMAIN_RESUME = 28
    DOMAIN_SET_AUTOSTART = 29
    DOMAIN_SHUTDOWN = 33
    DOMAIN_SUSPEND = 34
    DOMAIN_UNDEFINE = 35
    CONNECT_LIST_DOMAINS = 37
    CONNECT_NUM_OF_DOMAINS = 51
    CONNECT_GET_HOSTNAME = 59
    CONNECT_SUPPORTS_FEATURE = 60
    AUTH_LIST = 66
    AUTH_SASL_INIT = 67
    AUTH_SASL_START = 68
    AUTH_SASL_STEP = 69
    AUTH_POLKIT = 70
    DOMAIN_EVENT_LIFECYCLE = 107
    CONNECT_GET_URI = 110
    DOMAIN_GET_SECURITY_LABEL = 121
    NODE_GET_SECURITY_MODEL = 122
    CONNECT_IS_SECURE = 149
    DOMAIN_IS_ACTIVE = 150
    DOMAIN_IS_PERSISTENT = 151
    CONNECT_GET_LIB_VERSION = 157
    DOMAIN_GET_JOB_INFO = 163
    DOMAIN_ABORT_JOB = 164
    DOMAIN_MIGRATE_SET_MAX_DOWNTIME = 166
    CONNECT_DOMAIN_EVENT_REGISTER_ANY = 167
    CONNECT_DOMAIN_EVENT_DEREGISTER_ANY = 168
    DOMAIN_HAS_MANAGED_SAVE_IMAGE = 183
    DOMAIN_SNAPSHOT_NUM = 187
    DOMAIN_CREATE_WITH_FLAGS = 196
    DOMAIN_MIGRATE_SET_MAX_SPEED = 207
    DOMAIN_MIGRATE_PERFORM3 = 216
    DOMAIN_GET_STATE = 212
    DOMAIN_GET_CONTROL_INFO = 229
    DOMAIN_UNDEFINE_FLAGS = 231
    DOMAIN_DESTROY_FLAGS = 234
    DOMAIN_MIGRATE_GET_MAX_SPEED = 242
    DOMAIN_SHUTDOWN_FLAGS = 258
    CONNECT_LIST_ALL_DOMAINS = 273
    DOMAIN_GET_JOB_STATS = 298
    DOMAIN_MIGRATE_GET_COMPRESSION_CACHE = 299
    DOMAIN_MIGRATE_SET_COMPRESSION_CACHE = 300
    DOMAIN_MIGRATE_BEGIN3_PARAMS = 302
    DOMAIN_MIGRATE_PREPARE3_PARAMS = 303
    DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS = 304
    DOMAIN_MIGRATE_PERFORM3_PARAMS = 305
    DOMAIN_MIGRATE_FINISH3_PARAMS = 306
    DOMAIN_MIGRATE_CONFIRM3_PARAMS = 307
    CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY = 316
    CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY = 317
    DOMAIN_EVENT_CALLBACK_LIFECYCLE = 318
    DOMAIN_DEFINE_XML_FLAGS = 350
    DOMAIN_EVENT_CALLBACK_MIGRATION_ITERATION = 359
    CONNECT_REGISTER_CLOSE_CALLBACK = 360
    CONNECT_UNREGISTER_CLOSE_CALLBACK = 361
    CONNECT_EVENT_CONNECTION_CLOSED = 362
    DOMAIN_EVENT_CALLBACK_JOB_COMPLETED = 363
    DOMAIN_MIGRATE_START_POST_COPY = 364
    DOMAIN_MIGRATE_GET_MAX_DOWNTIME = 387
    CONNECT_SET_IDENTITY = 419
    DOMAIN_GET_MESSAGES = 426
    DOMAIN_ABORT_JOB_FLAGS = 442


RP = RemoteProc


AuthType = Enum("remote_auth_type", {"NONE": 0, "SASL": 1, "POLKIT": 2})


def _struct(name: str, *fields: Field) -> XDRType[Any]:
    return Struct(f"remote_{name}", fields)


_DOM: Field = ("dom", Domain)
_FLAGS: Field = ("flags", UInt)

DomArgs = _struct("domain_args", _DOM)
DomFlagsArgs = _struct("domain_flags_args", _DOM, _FLAGS)
DomRet = _struct("domain_ret", _DOM)


def _ret1(name: str, field: str, kind: XDRType[Any]) -> XDRType[Any]:
    return _struct(f"{name}_ret", (field, kind))


# -- table helpers ---------------------------------------------------------------------------
def _p(
    proc: RemoteProc,
    args: XDRType[Any] = Void,
    ret: XDRType[Any] = Void,
    *,
    api: str,
    ro: bool = False,
    prio: bool = False,
    stream: StreamKind | None = None,
) -> ProcSpec:
    return ProcSpec(
        number=int(proc),
        name=proc.name,
        args_type=args,
        ret_type=ret,
        readonly=ro,
        priority=prio,
        stream=stream,
        api=api,
        needs_auth=not proc.name.startswith("AUTH_"),
    )


def _msg(proc: RemoteProc, body: XDRType[Any]) -> ProcSpec:
    # events: server → client only; "readonly" so a read-only client may receive them
    return ProcSpec(
        int(proc), proc.name, body, Void, readonly=True, kind=ProcKind.MESSAGE, api=proc.name
    )


# -- connection ------------------------------------------------------------------------------
_SASL_DATA: Field = ("data", CharArray(AUTH_SASL_DATA_MAX))
_SASL_RET = _struct("auth_sasl_step_ret", ("complete", Int), ("nil", Int), _SASL_DATA)

_CONNECTION = [
    _p(RP.CONNECT_OPEN, _struct("connect_open_args", ("name", OptString), _FLAGS),
       api="virConnectOpen", ro=True, prio=True),
    _p(RP.CONNECT_CLOSE, api="virConnectClose", ro=True, prio=True),
    _p(RP.CONNECT_GET_TYPE, ret=_ret1("connect_get_type", "type", NonnullString),
       api="virConnectGetType", ro=True, prio=True),
    _p(RP.CONNECT_GET_VERSION, ret=_ret1("connect_get_version", "hv_ver", UHyper),
       api="virConnectGetVersion", ro=True, prio=True),
    _p(RP.CONNECT_GET_MAX_VCPUS, _struct("connect_get_max_vcpus_args", ("type", OptString)),
       _ret1("connect_get_max_vcpus", "max_vcpus", Int),
       api="virConnectGetMaxVcpus", ro=True, prio=True),
    _p(RP.NODE_GET_INFO,
       ret=_struct("node_get_info_ret", ("model", FixedCharArray(32)), ("memory", UHyper),
                   *[(f, Int) for f in ("cpus", "mhz", "nodes", "sockets", "cores", "threads")]),
       api="virNodeGetInfo", ro=True, prio=True),
    _p(RP.CONNECT_GET_CAPABILITIES,
       ret=_ret1("connect_get_capabilities", "capabilities", NonnullString),
       api="virConnectGetCapabilities", ro=True),
    _p(RP.CONNECT_GET_HOSTNAME, ret=_ret1("connect_get_hostname", "hostname", NonnullString),
       api="virConnectGetHostname", ro=True, prio=True),
    _p(RP.CONNECT_SUPPORTS_FEATURE, _struct("connect_supports_feature_args", ("feature", Int)),
       _ret1("connect_supports_feature", "supported", Int),
       api="virConnectSupportsFeature", ro=True, prio=True),
    _p(RP.AUTH_LIST, ret=_ret1("auth_list", "types", Array(AuthType, AUTH_TYPE_LIST_MAX)),
       api="virConnectOpenAuth", ro=True, prio=True),
    _p(RP.AUTH_SASL_INIT, ret=_ret1("auth_sasl_init", "mechlist", NonnullString),
       api="virConnectOpenAuth", ro=True, prio=True),
    _p(RP.AUTH_SASL_START,
       _struct("auth_sasl_start_args", ("mech", NonnullString), ("nil", Int), _SASL_DATA),
       _SASL_RET, api="virConnectOpenAuth", ro=True, prio=True),
    _p(RP.AUTH_SASL_STEP, _struct("auth_sasl_step_args", ("nil", Int), _SASL_DATA),
       _SASL_RET, api="virConnectOpenAuth", ro=True, prio=True),
    _p(RP.AUTH_POLKIT, ret=_ret1("auth_polkit", "complete", Int),
       api="virConnectOpenAuth", ro=True, prio=True),
    _p(RP.CONNECT_GET_URI, ret=_ret1("connect_get_uri", "uri", NonnullString),
       api="virConnectGetURI", ro=True, prio=True),
    _p(RP.NODE_GET_SECURITY_MODEL,
       ret=_struct("node_get_security_model_ret", ("model", CharArray(SECURITY_MODEL_MAX)),
                   ("doi", CharArray(SECURITY_DOI_MAX))),
       api="virNodeGetSecurityModel", ro=True, prio=True),
    _p(RP.CONNECT_IS_SECURE, ret=_ret1("connect_is_secure", "secure", Int),
       api="virConnectIsSecure", ro=True, prio=True),
    _p(RP.CONNECT_GET_LIB_VERSION, ret=_ret1("connect_get_lib_version", "lib_ver", UHyper),
       api="virConnectGetLibVersion", ro=True, prio=True),
    _p(RP.CONNECT_REGISTER_CLOSE_CALLBACK,
       api="virConnectRegisterCloseCallback", ro=True, prio=True),
    _p(RP.CONNECT_UNREGISTER_CLOSE_CALLBACK,
       api="virConnectUnregisterCloseCallback", ro=True, prio=True),
    _p(RP.CONNECT_SET_IDENTITY,
       _struct("connect_set_identity_args",
               ("params", typed_params(CONNECT_IDENTITY_PARAMS_MAX)), _FLAGS),
       api="virConnectSetIdentity"),
]  # fmt: skip

# -- listing and lookup ----------------------------------------------------------------------
_NUM = _ret1("connect_num_of_domains", "num", Int)

_LISTING = [
    _p(RP.CONNECT_LIST_ALL_DOMAINS,
       _struct("connect_list_all_domains_args", ("need_results", Int), _FLAGS),
       _struct("connect_list_all_domains_ret", ("domains", DomainList), ("ret", UInt)),
       api="virConnectListAllDomains", ro=True, prio=True),
    _p(RP.DOMAIN_LOOKUP_BY_ID, _struct("domain_lookup_by_id_args", ("id", Int)), DomRet,
       api="virDomainLookupByID", ro=True, prio=True),
    _p(RP.DOMAIN_LOOKUP_BY_NAME, _struct("domain_lookup_by_name_args", ("name", NonnullString)),
       DomRet, api="virDomainLookupByName", ro=True, prio=True),
    _p(RP.DOMAIN_LOOKUP_BY_UUID, _struct("domain_lookup_by_uuid_args", ("uuid", UUID)), DomRet,
       api="virDomainLookupByUUID", ro=True, prio=True),
    _p(RP.CONNECT_NUM_OF_DOMAINS, ret=_NUM,
       api="virConnectNumOfDomains", ro=True, prio=True),
    _p(RP.CONNECT_LIST_DOMAINS, _struct("connect_list_domains_args", ("maxids", Int)),
       _ret1("connect_list_domains", "ids", Array(Int, DOMAIN_LIST_MAX)),
       api="virConnectListDomains", ro=True, prio=True),
    _p(RP.CONNECT_NUM_OF_DEFINED_DOMAINS, ret=_NUM,
       api="virConnectNumOfDefinedDomains", ro=True, prio=True),
    _p(RP.CONNECT_LIST_DEFINED_DOMAINS,
       _struct("connect_list_defined_domains_args", ("maxnames", Int)),
       _ret1("connect_list_defined_domains", "names", Array(NonnullString, DOMAIN_LIST_MAX)),
       api="virConnectListDefinedDomains", ro=True, prio=True),
]  # fmt: skip

# -- domain information ----------------------------------------------------------------------
_INFO = [
    _p(RP.DOMAIN_GET_XML_DESC, DomFlagsArgs, _ret1("domain_get_xml_desc", "xml", NonnullString),
       api="virDomainGetXMLDesc", ro=True),
    _p(RP.DOMAIN_GET_AUTOSTART, DomArgs, _ret1("domain_get_autostart", "autostart", Int),
       api="virDomainGetAutostart", ro=True, prio=True),
    _p(RP.DOMAIN_GET_INFO, DomArgs,
       _struct("domain_get_info_ret", ("state", UChar), ("max_mem", UHyper), ("memory", UHyper),
               ("nr_virt_cpu", UShort), ("cpu_time", UHyper)),
       api="virDomainGetInfo", ro=True),
    _p(RP.DOMAIN_GET_OS_TYPE, DomArgs, _ret1("domain_get_os_type", "type", NonnullString),
       api="virDomainGetOSType", ro=True, prio=True),
    _p(RP.DOMAIN_GET_SECURITY_LABEL, DomArgs,
       _struct("domain_get_security_label_ret", ("label", CharArray(SECURITY_LABEL_MAX)),
               ("enforcing", Int)),
       api="virDomainGetSecurityLabel", ro=True, prio=True),
    _p(RP.DOMAIN_IS_ACTIVE, DomArgs, _ret1("domain_is_active", "active", Int),
       api="virDomainIsActive", ro=True, prio=True),
    _p(RP.DOMAIN_IS_PERSISTENT, DomArgs, _ret1("domain_is_persistent", "persistent", Int),
       api="virDomainIsPersistent", ro=True, prio=True),
    _p(RP.DOMAIN_HAS_MANAGED_SAVE_IMAGE, DomFlagsArgs,
       _ret1("domain_has_managed_save_image", "result", Int),
       api="virDomainHasManagedSaveImage", ro=True),
    _p(RP.DOMAIN_SNAPSHOT_NUM, DomFlagsArgs, _ret1("domain_snapshot_num", "num", Int),
       api="virDomainSnapshotNum", ro=True, prio=True),
    _p(RP.DOMAIN_GET_STATE, DomFlagsArgs,
       _struct("domain_get_state_ret", ("state", Int), ("reason", Int)),
       api="virDomainGetState", ro=True, prio=True),
    _p(RP.DOMAIN_GET_CONTROL_INFO, DomFlagsArgs,
       _struct("domain_get_control_info_ret", ("state", UInt), ("details", UInt),
               ("state_time", UHyper)),
       api="virDomainGetControlInfo", ro=True, prio=True),
    _p(RP.DOMAIN_GET_MESSAGES, DomFlagsArgs,
       _ret1("domain_get_messages", "msgs", Array(NonnullString, DOMAIN_MESSAGES_MAX)),
       api="virDomainGetMessages", ro=True),
]  # fmt: skip

# -- lifecycle -------------------------------------------------------------------------------
_XML_FLAGS = _struct("domain_xml_flags_args", ("xml", NonnullString), _FLAGS)

_LIFECYCLE = [
    _p(RP.DOMAIN_CREATE, DomArgs, api="virDomainCreate"),
    _p(RP.DOMAIN_CREATE_XML,
       _struct("domain_create_xml_args", ("xml_desc", NonnullString), _FLAGS), DomRet,
       api="virDomainCreateXML"),
    _p(RP.DOMAIN_DEFINE_XML, _struct("domain_define_xml_args", ("xml", NonnullString)), DomRet,
       api="virDomainDefineXML", prio=True),
    _p(RP.DOMAIN_DEFINE_XML_FLAGS, _XML_FLAGS, DomRet,
       api="virDomainDefineXMLFlags", prio=True),
    _p(RP.DOMAIN_DESTROY, DomArgs, api="virDomainDestroy", prio=True),
    _p(RP.DOMAIN_DESTROY_FLAGS, DomFlagsArgs, api="virDomainDestroyFlags", prio=True),
    _p(RP.DOMAIN_REBOOT, DomFlagsArgs, api="virDomainReboot"),
    _p(RP.DOMAIN_RESUME, DomArgs, api="virDomainResume"),
    _p(RP.DOMAIN_SET_AUTOSTART,
       _struct("domain_set_autostart_args", _DOM, ("autostart", Int)),
       api="virDomainSetAutostart", prio=True),
    _p(RP.DOMAIN_SHUTDOWN, DomArgs, api="virDomainShutdown"),
    _p(RP.DOMAIN_SHUTDOWN_FLAGS, DomFlagsArgs, api="virDomainShutdownFlags"),
    _p(RP.DOMAIN_SUSPEND, DomArgs, api="virDomainSuspend"),
    _p(RP.DOMAIN_UNDEFINE, DomArgs, api="virDomainUndefine", prio=True),
    _p(RP.DOMAIN_UNDEFINE_FLAGS, DomFlagsArgs, api="virDomainUndefineFlags", prio=True),
    _p(RP.DOMAIN_CREATE_WITH_FLAGS, DomFlagsArgs, DomRet, api="virDomainCreateWithFlags"),
]  # fmt: skip

# -- jobs and migration tuning ---------------------------------------------------------------
_JOB_INFO_FIELDS = (
    "time_elapsed", "time_remaining", "data_total", "data_processed", "data_remaining",
    "mem_total", "mem_processed", "mem_remaining", "file_total", "file_processed",
    "file_remaining",
)  # fmt: skip

_JOBS = [
    _p(RP.DOMAIN_GET_JOB_INFO, DomArgs,
       _struct("domain_get_job_info_ret", ("type", Int), *[(f, UHyper) for f in _JOB_INFO_FIELDS]),
       api="virDomainGetJobInfo", ro=True),
    _p(RP.DOMAIN_ABORT_JOB, DomArgs, api="virDomainAbortJob"),
    _p(RP.DOMAIN_ABORT_JOB_FLAGS, DomFlagsArgs, api="virDomainAbortJobFlags"),
    _p(RP.DOMAIN_MIGRATE_SET_MAX_DOWNTIME,
       _struct("domain_migrate_set_max_downtime_args", _DOM, ("downtime", UHyper), _FLAGS),
       api="virDomainMigrateSetMaxDowntime"),
    _p(RP.DOMAIN_MIGRATE_GET_MAX_DOWNTIME, DomFlagsArgs,
       _ret1("domain_migrate_get_max_downtime", "downtime", UHyper),
       api="virDomainMigrateGetMaxDowntime"),
    _p(RP.DOMAIN_MIGRATE_SET_MAX_SPEED,
       _struct("domain_migrate_set_max_speed_args", _DOM, ("bandwidth", UHyper), _FLAGS),
       api="virDomainMigrateSetMaxSpeed"),
    _p(RP.DOMAIN_MIGRATE_GET_MAX_SPEED, DomFlagsArgs,
       _ret1("domain_migrate_get_max_speed", "bandwidth", UHyper),
       api="virDomainMigrateGetMaxSpeed"),
    _p(RP.DOMAIN_GET_JOB_STATS, DomFlagsArgs,
       _struct("domain_get_job_stats_ret", ("type", Int), ("params", JobStatsParams)),
       api="virDomainGetJobStats", ro=True),
    _p(RP.DOMAIN_MIGRATE_GET_COMPRESSION_CACHE, DomFlagsArgs,
       _ret1("domain_migrate_get_compression_cache", "cache_size", UHyper),
       api="virDomainMigrateGetCompressionCache"),
    _p(RP.DOMAIN_MIGRATE_SET_COMPRESSION_CACHE,
       _struct("domain_migrate_set_compression_cache_args", _DOM, ("cache_size", UHyper), _FLAGS),
       api="virDomainMigrateSetCompressionCache"),
    _p(RP.DOMAIN_MIGRATE_START_POST_COPY, DomFlagsArgs, api="virDomainMigrateStartPostCopy"),
]  # fmt: skip

# -- migration v3 with parameters ------------------------------------------------------------
_PARAMS: Field = ("params", MigrateParams)
_COOKIE_IN: Field = ("cookie_in", Cookie)
_COOKIE_OUT: Field = ("cookie_out", Cookie)
_CANCELLED: Field = ("cancelled", Int)
_PREPARE_ARGS = _struct("domain_migrate_prepare3_params_args", _PARAMS, _COOKIE_IN, _FLAGS)

_MIGRATION = [
    # the pre-parameters Perform, still what libvirt's client sends for --direct
    _p(RP.DOMAIN_MIGRATE_PERFORM3,
       _struct("domain_migrate_perform3_args", _DOM, ("xmlin", OptString), _COOKIE_IN,
               ("dconnuri", OptString), ("uri", OptString), ("flags", UHyper),
               ("dname", OptString), ("resource", UHyper)),
       _struct("domain_migrate_perform3_ret", _COOKIE_OUT),
       api="virDomainMigratePerform3"),
    _p(RP.DOMAIN_MIGRATE_BEGIN3_PARAMS,
       _struct("domain_migrate_begin3_params_args", _DOM, _PARAMS, _FLAGS),
       _struct("domain_migrate_begin3_params_ret", _COOKIE_OUT, ("xml", NonnullString)),
       api="virDomainMigrateBegin3Params"),
    _p(RP.DOMAIN_MIGRATE_PREPARE3_PARAMS, _PREPARE_ARGS,
       _struct("domain_migrate_prepare3_params_ret", _COOKIE_OUT, ("uri_out", OptString)),
       api="virDomainMigratePrepare3Params"),
    _p(RP.DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS, _PREPARE_ARGS,
       _struct("domain_migrate_prepare_tunnel3_params_ret", _COOKIE_OUT),
       api="virDomainMigratePrepareTunnel3Params", stream=StreamKind.WRITE),
    _p(RP.DOMAIN_MIGRATE_PERFORM3_PARAMS,
       _struct("domain_migrate_perform3_params_args", _DOM, ("dconnuri", OptString), _PARAMS,
               _COOKIE_IN, _FLAGS),
       _struct("domain_migrate_perform3_params_ret", _COOKIE_OUT),
       api="virDomainMigratePerform3Params"),
    _p(RP.DOMAIN_MIGRATE_FINISH3_PARAMS,
       _struct("domain_migrate_finish3_params_args", _PARAMS, _COOKIE_IN, _FLAGS, _CANCELLED),
       _struct("domain_migrate_finish3_params_ret", _DOM, _COOKIE_OUT),
       api="virDomainMigrateFinish3Params"),
    _p(RP.DOMAIN_MIGRATE_CONFIRM3_PARAMS,
       _struct("domain_migrate_confirm3_params_args", _DOM, _PARAMS, _COOKIE_IN, _FLAGS,
               _CANCELLED),
       api="virDomainMigrateConfirm3Params"),
]  # fmt: skip

# -- events ----------------------------------------------------------------------------------
_CALLBACK_ID: Field = ("callback_id", Int)
_LIFECYCLE_MSG = _struct("domain_event_lifecycle_msg", _DOM, ("event", Int), ("detail", Int))

_EVENTS = [
    _p(RP.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
       _struct("connect_domain_event_callback_register_any_args", ("event_id", Int),
               ("dom", OptDomain)),
       _ret1("connect_domain_event_callback_register_any", "callback_id", Int),
       api="virConnectDomainEventRegisterAny", ro=True, prio=True),
    _p(RP.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY,
       _struct("connect_domain_event_callback_deregister_any_args", _CALLBACK_ID),
       api="virConnectDomainEventDeregisterAny", ro=True, prio=True),
    _p(RP.CONNECT_DOMAIN_EVENT_REGISTER_ANY,
       _struct("connect_domain_event_register_any_args", ("event_id", Int)),
       api="virConnectDomainEventRegisterAny", ro=True, prio=True),
    _p(RP.CONNECT_DOMAIN_EVENT_DEREGISTER_ANY,
       _struct("connect_domain_event_deregister_any_args", ("event_id", Int)),
       api="virConnectDomainEventDeregisterAny", ro=True, prio=True),
    _msg(RP.DOMAIN_EVENT_LIFECYCLE, _LIFECYCLE_MSG),
    _msg(RP.DOMAIN_EVENT_CALLBACK_LIFECYCLE,
         _struct("domain_event_callback_lifecycle_msg", _CALLBACK_ID, ("msg", _LIFECYCLE_MSG))),
    _msg(RP.DOMAIN_EVENT_CALLBACK_MIGRATION_ITERATION,
         _struct("domain_event_callback_migration_iteration_msg", _CALLBACK_ID, _DOM,
                 ("iteration", Int))),
    _msg(RP.CONNECT_EVENT_CONNECTION_CLOSED,
         _struct("connect_event_connection_closed_msg", ("reason", Int))),
    _msg(RP.DOMAIN_EVENT_CALLBACK_JOB_COMPLETED,
         _struct("domain_event_callback_job_completed_msg", _CALLBACK_ID, _DOM,
                 ("params", JobStatsParams))),
]  # fmt: skip

REMOTE = Program.build(
    "remote",
    REMOTE_PROGRAM,
    [*_CONNECTION, *_LISTING, *_INFO, *_LIFECYCLE, *_JOBS, *_MIGRATION, *_EVENTS],
)

