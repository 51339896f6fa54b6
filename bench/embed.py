"""`fp16guard embed` end to end against the loops users write, for the targets of issue 14.

Random weights at the real sizes (speed and memory only; the spot checks still run), a protein
set of realistic lengths (log-normal, median 330, 30 to 1022 residues), and a policy file with a
validation record for those weights:

1. ``embed``: ``fp16guard embed esm2 --policy policy.json`` as a subprocess, end to end (reading,
   tokenising, embedding, spot checks at the default rate, shards, merge), wall time and the
   tokens/s its summary reports;
2. ``embed-min-spot``: the same with spot checks on the first 3 sequences only: the difference
   is what the default spot-check rate costs;
3. ``bare-fp16``: fair-esm ``.half()`` over the same length-sorted batches (token budget
   --max-tokens), mean pooling, results kept on the host (no file written);
4. ``fp32-extract``: the ``esm-extract``-style loop, fair-esm FP32, its batch converter, batches
   of 4096 tokens, one ``.pt`` file per sequence, on the first --fp32-sequences sequences, its
   rate extrapolated to the whole set;
5. with --rss: peak RSS of ``embed`` on --rss-small and --rss-large short proteins (flat memory).

    python bench/embed.py --out results-embed/ --arch 650M --sequences 100000 --rss
    python bench/embed.py --out quick/ --quick --device cpu       # code paths only

writes results.json and results.md to --out; progress goes to stderr. No speed claim is made
from a CPU run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import run_cli, write_weights

from fp16guard.policy import get_policy
from fp16guard.report import POLICY_FILE_VERSION
from fp16guard.sequences import make_batches
from fp16guard.targets.base import ModelSource
from fp16guard.targets.esm2 import TARGET

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def log(message: str) -> None:
    print(f"[embed bench] {message}", file=sys.stderr, flush=True)


def write_fasta(path: Path, count: int, seed: int = 0, median: int = 330, fixed: int | None = None) -> Path:
    """``count`` proteins of log-normal lengths (or all ``fixed`` long), written streaming."""
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for i in range(count):
            length = fixed or min(1022, max(30, round(rng.lognormvariate(math.log(median), 0.55))))
            handle.write(f">p{i}\n{''.join(rng.choices(RESIDUES, k=length))}\n")
    return path


def write_policy(path: Path, weights: Path, policy: str) -> Path:
    """A policy file as --save-policy writes it, validated (by assumption) on ``weights``."""
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    document = {"fp16guard_policy": POLICY_FILE_VERSION, "policy": get_policy(policy).to_dict(), "fp32_modules": [],
                "validated": {"weights_sha256": digest, "threshold": 0.99, "model": weights.stem}}
    path.write_text(json.dumps(document, indent=2))
    return path


def run_embed(cli: list[str], fasta: Path, out: Path, policy: Path, device: str, extra: list[str], logs: Path) -> dict:
    """One ``fp16guard embed`` run: wall seconds and the summary's figures."""
    out.unlink(missing_ok=True)
    run = run_cli(["embed", *cli, "-s", str(fasta), "-o", str(out), "--policy", str(policy), "--device", device, *extra],
                  log=logs / f"{out.stem}.log")
    if run.returncode != 0:
        raise SystemExit(f"embed failed ({run.returncode}):\n{run.output[-3000:]}")
    found = re.search(r"(\d+) tokens embedded by this run in ([\d.]+) s", run.output)
    spot = re.search(r"spot checks against FP32: (\d+) sequence\(s\), min cosine ([\d.]+)", run.output)
    tokens = int(found.group(1)) if found else None
    return {
        "wall_seconds": run.seconds, "tokens": tokens, "embedding_seconds": float(found.group(2)) if found else None,
        "tokens_per_second_end_to_end": tokens / run.seconds if tokens else None,
        "spot_checks": int(spot.group(1)) if spot else 0, "spot_min_cosine": float(spot.group(2)) if spot else None,
    }


def read_records(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line and not line.startswith(">")]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_fp16(weights: Path, texts: list[str], device: torch.device, max_tokens: int) -> dict:
    """fair-esm .half() over length-sorted batches, mean pooling over residues, to the host."""
    loaded = TARGET.load(ModelSource(weights=weights))
    model = loaded.module.half().to(device).eval()
    alphabet = loaded.extra["alphabet"]
    converter = alphabet.get_batch_converter()
    layer = loaded.num_layers
    plans = make_batches([len(t) for t in texts], max_tokens, 2)
    sync(device)
    start = time.perf_counter()
    tokens = 0
    with torch.inference_mode():
        for plan in plans:
            _, _, toks = converter([(str(i), texts[i]) for i in plan.indices])
            toks = toks.to(device)
            hidden = model(toks, repr_layers=[layer])["representations"][layer]
            mask = (toks != alphabet.padding_idx) & (toks != alphabet.cls_idx) & (toks != alphabet.eos_idx)
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            pooled.float().cpu()
            tokens += int((toks != alphabet.padding_idx).sum())
    sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds}


def fp32_extract(weights: Path, texts: list[str], device: torch.device, toks_per_batch: int = 4096) -> dict:
    """esm-extract's loop: FP32, batches of about ``toks_per_batch`` tokens in file order
    (fair-esm's FastaBatchedDataset sorts by length), one .pt file per sequence."""
    loaded = TARGET.load(ModelSource(weights=weights))
    model = loaded.module.to(device).eval()
    alphabet = loaded.extra["alphabet"]
    converter = alphabet.get_batch_converter()
    layer = loaded.num_layers
    plans = make_batches([len(t) for t in texts], toks_per_batch, 2)
    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        start = time.perf_counter()
        tokens = 0
        with torch.no_grad():
            for plan in plans:
                labels, strs, toks = converter([(f"p{i}", texts[i]) for i in plan.indices])
                toks = toks.to(device)
                representation = model(toks, repr_layers=[layer])["representations"][layer].to("cpu")
                for row, (label, text) in enumerate(zip(labels, strs)):
                    result = {"label": label, "mean_representations": {layer: representation[row, 1 : len(text) + 1].mean(0).clone()}}
                    torch.save(result, Path(tmp) / f"{label}.pt")
                tokens += sum(len(s) + 2 for s in strs)
        sync(device)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "sequences": len(texts), "tokens_per_second": tokens / seconds}


def peak_rss(command: list[str]) -> int:
    """Peak resident set size (bytes) of ``command`` run in a fresh wrapper process."""
    wrapper = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"rss run failed:\n{done.stderr[-3000:]}")
    return int(done.stdout.strip().splitlines()[-1]) * 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", default="650M")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sequences", type=int, default=100_000)
    parser.add_argument("--policy", default="fp16+packed")
    parser.add_argument("--max-tokens", type=int, default=16_384)
    parser.add_argument("--fp32-sequences", type=int, default=5_000)
    parser.add_argument("--rss", action="store_true")
    parser.add_argument("--rss-small", type=int, default=10_000)
    parser.add_argument("--rss-large", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="tiny model, few sequences: the code paths only")
    args = parser.parse_args()
    if args.quick:
        args.arch, args.sequences, args.fp32_sequences = "tiny", 120, 40
        args.rss_small, args.rss_large, args.max_tokens = 200, 800, 2048
        if args.device == "cpu" and args.policy == "fp16+packed":
            args.policy = "fp16"  # the packed kernel is CUDA-only in most torch builds
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    results: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "environment": {"torch": torch.__version__, "device": str(device),
                                     "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        log(f"writing {args.arch} weights and {args.sequences} proteins")
        cli = write_weights("fair-esm", args.arch, tmp / "model.pt")
        weights = Path(cli[-1])
        fasta = write_fasta(tmp / "set.fasta", args.sequences)
        policy = write_policy(tmp / "policy.json", weights, args.policy)
        common = ["--max-tokens", str(args.max_tokens)]
        logs = args.out / "logs"
        log("embed, default spot checks")
        results["embed"] = run_embed(cli, fasta, tmp / "embed.h5", policy, args.device, common, logs)
        log("embed, the first 3 spot checks only")
        results["embed-min-spot"] = run_embed(cli, fasta, tmp / "embed-min.h5", policy, args.device,
                                              [*common, "--spot-check-every", str(10**12)], logs)
        texts = read_records(fasta)
        log("bare fair-esm FP16")
        results["bare-fp16"] = bare_fp16(weights, texts, device, args.max_tokens)
        log(f"esm-extract-style FP32 on {args.fp32_sequences} sequences")
        results["fp32-extract"] = fp32_extract(weights, texts[: args.fp32_sequences], device)
        if args.rss:
            rss = {}
            for count in (args.rss_small, args.rss_large):
                log(f"peak RSS on {count} short proteins")
                small = write_fasta(tmp / f"rss{count}.fasta", count, seed=1, fixed=50)
                command = [sys.executable, "-m", "fp16guard_cli", "embed", *cli, "-s", str(small), "-o", str(tmp / f"rss{count}.h5"),
                           "--policy", str(policy), "--device", args.device, *common]
                rss[str(count)] = peak_rss(command)
            results["rss"] = {**rss, "ratio": rss[str(args.rss_large)] / rss[str(args.rss_small)]}
    embed_rate = results["embed"]["tokens_per_second_end_to_end"]
    results["ratios"] = {
        "embed_vs_bare_fp16": embed_rate / results["bare-fp16"]["tokens_per_second"],
        "embed_vs_fp32_extract": embed_rate / results["fp32-extract"]["tokens_per_second"],
        "spot_check_cost": 1 - results["embed-min-spot"]["wall_seconds"] / results["embed"]["wall_seconds"],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# fp16guard embed: {args.arch}, {args.sequences} proteins, {results['environment']['device_name']}", "",
             "| run | tokens/s |", "|---|---|",
             f"| embed end to end | {embed_rate:,.0f} |",
             f"| bare fair-esm FP16 (embedding only) | {results['bare-fp16']['tokens_per_second']:,.0f} |",
             f"| esm-extract-style FP32 | {results['fp32-extract']['tokens_per_second']:,.0f} |", ""]
    lines += [f"- {key}: {value:.3f}" for key, value in results["ratios"].items()]
    if "rss" in results:
        lines.append(f"- peak RSS {args.rss_large} vs {args.rss_small} proteins: {results['rss']['ratio']:.2f}x")
    if device.type != "cuda":
        lines += ["", "CPU run: code paths only, no speed claim."]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {args.out / 'results.json'} and results.md")


if __name__ == "__main__":
    main()
