"""pyvirtd start-up: configuration errors name file and line; one daemon per run_dir."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.functional.daemon_util import run, running_daemon, write_configs


def pyvirtd(config: Path) -> tuple[int, str]:
    proc = run([sys.executable, "-m", "pyvirt.daemon", "--config", str(config)], timeout=30)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(("line", "needle"), [
    ("max_workers = 1\nbogus_key = 3", "pyvirtd.conf:2: unknown key 'bogus_key'"),
    ('auth_tcp = "sasl"', 'pyvirtd.conf:1: auth_tcp = "sasl" is not supported yet'),
    ("max_workers = -2", "pyvirtd.conf:1:"),
    ('max_clients = "many"', "pyvirtd.conf:1:"),
    ("min_workers = 9\nmax_workers = 3", "pyvirtd.conf:2:"),
    ('key_files = [ "/k" ]', "pyvirtd.conf:1: 'key_files' is not supported by pyvirtd yet"),
    ('tls_priority = "SECURE256"', "pyvirtd.conf:1: tls_priority: GnuTLS priority 'SECURE256'"),
])
def test_bad_config_refused_with_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    config = tmp_path / "pyvirtd.conf"
    config.write_text(line + "\n")
    rc, err = pyvirtd(config)
    assert rc == 1
    assert err.startswith("error: ") and needle in err, err
    assert str(config) in err


def test_bad_qemu_conf_refused(tmp_path: Path) -> None:
    config = write_configs(tmp_path, {}, {"migration_port_min": 60000,
                                          "migration_port_max": 50000})
    rc, err = pyvirtd(config)
    assert rc == 1 and "qemu.conf:2:" in err, err


def test_second_daemon_on_same_run_dir_refused() -> None:
    with running_daemon(emulator="fake") as daemon:
        config = daemon.root / "pyvirtd.conf"
        rc, err = pyvirtd(config)
        assert rc == 1 and "another pyvirtd is running" in err, err
        assert daemon.proc.poll() is None


def test_missing_config_file(tmp_path: Path) -> None:
    rc, err = pyvirtd(tmp_path / "nope.conf")
    assert rc == 1 and "nope.conf" in err

