"""Data-parallel scaling of `fp16guard validate esm2`: one GPU against N GPUs, same data.

Builds a deterministic set of protein sequences (lengths drawn log-normally around 350
residues, clipped to 50-1000; residues at UniProt background frequencies), writes a
random-weight ESM-2 checkpoint of the chosen architecture, runs the real CLI on one GPU and with
--gpus N (NCCL), and checks that both reports agree sequence by sequence. With
--big-arch, it also validates a larger architecture with the FP32 reference spread over the
GPUs (--reference-device map, needs accelerate). With --startup-repeats K, it also times
how long one process, --gpus N and plain torchrun take to reach the first stage, K times each.

    python bench/scaling.py --out results-scaling/ --sequences 7000 --gpus 2 --startup-repeats 3
    python bench/scaling.py --out results-scaling/ --sequences 4000 --gpus 2 --big-arch 3B

writes the FASTA, each run's report directory and log, summary.json and summary.md under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fp16guard.testing import ARCHITECTURES, write_checkpoint

# UniProtKB/Swiss-Prot amino-acid composition (percent), rounded.
FREQUENCIES = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75, "G": 7.07, "H": 2.27, "I": 5.96,
    "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70, "S": 6.56, "T": 5.34, "W": 1.08, "Y": 2.92, "V": 6.87,
}
VOLATILE = {"timing", "speedup_vs_fp32", "memory_ratio_vs_fp32", "peak_memory_bytes", "placement", "ranks", "notes"}


def protein_set(path: Path, count: int, seed: int = 0) -> dict:
    """Write ``count`` sequences to ``path``; returns their length statistics."""
    rng = random.Random(seed)
    letters, weights = zip(*FREQUENCIES.items())
    lengths = [min(1000, max(50, round(rng.lognormvariate(math.log(350), 0.6)))) for _ in range(count)]
    with path.open("w") as handle:
        for i, n in enumerate(lengths):
            handle.write(f">seq{i:05d} length={n}\n{''.join(rng.choices(letters, weights, k=n))}\n")
    ordered = sorted(lengths)
    return {"sequences": count, "residues": sum(lengths), "min": ordered[0], "median": ordered[count // 2],
            "max": ordered[-1]}


def run(command: list[str], log: Path, first: str | None = None) -> tuple[int, float]:
    """Run ``command``; returns its exit code and wall time, with its output in ``log``, each
    line stamped with the seconds since the start (where the fixed costs go). With ``first``,
    the time returned is instead when the first line containing ``first`` appeared (None if
    none did)."""
    start = time.perf_counter()
    lines = []
    seen = None
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - start
            if first and seen is None and first in line:
                seen = now
            lines.append(f"[{now:7.1f} s] {line.rstrip()}")
        code = proc.wait()
    wall = time.perf_counter() - start
    log.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-40:]), file=sys.stderr)
    return code, (seen if first else wall)


def startup(args, cli: list[str], weights: Path, summary: dict) -> None:
    """The fixed cost of starting N processes: seconds until the first stage ("loading") on
    one process, with --gpus N, and under torchrun, on a small set; runs interleaved and
    repeated, since one start-up is a few seconds on a shared host."""
    fasta = args.out / "sequences-startup.fasta"
    protein_set(fasta, args.startup_sequences, seed=2)
    common = ["--weights", str(weights), "-s", str(fasta), "--device", args.device, "--max-tokens", args.max_tokens,
              "--no-fallback"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.gpus),
                "-m", "fp16guard_cli", *cli[3:]]
    variants = {"1 process": [*cli, *common], f"--gpus {args.gpus}": [*cli, *common, "--gpus", str(args.gpus)],
                f"torchrun x{args.gpus}": [*torchrun, *common]}
    seconds: dict[str, list[float | None]] = {name: [] for name in variants}
    logs = args.out / "startup"
    logs.mkdir(parents=True, exist_ok=True)
    for repeat in range(args.startup_repeats):
        for name, command in variants.items():
            out = logs / f"{name.replace(' ', '').replace('-', '')}-{repeat}"
            code, first = run([*command, "-o", str(out)], out.with_suffix(".log"), first="loading")
            seconds[name].append(first if code == 0 else None)
    summary["startup"] = {"sequences": args.startup_sequences, "seconds_to_first_stage": seconds}


def agreement(one: dict, many: dict) -> dict:
    """Per-sequence agreement of two reports' attempts, and whether all else matches."""
    worst = 0.0
    identical = True
    for a, b in zip(one["attempts"], many["attempts"]):
        ca = (a.get("metrics") or {}).get("cosines") or []
        cb = (b.get("metrics") or {}).get("cosines") or []
        if len(ca) != len(cb):
            return {"same_attempts": False}
        for x, y in zip(ca, cb):
            if x != y:
                identical = False
                worst = max(worst, abs((x or 0.0) - (y or 0.0)))
    def strip(report: dict) -> list[dict]:
        return [{k: v for k, v in a.items() if k not in VOLATILE} for a in report["attempts"]]

    return {
        "same_attempts": [a["policy"]["name"] for a in one["attempts"]]
        == [a["policy"]["name"] for a in many["attempts"]],
        "same_verdict": (one["passed"], one["passing_policy"]) == (many["passed"], many["passing_policy"]),
        "per_sequence_cosines_identical": identical,
        "largest_cosine_difference": worst,
        "attempts_identical_but_timing": strip(one) == strip(many),
    }


def embedding_seconds(report: dict) -> float:
    """Time spent embedding (every attempt's timed pass; the slowest rank in a distributed run)."""
    return sum(a["timing"]["seconds"] or 0.0 for a in report["attempts"])



def _devices(report: dict | None) -> list[str] | None:
    """The device name of every rank of a run's report (None when the run wrote none)."""
    if not report:
        return None
    return [x["device_name"] for x in report["environment"].get("ranks", [report["environment"]])]

def scaling(args, cli: list[str], tmp: Path, summary: dict) -> None:
    """One GPU against --gpus N on the same sequences; fills ``summary``."""
    fasta = args.out / "sequences.fasta"
    summary["dataset"] = protein_set(fasta, args.sequences)
    layers, dim, heads = ARCHITECTURES[args.arch]
    start = time.perf_counter()
    weights = write_checkpoint(tmp / f"esm2_{args.arch}.pt", layers=layers, dim=dim, heads=heads)
    summary["checkpoint_seconds"] = time.perf_counter() - start
    common = ["--weights", str(weights), "-s", str(fasta), "--device", args.device, "--max-tokens", args.max_tokens]
    runs = {}
    for name, extra in (("1gpu", []), (f"{args.gpus}gpu", ["--gpus", str(args.gpus)])):
        code, wall = run([*cli, *common, "-o", str(args.out / name), *extra], args.out / f"{name}.log")
        path = args.out / name / "report.json"
        report = json.loads(path.read_text()) if path.is_file() else None
        runs[name] = {"exit_code": code, "wall_seconds": wall, "report": report}
    one, many = runs["1gpu"], runs[f"{args.gpus}gpu"]
    summary["runs"] = {
        name: {
            "exit_code": r["exit_code"],
            "wall_seconds": r["wall_seconds"],
            "embedding_seconds": embedding_seconds(r["report"]) if r["report"] else None,
            "passing_policy": r["report"]["passing_policy"] if r["report"] else None,
            "devices": _devices(r["report"]),
            "attempts": [
                {"policy": a["policy"]["name"], "seconds": a["timing"]["seconds"],
                 "tokens_per_second": a["timing"]["tokens_per_second"],
                 "peak_memory_bytes": a["peak_memory_bytes"], "ranks": a.get("ranks")}
                for a in r["report"]["attempts"]
            ] if r["report"] else None,
        }
        for name, r in runs.items()
    }
    if one["report"] and many["report"]:
        summary["agreement"] = agreement(one["report"], many["report"])
        speedup = one["wall_seconds"] / many["wall_seconds"]
        embed = embedding_seconds(one["report"]) / embedding_seconds(many["report"])
        summary["scaling"] = {
            "wall_speedup": speedup, "wall_efficiency": speedup / args.gpus,
            "embedding_speedup": embed, "embedding_efficiency": embed / args.gpus,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", default="650M", choices=sorted(ARCHITECTURES))
    parser.add_argument("--sequences", type=int, default=10000)
    parser.add_argument("--no-scaling", action="store_true", help="only the --big-arch run")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--max-tokens", default="16384")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of the script (gloo)")
    parser.add_argument("--big-arch", choices=sorted(ARCHITECTURES), help="also run this architecture with the FP32 "
                                                                          "reference spread over the GPUs")
    parser.add_argument("--big-sequences", type=int, default=400)
    parser.add_argument("--startup-repeats", type=int, default=0, help="also time the start-up of 1 process, --gpus N "
                                                                       "and torchrun, this many times each")
    parser.add_argument("--startup-sequences", type=int, default=100)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"arch": args.arch, "gpus": args.gpus, "max_tokens": int(args.max_tokens), "runs": {}}
    cli = [sys.executable, "-m", "fp16guard_cli", "validate", "esm2"]
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_scaling:
            scaling(args, cli, Path(tmp), summary)
        if args.startup_repeats:
            weights = Path(tmp) / f"esm2_{args.arch}.pt"
            if not weights.is_file():
                layers, dim, heads = ARCHITECTURES[args.arch]
                write_checkpoint(weights, layers=layers, dim=dim, heads=heads)
            startup(args, cli, weights, summary)
        if args.big_arch:
            big_fasta = args.out / "sequences-big.fasta"
            protein_set(big_fasta, args.big_sequences, seed=1)
            layers, dim, heads = ARCHITECTURES[args.big_arch]
            start = time.perf_counter()
            big = write_checkpoint(Path(tmp) / f"esm2_{args.big_arch}.pt", layers=layers, dim=dim, heads=heads)
            written = time.perf_counter() - start
            name = f"{args.big_arch}-reference-map"
            command = [*cli, "--weights", str(big), "-s", str(big_fasta), "--device", "cuda",
                       "--reference-device", "map",
                       "--max-tokens", args.max_tokens, "--no-fallback", "-o", str(args.out / name)]
            code, wall = run(command, args.out / f"{name}.log")
            path = args.out / name / "report.json"
            report = json.loads(path.read_text()) if path.is_file() else None
            summary["big"] = {
                "arch": args.big_arch, "exit_code": code, "wall_seconds": wall, "checkpoint_seconds": written,
                "attempts": [
                    {"policy": a["policy"]["name"], "placement": a["placement"],
                     "peak_memory_bytes": a["peak_memory_bytes"],
                     "tokens_per_second": a["timing"]["tokens_per_second"],
                     "min_cosine": (a.get("metrics") or {}).get("min_cosine")}
                    for a in report["attempts"]
                ] if report else None,
            }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(markdown(summary) + "\n")
    print(markdown(summary))
    return 0 if args.no_scaling or summary.get("agreement", {}).get("same_verdict") else 1


def markdown(s: dict) -> str:
    lines = ["# fp16guard on several GPUs (random-weight ESM-2 checkpoints)", ""]
    if "dataset" in s:
        d = s["dataset"]
        lines += [
            f"## Data-parallel scaling: {s['arch']} architecture, --max-tokens {s['max_tokens']}",
            "",
            f"{d['sequences']} sequences, {d['residues']:,} residues, {d['min']}-{d['max']} (median {d['median']})",
            "",
            "| run | GPUs | exit | wall s | embedding s | passing policy |",
            "|---|---|---|---|---|---|",
        ]
    for name, r in s["runs"].items():
        embed = f"{r['embedding_seconds']:.1f}" if r["embedding_seconds"] is not None else "-"
        lines.append(f"| {name} | {', '.join(r['devices'] or [])} | {r['exit_code']} | {r['wall_seconds']:.1f} | "
                     f"{embed} | {r['passing_policy']} |")
    if "scaling" in s:
        sc = s["scaling"]
        lines += [
            "",
            f"Wall-time speed-up {sc['wall_speedup']:.2f}x on {s['gpus']} GPUs (efficiency "
            f"{sc['wall_efficiency']:.0%}); "
            f"embedding passes {sc['embedding_speedup']:.2f}x ({sc['embedding_efficiency']:.0%}).",
            "",
            "Agreement: " + ", ".join(f"{k} {v}" for k, v in s["agreement"].items()),
        ]
    for name, r in s["runs"].items():
        for a in r["attempts"] or []:
            ranks = a.get("ranks") or []
            per_rank = "; ".join(f"rank {x['rank']}: {x['sequences']} seq, {x['seconds']:.2f} s" for x in ranks)
            lines.append(f"- {name} {a['policy']}: {a['seconds']:.2f} s, {a['tokens_per_second']:,.0f} tokens/s"
                         + (f" ({per_rank})" if per_rank else ""))
    if "startup" in s:
        lines += ["", f"## Start-up: seconds until the first stage, {s['startup']['sequences']} sequences", "",
                  "| launch | runs | fastest | median |", "|---|---|---|---|"]
        for name, values in s["startup"]["seconds_to_first_stage"].items():
            ok = sorted(v for v in values if v is not None)
            lines.append(f"| {name} | {len(ok)}/{len(values)} | {ok[0]:.1f} s | {ok[len(ok) // 2]:.1f} s |" if ok
                         else f"| {name} | 0/{len(values)} | - | - |")
    if "big" in s:
        b = s["big"]
        lines += ["", f"## ESM-2 {b['arch']} architecture, FP32 reference spread over the GPUs: exit "
                      f"{b['exit_code']}, {b['wall_seconds']:.1f} s", ""]
        for a in b["attempts"] or []:
            peak = f"{a['peak_memory_bytes'] / 1024**3:.2f} GiB" if a["peak_memory_bytes"] else "n/a"
            lines.append(f"- {a['policy']}: on {a['placement']}; peak {peak}; {a['tokens_per_second']:,.0f} tokens/s; "
                         f"min cosine {a['min_cosine']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
