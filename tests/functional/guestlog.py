"""Reading the test guest's serial log: heartbeats and corruption reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pyvirt.lab.guest import CORRUPT_MARK, Heartbeat, parse_heartbeat


class SerialLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[str]:
        try:
            text = self.path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return []
        return [line.strip("\r") for line in text.splitlines()]

    def heartbeats(self) -> list[Heartbeat]:
        return [hb for line in self.lines() if (hb := parse_heartbeat(line)) is not None]

    def last(self) -> Heartbeat | None:
        beats = self.heartbeats()
        return beats[-1] if beats else None

    def corrupt_lines(self) -> list[str]:
        return [line for line in self.lines() if CORRUPT_MARK in line]

    async def wait_heartbeat(self, above: int = -1, timeout: float = 60.0) -> Heartbeat:
        """Wait for a heartbeat whose counter is greater than ``above``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            last = self.last()
            if last is not None and last.n > above:
                return last
            if asyncio.get_running_loop().time() > deadline:
                tail = "\n".join(self.lines()[-15:])
                raise AssertionError(f"no heartbeat above {above} in {timeout}s; log tail:\n{tail}")
            await asyncio.sleep(0.1)
