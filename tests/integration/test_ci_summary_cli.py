"""GitHub Actions: the CLI appends report.md to $GITHUB_STEP_SUMMARY and, on failure, prints one
``::error`` annotation naming the worst sequence and the policy (real runs on tiny checkpoints)."""

from __future__ import annotations

from cli_runner import run_cli

#: Unset whatever the machine running the tests has, so each test decides.
NOT_GITHUB = {"GITHUB_ACTIONS": None, "GITHUB_STEP_SUMMARY": None}


def validate(weights, fasta, out, env):
    return run_cli("validate", "esm2", "--weights", weights, "-s", fasta, "--device", "cpu", "-o", out,
                   env={**NOT_GITHUB, **env})


def annotations(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("::")]


def test_a_passing_run_appends_its_summary_and_annotates_nothing(checkpoints, small_fasta, tmp_path):
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    result, text = validate(checkpoints["healthy"], small_fasta, tmp_path / "out",
                            {"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 0, text
    written = summary.read_text()
    assert written.startswith("earlier step\n")  # appended, never replaced
    assert written.removeprefix("earlier step\n") == (tmp_path / "out" / "report.md").read_text() + "\n"
    assert "# fp16guard PASS" in written and "| policy |" in written
    assert annotations(text) == []


def test_a_failing_run_appends_and_prints_one_error_naming_sequence_and_policy(checkpoints, small_fasta, tmp_path):
    summary = tmp_path / "step_summary.md"
    result, text = validate(checkpoints["mlp"], small_fasta, tmp_path / "out", {"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 1, text
    assert summary.read_text().startswith("# fp16guard FAIL")
    (line,) = annotations(result.stdout)  # on stdout, where GitHub reads workflow commands
    assert line.startswith("::error title=fp16guard::FAIL: ")
    assert "policy fp16+res32: alpha (cosine NaN" in line, line  # the last rung tried, its worst sequence
    assert "\n" not in line


def test_outside_github_nothing_is_written_or_printed(checkpoints, small_fasta, tmp_path):
    result, text = validate(checkpoints["mlp"], small_fasta, tmp_path / "out", {})
    assert result.exit_code == 1, text
    assert annotations(text) == []


def test_an_unwritable_summary_is_a_warning_and_the_verdict_stands(checkpoints, small_fasta, tmp_path):
    result, text = validate(checkpoints["healthy"], small_fasta, tmp_path / "out",
                            {"GITHUB_STEP_SUMMARY": str(tmp_path)})
    assert result.exit_code == 0, text
    assert "warning: cannot append to $GITHUB_STEP_SUMMARY" in text
