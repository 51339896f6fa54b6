"""The fp16guard command tree and its console-script entry point. Commands are thin: options
in, one library call, exit code out."""

from __future__ import annotations

import os
import sys

import typer

from fp16guard_cli.app import app
from fp16guard_cli.diff_and_list import diff_and_list_app
from fp16guard_cli.embed import embed_app
from fp16guard_cli.running import internal_error
from fp16guard_cli.validate import validate_app

app.add_typer(diff_and_list_app)  # diff and list, at the top level
app.add_typer(validate_app, name="validate")
app.add_typer(embed_app, name="embed")


def run() -> None:
    """Console-script entry point. An exception that escapes a command is a bug: exit 4 with one
    line (the traceback with --debug or FP16GUARD_DEBUG=1), never Python's exit 1."""
    try:
        app()
    except Exception as exc:
        from fp16guard_cli import render

        debug = "--debug" in sys.argv[1:] or os.environ.get("FP16GUARD_DEBUG", "").lower() in ("1", "true", "yes", "on")
        try:
            internal_error(render.stderr_console(), exc, None, debug)
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    run()
