"""Check the fast-attention policy on CUDA: agreement with FP32, which fused kernel runs, speed.

Random weights (they say nothing about numerics, everything about speed and whether a kernel
runs). For an ESM-2 architecture (fair-esm) and the DNABERT-S architecture (native model):

- cosine of mean-pooled embeddings against FP32, for stock FP16 and for fp16+sdpa, on a batch
  without padding and one with padding;
- the kernel: the fast model is run again with scaled_dot_product_attention restricted to the
  flash kernel (no padding: no mask) or the memory-efficient one (padding mask, ALiBi bias);
  restricted to a kernel that cannot run, torch raises, so "ok" means that kernel ran;
- tokens/s and peak memory of stock FP16 and fp16+sdpa per batch shape, and the share of the
  dense FP16 matmul rate measured in the same run (model FLOPs utilisation).

    python bench/check_fast_attention.py --arch 650M --out results-sdpa/

prints a Markdown summary and writes it, with the figures as JSON, under --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fp16guard import apply_policy
from fp16guard.testing import ARCHITECTURES, build_model

SHAPES = ((16, 1024), (64, 256))  # (rows, tokens per row)


def matmul_rate(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """Dense FP16 matmul FLOP/s on this GPU."""
    a = torch.randn(n, n, device=device, dtype=torch.float16)
    b = torch.randn(n, n, device=device, dtype=torch.float16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def esm_tokens(rows: int, length: int, padded: bool, device) -> torch.Tensor:
    """BOS, residues (ids 4..23), EOS, then padding (id 1) when ``padded``."""
    generator = torch.Generator().manual_seed(rows * length + padded)
    tokens = torch.randint(4, 24, (rows, length), generator=generator)
    tokens[:, 0] = 0
    lengths = torch.randint(length // 4, length, (rows,),
                            generator=generator) if padded else torch.full((rows,), length)
    for row, n in enumerate(lengths.tolist()):
        tokens[row, n - 1] = 2
        tokens[row, n:] = 1
    return tokens.to(device)


def pooled(forward, tokens: torch.Tensor, pad: int) -> torch.Tensor:
    mask = (tokens != pad).unsqueeze(-1)
    with torch.inference_mode():
        hidden = forward(tokens).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def timed(forward, tokens: torch.Tensor, repeats: int = 10) -> tuple[float, int]:
    """Seconds per forward (median of ``repeats``) and peak memory in bytes."""
    with torch.inference_mode():
        for _ in range(3):
            forward(tokens)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward(tokens)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated()


def kernel_runs(forward, tokens: torch.Tensor, backend: SDPBackend) -> str:
    try:
        with sdpa_kernel([backend]), torch.inference_mode():
            forward(tokens)
        return "ok"
    except RuntimeError as exc:
        return "FAILED: " + str(exc).splitlines()[0][:160]


def check_esm(arch: str, device, peak: float, report: dict, lines: list[str]) -> None:
    layers, dim, heads = ARCHITECTURES[arch]
    base = build_model(layers=layers, dim=dim, heads=heads).eval()
    models = {}
    for name in ("fp32", "fp16", "fp16+sdpa"):
        model = copy.deepcopy(base)
        apply_policy(model, name)
        models[name] = model.to(device).eval()
    del base

    def forward_of(model):
        return lambda tokens: model(tokens, repr_layers=[layers])["representations"][layers]

    lines += [f"## ESM-2 {arch} ({layers} layers, {dim} dims, {heads} heads), fair-esm", ""]
    lines += ["| batch | policy | min cos vs FP32 | tokens/s | MFU | peak memory |", "|---|---|---|---|---|---|"]
    for rows, length in SHAPES:
        for padded in (False, True):
            tokens = esm_tokens(rows, length, padded, device)
            reference = pooled(forward_of(models["fp32"]), tokens, pad=1)
            real = int((tokens != 1).sum())
            # Per token: every matmul (24 D^2 per layer plus the LM head that ESM2 always computes)
            # and attention (4 T D per layer over the padded width).
            flops_per_token = layers * (24 * dim * dim + 4 * length * dim) + 2 * dim * dim + 2 * dim * 33
            for name in ("fp16", "fp16+sdpa"):
                forward = forward_of(models[name])
                cosine = F.cosine_similarity(pooled(forward, tokens, pad=1), reference).min().item()
                seconds, memory = timed(forward, tokens)
                rate = real / seconds
                mfu = rate * flops_per_token / peak
                shape = f"{rows}x{length}" + (" padded" if padded else "")
                gib = memory / 2**30
                lines.append(f"| {shape} | {name} | {cosine:.6f} | {rate:,.0f} | {mfu:.1%} | {gib:.2f} GiB |")
                report["esm2"].append(
                    {"batch": shape, "policy": name, "min_cosine": cosine, "tokens_per_second": rate, "mfu": mfu,
                     "peak_bytes": memory}
                )
    fast = forward_of(models["fp16+sdpa"])
    flash = kernel_runs(fast, esm_tokens(16, 1024, False, device), SDPBackend.FLASH_ATTENTION)
    efficient = kernel_runs(fast, esm_tokens(16, 1024, True, device), SDPBackend.EFFICIENT_ATTENTION)
    report["esm2_kernels"] = {"flash_without_padding": flash, "efficient_with_padding": efficient}
    lines += ["", f"fp16+sdpa kernels: flash without padding {flash}; memory-efficient with padding {efficient}", ""]
    del models
    torch.cuda.empty_cache()


def check_dnabert(device, report: dict, lines: list[str]) -> None:
    from fp16guard.models.dnabert import DnaBertConfig, DnaBertModel

    torch.manual_seed(0)
    base = DnaBertModel(DnaBertConfig()).eval()  # DNABERT-S shape: 12 layers, 768 dims, 12 heads
    for module in base.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=0.02)
    models = {}
    for name in ("fp32", "fp16", "fp16+sdpa"):
        model = copy.deepcopy(base)
        apply_policy(model, name)
        models[name] = model.to(device).eval()
    lines += ["## DNABERT-S architecture (native, ALiBi bias)", "", "| batch | policy | min cos vs FP32 | "
                                                                    "tokens/s | peak memory |", "|---|---|---|---|---|"]
    kernels = {}
    for padded in (False, True):
        tokens = esm_tokens(16, 1024, padded, device) + 4  # ids 4..27; padding becomes id 5 below
        tokens[tokens == 5] = 3  # [PAD] is id 3 in the DNABERT-S vocabulary
        mask = (tokens != 3).long()

        def forward_of(model, mask=mask):
            return lambda ids: model(ids, mask)[-1]

        reference = pooled(forward_of(models["fp32"]), tokens, pad=3)
        for name in ("fp16", "fp16+sdpa"):
            forward = forward_of(models[name])
            cosine = F.cosine_similarity(pooled(forward, tokens, pad=3), reference).min().item()
            seconds, memory = timed(forward, tokens)
            rate = int(mask.sum()) / seconds
            shape = "16x1024" + (" padded" if padded else "")
            lines.append(f"| {shape} | {name} | {cosine:.6f} | {rate:,.0f} | {memory / 2**30:.2f} GiB |")
            report["dnabert"].append({"batch": shape, "policy": name, "min_cosine": cosine, "tokens_per_second": rate,
                                      "peak_bytes": memory})
        kernels["padded" if padded else "unpadded"] = kernel_runs(forward_of(models["fp16+sdpa"]), tokens,
                                                                  SDPBackend.EFFICIENT_ATTENTION)
    report["dnabert_kernels"] = kernels
    lines += ["", f"fp16+sdpa memory-efficient kernel with the FP16 ALiBi bias: {kernels}", ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="650M", choices=sorted(ARCHITECTURES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-dnabert", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    peak = matmul_rate(device)
    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "matmul_flops": peak,
              "esm2": [], "dnabert": []}
    lines = [f"# fp16+sdpa on {report['device']}, torch {torch.__version__}; dense FP16 matmul "
             f"{peak / 1e12:.0f} TFLOP/s", ""]
    check_esm(args.arch, device, peak, report, lines)
    if not args.no_dnabert:
        check_dnabert(device, report, lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fast_attention.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "fast_attention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [k for k, v in {**report["esm2_kernels"], **report.get("dnabert_kernels", {})}.items() if v != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
