"""The commands that run no model: `fp16guard diff` (two reports compared) and `fp16guard list`
(what this machine can validate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fp16guard.errors import Fp16GuardError
from fp16guard_cli.app import Command

diff_and_list_app = typer.Typer()


@diff_and_list_app.command(
    "diff", cls=Command, epilog="Exit codes: 0 no regression, 1 NEW regresses, 2 a report that cannot be read."
)
def diff(
    old: Annotated[
        Path, typer.Argument(help="The earlier run: a report.json or its report directory.", show_default=False)
    ],
    new: Annotated[
        Path, typer.Argument(help="The later run: a report.json or its report directory.", show_default=False)
    ],
    tolerance: Annotated[
        float,
        typer.Option("--tolerance", min=0.0, help="Largest fall in a sequence's cosine that is not a regression."),
    ] = 1e-3,
    max_slowdown: Annotated[
        float,
        typer.Option(
            "--max-slowdown",
            min=1.0,
            help="Largest slowdown of a policy (old / new tokens/s) that is not a regression; gated on the same "
            "device model only.",
        ),
    ] = 1.25,
    agreement_tolerance: Annotated[
        float,
        typer.Option(
            "--agreement-tolerance",
            min=0.0,
            help="Largest fall in mean kNN overlap, a probe's same-decision share or nearest-centroid accuracy that "
            "is not a regression (the rank correlation uses --tolerance).",
        ),
    ] = 1e-2,
    top: Annotated[
        int, typer.Option("--top", min=0, help="Sequences shown per policy: those whose cosine fell most.")
    ] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the diff as JSON on stdout.")] = False,
) -> None:
    """What changed between two validation runs: verdicts, per-sequence cosines, agreement metrics, speed, memory, environment."""  # noqa: E501 (the help)
    from fp16guard.report.diff import diff_reports, load_report
    from fp16guard_cli import render

    try:
        result = diff_reports(load_report(old), load_report(new), tolerance=tolerance, max_slowdown=max_slowdown,
                              agreement_tolerance=agreement_tolerance)
    except Fp16GuardError as exc:
        render.error(render.stderr_console(), str(exc))
        raise typer.Exit(exc.exit_code) from None
    if as_json:
        render.write_stdout(result.to_json())
    else:
        render.report_diff(render.stdout_console(), result, top)
    raise typer.Exit(result.exit_code)


@diff_and_list_app.command("list", cls=Command)
def list_models() -> None:
    """Targets, presets and known checkpoints, and whether each is on this machine (nothing is downloaded)."""
    from fp16guard.models.catalog import catalog
    from fp16guard.numerics.policy import POLICIES
    from fp16guard_cli import render

    render.catalog(render.stdout_console(), catalog(), POLICIES)
