"""`fp16guard embed TARGET`: one command per target over options declared once, and the run
(embed a FASTA file into HDF5 under a validated policy, with FP32 spot checks)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer

from fp16guard.core.config import ModelSource
from fp16guard.errors import Fp16GuardError, InputError
from fp16guard_cli import sources
from fp16guard_cli.app import EXIT_CODES_HELP, Group
from fp16guard_cli.options import (
    ChunkSizeOption,
    Compile,
    CompileOption,
    DebugOption,
    Device,
    DeviceOption,
    EmbedMaxTokensOption,
    EmbedOutOption,
    EmbedPolicyOption,
    EmbedSequencesOption,
    ForceOption,
    GpusOption,
    LayersOption,
    PerResidueOption,
    SpotCheckOption,
)
from fp16guard_cli.running import exit_on_error, exit_with, internal_error, is_main, launch_if_asked
from fp16guard_cli.source_commands import SOURCE, SourceCommands

embed_app = typer.Typer(
    help="Embed sequences under the policy that validate saved, with FP32 spot checks, into one HDF5 file "
    "(resumable).",
    no_args_is_help=True,
    cls=Group,
)


def _embed_options(
    *,
    model=SOURCE,
    weights=SOURCE,
    pooling=SOURCE,
    trust_remote_code=SOURCE,
    offline=SOURCE,
    sequences: EmbedSequencesOption,
    out: EmbedOutOption,
    policy: EmbedPolicyOption = None,
    force: ForceOption = False,
    device: DeviceOption = Device.auto,
    gpus: GpusOption = None,
    max_tokens: EmbedMaxTokensOption = None,
    layers: LayersOption = None,
    per_residue: PerResidueOption = False,
    spot_check_every: SpotCheckOption = 1000,
    chunk_size: ChunkSizeOption = 10_000,
    compile: CompileOption = Compile.auto,
    debug: DebugOption = False,
) -> None:
    """The options every embed command shares, in the order of its help (see SourceCommands)."""


def _parse_layers(values: list[str] | None) -> tuple[int, ...] | None:
    """``--layers 33 --layers 20`` or ``--layers 33,20``; InputError for anything else."""
    if not values:
        return None
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    if not items or not all(item.isdigit() for item in items):
        raise InputError(f"--layers takes layer numbers (0 to the model's last), not {','.join(values)!r}")
    return tuple(int(item) for item in items)


def run_embed(
    target: str, source: ModelSource, *, sequences: Path, out: Path, policy: str | None, force: bool, device: Device,
    gpus: int | None, max_tokens: int | None, layers: list[str] | None, per_residue: bool, spot_check_every: int,
    chunk_size: int, compile: Compile, debug: bool,
) -> None:
    """Run the embed workflow with live progress and print the summary; the exit code follows
    the documented codes (1: a spot check failed or NaN/Inf). Under --gpus or torchrun every
    rank runs this; rank 0 alone prints."""
    from fp16guard.execution.launch import from_env
    from fp16guard_cli import render

    console = render.stderr_console()
    launched = from_env()
    launch_if_asked(console, launched, gpus)
    world = result = None
    error: Fp16GuardError | None = None
    try:
        from fp16guard.core.progress import Progress
        from fp16guard.execution import distributed
        from fp16guard.workflows.embed import EmbedConfig, embed

        config = EmbedConfig(
            sequences=sequences, out=out, policy=policy, force=force, device=device.value, max_tokens=max_tokens,
            layers=_parse_layers(layers), per_residue=per_residue, spot_check_every=spot_check_every,
            chunk_size=chunk_size, compile=compile.value,
        )
        world = distributed.init(device.value)
        with render.LiveProgress(console, unit="residues") if is_main(world) else nullcontext(Progress()) as progress:
            result = embed(target, source, config, progress)
    except Fp16GuardError as exc:
        error = exc
    except KeyboardInterrupt:
        if is_main(launched):
            render.error(console, "interrupted; rerun the same command to resume")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:  # a bug: one line, not a traceback, and never exit 1
        internal_error(console, exc, None, debug)
    exit_on_error(console, world, launched, error)
    if is_main(world):  # the result on stdout; progress, warnings and errors stayed on stderr
        render.embed_summary(render.stdout_console(), result)
    exit_with(0)


_COMMANDS = SourceCommands(embed_app, _embed_options, run_embed, EXIT_CODES_HELP)
_COMMANDS.add("esm2", sources.esm2, "Embed a FASTA file with an ESM-2 model (fair-esm) under a validated policy.")
_COMMANDS.add("hf", sources.hf, "Embed a FASTA file with a Hugging Face encoder under a validated policy.")
_COMMANDS.add(
    "dnabert", sources.dnabert, "Embed a FASTA file of DNA with DNABERT-S or DNABERT-2 under a validated policy."
)
_COMMANDS.add(
    "antiberty", sources.antiberty,
    "Embed antibody sequences with AntiBERTy (pip package antiberty, works offline) under a validated policy.",
)
