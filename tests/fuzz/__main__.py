"""``python -m tests.fuzz [--seconds S] [--seed N] [--min-frames N]`` (``make fuzz``).

Defaults come from the environment: ``FUZZ_SECONDS`` (600), ``FUZZ_SEED`` (random, printed
first), ``FUZZ_MIN_FRAMES`` (frames per procedure that must reach its argument decoder).
The exit status is 1 when the run found a problem; the report says which frame.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tests.fuzz.runner import FuzzConfig, run_fuzz


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--seconds", type=float, default=_env_int("FUZZ_SECONDS") or 600)
    parser.add_argument("--seed", type=int, default=_env_int("FUZZ_SEED"))
    parser.add_argument("--min-frames", type=int, default=_env_int("FUZZ_MIN_FRAMES"),
                        help="default: 200, scaled down for runs under 10 minutes")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--report", help="also write the report to this file")
    parser.add_argument("--daemon-debug", action="store_true",
                        help="log the RPC layer's debug lines (tracebacks of escaped errors)")
    parser.add_argument("--dump-dir", type=Path,
                        help="where a failed run leaves frames and logs (default /tmp/...)")
    args = parser.parse_args(argv)
    min_frames = args.min_frames
    if min_frames is None:
        min_frames = max(10, int(200 * min(1.0, args.seconds / 600)))
    config = FuzzConfig(seconds=args.seconds, min_frames=min_frames, workers=args.workers,
                        daemon_debug=args.daemon_debug, dump_dir=args.dump_dir)
    if args.seed is not None:
        config.seed = args.seed
    report = run_fuzz(config)
    text = report.text()
    print(text)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
