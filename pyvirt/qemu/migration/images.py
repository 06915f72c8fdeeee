"""Destination disk images of a storage migration: check, pre-create, remove.

libvirt pre-creates a missing image only inside a storage pool; pyvirt has no pools, so the
destination pre-creates any missing file image itself, with what the source's cookie says
(pyvirt's attributes on ``<nbd><disk>``: format, allocation, backing file)::

    image exists?  ──yes──► same virtual size (and format)?  ──yes──► use it
         │                        └──no──► refuse before anything moves
         no ──► directory exists and has room for the data?  ──yes──► qemu-img create
                                   └──no──► refuse ("not enough free space")

qcow2 stays qcow2, raw stays raw and sparse (``qemu-img create`` allocates nothing);
``--copy-storage-inc`` creates the top image over the same backing file (which must exist:
the backing chain is shared). :func:`decide` is pure; the rest runs ``qemu-img``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from enum import Enum

from pyvirt import safefs
from pyvirt.errors import InvalidArgError, OperationFailedError, OperationInvalidError

log = logging.getLogger(__name__)

QEMU_IMG = "qemu-img"
IMG_TIMEOUT_S = 60.0
#: image formats a storage copy pre-creates (what the argv builder supports for disks)
IMAGE_FORMATS = frozenset({"raw", "qcow2"})


@dataclass(frozen=True)
class ImageSpec:
    """What the destination needs for one copied disk."""

    target: str
    path: str
    format: str
    capacity: int
    #: bytes the source holds (what the copy will write at most, for the space check)
    allocation: int = 0
    backing: str | None = None
    backing_format: str | None = None


@dataclass(frozen=True)
class ImageInfo:
    """``qemu-img info`` of an existing image (the parts that matter here)."""

    format: str
    virtual_size: int
    backing: str | None = None


class Decision(Enum):
    USE = "use"
    CREATE = "create"


def decide(spec: ImageSpec, existing: ImageInfo | None, free_bytes: int | None,
           incremental: bool) -> Decision:
    """Use the existing image, create it, or raise why neither is possible."""
    if existing is not None:
        if existing.virtual_size != spec.capacity:
            raise OperationInvalidError(
                f"disk {spec.target}: the destination image {spec.path} has a virtual size "
                f"of {existing.virtual_size} bytes, the source's has {spec.capacity}")
        if existing.format != spec.format:
            raise OperationInvalidError(
                f"disk {spec.target}: the destination image {spec.path} is {existing.format}, "
                f"the source's is {spec.format}")
        return Decision.USE
    if free_bytes is None:
        raise OperationFailedError(
            f"disk {spec.target}: cannot pre-create {spec.path}: its directory does not exist")
    if incremental and not spec.backing:
        raise OperationInvalidError(
            f"disk {spec.target}: --copy-storage-inc copies only the top image, but the "
            f"source image has no backing file and {spec.path} does not exist here")
    if spec.allocation > free_bytes:
        raise OperationFailedError(
            f"disk {spec.target}: not enough free space for {spec.path} on the destination: "
            f"the copy needs {spec.allocation} bytes, the filesystem has {free_bytes}")
    return Decision.CREATE


def create_argv(spec: ImageSpec, incremental: bool) -> list[str]:
    """The ``qemu-img create`` command for ``spec`` (top over the backing file for -inc)."""
    argv = [QEMU_IMG, "create", "-q", "-f", spec.format]
    if incremental and spec.backing:
        argv += ["-b", spec.backing, "-F", spec.backing_format or "raw"]
    return [*argv, "--", spec.path, str(spec.capacity)]


async def _run(argv: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), IMG_TIMEOUT_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise OperationFailedError(f"{' '.join(argv[:2])} failed: "
                                   f"{err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


async def image_info(path: str) -> ImageInfo | None:
    """The image at ``path``, or None when there is none."""
    if not os.path.exists(path):
        return None
    out = await _run([QEMU_IMG, "info", "-U", "--output=json", "--", path])
    data = json.loads(out)
    return ImageInfo(str(data.get("format", "raw")), int(data.get("virtual-size", 0)),
                     data.get("backing-filename"))


def free_space(path: str) -> int | None:
    """Bytes free (for root: pyvirtd runs as root) in the directory of ``path``."""
    try:
        stat = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return None
    return stat.f_bfree * stat.f_frsize


def check_spec(spec: ImageSpec) -> None:
    """Paths from the definition and the source's cookie: absolute and normalized, formats
    qemu-img knows by these names only (docs/security.md)."""
    try:
        safefs.check_path(spec.path, f"disk {spec.target}: image path")
        if spec.backing is not None:
            safefs.check_path(spec.backing, f"disk {spec.target}: backing file")
    except safefs.UnsafePathError as exc:
        raise InvalidArgError(str(exc)) from None
    for fmt in (spec.format, spec.backing_format):
        if fmt is not None and fmt not in IMAGE_FORMATS:
            raise InvalidArgError(f"disk {spec.target}: image format '{safefs.shown(fmt)}' "
                                  "is not supported for a storage copy")


async def prepare(spec: ImageSpec, incremental: bool,
                  existing: ImageInfo | None) -> safefs.CreatedFile | None:
    """Check or create the image of ``spec`` (``existing``: its :func:`image_info`); the
    record of the file when this call created it."""
    check_spec(spec)
    decision = decide(spec, existing, free_space(spec.path), incremental)
    if decision is Decision.USE:
        return None
    if incremental and spec.backing and not os.path.exists(spec.backing):
        raise OperationFailedError(
            f"disk {spec.target}: the backing file {spec.backing} does not exist on the "
            "destination (--copy-storage-inc needs the backing chain on shared storage)")
    log.info("pre-creating %s (%s, %d bytes) for disk %s", spec.path, spec.format,
             spec.capacity, spec.target)
    if os.path.lexists(spec.path):  # e.g. a dangling symlink: never create through it
        raise OperationFailedError(f"disk {spec.target}: {spec.path} exists but is not an "
                                   "image")
    try:
        await _run(create_argv(spec, incremental))
    except BaseException:
        _remove_partial(spec.path)  # it did not exist before: what is there now is ours
        raise
    try:
        return safefs.CreatedFile.of(spec.path)
    except (OSError, safefs.UnsafePathError) as exc:
        raise OperationFailedError(f"disk {spec.target}: cannot record the created image "
                                   f"{spec.path}: {exc}") from None


def _remove_partial(path: str) -> None:
    if os.path.lexists(path):
        with contextlib.suppress(OSError, safefs.UnsafePathError):
            remove([safefs.CreatedFile.of(path)])


def remove(created: list[safefs.CreatedFile] | tuple[safefs.CreatedFile, ...]) -> None:
    """Remove images this daemon pre-created, if each is still the file it created."""
    for record in created:
        if safefs.remove_created(record):
            log.info("removed pre-created image %s", record.path)
