"""The log writer: virtlogd's rotation, whole lines, bounded files, a process that drains
pipes until QEMU closes them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyvirt.qemu import logwriter
from pyvirt.qemu.logpipes import WRITER
from pyvirt.qemu.logwriter import RotatingFile


def files(path: Path) -> dict[str, int]:
    """Name → size of the log and its backups."""
    return {p.name: p.stat().st_size for p in sorted(path.parent.iterdir())
            if p.name == path.name or p.name.startswith(path.name + ".")}


def numbered_lines(first: int, count: int, width: int = 20) -> bytes:
    return b"".join(f"{n:0{width - 1}d}\n".encode() for n in range(first, first + count))


def test_rotates_at_max_size_keeping_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "g.log"
    writer = RotatingFile(str(log), max_size=100, max_backups=2)
    for start in range(0, 50, 5):  # 50 lines of 20 bytes, 5 per write
        writer.write(numbered_lines(start, 5))
    writer.close()
    # a file that reaches max_size is rotated at once (virtlogd's rule): a fresh one remains
    assert files(log) == {"g.log": 0, "g.log.0": 100, "g.log.1": 100}
    # the newest 10 lines, oldest first across .1 and .0, nothing missing
    text = log.with_name("g.log.1").read_bytes() + log.with_name("g.log.0").read_bytes()
    assert text == numbered_lines(40, 10)


def test_a_write_crossing_the_cap_is_cut_after_its_last_newline(tmp_path: Path) -> None:
    log = tmp_path / "g.log"
    writer = RotatingFile(str(log), max_size=100, max_backups=1)
    writer.write(b"a" * 70 + b"\n" + b"b" * 29 + b"\n" + b"c" * 10)  # 111 bytes
    writer.close()
    assert log.with_name("g.log.0").read_bytes() == b"a" * 70 + b"\n"
    assert log.read_bytes() == b"b" * 29 + b"\n" + b"c" * 10


def test_a_line_longer_than_the_cap_is_cut_at_the_cap(tmp_path: Path) -> None:
    log = tmp_path / "g.log"
    writer = RotatingFile(str(log), max_size=64, max_backups=3)
    writer.write(b"x" * 200)
    writer.close()
    assert files(log) == {"g.log": 8, "g.log.0": 64, "g.log.1": 64, "g.log.2": 64}


def test_no_backups_truncates_in_place(tmp_path: Path) -> None:
    log = tmp_path / "g.log"
    writer = RotatingFile(str(log), max_size=50, max_backups=0)
    writer.write(numbered_lines(0, 6, width=10))
    writer.close()
    assert files(log) == {"g.log": 10}
    assert log.read_bytes() == numbered_lines(5, 1, width=10)


def test_an_oversized_file_is_rotated_at_open_and_appended_otherwise(tmp_path: Path) -> None:
    log = tmp_path / "g.log"
    log.write_bytes(b"old\n" * 30)
    RotatingFile(str(log), max_size=100, max_backups=1).close()
    assert files(log) == {"g.log": 0, "g.log.0": 120}
    log.write_bytes(b"kept\n")
    writer = RotatingFile(str(log), max_size=100, max_backups=1)
    writer.write(b"new\n")
    writer.close()
    assert log.read_bytes() == b"kept\nnew\n"


def test_truncate_mode(tmp_path: Path) -> None:
    log = tmp_path / "g.log"
    log.write_bytes(b"previous boot\n")
    writer = RotatingFile(str(log), max_size=100, max_backups=1, truncate=True)
    writer.write(b"this boot\n")
    writer.close()
    assert log.read_bytes() == b"this boot\n"


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (tmp_path / "g.log").symlink_to(victim)
    with pytest.raises(OSError):
        RotatingFile(str(tmp_path / "g.log"), max_size=100, max_backups=1)
    assert victim.read_bytes() == b"precious\n"


def test_a_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    log = tmp_path / "g.log"
    first = RotatingFile(str(log), max_size=100, max_backups=1)
    first.write(b"first\n")
    opened: list[RotatingFile] = []
    thread = threading.Thread(target=lambda: opened.append(
        RotatingFile(str(log), max_size=100, max_backups=1)))
    thread.start()
    time.sleep(0.2)
    assert not opened, "the second writer must wait for the lock"
    first.write(b"x" * 99)  # rotates: the waiting writer must follow to the new file
    first.close()
    thread.join(5)
    assert opened
    opened[0].write(b"second\n")
    opened[0].close()
    # (the cut looks for a newline in the one write that crosses the cap, as virtlogd)
    assert log.with_name("g.log.0").read_bytes() == b"first\n" + b"x" * 94
    assert log.read_bytes() == b"x" * 5 + b"second\n"


@pytest.mark.parametrize("path", ["/dev/null", "/dev/full"])
def test_only_regular_files(path: str) -> None:
    with pytest.raises(OSError, match="not a regular file"):
        RotatingFile(path, max_size=100, max_backups=1)
    assert os.path.exists(path) and not os.path.exists(path + ".0")


def test_a_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "g.log")
    started = time.monotonic()
    with pytest.raises(OSError):
        RotatingFile(str(tmp_path / "g.log"), max_size=100, max_backups=1)
    assert time.monotonic() - started < 1


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that fills up."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp_path)],
                   check=True)
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", str(tmp_path)], check=False)


def test_a_full_disk_drops_data_and_says_so_later(small_fs: Path) -> None:
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"b" * 32 * 1024)
    log = small_fs / "g.log"
    writer = RotatingFile(str(log), max_size=1 << 20, max_backups=0)
    writer.write(b"x" * 100_000 + b"\n")  # more than the filesystem holds: no exception
    lost = writer.dropped
    assert 0 < lost < 100_001
    ballast.unlink()  # room again
    writer.write(b"back\n")
    writer.close()
    assert log.read_bytes().endswith(
        f"pyvirt log writer: {lost} bytes dropped (No space left on device)\nback\n".encode())


def test_the_writer_process_drains_pipes_until_end_of_file(tmp_path: Path) -> None:
    # Checks: two pipes to two files, 6 MB through each, capped at 1 MiB with 2 backups;
    # the process exits by itself when the write ends close, the newest data all there.
    qemu_log, serial_log = tmp_path / "g.log", tmp_path / "g-serial0.log"
    (r1, w1), (r2, w2) = os.pipe(), os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(WRITER), "--max-size", str(1 << 20),
         "--max-backups", "2", f"{r1}:a:{qemu_log}", f"{r2}:t:{serial_log}"],
        pass_fds=[r1, r2])
    try:
        os.close(r1)
        os.close(r2)
        lines = numbered_lines(0, 300_000)  # 6 MB
        for offset in range(0, len(lines), 65536):
            os.write(w1, lines[offset:offset + 65536])
            os.write(w2, lines[offset:offset + 65536])
        os.close(w1)
        os.close(w2)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    for log in (qemu_log, serial_log):
        sizes = files(log)
        assert sorted(sizes) == [log.name, log.name + ".0", log.name + ".1"]
        assert all(size <= 1 << 20 for size in sizes.values())
        tail = b"".join(log.with_name(n).read_bytes() for n in (log.name + ".1",
                                                                 log.name + ".0", log.name))
        assert lines.endswith(tail) and len(tail) > 2 << 20


def test_an_unwritable_log_is_drained_and_reported(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    qemu_read, qemu_write = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(WRITER), f"{qemu_read}:a:{tmp_path}/g.log",
         f"{read_end}:a:{tmp_path}/missing-dir/serial.log"], pass_fds=[read_end, qemu_read])
    os.close(read_end)
    os.close(qemu_read)
    os.write(write_end, b"x" * 200_000)  # more than a pipe holds: must be drained
    os.close(write_end)
    os.close(qemu_write)
    assert proc.wait(10) == 0
    assert "cannot write" in (tmp_path / "g.log").read_text()


def test_bad_limits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        RotatingFile(str(tmp_path / "g.log"), max_size=0, max_backups=1)
    assert logwriter.DEFAULT_MAX_SIZE == 2097152 and logwriter.DEFAULT_MAX_BACKUPS == 3
