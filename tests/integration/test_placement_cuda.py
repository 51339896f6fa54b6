"""Where each precision runs: the FP32 reference on the CPU or spread over GPUs (CUDA only)."""

import pytest
import torch
from cli_runner import read_report, run_cli

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_reference_on_the_cpu_attempts_on_the_gpu(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = run_cli(
        "validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta, "--device", "cuda",
        "--reference-device", "cpu", "-o", out,
    )
    assert result.exit_code == 0, text
    report = read_report(out)
    reference, fp16 = report["attempts"][:2]
    assert reference["placement"] == "cpu" and fp16["placement"].startswith("cuda")
    assert fp16["speedup_vs_fp32"] is None and fp16["metrics"]["min_cosine"] > 0.999
    assert any("reference ran on cpu" in note for note in report["notes"])


@cuda
def test_reference_spread_over_the_gpus(checkpoints, small_fasta, tmp_path):
    pytest.importorskip("accelerate")
    out = tmp_path / "out"
    result, text = run_cli(
        "validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta, "--device", "cuda",
        "--reference-device", "map", "-o", out,
    )
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["attempts"][0]["placement"].startswith("cuda:0 (")
    assert report["attempts"][1]["metrics"]["min_cosine"] > 0.999
