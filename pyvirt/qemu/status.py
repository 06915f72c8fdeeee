"""The runtime status file of an active domain (``run_dir/qemu/NAME.status``).

Enough to find a running QEMU again after pyvirtd restarts, as libvirt's ``<domstatus>``::

    <domstatus state='running' reason='booted' pid='4242' persistent='yes'>
      <monitor path='/run/pyvirt/qemu/domain-1-g1/monitor.sock'/>
      <rundir path='/run/pyvirt/qemu/domain-1-g1'/>
      <domain type='qemu' id='1'> ... live XML ... </domain>
    </domstatus>
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

import defusedxml.ElementTree as SafeET

from pyvirt.conf.domain import DomainDef
from pyvirt.conf.domain_format import format_domain_xml
from pyvirt.conf.domain_parse import parse_domain_xml
from pyvirt.constants import DomainState
from pyvirt.errors import InternalError


@dataclass
class DomainStatus:
    state: DomainState
    reason: int
    pid: int
    persistent: bool
    monitor_path: str
    run_dir: str
    live: DomainDef


def format_status(status: DomainStatus) -> str:
    state_name = status.state.name.lower()
    domain_xml = format_domain_xml(status.live, live=True, secure=True)
    indented = "\n".join("  " + line if line else line for line in domain_xml.splitlines())
    return (
        f"<domstatus state='{state_name}' reason='{status.reason}' pid='{status.pid}'"
        f" persistent='{'yes' if status.persistent else 'no'}'>\n"
        f"  <monitor path={quoteattr(status.monitor_path)}/>\n"
        f"  <rundir path={quoteattr(status.run_dir)}/>\n"
        f"{indented}\n"
        "</domstatus>\n"
    )


def parse_status(text: str) -> DomainStatus:
    try:
        root = SafeET.fromstring(text)
        domain = root.find("domain")
        monitor = root.find("monitor")
        run_dir = root.find("rundir")
        if domain is None or monitor is None or run_dir is None:
            raise ValueError("missing <domain>, <monitor> or <rundir>")
        return DomainStatus(
            state=DomainState[root.attrib["state"].upper()],
            reason=int(root.attrib["reason"]),
            pid=int(root.attrib["pid"]),
            persistent=root.attrib.get("persistent") == "yes",
            monitor_path=monitor.attrib["path"],
            run_dir=run_dir.attrib["path"],
            live=parse_domain_xml(ET.tostring(domain, encoding="unicode")),
        )
    except (ET.ParseError, KeyError, ValueError) as exc:
        raise InternalError(f"corrupt domain status file: {exc}") from exc
