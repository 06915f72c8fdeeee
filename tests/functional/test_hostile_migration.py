"""Hostile migrations against live daemons (fake QEMUs): each attack of issue 10, as an
attacker would try it with the stock virsh, refused before it touches anything.

1. ``--dname 'x/../../…/tmp/victim'`` (normal, p2p, tunnelled): refused with the name's
   reason; the victim directory and its canary are untouched, no ``victim.log`` appears, and
   the destination holds no object, run directory or log file for it.
2. A destination daemon (a fake one) that answers Prepare with ``exec:``/``file:`` as
   ``uri_out``: the source refuses before QMP (its fake QEMU never sees ``migrate``), nothing
   runs, the guest keeps running on the source.
3. ``--disks-uri unix:///path/of/a/file`` and ``--migrateuri exec:``/``file:``/``rdma:``
   from the client: refused; the file survives.
"""

from __future__ import annotations

import os
import tempfile
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.conf.domain_validate import NAME_MAX
from tests.fakes.fake_remote import FakeMigration, ServedPair
from tests.functional.gridutil import (
    MODES,
    Pair,
    assert_destination_clean,
    assert_source_runs,
    daemon_pair,
    domstate,
    emptied_after_test,
    guest_xml,
    new_guest,
    virsh,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with daemon_pair(tmp_path_factory, "hostile") as pair:
        yield pair


@pytest.fixture
def pair(daemons: Pair) -> Iterator[Pair]:
    yield from emptied_after_test(daemons)


@pytest.fixture
def victim() -> Iterator[Path]:
    """A directory outside both daemons' roots holding a canary (what the attack deleted)."""
    path = Path(tempfile.mkdtemp(prefix="pyvirt-victim-", dir="/tmp"))
    (path / "canary").write_text("still here")
    yield path
    for leftover in (path, Path(f"{path}.log")):
        if leftover.is_dir():
            for child in leftover.iterdir():
                child.unlink()
            leftover.rmdir()
        elif leftover.exists():
            leftover.unlink()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("mode", MODES)
def test_dname_cannot_climb_out(pair: Pair, victim: Path, mode: str) -> None:
    guest = new_guest(pair)
    dname = "x/" + "../" * 30 + str(victim).lstrip("/")
    before = {d: _tree(pair.dst.root / d) for d in ("run", "log", "state")}
    rc, _, err = virsh(pair.src, "migrate", *MODES[mode], "--live", "--dname", dname,
                       guest.name, pair.dst.uri)
    assert rc == 1 and "cannot contain '/'" in err, err
    assert (victim / "canary").read_text() == "still here"
    assert not Path(f"{victim}.log").exists()
    listed = virsh(pair.dst, "list", "--all", "--name")[1].split()
    assert listed == [], listed
    after = {d: _tree(pair.dst.root / d) for d in ("run", "log", "state")}
    assert after == before, "the refused Prepare left something on the destination"
    assert_source_runs(pair, guest)
    assert_destination_clean(pair, guest.name)


@pytest.mark.parametrize("dname", ["..", ".", "a\x01b", "y" * 256])
def test_other_hostile_dnames(pair: Pair, dname: str) -> None:
    guest = new_guest(pair)
    rc, _, err = virsh(pair.src, "migrate", "--live", "--p2p", "--dname", dname,
                       guest.name, pair.dst.uri)
    assert rc == 1 and "name" in err, err
    assert virsh(pair.dst, "list", "--all", "--name")[1].split() == []
    assert_source_runs(pair, guest)


@pytest.fixture
def fake_destination() -> Iterator[ServedPair]:
    served = ServedPair()
    try:
        yield served
    finally:
        served.close()


@pytest.mark.parametrize("mode", ["normal", "p2p"])
@pytest.mark.parametrize("scheme", ["exec", "file"])
def test_source_refuses_hostile_uri_out(pair: Pair, fake_destination: ServedPair,
                                        mode: str, scheme: str) -> None:
    # the fake destination answers Prepare with a URI that would run a command or write a
    # file on the source if it reached QEMU's migrate
    pwned = Path(tempfile.gettempdir()) / f"pyvirt-pwned-{os.getpid()}-{scheme}-{mode}"
    uri_out = f"exec:touch {pwned}" if scheme == "exec" else f"file:{pwned}"
    fake_destination.dst.fake.migration = FakeMigration(uri_out=uri_out)
    guest = new_guest(pair)
    mark = pair.src.journal_mark()
    rc, _, err = virsh(pair.src, "migrate", *MODES[mode], "--live", guest.name,
                       fake_destination.dst.uri())
    assert rc == 1 and f"unsupported scheme {scheme} in migration URI" in err, err
    commands = [e["cmd"] for e in pair.src.journal_entries(mark, guest.name)]
    assert "migrate" not in commands, commands
    assert not pwned.exists()
    assert_source_runs(pair, guest)


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--migrateuri", "exec:touch /tmp/pyvirt-pwned", "unsupported scheme exec"),
    ("--migrateuri", "file:/tmp/pyvirt-pwned", "unsupported scheme file"),
    ("--migrateuri", "rdma://127.0.0.1:49152", "RDMA is not supported"),
    ("--migrateuri", "tcp://127.0.0.1:1", "outside the migration port range"),
    ("--listen-address", "0.0.0.0,fd=3", "invalid host"),
    ("--graphicsuri", "exec://x", "unknown graphics type"),
])
def test_client_uris_refused(pair: Pair, option: str, value: str, words: str) -> None:
    guest = new_guest(pair)
    rc, _, err = virsh(pair.src, "migrate", "--live", option, value, guest.name, pair.dst.uri)
    assert rc == 1 and words in err, err
    assert not Path("/tmp/pyvirt-pwned").exists()
    assert_source_runs(pair, guest)
    assert_destination_clean(pair, guest.name)


def test_disks_uri_cannot_remove_a_file(pair: Pair, victim: Path) -> None:
    # QEMU's NBD server would unlink whatever is at its socket path before binding
    guest = new_guest(pair)
    target = victim / "canary"
    rc, _, err = virsh(pair.src, "migrate", "--live", "--copy-storage-all", "--disks-uri",
                       f"unix://{target}", guest.name, pair.dst.uri)
    assert rc == 1 and "exists and is not a socket" in err, err
    assert target.read_text() == "still here"
    assert_source_runs(pair, guest)
    assert_destination_clean(pair, guest.name)


def test_the_longest_name_fits_every_file(pair: Pair) -> None:
    # a name of NAME_MAX bytes (multi-byte characters) is defined, started (status file,
    # QEMU and serial logs), migrated (journal, destination's files) and undefined; one
    # byte more is refused before anything is written
    name = "\u20ac" * (NAME_MAX // 3) + "a" * (NAME_MAX % 3)
    assert len(name.encode()) == NAME_MAX
    uuid = str(uuidlib.uuid4())
    xml = pair.tmp / "longest.xml"
    xml.write_text(guest_xml(name, uuid))
    assert virsh(pair.src, "define", str(xml))[0] == 0
    assert virsh(pair.src, "start", name)[0] == 0
    rc, _, err = virsh(pair.src, "migrate", "--live", "--p2p", "--persistent",
                       "--undefinesource", name, pair.dst.uri)
    assert rc == 0, err
    assert domstate(pair.dst, name) == "running (migrated)"
    assert virsh(pair.dst, "destroy", name)[0] == 0
    assert virsh(pair.dst, "undefine", name)[0] == 0
    xml.write_text(guest_xml(name + "b", str(uuidlib.uuid4())))
    rc, _, err = virsh(pair.src, "define", str(xml))
    assert rc == 1 and f"name is longer than {NAME_MAX} bytes" in err, err
