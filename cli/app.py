"""The root Typer app (main.py adds the commands to it) and the Command and Group classes of every
fp16guard command."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

EXIT_CODES_HELP = (
    "Exit codes: 0 pass, 1 accuracy failure (no policy passed), 2 bad input or usage (including an output path "
    "that cannot be written), 3 environment or model-load failure, 4 internal error (a bug; --debug shows the "
    "traceback), 130 interrupted."
)


class _FlagsTakeNoValue:
    """Help lists a flag without a metavar: typer would print its type (``<bool>``) after
    every flag, as if it took a value."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params


class Command(_FlagsTakeNoValue, TyperCommand):
    """A command whose help shows flags as flags."""


class Group(_FlagsTakeNoValue, TyperGroup):
    """A command group whose help shows flags as flags."""


app = typer.Typer(
    name="fp16guard",
    help="Prove that a biological language model is safe to run in FP16 before you ship its embeddings.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    cls=Group,
)


def _version(value: bool) -> None:
    if value:
        import fp16guard

        typer.echo(f"fp16guard {fp16guard.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Options before any command (the app's help is Typer's ``help``)."""
