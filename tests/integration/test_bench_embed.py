"""bench/embed.py end to end on the CPU (--quick, a tiny ESM-2): every code path a GPU run of
issue 14's targets takes, and the results it writes. No speed is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "embed.py"


@pytest.mark.slow
def test_embed_bench_quick_on_cpu(tmp_path):
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--rss", "--out", str(tmp_path)]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["embed"]["tokens"] > 0 and results["embed"]["spot_checks"] >= 3
    assert results["embed-min-spot"]["spot_checks"] == 3
    assert results["bare-fp16"]["tokens"] == results["embed"]["tokens"]
    assert results["fp32-extract"]["sequences"] == 40
    assert set(results["ratios"]) == {"embed_vs_bare_fp16", "embed_vs_fp32_extract", "spot_check_cost"}
    assert results["rss"]["ratio"] > 0
    assert "no speed claim" in (tmp_path / "results.md").read_text()
