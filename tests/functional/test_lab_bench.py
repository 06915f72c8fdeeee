"""The migration benchmark's smoke run: one short scenario, one repetition, every mode.

Checks that the benchmark works end to end and that its outputs are well formed (JSON
with the documented keys, the Markdown table, a PNG), not its timings. Named test_lab_*
so that it holds the lab for its run (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import migrate
from bench.scenarios import ALL_MODES, SMOKE
from pyvirt.lab.hosts import lab_leftovers

pytestmark = [pytest.mark.qemu, pytest.mark.lab]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if os.geteuid() != 0:
        pytest.skip("lab hosts need root")
    out = tmp_path_factory.mktemp("bench")
    assert migrate.main(["--smoke", "--out", str(out)]) == 0
    return {path.suffix: path for path in out.iterdir()}


def test_smoke_writes_json_markdown_and_png(outputs: dict[str, Path]) -> None:
    assert set(outputs) == {".json", ".md", ".png"}
    assert len({path.stem for path in outputs.values()}) == 1  # one stamp for all three
    assert outputs[".png"].read_bytes()[:8] == PNG_MAGIC


def test_smoke_json_has_every_mode_and_figure(outputs: dict[str, Path]) -> None:
    data = json.loads(outputs[".json"].read_text())
    modes = data["scenarios"][SMOKE.name]
    assert set(modes) == {m.value for m in ALL_MODES}
    for name, figures in modes.items():
        assert figures["converged"] == 1, (name, figures["runs"])
        assert figures["wall_s_median"] > 0
        assert figures["pause_ms_median"] is not None and figures["pause_ms_median"] >= 0
        assert figures["wall_ratio_median"] > 0
        assert figures["transferred_median"] > 0 and figures["total_ms_median"] > 0
    assert modes["raw"]["wall_ratio_median"] == 1.0
    assert data["startup"]["first_rpc_ms"]["median"] > 0
    assert data["curve"]["samples"], "no remaining-bytes curve"
    assert data["corrupt_lines"] == []
    assert {t["what"] for t in data["targets"]} >= {"pyvirsh start-up to first RPC"}


def test_smoke_markdown_has_a_row_per_mode(outputs: dict[str, Path]) -> None:
    text = outputs[".md"].read_text()
    rows = [line for line in text.splitlines() if line.startswith(f"| {SMOKE.name} |")]
    assert [row.split("|")[2].strip() for row in rows] == [m.value for m in ALL_MODES]
    assert "## Targets" in text


def test_smoke_leaves_nothing_behind(outputs: dict[str, Path]) -> None:
    assert lab_leftovers() == []
