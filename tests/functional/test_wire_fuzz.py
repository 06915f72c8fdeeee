"""The structured wire fuzzer (``tests/fuzz``), briefly: ``make test`` runs it for a fixed
budget, ``make fuzz`` for ten minutes.

A run passes when the daemon stays up, answers a well-formed client within 1 s
throughout, grows by at most 50 MiB of RSS, logs no escaped exception, never breaks a
reply oracle, leaves the canaries outside its directories untouched, and every procedure
of the tables has had enough frames reach its argument decoder. ``FUZZ_SEED=N`` replays a
run's frames (the seed is printed first).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from pyvirt.rpc.admin_protocol import ADMIN
from pyvirt.rpc.protocol import ProcSpec, Program
from pyvirt.rpc.qemu_protocol import QEMU
from pyvirt.rpc.remote_protocol import REMOTE
from pyvirt.rpc.xdr import XDRError
from tests.fuzz.frames import FrameGen
from tests.fuzz.gen import ArgGen, DomainRef, World
from tests.fuzz.hostile import HostileCorpus
from tests.fuzz.runner import FuzzConfig, run_fuzz
from tests.fuzz.scenarios import callable_procs

#: the short run's budget: with start-up and checks the test takes about a minute
SHORT_RUN_S = 45.0
SHORT_RUN_MIN_FRAMES = 15
ALL_PROCS = callable_procs(REMOTE, QEMU, ADMIN)


def _generators(seed: int) -> tuple[ArgGen, FrameGen]:
    rng = random.Random(seed)
    world = World([DomainRef(b"fz-base-0", bytes(range(16)), 1)])
    corpus = HostileCorpus(Path("/tmp/pvf-test/canary"), Path("/tmp/pvf-test/d/sock"))
    args = ArgGen(rng, corpus, world)
    return args, FrameGen(rng, args)


@pytest.mark.parametrize(("program", "spec"), ALL_PROCS, ids=lambda v: getattr(v, "name", ""))
def test_valid_frames_decode(program: Program, spec: ProcSpec) -> None:
    """The generator's "valid" encodings are what the daemon's decoder accepts (strictly):
    otherwise "valid" frames would test nothing past the decoder."""
    args, _ = _generators(spec.number)
    for _ in range(30):
        spec.args_type.decode(args.encode(spec.args_type, 0.0), strict_padding=True)


def test_boundary_and_mutated_frames_fail_cleanly() -> None:
    """Offline, every generated payload either decodes or is refused with XDRError."""
    _, frames = _generators(7)
    outcomes = {"decoded": 0, "refused": 0}
    for _, spec in ALL_PROCS:
        for kind in ("boundary", "mutated"):
            for _ in range(40):
                try:
                    spec.decode_args(frames.payload(spec, kind))
                    outcomes["decoded"] += 1
                except XDRError:
                    outcomes["refused"] += 1
    assert outcomes["decoded"] and outcomes["refused"]


def test_wire_fuzz_short_run() -> None:
    seed_text = os.environ.get("FUZZ_SEED", "").strip()
    seed = int(seed_text) if seed_text else random.SystemRandom().randrange(1 << 32)
    report = run_fuzz(FuzzConfig(seconds=SHORT_RUN_S, seed=seed,
                                 min_frames=SHORT_RUN_MIN_FRAMES, warmup=8.0))
    print(report.text())
    assert report.ok, report.text()
