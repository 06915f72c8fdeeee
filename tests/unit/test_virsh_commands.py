"""Every pyvirsh command against the in-memory fake: output, calls made, errors, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvirt.client.error import libvirtError
from pyvirt.constants import DomainState, ListFlags
from pyvirt.errors import ErrorCode, ErrorDomain
from tests.fakes.fake_client import (
    DomainRecord,
    FakeHost,
    Result,
    default_host,
    error,
    run_pyvirsh,
)

URI = "test:///default"


def run(line: str, host: FakeHost | None = None, *flags: str) -> Result:
    return run_pyvirsh([*flags, "-c", URI, line], host)


@pytest.fixture
def host() -> FakeHost:
    host = default_host()
    host.add(DomainRecord("zeta", "22222222-2222-2222-2222-222222222222"))
    host.add(DomainRecord("Alpha", "33333333-3333-3333-3333-333333333333"))
    host.add(DomainRecord("web", "44444444-4444-4444-4444-444444444444"), running=True)
    return host


def web(host: FakeHost) -> DomainRecord:
    return next(record for record in host.domains if record.name == "web")


@pytest.fixture
def guest_xml(tmp_path: Path) -> str:
    path = tmp_path / "g1.xml"
    path.write_text("<domain type='kvm'><name>g1</name>"
                    "<uuid>55555555-5555-5555-5555-555555555555</uuid>"
                    "<memory>524288</memory><vcpu>2</vcpu></domain>")  # fmt: skip
    return str(path)


# -- list --------------------------------------------------------------------------------------
def test_list_sorts_running_by_id_then_inactive_by_name(host: FakeHost) -> None:
    assert run("list --all", host).out == (
        " Id   Name    State\n" + "-" * 24 + "\n" " 1    test    running\n"
        " 2    web     running\n" " -    Alpha   shut off\n" " -    zeta    shut off\n\n")


def test_list_flags_reach_the_client(host: FakeHost) -> None:
    for line, flags in [("list", ListFlags.ACTIVE), ("list --all", 3), ("list --inactive", 2),
                        ("list --state-shutoff --persistent", ListFlags.INACTIVE | 64 | 4),
                        ("list --all --autostart --no-autostart", 3 | 1024 | 2048),
                        ("list --state-running --state-paused --state-other", 1 | 16 | 32 | 128),
                        ("list --with-snapshot --without-checkpoint", 1 | 4096 | 32768)]:
        host.calls.clear()
        run(line, host)
        assert host.called("listAllDomains") == [(flags,)], line


def test_list_quiet_has_no_header_and_no_blank_line(host: FakeHost) -> None:
    assert run("list", host, "-q").out == " 1   test   running\n 2   web    running\n"


def test_list_title_and_managed_save(host: FakeHost) -> None:
    host.domains[1].title = "the zeta one"
    host.domains[1].managed_save = True
    out = run("list --all --title --managed-save", host).out
    assert " -    zeta    saved      the zeta one\n" in out
    assert out.startswith(" Id   Name    State      Title\n" + "-" * 39 + "\n")


def test_list_wide_characters_count_twice(host: FakeHost) -> None:
    host.add(DomainRecord("日本", "66666666-6666-6666-6666-666666666666"))
    out = run("list --inactive", host).out
    assert " -    日本    shut off\n" in out and " Id   Name    State\n" in out


def test_list_plain_fields(host: FakeHost) -> None:
    assert run("list --all --id", host).out == "1\n2\n\n"
    assert run("list --all --id --name", host).out == "1 test\n2 web\n- Alpha\n- zeta\n\n"
    assert run("list --inactive --uuid", host).out == (
        "33333333-3333-3333-3333-333333333333\n22222222-2222-2222-2222-222222222222\n\n")


def test_list_failure(host: FakeHost) -> None:
    host.faults["listAllDomains"] = error(ErrorCode.RPC, "rpc failed", ErrorDomain.RPC)
    assert run("list", host) == Result(1, "\n", "error: Failed to list domains\n"
                                       "error: rpc failed\n")  # fmt: skip


# -- information -------------------------------------------------------------------------------
def test_dominfo_inactive_domain(host: FakeHost) -> None:
    assert run("dominfo zeta", host).out == (
        "Id:             -\nName:           zeta\n"
        "UUID:           22222222-2222-2222-2222-222222222222\nOS Type:        hvm\n"
        "State:          shut off\nCPU(s):         1\nMax memory:     1048576 KiB\n"
        "Used memory:    1048576 KiB\nPersistent:     yes\nAutostart:      disable\n"
        "Managed save:   no\n\n")


def test_dominfo_no_memory_limit_cpu_time_and_failure(host: FakeHost) -> None:
    host.domains[0].max_mem = 4294967295
    out = run("dominfo 1", host).out
    assert "Max memory:     no limit\n" in out and "CPU time:       1234.6s\n" in out
    host.faults["info"] = error(ErrorCode.INTERNAL_ERROR, "internal error: boom")
    result = run("dominfo test", host)
    assert result.status == 1 and "State:" not in result.out and "Managed save:" in result.out
    assert result.err == "error: internal error: boom\n"


def test_dominfo_security_model_when_the_client_has_one(host: FakeHost) -> None:
    conn_class = type(host.connect(URI))
    dom_class = type(host.connect(URI).lookupByName("test"))
    try:
        conn_class.getSecurityModel = lambda self: ["selinux", "0"]  # type: ignore[attr-defined]
        dom_class.securityLabel = lambda self: ["system_u:x", 1]  # type: ignore[attr-defined]
        out = run("dominfo test", host).out
    finally:
        del conn_class.getSecurityModel  # type: ignore[attr-defined]
        del dom_class.securityLabel  # type: ignore[attr-defined]
    assert out.endswith("Security model: selinux\nSecurity DOI:   0\n"
                        "Security label: system_u:x (enforcing)\n\n")  # fmt: skip


@pytest.mark.parametrize(("state", "reason", "text"), [
    (DomainState.PAUSED, 5, "paused (I/O error)"), (DomainState.SHUTOFF, 4, "shut off (migrated)"),
    (DomainState.RUNNING, 99, "running (unknown)"), (42, 0, "no state (unknown)"),
])
def test_domstate(host: FakeHost, state: int, reason: int, text: str) -> None:
    host.domains[0].state, host.domains[0].reason = state, reason  # type: ignore[assignment]
    assert run("domstate --reason test", host).out == text + "\n\n"


def test_dumpxml_flags(host: FakeHost) -> None:
    result = run("dumpxml --inactive --security-info --migratable --update-cpu test", host)
    assert result.out.startswith("<domain type='kvm'>\n  <name>test</name>")
    assert host.called("XMLDesc") == [(15,)]
    assert run("dumpxml test --xpath /x", host).err == (
        "error: option --xpath is not supported by pyvirsh\n")


def test_id_name_uuid_lookups(host: FakeHost) -> None:
    assert run("domid web; domid zeta; domname 2; domuuid web", host).out == (
        "2\n\n-\n\nweb\n\n44444444-4444-4444-4444-444444444444\n\n")
    assert run("domid 2", host).err == "error: failed to get domain '2'\n"
    assert run("domname web", host).err == "error: failed to get domain 'web'\n"


def test_lookup_order_id_uuid_name(host: FakeHost) -> None:
    host.add(DomainRecord("2", "77777777-7777-7777-7777-777777777777"))
    assert run("domuuid 2", host).out == "44444444-4444-4444-4444-444444444444\n\n"
    host.calls.clear()
    run("dominfo 22222222-2222-2222-2222-222222222222", host)
    assert [c[0] for c in host.calls[:2]] == ["open", "lookupByUUIDString"]


# -- lifecycle ---------------------------------------------------------------------------------
def test_define_start_and_messages(host: FakeHost, guest_xml: str) -> None:
    result = run(f"define {guest_xml}; start g1 --paused; domstate g1 --reason", host)
    assert result.out == (f"Domain 'g1' defined from {guest_xml}\n\n"
                          "Domain 'g1' started\n\npaused (user)\n\n")  # fmt: skip
    assert host.called("createWithFlags")[-1] == (1,)


def test_define_validate_falls_back_when_unsupported(host: FakeHost, guest_xml: str) -> None:
    host.unsupported["defineXMLFlags"] = "virDomainDefineXMLFlags"
    assert run(f"define --validate {guest_xml}", host).status == 0
    assert len(host.called("defineXML")) == 1


def test_create_flags_and_transient(host: FakeHost, guest_xml: str) -> None:
    assert run(f"create {guest_xml} --paused --autodestroy", host).out == (
        f"Domain 'g1' created from {guest_xml}\n\n")
    assert host.called("createXML")[0][1] == 3
    assert run("destroy g1; list --all --name", host).out == (
        "Domain 'g1' destroyed\n\ntest\nweb\nAlpha\nzeta\n\n")


def test_create_refuses_console_and_fds(guest_xml: str) -> None:
    assert run(f"create {guest_xml} --console").err == (
        "error: --console is not supported by pyvirsh\n")
    assert run(f"create {guest_xml} --pass-fds 3").err == (
        "error: --pass-fds is not supported by pyvirsh\n")


@pytest.mark.parametrize(("line", "method", "args", "message"), [
    ("destroy web --graceful", "destroyFlags", (1,), "Domain 'web' destroyed"),
    ("destroy 2 --graceful --remove-logs", "destroyFlags", (3,), "Domain '2' destroyed"),
    ("shutdown web --mode acpi,agent", "shutdownFlags", (3,), "Domain 'web' is being shutdown"),
    ("shutdown web", "shutdown", (), "Domain 'web' is being shutdown"),
    ("reboot web --mode paravirt", "reboot", (16,), "Domain 'web' is being rebooted"),
    ("suspend web", "suspend", (), "Domain 'web' suspended"),
    ("resume web", "resume", (), "Domain 'web' resumed"),
    ("autostart zeta", "setAutostart", (1,), "Domain 'zeta' marked as autostarted"),
    ("autostart --disable zeta", "setAutostart", (0,), "Domain 'zeta' unmarked as autostarted"),
    ("undefine zeta", "undefine", (), "Domain 'zeta' has been undefined"),
    ("undefine zeta --managed-save --nvram --snapshots-metadata", "undefineFlags", (7,),
     "Domain 'zeta' has been undefined"),
    ("start zeta --force-boot --bypass-cache", "createWithFlags", (12,), "Domain 'zeta' started"),
    ("start 22222222-2222-2222-2222-222222222222", "create", (),
     "Domain 'zeta' started"),
])
def test_lifecycle_calls(host: FakeHost, line: str, method: str, args: tuple[int, ...],
                         message: str) -> None:  # fmt: skip
    result = run(line, host)
    assert result == Result(0, message + "\n\n", "")
    assert host.called(method) == [args]


@pytest.mark.parametrize(("line", "errors"), [
    ("suspend zeta", ["Failed to suspend domain 'zeta'",
                      "Requested operation is not valid: domain is not running"]),
    ("destroy zeta", ["Failed to destroy domain 'zeta'",
                      "Requested operation is not valid: domain is not running"]),
    ("start web", ["Domain is already active"]),
    ("start 2", ["failed to get domain '2'"]),
    ("shutdown web --mode bogus", ["Unknown mode bogus value, expecting 'acpi', 'agent', "
                                   "'initctl', 'signal', or 'paravirt'"]),
    ("reboot web --mode ''", ["Failed to get option 'mode': Option argument is empty"]),
    ("undefine web --storage vda", ["Storage volume deletion is supported only on stopped "
                                    "domains"]),
    ("undefine zeta --remove-all-storage", ["Storage volume deletion is not supported by "
                                            "pyvirsh"]),
    ("define /nonexistent", ["Failed to open file '/nonexistent': No such file or directory"]),
    ("start zeta --console", ["--console is not supported by pyvirsh"]),
])
def test_lifecycle_errors(host: FakeHost, line: str, errors: list[str]) -> None:
    assert run(line, host) == Result(1, "\n", "".join(f"error: {e}\n" for e in errors))


def test_transient_domain_rules(host: FakeHost, guest_xml: str) -> None:
    run(f"create {guest_xml}", host)
    assert run("autostart g1", host).err == (
        "error: Failed to mark domain 'g1' as autostarted\nerror: Requested operation is not "
        "valid: cannot set autostart for transient domain\n")
    assert run("undefine web; list --transient --name", host).out == (
        "Domain 'web' has been undefined\n\nweb\ng1\n\n")


def test_read_only_connection(host: FakeHost) -> None:
    result = run("suspend web", host, "-r")
    assert result.err == ("error: Failed to suspend domain 'web'\nerror: operation forbidden: "
                          "read only access prevents virDomainSuspend\n")  # fmt: skip
    assert run("dominfo web", host, "-r").status == 0


def test_injected_client_error_is_reported_with_its_message(host: FakeHost) -> None:
    host.faults["resume"] = libvirtError("internal error: qemu said no",
                                         code=ErrorCode.INTERNAL_ERROR)
    assert run("resume web", host).err == (
        "error: Failed to resume domain 'web'\nerror: internal error: qemu said no\n")


# -- host commands -----------------------------------------------------------------------------
def test_version_hostname_uri_capabilities(host: FakeHost) -> None:
    from pyvirt.virsh.main import pyvirt_version

    ours = pyvirt_version()
    assert run("version --daemon", host).out == (
        f"Compiled against library: pyvirt {ours}\nUsing library: pyvirt {ours}\n"
        "Using API: QEMU 9.0.0\nRunning hypervisor: QEMU 10.0.2\n"
        "Running against daemon: 9.0.0\n\n")
    host.hv_version = 0
    host.faults["getLibVersion"] = error(ErrorCode.RPC, "rpc")
    result = run("version --daemon", host)
    assert "Cannot extract running QEMU hypervisor version\n" in result.out
    assert result.status == 0 and result.err == "error: failed to get the daemon version\n"
    host.hostname = "host7"
    assert run("hostname; uri; capabilities", host).out == (
        "host7\n\ntest:///default\n\n<capabilities>\n  <host/>\n</capabilities>\n\n\n")
    host.faults["getHostname"] = error(ErrorCode.RPC, "gone")
    assert run("hostname", host).err == "error: failed to get hostname\nerror: gone\n"


# -- jobs and migration tuning -----------------------------------------------------------------
MIGRATION_JOB = {
    "type": 2, "operation": 5, "time_elapsed": 5012, "time_elapsed_net": 5002,
    "data_total": 4 << 30, "data_processed": 1 << 30, "data_remaining": 3 << 30,
    "memory_total": 4 << 30, "memory_processed": 1 << 30, "memory_remaining": 3 << 30,
    "memory_bps": 117964800, "memory_dirty_rate": 1200, "memory_page_size": 4096,
    "memory_iteration": 2, "memory_postcopy_requests": 0, "memory_constant": 10,
    "memory_normal": 262144, "memory_normal_bytes": 1 << 30, "downtime": 300,
    "setup_time": 12, "compression_cache": 64 << 20, "compression_pages": 7,
    "auto_converge_throttle": 20,
}


def test_domjobinfo_layout(host: FakeHost) -> None:
    web(host).job = dict(MIGRATION_JOB)
    assert run("domjobinfo web", host).out == (
        "Job type:         Unbounded   \n"
        "Operation:        Outgoing migration\n"
        "Time elapsed:     5012         ms\n"
        "Time elapsed w/o network: 5002         ms\n"
        "Data processed:   1.000 GiB\n" "Data remaining:   3.000 GiB\n"
        "Data total:       4.000 GiB\n"
        "Memory processed: 1.000 GiB\n" "Memory remaining: 3.000 GiB\n"
        "Memory total:     4.000 GiB\n"
        "Memory bandwidth: 112.500 MiB/s\n"
        "Dirty rate:       1200         pages/s\n"
        "Page size:        4096         bytes\n"
        "Iteration:        2           \n"
        "Postcopy requests: 0           \n"
        "Constant pages:   10          \n"
        "Normal pages:     262144      \n"
        "Normal data:      1.000 GiB\n"
        "Expected downtime: 300          ms\n"
        "Setup time:       12           ms\n"
        "Compression cache: 64.000 MiB\n"
        "Compressed pages: 7            \n"
        "Auto converge throttle: 20           \n\n")


def test_domjobinfo_no_job_completed_and_raw(host: FakeHost) -> None:
    assert run("domjobinfo web", host).out == "Job type:         None        \n\n"
    web(host).completed_job = {"type": 3, "operation": 5, "time_elapsed": 7,
                                     "downtime": 40, "errmsg": "none"}  # fmt: skip
    assert run("domjobinfo web --completed", host).out == (
        "Job type:         Completed   \nOperation:        Outgoing migration\n"
        "Time elapsed:     7            ms\nTotal downtime:   40           ms\n"
        "Error message:    none\n\n")
    assert run("domjobinfo web --completed --keep-completed", host).status == 0
    assert host.called("jobStats")[-1] == (3,)
    assert run("domjobinfo web --rawstats", host).out == "Job type: 0\n\n\n"
    web(host).job = {"type": 4, "time_elapsed": 3, "x": 1.5, "y": True}
    assert run("domjobinfo web", host).out == "Job type:         Failed      \n\n"
    assert run("domjobinfo web --anystats", host).out == (
        "Job type:         Failed      \nTime elapsed:     3            ms\n\n")
    assert run("domjobinfo web --rawstats", host).out == (
        "Job type: 4\n\ntime_elapsed: 3\nx: 1.500000\ny: yes\n\n")


def test_domjobinfo_falls_back_to_job_info(host: FakeHost) -> None:
    host.unsupported["jobStats"] = "virDomainGetJobStats"
    web(host).job = {"type": 1, "time_elapsed": 9, "time_remaining": 4}
    assert run("domjobinfo web", host).out == (
        "Job type:         Bounded     \nTime elapsed:     9            ms\n"
        "Time remaining:   4            ms\n\n")
    assert run("domjobinfo web --completed", host).err == (
        "error: Optional flags or --rawstats are not supported by the daemon\nerror: this "
        "function is not supported by the connection driver: virDomainGetJobStats\n")


def test_job_abort(host: FakeHost) -> None:
    assert run("domjobabort web", host).err == (
        "error: Requested operation is not valid: no job is active on the domain\n")
    web(host).job = {"type": 2}
    assert run("domjobabort web --postcopy", host) == Result(0, "\n", "")
    assert host.called("abortJobFlags") == [(1,)]


def test_migration_tuning(host: FakeHost) -> None:
    result = run("migrate-setmaxdowntime web 150; migrate-getmaxdowntime web; "
                 "migrate-setspeed web 100; migrate-getspeed web; "
                 "migrate-setspeed web 20 --postcopy; migrate-getspeed web --postcopy; "
                 "migrate-compcache web --size 134217728; migrate-compcache web", host)
    assert result == Result(0, "\n150\n\n\n100\n\n\n20\n\nCompression cache: 128.000 MiB\n"
                            "Compression cache: 128.000 MiB\n", "")
    assert host.called("migrateSetMaxSpeed") == [(100, 0), (20, 1)]
    run("migrate-setspeed web -1", host)
    assert host.called("migrateSetMaxSpeed")[-1] == (2**64 - 1, 0)
    assert run("migrate-postcopy web", host).err == (
        "error: Requested operation is not valid: post-copy can only be started while outgoing "
        "migration is in progress\n")
    assert run("migrate-compcache web --size 1", host, "-q").out == "Compression cache: 1.000 B"


# -- connections and sessions ------------------------------------------------------------------
def test_explicit_uri_must_connect_before_anything_runs(host: FakeHost) -> None:
    host.unreachable.add("qemu:///system")
    result = run_pyvirsh(["-c", "qemu:///system", "help"], host)
    assert result == Result(1, "", "error: failed to connect to the hypervisor\n"
                            "error: Failed to connect socket to '/var/run/libvirt/libvirt-sock': "
                            "No such file or directory\n")  # fmt: skip


def test_default_uri_connects_lazily(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYVIRT_DEFAULT_URI", raising=False)
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+tcp://b/system")
    host.unreachable.add("qemu+tcp://b/system")
    assert run_pyvirsh(["help", "uri"], host).status == 0
    assert host.called("open") == []
    result = run_pyvirsh(["list; connect test:///default; uri"], host)
    assert result.out == "\n\ntest:///default\n\n" and result.status == 0
    assert result.err.count("error: failed to connect to the hypervisor\n") == 1


def test_lost_connection_is_reopened(host: FakeHost) -> None:
    host.faults["getHostname"] = error(ErrorCode.RPC, "connection lost", ErrorDomain.RPC)
    result = run("hostname; uri", host)
    assert result.err == ("error: failed to get hostname\nerror: connection lost\n"
                          "error: Reconnected to the hypervisor\n")  # fmt: skip
    assert result.out == "\ntest:///default\n\n" and len(host.called("open")) == 2


def test_connect_readonly_and_failure(host: FakeHost) -> None:
    host.unreachable.add("qemu+tcp://x/system")
    result = run("connect qemu+tcp://x/system; uri", host)
    assert result.out == "\ntest:///default\n\n"  # the next command reopens the old URI
    assert run("connect --readonly; suspend web", host).err.endswith(
        "read only access prevents virDomainSuspend\n")


def test_every_connection_is_closed(host: FakeHost) -> None:
    run("uri; connect; uri", host)
    assert all(conn.closed for conn in host.connections)


def test_timing(host: FakeHost) -> None:
    out = run("uri", host, "-t").out
    assert out.startswith("test:///default\n\n(Time: ") and out.endswith(" ms)\n\n")


def test_interactive_session(host: FakeHost) -> None:
    result = run_pyvirsh(["-c", URI], host, stdin="domid web\nconnect --readonly\n\nquit\nuri\n")
    assert result.out == (
        "Welcome to pyvirsh, the virtualization interactive terminal.\n\n"
        "Type:  'help' for help with commands\n       'quit' to quit\n\n"
        "virsh # domid web\n2\n\nvirsh # connect --readonly\n\nvirsh > \nvirsh > quit\n\n")
    assert result.status == 0


def test_exit_status_is_the_last_commands() -> None:
    assert run("domid nope; uri").status == 0
    assert run("uri; domid nope").status == 1
    assert run("help quit; quit; domid nope").status == 0
