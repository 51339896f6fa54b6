"""The fast-attention variant after the ladder: tried, reported, recommended when it passes and
is faster, and what --save-policy then writes."""

import copy
import json
import xml.etree.ElementTree as ET

import pytest
import torch
from cli_runner import ladder, read_report, run_cli

from fp16guard import apply_policy, workflow
from fp16guard.metrics import masked_mean
from fp16guard.policy import get_policy
from fp16guard.runner import run_policy
from fp16guard.targets.base import ModelSource
from fp16guard.targets.esm2 import TARGET
from fp16guard.testing import write_dnabert
from fp16guard.workflow import prepare_batches


def test_fast_variant_is_reported_and_the_recommendation_follows_the_rule(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = run_cli("validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passing_policy"] == "fp16" and [a["policy"]["name"] for a in ladder(report)] == ["fp32", "fp16"]
    fast = report["attempts"][-1]
    assert (fast["role"], fast["policy"]["name"], fast["passed"]) == ("fast", "fp16+sdpa", True)
    assert fast["policy"]["fast_attention"] and fast["policy"]["fp32_positional"]
    assert fast["metrics"]["min_cosine"] > 0.999
    ratio = fast["timing"]["tokens_per_second"] / report["attempts"][1]["timing"]["tokens_per_second"]
    expected = "fp16+sdpa" if ratio >= workflow.FAST_MARGIN else "fp16"
    assert report["recommended_policy"] == expected
    assert f"**Recommended policy**: `{expected}`" in (out / "report.md").read_text()
    assert "PASS (fast)" in (out / "report.md").read_text()
    # The verdict's CI view is unchanged: the fast variant is no test case.
    assert ET.parse(out / "junit.xml").getroot().get("tests") == "1"


def test_recommended_fast_policy_is_saved_and_reapplies_bit_identically(checkpoints, small_fasta, tmp_path, monkeypatch):
    monkeypatch.setattr(workflow, "FAST_MARGIN", 0.0)  # recommend whenever it passes: CPU timing is noise
    out, policy_file = tmp_path / "out", tmp_path / "policy.json"
    result, text = run_cli(
        "validate", "esm2", "--weights", checkpoints["residual"], "-s", small_fasta, "-o", out, "--device", "cpu",
        "--save-policy", policy_file,
    )
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passing_policy"] == "fp16+res32" and report["recommended_policy"] == "fp16+res32+sdpa"
    assert "Recommended: 'fp16+res32+sdpa'" in report["summary"] and "fp16+res32+sdpa" in text
    document = json.loads(policy_file.read_text())
    assert document["policy"]["name"] == "fp16+res32+sdpa" and document["policy"]["fast_attention"]
    assert document["validated"]["min_cosine"] == report["attempts"][-1]["metrics"]["min_cosine"] > 0.999

    loaded = TARGET.load(ModelSource(weights=checkpoints["residual"]))
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "MKVLAAGIVG", "ACDEFGHIKLMNPQRSTVWY"]
    batches = prepare_batches(TARGET, loaded, sequences, TARGET.measure(loaded, sequences), max_tokens=64)
    validated = run_policy(TARGET, loaded, get_policy(policy_file), batches, len(sequences), torch.device("cpu"), 3)
    model = copy.deepcopy(loaded.module)
    applied = apply_policy(model, str(policy_file))
    assert applied.policy.fast_attention and list(applied.fp32_modules) == document["fp32_modules"]
    mine = torch.empty_like(validated.pooled)
    with torch.inference_mode():
        for batch in batches:
            hidden = model(batch.tokens, repr_layers=[3])["representations"][3]
            mine[list(batch.indices)] = masked_mean(hidden, batch.pool_mask)
    assert torch.equal(mine, validated.pooled) and torch.isfinite(mine).all()


@pytest.fixture(scope="module")
def dnabert_dir(tmp_path_factory):
    return write_dnabert(tmp_path_factory.mktemp("dnabert") / "healthy")


def test_dnabert_fast_policy_passes(dnabert_dir, tmp_path):
    fasta = tmp_path / "dna.fasta"
    fasta.write_text(">a\nACGTACGTTTGACNNNNACGTAGCTAGCTAGGGCGCGCATATATATTAGCG\n>b\nACGTTGCAAT\n>c\nGGGGCCCCATATATTTTAAAACACA\n")
    out = tmp_path / "out"
    result, text = run_cli("validate", "dnabert", "--model", dnabert_dir, "-s", fasta, "-o", out, "--device", "cpu", "--policy", "fp16+sdpa")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert [a["policy"]["name"] for a in report["attempts"]] == ["fp32", "fp16+sdpa"]  # --policy: nothing else
    assert report["attempts"][1]["metrics"]["min_cosine"] > 0.999
    assert any("cast once" in note for note in report["attempts"][1]["notes"])
