"""``libvirtError``: the one exception the client library raises, libvirt-python's shape.

It is a :class:`~pyvirt.errors.VirtError` (same code/domain/message/level), so daemon code
that drives a peer through the client can re-raise it to its own caller unchanged, and
callers that know libvirt-python use ``get_error_code()`` and friends.

Kept import-light (no asyncio, no RPC): ``import pyvirt`` exports it eagerly.
"""

from __future__ import annotations

from pyvirt.errors import ErrorCode, ErrorDomain, ErrorLevel, VirtError


class libvirtError(VirtError):  # libvirt-python's name, hence not CapWords
    """An error from a libvirt API call; ``str(e)`` is the message virsh prints."""

    def __init__(
        self,
        defmsg: str,
        *,
        code: int | None = None,
        domain: int | None = None,
        level: int = ErrorLevel.ERROR,
        str1: str | None = None,
        str2: str | None = None,
        str3: str | None = None,
        int1: int = -1,
        int2: int = -1,
    ) -> None:
        super().__init__(defmsg, code=code, domain=domain, level=level)
        self.str1, self.str2, self.str3 = str1, str2, str3
        self.int1, self.int2 = int1, int2

    @classmethod
    def from_exception(cls, exc: BaseException) -> libvirtError:
        """The libvirtError for any exception a call raised (VirtError keeps its numbers)."""
        if isinstance(exc, libvirtError):
            return exc
        if isinstance(exc, VirtError):
            return cls(exc.message, code=int(exc.code), domain=int(exc.domain),
                       level=int(exc.level))  # fmt: skip
        # not one of ours: a bug or an unexpected OS failure; never let it escape untyped
        return cls(f"internal error: {type(exc).__name__}: {exc}",
                   code=ErrorCode.INTERNAL_ERROR, domain=ErrorDomain.NONE)  # fmt: skip

    @property
    def err(self) -> tuple[int, int, str, int, str | None, str | None, str | None, int, int]:
        """libvirt-python's ``err`` tuple (virGetLastError's fields)."""
        return (int(self.code), int(self.domain), self.message, int(self.level),
                self.str1, self.str2, self.str3, self.int1, self.int2)  # fmt: skip

    def get_error_code(self) -> int:
        return int(self.code)

    def get_error_domain(self) -> int:
        return int(self.domain)

    def get_error_message(self) -> str:
        return self.message

    def get_error_level(self) -> int:
        return int(self.level)

    def get_str1(self) -> str | None:
        return self.str1

    def get_str2(self) -> str | None:
        return self.str2

    def get_str3(self) -> str | None:
        return self.str3

    def get_int1(self) -> int:
        return self.int1

    def get_int2(self) -> int:
        return self.int2
