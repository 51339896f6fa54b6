"""`fp16guard embed` end to end against the loops users write (issue "fp16guard embed"), and
on two GPUs against one (issue "embed on two GPUs").

Random weights at the real sizes (speed and memory only; the spot checks still run), a protein
set of realistic lengths (log-normal, median 330, 30 to 1022 residues), and a policy file with a
validation record for those weights. Steps (--steps, default all but scale):

- ``embed``: ``fp16guard embed esm2 --policy policy.json --compile off`` as a subprocess, end to
  end (start-up, reading, tokenising, embedding, spot checks at the default rate, shards,
  merge); its summary gives the embedding seconds, the spot checks' share of them and the time
  to the first batch;
- ``embed-compiled``: the same with ``--compile on`` (compilation included in the wall time);
- ``bare``: fair-esm ``.half()`` over length-sorted batches of the same token budget, mean
  pooling, results to the host (no file), on the first --bare-sequences proteins (a sample of
  the same length distribution; its rate stands for the whole set);
- ``fp32``: the ``esm-extract``-style loop, fair-esm FP32, batches of 4096 tokens, one ``.pt``
  file per sequence, on the first --fp32-sequences proteins, its rate standing for the set;
- ``rss``: peak RSS of ``embed`` on --rss-small and --rss-large short proteins (--rss-arch);
- ``scale`` (two GPUs): ``embed`` on one GPU, ``embed --gpus 2``, outputs compared; then a
  ``--gpus 2`` run with one rank SIGKILLed after --kill-after seconds, rerun to completion and
  compared with the uninterrupted output;
- ``repeat`` (one GPU): ``embed`` twice, outputs compared (run-to-run identity, which the
  two-GPU identity rests on: both split the same packs), then one run SIGKILLed after
  --kill-after seconds, resumed and compared with the first.

    python bench/embed.py --out results-embed/ --arch 650M --sequences 100000
    CUDA_VISIBLE_DEVICES=1 python bench/embed.py --out results-b/ --steps bare fp32 rss
    python bench/embed.py --combine results-embed/ results-b/ --out results/   # ratios of both
    python bench/embed.py --out quick/ --quick --device cpu       # code paths only

Every step adds to results.json in --out as it finishes; results.md holds the ratios. Progress
goes to stderr. No speed claim is made from a CPU run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import run_cli, write_proteins, write_weights

from fp16guard.core.config import ModelSource
from fp16guard.execution.batching import make_batches
from fp16guard.models.esm2 import TARGET
from fp16guard.numerics.policy import get_policy
from fp16guard.report.writer import POLICY_FILE_VERSION


def log(message: str) -> None:
    print(f"[embed bench] {message}", file=sys.stderr, flush=True)


def write_policy(path: Path, weights: Path, policy: str) -> Path:
    """A policy file as --save-policy writes it, validated (by assumption) on ``weights``."""
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    document = {"fp16guard_policy": POLICY_FILE_VERSION, "policy": get_policy(policy).to_dict(), "fp32_modules": [],
                "validated": {"weights_sha256": digest, "threshold": 0.99, "model": weights.stem}}
    path.write_text(json.dumps(document, indent=2))
    return path


def run_embed(cli: list[str], fasta: Path, out: Path, policy: Path, device: str, extra: list[str], logs: Path,
              keep: bool = False, name: str | None = None) -> dict:
    """One ``fp16guard embed`` run: wall seconds and the summary's figures. Without ``keep``
    an earlier output at ``out`` is removed first (with it, a run's parts are resumed)."""
    if not keep:
        out.unlink(missing_ok=True)
    run = run_cli(["embed", *cli, "-s", str(fasta), "-o", str(out), "--policy", str(policy), "--device", device,
                   *extra],
                  log=logs / f"{name or out.stem}.log")
    if run.returncode != 0:
        raise SystemExit(f"embed failed ({run.returncode}):\n{run.output[-3000:]}")
    found = re.search(r"(\d+) tokens embedded by this run in ([\d.]+) s", run.output)
    spot = re.search(r"spot checks against FP32: (\d+) sequence\(s\), min cosine ([\d.]+)", run.output)
    loading = run.first("loading")
    tokens = int(found.group(1)) if found else None
    figures = summary_figures(run.output)
    return {
        "wall_seconds": run.seconds, "tokens": tokens, "embedding_seconds": float(found.group(2)) if found else None,
        "tokens_per_second_end_to_end": tokens / run.seconds if tokens else None,
        "spot_checks": int(spot.group(1)) if spot else 0, "spot_min_cosine": float(spot.group(2)) if spot else None,
        "seconds_to_loading": run.lines[loading][0] if loading is not None else None,
        **figures,
        "seconds_to_first_batch": (run.lines[loading][0] + figures["first_batch_seconds"])
        if loading is not None and figures["first_batch_seconds"] is not None else None,
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
    alphabet = loaded.encoding.alphabet
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
    return {"seconds": seconds, "tokens": tokens, "sequences": len(texts), "tokens_per_second": tokens / seconds}


def fp32_extract(weights: Path, texts: list[str], device: torch.device, toks_per_batch: int = 4096) -> dict:
    """esm-extract's loop: FP32, batches of about ``toks_per_batch`` tokens in file order
    (fair-esm's FastaBatchedDataset sorts by length), one .pt file per sequence."""
    loaded = TARGET.load(ModelSource(weights=weights))
    model = loaded.module.to(device).eval()
    alphabet = loaded.encoding.alphabet
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
                    result = {"label": label,
                              "mean_representations": {layer: representation[row, 1 : len(text) + 1].mean(0).clone()}}
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


STEPS = ("embed", "embed-compiled", "bare", "fp32", "rss", "scale", "repeat")


def summary_figures(output: str) -> dict:
    """The figures of an embed summary: spot-check seconds and the first batch's time."""
    spot = re.search(r"of the embedding time", output)
    spot_seconds = re.search(r"([\d.]+) s = [\d.]+% of the embedding time", output)
    first = re.search(r"the first batch done ([\d.]+) s after start-up began", output)
    compiled = re.search(r"execution: (.*)", output)
    return {
        "spot_seconds": float(spot_seconds.group(1)) if spot and spot_seconds else None,
        "first_batch_seconds": float(first.group(1)) if first else None,
        "execution": compiled.group(1).strip() if compiled else None,
    }


def compare_outputs(a: Path, b: Path) -> dict:
    """Whether two embeddings files hold the same ids and embeddings (read with plain h5py)."""
    import h5py
    import numpy as np

    with h5py.File(a, "r") as left, h5py.File(b, "r") as right:
        same_ids = bool((left["ids"][:] == right["ids"][:]).all())
        x, y = left["embeddings"][:], right["embeddings"][:]
    return {"same_ids": same_ids, "identical_embeddings": bool(np.array_equal(x, y)),
            "max_abs_difference": float(np.abs(x - y).max())}


def embed_with_kill(cli: list[str], fasta: Path, out: Path, policy: Path, extra: list[str], after: float, logs: Path,
                    gpus: int = 2, device: str = "cuda") -> dict:
    """``embed --gpus N``; after ``after`` seconds one worker (with N > 1 a child of the
    launcher; with N = 1 the process itself) is SIGKILLed. Returns the exit code, the shards
    left, and the rerun's figures."""
    import os
    import signal

    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "fp16guard_cli", "embed", *cli, "-s", str(fasta), "-o", str(out),
               "--policy", str(policy),
               "--device", device, "--gpus", str(gpus), *extra]
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "killed.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(after)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        victim = int(children[-1]) if children else proc.pid
        os.kill(victim, signal.SIGKILL)
        code = proc.wait(timeout=300)
    parts = out.with_name(out.name + ".parts")
    shards = len(list(parts.glob("shard-*.h5"))) if parts.is_dir() else 0
    rerun = run_embed(cli, fasta, out, policy, device, ["--gpus", str(gpus), *extra], logs, keep=True, name="resumed")
    return {"killed_exit_code": code, "shards_left": shards, "rerun": rerun}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", default="650M")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sequences", type=int, default=100_000)
    parser.add_argument("--policy", default="fp16+packed")
    parser.add_argument("--max-tokens", type=int, default=16_384)
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=[s for s in STEPS if s != "scale"])
    parser.add_argument("--bare-sequences", type=int, default=20_000)
    parser.add_argument("--fp32-sequences", type=int, default=3_000)
    parser.add_argument("--rss-arch", default="8M")
    parser.add_argument("--rss-small", type=int, default=10_000)
    parser.add_argument("--rss-large", type=int, default=1_000_000)
    parser.add_argument("--kill-after", type=float, default=40.0, help="scale, repeat: seconds "
                                                                       "before one rank is killed")
    parser.add_argument("--chunk-size", type=int, help="embed's --chunk-size (default: embed's own)")
    parser.add_argument("--scale-compile", default="auto", choices=["auto", "on", "off"], help="scale, repeat: "
                                                                                               "embed's --compile in "
                                                                                               "every run")
    parser.add_argument("--combine", type=Path, nargs="+", help="merge the results.json of these directories "
                                                                "and compute the ratios")
    parser.add_argument("--quick", action="store_true", help="tiny model, few sequences: the code paths only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.combine:
        results: dict = {}
        for directory in args.combine:
            part = json.loads((directory / "results.json").read_text())
            results.update({k: v for k, v in part.items() if k != "ratios"})
        write_results(args.out, results)
        return
    if args.quick:
        args.arch, args.sequences, args.fp32_sequences, args.bare_sequences = "tiny", 120, 40, 60
        args.rss_arch, args.rss_small, args.rss_large, args.max_tokens = "tiny", 200, 800, 2048
    device = torch.device(args.device)
    results = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "environment": {"torch": torch.__version__, "device": str(device),
                               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                               "gpus": torch.cuda.device_count() if device.type == "cuda" else 0}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        log(f"writing {args.arch} weights and {args.sequences} proteins")
        cli = write_weights("fair-esm", args.arch, tmp / "model.pt")
        weights = Path(cli[-1])
        fasta = write_proteins(tmp / "set.fasta", args.sequences)
        policy = write_policy(tmp / "policy.json", weights, args.policy)
        common = ["--max-tokens", str(args.max_tokens),
                  *(["--chunk-size", str(args.chunk_size)] if args.chunk_size else [])]
        logs = args.out / "logs"
        texts = read_records(fasta)
        results["set"] = {"sequences": len(texts), "residues": sum(map(len, texts))}
        for step in args.steps:
            log(f"step {step}")
            if step == "embed":
                results["embed"] = run_embed(cli, fasta, tmp / "embed.h5", policy, args.device,
                                             [*common, "--compile", "off"], logs)
            elif step == "embed-compiled":
                results["embed-compiled"] = run_embed(cli, fasta, tmp / "embed-compiled.h5", policy, args.device,
                                                      [*common, "--compile", "on"], logs)
            elif step == "bare":
                results["bare-fp16"] = bare_fp16(weights, texts[: args.bare_sequences], device, args.max_tokens)
            elif step == "fp32":
                results["fp32-extract"] = fp32_extract(weights, texts[: args.fp32_sequences], device)
            elif step == "rss":
                rss_cli = write_weights("fair-esm", args.rss_arch, tmp / "rss-model.pt")
                rss_policy = write_policy(tmp / "rss-policy.json", Path(rss_cli[-1]), args.policy)
                rss = {"arch": args.rss_arch}
                for count in (args.rss_small, args.rss_large):
                    log(f"peak RSS on {count} short proteins")
                    small = write_proteins(tmp / f"rss{count}.fasta", count, seed=1, fixed=50)
                    command = [sys.executable, "-m", "fp16guard_cli", "embed", *rss_cli, "-s", str(small), "-o",
                               str(tmp / f"rss{count}.h5"), "--policy", str(rss_policy), "--device", args.device,
                               *common]
                    rss[str(count)] = peak_rss(command)
                results["rss"] = {**rss, "ratio": rss[str(args.rss_large)] / rss[str(args.rss_small)]}
            elif step == "scale":
                common = [*common, "--compile", args.scale_compile]
                one = run_embed(cli, fasta, tmp / "one.h5", policy, "cuda", common, logs, keep=True, name="one-gpu")
                two = run_embed(cli, fasta, tmp / "two.h5", policy, "cuda", ["--gpus", "2", *common], logs, keep=True,
                                name="two-gpus")
                killed = embed_with_kill(cli, fasta, tmp / "killed.h5", policy, common, args.kill_after, logs)
                results["scale"] = {
                    "one-gpu": one, "two-gpus": two, "speedup": one["wall_seconds"] / two["wall_seconds"],
                    "two_vs_one": compare_outputs(tmp / "one.h5", tmp / "two.h5"),
                    "killed": killed, "resumed_vs_one": compare_outputs(tmp / "one.h5", tmp / "killed.h5"),
                }
            elif step == "repeat":
                common = [*common, "--compile", args.scale_compile]
                first = run_embed(cli, fasta, tmp / "first.h5", policy, args.device, common, logs, keep=True,
                                  name="first")
                second = run_embed(cli, fasta, tmp / "second.h5", policy, args.device, common, logs, keep=True,
                                   name="second")
                killed = embed_with_kill(cli, fasta, tmp / "killed.h5", policy, common, args.kill_after, logs, gpus=1,
                                         device=args.device)
                results["repeat"] = {
                    "first": first, "second": second,
                    "second_vs_first": compare_outputs(tmp / "first.h5", tmp / "second.h5"),
                    "killed": killed, "resumed_vs_first": compare_outputs(tmp / "first.h5", tmp / "killed.h5"),
                }
            write_results(args.out, results)
    log(f"wrote {args.out / 'results.json'} and results.md")


def write_results(out: Path, results: dict) -> None:
    """results.json (everything, with the ratios that the figures present allow) and results.md."""
    ratios: dict = {}
    embed_rate = lambda run: run["tokens"] / run["wall_seconds"] if run.get("tokens") else None  # noqa: E731
    runs = {name: results[name] for name in ("embed", "embed-compiled") if name in results}
    for name, run in runs.items():
        rate = embed_rate(run)
        if "bare-fp16" in results and rate:
            ratios[f"{name}_vs_bare_fp16"] = rate / results["bare-fp16"]["tokens_per_second"]
        if "fp32-extract" in results and rate:
            ratios[f"{name}_vs_fp32_extract"] = rate / results["fp32-extract"]["tokens_per_second"]
        if run.get("spot_seconds") is not None:
            ratios[f"{name}_spot_check_share_of_wall"] = run["spot_seconds"] / run["wall_seconds"]
    if "scale" in results:
        ratios["two_gpus_vs_one"] = results["scale"]["speedup"]
    results["ratios"] = ratios
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    environment = results.get("environment", {})
    lines = [f"# fp16guard embed: {results.get('settings', {}).get('arch')}, "
             f"{results.get('set', {}).get('sequences')} proteins, "
             f"{environment.get('device_name')}, torch {environment.get('torch')}", "",
             "| run | wall s | tokens/s end to end |", "|---|---|---|"]
    for name, run in runs.items():
        lines.append(f"| {name} ({run.get('execution')}) | {run['wall_seconds']:.1f} | {embed_rate(run) or 0:,.0f} |")
    for name in ("bare-fp16", "fp32-extract"):
        if name in results:
            lines.append(f"| {name} (loop only, {results[name].get('sequences', '')} seqs) | "
                         f"{results[name]['seconds']:.1f} | "
                         f"{results[name]['tokens_per_second']:,.0f} |")
    lines += [""] + [f"- {key}: {value:.3f}" for key, value in ratios.items()]
    if "rss" in results:
        rss = results["rss"]
        lines.append(f"- peak RSS ({rss['arch']}) "
                     f"{', '.join(f'{k}: {v / 2**20:.0f} MiB' for k, v in rss.items() if k.isdigit())}: "
                     f"{rss['ratio']:.2f}x")
    if "scale" in results:
        scale = results["scale"]
        lines.append(f"- two GPUs vs one: {scale['speedup']:.2f}x wall; outputs {scale['two_vs_one']}")
        lines.append(f"- killed rank: exit {scale['killed']['killed_exit_code']}, {scale['killed']['shards_left']} "
                     f"shard(s) left; resumed output vs one GPU: {scale['resumed_vs_one']}")
    if "repeat" in results:
        repeat = results["repeat"]
        lines.append(f"- one GPU, run twice: outputs {repeat['second_vs_first']}")
        lines.append(f"- killed run: exit {repeat['killed']['killed_exit_code']}, {repeat['killed']['shards_left']} "
                     f"shard(s) left; resumed output vs the first run: {repeat['resumed_vs_first']}")
    if environment.get("device") == "cpu":
        lines += ["", "CPU run: code paths only, no speed claim."]
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
