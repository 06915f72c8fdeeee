"""The v3 phase driver with scripted ends: which phases run after which failure, where the
guest ends up, which error is reported (pyvirt.client.migrate_v3)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from pyvirt.client.migrate_v3 import (
    Outcome,
    PerformNotStarted,
    V3Result,
    decide_outcome,
    reported_error,
    run_v3,
)
from pyvirt.errors import ErrorCode, ErrorDomain, OperationFailedError, VirtError


@dataclass
class Script:
    """What each phase does: None succeeds, an exception is raised."""

    prepare: BaseException | None = None
    perform: BaseException | None = None
    finish: BaseException | None = None
    #: Finish's domain when it succeeds
    domain: str | None = "dom@dst"
    #: what the destination says when Finish went unanswered
    unanswered: bool | None = False
    confirms_failed_prepare: bool = True
    confirms_failed_perform: bool = True
    calls: list[str] = field(default_factory=list)


class Source:
    def __init__(self, script: Script) -> None:
        self.s = script
        self.confirms_failed_prepare = script.confirms_failed_prepare
        self.confirms_failed_perform = script.confirms_failed_perform

    async def begin(self) -> tuple[bytes, str]:
        self.s.calls.append("begin")
        return b"c-begin", "<domain/>"

    async def perform(self, uri_out: str | None, cookie: bytes) -> bytes:
        self.s.calls.append(f"perform({uri_out},{cookie.decode()})")
        if self.s.perform is not None:
            raise self.s.perform
        return b"c-perform"

    def cookie_after_failed_perform(self) -> bytes:
        return b"c-failed"

    async def confirm(self, cookie: bytes, cancelled: bool) -> None:
        self.s.calls.append(f"confirm({cookie.decode()},{'cancelled' if cancelled else 'ok'})")


class Destination:
    def __init__(self, script: Script) -> None:
        self.s = script

    async def prepare(self, cookie: bytes, xml: str) -> tuple[bytes, str | None]:
        self.s.calls.append(f"prepare({cookie.decode()})")
        if self.s.prepare is not None:
            raise self.s.prepare
        return b"c-prepare", "tcp://dst:49152"

    async def finish(self, cookie: bytes, cancelled: bool) -> tuple[str | None, bytes]:
        self.s.calls.append(f"finish({cookie.decode()},{'cancelled' if cancelled else 'ok'})")
        if self.s.finish is not None:
            raise self.s.finish
        return (None if cancelled else self.s.domain), b"c-finish"

    async def outcome_unanswered(self, error: BaseException) -> bool | None:
        self.s.calls.append("ask")
        return self.s.unanswered


def run(script: Script) -> V3Result[str]:
    return asyncio.run(run_v3(Source(script), Destination(script)))


def failed(message: str = "migration out job: boom") -> OperationFailedError:
    return OperationFailedError(message)


def test_success_runs_the_five_phases_in_order() -> None:
    script = Script()
    result = run(script)
    assert (result.outcome, result.domain, result.error) == (
        Outcome.ON_DESTINATION, "dom@dst", None)
    assert script.calls == ["begin", "prepare(c-begin)",
                            "perform(tcp://dst:49152,c-prepare)", "finish(c-perform,ok)",
                            "confirm(c-finish,ok)"]


@pytest.mark.parametrize("confirms", [True, False])
def test_failed_prepare_confirms_cancelled_only_when_the_source_asks(confirms: bool) -> None:
    error = VirtError("prepare refused")
    script = Script(prepare=error, confirms_failed_prepare=confirms)
    with pytest.raises(VirtError) as raised:
        run(script)
    assert raised.value is error
    assert script.calls == ["begin", "prepare(c-begin)",
                            *(["confirm(,cancelled)"] if confirms else [])]


def test_failed_perform_cancels_finish_and_confirms() -> None:
    error = failed()
    script = Script(perform=error)
    result = run(script)
    assert (result.outcome, result.domain, result.error) == (Outcome.ON_SOURCE, None, error)
    assert script.calls[-2:] == ["finish(c-failed,cancelled)", "confirm(c-finish,cancelled)"]


def test_a_source_that_undid_its_side_gets_no_confirm() -> None:
    script = Script(perform=failed(), confirms_failed_perform=False)
    result = run(script)
    assert result.outcome is Outcome.ON_SOURCE
    assert script.calls[-1] == "finish(c-failed,cancelled)"


def test_perform_not_started_keeps_prepares_cookie_and_confirms() -> None:
    error = VirtError("internal error: domainMigratePrepare3 did not set uri")
    script = Script(perform=PerformNotStarted(error), confirms_failed_perform=False)
    result = run(script)
    assert result.error is error
    assert script.calls[-2:] == ["finish(c-prepare,cancelled)", "confirm(c-finish,cancelled)"]


def test_a_cancelled_perform_still_finishes_the_protocol() -> None:
    # a cancelled call (asyncio) must not leave the destination's QEMU waiting
    script = Script(perform=asyncio.CancelledError())
    result = run(script)
    assert result.outcome is Outcome.ON_SOURCE
    assert script.calls[-2:] == ["finish(c-failed,cancelled)", "confirm(c-finish,cancelled)"]


def test_finish_without_domain_stays_on_source() -> None:
    script = Script(domain=None)
    result = run(script)
    assert (result.outcome, result.error) == (Outcome.ON_SOURCE, None)
    assert script.calls[-1] == "confirm(c-finish,cancelled)"


def test_finish_refused_by_a_live_destination() -> None:
    error = VirtError("finish refused")
    script = Script(finish=error, unanswered=False)
    result = run(script)
    assert (result.outcome, result.error) == (Outcome.ON_SOURCE, error)
    assert script.calls[-2:] == ["ask", "confirm(,cancelled)"]


def test_finish_unanswered_but_the_destination_runs_the_guest() -> None:
    script = Script(finish=VirtError("connection lost"), unanswered=True)
    result = run(script)
    assert (result.outcome, result.error) == (Outcome.ON_DESTINATION, None)
    assert script.calls[-1] == "confirm(,ok)"


def test_finish_unanswered_and_nobody_knows_means_no_confirm() -> None:
    error = VirtError("connection lost")
    script = Script(finish=error, unanswered=None)
    result = run(script)
    assert (result.outcome, result.error) == (Outcome.UNKNOWN, error)
    assert not any(call.startswith("confirm") for call in script.calls)


def test_finish_with_a_domain_after_a_failed_perform_is_trusted() -> None:
    class Stubborn(Destination):
        async def finish(self, cookie: bytes, cancelled: bool) -> tuple[str | None, bytes]:
            return "dom@dst", b"c-finish"

    script = Script(perform=failed())
    result = asyncio.run(run_v3(Source(script), Stubborn(script)))
    assert (result.outcome, result.domain) == (Outcome.ON_DESTINATION, "dom@dst")
    assert script.calls[-1] == "confirm(c-finish,ok)"


def test_cancelled_finish_errors_are_not_asked_about() -> None:
    script = Script(perform=failed(), finish=VirtError("gone"))
    result = run(script)
    assert result.outcome is Outcome.ON_SOURCE and "ask" not in script.calls


def qemu_error(code: ErrorCode) -> VirtError:
    return VirtError("x", code=code, domain=ErrorDomain.QEMU)


def test_a_real_finish_error_replaces_a_generic_perform_failure() -> None:
    generic = qemu_error(ErrorCode.OPERATION_FAILED)
    died = qemu_error(ErrorCode.INTERNAL_ERROR)
    aborted = qemu_error(ErrorCode.MIGRATE_FINISH_OK)
    assert reported_error(generic, died) is died
    assert reported_error(generic, aborted) is generic
    specific = qemu_error(ErrorCode.OPERATION_INVALID)
    assert reported_error(specific, died) is specific
    assert reported_error(None, died) is died
    assert reported_error(generic, None) is generic


@pytest.mark.parametrize(("perform_failed", "domain", "took", "outcome"), [
    (False, True, True, Outcome.ON_DESTINATION),
    (True, True, True, Outcome.ON_DESTINATION),
    (True, False, False, Outcome.ON_SOURCE),
    (True, False, None, Outcome.ON_SOURCE),
    (False, False, False, Outcome.ON_SOURCE),
    (False, False, True, Outcome.ON_DESTINATION),
    (False, False, None, Outcome.UNKNOWN),
])
def test_decide_outcome_table(perform_failed: bool, domain: bool, took: bool | None,
                              outcome: Outcome) -> None:
    assert decide_outcome(perform_failed, domain, took) is outcome
