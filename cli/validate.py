"""`fp16guard validate TARGET`: the config file applied, one command per target over options
declared once, and the run (check the outputs, validate, write the report, exit)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fp16guard.core.config import FP64_FLOOR_SEQUENCES, ModelSource, Thresholds, ValidationConfig
from fp16guard.errors import Fp16GuardError, InputError
from fp16guard_cli import sources
from fp16guard_cli.app import EXIT_CODES_HELP, Group
from fp16guard_cli.options import (
    CarefulTimingOption,
    DebugOption,
    Device,
    DeviceOption,
    DnabertMaxLengthOption,
    Fp64FloorOption,
    FullLadderOption,
    GpusOption,
    JsonOption,
    LabelsOption,
    LayerOption,
    MaxLengthOption,
    MaxTokensOption,
    MinCosineOption,
    MinKnnOverlapOption,
    MinRankCorrelationOption,
    NoFallbackOption,
    OutOption,
    PolicyOption,
    ProbeOption,
    ProfileOption,
    QuietOption,
    ReferenceDeviceOption,
    ReferenceOption,
    SavePolicyOption,
    SaveReferenceOption,
    SearchOption,
    SequencesOption,
    TryOption,
)
from fp16guard_cli.running import (
    clear_quietly,
    exit_on_error,
    exit_with,
    internal_error,
    is_main,
    launch_if_asked,
    publish_to_ci,
)
from fp16guard_cli.settings import CONFIG_META, TARGET_FROM_CONFIG_META, config_defaults, recorded_settings
from fp16guard_cli.source_commands import SOURCE, SourceCommands

if TYPE_CHECKING:
    from fp16guard.report.document import Report

validate_app = typer.Typer(
    help="Embed a reference set in FP32 and in FP16 (with fallbacks) and gate on the agreement. Without a "
    "target, runs the one the config file names (fp16guard.toml, or pyproject.toml's tool.fp16guard table).",
    invoke_without_command=True,
    cls=Group,
)


@validate_app.callback()
def validate_main(ctx: typer.Context) -> None:
    """Read the config file (fp16guard.toml, or [tool.fp16guard] in pyproject.toml) of the current
    directory and make its values the defaults of the validate command; run the command it names
    as ``target`` when none was given."""
    from fp16guard.io.config_file import discover
    from fp16guard_cli import render

    try:
        config = discover()
        target = ctx.invoked_subcommand or config.target
        if target is None:
            typer.echo(ctx.get_help())
            raise typer.Exit(2)
        if config.target not in (None, target):
            raise InputError(f"{config.where}: target is {config.target!r}, but the command is `fp16guard validate "
                             f"{target}`; run `fp16guard validate` (or change target)")
        command = ctx.command.get_command(ctx, target)
        ctx.default_map = {target: config_defaults(ctx, command, config, target)}
    except Fp16GuardError as exc:
        render.error(render.stderr_console(), str(exc))
        raise typer.Exit(exc.exit_code) from None
    ctx.meta[CONFIG_META] = config
    ctx.meta[TARGET_FROM_CONFIG_META] = ctx.invoked_subcommand is None
    if ctx.invoked_subcommand is None:
        with command.make_context(target, [], parent=ctx) as sub:
            command.invoke(sub)


def _validate_options(
    *,
    ctx: typer.Context,
    model=SOURCE,
    weights=SOURCE,
    sequences: SequencesOption = None,
    pooling=SOURCE,
    trust_remote_code=SOURCE,
    device: DeviceOption = Device.auto,
    reference_device: ReferenceDeviceOption = None,
    gpus: GpusOption = None,
    max_tokens: MaxTokensOption = "auto",
    max_length: MaxLengthOption = None,
    layer: LayerOption = None,
    min_cosine: MinCosineOption = 0.99,
    min_knn_overlap: MinKnnOverlapOption = None,
    min_rank_correlation: MinRankCorrelationOption = None,
    probe: ProbeOption = None,
    labels: LabelsOption = None,
    fp64_floor: Fp64FloorOption = False,
    policy: PolicyOption = None,
    no_fallback: NoFallbackOption = False,
    full_ladder: FullLadderOption = False,
    also_try: TryOption = None,
    save_policy: SavePolicyOption = None,
    save_reference: SaveReferenceOption = None,
    reference: ReferenceOption = None,
    profile: ProfileOption = False,
    search: SearchOption = False,
    careful_timing: CarefulTimingOption = False,
    out: OutOption = Path("fp16guard-report"),
    quiet: QuietOption = False,
    as_json: JsonOption = False,
    debug: DebugOption = False,
    offline=SOURCE,
) -> None:
    """The options every validate command shares, in the order of its help (see SourceCommands)."""


def run_validation(target: str, source: ModelSource, *, ctx: typer.Context, out: Path, debug: bool, **options) -> None:
    """Check the output paths, build the config, run the workflow with live progress, write the
    report, exit. An unexpected exception exits 4 with one line (the traceback under --debug and
    in OUT/fp16guard-error.log).

    Under --gpus or torchrun every rank runs this; rank 0 alone prints and writes the report."""
    from fp16guard_cli import render

    recorded = recorded_settings(ctx)
    console = render.stderr_console()
    try:
        _validate(console, target, source, out=out, recorded=recorded, **options)
    except typer.Exit:
        raise
    except KeyboardInterrupt:  # outside the run proper: the imports, the checks
        render.error(console, "interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug: one line, not a traceback, and never exit 1
        internal_error(console, exc, out, debug)


def _validate(
    console, target: str, source: ModelSource, *, out: Path, save_policy: Path | None, save_reference: Path | None,
    policy: str | None, no_fallback: bool, max_tokens: str, gpus: int | None, device: Device, sequences: Path | None,
    quiet: bool, as_json: bool, recorded: dict, **config_options,
) -> None:
    """run_validation's work; exits through typer.Exit with the run's code."""
    from fp16guard.execution.launch import from_env
    from fp16guard_cli import render

    launched = from_env()
    _prepare_outputs(console, launched, out, save_policy, save_reference)
    _check_choices(console, policy, no_fallback, max_tokens)
    launch_if_asked(console, launched, gpus)
    from fp16guard.execution import distributed

    world = report = None
    paths: list[Path] = []
    error: Fp16GuardError | None = None
    try:
        # Joined first: after this, every failure is one the ranks can agree on.
        world = distributed.init(device.value)
        config = _validation_config(
            device=device, policy=policy, no_fallback=no_fallback, max_tokens=max_tokens,
            save_reference=save_reference, **config_options,
        )
        report, paths = _run_and_write(console, world, target, source, config, sequences=sequences, out=out,
                                       save_policy=save_policy, quiet=quiet, recorded=recorded)
    except Fp16GuardError as exc:
        error = exc
    except KeyboardInterrupt:
        if is_main(world):
            clear_quietly(out)  # reports half written when the interrupt came are not a verdict
            render.error(console, "interrupted")
        raise typer.Exit(130) from None
    exit_on_error(console, world, launched, error, clear=out)
    if is_main(world):  # the result on stdout (`> log.txt` keeps it); progress and errors stayed on stderr
        render.result(report, paths, quiet=quiet, as_json=as_json)
        publish_to_ci(console, report, stdout=not as_json)
    exit_with(report.exit_code)


def _prepare_outputs(console, launched, out: Path, save_policy: Path | None, save_reference: Path | None) -> None:
    """Before any model loads (and before --gpus starts its workers): a path that cannot be
    written fails now, not after hours of validation. Then an earlier run's reports go, so that
    a run that ends without a verdict (exit 2, 3, 4, 130) leaves none behind."""
    from fp16guard.io.outputs import check_outputs, clear_reports
    from fp16guard_cli import render

    try:
        check_outputs(out, save_policy, save_reference)
        if is_main(launched):
            clear_reports(out)
    except Fp16GuardError as exc:
        if is_main(launched):  # every rank finds the same paths
            render.error(console, str(exc))
        raise typer.Exit(exc.exit_code) from None


def _check_choices(console, policy: str | None, no_fallback: bool, max_tokens: str) -> None:
    """Exit 2 on options that contradict each other or a --max-tokens that is no budget."""
    from fp16guard_cli import render

    if policy and no_fallback:
        render.error(console, "use either --policy or --no-fallback, not both")
        raise typer.Exit(2)
    if max_tokens != "auto" and not (max_tokens.isdigit() and int(max_tokens) >= 1):
        render.error(console, f"--max-tokens must be auto or a positive whole number, not {max_tokens!r}")
        raise typer.Exit(2)


def _validation_config(
    *, min_cosine: float, min_knn_overlap: float | None, min_rank_correlation: float | None, probe: Path | None,
    labels: Path | None, fp64_floor: bool, device: Device, reference_device: Device | None, policy: str | None,
    no_fallback: bool, full_ladder: bool, also_try: list[str] | None, max_tokens: str, save_reference: Path | None,
    reference: Path | None, **settings,
) -> ValidationConfig:
    """The library's config from the options; ``settings`` are those named as its fields."""
    return ValidationConfig(
        thresholds=Thresholds(
            min_cosine=min_cosine, min_knn_overlap=min_knn_overlap, min_rank_correlation=min_rank_correlation
        ),
        probe=str(probe) if probe else None,
        labels=str(labels) if labels else None,
        fp64_floor=FP64_FLOOR_SEQUENCES if fp64_floor else 0,
        device=device.value,
        reference_device=reference_device.value if reference_device else None,
        policies=(policy,) if policy else ("fp16",) if no_fallback else None,
        stop_at_first_pass=not full_ladder,
        also_try=tuple(also_try or ()),
        max_tokens=None if max_tokens == "auto" else int(max_tokens),
        save_reference=str(save_reference) if save_reference else None,
        reference=str(reference) if reference else None,
        **settings,
    )


def _run_and_write(
    console, world, target: str, source: ModelSource, config: ValidationConfig, *, sequences: Path | None,
    out: Path, save_policy: Path | None, quiet: bool, recorded: dict,
) -> tuple[Report, list[Path]]:
    """The report of the workflow's run (live progress on rank 0 unless --quiet) and the files
    rank 0 wrote: the report's, and the policy when one passed and --save-policy asks for it."""
    from fp16guard.core.progress import Progress
    from fp16guard.report.writer import write_policy, write_report
    from fp16guard.workflows.validate import validate
    from fp16guard_cli import render

    main = is_main(world)
    with render.LiveProgress(console) if main and not quiet else nullcontext(Progress()) as progress:
        report = validate(target, config, source, sequences=sequences, progress=progress)
    report.settings = recorded
    paths = write_report(report, out) if main else []
    if main and save_policy and report.passed:
        paths.append(write_policy(report, save_policy))
    return report, paths

_COMMANDS = SourceCommands(validate_app, _validate_options, run_validation, EXIT_CODES_HELP)
_COMMANDS.add("esm2", sources.esm2, "Validate an ESM-2 model (fair-esm) in FP16 against FP32.")
_COMMANDS.add("hf", sources.hf, "Validate any Hugging Face encoder (transformers AutoModel) in FP16 against FP32.")
_COMMANDS.add(
    "dnabert", sources.dnabert,
    "Validate DNABERT-S or DNABERT-2 (native implementation, no remote code) in FP16 against FP32.",
    overrides={"max_length": DnabertMaxLengthOption},
)
_COMMANDS.add(
    "antiberty", sources.antiberty,
    "Validate AntiBERTy, the trained antibody model shipped by pip package antiberty (works offline).",
)
