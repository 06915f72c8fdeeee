"""``python -m pyvirt.virsh``: the same as the ``pyvirsh`` command."""

from pyvirt.virsh.main import run

run()
