"""Every option of the validate and embed commands, each declared once (its flags, help and type)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class Device(str, Enum):
    """Where a command runs (``--device``, ``--reference-device``)."""

    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"
    map = "map"


class Pooling(str, Enum):
    """Which positions a sequence's embedding averages (``--pooling``)."""

    mean = "mean"
    residues = "residues"
    cls = "cls"


class Compile(str, Enum):
    """Whether embed compiles a packed policy's blocks (``--compile``)."""

    auto = "auto"
    on = "on"
    off = "off"


# ---------------------------------------------------------------- where the model comes from

Esm2ModelOption = Annotated[
    str,
    typer.Option("--model", "-m", help="ESM-2 checkpoint name, read from the torch hub cache (downloaded if missing)."),
]
WeightsOption = Annotated[
    Optional[Path], typer.Option("--weights", "-w", help="Local fair-esm .pt checkpoint (overrides --model).")
]
HfModelOption = Annotated[str, typer.Option("--model", "-m", help="Local model directory or Hugging Face model id.")]
DnabertModelOption = Annotated[
    str, typer.Option("--model", "-m", help="DNABERT-S/DNABERT-2 directory or Hugging Face model id.")
]
TrustRemoteCodeOption = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Allow the model directory's own Python code to run (off by default)."),
]
DnabertRemoteCodeOption = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Run the checkpoint's own code instead of fp16guard's native DNABERT."),
]
PoolingOption = Annotated[
    Pooling,
    typer.Option(
        help="mean: mean of the hidden states over every token, special tokens included; residues: over the "
        "residues' tokens only; cls: the first token."
    ),
]
OfflineOption = Annotated[
    bool, typer.Option("--offline", envvar="FP16GUARD_OFFLINE", help="Never download weights; use local files only.")
]

# ---------------------------------------------------------------- validate and embed

DeviceOption = Annotated[
    Device,
    typer.Option(
        help="Where to run; auto picks CUDA when present; map spreads the model's blocks over every GPU (needs "
        "accelerate)."
    ),
]
GpusOption = Annotated[
    Optional[int],
    typer.Option(
        "--gpus",
        min=1,
        help="Start this many processes, one GPU each (with --device cpu: on the CPU), and split the batches "
        "between them.",
    ),
]
DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug", envvar="FP16GUARD_DEBUG",
        help="On an internal error (exit 4), print the traceback; it is also written to fp16guard-error.log in --out.",
    ),
]

# ---------------------------------------------------------------- validate

SequencesOption = Annotated[
    Optional[Path],
    typer.Option("--sequences", "-s", help="FASTA file to embed (default: the bundled reference set)."),
]
ReferenceDeviceOption = Annotated[
    Optional[Device],
    typer.Option(
        "--reference-device",
        help="Where the FP32 reference runs, if not where --device says (cpu, or map for a model too big for one "
        "GPU).",
    ),
]
MaxTokensOption = Annotated[
    str,
    typer.Option(
        "--max-tokens",
        metavar="auto|N",
        help="Token budget per batch (rows x padded length), or auto: from free GPU memory and the model's size "
        "(8192 on CPU).",
    ),
]
MaxLengthOption = Annotated[
    Optional[int],
    typer.Option("--max-length", min=1, help="Truncate sequences to this many residues (default: the model's limit)."),
]
DnabertMaxLengthOption = Annotated[
    Optional[int],
    typer.Option("--max-length", min=1, help="Truncate sequences to this many tokens (default: no limit)."),
]
LayerOption = Annotated[Optional[int], typer.Option(help="Layer whose hidden states are pooled (default: the last).")]
MinCosineOption = Annotated[
    float, typer.Option("--min-cosine", help="Every sequence's pooled cosine to FP32 must reach this.")
]
MinKnnOverlapOption = Annotated[
    Optional[float],
    typer.Option(
        "--min-knn-overlap",
        min=0.0,
        max=1.0,
        help="Also gate on neighbour agreement: the mean share of each sequence's k nearest FP32 neighbours "
        "(cosine) that stay among its k nearest (k = 10, fewer on small sets).",
    ),
]
MinRankCorrelationOption = Annotated[
    Optional[float],
    typer.Option(
        "--min-rank-correlation",
        min=-1.0,
        max=1.0,
        help="Also gate on ranking agreement: Spearman correlation of all pairwise cosine similarities, FP32 vs "
        "the attempt.",
    ),
]
ProbeOption = Annotated[
    Optional[Path],
    typer.Option(
        "--probe",
        help="A linear head trained on these embeddings (.npz or .safetensors with W [classes, dim] and b): report "
        "how many sequences change predicted class.",
    ),
]
LabelsOption = Annotated[
    Optional[Path],
    typer.Option(
        "--labels",
        help="A two-column TSV (sequence id, label): report nearest-centroid accuracy under FP32 and each attempt.",
    ),
]
Fp64FloorOption = Annotated[
    bool,
    typer.Option(
        "--fp64-floor",
        help="Embed a sample of 32 sequences in FP64 (GPU if it fits, else CPU) and give each attempt's error as "
        "a multiple of FP32's own.",
    ),
]
PolicyOption = Annotated[
    Optional[str],
    typer.Option(
        "--policy",
        "-p",
        help="Test only this policy (fp16, fp16+keep32, fp16+ln32, fp16+pos32, fp16+res32, fp16+sdpa, fp16+packed, "
        "fp32, or a .json).",
    ),
]
NoFallbackOption = Annotated[bool, typer.Option("--no-fallback", help="Test full FP16 only.")]
FullLadderOption = Annotated[
    bool, typer.Option("--full-ladder", help="Run every rung even after one passes, to see what each costs.")
]
TryOption = Annotated[
    Optional[list[str]],
    typer.Option("--try", help="Also run this policy beside the ladder, for information (e.g. bf16); repeatable."),
]
SavePolicyOption = Annotated[
    Optional[Path],
    typer.Option(
        "--save-policy",
        help="Write the recommended policy (the one that passed, or its faster fused-attention variant that passed "
        "too) to this JSON file, for fp16guard.apply_policy.",
    ),
]
SaveReferenceOption = Annotated[
    Optional[Path],
    typer.Option(
        "--save-reference", help="Write the FP32 reference embeddings to this .npz, for reruns with --reference."
    ),
]
ReferenceOption = Annotated[
    Optional[Path],
    typer.Option(
        "--reference", help="Compare with the FP32 embeddings saved by --save-reference instead of computing them."
    ),
]
ProfileOption = Annotated[
    bool,
    typer.Option(
        "--profile", help="Compare every layer's output with FP32 for each attempt (report.md table, profile.png)."
    ),
]
SearchOption = Annotated[
    bool,
    typer.Option(
        "--search",
        help="If full FP16 fails, bisect for the fewest FP32 islands: whole blocks, then their layer norms, "
        "attention or MLP.",
    ),
]
CarefulTimingOption = Annotated[
    bool,
    typer.Option(
        "--careful-timing",
        help="Repeat embedding passes shorter than 2 s on a GPU and keep the fastest (steadier speed figures, "
        "longer run).",
    ),
]
OutOption = Annotated[
    Path, typer.Option("--out", "-o", help="Directory for report.json, report.md, junit.xml, report.html.")
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only the verdict line (and errors): no progress, no table.")
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print report.json to stdout (and nothing else there); the summary goes to stderr."),
]

# ---------------------------------------------------------------- embed

EmbedSequencesOption = Annotated[
    Path, typer.Option("--sequences", "-s", help="FASTA file to embed (plain or gzip-compressed), read streaming.")
]
EmbedOutOption = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="The HDF5 file to write; shards of a run in progress live in OUT.parts/ beside it."
    ),
]
EmbedPolicyOption = Annotated[
    Optional[str],
    typer.Option(
        "--policy",
        "-p",
        help="The policy file written by `validate --save-policy` (default: FP32). A built-in name needs --force.",
    ),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Embed under a policy validated on other weights, or not validated at all.")
]
EmbedMaxTokensOption = Annotated[
    Optional[int],
    typer.Option("--max-tokens", min=1, help="Token budget per batch (default 16384 on a GPU, 8192 on a CPU)."),
]
LayersOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--layers",
        metavar="N[,N...]",
        help="Layers to pool (default: the last); repeatable or comma-separated. The first is 'embeddings'.",
    ),
]
PerResidueOption = Annotated[
    bool,
    typer.Option(
        "--per-residue", help="Also store every pooled position's hidden state (residues, residue_offsets)."
    ),
]
SpotCheckOption = Annotated[
    int,
    typer.Option(
        "--spot-check-every",
        min=1,
        help="Also embed every N-th sequence (and the first 3) in FP32 and compare; below the policy's threshold "
        "ends the run (exit 1).",
    ),
]
ChunkSizeOption = Annotated[
    int, typer.Option("--chunk-size", min=1, help="Sequences per shard: the unit of resuming and of work per process.")
]
CompileOption = Annotated[
    Compile,
    typer.Option(
        "--compile",
        help="torch.compile a packed ESM-2 policy's blocks; auto: on a GPU for inputs long enough to pay for "
        "compiling.",
    ),
]
