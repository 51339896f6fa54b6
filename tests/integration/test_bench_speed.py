"""bench/speed.py end to end on the CPU (--quick, a tiny ESM-2): every code path the GPU run takes
(matmul rate, bare loops, the runner under every policy, the validate CLI) and the results it writes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "speed.py"
POLICIES = ("fp32", "fp16", "fp16+ln32", "fp16+pos32", "fp16+res32")


@pytest.mark.slow
def test_speed_quick_on_cpu(tmp_path):
    command = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--arch", "tiny", "--out", str(tmp_path)]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    assert {"environment", "settings", "matmul", "architectures", "targets"} <= set(results)
    assert results["environment"]["torch"] and results["matmul"]["flops"] > 0
    tiny = results["architectures"]["tiny"]
    assert tiny["block_parameters"] < tiny["parameters"]
    assert list(tiny["shapes"]) == ["2x32", "4x16"]
    for shape in tiny["shapes"].values():
        runs = {(r["kind"], r["policy"]): r for r in shape["runs"]}
        measured = [("bare", "fp32"), ("bare", "fp16"), *(("fp16guard", p) for p in POLICIES)]
        for key in measured:
            run = runs[key]
            assert run["tokens"] == shape["tokens"] == shape["rows"] * shape["length"], key
            assert run["tokens_per_second"] > 0 and run["mfu"] > 0, key
            assert "peak_memory_bytes" in run
        # The fast-attention policy is measured where the build has it, else a row says so.
        sdpa = runs[("fp16guard", "fp16+sdpa")]
        assert "tokens_per_second" in sdpa or sdpa["note"].startswith("not available")

    assert tiny["bare_fp32_set"]["sequences"] == 6
    validate = tiny["validate"]["validate"]
    assert validate["returncode"] == 0
    assert 0 < validate["load_seconds"] < validate["wall_seconds"]
    assert (tmp_path / "validate-tiny" / "report.json").is_file()
    assert "rerun" in tiny["validate"]

    kinds = {t["target"] for t in results["targets"]}
    assert kinds == {"runner-fp16", "ln32", "speed-up", "memory", "mfu", "validate", "rerun"}
    for target in results["targets"]:
        assert target["status"] in {"PASS", "MISS", "n/a"}
        assert (target["ratio"] is None) == (target["status"] == "n/a"), target
    markdown = (tmp_path / "results.md").read_text()
    assert "## Targets" in markdown and "tiny ESM-2" in markdown and "fp16+ln32" in markdown
