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
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(tmp_path)]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for run in ("embed", "embed-compiled"):
        assert results[run]["tokens"] > 0 and results[run]["spot_checks"] >= 3
        assert results[run]["spot_seconds"] is not None and results[run]["seconds_to_first_batch"] > 0
    assert results["embed"]["execution"].startswith("not compiled")
    assert results["embed-compiled"]["execution"].startswith("compiled")
    assert results["bare-fp16"]["sequences"] == 60
    assert results["fp32-extract"]["sequences"] == 40
    assert {"embed_vs_bare_fp16", "embed_vs_fp32_extract", "embed-compiled_vs_bare_fp16",
            "embed_spot_check_share_of_wall"} <= set(results["ratios"])
    assert results["rss"]["ratio"] > 0
    assert "no speed claim" in (tmp_path / "results.md").read_text()
    combined = tmp_path / "combined"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--combine", str(tmp_path), "--out", str(combined)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((combined / "results.json").read_text())["ratios"] == results["ratios"]


@pytest.mark.slow
def test_embed_bench_repeat_step_on_cpu(tmp_path):
    """The one-GPU `repeat` step, on the CPU: two runs and a killed-then-resumed one, compared.
    The kill may land after the run finished on so small an input; the comparison still runs."""
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(tmp_path), "--steps", "repeat",
               "--kill-after", "3", "--scale-compile", "off"]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    repeat = json.loads((tmp_path / "results.json").read_text())["repeat"]
    assert repeat["first"]["tokens"] > 0 and repeat["second"]["tokens"] == repeat["first"]["tokens"]
    for comparison in (repeat["second_vs_first"], repeat["resumed_vs_first"]):
        assert comparison == {"same_ids": True, "identical_embeddings": True, "max_abs_difference": 0.0}
    assert isinstance(repeat["killed"]["killed_exit_code"], int)
    assert "one GPU, run twice" in (tmp_path / "results.md").read_text()
