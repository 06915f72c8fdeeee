"""pyvirt.rpc.unix_listen: the sockets' group and mode from creation on, the socket directory,
and the ``unix_sock_*`` keys as parsed."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyvirt.conf.daemon_conf import parse_daemon_config
from pyvirt.errors import ConfSyntaxError, InvalidArgError, SystemError_
from pyvirt.rpc.unix_listen import bind_unix_listener, ensure_socket_dir, group_id


@pytest.fixture
def umask_0() -> Iterator[None]:
    """The most open process umask: nothing may rely on the daemon's own."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_group_id_by_name_number_and_plus_number() -> None:
    root_group = grp.getgrgid(0).gr_name
    assert group_id(root_group) == 0
    assert group_id("4242") == 4242
    assert group_id("+0") == 0


@pytest.mark.parametrize("value", ["pyvirt-no-such-group", "+root", "-1", "4294967295"])
def test_group_id_refuses_what_is_neither_a_group_nor_a_gid(value: str) -> None:
    with pytest.raises(InvalidArgError, match="invalid argument: Failed to parse group '"):
        group_id(value)


def test_socket_is_never_more_open_than_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_0: None
) -> None:
    # The mode the socket file has when its group changes, i.e. before the final chmod.
    seen: list[int] = []
    real_chown = os.chown

    def spy_chown(path: str, uid: int, gid: int, **kw: Any) -> None:
        seen.append(stat.S_IMODE(os.stat(path).st_mode))
        real_chown(path, uid, gid, **kw)

    monkeypatch.setattr(os, "chown", spy_chown)
    path = str(tmp_path / "s")
    sock = bind_unix_listener(path, 0o777, os.getegid())
    try:
        assert seen == [0o700]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o777
        assert os.umask(0) == 0  # the process umask is back as it was
    finally:
        sock.close()


def test_mode_without_group_and_stale_socket_replaced(tmp_path: Path, umask_0: None) -> None:
    path = str(tmp_path / "s")
    bind_unix_listener(path, 0o600, None).close()  # leaves a stale socket behind
    sock = bind_unix_listener(path, 0o660, None)
    try:
        info = os.stat(path)
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == os.getegid()
    finally:
        sock.close()


def test_bind_failure_is_a_system_error(tmp_path: Path) -> None:
    with pytest.raises(SystemError_, match=r"Failed to bind socket to '.*/missing/s': No such"):
        bind_unix_listener(str(tmp_path / "missing" / "s"), 0o700, None)


def test_socket_dir_created_0755_with_its_parents(tmp_path: Path, umask_0: None) -> None:
    target = tmp_path / "a" / "b"
    ensure_socket_dir(target)
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
    target.chmod(0o700)
    ensure_socket_dir(target)  # an existing directory is left alone
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700


def test_admin_perms_parsed_like_the_other_socket_modes() -> None:
    assert parse_daemon_config("", "/etc/pyvirt/pyvirtd.conf").unix_sock_admin_perms == 0o700
    cfg = parse_daemon_config('unix_sock_admin_perms = "0770"\n', "/etc/pyvirt/pyvirtd.conf")
    assert cfg.unix_sock_admin_perms == 0o770
    with pytest.raises(ConfSyntaxError, match="Failed to parse mode '0999'"):
        parse_daemon_config('unix_sock_admin_perms = "0999"\n', "/etc/pyvirt/pyvirtd.conf")
