"""The pyvirt test guest: builder, domain XML and the workload's console protocol.

The guest is a Debian cloud kernel (from Debian's ``linux-image-cloud-amd64``) plus a
busybox initramfs whose ``/init`` (``workload/init.sh``) runs our static C workload
(``workload/pvworkload.c``). The workload is the oracle of the migration tests: it prints
a heartbeat, dirties a working set while checking that every page still holds what the
previous pass wrote, and optionally does the same for a disk.

Outputs go to :func:`guest_dir` (``$PYVIRT_GUEST_DIR`` or ``/var/cache/pyvirt/guest``,
outside ``/var/lib/pyvirt`` so every lab host's mount namespace sees the same files):
``vmlinuz``, ``initramfs.img`` and ``manifest.json``.

Power: ``/init`` always loads the ACPI button and evdev drivers; the workload watches
``/dev/input/event*`` for KEY_POWER (QEMU's ``system_powerdown``) and powers the guest
off (``reboot(RB_POWER_OFF)``, a guest-initiated SHUTDOWN for QEMU); ``pvw.poweroff_after=S``
makes it do the same S seconds after READY. A reset simply boots again: READY once more
and heartbeats counting from 0.

Console lines (each written with a single ``write(2)``; serial lines end in ``\\r\\n``,
which the regexes tolerate)::

    PVW READY dirty_mb=N dirty_rate=R disk=DEV|none uptime_ms=U
    PVW HB <n> t_ms=T passes=P dirtied_mib=M corrupt=C          every pvw.hb_ms (200 ms)
    PVW CORRUPT mem page=I word=W expected=0x.. got=0x.. pass=P
    PVW DISKREADY dev=DEV blocks=B direct=0|1
    PVW DISK <n> gen=G written=W verified=V corrupt=C            about once a second
    PVW CORRUPT disk block=B expected_gen=G got_gen=H why=magic|checksum|block|run|gen
    PVW ERROR <message>
    PVW POWEROFF reason=acpi|timer                               last line before power-off
    PVW EXIT rc=N                                                the workload ended
    PVW SELFTEST OK|FAIL mem_corrupt=N disk_corrupt=N            --selftest-corrupt only

In a memory CORRUPT line the high 32 bits of a word are the pass that wrote it, so
``got`` shows how stale the page is (a lost write reads as the previous pass).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import json
import lzma
import os
import re
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

# ---- locations and build inputs --------------------------------------------------

GUEST_DIR_ENV = "PYVIRT_GUEST_DIR"
DEFAULT_GUEST_DIR = Path("/var/cache/pyvirt/guest")
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initramfs.img"
MANIFEST_FILE = "manifest.json"
#: Debian's metapackage; resolved to the real ``linux-image-<abi>-cloud-amd64``.
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
#: Pins the real kernel package instead of resolving the metapackage.
KERNEL_PACKAGE_ENV = "PYVIRT_GUEST_KERNEL_PACKAGE"
#: Bumped whenever the initramfs layout or its module lists change, so old builds
#: are redone (2: power-button modules, ``lib/modules/{disk,power}.order``).
BUILD_FORMAT = 2

WORKLOAD_DIR = Path(__file__).resolve().parent / "workload"
WORKLOAD_SOURCE = WORKLOAD_DIR / "pvworkload.c"
INIT_SOURCE = WORKLOAD_DIR / "init.sh"
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
#: Applets init.sh calls by name (symlinks in /bin); anything else: ``busybox APPLET``.
BUSYBOX_APPLETS = ("sh", "mount", "cat", "insmod", "sleep", "ls", "dmesg", "poweroff")
WORKLOAD_CFLAGS = ("-static", "-O2", "-Wall", "-Wextra")

# ---- guest configuration -----------------------------------------------------------

GUEST_DISK_DEV = "/dev/vda"
#: Kernel arguments before the workload's. ``quiet`` keeps the slow emulated UART
#: free for our lines (panics are KERN_EMERG and still print); ``panic=0`` halts on a
#: panic instead of rebooting, so a crashing guest can never boot-loop whatever
#: ``on_reboot`` says; the rest only shave boot time under TCG.
BASE_CMDLINE = (
    "console=ttyS0",
    "quiet",
    "panic=0",
    "mitigations=off",
    "8250.nr_uarts=1",
    "i8042.noaux",
    "i8042.nokbd",
    "tsc=reliable",
    "no_timer_check",
)
#: Memory the guest needs besides the working set: a fixed part for the kernel and
#: initramfs plus a share that grows with RAM (struct pages, reserves). Measured: a
#: 256 MiB guest can dirty ~188 MiB, a 1 GiB one ~880 MiB; this leaves some margin.
GUEST_OVERHEAD_BASE_MIB = 48
GUEST_OVERHEAD_DIVISOR = 8
#: Below this the kernel and initramfs do not even load (64 MiB prints nothing).
MIN_MEMORY_MIB = 128
DEFAULT_MEMORY_MIB = 256
DOMAIN_TYPES = ("qemu", "kvm")
DISK_FORMATS = ("raw", "qcow2")

# ---- console protocol (see the module docstring) -------------------------------------

LINE_PREFIX = "PVW "
#: Present in every corruption report, memory or disk.
CORRUPT_MARK = "PVW CORRUPT"
READY_RE = re.compile(
    r"^PVW READY dirty_mb=(?P<dirty_mb>\d+) dirty_rate=(?P<dirty_rate>\d+)"
    r" disk=(?P<disk>\S+) uptime_ms=(?P<uptime_ms>\d+)\s*$"
)
HEARTBEAT_RE = re.compile(
    r"^PVW HB (?P<n>\d+) t_ms=(?P<t_ms>\d+) passes=(?P<passes>\d+)"
    r" dirtied_mib=(?P<dirtied_mib>\d+) corrupt=(?P<corrupt>\d+)\s*$"
)
MEM_CORRUPT_RE = re.compile(
    r"^PVW CORRUPT mem page=(?P<page>\d+) word=(?P<word>\d+)"
    r" expected=(?P<expected>0x[0-9a-f]+) got=(?P<got>0x[0-9a-f]+) pass=(?P<pass_>\d+)\s*$"
)
DISK_READY_RE = re.compile(
    r"^PVW DISKREADY dev=(?P<dev>\S+) blocks=(?P<blocks>\d+) direct=(?P<direct>[01])\s*$"
)
DISK_PROGRESS_RE = re.compile(
    r"^PVW DISK (?P<n>\d+) gen=(?P<gen>\d+) written=(?P<written>\d+)"
    r" verified=(?P<verified>\d+) corrupt=(?P<corrupt>\d+)\s*$"
)
DISK_CORRUPT_RE = re.compile(
    r"^PVW CORRUPT disk block=(?P<block>\d+) expected_gen=(?P<expected_gen>\d+)"
    r" got_gen=(?P<got_gen>\d+) why=(?P<why>magic|checksum|block|run|gen)\s*$"
)
POWEROFF_RE = re.compile(r"^PVW POWEROFF reason=(?P<reason>acpi|timer)\s*$")
ERROR_RE = re.compile(r"^PVW ERROR (?P<message>.*?)\s*$")
EXIT_RE = re.compile(r"^PVW EXIT rc=(?P<rc>\d+)\s*$")
SELFTEST_RE = re.compile(
    r"^PVW SELFTEST (?P<result>OK|FAIL) mem_corrupt=(?P<mem_corrupt>\d+)"
    r" disk_corrupt=(?P<disk_corrupt>\d+)\s*$"
)


@dataclass(frozen=True)
class Heartbeat:
    """One parsed ``PVW HB`` line."""

    n: int
    t_ms: int
    passes: int
    dirtied_mib: int
    corrupt: int


def parse_heartbeat(line: str) -> Heartbeat | None:
    """The heartbeat on ``line``, or None if it is not a heartbeat line."""
    m = HEARTBEAT_RE.match(line)
    if m is None:
        return None
    return Heartbeat(*(int(v) for v in m.groups()))


# ---- errors and results --------------------------------------------------------------


class GuestError(Exception):
    """Base of the test-guest errors; the message is meant for the user."""


class GuestBuildError(GuestError):
    """Building the guest failed (missing tool or package, compiler error, ...)."""


class GuestConfigError(GuestError, ValueError):
    """Invalid guest/domain parameters."""


@dataclass(frozen=True)
class GuestImage:
    """A built guest. ``rebuilt`` tells whether this call built it or found it current."""

    kernel: Path
    initrd: Path
    manifest: Path
    kernel_package: str
    kernel_version: str
    built_at: str
    rebuilt: bool = False


def guest_dir() -> Path:
    """Where the guest is built: ``$PYVIRT_GUEST_DIR`` or the shared default."""
    env = os.environ.get(GUEST_DIR_ENV)
    return Path(env) if env else DEFAULT_GUEST_DIR


# ---- small helpers -------------------------------------------------------------------


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    """Run a tool, returning stdout; failures become a GuestBuildError with its stderr."""
    try:
        proc = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, check=False, timeout=600
        )
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{argv[0]} not found (run tools/setup-host.sh)") from exc
    except subprocess.TimeoutExpired as exc:
        raise GuestBuildError(f"{' '.join(argv)} timed out") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise GuestBuildError(f"{' '.join(argv)} failed: {' / '.join(detail)}")
    return proc.stdout


def _install(path: Path, data: bytes) -> None:
    """Write ``path`` atomically: a QEMU starting meanwhile reads the old or new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)  # readable by QEMU whichever user and namespace it runs in
    os.replace(tmp, path)


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """Serialize concurrent builds (parallel test sessions) of one guest directory."""
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- ELF bits: module dependencies and "is busybox static" -----------------------------


def _elf_check(data: bytes, what: str) -> None:
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":
        raise GuestBuildError(f"{what} is not a 64-bit little-endian ELF file")


def elf_section(data: bytes, wanted: str) -> bytes | None:
    """The contents of the ELF64 section named ``wanted``, or None."""
    _elf_check(data, "module")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        return name, offset, size

    _, strtab, _ = header(shstrndx)
    for i in range(shnum):
        name, offset, size = header(i)
        end = data.index(b"\0", strtab + name)
        if data[strtab + name : end].decode("ascii", "replace") == wanted:
            return data[offset : offset + size]
    return None


def elf_is_static(data: bytes) -> bool:
    """True if the executable has no program interpreter (PT_INTERP)."""
    _elf_check(data, "executable")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    pt_interp = 3
    return all(
        struct.unpack_from("<I", data, phoff + i * phentsize)[0] != pt_interp for i in range(phnum)
    )


def modinfo_depends(module: bytes) -> list[str]:
    """The ``depends=`` list of a kernel module's ``.modinfo`` section."""
    section = elf_section(module, ".modinfo") or b""
    for entry in section.split(b"\0"):
        if entry.startswith(b"depends="):
            value = entry[len(b"depends=") :].decode()
            return [d.replace("-", "_") for d in value.split(",") if d]
    return []


# ---- the kernel package ------------------------------------------------------------


@dataclass(frozen=True)
class KernelPackage:
    name: str
    version: str
    deb: Path


def resolve_kernel_package(metapackage: str = KERNEL_METAPACKAGE) -> str:
    """The real kernel package the metapackage's candidate depends on."""
    pinned = os.environ.get(KERNEL_PACKAGE_ENV)
    if pinned:
        return pinned
    try:
        out = _run(["apt-cache", "depends", metapackage])
    except GuestBuildError as exc:
        raise GuestBuildError(f"{exc} (is `apt-get update` needed?)") from exc
    for line in out.splitlines():
        m = re.match(r"\s*\|?Depends:\s*(linux-image-\S+)\s*$", line)
        if m and m.group(1) != metapackage:
            return m.group(1)
    raise GuestBuildError(f"{metapackage} depends on no linux-image package")


def _candidate_version(package: str) -> str:
    out = _run(["apt-cache", "policy", package])
    m = re.search(r"^\s*Candidate:\s*(\S+)\s*$", out, re.MULTILINE)
    if m is None or m.group(1) == "(none)":
        raise GuestBuildError(f"no installable version of {package} (apt-get update?)")
    return m.group(1)


def fetch_kernel_package(cache: Path) -> KernelPackage:
    """Resolve the kernel package and ``apt-get download`` it into ``cache`` once."""
    name = resolve_kernel_package()
    version = _candidate_version(name)
    # apt-get download names files like this, with the epoch's ':' URL-encoded.
    deb = cache / f"{name}_{version.replace(':', '%3a')}_amd64.deb"
    if not deb.exists():
        _run(["apt-get", "download", f"{name}={version}"], cwd=cache)
    if not deb.exists():
        raise GuestBuildError(f"apt-get download produced no {deb.name} in {cache}")
    return KernelPackage(name, version, deb)


@dataclass(frozen=True)
class KernelTree:
    """The parts of an extracted kernel package the guest needs."""

    release: str
    vmlinuz: Path
    config: Path
    modules: Path


def extract_kernel(deb: Path, into: Path) -> KernelTree:
    _run(["dpkg-deb", "-x", str(deb), str(into)])
    images = sorted((into / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise GuestBuildError(f"{deb.name}: expected one boot/vmlinuz-*, found {len(images)}")
    release = images[0].name.removeprefix("vmlinuz-")
    config = into / "boot" / f"config-{release}"
    # Debian 12 ships /lib/modules; merged-/usr packages (Debian 13) /usr/lib/modules.
    for modules in (into / "lib/modules" / release, into / "usr/lib/modules" / release):
        if modules.is_dir():
            break
    if not config.is_file() or not modules.is_dir():
        raise GuestBuildError(f"{deb.name}: no config or modules for {release}")
    return KernelTree(release, images[0], config, modules)


def kernel_config(path: Path) -> dict[str, str]:
    """``CONFIG_X=value`` lines of a kernel config (unset symbols are absent)."""
    config: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            config[key] = value
    return config


# ---- drivers: built in, or modules in the initramfs ----------------------------------

#: Config symbol → module, for what a virtio disk on the pc machine's PCI bus needs.
#: virtio_pci is not a modinfo dependency of virtio_blk (it is the transport), hence
#: both roots.
_DISK_DRIVERS = (("CONFIG_VIRTIO_PCI", "virtio_pci"), ("CONFIG_VIRTIO_BLK", "virtio_blk"))
#: What turns the ACPI power button (QEMU's ``system_powerdown``) into KEY_POWER on
#: ``/dev/input/event*``: the ACPI button driver registers the input device, evdev
#: gives it a node. (The old /proc/acpi/event interface is gone from modern kernels.)
_POWER_DRIVERS = (("CONFIG_ACPI_BUTTON", "button"), ("CONFIG_INPUT_EVDEV", "evdev"))

Module = tuple[str, bytes]


def _module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def _read_module(path: Path) -> bytes:
    """A module's ELF bytes; busybox insmod wants them uncompressed."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko"):
        return data
    raise GuestBuildError(f"unsupported module compression: {path.name}")


def driver_modules(tree: KernelTree, drivers: Sequence[tuple[str, str]]) -> list[Module]:
    """Modules to insmod, dependencies first, for ``drivers`` ((config symbol, module)
    pairs); built-in drivers need none, unset ones are a GuestBuildError."""
    config = kernel_config(tree.config)
    index = {_module_name(p): p for p in tree.modules.rglob("*.ko*")}
    ordered: dict[str, bytes] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in chain or name not in index:
            raise GuestBuildError(f"module {name} missing or cyclic ({' -> '.join(chain)})")
        data = _read_module(index[name])
        for dep in modinfo_depends(data):
            visit(dep, (*chain, name))
        ordered[name] = data  # post-order: after everything it depends on

    for symbol, module in drivers:
        value = config.get(symbol)
        if value == "m":
            visit(module, ())
        elif value != "y":
            raise GuestBuildError(f"kernel {tree.release} lacks {symbol}")
    return list(ordered.items())


def disk_modules(tree: KernelTree) -> list[Module]:
    """Modules for a virtio disk, dependencies first; [] if all built in."""
    return driver_modules(tree, _DISK_DRIVERS)


def power_modules(tree: KernelTree) -> list[Module]:
    """Modules for the ACPI power button as an evdev device; [] if all built in."""
    return driver_modules(tree, _POWER_DRIVERS)


# ---- initramfs -----------------------------------------------------------------------


class Cpio:
    """A cpio "newc" archive, as the kernel unpacks initramfs.

    Written here rather than with cpio(1) so ownership, modes and the /dev/console
    node need no root and the result is reproducible (all mtimes 0).
    """

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 0

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def build_initramfs(
    busybox: bytes,
    workload: bytes,
    init: bytes,
    disk: Sequence[Module],
    power: Sequence[Module] = (),
) -> bytes:
    """The gzipped initramfs: busybox, /init, the workload and the kernel modules.

    Modules go to ``lib/modules/NAME.ko``; ``lib/modules/disk.order`` and
    ``power.order`` list each set in insmod order (a module in both is stored once).
    """
    cpio = Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
        cpio.directory(d)
    # The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    cpio.chardev("dev/console", 5, 1)
    cpio.file("init", init, 0o755)
    cpio.file("bin/busybox", busybox, 0o755)
    for applet in BUSYBOX_APPLETS:
        cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("bin/pvworkload", workload, 0o755)
    for name, data in dict([*disk, *power]).items():
        cpio.file(f"lib/modules/{name}.ko", data)
    for set_name, modules in (("disk", disk), ("power", power)):
        order = "".join(f"{n}.ko\n" for n, _ in modules).encode()
        cpio.file(f"lib/modules/{set_name}.order", order)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def find_busybox() -> Path:
    """busybox-static's binary (a dynamic busybox would not run in the initramfs)."""
    for path in BUSYBOX_CANDIDATES:
        if path.is_file() and elf_is_static(path.read_bytes()):
            return path
    raise GuestBuildError("no static busybox found (apt-get install busybox-static)")


def compile_workload(output: Path, source: Path = WORKLOAD_SOURCE) -> Path:
    """``gcc -static -O2`` the workload; static so it needs nothing in the initramfs."""
    _run(["gcc", *WORKLOAD_CFLAGS, "-o", str(output), str(source)])
    return output


# ---- build ---------------------------------------------------------------------------


def _sources(manifest: dict[str, object], directory: Path) -> list[Path]:
    """Inputs whose change makes a build stale."""
    sources = [WORKLOAD_SOURCE, INIT_SOURCE, Path(str(manifest.get("busybox", "")))]
    deb = directory / "cache" / str(manifest.get("kernel_deb", ""))
    return [*sources, deb] if deb.is_file() else sources


def _image(directory: Path, manifest: dict[str, object], *, rebuilt: bool) -> GuestImage:
    return GuestImage(
        kernel=directory / KERNEL_FILE,
        initrd=directory / INITRD_FILE,
        manifest=directory / MANIFEST_FILE,
        kernel_package=str(manifest["kernel_package"]),
        kernel_version=str(manifest["kernel_package_version"]),
        built_at=str(manifest["built_at"]),
        rebuilt=rebuilt,
    )


def load_guest(directory: Path | None = None) -> GuestImage | None:
    """The guest built in ``directory`` if it is complete and current, else None."""
    directory = directory or guest_dir()
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        outputs = [directory / f for f in (KERNEL_FILE, INITRD_FILE, MANIFEST_FILE)]
        built = min(p.stat().st_mtime for p in outputs)
        newest_source = max(p.stat().st_mtime for p in _sources(manifest, directory))
    except (OSError, ValueError):
        return None
    if manifest.get("format") != BUILD_FORMAT or built < newest_source:
        return None
    try:
        return _image(directory, manifest, rebuilt=False)
    except KeyError:
        return None


def build_guest(dest: Path | None = None, *, force: bool = False) -> GuestImage:
    """Build the guest into ``dest`` (default :func:`guest_dir`) unless it is current."""
    directory = Path(dest) if dest is not None else guest_dir()
    _make_dir(directory)
    with _build_lock(directory):
        if not force and (image := load_guest(directory)) is not None:
            return image
        return _build(directory)


def _build(directory: Path) -> GuestImage:
    cache = directory / "cache"
    _make_dir(cache)
    package = fetch_kernel_package(cache)
    busybox = find_busybox()
    with tempfile.TemporaryDirectory(prefix=".build-", dir=directory) as tmp:
        tree = extract_kernel(package.deb, Path(tmp) / "pkg")
        disk, power = disk_modules(tree), power_modules(tree)
        workload = compile_workload(Path(tmp) / "pvworkload")
        initrd = build_initramfs(
            busybox.read_bytes(), workload.read_bytes(), INIT_SOURCE.read_bytes(), disk, power
        )
        _install(directory / KERNEL_FILE, tree.vmlinuz.read_bytes())
    _install(directory / INITRD_FILE, initrd)
    manifest: dict[str, object] = {
        "format": BUILD_FORMAT,
        "kernel_package": package.name,
        "kernel_package_version": package.version,
        "kernel_release": tree.release,
        "kernel_deb": package.deb.name,
        "virtio_blk": "module" if disk else "builtin",
        "power_button": "module" if power else "builtin",
        "modules": list(dict.fromkeys(name for name, _ in [*disk, *power])),
        "disk_modules": [name for name, _ in disk],
        "power_modules": [name for name, _ in power],
        "busybox": str(busybox),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Written last: a manifest means the kernel and initramfs beside it are complete.
    _install(directory / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    return _image(directory, manifest, rebuilt=True)


# ---- domain XML ----------------------------------------------------------------------


def _check_int(name: str, value: int, minimum: int) -> None:
    # bool is an int subclass; True as a memory size is a caller bug, not 1 MiB.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GuestConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def max_dirty_mb(memory_mib: int) -> int:
    """The largest working set a guest of ``memory_mib`` runs without the OOM killer."""
    return memory_mib - GUEST_OVERHEAD_BASE_MIB - memory_mib // GUEST_OVERHEAD_DIVISOR


def validate_params(name: str, memory_mib: int, dirty_mb: int, dirty_rate: int) -> None:
    """Raise GuestConfigError unless these make a guest that can boot and run."""
    if not name or "/" in name or any(ord(c) < 32 for c in name):
        raise GuestConfigError(f"invalid domain name {name!r}")
    _check_int("memory", memory_mib, MIN_MEMORY_MIB)
    _check_int("dirty-mb", dirty_mb, 0)
    _check_int("dirty-rate", dirty_rate, 0)
    if dirty_mb > max_dirty_mb(memory_mib):
        raise GuestConfigError(
            f"dirty-mb ({dirty_mb}) too large for memory {memory_mib} MiB: the kernel "
            f"needs the rest; at most {max(max_dirty_mb(memory_mib), 0)} MiB can be dirtied"
        )


def kernel_cmdline(
    dirty_mb: int = 0,
    dirty_rate: int = 0,
    *,
    disk: bool = False,
    disk_mb: int | None = None,
    disk_rate: int | None = None,
    poweroff_after: int = 0,
) -> str:
    """The guest's kernel command line (the workload reads its ``pvw.*`` settings).

    ``poweroff_after``: the guest powers itself off that many seconds after READY
    (0: never).
    """
    _check_int("poweroff-after", poweroff_after, 0)
    args = [*BASE_CMDLINE, f"pvw.dirty_mb={dirty_mb}", f"pvw.dirty_rate={dirty_rate}"]
    if disk:
        args.append(f"pvw.disk={GUEST_DISK_DEV}")
        if disk_mb is not None:
            args.append(f"pvw.disk_mb={disk_mb}")
        if disk_rate is not None:
            args.append(f"pvw.disk_rate={disk_rate}")
    if poweroff_after:
        args.append(f"pvw.poweroff_after={poweroff_after}")
    return " ".join(args)


def detect_disk_format(path: Path) -> str:
    """raw or qcow2, as ``qemu-img info`` sees it (``-U``: the image may be in use)."""
    if not path.exists():
        raise GuestConfigError(f"disk {path} does not exist (give its format explicitly)")
    try:
        out = _run(["qemu-img", "info", "-U", "--output=json", str(path)])
        fmt = json.loads(out).get("format")
    except (GuestBuildError, ValueError) as exc:
        raise GuestConfigError(f"cannot inspect disk {path}: {exc}") from exc
    if fmt not in DISK_FORMATS:
        raise GuestConfigError(f"disk {path} has format {fmt!r}; supported: raw, qcow2")
    return str(fmt)


def _attr(value: str) -> str:
    return escape(value, {"'": "&apos;", '"': "&quot;"})


# libvirt's own formatting style (single quotes, 2-space indent); values are escaped.
# <acpi/>: as in libvirt, without it QEMU runs with acpi=off, leaving the guest no
# power button (system_powerdown) and no way to power itself off (ACPI S5).
_DISK_TEMPLATE = """\
    <disk type='file' device='disk'>
      <driver name='qemu' type='{format}' cache='none'/>
      <source file='{path}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
"""
_DOMAIN_TEMPLATE = """\
<domain type='{type}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
{disk}\
    <serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def domain_xml(
    name: str,
    *,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    dirty_mb: int = 0,
    dirty_rate: int = 0,
    disk: Path | str | None = None,
    guest: GuestImage | None = None,
    domain_type: str = "qemu",
    disk_format: str | None = None,
    poweroff_after: int = 0,
) -> str:
    """A libvirt domain XML booting the test guest (the subset pyvirt's parser takes).

    ``guest`` defaults to the files in :func:`guest_dir` (not built here); the disk's
    format is detected with qemu-img unless ``disk_format`` is given. With
    ``poweroff_after`` > 0 the guest powers itself off that many seconds after READY.
    """
    validate_params(name, memory_mib, dirty_mb, dirty_rate)
    cmdline = kernel_cmdline(
        dirty_mb, dirty_rate, disk=disk is not None, poweroff_after=poweroff_after
    )
    if domain_type not in DOMAIN_TYPES:
        raise GuestConfigError(f"domain type must be one of {', '.join(DOMAIN_TYPES)}")
    if disk_format is not None and disk_format not in DISK_FORMATS:
        raise GuestConfigError(f"disk format must be one of {', '.join(DISK_FORMATS)}")
    directory = guest_dir()
    disk_xml = ""
    if disk is not None:
        path = Path(os.path.abspath(disk))
        fmt = disk_format or detect_disk_format(path)
        disk_xml = _DISK_TEMPLATE.format(format=_attr(fmt), path=_attr(str(path)))
    return _DOMAIN_TEMPLATE.format(
        type=_attr(domain_type),
        name=escape(name),
        memory=memory_mib,
        kernel=escape(str(guest.kernel if guest else directory / KERNEL_FILE)),
        initrd=escape(str(guest.initrd if guest else directory / INITRD_FILE)),
        cmdline=escape(cmdline),
        disk=disk_xml,
    )
