"""pyvirsh starts light: its first RPC must come within 100 ms of starting.

Not a timing test (timings are noise on a loaded machine): it checks what gets imported.
The entry module must not pull in asyncio, XML or the command handlers, and running one
command imports only that command's handler module.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("asyncio", "xml", "dataclasses", "pyvirt.client.", "pyvirt.rpc", "pyvirt.qemu",
         "pyvirt.conf", "pyvirt.virsh.commands_", "pyvirt.virsh.migrate")  # fmt: skip
#: ``import pyvirt`` brings these on purpose (libvirtError and the VIR_* names); both light
LIGHT_CLIENT = ("pyvirt.client.error", "pyvirt.client.names")

FAKE = """
class Conn:
    def getURI(self):
        return "test:///default"
    def close(self):
        return 0
"""


def modules_after(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return set(proc.stdout.split())


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(HEAVY) and m not in LIGHT_CLIENT)


def test_importing_the_entry_point_is_light() -> None:
    assert heavy(modules_after("import pyvirt.virsh.main")) == []


def test_one_command_imports_only_its_handler() -> None:
    code = FAKE + (
        "import io\nfrom pyvirt.virsh.main import main\n"
        "assert main(['pyvirsh', '-c', 'test:///default', 'uri'], lambda uri, ro: Conn(),"
        " stdout=io.StringIO()) == 0")
    modules = modules_after(code)
    assert "pyvirt.virsh.commands_host" in modules
    assert heavy(modules) == ["pyvirt.virsh.commands_host"]
