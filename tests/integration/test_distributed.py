"""Two processes on the CPU (torchrun, gloo backend) against one process, on tiny real checkpoints.

The gathered report must equal the single-process report in everything but timing and the
environment; a failure on one rank must end every rank with one error and no report.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fp16guard.testing import build_model, save_checkpoint

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
# Fields that differ between runs by nature: wall times, dates, where it ran.
VOLATILE = {"timing", "speedup_vs_fp32", "memory_ratio_vs_fp32", "peak_memory_bytes", "placement", "ranks"}


def _fasta(path: Path, count: int = 30, without: str = "") -> Path:
    """Deterministic sequences of 5 to 90 residues (``without`` letters left out)."""
    import random

    rng = random.Random(1)
    letters = [c for c in RESIDUES if c not in without]
    path.write_text("".join(f">p{i}\n{''.join(rng.choices(letters, k=rng.randint(5, 90)))}\n" for i in range(count)))
    return path


def _env() -> dict:
    # One thread per process in every run, so CPU kernels reduce in the same order.
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _cli(*args, launcher=("-m", "fp16guard_cli")) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *launcher, *[str(a) for a in args]], capture_output=True, text=True, env=_env(), timeout=300
    )


def _torchrun(script: Path, *args) -> subprocess.CompletedProcess:
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script))
    return _cli(*args, launcher=launcher)


def _stable(report: dict) -> dict:
    attempts = [{k: v for k, v in a.items() if k not in VOLATILE} for a in report["attempts"]]
    for attempt in attempts:  # the search's note ends with its time and speed
        attempt["notes"] = [re.sub(r" \(\d+\.\d s\); speed .*", "", n) for n in attempt["notes"]]
        if (attempt.get("metrics") or {}).get("agreement"):  # the agreement metrics time themselves
            agreement = {k: v for k, v in attempt["metrics"]["agreement"].items() if k != "seconds"}
            attempt["metrics"] = {**attempt["metrics"], "agreement": agreement}
    return {"attempts": attempts,
            **{k: report[k] for k in ("model", "dataset", "thresholds", "passed", "passing_policy", "summary",
                                      "notes")}}


def test_two_ranks_give_the_single_process_report(checkpoints, tmp_path):
    """Planted MLP overflow: full FP16 fails, --search bisects (its decisions need the
    gathered embeddings), --profile merges per-block statistics from both ranks."""
    fasta = _fasta(tmp_path / "set.fasta")
    common = ["validate", "esm2", "--weights", checkpoints["mlp"], "-s", fasta, "--device", "cpu",
              "--max-tokens", "400", "--no-fallback", "--search", "--profile"]
    single = _cli(*common, "-o", tmp_path / "one")
    double = _cli(*common, "-o", tmp_path / "two", "--gpus", "2")
    assert single.returncode == double.returncode == 0, double.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert one["dataset"]["batches"] >= 4
    assert two["passing_policy"] == "fp16+islands32" and two["attempts"][1]["layers"]
    # Every per-sequence cosine, token statistic and per-block figure, to the bit.
    assert _stable(two) == _stable(one)
    assert one["environment"]["world_size"] == 1 and two["environment"]["world_size"] == 2
    assert [r["rank"] for r in two["environment"]["ranks"]] == [0, 1]
    ranks = two["attempts"][1]["ranks"]
    assert len(ranks) == 2 and all(r["batches"] >= 1 for r in ranks)
    assert sum(r["sequences"] for r in ranks) == 30
    tokens = one["attempts"][1]["timing"]["tokens"]
    assert sum(r["tokens"] for r in ranks) == tokens == two["attempts"][1]["timing"]["tokens"]
    # Rank 0 alone printed the summary.
    assert double.stdout.count("PASS: ") == 1 and "PASS: " not in double.stderr


def test_a_failure_on_one_rank_ends_every_rank_with_one_error_and_no_report(checkpoints, tmp_path):
    out = tmp_path / "out"
    proc = _torchrun(
        HERE / "dist_fault.py", "validate", "esm2", "--weights", checkpoints["healthy"],
        "-s", _fasta(tmp_path / "s.fasta"),
        "--device", "cpu", "--max-tokens", "400", "-o", out,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "rank 1 of 2 failed while running fp16" in errors[0] and "simulated device fault" in errors[0]
    assert not out.exists()


def test_a_sequence_that_breaks_fp32_fails_every_rank_through_the_launcher(tmp_path):
    """A real cause: a corrupted checkpoint whose embedding of W is Inf, so the FP32 reference
    of the one sequence holding W is NaN, on whichever rank embeds it."""
    from esm.data import Alphabet

    model = build_model()
    with torch.no_grad():
        model.embed_tokens.weight[Alphabet.from_architecture("ESM-1b").get_idx("W")] = float("inf")
    weights = save_checkpoint(model, tmp_path / "broken.pt")
    fasta = _fasta(tmp_path / "s.fasta", without="W")
    fasta.write_text(fasta.read_text() + ">withW\nMKWWLLA\n")
    out = tmp_path / "out"
    proc = _cli("validate", "esm2", "--weights", weights, "-s", fasta, "--device", "cpu", "--max-tokens", "400",
                "-o", out, "--gpus", "2")
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "withW" in errors[0] and "FP32 reference" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA devices")
def test_more_processes_than_gpus_is_one_clear_error(checkpoints, tmp_path):
    """Every rank finds too few GPUs before joining the others; rank 0 alone says so."""
    out = tmp_path / "out"
    proc = _cli(
        "validate", "esm2", "--weights", checkpoints["healthy"], "-s", _fasta(tmp_path / "s.fasta"),
        "--device", "cuda", "-o", out, "--gpus", "2",
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    expected = "error: 2 processes for CUDA, but no CUDA device is visible (--device cpu runs them on the CPU)"
    assert errors == [expected], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
