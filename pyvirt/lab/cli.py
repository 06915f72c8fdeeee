"""``pyvirt-lab``: the test lab's command line.

Commands are registered by functions in :data:`REGISTRARS`; each adds its subparser(s)
and sets ``handler`` (``Callable[[argparse.Namespace], int]``) with ``set_defaults``.
Adding a command (``up``, ``down``, ``status``, ``exec``, ...) means writing one such
function and appending it there. Handlers raise :class:`pyvirt.lab.guest.GuestError`
(or ``ValueError``/``OSError``) for user-facing failures; :func:`main` prints those as
``error: ...`` and exits 1. Usage errors do the same.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from pyvirt.lab import guest, hosts

Handler = Callable[[argparse.Namespace], int]
Registrar = Callable[["argparse._SubParsersAction[ErrorParser]"], None]


class ErrorParser(argparse.ArgumentParser):
    """argparse with the lab's error convention: ``error: ...`` on stderr, exit 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}: {value}")
        return value

    return parse


# ---- guest -------------------------------------------------------------------------


def _guest_build(args: argparse.Namespace) -> int:
    image = guest.build_guest(force=args.force)
    state = "built" if image.rebuilt else "up to date"
    print(f"guest {state}: {image.kernel_package} {image.kernel_version}", file=sys.stderr)
    print(f"kernel {image.kernel}")
    print(f"initrd {image.initrd}")
    print(f"manifest {image.manifest}")
    return 0


def _guest_xml(args: argparse.Namespace) -> int:
    xml = guest.domain_xml(
        args.name,
        memory_mib=args.memory,
        dirty_mb=args.dirty_mb,
        dirty_rate=args.dirty_rate,
        disk=args.disk,
        domain_type=args.type,
        disk_format=args.disk_format,
        poweroff_after=args.poweroff_after,
    )
    sys.stdout.write(xml)
    return 0


def register_guest(sub: argparse._SubParsersAction[ErrorParser]) -> None:
    p = sub.add_parser("guest", help="build the test guest or print its domain XML")
    gsub = p.add_subparsers(dest="guest_command", required=True, metavar="COMMAND")
    build = gsub.add_parser(
        "build",
        help="build kernel + initramfs into $PYVIRT_GUEST_DIR (default /var/cache/pyvirt/guest)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.set_defaults(handler=_guest_build)
    _add_guest_xml(gsub)


def _add_guest_xml(gsub: argparse._SubParsersAction[ErrorParser]) -> None:
    xml = gsub.add_parser("xml", help="print a libvirt domain XML for the test guest")
    xml.add_argument("name", metavar="NAME", help="domain name")
    xml.add_argument(
        "--memory",
        type=_int_at_least(guest.MIN_MEMORY_MIB),
        metavar="MiB",
        default=guest.DEFAULT_MEMORY_MIB,
        help="guest RAM (default %(default)s)",
    )
    xml.add_argument(
        "--dirty-mb",
        type=_int_at_least(0),
        default=0,
        metavar="N",
        help="working set the workload dirties, MiB (default 0: none)",
    )
    xml.add_argument(
        "--dirty-rate",
        type=_int_at_least(0),
        default=0,
        metavar="R",
        help="dirtying rate, MiB/s (default 0: as fast as possible)",
    )
    xml.add_argument(
        "--disk",
        type=Path,
        metavar="PATH",
        help="attach this raw/qcow2 image as vda; the workload verifies it",
    )
    xml.add_argument(
        "--disk-format",
        choices=guest.DISK_FORMATS,
        help="skip detection with qemu-img (e.g. the image is in another host's mount namespace)",
    )
    xml.add_argument(
        "--poweroff-after",
        type=_int_at_least(0),
        default=0,
        metavar="S",
        help="power the guest off S seconds after its workload is ready (default 0: never)",
    )
    xml.add_argument(
        "--type",
        choices=guest.DOMAIN_TYPES,
        default="qemu",
        help="domain type (default %(default)s)",
    )
    xml.set_defaults(handler=_guest_xml)


#: Every command group; append new registrars here.
REGISTRARS: list[Registrar] = [register_guest, hosts.register_commands]


def build_parser() -> ErrorParser:
    parser = ErrorParser(prog="pyvirt-lab", description="pyvirt's test lab")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (guest.GuestError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
