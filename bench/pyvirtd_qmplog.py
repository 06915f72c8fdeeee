"""pyvirtd, unchanged, plus a log of every QMP event its QEMUs send (for the benchmark).

``python bench/pyvirtd_qmplog.py --qmp-event-log FILE [pyvirtd options]`` runs
:func:`pyvirt.daemon.main.main` with one extra logging handler on the ``qemu.qmp`` logger:
qemu.qmp already formats every incoming message for its debug log (``<-- {...}``); this
handler keeps the events among them and appends one JSON line per event to FILE::

    {"dom": "g1", "event": "STOP", "ts": 1732634567.123456, "data": {}}

``ts`` is QEMU's own timestamp of the event (host clock), which is what the benchmark's
guest-visible pause is computed from, exactly as for the QEMUs it drives itself. Nothing
else in the daemon changes; the handler costs one JSON parse per QMP message.
"""

from __future__ import annotations

import json
import logging
import sys

_PREFIX = "qemu.qmp.protocol."


class QmpEventLog(logging.Handler):
    """Appends the QMP events qemu.qmp logs at debug level to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        super().__init__(logging.DEBUG)
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - lives with the process

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg != "<-- %s" or not isinstance(record.args, tuple) or not record.args:
            return
        text = str(record.args[0])
        if '"event"' not in text:
            return
        try:
            message = json.loads(text)
            stamp = message["timestamp"]
            line = {"dom": record.name.removeprefix(_PREFIX), "event": message["event"],
                    "ts": stamp["seconds"] + stamp["microseconds"] / 1e6,
                    "data": message.get("data", {})}
            self._file.write(json.dumps(line) + "\n")
        except (ValueError, KeyError, TypeError):
            self.handleError(record)


def split_args(argv: list[str]) -> tuple[str, list[str]]:
    """(the event log path, the pyvirtd arguments)."""
    if len(argv) < 2 or argv[0] != "--qmp-event-log":
        raise SystemExit("usage: pyvirtd_qmplog.py --qmp-event-log FILE [pyvirtd options]")
    return argv[1], argv[2:]


def main(argv: list[str]) -> int:
    path, rest = split_args(argv)
    qmp_logger = logging.getLogger("qemu.qmp")
    qmp_logger.setLevel(logging.DEBUG)
    qmp_logger.addHandler(QmpEventLog(path))  # not on the root: pyvirtd resets the root's
    from pyvirt.daemon.main import main as pyvirtd_main

    return pyvirtd_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
