"""Remote procedures about the connection and the host (open, features, versions, ...)."""

from __future__ import annotations

import logging
from typing import Any

from pyvirt.constants import ConnectFlags, DriverFeature
from pyvirt.daemon import hostinfo
from pyvirt.daemon.context import Call, Handler, check_flags
from pyvirt.daemon.events import ClientEvents
from pyvirt.errors import ErrorCode, ErrorDomain, VirtError
from pyvirt.rpc.remote_protocol import RemoteProc as RP

log = logging.getLogger(__name__)

#: the libvirt API level pyvirtd implements (reported as the daemon's library version)
LIB_VERSION = 9_000_000

#: the VIR_DRV_FEATURE_* pyvirtd supports (it answers 1); every other feature answers 0
SUPPORTED_FEATURES: frozenset[DriverFeature] = frozenset({
    DriverFeature.MIGRATION_P2P,
    DriverFeature.MIGRATION_DIRECT,  # pyvirt's extension: straight to a QEMU's migrate_uri
    DriverFeature.MIGRATION_V3,
    # definitions cannot change while migrating
    DriverFeature.MIGRATE_CHANGE_PROTECTION,
    DriverFeature.TYPED_PARAM_STRING,
    DriverFeature.PROGRAM_KEEPALIVE,
    DriverFeature.XML_MIGRATABLE,
    DriverFeature.MIGRATION_OFFLINE,
    DriverFeature.MIGRATION_PARAMS,
    DriverFeature.REMOTE_EVENT_CALLBACK,
    DriverFeature.REMOTE_CLOSE_CALLBACK,
})
_PRE_OPEN_FEATURES = frozenset({DriverFeature.PROGRAM_KEEPALIVE})
_SUPPORTED_URIS = frozenset({"", "qemu:///system"})


async def auth_list(call: Call, args: Any) -> Any:
    call.client.set_authenticated(True)
    return {"types": [0]}


async def connect_open(call: Call, args: Any) -> Any:
    check_flags(args["flags"], ConnectFlags.RO | ConnectFlags.NO_ALIASES, "virConnectOpen")
    name = args["name"] or ""
    if name.split("?", 1)[0] not in _SUPPORTED_URIS:
        raise VirtError(f"no connection driver available for {name}",
                        code=ErrorCode.NO_CONNECT, domain=ErrorDomain.REMOTE)
    if args["flags"] & ConnectFlags.RO:
        call.client.readonly = True
    call.state.opened = True
    call.client.mark_opened()
    return None


async def connect_close(call: Call, args: Any) -> Any:
    if call.state.events is not None:
        call.state.events.close()
        call.state.events = None
    call.state.opened = False
    return None


async def supports_feature(call: Call, args: Any) -> Any:
    feature = args["feature"]
    if feature not in _PRE_OPEN_FEATURES:
        call.require_open()
    supported = int(feature in SUPPORTED_FEATURES)
    if feature == DriverFeature.PROGRAM_KEEPALIVE:
        supported = int(call.client.enable_keepalive())
    return {"supported": supported}


async def get_type(call: Call, args: Any) -> Any:
    call.require_open()
    return {"type": "QEMU"}


async def get_version(call: Call, args: Any) -> Any:
    call.require_open()
    return {"hv_ver": call.driver.caps.version_number}


async def get_lib_version(call: Call, args: Any) -> Any:
    call.require_open()
    return {"lib_ver": LIB_VERSION}


async def get_hostname(call: Call, args: Any) -> Any:
    call.require_open()
    # libvirt's virGetHostname, looked up off the event loop (DNS may take seconds)
    return {"hostname": await call.driver.host_names.host_name()}


async def get_uri(call: Call, args: Any) -> Any:
    call.require_open()
    return {"uri": "qemu:///system"}


async def get_capabilities(call: Call, args: Any) -> Any:
    call.require_open()
    return {"capabilities": hostinfo.capabilities_xml(call.driver.caps, call.daemon.host_uuid)}


async def get_max_vcpus(call: Call, args: Any) -> Any:
    call.require_open()
    return {"max_vcpus": hostinfo.MAX_VCPUS}


async def node_get_info(call: Call, args: Any) -> Any:
    call.require_open()
    return hostinfo.node_info()


async def security_model(call: Call, args: Any) -> Any:
    # pyvirt applies no security driver (no SELinux/AppArmor labels): an empty model makes
    # virsh omit the security lines, as with libvirt's security_driver = "none".
    call.require_open()
    return {"model": b"", "doi": b""}


async def is_secure(call: Call, args: Any) -> Any:
    call.require_open()
    # Plain TCP without TLS or SASL is not secure; a local unix socket is.
    return {"secure": int(call.client.peer.startswith("unix"))}


async def close_callback(call: Call, args: Any) -> Any:
    call.require_open()
    call.state.close_callback = not call.state.close_callback
    return None


async def event_register(call: Call, args: Any) -> Any:
    call.require_open()
    dom = args["dom"]
    uuid = call.domain(dom).uuid if dom is not None else None
    return {"callback_id": _events(call).register(args["event_id"], uuid)}


async def event_deregister(call: Call, args: Any) -> Any:
    call.require_open()
    _events(call).deregister(args["callback_id"])
    return None


async def legacy_event_register(call: Call, args: Any) -> Any:
    call.require_open()
    _events(call).register(args["event_id"], None, legacy=True)
    return None


async def legacy_event_deregister(call: Call, args: Any) -> Any:
    call.require_open()
    _events(call).deregister_legacy(args["event_id"])
    return None


def _events(call: Call) -> ClientEvents:
    if call.state.events is None:
        call.state.events = ClientEvents(call.client, call.driver.events)
    return call.state.events


HANDLERS: dict[int, Handler] = {
    RP.AUTH_LIST: auth_list,
    RP.CONNECT_OPEN: connect_open,
    RP.CONNECT_CLOSE: connect_close,
    RP.CONNECT_SUPPORTS_FEATURE: supports_feature,
    RP.CONNECT_GET_TYPE: get_type,
    RP.CONNECT_GET_VERSION: get_version,
    RP.CONNECT_GET_LIB_VERSION: get_lib_version,
    RP.CONNECT_GET_HOSTNAME: get_hostname,
    RP.CONNECT_GET_URI: get_uri,
    RP.CONNECT_GET_CAPABILITIES: get_capabilities,
    RP.CONNECT_GET_MAX_VCPUS: get_max_vcpus,
    RP.NODE_GET_INFO: node_get_info,
    RP.NODE_GET_SECURITY_MODEL: security_model,
    RP.CONNECT_IS_SECURE: is_secure,
    RP.CONNECT_REGISTER_CLOSE_CALLBACK: close_callback,
    RP.CONNECT_UNREGISTER_CLOSE_CALLBACK: close_callback,
    RP.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY: event_register,
    RP.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY: event_deregister,
    RP.CONNECT_DOMAIN_EVENT_REGISTER_ANY: legacy_event_register,
    RP.CONNECT_DOMAIN_EVENT_DEREGISTER_ANY: legacy_event_deregister,
}
