"""The packed layout against stock fair-esm FP16 and padded fused attention, on realistic lengths.

In one process on one GPU, random weights at the real sizes (speed and memory only):

1. a dense FP16 matmul (8192^3), the denominator of model FLOP utilisation (MFU);
2. per architecture, a realistic protein set (log-normal lengths, median 330, 30 to 1022
   residues, sorted by length into batches of at most --max-tokens tokens), each path timed as
   a first pass and then steady (the median of --passes further passes), with peak memory and
   the attention kernel that ran:
   - ``stock``: the loop users write, fair-esm ``.half()``, padded rows;
   - ``sdpa``: fp16guard's ``fp16+sdpa`` on padded rows, PyTorch's own backend choice;
   - ``sdpa-flash-eff``: the same restricted to the flash and memory-efficient kernels;
   - ``packed``: fp16guard's ``fp16+packed`` (variable-length flash attention, no padding);
   - ``packed-compiled`` (with --compile): the same, each block under torch.compile
     (``Esm2Target.compile_packed``, what ``embed --compile`` runs), and ``packed-compiled-stack``,
     the whole packed stack as one compiled graph, for comparison;
   - ``runner``: ``fp16guard.execution.runner.run_policy`` under ``fp16+packed``, the figures validate reports;
   agreement with the FP32 loop (on every --fp32-every-th batch) and between packed and padded;
3. fixed shapes (650M: 16 x 1024 and 64 x 256): stock vs packed vs sdpa;
4. with --cli: ``fp16guard validate esm2`` on the bundled set: twice by default (the
   recommendation must not change), once with --full-ladder and once with --full-ladder
   --careful-timing (each policy's tokens/s must agree within 15%).

    python bench/packed.py --out results/ --arch 650M --cli
    python bench/packed.py --out results/ --arch 3B --compile
    python bench/packed.py --out quick/ --quick --device cpu     # code paths only

writes results.json and results.md to --out; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import run_cli
from speed import describe_environment, free, log, matmul_rate, sync

from fp16guard.core.config import ModelSource
from fp16guard.execution.attention import attention_kernel
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.build import build
from fp16guard.execution.forward import PACKED, PADDED, Forward
from fp16guard.execution.runner import run_policy
from fp16guard.models.esm2 import TARGET  # replaced per architecture in bench_arch
from fp16guard.numerics.metrics import cosine_rows, masked_mean, segment_mean
from fp16guard.numerics.policy import FP16_PACKED, FP16_SDPA, get_policy
from fp16guard.testing import ARCHITECTURES, write_checkpoint

PROTEIN = "ACDEFGHIKLMNPQRSTVWY"
FIXED = {"650M": ((16, 1024), (64, 256)), "3B": ((8, 1024),), "tiny": ((2, 32), (4, 16))}


def realistic_set(count: int, seed: int, longest: int) -> list[str]:
    """``count`` random proteins, log-normal lengths with median 330 (sigma 0.6), 30..longest."""
    rng = random.Random(seed)
    lengths = [min(longest, max(30, round(math.exp(rng.gauss(math.log(330), 0.6))))) for _ in range(count)]
    return ["".join(rng.choices(PROTEIN, k=n)) for n in lengths]


def useful_flops(lengths: list[int], layers: int, dim: int) -> float:
    """Multiply-adds x 2 of the model on these sequences, padding excluded: the block matmuls
    (12 dim^2 weights per layer) per token, and q.k and attention.v (2 x T x dim per token)."""
    return sum(2 * 12 * dim * dim * layers * n + 4 * layers * n * n * dim for n in lengths)


def time_path(step, batches, device: torch.device, passes: int) -> dict:
    """First pass, then ``passes`` more (steady: their median); peak memory over the steady
    passes; the pooled rows of the first pass, in input order."""
    out: dict = {}
    rows: dict[int, torch.Tensor] = {}
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        for batch in batches:
            pooled = step(batch)
            for i, index in enumerate(batch.indices):
                rows[index] = pooled[i]
        sync(device)
        out["first_seconds"] = time.perf_counter() - start
        times = []
        for _ in range(passes):
            sync(device)
            start = time.perf_counter()
            for batch in batches:
                step(batch)
            sync(device)
            times.append(time.perf_counter() - start)
    out["steady_seconds"] = statistics.median(times) if times else out["first_seconds"]
    out["steady_all"] = times
    out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    pooled = torch.stack([rows[i].float().cpu() for i in sorted(rows)])
    return out, pooled


def stock_step(model, device, layer):
    def step(batch):
        tokens = batch.tokens.to(device, non_blocking=True)
        hidden = model(tokens, repr_layers=[layer])["representations"][layer]
        return masked_mean(hidden, batch.pool_mask.to(device, non_blocking=True))
    return step


def fp16guard_step(loaded, model, device, layer, packed):
    forward = Forward(TARGET, loaded, model, device, PACKED if packed else PADDED)
    return lambda batch: forward.pooled(batch, layer).rows


def whole_stack_step(loaded, model, device, layer):
    """fp16+packed with fair-esm's whole packed stack under one torch.compile (not what the
    library runs: measured against its block-by-block compiling)."""
    from fp16guard.models.esm2 import packed_stack
    from fp16guard.models.varlen import keep_loops_out_of_compiled_graphs

    keep_loops_out_of_compiled_graphs()
    state = model.fp16guard_pack
    state.compiled_max_seqlen = (loaded.max_length or 1024) + 2
    stack = torch.compile(packed_stack, dynamic=True)

    def step(batch):
        pack = batch.pack().to(device)
        state.start(pack)
        try:
            (hidden,) = stack(model, pack.tokens, pack.cu_seqlens, pack.segments, (layer,))
        finally:
            state.finish()
        return segment_mean(hidden, pack.pool_mask, pack.segments, pack.sequences, pack.max_seqlen, pack.positions)
    return step


def dna_set(count: int, seed: int) -> list[str]:
    """``count`` random DNA sequences, log-normal lengths with median 1,500 bp (about 300
    byte-pair tokens), 100 to 5,000 bp."""
    rng = random.Random(seed)
    lengths = [min(5000, max(100, round(math.exp(rng.gauss(math.log(1500), 0.6))))) for _ in range(count)]
    return ["".join(rng.choices("ACGT", k=n)) for n in lengths]


def bench_arch(name: str, args, device: torch.device, matmul_flops: float) -> dict:
    global TARGET
    if name == "dnabert":
        # DNABERT-S's sizes; a small byte-pair vocabulary (speed does not depend on it).
        from fp16guard.models.dnabert import TARGET as DNABERT
        from fp16guard.testing import write_dnabert

        TARGET, (layers, dim, heads) = DNABERT, (12, 768, 12) if not args.quick else (2, 32, 4)
        path = args.tmp / f"dnabert-{layers}"
        if not (path / "config.json").exists():
            log(f"{name}: writing random weights")
            write_dnabert(path, layers=layers, hidden=dim, heads=heads, intermediate=4 * dim, vocab_size=512,
                          corpus=2000)
        loaded = TARGET.load(ModelSource(model=str(path)))
        texts = dna_set(args.proteins, args.seed)
    else:
        from fp16guard.models.esm2 import TARGET as ESM2

        TARGET, (layers, dim, heads) = ESM2, ARCHITECTURES[name]
        path = args.tmp / f"esm2-{name}.pt"
        if not path.exists():
            log(f"{name}: writing random weights")
            write_checkpoint(path, layers=layers, dim=dim, heads=heads)
        loaded = TARGET.load(ModelSource(weights=path))
        texts = realistic_set(args.proteins, args.seed, 1022 if not args.quick else 60)
    layer = loaded.num_layers
    lengths = TARGET.measure(loaded, texts)
    if loaded.max_length:
        lengths = [min(n, loaded.max_length) for n in lengths]
    batches = prepare_batches(TARGET, loaded, texts, lengths, args.max_tokens)
    tokens = sum(b.tokens_used for b in batches)
    padded = sum(b.tokens.numel() for b in batches)
    block_weights = sum(m.weight.numel() for block in TARGET.blocks(loaded.module) for m in block.modules()
                        if isinstance(m, torch.nn.Linear))
    flops = sum(2 * block_weights * (n + 2) + 4 * layers * (n + 2) ** 2 * dim for n in lengths)
    result: dict = {
        "architecture": f"{'DNABERT-S' if name == 'dnabert' else 'ESM-2 ' + name} ({layers} layers, "
                        f"{dim} dim, {heads} heads)",
        "set": {"proteins": len(texts), "median_length": statistics.median(lengths), "tokens": tokens,
                "padded_tokens": padded, "padding": 1 - tokens / padded, "batches": len(batches),
                "max_tokens": args.max_tokens},
        "paths": {},
    }
    log(f"{name}: {len(texts)} proteins, {tokens:,} tokens in {len(batches)} batches "
        f"({100 * (1 - tokens / padded):.1f}% padding)")

    def record(label: str, step, attention_probe) -> torch.Tensor:
        log(f"{name}: {label}")
        timing, pooled = time_path(step, batches, device, args.passes)
        with torch.inference_mode():
            timing["attention"] = attention_kernel(attention_probe)
        timing["first_tokens_per_second"] = tokens / timing["first_seconds"]
        timing["tokens_per_second"] = tokens / timing["steady_seconds"]
        timing["mfu"] = flops / timing["steady_seconds"] / matmul_flops
        result["paths"][label] = timing
        log(f"{name}: {label}: first {timing['first_tokens_per_second']:,.0f}, steady "
            f"{timing['tokens_per_second']:,.0f} tokens/s, "
            f"MFU {100 * timing['mfu']:.1f}%, {timing['attention']}")
        return pooled

    probe = batches[len(batches) // 2].rows(slice(0, 2))
    pooled: dict[str, torch.Tensor] = {}
    # FP32 reference on every k-th batch: the agreement figures.
    reference_batches = batches[:: args.fp32_every]
    model = copy.deepcopy(loaded.module).to(device).float().eval()  # fresh: fair-esm's rotary cache ignores dtype
    with torch.inference_mode():
        step = stock_step(model, device, layer) if name != "dnabert" else fp16guard_step(loaded, model, device, layer,
                                                                                         False)
        ref_rows = {}
        for batch in reference_batches:
            rows = step(batch).cpu()
            for i, index in enumerate(batch.indices):
                ref_rows[index] = rows[i]
    ref_index = sorted(ref_rows)
    reference = torch.stack([ref_rows[i] for i in ref_index])
    del model
    free(device)

    if name == "dnabert":  # no other runnable model: fp16guard's native one in FP16, padded
        stock, _ = build(TARGET, loaded, get_policy("fp16"), device)
        pooled["stock"] = record("stock", fp16guard_step(loaded, stock, device, layer, False),
                                 lambda: fp16guard_step(loaded, stock, device, layer, False)(probe))
    else:
        stock = copy.deepcopy(loaded.module).half().to(device).eval()
        pooled["stock"] = record("stock", stock_step(stock, device, layer),
                                 lambda: stock(probe.tokens.to(device), repr_layers=[layer]))
    stock = None  # its GPU memory goes before the next path's model is built
    free(device)
    for label, policy, backends in (("sdpa", FP16_SDPA, None), ("sdpa-flash-eff", FP16_SDPA, "flash-eff"),
                                    ("packed", FP16_PACKED, None)):
        if label not in args.paths:
            continue
        model, _ = build(TARGET, loaded, policy, device)
        step = fp16guard_step(loaded, model, device, layer, policy.layout == "packed")
        def probe_run(m=model, p=policy):
            return fp16guard_step(loaded, m, device, layer, p.layout == "packed")(probe)

        if backends and device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
                pooled[label] = record(label, step, probe_run)
        else:
            pooled[label] = record(label, step, probe_run)
        del model, step, probe_run
        free(device)
    if args.compile:
        for label in ("packed-compiled", "packed-compiled-stack"):
            model, _ = build(TARGET, loaded, FP16_PACKED, device)
            torch._dynamo.reset()
            if label == "packed-compiled":  # what embed --compile runs: each block, one shared graph
                TARGET.compile_packed(loaded, model)
                step = fp16guard_step(loaded, model, device, layer, True)
            else:  # the alternative, for comparison: embedding, blocks and final norm as one graph
                step = whole_stack_step(loaded, model, device, layer)
            pooled[label] = record(label, step, lambda s=step: s(probe))
            timing = result["paths"][label]
            timing["compile_seconds"] = timing["first_seconds"] - timing["steady_seconds"]
            del model, step
            free(device)
    log(f"{name}: runner (run_policy, fp16+packed)")
    run = run_policy(TARGET, loaded, FP16_PACKED, batches, len(texts), device, layer)
    result["runner"] = {"first_tokens_per_second": run.timing.first_pass_tokens_per_second,
                        "tokens_per_second": run.timing.tokens_per_second, "passes": run.timing.passes,
                        "steady_fraction": run.timing.steady_fraction, "spread": run.timing.spread,
                        "attention": run.timing.attention, "peak_memory_bytes": run.peak_memory_bytes}
    free(device)

    stock_rate = result["paths"]["stock"]["tokens_per_second"]
    for label, timing in result["paths"].items():
        timing["vs_stock"] = timing["tokens_per_second"] / stock_rate
        timing["first_vs_steady"] = timing["first_tokens_per_second"] / timing["tokens_per_second"]
        timing["memory_vs_stock"] = (timing["peak_memory_bytes"] / result["paths"]["stock"]["peak_memory_bytes"]
                                     if timing["peak_memory_bytes"] else None)
        timing["min_cosine_vs_fp32"] = float(cosine_rows(reference, pooled[label][ref_index]).min())
    if "packed" in pooled and "packed-compiled" in pooled:  # agreement unchanged by compiling
        paths = result["paths"]
        result["compiled_min_cosine_change"] = (paths["packed-compiled"]["min_cosine_vs_fp32"]
                                                - paths["packed"]["min_cosine_vs_fp32"])
    if "sdpa" in pooled:
        result["packed_vs_padded_min_cosine"] = float(cosine_rows(pooled["sdpa"], pooled["packed"]).min())

    fixed = []
    shapes = FIXED.get(name, ()) if not args.quick else FIXED["tiny"]
    for rows, length in shapes if args.fixed and name != "dnabert" else ():
        sequences = ["".join(random.Random(rows * length + i).choices(PROTEIN, k=length - 2)) for i in range(rows)]
        (batch,) = prepare_batches(TARGET, loaded, sequences, [length - 2] * rows, rows * length)
        shape: dict = {"shape": f"{rows} x {length}"}
        stock = copy.deepcopy(loaded.module).half().to(device).eval()
        for label, step in (("stock", stock_step(stock, device, layer)),):
            shape[label] = time_path(step, [batch] * 4, device, args.passes)[0]
        stock = None
        free(device)
        for label, policy in (("sdpa", FP16_SDPA), ("packed", FP16_PACKED)):
            model, _ = build(TARGET, loaded, policy, device)
            shape[label] = time_path(fp16guard_step(loaded, model, device, layer, policy.layout == "packed"),
                                     [batch] * 4, device, args.passes)[0]
            del model
            free(device)
        per_pass = 4 * rows * length
        for label in ("stock", "sdpa", "packed"):
            shape[label]["tokens_per_second"] = per_pass / shape[label]["steady_seconds"]
            shape[label]["mfu"] = 4 * useful_flops([length] * rows, layers,
                                                   dim) / shape[label]["steady_seconds"] / matmul_flops
        shape["packed_vs_stock"] = shape["packed"]["tokens_per_second"] / shape["stock"]["tokens_per_second"]
        shape["sdpa_vs_stock"] = shape["sdpa"]["tokens_per_second"] / shape["stock"]["tokens_per_second"]
        if shape["stock"]["peak_memory_bytes"]:
            shape["packed_memory_vs_stock"] = shape["packed"]["peak_memory_bytes"] / shape["stock"]["peak_memory_bytes"]
        log(f"{name}: {shape['shape']}: packed {shape['packed_vs_stock']:.2f}x stock, sdpa "
            f"{shape['sdpa_vs_stock']:.2f}x")
        fixed.append(shape)
    result["fixed"] = fixed
    result["weights"] = str(path)
    return result


def _policy_figures(attempt: dict) -> dict:
    """What cli_runs keeps of one attempt of a report.json."""
    timing = attempt["timing"]
    return {"tokens_per_second": timing.get("tokens_per_second"),
            "first_tokens_per_second": timing.get("first_pass_tokens_per_second"),
            "attention": timing.get("attention"), "passed": attempt["passed"], "notes": attempt["notes"]}


def cli_runs(weights: str, device: torch.device, out: Path) -> dict:
    """validate on the bundled set: default twice, --full-ladder, --full-ladder --careful-timing."""
    runs = {}
    for label, extra in (("default-1", []), ("default-2", []), ("full-ladder", ["--full-ladder"]),
                         ("careful", ["--full-ladder", "--careful-timing"])):
        report_dir = out / f"validate-{label}"
        run = run_cli(["validate", "esm2", "--weights", weights, "--device", device.type, "--out", str(report_dir),
                       *extra],
                      log=out / f"validate-{label}.log")
        data = json.loads((report_dir / "report.json").read_text()) if (report_dir / "report.json").exists() else {}
        runs[label] = {
            "exit_code": run.returncode, "seconds": run.seconds,
            "recommended": data.get("recommended_policy"),
            "policies": {a["policy"]["name"]: _policy_figures(a) for a in data.get("attempts", [])},
        }
        log(f"validate {label}: exit {run.returncode} in {run.seconds:.1f} s, recommended {runs[label]['recommended']}")
    full, careful = runs["full-ladder"]["policies"], runs["careful"]["policies"]
    both = [name for name in full if name in careful and full[name]["tokens_per_second"]
            and careful[name]["tokens_per_second"]]
    runs["full_vs_careful"] = {name: full[name]["tokens_per_second"] / careful[name]["tokens_per_second"]
                               for name in both}
    return runs


def render(results: dict) -> str:
    lines = [f"# Packed layout benchmark ({results['environment'].get('device_name')})", ""]
    lines.append(f"Dense FP16 matmul: {results['matmul']['flops'] / 1e12:.1f} TFLOP/s. torch "
                 f"{results['environment'].get('torch')}.")
    for name, arch in results["architectures"].items():
        s = arch["set"]
        lines += ["", f"## {arch['architecture']}", "",
                  f"{s['proteins']} proteins, median {s['median_length']} residues, {s['tokens']:,} "
                  f"tokens in {s['batches']} "
                  f"batches of at most {s['max_tokens']:,} tokens ({100 * s['padding']:.1f}% padding).", "",
                  "| path | attention | first pass tokens/s | steady tokens/s | vs stock (steady) | first/steady | "
                  "MFU | peak memory | vs stock memory | min cos vs FP32 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for label, t in arch["paths"].items():
            memory = f"{t['peak_memory_bytes'] / 2**30:.2f} GiB" if t["peak_memory_bytes"] else "n/a"
            ratio = f"{t['memory_vs_stock']:.2f}x" if t["memory_vs_stock"] else "n/a"
            lines.append(f"| {label} | {t['attention']} | {t['first_tokens_per_second']:,.0f} | "
                         f"{t['tokens_per_second']:,.0f} | "
                         f"{t['vs_stock']:.2f}x | {t['first_vs_steady']:.2f} | {100 * t['mfu']:.1f}% | "
                         f"{memory} | {ratio} | "
                         f"{t['min_cosine_vs_fp32']:.7f} |")
            if "compile_seconds" in t:
                lines.append("| | compile time (first minus steady pass) "
                             f"{t['compile_seconds']:.1f} s | | | | | | | | |")
        r = arch["runner"]
        lines += ["", "Runner (what validate reports) under fp16+packed: first pass "
                      f"{r['first_tokens_per_second']:,.0f}, steady "
                  f"{r['tokens_per_second']:,.0f} tokens/s ({r['passes']} re-runs of "
                  f"{100 * r['steady_fraction']:.0f}% of the batches), {r['attention']}."]
        if "packed_vs_padded_min_cosine" in arch:
            lines.append(f"Packed vs padded (fp16+sdpa) min cosine: {arch['packed_vs_padded_min_cosine']:.7f}.")
        if arch["fixed"]:
            lines += ["", "| fixed shape | stock tokens/s | sdpa | packed | packed vs stock | sdpa vs stock | packed "
                          "MFU | packed memory vs stock |",
                      "|---|---|---|---|---|---|---|---|"]
            for f in arch["fixed"]:
                memory = f"{f['packed_memory_vs_stock']:.2f}x" if f.get("packed_memory_vs_stock") else "n/a"
                lines.append(f"| {f['shape']} | {f['stock']['tokens_per_second']:,.0f} | "
                             f"{f['sdpa']['tokens_per_second']:,.0f} | "
                             f"{f['packed']['tokens_per_second']:,.0f} | {f['packed_vs_stock']:.2f}x | "
                             f"{f['sdpa_vs_stock']:.2f}x | "
                             f"{100 * f['packed']['mfu']:.1f}% | {memory} |")
    if results.get("cli"):
        cli = results["cli"]
        lines += ["", "## validate on the bundled set", "", "| run | exit | seconds | recommended |",
                  "|---|---|---|---|"]
        for label in ("default-1", "default-2", "full-ladder", "careful"):
            run = cli[label]
            lines.append(f"| {label} | {run['exit_code']} | {run['seconds']:.1f} | {run['recommended']} |")
        lines += ["", "| policy | --full-ladder tokens/s | --careful-timing tokens/s | ratio |", "|---|---|---|---|"]
        for name, ratio in cli["full_vs_careful"].items():
            lines.append(f"| {name} | {cli['full-ladder']['policies'][name]['tokens_per_second']:,.0f} | "
                         f"{cli['careful']['policies'][name]['tokens_per_second']:,.0f} | {ratio:.2f} |")
    lines += ["", f"Wall time {results['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", nargs="+", default=["650M"], choices=["650M", "3B", "dnabert", "tiny"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--proteins", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--passes", type=int, default=3, help="steady passes after the first (median)")
    parser.add_argument("--fp32-every", type=int, default=1, help="FP32 reference on every k-th batch")
    parser.add_argument("--compile", action="store_true", help="also time packed under torch.compile(dynamic=True)")
    parser.add_argument("--cli", action="store_true", help="also run validate on the bundled set (first architecture)")
    parser.add_argument("--quick", action="store_true", help="tiny model and set: code paths only")
    parser.add_argument("--paths", nargs="+", default=["sdpa", "sdpa-flash-eff", "packed"],
                        help="fused paths besides stock (packed is always run): sdpa sdpa-flash-eff packed")
    parser.add_argument("--no-fixed", dest="fixed", action="store_false", help="skip the fixed shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, help="where to write the checkpoints, kept for reruns (default: "
                                                 "fp16guard-bench in the system's temporary directory)")
    args = parser.parse_args()
    args.tmp = args.tmp or Path(tempfile.gettempdir()) / "fp16guard-bench"
    args.paths = sorted(set(args.paths) | {"packed"})
    if args.quick:
        args.arch = ["dnabert"] if args.arch == ["dnabert"] else ["tiny"]
        args.proteins, args.max_tokens, args.passes = 40, 4096 if args.arch == ["dnabert"] else 512, 1
    args.tmp.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    start = time.perf_counter()
    results = {"environment": describe_environment(device)}
    results["matmul"] = matmul_rate(device, 8192 if not args.quick else 256, 20 if not args.quick else 2,
                                    5 if not args.quick else 1)
    results["architectures"] = {}
    for name in args.arch:
        results["architectures"][name] = bench_arch(name, args, device, results["matmul"]["flops"])
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if args.cli:
        results["cli"] = cli_runs(results["architectures"][args.arch[0]]["weights"], device, args.out)
    results["wall_seconds"] = time.perf_counter() - start
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "results.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
