"""libvirt's reading of user and group names (pyvirt.sysids)."""

from __future__ import annotations

import pytest

from pyvirt import sysids


def test_names_numbers_and_plus_numbers() -> None:
    assert sysids.user_id("root") == 0 and sysids.group_id("root") == 0
    assert sysids.user_id("4242") == 4242  # not a name: the number
    assert sysids.group_id("+0") == 0  # "+N" is never looked up
    assert sysids.user_id("+4294967294") == 4294967294


@pytest.mark.parametrize("name", ["no-such-pyvirt-name", "+x", "+", "+4294967295", "+١٢"])
def test_unknown_names_and_bad_numbers_are_refused(name: str) -> None:
    with pytest.raises(LookupError):
        sysids.user_id(name)
    with pytest.raises(LookupError):
        sysids.group_id(name)
