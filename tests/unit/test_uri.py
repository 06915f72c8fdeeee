"""Connection URI parsing."""

from __future__ import annotations

import pytest

from pyvirt.errors import ErrorCode, VirtError
from pyvirt.uri import parse_uri


def test_local_system() -> None:
    uri = parse_uri("qemu:///system")
    assert uri.transport == "unix" and uri.host is None
    assert uri.socket_path() == "/run/pyvirt/libvirt-sock"
    assert uri.socket_path(readonly=True) == "/run/pyvirt/libvirt-sock-ro"
    assert uri.open_name == "qemu:///system"


def test_unix_socket_param() -> None:
    uri = parse_uri("qemu+unix:///system?socket=/tmp/x/sock")
    assert uri.transport == "unix" and uri.socket_path() == "/tmp/x/sock"
    assert uri.open_name == "qemu:///system"


def test_tcp() -> None:
    uri = parse_uri("qemu+tcp://10.77.0.1/system")
    assert (uri.transport, uri.host, uri.port) == ("tcp", "10.77.0.1", None)
    assert parse_uri("qemu+tcp://h:16600/system").port == 16600
    assert uri.open_name == "qemu:///system"


def test_ssh_with_user_port_and_params() -> None:
    uri = parse_uri("qemu+ssh://root@host2:2222/system?keyfile=/k&no_verify=1&socket=/s")
    assert (uri.transport, uri.user, uri.host, uri.port) == ("ssh", "root", "host2", 2222)
    assert uri.params["keyfile"] == "/k" and uri.no_verify
    assert uri.socket_path() == "/s"
    assert uri.open_name == "qemu:///system"


def test_tls_uri_with_libvirts_parameters() -> None:
    uri = parse_uri("qemu+tls://h:1234/system?pkipath=/p&no_verify=1")
    assert (uri.transport, uri.host, uri.port) == ("tls", "h", 1234)
    assert uri.params["pkipath"] == "/p" and uri.no_verify
    assert uri.open_name == "qemu:///system"
    assert parse_uri("qemu://h/system").transport == "tls"  # libvirt's default with a host


def test_unknown_params_are_passed_on() -> None:
    assert parse_uri("qemu+tcp://h/system?foo=bar").open_name == "qemu:///system?foo=bar"


@pytest.mark.parametrize(("text", "needle"), [
    ("qemu+tls:///system", "needs a host"),
    ("xen:///system", "no connection driver"),
    ("qemu+tcp:///system", "needs a host"),
    ("qemu:///session", "only /system"),
    ("qemu+foo://h/system", "transport 'foo'"),
    ("not a uri", "unable to parse"),
    ("qemu+tcp://h:99999/system", "bad port"),
])
def test_refusals(text: str, needle: str) -> None:
    with pytest.raises(VirtError, match=needle) as info:
        parse_uri(text)
    assert info.value.code in (ErrorCode.INVALID_ARG, ErrorCode.NO_SUPPORT,
                               ErrorCode.NO_CONNECT)
