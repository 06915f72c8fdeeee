"""``pyvirsh migrate`` running migrations against two fake daemons, and the stock virsh too.

The fakes (tests/fakes/fake_remote.py) script the source's Perform: what GET_JOB_INFO
reports while it runs and what ends it (a number of progress polls, a time, or the
client's suspend / post-copy switch / abort), so the output is deterministic.

The comparisons run the stock virsh 9.0 and pyvirsh on the same command against the same
two fakes and compare exit status, stdout and stderr byte for byte, and the procedure
sequences both daemons received (in their order across the two).  The one known
difference is filtered out and asserted: libvirt's remote driver registers the close
callback (360/361) only on connections whose user asks for one, which virsh does for its
main connection but not for the destination; pyvirt's client registers it on every
connection.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyvirt.constants import DomainState
from pyvirt.errors import OperationFailedError
from pyvirt.virsh.main import main
from pyvirt.virsh.progress import JobWatcher, job_progress, progress_text
from tests.fakes.fake_client import Result
from tests.fakes.fake_remote import FakeMigration, ServedPair
from tests.unit.test_client_migrate import steps

G1_UUID = uuid.UUID("6695eb01-f6a4-8304-79aa-97f2502e193f").bytes
ROOT = Path(__file__).resolve().parents[2]
CLOSE_CALLBACK = ("CONNECT_REGISTER_CLOSE_CALLBACK", "CONNECT_UNREGISTER_CLOSE_CALLBACK")

Setup = Callable[[ServedPair], None]


@pytest.fixture(scope="module")
def pair() -> Iterator[ServedPair]:
    served = ServedPair()
    yield served
    served.close()


def reset(pair: ServedPair, setup: Setup | None = None) -> None:
    """g1 running on the source, nothing on the destination, both scripted; then ``setup``."""
    for served in (pair.src, pair.dst):
        fake = served.fake
        fake.domains.clear()
        fake.errors.clear()
        fake.features = {4: 1, 6: 1, 9: 1, 10: 1, 13: 1, 14: 1, 15: 1, 7: 1}
        fake.migration = FakeMigration()
    pair.dst.fake.features[7] = 0
    pair.src.fake.add("g1", running=True, uuid=G1_UUID)
    if setup is not None:
        setup(pair)
    pair.journal.clear()


def words(pair: ServedPair, args: list[str]) -> list[str]:
    return [a.replace("DSTTCP", pair.dst_tcp_uri).replace("DST", pair.dst.uri()) for a in args]


def run_pyvirsh(pair: ServedPair, args: list[str]) -> Result:
    out, err = io.StringIO(), io.StringIO()
    status = main(["pyvirsh", "-c", pair.src.uri(), *words(pair, args)],
                  stdin=io.StringIO(), stdout=out, stderr=err)  # fmt: skip
    return Result(status, out.getvalue(), err.getvalue())


def run_stock_virsh(pair: ServedPair, args: list[str]) -> Result:
    env = {k: v for k, v in os.environ.items() if k not in ("LIBVIRT_DEFAULT_URI", "LIBVIRT_DEBUG")}
    env.update(LC_ALL="C", LANG="C")
    proc = subprocess.run(["virsh", "-c", pair.src.uri(), *words(pair, args)], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                          check=False)  # fmt: skip
    # bytes, not text: universal newlines would turn the progress lines' \r into \n
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def calls(pair: ServedPair) -> list[tuple[Any, ...]]:
    return steps(pair.journal)


def names(pair: ServedPair, side: str = "SRC") -> list[str]:
    return [step[1] for step in calls(pair) if step[0] == side]


# -- scripts -----------------------------------------------------------------------------------
PROGRESS = [(1000, 1000), (1000, 550), (1000, 3)]
FAILED = OperationFailedError("migration out job: unexpectedly failed")


def progress(pair: ServedPair) -> None:
    pair.src.fake.migration = FakeMigration(progress=PROGRESS, perform_polls=3)


def failing(pair: ServedPair) -> None:
    pair.src.fake.migration = FakeMigration(progress=PROGRESS, perform_polls=3,
                                            perform_error=FAILED)  # fmt: skip


def one_poll(pair: ServedPair) -> None:
    pair.src.fake.migration = FakeMigration(progress=[(100, 50)], perform_polls=1)


def fail_prepare(pair: ServedPair) -> None:
    pair.dst.fake.errors["DOMAIN_MIGRATE_PREPARE3_PARAMS"] = OperationFailedError("no room")


def fail_finish(pair: ServedPair) -> None:
    pair.dst.fake.errors["DOMAIN_MIGRATE_FINISH3_PARAMS"] = OperationFailedError("it died")


def offline(pair: ServedPair) -> None:
    for served in (pair.src, pair.dst):
        served.fake.features[12] = 1


def paused(pair: ServedPair) -> None:
    pair.src.fake.domains["g1"].state = DomainState.PAUSED


def no_p2p(pair: ServedPair) -> None:
    pair.src.fake.features[4] = 0


def iterations(pair: ServedPair) -> None:
    pair.src.fake.migration = FakeMigration(iterations=(1, 2), perform_until="postcopy")


def until_suspended(pair: ServedPair) -> None:
    pair.src.fake.migration = FakeMigration(progress=[(1000, 600)], perform_until="suspend")


# -- pyvirsh on its own ------------------------------------------------------------------------
def test_verbose_progress_bytes(pair: ServedPair) -> None:
    reset(pair, progress)
    result = run_pyvirsh(pair, ["migrate", "--live", "--verbose", "g1", "DST"])
    assert result == Result(0, "\n", "\rMigration: [  0 %]\rMigration: [ 45 %]"
                                     "\rMigration: [ 99 %]\rMigration: [100 %]")  # fmt: skip
    assert names(pair).count("DOMAIN_GET_JOB_INFO") == 3


def test_failure_prints_the_error_after_the_progress(pair: ServedPair) -> None:
    reset(pair, failing)
    result = run_pyvirsh(pair, ["migrate", "--live", "--verbose", "g1", "DST"])
    assert result == Result(1, "\n", "\rMigration: [  0 %]\rMigration: [ 45 %]\rMigration: "
                            "[ 99 %]error: operation failed: migration out job: unexpectedly "
                            "failed\n")  # fmt: skip


def test_quiet_migration_prints_nothing(pair: ServedPair) -> None:
    reset(pair)
    assert run_pyvirsh(pair, ["migrate", "--live", "g1", "DST"]) == Result(0, "\n", "")
    assert pair.dst.fake.domains["g1"].state == DomainState.RUNNING


def test_without_verbose_polling_stops_once_the_job_runs(pair: ServedPair) -> None:
    reset(pair, lambda p: setattr(p.src.fake, "migration", FakeMigration(perform_seconds=1.3)))
    assert run_pyvirsh(pair, ["migrate", "--live", "g1", "DST"]) == Result(0, "\n", "")
    assert names(pair).count("DOMAIN_GET_JOB_INFO") == 1


def test_timeout_suspends_once(pair: ServedPair) -> None:
    reset(pair, lambda p: setattr(p.src.fake, "migration", FakeMigration(perform_seconds=2.2)))
    started = time.monotonic()
    result = run_pyvirsh(pair, ["migrate", "--live", "--timeout", "1", "g1", "DST"])
    assert result == Result(0, "\n", "") and time.monotonic() - started >= 2.0
    assert names(pair).count("DOMAIN_SUSPEND") == 1
    assert pair.src.fake.migration is not None and pair.src.fake.migration.suspended == 1


def test_timeout_postcopy(pair: ServedPair) -> None:
    reset(pair, lambda p: setattr(p.src.fake, "migration", FakeMigration(perform_until="postcopy")))
    result = run_pyvirsh(pair, ["migrate", "--live", "--postcopy", "--timeout", "1",
                                "--timeout-postcopy", "g1", "DST"])  # fmt: skip
    assert result == Result(0, "\n", "")
    src = names(pair)
    assert src.count("DOMAIN_MIGRATE_START_POST_COPY") == 1 and "DOMAIN_SUSPEND" not in src


def test_postcopy_after_precopy_switches_on_iteration_two(pair: ServedPair) -> None:
    reset(pair, iterations)
    result = run_pyvirsh(pair, ["migrate", "--live", "--postcopy", "--postcopy-after-precopy",
                                "g1", "DST"])  # fmt: skip
    assert result == Result(0, "\n", "")
    journal = [(side, name) for side, name, _ in pair.journal]
    register = journal.index(("SRC", "CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY"))
    assert journal.index(("DST", "CONNECT_OPEN")) > register  # registered before connecting
    assert journal.count(("SRC", "DOMAIN_MIGRATE_START_POST_COPY")) == 1
    assert journal.index(("SRC", "CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY")) > \
        journal.index(("DST", "CONNECT_CLOSE"))  # fmt: skip
    event = next(args for _, name, args in pair.journal if name.endswith("REGISTER_ANY"))
    assert event["event_id"] == 20 and event["dom"].name == "g1"
    assert pair.src.fake.migration is not None and pair.src.fake.migration.postcopy == 1


def test_direct_talks_to_the_source_only(pair: ServedPair) -> None:
    """pyvirtd's --direct (feature 5): one Perform, no dconnuri, the QEMU URI as parameter."""
    reset(pair, lambda p: p.src.fake.features.update({5: 1}))
    result = run_pyvirsh(pair, ["migrate", "--live", "--direct", "--migrateuri",
                                "tcp://10.77.0.2:49152", "g1", "DSTTCP"])  # fmt: skip
    assert result == Result(0, "\n", "")
    assert [s for s in calls(pair) if s[1] == "perform"] == [
        ("SRC", "perform", None, (("migrate_uri", "tcp://10.77.0.2:49152"),), b"", 1)]
    assert not names(pair, "DST")


def test_unreachable_destination(pair: ServedPair) -> None:
    reset(pair)
    result = run_pyvirsh(pair, ["migrate", "--live", "g1",
                                "qemu+unix:///system?socket=/nonexistent/sock"])  # fmt: skip
    assert result.status == 1 and result.out == "\n"
    assert result.err == "error: Failed to connect socket to '/nonexistent/sock': No such file " \
                         "or directory\n"  # fmt: skip
    assert "DOMAIN_MIGRATE_BEGIN3_PARAMS" not in names(pair)


def test_sigint_aborts_the_job(pair: ServedPair) -> None:
    """A real SIGINT to a pyvirsh process: abortJob, then the job's own error, status 1."""
    reset(pair, lambda p: setattr(p.src.fake, "migration", FakeMigration(
        progress=[(1000, 600)], perform_until="abort")))  # fmt: skip
    mig = pair.src.fake.migration
    assert mig is not None
    env = dict(os.environ, LC_ALL="C", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "pyvirt.virsh", "-c", pair.src.uri(),
                             "migrate", "--live", "--verbose", "g1", pair.dst.uri()],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while mig.polls < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        raw_out, raw_err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    out, err = raw_out.decode(), raw_err.decode()
    assert (proc.returncode, out) == (1, "\n")
    assert err.endswith("error: operation aborted: migration out job: canceled by client\n")
    assert err.startswith("\rMigration: [ 40 %]")
    assert names(pair).count("DOMAIN_ABORT_JOB") == 1 and mig.aborted == 1
    assert [s for s in calls(pair) if s[1] in ("finish", "confirm")] == [
        ("DST", "finish", next(s for s in calls(pair) if s[1] == "finish")[2], b"", 1, 1)]


# -- the watcher on its own --------------------------------------------------------------------
class StubDomain:
    def __init__(self, infos: list[list[int]]) -> None:
        self.infos = infos
        self.aborts = 0

    def jobInfo(self) -> list[int]:
        return self.infos.pop(0) if len(self.infos) > 1 else self.infos[0]

    def abortJob(self) -> int:
        self.aborts += 1
        return 0


@pytest.mark.parametrize(("remaining", "total", "percent"), [
    (0, 0, 100), (0, 5, 100), (5, 5, 0), (1, 1000, 99), (1, 10**12, 99), (550, 1000, 45),
    (1500, 1000, -50),
])  # fmt: skip
def test_virsh_percentage(remaining: int, total: int, percent: int) -> None:
    assert job_progress(remaining, total) == percent


def test_progress_text() -> None:
    assert progress_text("Migration", 550, 1000) == "\rMigration: [ 45 %]"
    assert progress_text("Migration", 0, 1) == "\rMigration: [100 %]"


def _info(total: int, remaining: int, job_type: int = 2) -> list[int]:
    return [job_type, 0, 0, total, total - remaining, remaining, 0, 0, 0, 0, 0, 0]


def test_watcher_interrupt_aborts_once_and_the_job_error_wins() -> None:
    dom = StubDomain([_info(0, 0)])
    out, err = io.StringIO(), io.StringIO()
    watcher = JobWatcher(dom, label="Migration", verbose=True, stdout=out, stderr=err)

    def job() -> None:
        watcher.interrupt()
        watcher.interrupt()
        deadline = time.monotonic() + 5
        while not dom.aborts and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        raise OperationFailedError("aborted")

    with pytest.raises(OperationFailedError):
        watcher.run(job)
    assert dom.aborts == 1 and err.getvalue() == ""  # no [100 %] after a failure


def test_watcher_timeout_runs_once() -> None:
    fired: list[float] = []
    dom = StubDomain([_info(10, 5)])
    watcher = JobWatcher(dom, label="Migration", verbose=False, stdout=io.StringIO(),
                         stderr=io.StringIO(), timeout=1,
                         on_timeout=lambda: fired.append(time.monotonic()))  # fmt: skip
    def job() -> int:
        time.sleep(2.2)
        return 7

    started = time.monotonic()
    assert watcher.run(job) == 7
    assert len(fired) == 1 and 0.9 <= fired[0] - started < 2.0
    assert watcher.job_started


# -- the stock virsh, byte for byte ------------------------------------------------------------
VIRSH_CASES: list[tuple[str, list[str], Setup | None]] = [
    ("normal", ["migrate", "--live", "g1", "DST"], None),
    ("normal-verbose", ["migrate", "--live", "--verbose", "g1", "DST"], progress),
    ("normal-params", ["migrate", "--live", "g1", "DST", "--migrateuri", "tcp://10.77.0.2:49200",
                       "--dname", "g2", "--bandwidth", "100", "--comp-methods", "xbzrle,mt",
                       "--abort-on-error", "--auto-converge", "--persistent"], None),
    ("failure-verbose", ["migrate", "--live", "--verbose", "g1", "DST"], failing),
    ("prepare-fails", ["migrate", "--live", "g1", "DST"], fail_prepare),
    ("finish-fails", ["migrate", "--live", "g1", "DST"], fail_finish),
    ("paused", ["migrate", "--live", "g1", "DST"], paused),
    ("offline", ["migrate", "--offline", "--persistent", "g1", "DST"], offline),
    ("offline-unsupported", ["migrate", "--offline", "--persistent", "g1", "DST"], None),
    ("p2p-verbose", ["migrate", "--live", "--p2p", "--verbose", "g1", "DSTTCP"], one_poll),
    ("p2p-tunnelled", ["migrate", "--live", "--p2p", "--tunnelled", "g1", "DSTTCP"], None),
    ("p2p-unix", ["migrate", "--live", "--p2p", "g1", "DST"], None),
    ("p2p-localhost", ["migrate", "--live", "--p2p", "g1", "qemu+tcp://localhost/system"], None),
    ("p2p-unsupported", ["migrate", "--live", "--p2p", "g1", "DSTTCP"], no_p2p),
    ("direct", ["migrate", "--live", "--direct", "g1", "DSTTCP"], None),
    ("postcopy-after-precopy", ["migrate", "--live", "--postcopy", "--postcopy-after-precopy",
                                "g1", "DST"], iterations),
    ("timeout", ["migrate", "--live", "--timeout", "1", "g1", "DST"], until_suspended),
    ("bad-option-after-connect", ["migrate", "--live", "g1", "DST", "--bandwidth", "x"], None),
]  # fmt: skip


#: scripts where Perform ends after a number of polls: the polls are part of the sequence
#: (elsewhere their number depends on timing: virsh polls every 500 ms until the job runs)
COUNTED_POLLS = (progress, failing, one_poll)


def comparable(pair: ServedPair, setup: Setup | None) -> list[tuple[Any, ...]]:
    return [s for s in calls(pair) if not (s[0] == "DST" and s[1] in CLOSE_CALLBACK)
            and (setup in COUNTED_POLLS or s[1] != "DOMAIN_GET_JOB_INFO")]  # fmt: skip


@pytest.mark.skipif(shutil.which("virsh") is None, reason="no stock virsh")
@pytest.mark.parametrize(("args", "setup"), [(a, s) for _, a, s in VIRSH_CASES],
                         ids=[name for name, _, _ in VIRSH_CASES])  # fmt: skip
def test_same_as_stock_virsh(pair: ServedPair, args: list[str], setup: Setup | None) -> None:
    reset(pair, setup)
    theirs = run_stock_virsh(pair, args)
    their_calls = calls(pair)
    assert not [s for s in their_calls if s[0] == "DST" and s[1] in CLOSE_CALLBACK]
    their_calls = comparable(pair, setup)
    reset(pair, setup)
    ours = run_pyvirsh(pair, args)
    assert ours == theirs
    assert comparable(pair, setup) == their_calls
