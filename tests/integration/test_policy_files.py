"""Policies as files: --save-policy writes what passed; apply_policy(model, "policy.json")
reproduces that precision layout exactly; --try runs a policy beside the ladder."""

import copy
import json

import torch
from cli_runner import ladder, read_report, run_cli

from fp16guard import apply_policy
from fp16guard.core.config import ModelSource
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.runner import run_policy
from fp16guard.models.esm2 import TARGET
from fp16guard.numerics.metrics import masked_mean
from fp16guard.numerics.policy import get_policy


def test_saved_policy_reapplied_to_a_fresh_model_is_bit_identical(checkpoints, small_fasta, tmp_path):
    out, policy_file = tmp_path / "out", tmp_path / "policy.json"
    result, text = run_cli(
        "validate", "esm2", "--weights", checkpoints["residual"], "-s", small_fasta, "-o", out, "--device", "cpu",
        "--save-policy", policy_file,
    )
    assert result.exit_code == 0, text
    document = json.loads(policy_file.read_text())
    report = read_report(out)
    # What --save-policy writes is the recommendation: fp16+res32 or its fast variant.
    assert report["passing_policy"] == "fp16+res32"
    assert document["policy"]["name"] == report["recommended_policy"] in ("fp16+res32", "fp16+res32+sdpa")
    assert document["validated"]["weights_sha256"] == report["model"]["weights_sha256"]
    assert document["fp32_modules"] == ladder(report)[-1]["fp32_modules"]

    # The validation run's pass, and the user's own model with the saved policy applied.
    loaded = TARGET.load(ModelSource(weights=checkpoints["residual"]))
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "MKVLAAGIVG", "ACDEFGHIKLMNPQRSTVWY"]
    lengths = TARGET.measure(loaded, sequences)
    batches = prepare_batches(TARGET, loaded, sequences, lengths, max_tokens=64)
    validated = run_policy(TARGET, loaded, get_policy(document["policy"]), batches, len(sequences), torch.device("cpu"),
                           3)

    model = copy.deepcopy(loaded.module)
    applied = apply_policy(model, str(policy_file))
    assert list(applied.fp32_modules) == document["fp32_modules"]
    mine = torch.empty_like(validated.pooled)
    with torch.inference_mode():
        for batch in batches:
            hidden = model(batch.tokens, repr_layers=[3])["representations"][3]
            mine[list(batch.indices)] = masked_mean(hidden, batch.pool_mask)
    assert torch.equal(mine, validated.pooled)
    assert torch.isfinite(mine).all()


def test_no_policy_file_when_nothing_passed(checkpoints, small_fasta, tmp_path):
    policy_file = tmp_path / "policy.json"
    result, _ = run_cli(
        "validate", "esm2", "--weights", checkpoints["mlp"], "-s", small_fasta, "-o", tmp_path / "out",
        "--device", "cpu", "--save-policy", policy_file,
    )
    assert result.exit_code == 1
    assert not policy_file.exists()


def test_try_bf16_is_reported_beside_the_ladder_without_changing_the_verdict(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = run_cli(
        "validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta, "-o", out, "--device", "cpu",
        "--try", "bf16",
    )
    assert result.exit_code == 0, text
    report = read_report(out)
    roles = [(a["policy"]["name"], a["role"]) for a in report["attempts"] if a["role"] != "fast"]
    assert roles == [("fp32", "reference"), ("fp16", "attempt"), ("bf16", "comparison")]
    bf16 = report["attempts"][-1]
    assert bf16["policy"]["dtype"] == "bfloat16"
    # BF16 keeps 8 significant bits to FP16's 11: further from FP32 on the same batches.
    assert bf16["metrics"]["relative_l2_error"] > report["attempts"][1]["metrics"]["relative_l2_error"]
    assert "bf16" not in (out / "junit.xml").read_text()


def test_try_with_an_unknown_policy_fails_before_any_work(checkpoints, small_fasta, tmp_path):
    result, text = run_cli(
        "validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta, "-o", tmp_path / "out",
        "--try", "fp4",
    )
    assert result.exit_code == 2 and "unknown policy" in text
    assert not (tmp_path / "out").exists()
