"""pyvirtd driven by clients nobody here wrote: the stock virsh, virt-admin, python3-libvirt.

The daemon runs as a real process; QEMU is the fake one so that these protocol tests stay
fast (the real-QEMU lifecycle over the daemon is in test_daemon_qemu.py).
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.errors import ErrorCode
from pyvirt.rpc.client import RPCClient
from pyvirt.rpc.remote_protocol import REMOTE
from tests.functional.daemon_util import DaemonHandle, run, running_daemon

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonHandle]:
    with running_daemon(emulator="fake", conf={"min_workers": 3, "max_workers": 7,
                                               "prio_workers": 2, "max_clients": 50,
                                               "max_anonymous_clients": 9}) as handle:
        yield handle


def virsh(daemon: DaemonHandle, *args: str, uri: str | None = None) -> tuple[int, str, str]:
    proc = run(["virsh", "-c", uri or daemon.uri, *args])
    return proc.returncode, proc.stdout, proc.stderr


def test_virsh_full_lifecycle(daemon: DaemonHandle, tmp_path: Path) -> None:
    xml = tmp_path / "c1.xml"
    xml.write_text(DOMAIN_XML.format(name="c1"))
    assert virsh(daemon, "define", str(xml)) == (0, f"Domain 'c1' defined from {xml}\n\n", "")
    rc, out, _ = virsh(daemon, "list", "--all")
    assert rc == 0 and " -    c1     shut off" in out
    assert virsh(daemon, "start", "c1") == (0, "Domain 'c1' started\n\n", "")
    rc, out, _ = virsh(daemon, "list")
    assert rc == 0 and "c1     running" in out
    rc, out, _ = virsh(daemon, "dominfo", "c1")
    assert rc == 0 and "State:          running" in out and "Persistent:     yes" in out
    assert virsh(daemon, "domstate", "--reason", "c1")[1] == "running (booted)\n\n"
    assert virsh(daemon, "suspend", "c1")[1] == "Domain 'c1' suspended\n\n"
    assert virsh(daemon, "domstate", "--reason", "c1")[1] == "paused (user)\n\n"
    assert virsh(daemon, "resume", "c1")[1] == "Domain 'c1' resumed\n\n"
    rc, out, _ = virsh(daemon, "dumpxml", "c1")
    assert rc == 0 and "<name>c1</name>" in out and "id='" in out
    assert virsh(daemon, "destroy", "c1")[1] == "Domain 'c1' destroyed\n\n"
    assert virsh(daemon, "domstate", "--reason", "c1")[1] == "shut off (destroyed)\n\n"
    assert virsh(daemon, "undefine", "c1")[1] == "Domain 'c1' has been undefined\n\n"
    rc, _, err = virsh(daemon, "dominfo", "c1")
    assert rc == 1 and "failed to get domain 'c1'" in err


def test_virsh_errors(daemon: DaemonHandle, tmp_path: Path) -> None:
    xml = tmp_path / "bad.xml"
    xml.write_text("<domain type='qemu'><name>x</name><hostdev/></domain>")
    rc, _, err = virsh(daemon, "define", str(xml))
    assert rc == 1 and "error:" in err
    rc, _, err = virsh(daemon, "destroy", "nosuch")
    assert rc == 1 and "failed to get domain 'nosuch'" in err


def test_virsh_hostname_version_capabilities(daemon: DaemonHandle) -> None:
    rc, out, _ = virsh(daemon, "version")
    assert rc == 0 and "Running hypervisor: QEMU 10.0.2" in out
    rc, out, _ = virsh(daemon, "capabilities")
    assert rc == 0 and "<uuid>8b3f2e94-7c1d-4a5e-9f60-2d4c8a1b3e77</uuid>" in out
    rc, out, _ = virsh(daemon, "uri")
    assert rc == 0 and out.startswith("qemu+unix:///system")
    assert virsh(daemon, "hostname")[0] == 0


def test_readonly_socket_lists_but_refuses_writes(daemon: DaemonHandle, tmp_path: Path) -> None:
    xml = tmp_path / "r1.xml"
    xml.write_text(DOMAIN_XML.format(name="r1"))
    rc, out, _ = virsh(daemon, "list", "--all", uri=daemon.ro_uri)
    assert rc == 0 and "Id   Name" in out
    rc, _, err = virsh(daemon, "define", str(xml), uri=daemon.ro_uri)
    assert rc == 1 and "read only access prevents virDomainDefineXML" in err


async def test_readonly_socket_refuses_every_write_procedure(daemon: DaemonHandle) -> None:
    # Generated from the procedure table: every procedure not marked read-only is refused
    # with OPERATION_DENIED before its arguments are even decoded.
    client = await RPCClient.connect_unix(str(daemon.ro_sock))
    try:
        await client.call(REMOTE, 66, None)
        await client.call(REMOTE, 1, {"name": "qemu:///system", "flags": 0})
        writes = [spec for spec in REMOTE.procs.values()
                  if not spec.readonly and not spec.is_message]
        assert len(writes) > 30
        for spec in writes:
            with pytest.raises(Exception) as info:
                await client.call_raw(REMOTE.number, REMOTE.version, spec.number, b"")
            assert getattr(info.value, "code", None) == ErrorCode.OPERATION_DENIED, spec.name
    finally:
        await client.close()


def test_python_libvirt(daemon: DaemonHandle, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import libvirt
        c = libvirt.open({daemon.uri!r})
        d = c.defineXML({DOMAIN_XML.format(name="py1")!r})
        d.create()
        info = d.info()
        assert info[0] == libvirt.VIR_DOMAIN_RUNNING and info[1] == 65536 and info[3] == 1
        assert d.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED]
        assert "<name>py1</name>" in d.XMLDesc(0)
        assert [x.name() for x in c.listAllDomains()] == ["py1"]
        assert d.isActive() and d.isPersistent() and d.ID() > 0
        d.destroy()
        assert d.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        d.undefine()
        try:
            c.lookupByName("nosuch")
        except libvirt.libvirtError as e:
            assert e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN, e.get_error_code()
            assert e.get_error_domain() == libvirt.VIR_FROM_QEMU
            print("OK", e.get_error_message())
        """)
    proc = run(["/usr/bin/python3", "-c", script])
    assert proc.returncode == 0, proc.stderr
    assert "OK Domain not found: no domain with matching name 'nosuch'" in proc.stdout


def test_virt_admin_shows_configured_controls(daemon: DaemonHandle) -> None:
    proc = run(["virt-admin", "-c", daemon.admin_uri, "srv-threadpool-info", "libvirtd"])
    assert proc.returncode == 0, proc.stderr
    values = dict(line.replace(" ", "").split(":") for line in proc.stdout.strip().splitlines())
    assert values["minWorkers"] == "3" and values["maxWorkers"] == "7"
    assert values["prioWorkers"] == "2"
    proc = run(["virt-admin", "-c", daemon.admin_uri, "srv-clients-info", "libvirtd"])
    values = dict(line.replace(" ", "").split(":") for line in proc.stdout.strip().splitlines())
    assert values["nclients_max"] == "50" and values["nclients_unauth_max"] == "9"
    proc = run(["virt-admin", "-c", daemon.admin_uri, "srv-list"])
    assert "libvirtd" in proc.stdout and "admin" in proc.stdout


def test_unknown_procedure_answer(daemon: DaemonHandle) -> None:
    async def go() -> None:
        client = await RPCClient.connect_unix(str(daemon.sock))
        try:
            with pytest.raises(Exception) as info:
                await client.call_raw(REMOTE.number, REMOTE.version, 9999, b"")
            assert "unknown procedure: 9999" in str(info.value)
        finally:
            await client.close()

    asyncio.run(go())
