"""The runtime status file of an active domain (``run_dir/qemu/NAME.status``).

Enough to find a running QEMU again after pyvirtd restarts, as libvirt's ``<domstatus>``::

    <domstatus state='running' reason='booted' pid='4242' persistent='yes'>
      <monitor path='/run/pyvirt/qemu/domain-1-g1/monitor.sock'/>
      <rundir path='/run/pyvirt/qemu/domain-1-g1'/>
      <ownership>
        <file path='/var/lib/pyvirt/images/g1.qcow2' dev='2049' ino='1234'
              remembered='xattr' owner='+0:+0'/>
      </ownership>
      <domain type='qemu' id='1'> ... live XML ... </domain>
    </domstatus>

``<ownership>`` (pyvirt's): the files handed to QEMU's user that are to be given back at
stop, with their original owner (pyvirt.qemu.ownership), so a restarted daemon can.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

import defusedxml.ElementTree as SafeET

from pyvirt.conf.domain import DomainDef
from pyvirt.conf.domain_format import format_domain_xml
from pyvirt.conf.domain_parse import parse_domain_xml
from pyvirt.constants import DomainState
from pyvirt.errors import InternalError
from pyvirt.qemu.owner_xattrs import Owner
from pyvirt.qemu.ownership import OwnedFile, RememberedBy


@dataclass
class DomainStatus:
    state: DomainState
    reason: int
    pid: int
    persistent: bool
    monitor_path: str
    run_dir: str
    live: DomainDef
    #: files to give back at stop (dynamic_ownership)
    owned_files: list[OwnedFile] = field(default_factory=list)


def format_status(status: DomainStatus) -> str:
    state_name = status.state.name.lower()
    domain_xml = format_domain_xml(status.live, live=True, secure=True)
    indented = "\n".join("  " + line if line else line for line in domain_xml.splitlines())
    return (
        f"<domstatus state='{state_name}' reason='{status.reason}' pid='{status.pid}'"
        f" persistent='{'yes' if status.persistent else 'no'}'>\n"
        f"  <monitor path={quoteattr(status.monitor_path)}/>\n"
        f"  <rundir path={quoteattr(status.run_dir)}/>\n"
        f"{_format_owned(status.owned_files)}"
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
            owned_files=[_parse_owned(item) for item in root.iterfind("ownership/file")],
        )
    except (ET.ParseError, KeyError, ValueError) as exc:
        raise InternalError(f"corrupt domain status file: {exc}") from exc


def _format_owned(owned: list[OwnedFile]) -> str:
    if not owned:
        return ""
    lines = [f"    <file path={quoteattr(item.path)} dev='{item.dev}' ino='{item.ino}'"
             f" remembered='{item.remembered.value}' owner='{item.original.label()}'/>\n"
             for item in owned]
    return "  <ownership>\n" + "".join(lines) + "  </ownership>\n"


def _parse_owned(item: ET.Element) -> OwnedFile:
    return OwnedFile(path=item.attrib["path"], dev=int(item.attrib["dev"]),
                     ino=int(item.attrib["ino"]),
                     remembered=RememberedBy(item.attrib["remembered"]),
                     original=Owner.parse(item.attrib["owner"]))
