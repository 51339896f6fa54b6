"""Speed, memory and model FLOP utilisation of fp16guard against the embedding loop users write.

In one process on one GPU, with random weights at the real sizes:

1. a dense FP16 matmul (8192^3), whose rate is the denominator of model FLOP utilisation (MFU);
2. per architecture and fixed batch shape:
   (a) the bare loop users write: the model, ``.eval()`` on the device in FP32, or ``.half()``,
       under ``torch.inference_mode``, the last layer's representation, then a mean over
       residues;
   (b) fp16guard's runner (``fp16guard.execution.runner.run_policy``) on the weights as fp16guard loads
       them from a checkpoint file, under every policy (``fp16+sdpa`` where this build has it);
3. per architecture: the whole ``fp16guard validate --no-fallback`` (the CLI in a subprocess,
   weight loading timed from its own progress lines) against the bare FP32 pass over the same
   sequences and batches, and a rerun against a saved reference where the CLI has
   ``--save-reference`` / ``--reference``.

    python bench/speed.py --out results/                        # 650M, 3B, DNABERT-S on CUDA
    python bench/speed.py --out results/ --arch 650M dnabert    # a subset
    python bench/speed.py --out quick/ --quick --device cpu     # tiny shapes: the code paths only

writes results.json and results.md (tables and every target with its measured ratio) to --out,
plus each validate run's report directory and log; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from _common import (
    DNABERT_CORPUS,
    DNABERT_INTERMEDIATE_PER_DIM,
    DNABERT_VOCAB,
    CliRun,
    run_cli,
)

from fp16guard.core.config import ModelSource
from fp16guard.errors import Fp16GuardError
from fp16guard.execution import runner
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.devices import environment
from fp16guard.io.sequences import bundled_path, read_fasta, replace_letters
from fp16guard.models import get_target
from fp16guard.models.base import LoadedModel
from fp16guard.models.batch import TokenBatch
from fp16guard.numerics.policy import FP16, FP16_LN32, FP16_POS32, FP16_RES32, FP32, Policy, get_policy
from fp16guard.report.text import fmt_bytes
from fp16guard.testing import ARCHITECTURES, build_model, save_checkpoint, write_dnabert

SDPA = "fp16+sdpa"  # the fast-attention policy, where this build has it
PROTEIN = "ACDEFGHIKLMNPQRSTVWY"
VALIDATE_MAX_TOKENS = 8192  # the CLI's default batch budget
# Timed the way fp16guard's runner times (one warm-up pass, then passes until MIN_TIMED_SECONDS
# are spent or 1 + MAX_REPEATS passes ran, keeping the fastest), so the two compare like for like.
MIN_TIMED_SECONDS = getattr(runner, "MIN_TIMED_SECONDS", 2.0)
MAX_REPEATS = getattr(runner, "MAX_REPEATS", 5)


@dataclass(frozen=True)
class Arch:
    """One benchmarked architecture: fp16guard target, size (a key of
    fp16guard.testing.ARCHITECTURES), fixed (rows, tokens per row) shapes with special tokens
    included, and the fast-attention targets of the issue as (shape index, kind, limit)."""

    family: str
    size: str
    label: str
    shapes: tuple[tuple[int, int], ...]
    sdpa_targets: tuple[tuple[int, str, float], ...] = ()
    dnabert_vocab: int = DNABERT_VOCAB
    dnabert_corpus: int = DNABERT_CORPUS


ESM2_650M_TARGETS = ((0, "speed-up", 2.0), (1, "speed-up", 1.3), (0, "memory", 1.0))
ARCHS = {
    "650M": Arch("esm2", "650M", "ESM-2 650M (33 layers, 1280 dim, 20 heads)", ((16, 1024), (64, 256)),
                 ESM2_650M_TARGETS),
    "3B": Arch("esm2", "3B", "ESM-2 3B (36 layers, 2560 dim, 40 heads)", ((8, 1024),), ((0, "mfu", 0.45),)),
    "dnabert": Arch("dnabert", "117M", "DNABERT-S (12 layers, 768 dim, 12 heads, gated MLP 3072)", ((32, 512),)),
    # Tiny stand-ins for --quick: every code path, including each kind of target, in seconds.
    "tiny": Arch("esm2", "tiny", "tiny ESM-2 (3 layers, 32 dim, 4 heads)", ((2, 32), (4, 16)),
                 (*ESM2_650M_TARGETS, (0, "mfu", 0.45))),
    "dnabert-tiny": Arch("dnabert", "tiny", "tiny DNABERT (3 layers, 32 dim, 4 heads)", ((2, 32),), (), 128, 200),
}
QUICK_SHAPES = {"esm2": ((2, 32), (4, 16)), "dnabert": ((2, 32),)}

TARGET_LIMITS = {
    "runner-fp16": ("fp16guard's full-FP16 pass vs the bare FP16 loop (time ratio)", "<=", 1.05),
    "ln32": ("fp16+ln32 vs full FP16, both through fp16guard (time ratio)", "<=", 1.10),
    "validate": ("whole validate, weight loading excluded, vs the bare FP32 pass (time ratio)", "<=", 1.4),
    "rerun": ("rerun against a saved reference, weight loading excluded, vs the bare FP32 pass (time ratio)", "<=",
              0.4),
    "speed-up": ("fp16+sdpa vs the bare FP16 loop (tokens/s ratio)", ">=", None),
    "memory": ("fp16+sdpa peak memory vs the bare FP16 loop", "<", None),
    "mfu": ("fp16+sdpa model FLOP utilisation", ">=", None),
}

_START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --- measurements ------------------------------------------------------------------------------


def matmul_rate(device: torch.device, n: int, iterations: int, repeats: int) -> dict:
    """Best rate of a dense n x n x n FP16 matmul, FLOP/s (2 n^3 per product)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.float16, generator=generator)
    b = torch.randn(n, n, device=device, dtype=torch.float16, generator=generator)
    c = torch.empty_like(a)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            torch.matmul(a, b, out=c)
        sync(device)
        best = min(best, (time.perf_counter() - start) / iterations)
    del a, b, c
    free(device)
    return {"n": n, "dtype": "float16", "iterations": iterations, "repeats": repeats, "seconds": best,
            "flops": 2 * n**3 / best}


def timed(step, device: torch.device) -> dict:
    """One warm-up call of ``step``, then timed calls until MIN_TIMED_SECONDS are spent (on
    CUDA) or 1 + MAX_REPEATS ran; the fastest, and the peak memory over the timed calls."""
    with torch.inference_mode():
        step()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times: list[float] = []
        while True:
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - start)
            if device.type != "cuda" or sum(times) >= MIN_TIMED_SECONDS or len(times) > MAX_REPEATS:
                break
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"seconds": min(times), "passes": len(times), "peak_memory_bytes": peak}


def bare_forward(family: str, model, tokens: torch.Tensor, layer: int, pad_id: int) -> torch.Tensor:
    """The last layer's hidden states, called as users call the model."""
    if family == "esm2":
        return model(tokens, repr_layers=[layer])["representations"][layer]
    return model(tokens, (tokens != pad_id).long())[layer]


def time_bare(family: str, model, batches: list[TokenBatch], device: torch.device, layer: int, pad_id: int) -> dict:
    """Time the user's loop over ``batches``: forward, then each sequence's mean over its
    residues. Nothing of it outlives the call, so the next model's peak memory is its own."""
    moved = [(b.tokens.to(device), b.pool_mask.to(device)) for b in batches]

    def step() -> None:
        for tokens, mask in moved:
            hidden = bare_forward(family, model, tokens, layer, pad_id)
            keep = mask.unsqueeze(-1)
            (hidden.float() * keep).sum(1) / keep.sum(1)

    return timed(step, device)


def with_rates(record: dict, tokens: int, flops_per_token: float | None, matmul_flops: float) -> dict:
    """Add tokens/s and, for fixed shapes, achieved FLOP/s and MFU."""
    rate = tokens / record["seconds"] if record["seconds"] else None
    record.update(tokens=tokens, tokens_per_second=rate)
    if flops_per_token is not None and rate is not None:
        record["flops"] = rate * flops_per_token
        record["mfu"] = record["flops"] / matmul_flops
    return record


# --- models and inputs -------------------------------------------------------------------------


def write_weights(spec: Arch, directory: Path, device: torch.device) -> tuple[ModelSource, list[str]]:
    """Random weights of ``spec`` in its checkpoint format; the ModelSource and CLI arguments.

    ESM-2 is built on the device (initialising 3B parameters on the host takes minutes) and
    saved in fair-esm's layout; DNABERT (117M) is written on the host with its tokenizer."""
    layers, dim, heads = ARCHITECTURES[spec.size]
    if spec.family == "esm2":
        with torch.device(device):
            model = build_model(layers, dim, heads)
        path = save_checkpoint(model, directory / f"esm2_{spec.size}.pt")
        del model
        free(device)
        return ModelSource(weights=path), ["esm2", "--weights", str(path)]
    path = write_dnabert(
        directory / f"dnabert_{spec.size}", layers=layers, hidden=dim, heads=heads,
        intermediate=DNABERT_INTERMEDIATE_PER_DIM * dim, vocab_size=spec.dnabert_vocab, corpus=spec.dnabert_corpus,
    )
    return ModelSource(model=str(path), offline=True), ["dnabert", "--model", str(path)]


def fixed_batch(spec: Arch, target, loaded: LoadedModel, rows: int, length: int, seed: int) -> TokenBatch:
    """``rows`` sequences of exactly ``length`` tokens, special tokens included, no padding."""
    rng = random.Random(seed)
    if spec.family == "esm2":
        texts = ["".join(rng.choices(PROTEIN, k=length - 2)) for _ in range(rows)]
        (batch,) = prepare_batches(target, loaded, texts, [length - 2] * rows, rows * length)
        return batch
    # DNABERT's byte-pair tokens cover a varying number of bases, so draw token ids directly:
    # [CLS], random non-special tokens, [SEP]; mean pooling covers every position.
    tokenizer = loaded.encoding.tokenizer
    special = set(tokenizer.all_special_ids)
    vocabulary = [i for i in range(len(tokenizer)) if i not in special]
    ids = [[tokenizer.cls_token_id, *rng.choices(vocabulary, k=length - 2),
            tokenizer.sep_token_id] for _ in range(rows)]
    tokens = torch.tensor(ids, dtype=torch.long)
    return TokenBatch(tuple(range(rows)), tokens, torch.ones_like(tokens, dtype=torch.bool), rows * length,
                      (length,) * rows)


def validate_sequences(spec: Arch, directory: Path, quick: bool) -> Path:
    """The bundled reference set of the target; with --quick a few short random sequences."""
    target = get_target(spec.family)
    if not quick:
        return bundled_path(target.default_sequences)
    rng = random.Random(1)
    letters, lengths = (PROTEIN, (12, 30, 45, 60, 20, 8)) if spec.family == "esm2" else ("ACGT", (60, 150, 240, 90, 300,
                                                                                                  50))
    path = directory / f"{spec.family}_quick.fasta"
    path.write_text("".join(f">seq{i}\n{''.join(rng.choices(letters, k=n))}\n" for i, n in enumerate(lengths)))
    return path


def validate_batches(target, loaded: LoadedModel, fasta: Path, max_tokens: int) -> list[TokenBatch]:
    """The batches `fp16guard validate` forms from ``fasta``: same reading, truncation, plan."""
    records = read_fasta(fasta, target.input_alphabet, "sequence")
    codes = getattr(target, "ambiguity_codes", "")
    if codes:
        records, _ = replace_letters(records, codes, "N")
    texts = [r.sequence for r in records.records]
    lengths = target.measure(loaded, texts)
    for i, n in enumerate(lengths):
        if loaded.max_length is not None and n > loaded.max_length:
            texts[i] = target.truncate(loaded, texts[i], loaded.max_length)
            lengths[i] = loaded.max_length
    return prepare_batches(target, loaded, texts, lengths, max_tokens)


def block_parameters(target, loaded: LoadedModel) -> int:
    return sum(p.numel() for block in target.blocks(loaded.module) for p in block.parameters())


# --- one architecture --------------------------------------------------------------------------


def bench_arch(name: str, args, device: torch.device, policies: dict[str, Policy | None], matmul_flops: float,
               reference_cli: bool, tmp: Path) -> dict:
    """Everything measured for one architecture, as a JSON-ready dict."""
    spec = ARCHS[name]
    target = get_target(spec.family)
    layers, dim, heads = ARCHITECTURES[spec.size]
    record: dict = {"label": spec.label, "target": spec.family, "layers": layers, "dim": dim, "heads": heads}

    start = time.perf_counter()
    source, cli_target = write_weights(spec, tmp, device)
    record["checkpoint_write_seconds"] = time.perf_counter() - start
    log(f"{name}: random weights written in {record['checkpoint_write_seconds']:.1f} s")
    start = time.perf_counter()
    loaded = target.load(source)
    record["load_seconds"] = time.perf_counter() - start
    layer = loaded.num_layers
    pad_id = loaded.encoding.pad_id
    record["parameters"] = loaded.num_parameters
    record["block_parameters"] = block_parameters(target, loaded)
    log(f"{name}: loaded by fp16guard in {record['load_seconds']:.1f} s ({record['parameters']:,} parameters)")

    shapes = QUICK_SHAPES[spec.family] if args.quick else spec.shapes
    batches: dict[str, TokenBatch] = {}
    record["shapes"] = {}
    for number, (rows, length) in enumerate(shapes):
        label = f"{rows}x{length}"
        batches[label] = fixed_batch(spec, target, loaded, rows, length, seed=number)
        # 2 FLOPs per block parameter (the matmuls) plus QK^T and AV: 4 x layers x length x dim.
        per_token = 2 * record["block_parameters"] + 4 * layers * length * dim
        record["shapes"][label] = {"rows": rows, "length": length, "tokens": rows * length,
                                   "flops_per_token": per_token, "runs": []}
    fasta = validate_sequences(spec, tmp, args.quick) if name in args.validate else None
    set_batches = validate_batches(target, loaded, fasta, VALIDATE_MAX_TOKENS) if fasta else []

    # (a) the bare loop, a fresh model per precision (fair-esm's rotary cache would carry FP32
    # tables into an FP16 model otherwise).
    for precision in ("fp32", "fp16"):
        model = copy.deepcopy(loaded.module).eval().to(device)
        if precision == "fp16":
            model = model.half()
        for label, batch in batches.items():
            shape = record["shapes"][label]
            measured = time_bare(spec.family, model, [batch], device, layer, pad_id)
            run = with_rates({"kind": "bare", "policy": precision, **measured}, shape["tokens"],
                             shape["flops_per_token"], matmul_flops)
            shape["runs"].append(run)
            log(f"{name} {label}: bare {precision}: {run['tokens_per_second']:,.0f} tokens/s, peak "
                f"{fmt_bytes(run['peak_memory_bytes'])}")
        if precision == "fp32" and set_batches:
            tokens = sum(b.tokens_used for b in set_batches)
            run = with_rates(time_bare(spec.family, model, set_batches, device, layer, pad_id), tokens, None,
                             matmul_flops)
            run.update(sequences=sum(len(b.indices) for b in set_batches), batches=len(set_batches), fasta=fasta.name)
            record["bare_fp32_set"] = run
            log(f"{name}: bare fp32 over {fasta.name} ({tokens:,} tokens): {run['seconds']:.2f} s")
        del model
        free(device)

    # (b) fp16guard's runner, timed by its own Timing.
    for policy_name, policy in policies.items():
        for label, batch in batches.items():
            shape = record["shapes"][label]
            row = {"kind": "fp16guard", "policy": policy_name}
            if policy is None:
                shape["runs"].append({**row, "note": "not available in this build"})
                continue
            try:
                result = runner.run_policy(target, loaded, policy, [batch], len(batch.indices), device, layer)
            except Exception as exc:
                message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                shape["runs"].append({**row, "note": f"failed: {message}"})
                log(f"{name} {label}: {policy_name} failed: {message}")
                free(device)
                continue
            timing = result.timing
            run = {**row, "seconds": timing.seconds, "passes": timing.passes,
                   "peak_memory_bytes": result.peak_memory_bytes,
                   "build_seconds": timing.build_seconds, "fp32_modules": len(result.applied.fp32_modules)}
            shape["runs"].append(with_rates(run, timing.tokens, shape["flops_per_token"], matmul_flops))
            log(f"{name} {label}: fp16guard {policy_name}: {run['tokens_per_second']:,.0f} tokens/s, peak "
                f"{fmt_bytes(run['peak_memory_bytes'])}")
            del result
            free(device)
    del loaded
    free(device)

    # (c) the whole validate, through the CLI as users run it.
    if fasta is not None:
        record["validate"] = validate_runs(name, cli_target, fasta, device, args.out, reference_cli, tmp)
    return record


def validate_runs(name: str, cli_target: list[str], fasta: Path, device: torch.device, out: Path, reference_cli: bool,
                  tmp: Path) -> dict:
    """`fp16guard validate --no-fallback` (saving the reference where it can), then a rerun
    against the saved reference; each with its wall time and its weight-loading time."""
    common = [*cli_target, "--device", device.type, "--no-fallback", "--sequences", str(fasta),
              "--max-tokens", str(VALIDATE_MAX_TOKENS)]
    reference = tmp / f"{name}-reference.npz"
    runs = {}
    first = run_cli(
        ["validate", *common, "--out", str(out / f"validate-{name}"),
         *(["--save-reference", str(reference)] if reference_cli else [])],
        log=out / f"validate-{name}.log",
    )
    runs["validate"] = cli_summary(first, out / f"validate-{name}")
    runs["validate"]["saves_reference"] = reference_cli
    log(f"{name}: validate exit {first.returncode} in {first.seconds:.1f} s (loading "
        f"{_num(runs['validate']['load_seconds'])} s)")
    if reference_cli and reference.is_file():
        again = run_cli(
            ["validate", *common, "--out", str(out / f"rerun-{name}"), "--reference", str(reference)],
            log=out / f"rerun-{name}.log"
        )
        runs["rerun"] = cli_summary(again, out / f"rerun-{name}")
        log(f"{name}: rerun against the saved reference exit {again.returncode} in {again.seconds:.1f} s")
    else:
        runs["rerun"] = {"note": "not available: this CLI has no --save-reference/--reference" if not reference_cli
                         else "not available: the first run wrote no reference file"}
    return runs


def cli_summary(run: CliRun, report_dir: Path) -> dict:
    """Wall time, and the weight loading measured from the line announcing it to the next line
    (which ends it: a warning about truncation, or the first model being built)."""
    summary: dict = {"returncode": run.returncode, "wall_seconds": run.seconds, "startup_seconds": None,
                     "load_seconds": None}
    index = run.first("loading")
    if index is not None and index + 1 < len(run.lines):
        summary["startup_seconds"] = run.lines[index][0]
        summary["load_seconds"] = run.lines[index + 1][0] - run.lines[index][0]
        summary["seconds_excluding_load"] = run.seconds - summary["load_seconds"]
    # The stage and warning lines; the progress bars and the closing table are left out.
    summary["stages"] = [{"at": round(t, 3), "line": line.strip()} for t, line in run.lines
                         if line[:1].isalpha() and "━" not in line][:40]
    try:
        report = json.loads((report_dir / "report.json").read_text())
        summary["attempts"] = {a["policy"]["name"]: a.get("timing") for a in report.get("attempts", [])}
        summary["passed"] = report.get("passed")
    except (OSError, ValueError, KeyError, TypeError):
        summary["attempts"] = None
    return summary


# --- targets and the Markdown ------------------------------------------------------------------


def _status(ratio: float | None, direction: str, limit: float) -> str:
    if ratio is None:
        return "n/a"
    ok = ratio <= limit if direction == "<=" else ratio >= limit if direction == ">=" else ratio < limit
    return "PASS" if ok else "MISS"


def evaluate_targets(results: dict) -> list[dict]:
    """Every target of the issue that this run can judge, with its measured ratio."""
    rows = []

    def add(kind: str, arch: str, shape: str, ratio: float | None, note: str = "", limit: float | None = None) -> None:
        description, direction, default = TARGET_LIMITS[kind]
        limit = default if limit is None else limit
        rows.append({"target": kind, "description": description, "architecture": arch, "shape": shape, "ratio": ratio,
                     "direction": direction, "limit": limit, "status": _status(ratio, direction, limit), "note": note})

    for arch, record in results["architectures"].items():
        spec = ARCHS[arch]
        runs = {label: {(r["kind"], r["policy"]): r for r in shape["runs"]}
                for label, shape in record["shapes"].items()}

        for label, by_run in runs.items():
            bare16, ours16, ln32 = (by_run.get(key, {}).get("tokens_per_second") for key in
                                    (("bare", "fp16"), ("fp16guard", "fp16"), ("fp16guard", "fp16+ln32")))
            add("runner-fp16", arch, label, bare16 / ours16 if bare16 and ours16 else None)
            add("ln32", arch, label, ours16 / ln32 if ours16 and ln32 else None)
        for index, kind, limit in spec.sdpa_targets:
            if index >= len(runs):
                continue
            label = list(runs)[index]
            sdpa = runs[label].get(("fp16guard", SDPA), {})
            bare16 = runs[label].get(("bare", "fp16"), {})
            note = "" if sdpa.get("tokens_per_second") else f"{SDPA}: {sdpa.get('note', 'not run')}"
            if kind == "speed-up":
                measured = not note and bare16.get("tokens_per_second")
                value = sdpa["tokens_per_second"] / bare16["tokens_per_second"] if measured else None
            elif kind == "memory":
                both = sdpa.get("peak_memory_bytes") and bare16.get("peak_memory_bytes")
                value = sdpa["peak_memory_bytes"] / bare16["peak_memory_bytes"] if both else None
                note = note or ("" if both else "no peak memory on this device")
            else:
                value = sdpa.get("mfu")
            add(kind, arch, label, value, note, limit)
        validate = record.get("validate")
        if validate:
            bare = record["bare_fp32_set"]["seconds"]
            for kind, key in (("validate", "validate"), ("rerun", "rerun")):
                run = validate[key]
                work = run.get("seconds_excluding_load")
                note = run.get("note", "") or ("" if work is not None else "the CLI's loading line was not found")
                if run.get("returncode") not in (None, 0):
                    note = f"exit code {run['returncode']}"
                add(kind, arch, record["bare_fp32_set"]["fasta"],
                    work / bare if work is not None and not note else None, note)
    return rows


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _short(line: str, width: int = 48) -> str:
    line = line.split(" (")[0]
    return line if len(line) <= width else line[: width - 3] + "..."


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render_markdown(results: dict) -> str:
    env = results["environment"]
    matmul = results["matmul"]
    lines = [
        "# fp16guard speed benchmark",
        "",
        (
            f"- Device: {env['device_name']} ({env['device']}), driver {env.get('driver') or '-'}; "
            f"torch {env['torch']}, "
            f"CUDA {env['cuda']}, fair-esm {env['fair-esm']}, transformers {env['transformers']}, "
            f"fp16guard {env['fp16guard']}, Python {env['python']}. {env['date']}."
        ),
        (
            f"- Dense FP16 matmul {matmul['n']}^3, best of {matmul['repeats']} x {matmul['iterations']}: "
            f"**{matmul['flops'] / 1e12:,.1f} TFLOP/s**, the denominator of MFU."
        ),
        (
            f"- Timing: one warm-up pass, then passes until {MIN_TIMED_SECONDS:g} s are spent (at most "
            f"{1 + MAX_REPEATS}), the fastest kept; fp16guard rows are the runner's own Timing, measured the same way. "
            "Peak memory: torch.cuda.max_memory_allocated over the timed passes, weights included. MFU: tokens/s x "
            "(2 x transformer-block parameters + 4 x layers x tokens per row x width) / the matmul rate. TF32 "
            f"{'on' if env.get('allow_tf32') else 'off'}, so FP32 means FP32 matmuls."
        ),
        f"- {results['settings']['note']} Whole run: {_num(results['settings'].get('wall_seconds'), 0)} s.",
        "",
        "## Targets",
        "",
        "| target | architecture | on | measured | limit | status | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["targets"]:
        ratio = _num(row["ratio"]) + "x" if row["ratio"] is not None else "-"
        value = _pct(row["ratio"]) if row["target"] == "mfu" else ratio
        limit = _pct(row["limit"]) if row["target"] == "mfu" else f"{row['limit']:g}x"
        lines.append(f"| {row['description']} | {row['architecture']} | {row['shape']} | {value} | "
                     f"{row['direction']} {limit} | "
                     f"**{row['status']}** | {row['note']} |")
    for record in results["architectures"].values():
        lines += ["", f"## {record['label']}", "", (
            f"{record['parameters']:,} parameters ({record['block_parameters']:,} in the transformer blocks), random "
            f"weights. Checkpoint written in {record['checkpoint_write_seconds']:.1f} s; loaded by fp16guard "
            f"(read, build, SHA-256) in {record['load_seconds']:.1f} s."
        )]
        for label, shape in record["shapes"].items():
            bare16 = next((r for r in shape["runs"] if r["kind"] == "bare" and r["policy"] == "fp16"),
                          {}).get("tokens_per_second")
            lines += ["", f"### {shape['rows']} x {shape['length']} tokens "
                          f"({shape['flops_per_token'] / 1e9:.2f} GFLOP per token)", "",
                      "| run | policy | tokens/s | ms per pass | passes | peak memory | MFU | vs bare FP16 |",
                      "|---|---|---|---|---|---|---|---|"]
            for run in shape["runs"]:
                if "tokens_per_second" not in run:
                    lines.append(f"| {run['kind']} | {run['policy']} | {run.get('note', '-')} | | | | | |")
                    continue
                versus = run["tokens_per_second"] / bare16 if bare16 else None
                lines.append(
                    f"| {run['kind']} | {run['policy']} | {run['tokens_per_second']:,.0f} | "
                    f"{1000 * run['seconds']:,.1f} | {run['passes']} | "
                    f"{fmt_bytes(run['peak_memory_bytes'])} | {_pct(run.get('mfu'))} | {_num(versus)}x |"
                )
        validate = record.get("validate")
        if validate:
            bare = record["bare_fp32_set"]
            lines += ["", f"### The whole `fp16guard validate --no-fallback` on {bare['fasta']}", "", (
                f"{bare['sequences']} sequences, {bare['tokens']:,} tokens in {bare['batches']} batches (--max-tokens "
                f"{VALIDATE_MAX_TOKENS}). The bare FP32 pass over the same batches: **{bare['seconds']:.2f} s** "
                f"({bare['tokens_per_second']:,.0f} tokens/s)."
            ), "",
                      "| run | exit | wall | start-up (interpreter, imports) | weight loading | wall - loading "
                      "| vs bare FP32 pass |",
                      "|---|---|---|---|---|---|---|"]
            for key, run in validate.items():
                if "wall_seconds" not in run:
                    lines.append(f"| {key} | {run.get('note', '-')} | | | | | |")
                    continue
                work = run.get("seconds_excluding_load")
                label = key + (" (also saves the reference)" if run.get("saves_reference") else "")
                lines.append(f"| {label} | {run['returncode']} | {run['wall_seconds']:.2f} s | "
                             f"{_num(run['startup_seconds'])} s | "
                             f"{_num(run['load_seconds'])} s | {_num(work)} s | "
                             f"{_num(work / bare['seconds'] if work else None)}x |")
            for key, run in validate.items():
                if run.get("stages"):
                    steps = [f"{stage['at']:.1f} s {_short(stage['line'])}" for stage in run["stages"]]
                    timeline = "; ".join(steps)
                    lines += ["", f"{key}, timeline: 0 s start; {timeline}; {run['wall_seconds']:.1f} s exit."]
                if run.get("attempts"):
                    parts = [f"{policy}: build {_num(t.get('build_seconds'))} s, warm-up "
                             f"{_num(t.get('warmup_seconds'))} s, fastest pass {_num(t.get('seconds'))} s of "
                             f"{t.get('passes')}" for policy, t in run["attempts"].items() if t]
                    lines += ["", f"{key}, per attempt (from its report.json): " + "; ".join(parts) + "."]
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------------


def optional_policy(name: str) -> Policy | None:
    try:
        return get_policy(name)
    except Fp16GuardError:
        return None


def cli_has_reference_options() -> bool:
    """Whether `fp16guard validate esm2` takes --save-reference and --reference."""
    import typer.main

    from fp16guard_cli.main import app

    command = typer.main.get_command(app).commands["validate"].commands["esm2"]
    options = {option for parameter in command.params for option in parameter.opts}
    return {"--save-reference", "--reference"} <= options


def describe_environment(device: torch.device) -> dict:
    env = environment(device)
    env["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    try:
        env["fp16guard"] = metadata.version("fp16guard")
    except metadata.PackageNotFoundError:
        env["fp16guard"] = None
    env["driver"] = None
    if device.type == "cuda":
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"]
            env["driver"] = subprocess.run(query, check=False, capture_output=True, text=True,
                                           timeout=20).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return env


def write_results(out: Path, results: dict) -> None:
    results["targets"] = evaluate_targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(render_markdown(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for results.json, results.md and "
                                                                "the validate reports")
    parser.add_argument("--arch", nargs="+", choices=list(ARCHS), help="architectures (default: 650M 3B dnabert; with "
                                                                       "--quick: tiny dnabert-tiny)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and matmul: checks every code path, "
                                                             "measures nothing useful")
    parser.add_argument("--no-validate", nargs="*", metavar="ARCH", help="skip the validate runs (of these "
                                                                         "architectures; all if none named)")
    parser.add_argument("--tmp", type=Path, help="where to write the checkpoints (default: the system's "
                                                 "temporary directory)")
    args = parser.parse_args()
    args.arch = args.arch or (["tiny", "dnabert-tiny"] if args.quick else ["650M", "3B", "dnabert"])
    skipped = set(args.arch) if args.no_validate == [] else set(args.no_validate or ())
    args.validate = [a for a in args.arch if a not in skipped]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device is visible to PyTorch (use --device cpu with --quick)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    sdpa = optional_policy(SDPA)
    policies: dict[str, Policy | None] = {p.name: p for p in (FP32, FP16, FP16_LN32, FP16_POS32, FP16_RES32)}
    policies[SDPA] = sdpa
    reference_cli = cli_has_reference_options()
    env = describe_environment(device)
    log(f"{env['device_name']}, torch {env['torch']}; {SDPA} {'available' if sdpa else 'not available'}; "
        f"--reference {'available' if reference_cli else 'not available'}")

    n, iterations, repeats = (256, 5, 3) if args.quick else (8192, 20, 5)
    matmul = matmul_rate(device, n, iterations, repeats)
    log(f"dense FP16 matmul {n}^3: {matmul['flops'] / 1e12:,.3g} TFLOP/s")
    note = ("--quick: tiny shapes on a tiny model; the numbers only show that every code path runs" if args.quick
            else "Random weights at the real sizes: the same shapes, hence the same kernels, as the trained models.")
    results = {
        "schema": 1,
        "environment": env,
        "settings": {"quick": args.quick, "architectures": args.arch, "validate": args.validate,
                     "min_timed_seconds": MIN_TIMED_SECONDS,
                     "max_repeats": MAX_REPEATS, "validate_max_tokens": VALIDATE_MAX_TOKENS, "note": note,
                     "available": {SDPA: sdpa is not None, "--reference": reference_cli}},
        "matmul": matmul,
        "architectures": {},
    }
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for name in args.arch:
            arch_dir = Path(tmp) / name
            arch_dir.mkdir()
            results["architectures"][name] = bench_arch(name, args, device, policies, matmul["flops"], reference_cli,
                                                        arch_dir)
            write_results(args.out, results)  # after each architecture, so a cut-off run keeps what it measured
    results["settings"]["wall_seconds"] = time.perf_counter() - _START
    write_results(args.out, results)
    log(f"done: {args.out / 'results.md'}")
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
