"""What a CI job relies on, through the CLI on tiny fair-esm checkpoints: the config file and
its precedence under the command line, the report's record of each setting's source, --quiet and
--json output, `fp16guard diff` of a healthy run against a planted failure, --version, NO_COLOR."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
from cli_runner import read_report, run_cli
from typer.testing import CliRunner

from fp16guard_cli.main import app


def run_split(*args, env=None):
    """Invoke the CLI keeping stdout and stderr apart."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture()
def project(tmp_path, monkeypatch, checkpoints, small_fasta):
    """A working directory whose fp16guard.toml names the healthy checkpoint and the small set."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fp16guard.toml").write_text(
        f'target = "esm2"\nweights = "{checkpoints["healthy"]}"\nsequences = "{small_fasta}"\n'
        'device = "cpu"\nmin-cosine = 0.95\nout = "reports"\npolicy = "fp16"\n'
    )
    return tmp_path


def test_the_config_file_runs_validate_and_the_report_says_where_each_setting_came_from(project):
    result, text = run_cli("validate")  # the target comes from the file
    assert result.exit_code == 0, text
    settings = read_report(project / "reports")["settings"]
    config = f"config:{project / 'fp16guard.toml'}"
    assert settings["target"] == {"value": "esm2", "source": config}
    assert settings["min-cosine"] == {"value": 0.95, "source": config}
    assert settings["out"] == {"value": str(project / "reports"), "source": config}
    assert settings["max-length"] == {"value": None, "source": "default"}


def test_the_command_line_overrides_the_config_file(project):
    result, text = run_cli("validate", "esm2", "--min-cosine", "0.97", "-o", "elsewhere",
                           env={"FP16GUARD_OFFLINE": "1"})
    assert result.exit_code == 0, text
    report = read_report(project / "elsewhere")
    assert report["thresholds"]["min_cosine"] == 0.97 and not (project / "reports").exists()
    settings = report["settings"]
    assert settings["min-cosine"] == {"value": 0.97, "source": "command line"}
    assert settings["target"]["source"] == "command line"
    assert settings["offline"] == {"value": True, "source": "environment"}
    assert settings["policy"]["source"].startswith("config:")


@pytest.mark.parametrize(
    "line, words",
    [
        ("min_cosine = 0.9", ["unknown key 'min_cosine'", "did you mean 'min-cosine'"]),
        ('max-tokens = "lots"', ["max-tokens must be a positive integer or \"auto\""]),
        ("max-tokens = 0", ["max-tokens must be a positive integer"]),
        ("max-length = 0", ["max-length = 0:", "1"]),  # checked by the option's own type (min=1)
        ('reference-device = "gpu"', ["reference-device = 'gpu':"]),
        ("gpus = 0", ["gpus = 0:"]),
        ("pooling = 'cls'", ["pooling does not apply to `fp16guard validate esm2`"]),
        ("careful-timing = 'yes'", ["careful-timing must be true or false"]),
    ],
)
def test_a_bad_key_exits_2_naming_the_key_and_the_file_before_loading(project, line, words):
    config = project / "fp16guard.toml"
    config.write_text(config.read_text() + line + "\n")
    result, text = run_cli("validate", "esm2")
    assert result.exit_code == 2, text
    assert "loading" not in text and "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert str(config) in errors[0]
    for word in words:
        assert word in errors[0], errors[0]


def test_a_config_for_another_target_exits_2(project):
    result, text = run_cli("validate", "antiberty")
    assert result.exit_code == 2 and "target is 'esm2'" in text and "fp16guard.toml" in text, text


def test_pyproject_tool_table_is_read(tmp_path, monkeypatch, checkpoints, small_fasta):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "x"\n[tool.fp16guard]\ntarget = "esm2"\nweights = "{checkpoints["mlp"]}"\n'
        f'sequences = "{small_fasta}"\ndevice = "cpu"\nno-fallback = true\n'
    )
    result, text = run_cli("validate")
    assert result.exit_code == 1, text  # the planted failure, under full FP16 only
    report = read_report(tmp_path / "fp16guard-report")
    assert report["settings"]["no-fallback"]["source"] == f"config:{tmp_path / 'pyproject.toml'}"
    assert [a["policy"]["name"] for a in report["attempts"]] == ["fp32", "fp16"]


def test_quiet_prints_only_the_verdict_line(project):
    result = run_split("validate", "esm2", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [read_report(project / "reports")["summary"]]
    assert result.stderr == ""  # no progress, no warnings


def test_json_prints_report_json_and_nothing_else_on_stdout(project):
    result = run_split("validate", "esm2", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == read_report(project / "reports")
    assert printed["passed"] and printed["summary"] in result.stderr  # the summary moved to stderr
    quiet = run_split("validate", "esm2", "--json", "-q")
    assert json.loads(quiet.stdout)["passed"] and quiet.stderr == ""


def test_diff_of_a_healthy_run_and_a_planted_failure_exits_1_and_names_the_sequences(checkpoints, small_fasta,
                                                                                     tmp_path):
    for name in ("healthy", "mlp"):
        result, text = run_cli("validate", "esm2", "--weights", checkpoints[name], "-s", small_fasta, "--device", "cpu",
                               "-o", tmp_path / name, "--no-fallback")
        assert result.exit_code == (0 if name == "healthy" else 1), text
    result = run_split("diff", tmp_path / "healthy", tmp_path / "mlp" / "report.json", "--max-slowdown", "1000")
    assert result.exit_code == 1, result.output
    assert "PASS -> FAIL" in result.stdout and "model sha256" in result.stdout
    assert "fp16: 5 sequence(s) fell below 0.99: alpha, beta, gamma, delta, epsilon" in result.stdout
    assert "alpha: 1-" in result.stdout and "-> NaN (crossed the threshold)" in result.stdout
    as_json = json.loads(run_split("diff", tmp_path / "healthy", tmp_path / "mlp", "--json").stdout)
    assert as_json["passed"] is False and as_json["new_passed"] is False
    fp16 = next(p for p in as_json["policies"] if p["policy"] == "fp16")
    assert sorted(s["id"] for s in fp16["sequences"] if s["crossed"]) == ["alpha", "beta", "delta", "epsilon", "gamma"]
    same = run_split("diff", tmp_path / "healthy", tmp_path / "healthy", "--max-slowdown", "1000")
    assert same.exit_code == 0 and "no regression" in same.stdout, same.output
    missing = run_split("diff", tmp_path / "healthy", tmp_path / "nothing")
    assert missing.exit_code == 2 and "cannot read" in missing.stderr


def test_diff_flags_a_fall_in_neighbour_agreement_and_reads_a_schema_2_report(checkpoints, small_fasta, tmp_path):
    result, text = run_cli("validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta,
                           "--device", "cpu",
                           "-o", tmp_path / "run", "--no-fallback")
    assert result.exit_code == 0, text
    data = read_report(tmp_path / "run")
    fp16 = next(a for a in data["attempts"] if a["policy"]["name"] == "fp16")
    neighbours = fp16["metrics"]["agreement"]["neighbours"]
    neighbours["mean_overlap"] -= 0.5
    (tmp_path / "worse.json").write_text(json.dumps(data))
    worse = run_split("diff", tmp_path / "run", tmp_path / "worse.json", "--max-slowdown", "1000")
    assert worse.exit_code == 1, worse.output
    assert f"fp16: mean kNN overlap@{neighbours['k']} fell by more than 0.01" in worse.stdout
    assert "kNN overlap" in worse.stdout and "rank corr" in worse.stdout  # the table's columns
    as_json = json.loads(run_split("diff", tmp_path / "run", tmp_path / "worse.json", "--json").stdout)
    knn = next(p for p in as_json["policies"] if p["policy"] == "fp16")["agreement"][0]
    assert knn["key"] == "knn_overlap_mean" and knn["delta"] == pytest.approx(-0.5)
    # The same run as schema 2 (no agreement metrics) against schema 3, both ways round.
    del fp16["metrics"]["agreement"]
    (tmp_path / "old.json").write_text(json.dumps({**data, "schema_version": 2}))
    for old, new in [(tmp_path / "old.json", tmp_path / "run"), (tmp_path / "run", tmp_path / "old.json")]:
        same = run_split("diff", old, new, "--max-slowdown", "1000")
        assert same.exit_code == 0 and "no regression" in same.stdout, same.output
        assert "fp16: in one run only, not compared: mean kNN overlap@" in same.stdout


def test_version_prints_the_package_version():
    result = run_split("--version")
    assert result.exit_code == 0 and result.stdout == f"fp16guard {metadata.version('fp16guard')}\n"


def test_no_color_turns_escape_codes_off_even_on_a_terminal():
    forced = run_split("list", env={"FORCE_COLOR": "1", "NO_COLOR": None})
    assert "\x1b[" in forced.stdout  # rich styles a terminal's output...
    plain = run_split("list", env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    # ...but not under NO_COLOR
    assert plain.exit_code == 0 and "\x1b[" not in plain.stdout and "Models" in plain.stdout
