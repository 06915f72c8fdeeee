"""The peer's cookie is about the domain the phase works on (check_peer, cookie_io).

Prepare compares the source's Begin cookie with the definition it got, the source compares
the destination's Prepare cookie with its own domain, Finish compares the source's Perform
cookie with the domain being migrated in; where a phase cannot know the name or UUID,
nothing is compared (no check that compares a cookie with itself).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pyvirt.constants import MigrateFlags
from pyvirt.errors import ErrorCode, VirtError
from pyvirt.qemu.migration.cookie import MigrationCookie, check_peer
from pyvirt.qemu.migration.cookie_io import (
    read_cookie,
    read_perform_cookie,
    read_prepare_cookie,
)
from pyvirt.qemu.migration.params import MigrationRequest, Side

DOM_UUID = "c7a5fdbd-edaf-9455-926a-d65c16db1809"
OTHER_UUID = "0d3c2b1a-0000-4000-8000-0000000000ff"
LOCAL_HOST = "b2b2b2b2-0000-4000-8000-00000000000b"
PEER_HOST = "a1a1a1a1-0000-4000-8000-00000000000a"


def cookie(name: str = "web1", uuid: str = DOM_UUID, hostuuid: str = PEER_HOST) -> bytes:
    return MigrationCookie(name=name, uuid=uuid, hostname="peer", hostuuid=hostuuid).to_bytes()


def driver(*domains: Any) -> Any:
    by_name = {obj.name: obj for obj in domains}
    return SimpleNamespace(settings=SimpleNamespace(host_uuid=LOCAL_HOST),
                           domain_by_name=by_name.get)


def domain(name: str = "web1", uuid: str = DOM_UUID, migrating: bool = True) -> Any:
    return SimpleNamespace(name=name, uuid=uuid, migration=object() if migrating else None)


def request(destination_name: str | None = None) -> MigrationRequest:
    return MigrationRequest(side=Side.SOURCE, flags=MigrateFlags.LIVE,
                            destination_name=destination_name)


async def refused(read: Any) -> str:
    with pytest.raises(VirtError) as info:
        await read
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    return str(info.value)


# -- check_peer -------------------------------------------------------------------------------
def test_nothing_compared_where_nothing_is_known() -> None:
    base = MigrationCookie.from_bytes(cookie())
    assert base is not None
    check_peer(base, expected_name=None, expected_uuid=None, local_host_uuid=LOCAL_HOST)
    with pytest.raises(VirtError, match="same host"):
        check_peer(base, expected_name=None, expected_uuid=None, local_host_uuid=PEER_HOST)


def test_a_renamed_domain_s_name_is_accepted_besides_its_own() -> None:
    base = MigrationCookie.from_bytes(cookie(name="renamed"))
    assert base is not None
    check_peer(base, expected_name="web1", expected_uuid=DOM_UUID, local_host_uuid=LOCAL_HOST,
               renamed_to="renamed")
    with pytest.raises(VirtError, match="unexpected name renamed vs web1"):
        check_peer(base, expected_name="web1", expected_uuid=DOM_UUID,
                   local_host_uuid=LOCAL_HOST)


# -- Prepare: the definition ------------------------------------------------------------------
async def test_prepare_compares_the_definition() -> None:
    assert await read_cookie(driver(), cookie(), name="web1", uuid=DOM_UUID) is not None
    message = await refused(read_cookie(driver(), cookie(name="web2"), name="web1",
                                        uuid=DOM_UUID))
    assert message == "internal error: Incoming cookie data had unexpected name web2 vs web1"
    message = await refused(read_cookie(driver(), cookie(uuid=OTHER_UUID), name="web1",
                                        uuid=DOM_UUID))
    assert message == ("internal error: Incoming cookie data had unexpected UUID "
                       f"{OTHER_UUID} vs {DOM_UUID}")


# -- Perform (source): the destination's Prepare cookie ---------------------------------------
async def test_the_source_refuses_a_prepare_cookie_about_another_domain() -> None:
    obj = domain()
    assert await read_prepare_cookie(driver(), cookie(), obj, request()) is not None
    message = await refused(read_prepare_cookie(driver(), cookie(uuid=OTHER_UUID), obj,
                                                request()))
    assert f"unexpected UUID {OTHER_UUID} vs {DOM_UUID}" in message
    message = await refused(read_prepare_cookie(driver(), cookie(name="intruder"), obj,
                                                request()))
    assert message.endswith("unexpected name intruder vs web1")


async def test_the_source_accepts_either_name_of_a_renamed_domain() -> None:
    obj = domain()
    for name in ("web1", "renamed"):  # libvirt's destination, pyvirt's
        assert await read_prepare_cookie(driver(), cookie(name=name), obj,
                                         request("renamed")) is not None
    message = await refused(read_prepare_cookie(driver(), cookie(name="other"), obj,
                                                request("renamed")))
    assert message.endswith("unexpected name other vs web1")


async def test_no_cookie_is_no_check() -> None:
    assert await read_prepare_cookie(driver(), b"", domain(), request()) is None
    assert await read_perform_cookie(driver(domain()), b"", None) is None


# -- Finish (destination): the source's Perform cookie ----------------------------------------
async def test_finish_refuses_a_perform_cookie_about_another_domain() -> None:
    incoming = domain()
    assert await read_perform_cookie(driver(incoming), cookie(), None) is not None
    message = await refused(read_perform_cookie(driver(incoming), cookie(uuid=OTHER_UUID),
                                                None))
    assert message == ("internal error: Incoming cookie data had unexpected UUID "
                       f"{OTHER_UUID} vs {DOM_UUID}")


async def test_finish_finds_a_renamed_domain_by_its_destination_name() -> None:
    incoming = domain(name="renamed")
    assert await read_perform_cookie(driver(incoming), cookie(), "renamed") is not None
    message = await refused(read_perform_cookie(driver(incoming), cookie(uuid=OTHER_UUID),
                                                "renamed"))
    assert f"unexpected UUID {OTHER_UUID}" in message


async def test_finish_leaves_a_domain_not_migrating_in_to_its_own_refusal() -> None:
    # Finish itself says "not being migrated in" (libvirt checks the job before the cookie)
    assert await read_perform_cookie(driver(), cookie(uuid=OTHER_UUID), None) is not None
    idle = domain(migrating=False)
    assert await read_perform_cookie(driver(idle), cookie(uuid=OTHER_UUID), None) is not None


async def test_finish_still_refuses_a_cookie_from_this_host() -> None:
    message = await refused(read_perform_cookie(driver(domain()), cookie(hostuuid=LOCAL_HOST),
                                                None))
    assert "Attempt to migrate guest to the same host" in message
