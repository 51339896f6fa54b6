"""What the agreement metrics cost (fp16guard.numerics.agreement.measure), on the CPU where they run.

The embeddings of each bundled set at its model's width, and larger sets up to and past the
2,000-sequence cap of the pairwise metrics; an FP16-rounded copy stands in for the attempt. Each
figure is the median of 7 calls after one warm-up call, with a 10-class probe and 5 label classes
(so every metric runs).

    python bench/agreement_cost.py            # prints a Markdown table
"""

from __future__ import annotations

import statistics
import time

import torch

from fp16guard.numerics.agreement import AgreementInputs, Probe, measure

SHAPES = (
    ("bundled antibody set, AntiBERTy", 84, 512),
    ("bundled DNA set, DNABERT-S", 122, 768),
    ("bundled protein set, ESM-2 650M", 127, 1280),
    ("bundled protein set, ESM-2 15B", 127, 5120),
    ("1,000 proteins, ESM-2 650M", 1000, 1280),
    ("2,000 proteins (the cap), ESM-2 650M", 2000, 1280),
    ("10,000 proteins (sampled to 2,000), ESM-2 650M", 10000, 1280),
)


def cost(n: int, dim: int, repeats: int = 7) -> float:
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(n, dim, generator=generator) + 3.0  # a shared component, as real embeddings have
    candidate = reference.half().float()
    ids = [f"s{i}" for i in range(n)]
    probe = Probe("probe", torch.randn(10, dim, dtype=torch.float64, generator=generator),
                  torch.zeros(10, dtype=torch.float64))
    inputs = AgreementInputs(probe=probe, labels=tuple(f"class{i % 5}" for i in range(n)))
    measure(reference, candidate, ids, inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        measure(reference, candidate, ids, inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print()
    print("| embeddings | sequences | dim | metrics per attempt |")
    print("|---|---|---|---|")
    for label, n, dim in SHAPES:
        seconds = cost(n, dim)
        shown = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
        print(f"| {label} | {n:,} | {dim:,} | {shown} |")


if __name__ == "__main__":
    main()
