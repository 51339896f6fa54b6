"""Time a full validate (FP32 reference + one FP16 attempt, saving the reference) and a rerun with
the saved reference, against the bare FP32 pass, on a random-weight ESM-2 checkpoint.

    python bench/reference_rerun.py --arch 650M --out results-ref/
    python bench/reference_rerun.py --arch 650M --proteins 4000 --out results-ref-4000/

All three run in this process on the bundled reference set with the same batches (the auto
token budget); loading the weights from disk (with their SHA-256) is timed separately:

- bare FP32: build the FP32 model on the device and embed every batch once (no warm-up, no
  repeats), which is what embedding the set once in FP32 costs;
- full: ``validate`` with ``--no-fallback --save-reference``, everything after loading;
- rerun: ``validate`` with ``--no-fallback --reference``, everything after loading.

A throw-away bare pass runs first, so that no timed run pays CUDA's one-time start-up. Writes
each run's report under --out and summary.json; prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from fp16guard.core.config import ModelSource, ValidationConfig
from fp16guard.core.progress import Progress
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.build import build
from fp16guard.io.sequences import bundled_path, read_fasta
from fp16guard.models import get_target
from fp16guard.numerics.metrics import masked_mean
from fp16guard.numerics.policy import FP32
from fp16guard.report.writer import write_report
from fp16guard.testing import ARCHITECTURES, write_checkpoint
from fp16guard.workflows.validate import token_budget, validate


class Clock(Progress):
    """Timestamps of the workflow's stages."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, str]] = []

    def stage(self, message: str) -> None:
        self.marks.append((time.perf_counter(), message))

    def load_seconds(self) -> float:
        """From the start of loading to the next stage (loading, hashing, tokenising)."""
        names = [m for _, m in self.marks]
        i = next(i for i, m in enumerate(names) if m.startswith("loading"))
        return self.marks[i + 1][0] - self.marks[i][0]


def bare_fp32(weights: Path, device: torch.device, fasta: Path | None = None) -> dict:
    """Load, then time building the FP32 model and one pass over the batches validate uses."""
    target = get_target("esm2")
    start = time.perf_counter()
    loaded = target.load(ModelSource(weights=weights))
    load = time.perf_counter() - start
    records = read_fasta(fasta or bundled_path(target.default_sequences), target.input_alphabet, "sequence")
    texts = [r.sequence for r in records.records]
    lengths = target.measure(loaded, texts)
    limit = loaded.max_length
    for i, n in enumerate(lengths):
        if limit is not None and n > limit:
            texts[i], lengths[i] = target.truncate(loaded, texts[i], limit), limit
    budget, reason = token_budget(ValidationConfig(), loaded, device, max(lengths) + target.special_tokens_per_row,
                                  None)
    batches = prepare_batches(target, loaded, texts, lengths, budget)
    _sync(device)
    start = time.perf_counter()
    model, _ = build(target, loaded, FP32, device)
    with torch.inference_mode():
        for batch in batches:
            hidden = target.hidden_states(loaded, model, batch.tokens.to(device),
                                          (loaded.num_layers,))[loaded.num_layers]
            masked_mean(hidden, batch.pool_mask.to(device)).cpu()
    _sync(device)
    seconds = time.perf_counter() - start
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"load_seconds": load, "seconds": seconds, "max_tokens": budget, "max_tokens_reason": reason,
            "batches": len(batches)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_validate(weights: Path, config: ValidationConfig, out: Path, fasta: Path | None = None) -> dict:
    clock = Clock()
    start = time.perf_counter()
    report = validate("esm2", config, ModelSource(weights=weights), sequences=fasta, progress=clock)
    total = time.perf_counter() - start
    write_report(report, out)
    load = clock.load_seconds()
    return {
        "total_seconds": total,
        "load_seconds": load,
        "seconds": total - load,
        "passed": report.passed,
        "max_tokens": report.dataset["max_tokens"],
        "attempts": {a.name + (" (saved)" if a.source else ""): a.timing for a in report.attempts},
        "fp16_cosines": report.attempts[-1].metrics["cosines"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="650M", choices=sorted(ARCHITECTURES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to try the script on a tiny --arch")
    parser.add_argument("--sequences", type=Path, help="a FASTA file instead of the bundled set")
    parser.add_argument("--proteins", type=int, help="instead, this many random proteins of 50-1000 residues "
                                                     "(bench/scaling.py's set)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible (use --device cpu to try the script)", file=sys.stderr)
        return 3
    device = torch.device(args.device)
    layers, dim, heads = ARCHITECTURES[args.arch]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_checkpoint(Path(tmp) / f"esm2_{args.arch}.pt", layers=layers, dim=dim, heads=heads)
        if args.proteins:
            from scaling import protein_set  # a sibling script

            args.sequences = Path(tmp) / f"proteins-{args.proteins}.fasta"
            protein_set(args.sequences, args.proteins)
        reference = Path(tmp) / "reference.npz"
        bare_fp32(weights, device)  # warm-up: CUDA context, cuBLAS, lazy kernel loading
        bare = bare_fp32(weights, device, args.sequences)
        full = timed_validate(weights, ValidationConfig(device=args.device, policies=("fp16",),
                                                        save_reference=str(reference)), args.out / "full",
                                                        args.sequences)
        rerun = timed_validate(weights, ValidationConfig(device=args.device, policies=("fp16",),
                                                         reference=str(reference)), args.out / "rerun", args.sequences)
        reference_bytes = reference.stat().st_size
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "arch": args.arch,
        "sequences": (f"{args.proteins} random proteins (bench/scaling.py)" if args.proteins
                      else str(args.sequences) if args.sequences else "bundled protein_reference.fasta"),
        "bare_fp32": bare,
        "full": full,
        "rerun": rerun,
        "reference_file_bytes": reference_bytes,
        "full_over_bare": full["seconds"] / bare["seconds"],
        "rerun_over_bare": rerun["seconds"] / bare["seconds"],
        # The rerun replays the full run's batches: its FP16 cosines should be bit-identical.
        "cosines_identical": full.pop("fp16_cosines") == rerun.pop("fp16_cosines"),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(
        f"{summary['device']}, ESM-2 {args.arch}, {bare['batches']} batches of <= {bare['max_tokens']} tokens: "
        f"bare FP32 {bare['seconds']:.2f} s; full validate {full['seconds']:.2f} s ({summary['full_over_bare']:.2f}x, "
        f"target <= 1.4x); rerun with --reference {rerun['seconds']:.2f} s ({summary['rerun_over_bare']:.2f}x, "
        f"target <= 0.4x; cosines identical: {summary['cosines_identical']}); loading weights "
        f"{bare['load_seconds']:.2f} s (not counted)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
