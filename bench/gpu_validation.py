"""Run `fp16guard validate esm2` (or `validate hf`) on CUDA with a random-weight ESM-2 checkpoint.

Random weights say nothing about numerics but everything about speed and memory, and they make
every policy run on the GPU. Two runs over the bundled reference set:

- healthy weights, every rung of the ladder (--full-ladder): tokens/s and peak memory per policy;
- the same weights with a planted residual overflow: the ladder must climb to fp16+res32;
- (fair-esm) the same weights with a planted neighbour collapse (fp16guard.testing.
  plant_neighbour_collapse) under `--policy fp16 --min-knn-overlap 0.9 --min-rank-correlation 0.99`:
  every cosine passes; the agreement gates decide.

Every run's agreement metrics (neighbours, ranking; with --fp64-floor, each attempt's error as a
multiple of FP32's own against an FP64 pass) go into summary.md beside the table.

    python bench/gpu_validation.py --arch 650M --out results/
    python bench/gpu_validation.py --arch 650M --fp64-floor --out results/     # with the FP64 floor
    python bench/gpu_validation.py --arch 35M --format hf --out results-hf/   # transformers EsmModel
    python bench/gpu_validation.py --arch 117M --format dnabert --out results-dna/   # DNABERT-S layout
    python bench/gpu_validation.py --format t5 --arch prot_t5_xl --out results-t5/   # ProtT5-XL encoder

With ``--format t5`` the planted run is a feed-forward (``wo``) output beyond FP16 instead of a
residual overflow: full FP16 (``.half()``) must fail and ``fp16+keep32`` (transformers' FP32
``wo``) pass; ``--search-layer N`` adds the same plant in block N under ``--search``.

``--embed-sequences N`` then runs ``fp16guard embed`` on N proteins under the policy that the
healthy run saved (``--save-policy``: the recommended one), end to end.

writes each run's report directory and log under --out, and summary.md with both tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import run_cli, write_proteins, write_weights

from fp16guard.report.document import read_report
from fp16guard.report.text import agreement_lines, summary_rows
from fp16guard.testing import ARCHITECTURES, T5_ARCHITECTURES, related_sequences, write_fasta

RUNS = {"healthy": (None, ["--full-ladder"]), "planted-residual-overflow": ("residual", [])}
T5_RUNS = {"healthy": (None, ["--full-ladder"]), "planted-wo-overflow": ("wo", [])}
#: fair-esm only: a common offset that FP16 rounding turns into swapped neighbours, every cosine passing.
COLLAPSE_RUN = ("planted-neighbour-collapse",
                ("collapse", ["--policy", "fp16", "--min-knn-overlap", "0.9", "--min-rank-correlation", "0.99"]))
#: With --search-layer N (fair-esm only): an MLP overflow planted in block N that no rung fixes.
SEARCH_RUN = "planted-mlp-overflow"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="650M", choices=sorted(ARCHITECTURES) + sorted(T5_ARCHITECTURES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-tokens", default="16384")
    parser.add_argument("--profile", action="store_true", help="pass --profile to every run")
    parser.add_argument("--search-layer", type=int, help="add a run with an MLP overflow in this block "
                                                         "(from 1), with --search")
    parser.add_argument("--only", nargs="+", metavar="RUN", help="run only these (fair-esm, hf, dnabert: "
                                                                 f"{', '.join([*RUNS, COLLAPSE_RUN[0], SEARCH_RUN])}; "
                                                                 f"t5: {', '.join([*T5_RUNS, SEARCH_RUN])})")
    parser.add_argument("--format", default="fair-esm", choices=["fair-esm", "hf", "dnabert", "t5"],
                        help="checkpoint format and target")
    parser.add_argument("--sequences", type=Path, help="a FASTA instead of the bundled set (on a CPU, default: "
                                                       "36 related sequences)")
    parser.add_argument("--fp64-floor", action="store_true", help="pass --fp64-floor to every run (an FP64 "
                                                                  "pass over 32 sequences)")
    parser.add_argument("--embed-sequences", type=int, default=0, metavar="N",
                        help="after the healthy run, `fp16guard embed` N proteins of realistic lengths "
                             "under the policy it saved")
    args = parser.parse_args()
    if (args.format == "t5") != (args.arch in T5_ARCHITECTURES):
        parser.error(f"--format t5 takes the T5 architectures ({', '.join(T5_ARCHITECTURES)}), the other formats "
                     f"{', '.join(ARCHITECTURES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"# fp16guard on {args.device}: {args.arch} architecture ({args.format}), random weights", ""]
    with tempfile.TemporaryDirectory() as tmp:
        if args.device == "cpu" and args.sequences is None:
            # FP16 runs at a few hundred tokens/s on a CPU: the check uses 36 sequences in three
            # families of close relatives (fp16guard.testing.related_sequences), not the bundled set.
            args.sequences = write_fasta(related_sequences(families=3, size=12, length=120),
                                         Path(tmp) / "families.fasta")
            lines += ["On the CPU: 36 sequences in three families of 12 point mutants "
                      "(fp16guard.testing.related_sequences), one timed pass per policy, the ladder "
                      "stopping at the first pass.", ""]
        runs = dict(T5_RUNS if args.format == "t5" else RUNS)
        if args.format == "fair-esm":
            runs[COLLAPSE_RUN[0]] = COLLAPSE_RUN[1]
        if args.search_layer:
            runs[SEARCH_RUN] = ("wo" if args.format == "t5" else "mlp", ["--search"])
        if args.only:
            runs = {run: spec for run, spec in runs.items() if run in args.only}
        for run, (plant, extra) in runs.items():
            start = time.perf_counter()
            family = {"dnabert": "dnabert", "t5": "t5"}.get(args.format, "esm2")
            name = f"{family}_{args.arch}_{run}"
            suffix = ".pt" if args.format == "fair-esm" else ""
            target = write_weights(args.format, args.arch, Path(tmp) / (name + suffix), plant,
                                   (args.search_layer or 2) - 1)
            written = time.perf_counter() - start
            # On a CPU the run only checks that everything works (CPU timings say nothing about a
            # GPU): one timed pass per policy, and the ladder stops at the first pass.
            cpu = args.device == "cpu"
            timing = [] if cpu else ["--careful-timing"]
            extra = [e for e in extra if not (cpu and e == "--full-ladder")]
            saved_policy = args.out / run / "policy.json"
            if args.embed_sequences and run == "healthy":
                extra = [*extra, "--save-policy", str(saved_policy)]
            cli = run_cli(
                ["validate", *target, "--device", args.device, "--max-tokens", args.max_tokens,
                 "--out", str(args.out / run), *timing,
                 *(["--sequences", str(args.sequences)] if args.sequences else []), *extra,
                 *(["--profile"] if args.profile else []), *(["--fp64-floor"] if args.fp64_floor else [])],
                log=args.out / f"{run}.log",
            )
            print(cli.output[-4000:], file=sys.stderr)
            lines += [f"## {run}: exit code {cli.returncode}, {cli.seconds:.1f} s end to end (checkpoint "
                      f"written in {written:.1f} s)", ""]
            if (args.out / run / "report.json").is_file():
                report = read_report(args.out / run / "report.json")
                rows = summary_rows(report)
                headers = list(rows[0])
                lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                lines += ["| " + " | ".join(r[h] for h in headers) + " |" for r in rows]
                env = report.environment
                lines += ["", f"Device: {env['device_name']}, torch {env['torch']}, transformers "
                              f"{env.get('transformers')}", ""]
                for attempt in report.attempts[1:]:  # what each policy kept in FP32, by name
                    kept = attempt.fp32_modules
                    if kept and attempt.passed is not None:
                        shown = "; ".join(kept[:3]) + (f"; and {len(kept) - 3} more" if len(kept) > 3 else "")
                        lines.append(f"- {attempt.name} ({'PASS' if attempt.passed else 'FAIL'}): {shown}")
                lines.append("")
                for attempt in report.attempts[1:]:
                    agreement = (attempt.metrics or {}).get("agreement")
                    if agreement:
                        lines += [f"Agreement of {attempt.name} ({attempt.role}; verdict: {attempt.reason}):", ""]
                        lines += [f"- {line}" for line in agreement_lines(agreement)]
                        lines += [f"- The metrics took {agreement['seconds'] * 1000:.1f} ms; the attempt's embedding "
                                  f"pass {attempt.timing['seconds']:.2f} s", ""]
                lines += [f"Note: {note}" for note in report.notes if note.startswith("FP64 floor")]
                timings = {a.name: a.timing for a in report.attempts}
                lines += ["```json", json.dumps(timings, indent=1), "```", ""]
            if args.embed_sequences and run == "healthy" and saved_policy.is_file():
                lines += embed_under(target, saved_policy, args, Path(tmp))
            # After every run, so that a run cut off by a time limit keeps the ones before it.
            (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def embed_under(target: list[str], policy: Path, args, tmp: Path) -> list[str]:
    """``fp16guard embed`` of --embed-sequences proteins (log-normal lengths, median 330) under
    the policy the healthy run saved: the summary lines, end to end from process start."""
    fasta = write_proteins(tmp / "embed.fasta", args.embed_sequences)
    out = tmp / "embed.h5"
    cli = run_cli(["embed", *target, "-s", str(fasta), "-o", str(out), "--policy", str(policy),
                   "--device", args.device],
                  log=args.out / "embed.log")
    print(cli.output[-3000:], file=sys.stderr)
    chosen = json.loads(policy.read_text())["policy"]["name"]
    summary = [line for _, line in cli.lines if not line.startswith("embedding ")][-8:]
    return [f"## embed under the saved policy ({chosen}): exit code {cli.returncode}, {args.embed_sequences} proteins, "
            f"{cli.seconds:.1f} s end to end", "", "```", *summary, "```", ""]


if __name__ == "__main__":
    raise SystemExit(main())
