"""--search on tiny fair-esm checkpoints with planted FP16 failures in known layers."""

import pytest
from cli_runner import ladder, read_report, run_cli

from fp16guard.testing import build_model, plant_mlp_overflow, save_checkpoint


@pytest.mark.parametrize("planted", [(1,), (0, 4)])
def test_search_finds_exactly_the_planted_layers_and_the_saved_policy_passes(tmp_path, small_fasta, planted):
    model = build_model(layers=6)
    for layer in planted:
        plant_mlp_overflow(model, layer=layer)
    weights = save_checkpoint(model, tmp_path / "planted.pt")
    out, policy_file = tmp_path / "out", tmp_path / "policy.json"
    result, text = run_cli(
        "validate", "esm2", "--weights", weights, "-s", small_fasta, "-o", out, "--device", "cpu",
        "--search", "--save-policy", policy_file,
    )
    assert result.exit_code == 0, text
    report = read_report(out)
    # The ladder cannot fix an FP16 overflow inside an MLP; the search can.
    assert [a["passed"] for a in report["attempts"][1:5]] == [False] * 4
    found = ladder(report)[-1]
    # Each planted layer is narrowed from the whole block to its MLP, and nothing else is FP32.
    assert found["policy"]["fp32_blocks"] == []
    assert found["policy"]["fp32_parts"] == {"mlp": [layer + 1 for layer in planted]}
    assert found["passed"] and report["passing_policy"] == "fp16+islands32"
    assert any("forward passes" in note for note in found["notes"])

    # The saved policy, re-applied through --policy, passes on its own.
    result, text = run_cli(
        "validate", "esm2", "--weights", weights, "-s", small_fasta, "-o", tmp_path / "again", "--device", "cpu",
        "--policy", policy_file,
    )
    assert result.exit_code == 0, text
    again = read_report(tmp_path / "again")
    assert again["attempts"][1]["policy"]["fp32_parts"] == {"mlp": [layer + 1 for layer in planted]}


def test_search_says_when_no_blocks_help(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = run_cli(
        "validate", "esm2", "--weights", checkpoints["residual"], "-s", small_fasta, "-o", out, "--device", "cpu",
        "--search"
    )
    assert result.exit_code == 0, text  # the ladder's fp16+res32 still passes
    report = read_report(out)
    assert report["passing_policy"] == "fp16+res32"
    assert any("a whole-model policy is needed" in note for note in report["notes"])


def test_search_skipped_when_fp16_passes(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, _ = run_cli("validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta, "-o", out,
                        "--device", "cpu", "--search")
    assert result.exit_code == 0
    assert any("search skipped: full FP16 passed" in note for note in read_report(out)["notes"])
