"""fp16guard commands. Thin: options in, one library call, exit code out."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from fp16guard.errors import Fp16GuardError

app = typer.Typer(
    name="fp16guard",
    help="Prove that a biological language model is safe to run in FP16 before you ship its embeddings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
validate_app = typer.Typer(
    help="Embed a reference set in FP32 and in FP16 (with fallbacks) and gate on the agreement.",
    no_args_is_help=True,
)
app.add_typer(validate_app, name="validate")

EXIT_CODES_HELP = "Exit codes: 0 pass, 1 accuracy failure, 2 bad input or usage, 3 environment or model-load failure."


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


SequencesOption = Annotated[
    Optional[Path],
    typer.Option("--sequences", "-s", help="FASTA file to embed (default: the bundled reference set)."),
]
DeviceOption = Annotated[Device, typer.Option(help="Where to run; auto picks CUDA when present.")]
MaxTokensOption = Annotated[
    int, typer.Option("--max-tokens", min=1, help="Token budget per batch (rows x padded length).")
]
MaxLengthOption = Annotated[
    Optional[int],
    typer.Option("--max-length", min=1, help="Truncate sequences to this many residues (default: the model's limit)."),
]
LayerOption = Annotated[Optional[int], typer.Option(help="Layer whose hidden states are pooled (default: the last).")]
MinCosineOption = Annotated[
    float, typer.Option("--min-cosine", help="Every sequence's pooled cosine to FP32 must reach this.")
]
PolicyOption = Annotated[
    Optional[str],
    typer.Option("--policy", "-p", help="Test only this policy (fp16, fp16+ln32, fp16+pos32, fp16+res32, fp32, or a .json)."),
]
NoFallbackOption = Annotated[bool, typer.Option("--no-fallback", help="Test full FP16 only.")]
FullLadderOption = Annotated[
    bool, typer.Option("--full-ladder", help="Run every rung even after one passes, to see what each costs.")
]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Directory for report.json, report.md, junit.xml.")]
OfflineOption = Annotated[
    bool, typer.Option("--offline", envvar="FP16GUARD_OFFLINE", help="Never download weights; use local files only.")
]


@validate_app.command("esm2", epilog=EXIT_CODES_HELP)
def validate_esm2(
    model: Annotated[
        str, typer.Option("--model", "-m", help="ESM-2 checkpoint name, loaded from the torch hub cache (downloaded if missing).")
    ] = "esm2_t33_650M_UR50D",
    weights: Annotated[
        Optional[Path], typer.Option("--weights", "-w", help="Local fair-esm .pt checkpoint (overrides --model).")
    ] = None,
    sequences: SequencesOption = None,
    device: DeviceOption = Device.auto,
    max_tokens: MaxTokensOption = 8192,
    max_length: MaxLengthOption = None,
    layer: LayerOption = None,
    min_cosine: MinCosineOption = 0.99,
    policy: PolicyOption = None,
    no_fallback: NoFallbackOption = False,
    full_ladder: FullLadderOption = False,
    out: OutOption = Path("fp16guard-report"),
    offline: OfflineOption = False,
) -> None:
    """Validate an ESM-2 model (fair-esm) in FP16 against FP32."""
    run_validation(
        "esm2",
        model=model,
        weights=weights,
        sequences=sequences,
        device=device.value,
        max_tokens=max_tokens,
        max_length=max_length,
        layer=layer,
        min_cosine=min_cosine,
        policy=policy,
        no_fallback=no_fallback,
        full_ladder=full_ladder,
        out=out,
        offline=offline,
    )


def run_validation(
    target: str, *, policy, no_fallback, full_ladder, min_cosine, out, model, weights, sequences, offline, **settings
) -> None:
    """Build the config, run the workflow with live progress, write the report, exit."""
    from . import render

    console = render.stderr_console()
    if policy and no_fallback:
        render.error(console, "use either --policy or --no-fallback, not both")
        raise typer.Exit(2)
    try:
        from fp16guard.config import Thresholds, ValidationConfig
        from fp16guard.report import write_report
        from fp16guard.workflow import validate

        config = ValidationConfig(
            thresholds=Thresholds(min_cosine=min_cosine),
            policies=(policy,) if policy else ("fp16",) if no_fallback else None,
            stop_at_first_pass=not full_ladder,
            **settings,
        )
        with render.LiveProgress(console) as progress:
            report = validate(
                target, config, model=model, weights=weights, sequences=sequences, offline=offline, progress=progress
            )
        paths = write_report(report, out)
    except Fp16GuardError as exc:
        render.error(console, str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        render.error(console, "interrupted")
        raise typer.Exit(130) from None
    render.summary(console, report, paths)
    raise typer.Exit(report.exit_code)


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
