"""Atomic on-disk state and name safety."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyvirt.errors import VirtError
from pyvirt.qemu.store import NamedFileStore, atomic_write


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.xml"
    atomic_write(target, "one")
    atomic_write(target, "two")
    assert target.read_text() == "two"
    assert sorted(os.listdir(target.parent)) == ["a.xml"]
    assert (target.stat().st_mode & 0o777) == 0o600


def test_atomic_write_failure_keeps_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.xml"
    atomic_write(target, "old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["a.xml"]


def test_store_names_skip_temp_files(tmp_path: Path) -> None:
    store = NamedFileStore(tmp_path, ".xml")
    store.write("g1", "x")
    store.write("g2", "y")
    (tmp_path / ".g3.xml.tmp").write_text("partial")
    assert store.names() == ["g1", "g2"]
    store.remove("g1")
    store.remove("g1")  # idempotent
    assert store.names() == ["g2"]


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".", "a\nb", "a\0b", ""])
def test_store_refuses_escaping_names(tmp_path: Path, name: str) -> None:
    store = NamedFileStore(tmp_path / "d", ".xml")
    with pytest.raises(VirtError):
        store.write(name, "x")
    assert not (tmp_path / "evil.xml").exists()
    assert not (tmp_path / "d").exists() or list((tmp_path / "d").iterdir()) == []
