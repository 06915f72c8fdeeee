"""The flat VIR_* names against the real libvirt-python (python3-libvirt), when present."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from pyvirt.client.names import flat_constants

_SYSTEM_PYTHON = "/usr/bin/python3"
#: names newer than libvirt 9.0 (Debian 12's python3-libvirt): values cannot be checked there
_NEWER_THAN_9_0 = frozenset({
    "VIR_DOMAIN_PAUSED_API_ERROR", "VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER",
    "VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES", "VIR_MIGRATE_PARAM_COMPRESSION_ZLIB_LEVEL",
    "VIR_MIGRATE_PARAM_COMPRESSION_ZSTD_LEVEL",
})  # fmt: skip
#: pyvirt/errors.py has 61; libvirt (virterror.h, python3-libvirt) has 54


def _libvirt_python_values(names: list[str]) -> dict[str, Any]:
    code = ("import json, sys, libvirt; names = json.load(sys.stdin); "
            "print(json.dumps({n: getattr(libvirt, n) for n in names if hasattr(libvirt, n)}))")
    try:
        out = subprocess.run([_SYSTEM_PYTHON, "-c", code], input=json.dumps(names),
                             capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the system python has no libvirt module (python3-libvirt)")
    return dict(json.loads(out.stdout))  # fmt: skip


def test_flat_constants_match_libvirt_python() -> None:
    ours = flat_constants()
    theirs = _libvirt_python_values(sorted(ours))
    assert set(ours) - set(theirs) == _NEWER_THAN_9_0
    wrong = {n: (ours[n], theirs[n]) for n in theirs if ours[n] != theirs[n]}
    assert not wrong, wrong


def test_no_security_model_code() -> None:
    assert flat_constants()["VIR_ERR_NO_SECURITY_MODEL"] == 54
