"""Exit codes that mean one thing each, checked through the CLI on tiny fair-esm checkpoints:
bad output paths and policy files exit 2 before any model loads, an internal error exits 4 in one
line, no run without a verdict leaves an earlier run's report, and the summary never says "keep
this model in FP32" where the ladder did not run."""

from __future__ import annotations

import os
import stat
import sys

import pytest
from cli_runner import read_report, run_cli


def validate(weights, fasta, out, *args):
    return run_cli("validate", "esm2", "--weights", weights, "-s", fasta, "--device", "cpu", "-o", out, *args)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def assert_one_line_before_loading(result, text, code, *words):
    assert result.exit_code == code, text
    assert "Traceback" not in text and "loading" not in text, text
    errors = error_lines(text)
    assert len(errors) == 1, text
    for word in words:
        assert word in errors[0], errors[0]


# --------------------------------------------------------------------------- output paths (exit 2)


def test_an_out_that_is_a_file_exits_2_before_loading(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "outfile"
    out.write_text("")
    result, text = validate(checkpoints["healthy"], small_fasta, out)
    assert_one_line_before_loading(result, text, 2, "--out", "outfile", "not a directory")


def test_a_junit_xml_that_is_a_directory_exits_2_before_loading(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    (out / "junit.xml").mkdir(parents=True)
    result, text = validate(checkpoints["healthy"], small_fasta, out)
    assert_one_line_before_loading(result, text, 2, "junit.xml", "is a directory")


def test_unwritable_policy_and_reference_paths_exit_2_before_loading(checkpoints, small_fasta, tmp_path):
    (tmp_path / "afile").write_text("")
    result, text = validate(checkpoints["healthy"], small_fasta, tmp_path / "o1",
                            "--save-policy", tmp_path / "afile" / "p.json")
    assert_one_line_before_loading(result, text, 2, "--save-policy", "afile")
    result, text = validate(checkpoints["healthy"], small_fasta, tmp_path / "o2", "--save-reference", tmp_path)
    assert_one_line_before_loading(result, text, 2, "--save-reference", "is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_out_exits_2_before_loading(checkpoints, small_fasta, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        result, text = validate(checkpoints["healthy"], small_fasta, ro / "out")
    finally:
        ro.chmod(0o755)
    assert_one_line_before_loading(result, text, 2, "--out", "not writable")


def test_a_write_that_fails_after_the_check_exits_3_in_one_line(checkpoints, small_fasta, tmp_path, monkeypatch):
    import fp16guard.io.outputs

    real = fp16guard.io.outputs.os.replace

    def full(src, dst):
        if str(dst).endswith("junit.xml"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(fp16guard.io.outputs.os, "replace", full)
    out = tmp_path / "out"
    result, text = validate(checkpoints["healthy"], small_fasta, out)
    assert result.exit_code == 3, text
    assert "Traceback" not in text and error_lines(text) == [f"error: cannot write {out / 'junit.xml'}: No "
                                                             "space left on device"]
    assert not (out / "report.json").exists()  # this run's half-written report is not left behind


# --------------------------------------------------------------------------- policy files (exit 2)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"dtype": "float16"}', "'name'"),
        ("[1, 2]", "JSON object"),
        ('{"name": "x", "fp32_blocks": "abc"}', "'fp32_blocks'"),
        ('{"name": "x", "fp32_layer_norms": "yes"}', "'fp32_layer_norms'"),
        ('{"policy": 3}', "'policy'"),
    ],
)
@pytest.mark.parametrize("option", ["--policy", "--try"])
def test_a_malformed_policy_file_exits_2_naming_the_file_and_field(checkpoints, small_fasta, tmp_path, option, content,
                                                                   words):
    policy = tmp_path / "p.json"
    policy.write_text(content)
    result, text = validate(checkpoints["healthy"], small_fasta, tmp_path / "out", option, policy)
    assert_one_line_before_loading(result, text, 2, "p.json", words)


def test_a_non_utf8_policy_file_exits_2(checkpoints, small_fasta, tmp_path):
    policy = tmp_path / "p.json"
    policy.write_bytes(b'{"name": "\xff"}')
    result, text = validate(checkpoints["healthy"], small_fasta, tmp_path / "out", "--policy", policy)
    assert_one_line_before_loading(result, text, 2, "p.json", "UTF-8")


# --------------------------------------------------------------------------- internal errors (exit 4)


def _crash(*args, **kwargs):
    raise ZeroDivisionError("planted bug")


def test_an_internal_error_exits_4_in_one_line_with_a_log(checkpoints, small_fasta, tmp_path, monkeypatch):
    import fp16guard.workflows.validate

    monkeypatch.setattr(fp16guard.workflows.validate, "validate", _crash)
    out = tmp_path / "out"
    result, text = validate(checkpoints["healthy"], small_fasta, out)
    assert result.exit_code == 4, text
    assert "Traceback" not in text
    [line] = error_lines(text)
    log = out / "fp16guard-error.log"
    assert "internal error: ZeroDivisionError: planted bug" in line and "--debug" in line and str(log) in line
    assert "Traceback" in log.read_text() and "planted bug" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) & 0o044  # readable by others under the usual umask
    assert not (out / "report.json").exists()

    result, text = validate(checkpoints["healthy"], small_fasta, out, "--debug")
    assert result.exit_code == 4
    assert "Traceback" in text and "ZeroDivisionError: planted bug" in text
    assert len(error_lines(text)) == 1


def test_the_entry_point_turns_any_escaped_exception_into_exit_4(monkeypatch, capsys):
    import fp16guard_cli.main as main

    monkeypatch.setattr(main, "app", _crash)
    monkeypatch.setattr(sys, "argv", ["fp16guard", "list"])
    with pytest.raises(SystemExit) as caught:
        main.run()
    assert caught.value.code == 4
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: planted bug" in err and "Traceback" not in err


# --------------------------------------------------------------------------- stale reports


def test_no_run_without_a_verdict_leaves_an_earlier_pass(checkpoints, small_fasta, tmp_path, monkeypatch):
    out = tmp_path / "out"
    result, text = validate(checkpoints["healthy"], small_fasta, out)
    assert result.exit_code == 0 and read_report(out)["passed"], text

    # exit 2: a bad policy file
    policy = tmp_path / "p.json"
    policy.write_text("[]")
    result, _ = validate(checkpoints["healthy"], small_fasta, out, "--policy", policy)
    assert result.exit_code == 2
    assert not any((out / name).exists() for name in ("report.json", "junit.xml", "report.md"))

    # exit 3: weights that do not load
    validate(checkpoints["healthy"], small_fasta, out)
    assert (out / "report.json").exists()
    result, _ = validate(tmp_path / "missing.pt", small_fasta, out)
    assert result.exit_code == 3
    assert not (out / "report.json").exists() and not (out / "junit.xml").exists()

    # exit 130: interrupted
    validate(checkpoints["healthy"], small_fasta, out)
    import fp16guard.workflows.validate

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fp16guard.workflows.validate, "validate", interrupt)
    result, _ = validate(checkpoints["healthy"], small_fasta, out)
    assert result.exit_code == 130
    assert not (out / "report.json").exists() and not (out / "junit.xml").exists()


# --------------------------------------------------------------------------- the summary


def test_keep_in_fp32_only_after_the_whole_ladder_failed(checkpoints, small_fasta, tmp_path):
    result, text = validate(checkpoints["mlp"], small_fasta, tmp_path / "a", "--no-fallback")
    assert result.exit_code == 1
    summary = read_report(tmp_path / "a")["summary"]
    assert "keep this model in FP32" not in summary and "fallbacks were not tried" in summary
    assert "keep this model in FP32" not in text

    result, _ = validate(checkpoints["mlp"], small_fasta, tmp_path / "b", "--policy", "fp16+ln32")
    assert result.exit_code == 1
    summary = read_report(tmp_path / "b")["summary"]
    assert "keep this model in FP32" not in summary and "fp16+ln32" in summary

    # A --try policy that passed is information only: still exit 1, but no "keep in FP32".
    result, _ = validate(checkpoints["mlp"], small_fasta, tmp_path / "c", "--try", "bf16")
    assert result.exit_code == 1
    report = read_report(tmp_path / "c")
    assert [a["passed"] for a in report["attempts"] if a["role"] == "comparison"] == [True]
    assert "keep this model in FP32" not in report["summary"] and "--try bf16 passed" in report["summary"]


def test_help_shows_flags_without_a_type(monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    result, text = run_cli("validate", "esm2", "--help")
    assert result.exit_code == 0
    assert "--no-fallback" in text and "--debug" in text and "<bool>" not in text
    assert "4 internal error" in " ".join(text.split())
