"""Run the fp16guard CLI in-process (typer's CliRunner) and read what it wrote."""

import json

from typer.testing import CliRunner

from fp16guard_cli.main import app

_runner = CliRunner()


def run_cli(*args, env=None):
    """Invoke ``fp16guard ARGS``; returns the result and everything it printed (stdout and stderr)."""
    result = _runner.invoke(app, [str(a) for a in args], env=env)
    return result, result.output


def read_report(out):
    """report.json from an --out directory, as plain data."""
    return json.loads((out / "report.json").read_text())


def ladder(report):
    """The reference and the attempts that decide the verdict (not --try comparisons, not the
    fast-attention variant of the policy that passed)."""
    return [a for a in report["attempts"] if a["role"] in ("reference", "attempt")]
