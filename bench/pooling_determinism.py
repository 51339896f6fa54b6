"""Is packed pooling deterministic on this GPU? segment_mean (rows summed along, as padded
pooling sums) against a scatter-add (index_add_, atomics) over the same packed hidden states,
each repeated; prints how many distinct results each gave (1 = deterministic).

    python bench/pooling_determinism.py --repeats 20
"""

from __future__ import annotations

import argparse
import json

import torch

from fp16guard.numerics.metrics import segment_mean


def scatter_mean(hidden: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
    values = torch.where(mask.unsqueeze(-1), hidden.float(), 0.0)
    total = values.new_zeros(count, hidden.shape[-1]).index_add_(0, segments, values)
    kept = torch.zeros(count, device=hidden.device).index_add_(0, segments, mask.float())
    return total / kept.clamp_min(1).unsqueeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(30, 1024, (40,), generator=generator)
    segments = torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(args.device)
    hidden = (torch.randn(int(lengths.sum()), 1280, generator=generator) * 3).half().to(args.device)
    mask = torch.ones(hidden.shape[0], dtype=torch.bool, device=args.device)
    found = {}
    for name, pool in (("segment_mean", segment_mean), ("index_add", scatter_mean)):
        results = {pool(hidden, mask, segments, len(lengths)).cpu().numpy().tobytes() for _ in range(args.repeats)}
        found[name] = len(results)
    print(json.dumps({"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                      "tokens": hidden.shape[0],
                      "repeats": args.repeats, "distinct_results": found}))


if __name__ == "__main__":
    main()
