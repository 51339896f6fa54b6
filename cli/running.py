"""How a command runs to its end: relaunching under ``--gpus``, one exit code agreed by every
process, internal errors in one line, and what CI is told."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from fp16guard.errors import INTERNAL_ERROR_EXIT_CODE, Fp16GuardError


def is_main(world) -> bool:
    """Whether this process prints and writes: rank 0, or the only process."""
    return world is None or world.main


def launch_if_asked(console, launched, gpus: int | None) -> None:
    """Under ``--gpus N`` (N > 1) in a process no launcher started, start N workers running this
    same command line and exit with the code they agreed on; otherwise return (``--gpus 1`` runs
    here, in this process)."""
    if not (gpus and gpus > 1 and launched is None):
        return
    from fp16guard.execution.launch import launch
    from fp16guard_cli import render

    try:
        code = launch(sys.argv[1:], gpus)
    except Fp16GuardError as exc:
        render.error(console, str(exc))
        code = exc.exit_code
    raise typer.Exit(code)


def internal_error(console, exc: BaseException, out: Path | None, debug: bool) -> None:
    """Report an unexpected exception in one line, its traceback under --debug and in
    OUT/fp16guard-error.log, clear this run's reports, and exit 4."""
    import traceback

    from fp16guard.execution.launch import from_env
    from fp16guard.io.outputs import ERROR_LOG, write_error_log
    from fp16guard_cli import render

    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    world = from_env()
    log = None
    if out is not None:
        if is_main(world):
            clear_quietly(out)
        name = ERROR_LOG if is_main(world) else f"fp16guard-error.rank{world.rank}.log"
        log = write_error_log(out, trace, name)
    if debug:
        console.print(trace, markup=False, highlight=False, soft_wrap=True, end="")
    detail = (str(exc).strip().splitlines() or [""])[0]
    message = f"internal error: {type(exc).__name__}{': ' + detail if detail else ''}"
    if debug:
        message += f"; the traceback is above{f' and in {log}' if log else ''}"
    else:
        message += f"; rerun with --debug for the traceback{f', or see {log}' if log else ''}"
    render.error(console, message + " (please report it: this is a bug in fp16guard or a library under it)")
    raise typer.Exit(INTERNAL_ERROR_EXIT_CODE)


def clear_quietly(out: Path) -> None:
    """Remove this or an earlier run's reports from ``out`` after a run that ended without a
    verdict; a failure to do so is not the error being reported."""
    from fp16guard.io.outputs import clear_reports

    try:
        clear_reports(out)
    except Fp16GuardError:
        pass


def exit_on_error(console, world, launched, error: Fp16GuardError | None, clear: Path | None = None) -> None:
    """Agree with the other processes on how the run ended; when it failed, rank 0 clears the
    reports in ``clear`` and prints the error, and every process exits with its code."""
    from fp16guard_cli import render

    error = agree(console, world, launched, error)
    if error is None:
        return
    if is_main(world):
        if clear is not None:
            clear_quietly(clear)  # a report written before another rank failed is not the verdict
        render.error(console, str(error))
    exit_with(error.exit_code)


def agree(console, world, launched, error: Fp16GuardError | None) -> Fp16GuardError | None:
    """The error every rank ends with (None: every rank succeeded); exits at once when this
    rank failed before joining the others."""
    from fp16guard.execution import distributed
    from fp16guard_cli import render

    if world is None and launched is not None and launched.size > 1:
        # This rank failed before joining the others (a missing GPU, the rendezvous): nothing
        # was agreed, so it exits with its own code and the launcher stops the other ranks.
        assert error is not None
        if launched.main or not isinstance(error, distributed.DeviceCountError):
            render.error(console, str(error))
        raise typer.Exit(error.exit_code)
    if isinstance(error, distributed.RankError):
        return error
    # Every rank ends on the same status: one rank's failure outside the gathers (loading,
    # writing) reaches the others here, or wherever they wait.
    return distributed.finish(world, error)


def exit_with(code: int) -> None:
    """Leave the process group and exit with ``code``, on which every rank has agreed. Started
    by ``--gpus``, rank 0 hands the code to the launcher through a file and every rank exits 0:
    to the launcher, a non-zero exit means a rank that crashed or failed on its own."""
    from fp16guard.execution import distributed

    world = distributed.from_env()
    distributed.shutdown()
    code_file = os.environ.get(distributed.EXIT_CODE_FILE_ENV)
    if world is not None and code_file:
        if world.main:
            Path(code_file).write_text(f"{code}\n")
        code = 0
    if world is not None and world.size > 1:
        # Every rank has agreed and left the group: nothing is left to do but the interpreter's
        # teardown, in which a worker of a multi-node torchrun sometimes aborts in C++
        # ("terminate called without an active exception", torch 2.13 CPU, gloo); its agent
        # then reports a failure and the other node's agent waits. Skip that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


def publish_to_ci(console, report, stdout: bool = True) -> None:
    """On GitHub Actions: report.md into the step summary, and an ``::error`` line (stdout, or
    stderr when stdout carries --json) when the run failed. A summary that cannot be written is
    a warning: the verdict stands."""
    from fp16guard_cli import ci, render

    if not ci.on_github():
        return
    try:
        ci.append_step_summary(report)
    except OSError as exc:
        render.warning(
            console, f"cannot append to ${ci.STEP_SUMMARY_ENV} ({exc.strerror or exc}); the report is in --out"
        )
    line = ci.error_annotation(report)
    if line:
        typer.echo(line, err=not stdout)

