"""Shared pieces of the lab-host tests: two hosts for a module, a guest's serial log."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pyvirt.lab.guest import build_guest
from pyvirt.lab.hosts import LabHost, lab_down, lab_up
from tests.functional.guestlog import SerialLog


def two_hosts() -> Iterator[list[LabHost]]:
    """Body of a module-scoped fixture: lab hosts up for the module, always torn down."""
    if os.geteuid() != 0:
        pytest.skip("lab hosts need root")
    build_guest()
    try:
        yield lab_up(2)
    finally:
        lab_down()


def serial(host: LabHost, name: str) -> SerialLog:
    return SerialLog(host.dir / "log" / "qemu" / f"{name}-serial0.log")
