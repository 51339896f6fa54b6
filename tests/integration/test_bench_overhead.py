"""bench/overhead.py runs on the CPU and times every path it names."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_overhead_bench_times_every_path(tmp_path):
    out = tmp_path / "overhead.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead.py"), "--out", str(out), "--sequences", "30", "--repeats", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["batches"] > 1 and results["tokens"] > 30 * 20
    for path in ("run_policy", "run_policy_reference", "embedder"):
        for policy in ("fp32", "fp16+packed"):
            assert results[f"{path} {policy}"] > 0
