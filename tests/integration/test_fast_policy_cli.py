"""The fast variant after the ladder (packed for ESM-2): tried, reported, recommended when it
passes and is resolvably faster on a GPU, and what --save-policy then writes."""

import copy
import json
import xml.etree.ElementTree as ET

import pytest
import torch
from cli_runner import ladder, read_report, run_cli

from fp16guard import Embedder, apply_policy
from fp16guard.core.config import ModelSource
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.runner import run_policy
from fp16guard.models.esm2 import TARGET
from fp16guard.numerics.metrics import masked_mean
from fp16guard.numerics.policy import get_policy
from fp16guard.testing import write_dnabert
from fp16guard.workflows.validate import ladder as workflow


def test_fast_variant_is_reported_and_the_recommendation_follows_the_rule(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = run_cli("validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta, "-o", out,
                           "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passing_policy"] == "fp16" and [a["policy"]["name"] for a in ladder(report)] == ["fp32", "fp16"]
    fast = report["attempts"][-1]
    assert (fast["role"], fast["policy"]["name"], fast["passed"]) == ("fast", "fp16+packed", True)
    assert fast["policy"]["fast_attention"] and fast["policy"]["fp32_positional"]
    assert fast["policy"]["layout"] == "packed"
    assert fast["metrics"]["min_cosine"] > 0.999
    # CPU timings never decide: the simpler policy is recommended, and the report says why.
    assert report["recommended_policy"] == "fp16"
    assert any("CPU timings do not predict GPU speed" in note for note in fast["notes"])
    markdown = (out / "report.md").read_text()
    assert "**Recommended policy**: `fp16`" in markdown and "PASS (variant)" in markdown
    assert "PASS (fast)" not in markdown
    # The packed attempt was checked for batch composition, and the check passed.
    assert fast["composition"]["passed"] and set(fast["composition"]["pairs"]) == {"alone vs padded", "alone vs packed",
                                                                                   "padded vs packed"}
    assert "SDPA" in fast["timing"]["attention"] and fast["timing"]["first_pass_seconds"] > 0
    assert report["attempts"][1]["timing"]["attention"] == "unfused (matmul + softmax)"  # fair-esm's own
    # The verdict's CI view is unchanged: the fast variant is no test case.
    assert ET.parse(out / "junit.xml").getroot().get("tests") == "1"


def test_recommended_fast_policy_is_saved_and_reapplies_bit_identically(checkpoints, small_fasta, tmp_path,
                                                                        monkeypatch):
    # Recommend whenever it passes, as if on a GPU where it measured faster.
    monkeypatch.setattr(workflow, "FAST_MARGIN", 0.0)
    monkeypatch.setattr(workflow, "RECOMMEND_ON_CPU", True)
    out, policy_file = tmp_path / "out", tmp_path / "policy.json"
    result, text = run_cli(
        "validate", "esm2", "--weights", checkpoints["residual"], "-s", small_fasta, "-o", out, "--device", "cpu",
        "--save-policy", policy_file,
    )
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passing_policy"] == "fp16+res32" and report["recommended_policy"] == "fp16+res32+packed"
    assert "Recommended: 'fp16+res32+packed'" in report["summary"] and "fp16+res32+packed" in text
    document = json.loads(policy_file.read_text())
    assert document["policy"]["name"] == "fp16+res32+packed" and document["policy"]["layout"] == "packed"
    # The policy file round-trips to the very policy that was validated.
    assert get_policy(policy_file) == get_policy(document["policy"]) and get_policy(policy_file).fp32_residual
    assert document["validated"]["min_cosine"] == report["attempts"][-1]["metrics"]["min_cosine"] > 0.999

    loaded = TARGET.load(ModelSource(weights=checkpoints["residual"]))
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "MKVLAAGIVG", "ACDEFGHIKLMNPQRSTVWY"]
    batches = prepare_batches(TARGET, loaded, sequences, TARGET.measure(loaded, sequences), max_tokens=64)
    validated = run_policy(TARGET, loaded, get_policy(policy_file), batches, len(sequences), torch.device("cpu"), 3)
    # In user code: the library embeds with the saved policy, packed as validated, bit for bit.
    embedder = Embedder.load("esm2", weights=checkpoints["residual"], policy=policy_file, device="cpu", max_tokens=64)
    assert embedder.applied.policy.layout == "packed"
    assert list(embedder.applied.fp32_modules) == document["fp32_modules"]
    mine = embedder.embed(sequences)
    assert torch.equal(mine, validated.pooled) and torch.isfinite(mine).all()
    # apply_policy on a user's own model: its plain forward (padded rows) still works under the
    # packed policy and agrees with the packed embeddings to rounding.
    model = copy.deepcopy(loaded.module)
    apply_policy(model, str(policy_file))
    with torch.inference_mode():
        for batch in batches:
            hidden = model(batch.tokens, repr_layers=[3])["representations"][3]
            padded = masked_mean(hidden, batch.pool_mask)
            assert torch.nn.functional.cosine_similarity(padded, mine[list(batch.indices)]).min() > 0.999


@pytest.fixture(scope="module")
def dnabert_dir(tmp_path_factory):
    return write_dnabert(tmp_path_factory.mktemp("dnabert") / "healthy")


def test_dnabert_fast_policy_passes(dnabert_dir, tmp_path):
    fasta = tmp_path / "dna.fasta"
    fasta.write_text(">a\nACGTACGTTTGACNNNNACGTAGCTAGCTAGGGCGCGCATATATATTAGCG\n>b\nACGTTGCAAT\n>c\nGGGGCCCCATATATTTTAAAACACA\n")
    out = tmp_path / "out"
    result, text = run_cli("validate", "dnabert", "--model", dnabert_dir, "-s", fasta, "-o", out, "--device", "cpu",
                           "--policy", "fp16+sdpa")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert [a["policy"]["name"] for a in report["attempts"]] == ["fp32", "fp16+sdpa"]  # --policy: nothing else
    assert report["attempts"][1]["metrics"]["min_cosine"] > 0.999
    assert any("cast once" in note for note in report["attempts"][1]["notes"])


def test_when_packing_is_refused_the_fused_attention_variant_is_tried_instead(checkpoints, small_fasta, tmp_path,
                                                                              monkeypatch):
    from fp16guard.errors import UnsupportedPolicyError
    from fp16guard.models import esm2

    def refuse():
        raise UnsupportedPolicyError("no packing here (simulated)")

    monkeypatch.setattr(esm2, "require_packing", refuse)
    out = tmp_path / "out"
    result, text = run_cli("validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta, "-o", out,
                           "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["attempts"][-1]["policy"]["name"] == "fp16+sdpa" and report["attempts"][-1]["role"] == "fast"
    assert any("fp16+packed not tried: no packing here (simulated)" in note for note in report["notes"])
