"""--max-tokens: auto by default (a fixed budget on CPU), an explicit number wins; the report
says which budget was used and why."""

import pytest
from cli_runner import read_report, run_cli


def validate(checkpoints, small_fasta, out, *args):
    return run_cli("validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta, "-o", out,
                   "--device", "cpu", *args)


@pytest.mark.parametrize(
    "args, tokens, reason",
    [([], 8192, "auto"), (["--max-tokens", "auto"], 8192, "auto"), (["--max-tokens", "64"], 64, "--max-tokens")],
)
def test_the_budget_and_its_reason_are_reported(checkpoints, small_fasta, tmp_path, args, tokens, reason):
    result, text = validate(checkpoints, small_fasta, tmp_path / "out", "--no-fallback", *args)
    assert result.exit_code == 0, text
    dataset = read_report(tmp_path / "out")["dataset"]
    assert dataset["max_tokens"] == tokens
    assert dataset["max_tokens_reason"].startswith(reason)
    assert dataset["batches"] > 1 if tokens == 64 else dataset["batches"] == 1


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1.5"])
def test_a_bad_budget_is_a_usage_error(checkpoints, small_fasta, tmp_path, value):
    result, text = validate(checkpoints, small_fasta, tmp_path / "out", "--max-tokens", value)
    assert result.exit_code == 2, text
    assert "--max-tokens must be auto or a positive whole number" in text and "Traceback" not in text
