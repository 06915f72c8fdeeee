"""``pyvirtd [--config FILE] [--listen] [--verbose]``: the command line of the daemon."""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import logging
import logging.handlers
import os
import resource
import sys

from pyvirt.conf.daemon_conf import (
    DEFAULT_CONFIG_PATH,
    LOG_LEVEL_TO_PYTHON,
    DaemonConfig,
    LogFilter,
    LogOutput,
    default_log_outputs,
    load_daemon_config,
)
from pyvirt.conf.qemu_conf import load_qemu_config
from pyvirt.errors import ConfigUnsupportedError, VirtError

log = logging.getLogger("pyvirt.daemon")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pyvirtd", description="pyvirt daemon")
    parser.add_argument("-f", "--config", help=f"configuration file (default "
                        f"{DEFAULT_CONFIG_PATH} when it exists)")
    parser.add_argument("-l", "--listen", action="store_true",
                        help="listen on the network: TLS (listen_tls, default on) and TCP "
                        "(listen_tcp, default off) as the config says")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser.parse_args(argv)


def load_configs(path: str | None) -> tuple[DaemonConfig, object]:
    if path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    daemon_cfg = load_daemon_config(path)
    qemu_cfg = load_qemu_config(daemon_cfg.qemu_conf, daemon=daemon_cfg, allow_missing=True)
    return daemon_cfg, qemu_cfg


class _FilterByName(logging.Filter):
    """libvirt's log_filters: a logger matching a filter logs at that filter's level."""

    def __init__(self, filters: tuple[LogFilter, ...], default_level: int) -> None:
        super().__init__()
        self.filters_ = filters
        self.default = default_level

    def filter(self, record: logging.LogRecord) -> bool:
        for flt in self.filters_:
            if fnmatch.fnmatch(record.name, f"*{flt.match}*"):
                return record.levelno >= LOG_LEVEL_TO_PYTHON[flt.level]
        return record.levelno >= self.default


def setup_logging(cfg: DaemonConfig, verbose: bool) -> None:
    level = logging.DEBUG if verbose else LOG_LEVEL_TO_PYTHON[cfg.log_level]
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    fmt = logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    for output in default_log_outputs(cfg, daemonized=not sys.stderr.isatty()):
        handler = _handler_for(output)
        handler.setFormatter(fmt)
        handler.addFilter(_FilterByName(cfg.log_filters, level if verbose else
                                        LOG_LEVEL_TO_PYTHON[output.level]))
        root.addHandler(handler)


def _handler_for(output: LogOutput) -> logging.Handler:
    if output.kind == "file" and output.target:
        os.makedirs(os.path.dirname(output.target), exist_ok=True)
        return logging.FileHandler(output.target, errors="backslashreplace")
    if output.kind == "syslog":
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.ident = f"{output.target or 'pyvirtd'}: "
        return handler
    return logging.StreamHandler(sys.stderr)


def fit_open_files(cfg: DaemonConfig) -> int:
    """Make RLIMIT_NOFILE fit ``max_clients`` plus ``nofile_reserve``; returns the soft limit.

    Every client is a file descriptor, and so are QEMU monitors, pidfds, logs, admin and
    peer connections (the reserve).  A soft limit below the need is raised, to the need and
    no higher (QEMU and other children inherit it, and some programs walk every possible
    descriptor at start); a hard limit below it refuses the configuration, naming the keys,
    instead of failing later with EMFILE under load."""
    need = cfg.max_clients + cfg.nofile_reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and need > hard:
        raise ConfigUnsupportedError(
            f"max_clients ({cfg.max_clients}) plus nofile_reserve ({cfg.nofile_reserve}) "
            f"need {need} file descriptors, more than the hard RLIMIT_NOFILE ({hard}); "
            f"lower max_clients or raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        log.info("raised RLIMIT_NOFILE from %d to %d (max_clients %d + nofile_reserve %d)",
                 soft, need, cfg.max_clients, cfg.nofile_reserve)
        return need
    return soft


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        daemon_cfg, qemu_cfg = load_configs(args.config)
    except VirtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    setup_logging(daemon_cfg, args.verbose)
    from pyvirt.conf.qemu_conf import QemuConfig
    from pyvirt.daemon.server import Daemon

    assert isinstance(qemu_cfg, QemuConfig)
    try:
        fit_open_files(daemon_cfg)
        daemon = Daemon(daemon_cfg, qemu_cfg, listen=args.listen)
        asyncio.run(daemon.run())
    except VirtError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
