"""Hostile names, paths and migration URIs: refused at the edge, deletions confined.

The live-daemon versions of these attacks are in tests/functional/test_hostile_migration.py;
here each rule is pinned down on its own, fast.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from pyvirt import safefs
from pyvirt.conf.domain_parse import parse_domain_xml
from pyvirt.conf.domain_validate import validate_domain
from pyvirt.constants import MigrateFlags
from pyvirt.errors import ArgumentUnsupportedError, InvalidArgError, VirtError, XMLError
from pyvirt.qemu.migration import images, p2p, uris
from pyvirt.qemu.migration.cookie import MigrationCookie
from pyvirt.qemu.migration.cookie_io import read_cookie
from pyvirt.qemu.migration.params import Side, parse_request
from pyvirt.qemu.settings import DriverSettings, short_name
from pyvirt.rpc.remote_types import TypedParam

DNAME_ATTACK = "x/../../../../../../../../../../../../tmp/victim"


# -- migration URIs ------------------------------------------------------------------------------
@pytest.mark.parametrize(("uri", "qemu"), [
    ("tcp://10.0.0.2:49152", "tcp:10.0.0.2:49152"),
    ("tcp:10.0.0.2:49152", "tcp:10.0.0.2:49152"),
    ("tcp://host-2.example.com:5000/", "tcp:host-2.example.com:5000"),
    ("tcp://[fd00::2]:5000", "tcp:[fd00::2]:5000"),
    ("TCP://h:1", "tcp:h:1"),
])
def test_tcp_uris_accepted_and_rebuilt(uri: str, qemu: str) -> None:
    assert uris.parse_migration_uri(uri).qemu() == qemu


@pytest.mark.parametrize(("uri", "error", "words"), [
    ("exec:rm -rf /", ArgumentUnsupportedError, "unsupported scheme exec in migration URI"),
    ("exec:cat>/tmp/x", ArgumentUnsupportedError, "unsupported scheme exec"),
    ("file:/etc/passwd", ArgumentUnsupportedError, "unsupported scheme file"),
    ("fd:3", ArgumentUnsupportedError, "unsupported scheme fd"),
    ("rdma://10.0.0.2:5000", ArgumentUnsupportedError, "RDMA is not supported"),
    ("vsock:3:1000", ArgumentUnsupportedError, "unsupported scheme vsock"),
    ("no-scheme-at-all", InvalidArgError, "missing scheme"),
    ("tcp://h,reconnect=1:5000", InvalidArgError, "invalid"),
    ("tcp:h,to=6000:5000", InvalidArgError, "invalid host"),
    ("tcp://h:0", InvalidArgError, "invalid port"),
    ("tcp://h:65536", InvalidArgError, "invalid port"),
    ("tcp://h:\uff15", InvalidArgError, "invalid port"),  # a fullwidth digit
    ("tcp://user@h:1", InvalidArgError, "unexpected path, query or user"),
    ("tcp://h:1/some/path", InvalidArgError, "unexpected path"),
    ("tcp://[fd00::2:1", InvalidArgError, "invalid IPv6"),
    ("tcp://bad_host!:1", InvalidArgError, "invalid host"),
    ("unix:relative/sock", InvalidArgError, "not an absolute, normalized path"),
    ("unix:///run/../etc/passwd", InvalidArgError, "not an absolute, normalized path"),
    ("unix:////run/x.sock", InvalidArgError, "not an absolute, normalized path"),
    ("unix:///run/x\nsock", InvalidArgError, "control characters"),
    ("tcp://h\t:1", InvalidArgError, "control characters"),
    (f"unix:///{'a' * 120}", InvalidArgError, "longer than 107 bytes"),
])
def test_migration_uris_refused(uri: str, error: type[VirtError], words: str) -> None:
    with pytest.raises(error, match=words):
        uris.parse_migration_uri(uri)


def test_unix_uri_never_names_an_existing_file(tmp_path: Path) -> None:
    # QEMU removes whatever is at a listening socket's path: only a socket may be there
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    with pytest.raises(InvalidArgError, match="exists and is not a socket"):
        uris.parse_migration_uri(f"unix://{victim}")
    with pytest.raises(InvalidArgError, match="exists and is not a socket"):
        uris.parse_migration_uri(f"unix://{tmp_path}")
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        assert uris.parse_migration_uri(f"unix://{sock_path}").path == str(sock_path)
    assert uris.parse_migration_uri(f"unix:{tmp_path}/new").qemu() == f"unix:{tmp_path}/new"
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("uri_out", [
    "exec:touch /tmp/pwned", "file:/etc/shadow", "tcp://h", "unix:///run/other.sock",
])
def test_peer_uri_out_refused(uri_out: str) -> None:
    with pytest.raises(VirtError):
        uris.check_peer_uri(uri_out, None)


def test_peer_unix_uri_only_when_asked(tmp_path: Path) -> None:
    asked = f"unix://{tmp_path}/mig.sock"
    assert uris.check_peer_uri(asked, asked).path == f"{tmp_path}/mig.sock"
    with pytest.raises(ArgumentUnsupportedError, match="did not ask for"):
        uris.check_peer_uri(f"unix://{tmp_path}/other.sock", asked)


@pytest.mark.parametrize(("uri", "words"), [
    ("ftp://10.0.0.2", "unknown graphics type ftp"),
    ("spice://h,x:1", "invalid host"),
    ("spice://h:99999", "invalid port"),
    ("spice://h?tlsPort=abc", "invalid port"),
    ("spice://h?evil=1", "unknown parameter"),
])
def test_graphics_uris_refused(uri: str, words: str) -> None:
    with pytest.raises(VirtError, match=words):
        uris.check_graphics_uri(uri)


# -- the request: names and addresses refused before anything moves --------------------
def _request(side: Side, **params: str) -> None:
    parse_request(int(MigrateFlags.LIVE),
                  [TypedParam.of_string(k, v) for k, v in params.items()], side=side)


@pytest.mark.parametrize("side", list(Side))
@pytest.mark.parametrize(("params", "words"), [
    ({"destination_name": DNAME_ATTACK}, "cannot contain '/'"),
    ({"destination_name": ".."}, "is not allowed"),
    ({"destination_name": "a\0b"}, "control characters"),
    ({"destination_name": "x" * 256}, "longer than 238 bytes"),
    ({"destination_name": "\u20ac" * 80}, "longer than 238 bytes"),
    ({"destination_name": "\udc80abc"}, "not valid UTF-8"),
    ({"migrate_uri": "exec:sh -c 'id>/tmp/p'"}, "unsupported scheme exec"),
    ({"disks_uri": "file:///etc/passwd"}, "Unsupported scheme in disks URI"),
    ({"disks_uri": "unix:///etc/passwd"}, "exists and is not a socket"),
    ({"graphics_uri": "exec://x"}, "unknown graphics type"),
    ({"listen_address": "0.0.0.0,fd=3"}, "invalid host"),
])
def test_request_refuses_hostile_values(side: Side, params: dict[str, str], words: str) -> None:
    with pytest.raises(VirtError, match=words):
        _request(side, **params)


# -- per-domain paths -------------------------------------------------------------------
@pytest.mark.parametrize(("name", "short"), [
    ("web1", "web1"),
    ("..", "_."),
    (".hidden", "_hidden"),
    ("a/../../b", "a_.._.._b"),
    ("ünïcode name with spaces", "_n_code_name_with_sp"),
])
def test_short_name_is_one_safe_component(name: str, short: str) -> None:
    assert short_name(name) == short
    safefs.check_component(short)


def test_run_dir_stays_in_run_dir(tmp_path: Path) -> None:
    settings = DriverSettings(state_dir=tmp_path / "s", run_dir=tmp_path / "r",
                              log_dir=tmp_path / "l")
    run_dir = settings.domain_run_dir(7, DNAME_ATTACK)
    assert run_dir.parent == settings.status_dir
    assert run_dir.name == "domain-7-x_.._.._.._.._.._.._"


BASE_XML = """<domain type='qemu'><name>p</name><memory>65536</memory>
<os><type>hvm</type>{os}</os><devices>{devices}</devices></domain>"""


@pytest.mark.parametrize(("os_part", "devices", "words"), [
    ("<kernel>vmlinuz</kernel>", "", "kernel 'vmlinuz' is not an absolute path"),
    ("<initrd>/boot/../etc/shadow</initrd>", "", "is not a normalized path"),
    ("", "<emulator>qemu</emulator>", "emulator 'qemu' is not an absolute path"),
    ("", "<disk type='file' device='disk'><source file='disk.img'/>"
         "<target dev='vda' bus='virtio'/></disk>", "disk vda source 'disk.img'"),
    ("", "<disk type='file' device='disk'><source file='/var/lib//x.img'/>"
         "<target dev='vda' bus='virtio'/></disk>", "not a normalized path"),
    ("", "<serial type='file'><source path='../../etc/passwd'/></serial>",
     "serial source '../../etc/passwd' is not an absolute path"),
    ("", "<channel type='unix'><target type='virtio' name='../../../../etc/cron.d/x'/>"
         "</channel>", "channel target name '../../../../etc/cron.d/x' cannot be a file name"),
    ("", "<channel type='unix'><target type='virtio' name='..'/></channel>",
     "channel target name '..' cannot be a file name"),
])
def test_domain_paths_refused(os_part: str, devices: str, words: str) -> None:
    with pytest.raises(XMLError, match=words):
        validate_domain(parse_domain_xml(BASE_XML.format(os=os_part, devices=devices)))


# -- deletion only of what the daemon owns ------------------------------------------------
def test_remove_in_removes_only_inside(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "domain-1-a").mkdir(parents=True)
    (root / "domain-1-a" / "monitor.sock").write_text("")
    outside.mkdir()
    (outside / "canary").write_text("alive")
    os.symlink(outside, root / "domain-1-a" / "link")  # a symlink inside: not followed
    os.symlink(outside, root / "domain-2-b")
    assert safefs.remove_in(root, "domain-1-a")
    assert safefs.remove_in(root, "domain-2-b")  # the symlink goes, not its target
    assert not (root / "domain-1-a").exists() and not (root / "domain-2-b").is_symlink()
    assert (outside / "canary").read_text() == "alive"
    for name in ("..", "../outside", "a/b", ""):
        assert not safefs.remove_in(root, name)
    assert (outside / "canary").read_text() == "alive"


def test_remove_created_checks_identity_and_symlinks(tmp_path: Path) -> None:
    image = tmp_path / "img" / "a.raw"
    image.parent.mkdir()
    image.write_bytes(b"x")
    record = safefs.CreatedFile.of(str(image))
    image.unlink()
    image.write_bytes(b"someone else's file")  # same path, another inode
    replaced = safefs.CreatedFile(record.path, record.dev, record.ino + 10**9)
    assert not safefs.remove_created(replaced)
    assert image.exists()
    # a directory on the way swapped for a symlink: the walk does not follow it
    fresh = safefs.CreatedFile.of(str(image))
    (tmp_path / "img").rename(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "img")
    assert not safefs.remove_created(fresh)
    assert (tmp_path / "real" / "a.raw").exists()
    os.unlink(tmp_path / "img")
    (tmp_path / "real").rename(tmp_path / "img")
    assert safefs.remove_created(fresh) and not image.exists()
    assert safefs.CreatedFile.from_json({"path": "/x", "dev": 1, "ino": 2}) == \
        safefs.CreatedFile("/x", 1, 2)
    assert safefs.CreatedFile.from_json("/bare/path/from/an/old/journal") is None


@pytest.mark.parametrize(("path", "backing", "fmt", "words"), [
    ("relative.qcow2", None, "qcow2", "not an absolute path"),
    ("/a/../b.qcow2", None, "qcow2", "not a normalized path"),
    ("/a/b.qcow2", "-o,backing_file=/etc/shadow", "qcow2", "not an absolute path"),
    ("/a/b.qcow2", None, "vvfat", "image format 'vvfat' is not supported"),
])
def test_image_specs_refused(path: str, backing: str | None, fmt: str, words: str) -> None:
    spec = images.ImageSpec("vda", path, fmt, 1 << 20, backing=backing,
                            backing_format="raw" if backing else None)
    with pytest.raises(InvalidArgError, match=words):
        images.check_spec(spec)


# -- the peer's cookie ------------------------------------------------------------------------
@pytest.mark.parametrize("name", [DNAME_ATTACK, "..", "a\x01b"])
async def test_cookie_names_checked(name: str) -> None:
    cookie = MigrationCookie(name=name, uuid="8b3f2e94-7c1d-4a5e-9f60-2d4c8a1b3e77",
                             hostname="peer", hostuuid="3e1c9a57-2b8d-4f06-a1c4-7d5e9b2f8a13")
    driver = SimpleNamespace(settings=SimpleNamespace(
        host_uuid="00000000-0000-4000-8000-000000000000"))
    with pytest.raises(VirtError, match=r"name|malformed"):
        await read_cookie(driver, cookie.to_bytes())  # type: ignore[arg-type]


# -- a destination that never answers --------------------------------------------------------
async def test_p2p_connect_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # a listener that never accepts: the handshake completes, no answer ever comes
    monkeypatch.setattr(p2p, "P2P_CONNECT_TIMEOUT_S", 0.3)
    settings = SimpleNamespace(p2p_keepalive_interval=5, p2p_keepalive_count=5)
    engine = SimpleNamespace(driver=SimpleNamespace(settings=settings))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        uri = f"qemu+tcp://127.0.0.1:{silent.getsockname()[1]}/system"
        with pytest.raises(VirtError, match=r"no answer within 0\.3 s"):
            await p2p.connect(engine, uri)  # type: ignore[arg-type]
