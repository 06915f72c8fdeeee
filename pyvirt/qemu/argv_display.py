"""Graphics (VNC, SPICE) and video devices.

Ports are resolved by the driver before argv time (autoport allocation needs the host), so
a port that is still ``None``/``-1`` here is an internal error. Passwords never appear on
the command line: ``password=on`` (VNC) or leaving ticketing enabled (SPICE) makes QEMU
refuse clients until the driver sets the password over QMP after launch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyvirt.conf.domain import GraphicsDef, VideoDef
from pyvirt.errors import ConfigUnsupportedError, InternalError
from pyvirt.qemu.argv_common import Ctx, Props, device, keyval, options

VNC_BASE_PORT = 5900
#: qemu.conf's vnc_listen / spice_listen default
DEFAULT_LISTEN = "127.0.0.1"


def _port(g: GraphicsDef, port: int | None, what: str) -> int:
    if port is None or port == -1:
        raise InternalError(f"graphics port not allocated ({g.type} {what})")
    if not 0 < port < 65536:
        raise ConfigUnsupportedError(f"{g.type} {what} {port} is out of range")
    return port


def _listen(g: GraphicsDef) -> str:
    host = g.listen or DEFAULT_LISTEN
    # a bare IPv6 literal needs brackets before the ":display" suffix
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _vnc(g: GraphicsDef) -> list[str]:
    port = _port(g, g.port, "port")
    if port < VNC_BASE_PORT:
        raise ConfigUnsupportedError(f"vnc port {port} is below {VNC_BASE_PORT}")
    if g.tls_port is not None:
        raise ConfigUnsupportedError("vnc has no tlsPort")
    display = f"{_listen(g)}:{port - VNC_BASE_PORT}"
    return ["-vnc", keyval(display, [("password", True if g.passwd is not None else None)])]


def _spice(g: GraphicsDef) -> list[str]:
    port = _port(g, g.port, "port")
    tls = None if g.tls_port is None else _port(g, g.tls_port, "tlsPort")
    # spice's addr= takes a bare address, unlike the "[v6]:display" form of -vnc
    addr = (g.listen or DEFAULT_LISTEN).strip("[]")
    opts: Props = [("port", port), ("tls-port", tls), ("addr", addr),
                   ("disable-ticketing", None if g.passwd is not None else True),
                   ("seamless-migration", True)]
    return ["-spice", options(opts)]


GRAPHICS: dict[str, Callable[[GraphicsDef], list[str]]] = {"vnc": _vnc, "spice": _spice}


def build_graphics(ctx: Ctx) -> list[str]:
    graphics = ctx.dom.devices.graphics
    if not graphics:
        return ["-display", "none"]
    argv: list[str] = []
    seen: set[str] = set()
    for g in graphics:
        if g.type not in GRAPHICS:
            raise ConfigUnsupportedError(f"graphics type '{g.type}' is not supported")
        if g.type in seen:
            raise ConfigUnsupportedError(f"more than one {g.type} graphics device")
        seen.add(g.type)
        argv += GRAPHICS[g.type](g)
    return argv


# --- video -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoModel:
    #: QEMU driver as the primary (VGA-compatible) adapter
    primary: str
    #: QEMU driver as an additional adapter; None = cannot be secondary
    secondary: str | None
    #: memory properties from ``vram`` (KiB)
    memory: Callable[[VideoDef], Props]
    #: whether ``heads`` maps to ``max_outputs``
    multihead: bool


def _vga_memory(v: VideoDef) -> Props:
    return [("vgamem_mb", (v.vram or 16384) // 1024)]


def _cirrus_memory(v: VideoDef) -> Props:
    # like libvirt: cirrus keeps QEMU's fixed 4 MiB whatever vram says (its default
    # vram of 16384 KiB would otherwise change the guest-visible card)
    return []


def _qxl_memory(v: VideoDef) -> Props:
    # libvirt's defaults (KiB): ram 65536, vram 65536, vgamem 16384
    return [("ram_size", (v.ram or 65536) * 1024), ("vram_size", (v.vram or 65536) * 1024),
            ("vgamem_mb", (v.vgamem or 16384) // 1024)]


def _bochs_memory(v: VideoDef) -> Props:
    return [("vgamem", None if v.vram is None else v.vram * 1024)]


def _no_memory(v: VideoDef) -> Props:
    if v.vram:
        raise ConfigUnsupportedError(f"video model '{v.model}' has no vram setting")
    return []


VIDEO_MODELS: dict[str, VideoModel] = {
    "vga": VideoModel("VGA", None, _vga_memory, multihead=False),
    "cirrus": VideoModel("cirrus-vga", None, _cirrus_memory, multihead=False),
    "qxl": VideoModel("qxl-vga", "qxl", _qxl_memory, multihead=True),
    "virtio": VideoModel("virtio-vga", "virtio-gpu-pci", _no_memory, multihead=True),
    "bochs": VideoModel("bochs-display", None, _bochs_memory, multihead=False),
}


def _video(ctx: Ctx, index: int, v: VideoDef, primary: bool) -> list[str]:
    alias = v.alias or f"video{index}"
    model = VIDEO_MODELS.get(v.model)
    if model is None:
        raise ConfigUnsupportedError(f"video model '{v.model}' is not supported")
    driver = model.primary if primary else model.secondary
    if driver is None:
        raise ConfigUnsupportedError(f"video model '{v.model}' can only be the primary video")
    if not model.multihead and v.heads not in (None, 1):
        raise ConfigUnsupportedError(f"video model '{v.model}' supports one head")
    if v.model != "qxl" and (v.ram or v.vgamem):
        raise ConfigUnsupportedError(f"video model '{v.model}': ram/vgamem are qxl only")
    heads = v.heads if model.multihead else None
    props: Props = [("id", alias), *model.memory(v), ("max_outputs", heads),
                    *ctx.pci_props(v.address, f"video {alias}")]
    return device(driver, props)


def build_videos(ctx: Ctx) -> list[str]:
    videos = ctx.dom.devices.videos
    if any(v.model == "none" for v in videos):
        if len(videos) > 1:
            raise ConfigUnsupportedError("video model 'none' must be the only video device")
        return []
    # libvirt keeps the primary first; an explicit primary='yes' elsewhere is honoured
    flagged = [i for i, v in enumerate(videos) if v.primary]
    if len(flagged) > 1:
        raise ConfigUnsupportedError("more than one primary video device")
    primary = flagged[0] if flagged else 0
    argv: list[str] = []
    for index, v in enumerate(videos):
        argv += _video(ctx, index, v, index == primary)
    return argv
