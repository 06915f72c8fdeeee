"""The five phases of libvirt's migration protocol v3, driven once for both of its users.

::

    Begin (source) ─► Prepare (destination) ─► Perform (source) ─► Finish (destination)
                                                                        │
                                               Confirm (source) ◄───────┘

Two callers drive these phases: the client library's managed migration
(``virDomainMigrate3``: the client calls both daemons, :mod:`pyvirt.client.migrate`) and a
peer-to-peer source (the source daemon runs its own phases and calls the destination's,
:mod:`pyvirt.qemu.migration.p2p`). They differ only in what each *end* is
(:class:`SourceEnd`, :class:`DestinationEnd`); which phase runs after which failure, where
the guest ends up and which error is reported are decided here, once:

=====================================  =================================================
what happened                          outcome
=====================================  =================================================
Prepare failed                         ON_SOURCE: Confirm(cancelled) if the source asks
                                       for it (it began a job), the error raised
Perform failed                         Finish(cancelled); ON_SOURCE; Confirm(cancelled)
                                       unless the source already undid its side
Finish gave the destination's domain   ON_DESTINATION: Confirm(success); after a failed
                                       Perform too (libvirt trusts Finish, and logs it)
Finish said no (no domain, or error    ON_SOURCE: Confirm(cancelled)
from a destination that answered)
Finish unanswered (link lost)          the destination end is asked: ON_DESTINATION,
                                       ON_SOURCE, or UNKNOWN (no Confirm: neither side
                                       may be resumed or discarded)
=====================================  =================================================

The error reported is Perform's (libvirt's ``orig_err``), except that Finish's replaces it
when Perform only said "operation failed" and a cancelled Finish gave a real reason (the
domain died on the destination), libvirt's rule in both its client and its p2p source.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pyvirt.errors import ErrorCode, ErrorDomain, VirtError

log = logging.getLogger(__name__)

D = TypeVar("D")
D_co = TypeVar("D_co", covariant=True)


class Outcome(enum.Enum):
    #: the guest runs on the destination; the source was told (Confirm) to let go
    ON_DESTINATION = "on-destination"
    #: the guest stays on (or went back to) the source
    ON_SOURCE = "on-source"
    #: nobody can say: the destination was lost after the guest may have moved
    UNKNOWN = "unknown"


class PerformNotStarted(Exception):
    """Perform could not start (e.g. Prepare set no URI): the source's job is untouched,
    so it still gets Confirm, and Finish gets Prepare's cookie."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class SourceEnd(Protocol):
    """The source daemon's phases, as the driver calls them."""

    @property
    def confirms_failed_prepare(self) -> bool:
        """Confirm(cancelled) after a failed Prepare (the source began a job that must end)."""
        ...

    @property
    def confirms_failed_perform(self) -> bool:
        """Confirm(cancelled) after a failed Perform (False: the source undid its side)."""
        ...

    async def begin(self) -> tuple[bytes, str]:
        """Begin: (cookie, destination XML)."""
        ...

    async def perform(self, uri_out: str | None, cookie: bytes) -> bytes:
        """Perform towards Prepare's ``uri_out``; the cookie for Finish. Raises on failure
        (:class:`PerformNotStarted` when nothing was attempted)."""
        ...

    def cookie_after_failed_perform(self) -> bytes:
        """What Finish(cancelled) gets after a failed Perform (the client: nothing; a p2p
        source: its own cookie, which names the domain)."""
        ...

    async def confirm(self, cookie: bytes, cancelled: bool) -> None:
        ...


class DestinationEnd(Protocol[D_co]):
    """The destination daemon's phases, as the driver calls them."""

    async def prepare(self, cookie: bytes, xml: str) -> tuple[bytes, str | None]:
        """Prepare: (cookie, ``uri_out``)."""
        ...

    async def finish(self, cookie: bytes, cancelled: bool) -> tuple[D_co | None, bytes]:
        """Finish: (the destination's domain, or None when it did not take the guest;
        the cookie for Confirm)."""
        ...

    async def outcome_unanswered(self, error: BaseException) -> bool | None:
        """Finish raised ``error``: does the destination run the guest? False when it
        answered (an error from a live peer is a no), else whatever can be learnt; None:
        it cannot be known."""
        ...


@dataclass(frozen=True)
class V3Result(Generic[D]):
    outcome: Outcome
    #: Finish's domain (None when it gave none, e.g. the outcome was learnt afterwards)
    domain: D | None
    #: the error to report when the guest did not move (None: the caller's generic one)
    error: BaseException | None


@dataclass(frozen=True)
class _Finished(Generic[D]):
    domain: D | None
    cookie: bytes
    error: BaseException | None
    #: the destination runs the guest (True), does not (False), unknown (None)
    took_guest: bool | None


async def run_v3(source: SourceEnd, destination: DestinationEnd[D]) -> V3Result[D]:
    """Begin → Prepare → Perform → Finish → Confirm; see the module docstring."""
    cookie, xml = await source.begin()
    try:
        cookie, uri_out = await destination.prepare(cookie, xml)
    except BaseException:
        if source.confirms_failed_prepare:
            await _confirm_quietly(source, b"")
        raise
    perform_error: BaseException | None = None
    confirm_source = True
    try:
        cookie = await source.perform(uri_out, cookie)
    except PerformNotStarted as exc:
        perform_error = exc.error  # Finish gets Prepare's cookie
    except BaseException as exc:  # whatever stopped Perform, Finish must clean the
        # destination up (a cancelled call included: the guest must end on one host)
        perform_error, cookie = exc, source.cookie_after_failed_perform()
        confirm_source = source.confirms_failed_perform
    cancelled = perform_error is not None
    finished = await _finish(destination, cookie, cancelled)
    outcome = decide_outcome(cancelled, finished.domain is not None, finished.took_guest)
    if outcome is Outcome.UNKNOWN:
        return V3Result(outcome, None, finished.error or perform_error)
    if confirm_source:
        await source.confirm(finished.cookie, outcome is Outcome.ON_SOURCE)
    if outcome is Outcome.ON_DESTINATION:
        return V3Result(outcome, finished.domain, None)
    return V3Result(outcome, None, reported_error(perform_error, finished.error))


async def _finish(destination: DestinationEnd[D], cookie: bytes,
                  cancelled: bool) -> _Finished[D]:
    try:
        domain, cookie = await destination.finish(cookie, cancelled)
    except VirtError as exc:
        took = False if cancelled else await destination.outcome_unanswered(exc)
        return _Finished(None, b"", exc, took)
    if cancelled and domain is not None:
        log.error("finish step ignored that migration was cancelled")
    return _Finished(domain, cookie, None, domain is not None)


def decide_outcome(perform_failed: bool, finish_gave_domain: bool,
                   destination_took_guest: bool | None) -> Outcome:
    """Where the guest is, from what Perform and Finish said (the one place this is
    decided). ``destination_took_guest``: Finish's domain, or what the destination said
    when Finish went unanswered."""
    if finish_gave_domain:
        return Outcome.ON_DESTINATION  # after a failed Perform too: Finish knows best
    if perform_failed:
        return Outcome.ON_SOURCE
    if destination_took_guest is None:
        return Outcome.UNKNOWN
    return Outcome.ON_DESTINATION if destination_took_guest else Outcome.ON_SOURCE


def reported_error(perform_error: BaseException | None,
                   finish_error: BaseException | None) -> BaseException | None:
    """Perform's error, unless a cancelled Finish said something better (libvirt's rule:
    Perform reported a generic QEMU "operation failed", Finish a real QEMU error rather
    than "migration successfully aborted": the domain died on the destination)."""
    if perform_error is not None and finish_error is not None \
            and _is_generic_failure(perform_error) and _is_real_finish_error(finish_error):
        return finish_error
    return perform_error or finish_error


def _is_generic_failure(error: BaseException) -> bool:
    return isinstance(error, VirtError) and error.domain == ErrorDomain.QEMU \
        and error.code == ErrorCode.OPERATION_FAILED


def _is_real_finish_error(error: BaseException) -> bool:
    return isinstance(error, VirtError) and error.domain == ErrorDomain.QEMU \
        and error.code != ErrorCode.MIGRATE_FINISH_OK


async def _confirm_quietly(source: SourceEnd, cookie: bytes) -> None:
    """Confirm(cancelled) while another error is on its way up: that one is reported."""
    try:
        await source.confirm(cookie, True)
    except Exception as exc:
        log.warning("Confirm after a failed Prepare failed: %s", exc)
