"""fp16guard commands. Thin: options in, one library call, exit code out."""

from __future__ import annotations

import inspect
import sys
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from fp16guard.core.config import ModelSource
from fp16guard.errors import INTERNAL_ERROR_EXIT_CODE, Fp16GuardError


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
validate_app = typer.Typer(
    help="Embed a reference set in FP32 and in FP16 (with fallbacks) and gate on the agreement. Without a "
    "target, runs the one the config file names (fp16guard.toml, or pyproject.toml's tool.fp16guard table).",
    invoke_without_command=True,
    cls=Group,
)
app.add_typer(validate_app, name="validate")


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

EXIT_CODES_HELP = (
    "Exit codes: 0 pass, 1 accuracy failure (no policy passed), 2 bad input or usage (including an output path "
    "that cannot be written), 3 environment or model-load failure, 4 internal error (a bug; --debug shows the "
    "traceback), 130 interrupted."
)


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"
    map = "map"


class Pooling(str, Enum):
    mean = "mean"
    residues = "residues"
    cls = "cls"


SequencesOption = Annotated[
    Optional[Path],
    typer.Option("--sequences", "-s", help="FASTA file to embed (default: the bundled reference set)."),
]
DeviceOption = Annotated[
    Device,
    typer.Option(help="Where to run; auto picks CUDA when present; map spreads the model's blocks over every GPU (needs accelerate)."),
]
ReferenceDeviceOption = Annotated[
    Optional[Device],
    typer.Option("--reference-device", help="Where the FP32 reference runs, if not where --device says (cpu, or map for a model too big for one GPU)."),
]
GpusOption = Annotated[
    Optional[int],
    typer.Option("--gpus", min=1, help="Start this many processes, one GPU each (with --device cpu: on the CPU), and split the batches between them."),
]
MaxTokensOption = Annotated[
    str,
    typer.Option(
        "--max-tokens",
        metavar="auto|N",
        help="Token budget per batch (rows x padded length), or auto: from free GPU memory and the model's size (8192 on CPU).",
    ),
]
MaxLengthOption = Annotated[
    Optional[int],
    typer.Option("--max-length", min=1, help="Truncate sequences to this many residues (default: the model's limit)."),
]
LayerOption = Annotated[Optional[int], typer.Option(help="Layer whose hidden states are pooled (default: the last).")]
MinCosineOption = Annotated[
    float, typer.Option("--min-cosine", help="Every sequence's pooled cosine to FP32 must reach this.")
]
MinKnnOverlapOption = Annotated[
    Optional[float],
    typer.Option("--min-knn-overlap", min=0.0, max=1.0, help="Also gate on neighbour agreement: the mean share of each sequence's k nearest FP32 neighbours (cosine) that stay among its k nearest (k = 10, fewer on small sets)."),
]
MinRankCorrelationOption = Annotated[
    Optional[float],
    typer.Option("--min-rank-correlation", min=-1.0, max=1.0, help="Also gate on ranking agreement: Spearman correlation of all pairwise cosine similarities, FP32 vs the attempt."),
]
ProbeOption = Annotated[
    Optional[Path],
    typer.Option("--probe", help="A linear head trained on these embeddings (.npz or .safetensors with W [classes, dim] and b): report how many sequences change predicted class."),
]
LabelsOption = Annotated[
    Optional[Path],
    typer.Option("--labels", help="A two-column TSV (sequence id, label): report nearest-centroid accuracy under FP32 and each attempt."),
]
Fp64FloorOption = Annotated[
    bool,
    typer.Option("--fp64-floor", help="Embed a sample of 32 sequences in FP64 (GPU if it fits, else CPU) and give each attempt's error as a multiple of FP32's own."),
]
PolicyOption = Annotated[
    Optional[str],
    typer.Option("--policy", "-p", help="Test only this policy (fp16, fp16+keep32, fp16+ln32, fp16+pos32, fp16+res32, fp16+sdpa, fp16+packed, fp32, or a .json)."),
]
NoFallbackOption = Annotated[bool, typer.Option("--no-fallback", help="Test full FP16 only.")]
FullLadderOption = Annotated[
    bool, typer.Option("--full-ladder", help="Run every rung even after one passes, to see what each costs.")
]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Directory for report.json, report.md, junit.xml, report.html.")]
TryOption = Annotated[
    Optional[list[str]],
    typer.Option("--try", help="Also run this policy beside the ladder, for information (e.g. bf16); repeatable."),
]
ProfileOption = Annotated[
    bool,
    typer.Option("--profile", help="Compare every layer's output with FP32 for each attempt (report.md table, profile.png)."),
]
SearchOption = Annotated[
    bool,
    typer.Option("--search", help="If full FP16 fails, bisect for the fewest FP32 islands: whole blocks, then their layer norms, attention or MLP."),
]
CarefulTimingOption = Annotated[
    bool,
    typer.Option("--careful-timing", help="Repeat embedding passes shorter than 2 s on a GPU and keep the fastest (steadier speed figures, longer run)."),
]
SaveReferenceOption = Annotated[
    Optional[Path],
    typer.Option("--save-reference", help="Write the FP32 reference embeddings to this .npz, for reruns with --reference."),
]
ReferenceOption = Annotated[
    Optional[Path],
    typer.Option(
        "--reference", help="Compare with the FP32 embeddings saved by --save-reference instead of computing them."
    ),
]
SavePolicyOption = Annotated[
    Optional[Path],
    typer.Option("--save-policy", help="Write the recommended policy (the one that passed, or its faster fused-attention variant that passed too) to this JSON file, for fp16guard.apply_policy."),
]
OfflineOption = Annotated[
    bool, typer.Option("--offline", envvar="FP16GUARD_OFFLINE", help="Never download weights; use local files only.")
]
PoolingOption = Annotated[
    Pooling, typer.Option(help="mean: mean of the hidden states over every token, special tokens included; residues: over the residues' tokens only; cls: the first token.")
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only the verdict line (and errors): no progress, no table.")
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print report.json to stdout (and nothing else there); the summary goes to stderr."),
]
DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug", envvar="FP16GUARD_DEBUG",
        help="On an internal error (exit 4), print the traceback; it is also written to fp16guard-error.log in --out.",
    ),
]
TrustRemoteCodeOption = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Allow the model directory's own Python code to run (off by default)."),
]

Esm2ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="ESM-2 checkpoint name, read from the torch hub cache (downloaded if missing).")
]
WeightsOption = Annotated[
    Optional[Path], typer.Option("--weights", "-w", help="Local fair-esm .pt checkpoint (overrides --model).")
]
HfModelOption = Annotated[str, typer.Option("--model", "-m", help="Local model directory or Hugging Face model id.")]
DnabertModelOption = Annotated[
    str, typer.Option("--model", "-m", help="DNABERT-S/DNABERT-2 directory or Hugging Face model id.")
]
DnabertRemoteCodeOption = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Run the checkpoint's own code instead of fp16guard's native DNABERT."),
]


@validate_app.command("esm2", epilog=EXIT_CODES_HELP, cls=Command)
def validate_esm2(
    ctx: typer.Context,
    model: Esm2ModelOption = "esm2_t33_650M_UR50D",
    weights: WeightsOption = None,
    sequences: SequencesOption = None,
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
    offline: OfflineOption = False,
) -> None:
    """Validate an ESM-2 model (fair-esm) in FP16 against FP32."""
    from fp16guard.core.config import ModelSource

    source = ModelSource(model=model, weights=weights, offline=offline)
    run_validation("esm2", source, recorded=_recorded_settings(ctx), **_settings(locals()))


@validate_app.command("hf", epilog=EXIT_CODES_HELP, cls=Command)
def validate_hf(
    ctx: typer.Context,
    model: HfModelOption,
    sequences: SequencesOption = None,
    pooling: PoolingOption = Pooling.mean,
    trust_remote_code: TrustRemoteCodeOption = False,
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
    offline: OfflineOption = False,
) -> None:
    """Validate any Hugging Face encoder (transformers AutoModel) in FP16 against FP32."""
    from fp16guard.core.config import ModelSource

    source = ModelSource(model=model, offline=offline, trust_remote_code=trust_remote_code, pooling=pooling.value)
    run_validation("hf", source, recorded=_recorded_settings(ctx), **_settings(locals()))


@validate_app.command("dnabert", epilog=EXIT_CODES_HELP, cls=Command)
def validate_dnabert(
    ctx: typer.Context,
    model: DnabertModelOption = "zhihan1996/DNABERT-S",
    sequences: SequencesOption = None,
    trust_remote_code: DnabertRemoteCodeOption = False,
    device: DeviceOption = Device.auto,
    reference_device: ReferenceDeviceOption = None,
    gpus: GpusOption = None,
    max_tokens: MaxTokensOption = "auto",
    max_length: Annotated[
        Optional[int], typer.Option("--max-length", min=1, help="Truncate sequences to this many tokens (default: no limit).")
    ] = None,
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
    offline: OfflineOption = False,
) -> None:
    """Validate DNABERT-S or DNABERT-2 (native implementation, no remote code) in FP16 against FP32."""
    from fp16guard.core.config import ModelSource

    source = ModelSource(model=model, offline=offline, trust_remote_code=trust_remote_code)
    run_validation("dnabert", source, recorded=_recorded_settings(ctx), **_settings(locals()))


@validate_app.command("antiberty", epilog=EXIT_CODES_HELP, cls=Command)
def validate_antiberty(
    ctx: typer.Context,
    sequences: SequencesOption = None,
    pooling: PoolingOption = Pooling.mean,
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
) -> None:
    """Validate AntiBERTy, the trained antibody model shipped by pip package antiberty (works offline)."""
    from fp16guard.core.config import ModelSource

    source = ModelSource(offline=True, pooling=pooling.value)
    run_validation("antiberty", source, recorded=_recorded_settings(ctx), **_settings(locals()))


#: ctx.meta keys (shared by every context of a run): the config file applied, and whether the
#: target came from it.
CONFIG_META, TARGET_FROM_CONFIG_META = "fp16guard.core.config", "fp16guard.target_from_config"


@validate_app.callback()
def validate_main(ctx: typer.Context) -> None:
    """Read the config file (fp16guard.toml, or [tool.fp16guard] in pyproject.toml) of the current
    directory and make its values the defaults of the validate command; run the command it names
    as ``target`` when none was given."""
    from fp16guard.io.config_file import discover

    from . import render

    try:
        config = discover()
        target = ctx.invoked_subcommand or config.target
        if target is None:
            typer.echo(ctx.get_help())
            raise typer.Exit(2)
        if config.target not in (None, target):
            raise _input_error(f"{config.where}: target is {config.target!r}, but the command is `fp16guard validate "
                               f"{target}`; run `fp16guard validate` (or change target)")
        command = ctx.command.get_command(ctx, target)
        ctx.default_map = {target: _config_defaults(ctx, command, config, target)}
    except Fp16GuardError as exc:
        render.error(render.stderr_console(), str(exc))
        raise typer.Exit(exc.exit_code) from None
    ctx.meta[CONFIG_META] = config
    ctx.meta[TARGET_FROM_CONFIG_META] = ctx.invoked_subcommand is None
    if ctx.invoked_subcommand is None:
        with command.make_context(target, [], parent=ctx) as sub:
            command.invoke(sub)


def _input_error(message: str) -> Fp16GuardError:
    from fp16guard.errors import InputError

    return InputError(message)


def _config_defaults(ctx, command, config, target: str) -> dict:
    """The config file's values keyed by ``command``'s parameter names, each checked by its
    option's own type (a choice, a range) as if typed on the command line."""
    from fp16guard.io.config_file import option_name

    params = {param.name: param for param in command.params}
    defaults = {}
    for key, value in config.values.items():
        if key == "target":
            continue
        param = params.get(option_name(key))
        if param is None:
            raise _input_error(f"{config.where}: {key} does not apply to `fp16guard validate {target}`")
        try:
            param.process_value(ctx, value)
        except typer.BadParameter as exc:
            raise _input_error(f"{config.where}: {key} = {value!r}: {exc.message}") from None
        defaults[param.name] = value
    return defaults


def _key(param) -> str:
    """A parameter's long option name without dashes in front: its key in config files and in
    the report's ``settings``."""
    return max(param.opts, key=len).lstrip("-")


def _recorded_settings(ctx: typer.Context) -> dict:
    """Every option of the running validate command with its value and where it came from:
    "default", "config:PATH", "environment" or "command line" (report.json ``settings``)."""
    config = ctx.meta.get(CONFIG_META)
    origin = {
        "COMMANDLINE": "command line",
        "ENVIRONMENT": "environment",
        "DEFAULT_MAP": config.source if config is not None else "default",
    }
    from_config = ctx.meta.get(TARGET_FROM_CONFIG_META)
    recorded = {"target": {"value": ctx.info_name, "source": config.source if from_config else "command line"}}
    for param in ctx.command.params:
        if param.name in ("quiet", "as_json", "debug"):  # how it printed, not what it validated
            continue
        source = ctx.get_parameter_source(param.name)
        recorded[_key(param)] = {
            "value": _plain(ctx.params.get(param.name)), "source": origin.get(getattr(source, "name", None), "default"),
        }
    return recorded


def _plain(value):
    """A parameter value as JSON data."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


#: Options that say where the model comes from; each command turns them into its ModelSource.
SOURCE_OPTIONS = frozenset({"model", "weights", "offline", "pooling", "trust_remote_code"})


def _settings(options: dict) -> dict:
    """The options every validate command shares, from a command's locals(): every option that
    is not a source option. Derived from the parameters, not listed, so that an option added to
    the commands cannot be dropped on its way to the config."""
    return {name: value for name, value in options.items() if name in _shared_option_names()}


def _shared_option_names() -> frozenset[str]:
    """run_validation's own keywords and the ValidationConfig fields its ``**settings`` fill."""
    import inspect
    from dataclasses import fields

    from fp16guard.core.config import ValidationConfig

    keywords = {p.name for p in inspect.signature(run_validation).parameters.values() if p.kind is p.KEYWORD_ONLY}
    return frozenset(keywords | {f.name for f in fields(ValidationConfig)})


def run_validation(
    target: str, source, *, policy, no_fallback, full_ladder, also_try, save_policy, min_cosine, min_knn_overlap,
    min_rank_correlation, probe, labels, fp64_floor, out, sequences, device,
    max_tokens, save_reference, reference, reference_device, gpus, quiet, as_json, debug, recorded=None, **settings,
) -> None:
    """Check the output paths, build the config, run the workflow with live progress, write the
    report, exit. An unexpected exception exits 4 with one line (the traceback under --debug and
    in OUT/fp16guard-error.log).

    Under --gpus or torchrun every rank runs this; rank 0 alone prints and writes the report."""
    from . import render

    console = render.stderr_console()
    try:
        _run_validation(
            console, target, source, policy=policy, no_fallback=no_fallback, full_ladder=full_ladder, also_try=also_try,
            save_policy=save_policy, min_cosine=min_cosine, min_knn_overlap=min_knn_overlap,
            min_rank_correlation=min_rank_correlation, probe=probe, labels=labels, fp64_floor=fp64_floor, out=out,
            sequences=sequences, device=device,
            max_tokens=max_tokens, save_reference=save_reference, reference=reference,
            reference_device=reference_device, gpus=gpus, quiet=quiet, as_json=as_json, recorded=recorded, **settings,
        )
    except typer.Exit:
        raise
    except KeyboardInterrupt:  # outside the run proper: the imports, the checks
        render.error(console, "interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug: one line, not a traceback, and never exit 1
        internal_error(console, exc, out, debug)


def internal_error(console, exc: BaseException, out: Path | None, debug: bool) -> None:
    """Report an unexpected exception in one line, its traceback under --debug and in
    OUT/fp16guard-error.log, clear this run's reports, and exit 4."""
    import traceback

    from fp16guard.execution.launch import from_env
    from fp16guard.io.outputs import ERROR_LOG, write_error_log

    from . import render

    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    world = from_env()
    log = None
    if out is not None:
        if world is None or world.main:
            _clear_quietly(out)
        name = ERROR_LOG if world is None or world.main else f"fp16guard-error.rank{world.rank}.log"
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


def _clear_quietly(out: Path) -> None:
    """Remove this or an earlier run's reports from ``out`` after a run that ended without a
    verdict; a failure to do so is not the error being reported."""
    from fp16guard.io.outputs import clear_reports

    try:
        clear_reports(out)
    except Fp16GuardError:
        pass


def _run_validation(
    console, target: str, source, *, policy, no_fallback, full_ladder, also_try, save_policy, min_cosine, min_knn_overlap,
    min_rank_correlation, probe, labels, fp64_floor, out, sequences,
    device, max_tokens, save_reference, reference, reference_device, gpus, quiet, as_json, recorded, **settings,
) -> None:
    """run_validation's work; exits through typer.Exit with the run's code."""
    from fp16guard.execution.launch import from_env, launch
    from fp16guard.io.outputs import check_outputs, clear_reports

    from . import render

    launched = from_env()
    try:
        # Before any model loads (and before --gpus starts its workers): a path that cannot be
        # written fails now, not after hours of validation. Then an earlier run's reports go,
        # so that a run that ends without a verdict (exit 2, 3, 4, 130) leaves none behind.
        check_outputs(out, save_policy, save_reference)
        if launched is None or launched.main:
            clear_reports(out)
    except Fp16GuardError as exc:
        if launched is None or launched.main:  # every rank finds the same paths
            render.error(console, str(exc))
        raise typer.Exit(exc.exit_code) from None
    if policy and no_fallback:
        render.error(console, "use either --policy or --no-fallback, not both")
        raise typer.Exit(2)
    if max_tokens != "auto" and not (max_tokens.isdigit() and int(max_tokens) >= 1):
        render.error(console, f"--max-tokens must be auto or a positive whole number, not {max_tokens!r}")
        raise typer.Exit(2)

    if gpus and gpus > 1 and launched is None:  # --gpus 1 runs here, in this process
        try:
            code = launch(sys.argv[1:], gpus)
        except Fp16GuardError as exc:
            render.error(console, str(exc))
            code = exc.exit_code
        raise typer.Exit(code)
    from fp16guard.execution import distributed

    world = None
    error: Fp16GuardError | None = None
    report = None
    try:
        # Joined first: after this, every failure is one the ranks can agree on.
        world = distributed.init(device.value)
        from fp16guard.core.config import (
            FP64_FLOOR_SEQUENCES,
            Thresholds,
            ValidationConfig,
        )
        from fp16guard.core.progress import Progress
        from fp16guard.report.writer import write_policy, write_report
        from fp16guard.workflows.validate import validate

        config = ValidationConfig(
            thresholds=Thresholds(min_cosine=min_cosine, min_knn_overlap=min_knn_overlap, min_rank_correlation=min_rank_correlation),
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
        main = world is None or world.main
        with render.LiveProgress(console) if main and not quiet else nullcontext(Progress()) as progress:
            report = validate(target, config, source, sequences=sequences, progress=progress)
        report.settings = recorded
        paths = write_report(report, out) if main else []
        if main and save_policy and report.passed:
            paths.append(write_policy(report, save_policy))
    except Fp16GuardError as exc:
        error = exc
    except KeyboardInterrupt:
        if world is None or world.main:
            _clear_quietly(out)  # reports half written when the interrupt came are not a verdict
            render.error(console, "interrupted")
        raise typer.Exit(130) from None
    error = _agree(console, world, launched, error)
    main = world is None or world.main
    if error is not None:
        if main:
            _clear_quietly(out)  # a report written before another rank failed is not the verdict
            render.error(console, str(error))
        _exit(error.exit_code)
    if main:  # the result on stdout (`> log.txt` keeps it); progress and errors stayed on stderr
        render.result(report, paths, quiet=quiet, as_json=as_json)
        _publish_to_ci(console, report, stdout=not as_json)
    _exit(report.exit_code)


def _publish_to_ci(console, report, stdout: bool = True) -> None:
    """On GitHub Actions: report.md into the step summary, and an ``::error`` line (stdout, or
    stderr when stdout carries --json) when the run failed. A summary that cannot be written is
    a warning: the verdict stands."""
    from . import ci, render

    if not ci.on_github():
        return
    try:
        ci.append_step_summary(report)
    except OSError as exc:
        render.warning(console, f"cannot append to ${ci.STEP_SUMMARY_ENV} ({exc.strerror or exc}); the report is in --out")
    line = ci.error_annotation(report)
    if line:
        typer.echo(line, err=not stdout)


def _agree(console, world, launched, error: Fp16GuardError | None) -> Fp16GuardError | None:
    """The error every rank ends with (None: every rank succeeded); exits at once when this
    rank failed before joining the others."""
    from fp16guard.execution import distributed

    from . import render

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


def _exit(code: int) -> None:
    """Leave the process group and exit with ``code``, on which every rank has agreed. Started
    by ``--gpus``, rank 0 hands the code to the launcher through a file and every rank exits 0:
    to the launcher, a non-zero exit means a rank that crashed or failed on its own."""
    import os

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


embed_app = typer.Typer(
    help="Embed sequences under the policy that validate saved, with FP32 spot checks, into one HDF5 file (resumable).",
    no_args_is_help=True,
    cls=Group,
)
app.add_typer(embed_app, name="embed")

EmbedSequencesOption = Annotated[
    Path, typer.Option("--sequences", "-s", help="FASTA file to embed (plain or gzip-compressed), read streaming.")
]
EmbedOutOption = Annotated[
    Path, typer.Option("--out", "-o", help="The HDF5 file to write; shards of a run in progress live in OUT.parts/ beside it.")
]
EmbedPolicyOption = Annotated[
    Optional[str],
    typer.Option("--policy", "-p", help="The policy file written by `validate --save-policy` (default: FP32). A built-in name needs --force."),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Embed under a policy validated on other weights, or not validated at all.")
]
LayersOption = Annotated[
    Optional[list[str]],
    typer.Option("--layers", metavar="N[,N...]", help="Layers to pool (default: the last); repeatable or comma-separated. The first is 'embeddings'."),
]
PerResidueOption = Annotated[
    bool, typer.Option("--per-residue", help="Also store every pooled position's hidden state (residues, residue_offsets).")
]
SpotCheckOption = Annotated[
    int,
    typer.Option("--spot-check-every", min=1, help="Also embed every N-th sequence (and the first 3) in FP32 and compare; below the policy's threshold ends the run (exit 1)."),
]
ChunkSizeOption = Annotated[
    int, typer.Option("--chunk-size", min=1, help="Sequences per shard: the unit of resuming and of work per process.")
]
EmbedMaxTokensOption = Annotated[
    Optional[int], typer.Option("--max-tokens", min=1, help="Token budget per batch (default 16384 on a GPU, 8192 on a CPU).")
]


class Compile(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


CompileOption = Annotated[
    Compile,
    typer.Option("--compile", help="torch.compile a packed ESM-2 policy's blocks; auto: on a GPU for inputs long enough to pay for compiling."),
]


def _embed_options(
    *,
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
    """The options every embed command shares (their one definition; see _embed_command)."""


def _embed_command(target: str):
    """Register ``fp16guard embed TARGET``: the decorated function's parameters are the model-
    source options, and it returns the ModelSource; the shared options follow them."""

    def register(source_function):
        source = inspect.signature(source_function, eval_str=True).parameters
        shared = inspect.signature(_embed_options, eval_str=True).parameters
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in (*source.values(), *shared.values())]

        def command(**options) -> None:
            run_embed(target, source_function(**{name: options.pop(name) for name in source}), **options)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__doc__, command.__name__ = source_function.__doc__, f"embed_{target}"
        embed_app.command(target, epilog=EXIT_CODES_HELP, cls=Command)(command)
        return source_function

    return register


@_embed_command("esm2")
def _esm2_source(
    model: Esm2ModelOption = "esm2_t33_650M_UR50D",
    weights: WeightsOption = None,
    offline: OfflineOption = False,
):
    """Embed a FASTA file with an ESM-2 model (fair-esm) under a validated policy."""
    return ModelSource(model=model, weights=weights, offline=offline)


@_embed_command("hf")
def _hf_source(
    model: HfModelOption,
    pooling: PoolingOption = Pooling.mean,
    trust_remote_code: TrustRemoteCodeOption = False,
    offline: OfflineOption = False,
):
    """Embed a FASTA file with a Hugging Face encoder under a validated policy."""
    return ModelSource(model=model, offline=offline, trust_remote_code=trust_remote_code, pooling=pooling.value)


@_embed_command("dnabert")
def _dnabert_source(
    model: DnabertModelOption = "zhihan1996/DNABERT-S",
    trust_remote_code: DnabertRemoteCodeOption = False,
    offline: OfflineOption = False,
):
    """Embed a FASTA file of DNA with DNABERT-S or DNABERT-2 under a validated policy."""
    return ModelSource(model=model, offline=offline, trust_remote_code=trust_remote_code)


@_embed_command("antiberty")
def _antiberty_source(pooling: PoolingOption = Pooling.mean):
    """Embed antibody sequences with AntiBERTy (pip package antiberty, works offline) under a validated policy."""
    return ModelSource(offline=True, pooling=pooling.value)


def _parse_layers(values: list[str] | None) -> tuple[int, ...] | None:
    """``--layers 33 --layers 20`` or ``--layers 33,20``; InputError for anything else."""
    from fp16guard.errors import InputError

    if not values:
        return None
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    if not items or not all(item.isdigit() for item in items):
        raise InputError(f"--layers takes layer numbers (0 to the model's last), not {','.join(values)!r}")
    return tuple(int(item) for item in items)


def run_embed(target: str, source, *, sequences, out, policy, force, device, gpus, max_tokens, layers, per_residue,
              spot_check_every, chunk_size, compile, debug) -> None:
    """Run the embed workflow with live progress and print the summary; the exit code follows
    the documented codes (1: a spot check failed or NaN/Inf). Under --gpus or torchrun every
    rank runs this; rank 0 alone prints."""
    from fp16guard.execution.launch import from_env, launch

    from . import render

    console = render.stderr_console()
    launched = from_env()
    if gpus and gpus > 1 and launched is None:
        try:
            code = launch(sys.argv[1:], gpus)
        except Fp16GuardError as exc:
            render.error(console, str(exc))
            code = exc.exit_code
        raise typer.Exit(code)
    world = result = None
    error: Fp16GuardError | None = None
    try:
        from fp16guard.core.progress import Progress
        from fp16guard.execution import distributed
        from fp16guard.workflows.embed import EmbedConfig, embed

        config = EmbedConfig(
            sequences=sequences, out=out, policy=policy, force=force, device=device.value, max_tokens=max_tokens,
            layers=_parse_layers(layers), per_residue=per_residue, spot_check_every=spot_check_every, chunk_size=chunk_size,
            compile=compile.value,
        )
        world = distributed.init(device.value)
        main = world is None or world.main
        with render.LiveProgress(console, unit="residues") if main else nullcontext(Progress()) as progress:
            result = embed(target, source, config, progress)
    except Fp16GuardError as exc:
        error = exc
    except KeyboardInterrupt:
        if launched is None or launched.main:
            render.error(console, "interrupted; rerun the same command to resume")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:  # a bug: one line, not a traceback, and never exit 1
        internal_error(console, exc, None, debug)
    error = _agree(console, world, launched, error)
    main = world is None or world.main
    if error is not None:
        if main:
            render.error(console, str(error))
        _exit(error.exit_code)
    if main:  # the result on stdout; progress, warnings and errors stayed on stderr
        render.embed_summary(render.stdout_console(), result)
    _exit(0)


@app.command("diff", cls=Command, epilog="Exit codes: 0 no regression, 1 NEW regresses, 2 a report that cannot be read.")
def diff(
    old: Annotated[Path, typer.Argument(help="The earlier run: a report.json or its report directory.", show_default=False)],
    new: Annotated[Path, typer.Argument(help="The later run: a report.json or its report directory.", show_default=False)],
    tolerance: Annotated[
        float, typer.Option("--tolerance", min=0.0, help="Largest fall in a sequence's cosine that is not a regression.")
    ] = 1e-3,
    max_slowdown: Annotated[
        float,
        typer.Option("--max-slowdown", min=1.0, help="Largest slowdown of a policy (old / new tokens/s) that is not a regression; gated on the same device model only."),
    ] = 1.25,
    agreement_tolerance: Annotated[
        float,
        typer.Option("--agreement-tolerance", min=0.0, help="Largest fall in mean kNN overlap, a probe's same-decision share or nearest-centroid accuracy that is not a regression (the rank correlation uses --tolerance)."),
    ] = 1e-2,
    top: Annotated[int, typer.Option("--top", min=0, help="Sequences shown per policy: those whose cosine fell most.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the diff as JSON on stdout.")] = False,
) -> None:
    """What changed between two validation runs: verdicts, per-sequence cosines, agreement metrics, speed, memory, environment."""
    from fp16guard.report.diff import diff_reports, load_report

    from . import render

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


@app.command("list", cls=Command)
def list_models() -> None:
    """Targets, presets and known checkpoints, and whether each is on this machine (nothing is downloaded)."""
    from fp16guard.models.catalog import catalog
    from fp16guard.numerics.policy import POLICIES

    from . import render

    render.catalog(render.stdout_console(), catalog(), POLICIES)


def run() -> None:
    """Console-script entry point. An exception that escapes a command is a bug: exit 4 with one
    line (the traceback with --debug or FP16GUARD_DEBUG=1), never Python's exit 1."""
    import os

    try:
        app()
    except Exception as exc:
        from . import render

        debug = "--debug" in sys.argv[1:] or os.environ.get("FP16GUARD_DEBUG", "").lower() in ("1", "true", "yes", "on")
        try:
            internal_error(render.stderr_console(), exc, None, debug)
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    run()
