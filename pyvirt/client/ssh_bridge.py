"""The remote end of ``qemu+ssh://``: join ssh's stdin/stdout to the daemon's unix socket.

libvirt runs ``nc -U SOCKET`` (or virt-ssh-helper) on the remote host; pyvirt does not
assume either is installed and sends this small stdlib-only script instead::

    ssh ... -e none HOST -- 'python3' '-c' '<BRIDGE_SCRIPT>' '<SOCKET>'

(each piece shell-quoted: the remote login shell parses the command).  The script is
written for any Python 3 (no f-strings, no walrus), copies bytes in both directions with
one thread per direction (so neither direction can block the other), half-closes the
socket when ssh's stdin ends, and exits when the daemon closes.  A connection failure is
reported on stderr, which the local side puts into its error message.

:func:`main` runs exactly the same text locally (``python -m pyvirt.client.ssh_bridge
SOCKET``), so the tests exercise the code that is sent.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, cast

BRIDGE_SCRIPT = r"""
import os, socket, sys, threading
def bridge(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sys.stderr.write("pyvirt-ssh-bridge: Failed to connect socket to '%s': %s\n"
                         % (path, exc.strerror or exc))
        return 1
    def upstream():
        try:
            while True:
                data = os.read(0, 262144)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    thread = threading.Thread(target=upstream)
    thread.daemon = True
    thread.start()
    try:
        while True:
            data = sock.recv(262144)
            if not data:
                return 0
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
    except OSError:
        return 0
if __name__ == "__main__":
    sys.exit(bridge(sys.argv[1]))
"""

#: the interpreter the remote command runs the script with
REMOTE_PYTHON = "python3"


def load_bridge() -> Callable[[str], int]:
    """The ``bridge(path)`` function defined by :data:`BRIDGE_SCRIPT`."""
    namespace: dict[str, Any] = {"__name__": "pyvirt_ssh_bridge"}
    exec(compile(BRIDGE_SCRIPT, "<pyvirt-ssh-bridge>", "exec"), namespace)
    return cast(Callable[[str], int], namespace["bridge"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m pyvirt.client.ssh_bridge SOCKET\n")
        return 2
    return load_bridge()(args[0])


if __name__ == "__main__":
    sys.exit(main())
