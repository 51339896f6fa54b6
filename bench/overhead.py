"""The host-side cost of fp16guard's own code per batch, for comparing two versions of the package.

A tiny ESM-2 (2 layers, 32 wide) over many short proteins in small batches: the model's own
arithmetic is then a small share of each batch, so what is timed is mostly fp16guard's Python
around the forward pass (batching, the forward path, pooling, statistics, timing). Run it under
two installations, alternating, and compare the medians measured in the same session:

    pip install --target tree-old fp16guard-OLD.whl; pip install --target tree-new fp16guard-NEW.whl
    for i in 1 2 3 4 5; do
        PYTHONPATH=tree-old python bench/overhead.py --out old-$i.json
        PYTHONPATH=tree-new python bench/overhead.py --out new-$i.json
    done

It measures, on the CPU in FP32 and under fp16+packed (padded rows and packed rows; the CPU runs
packed attention one sequence at a time):
- ``run_policy``: validate's pass (``measure=False``: one pass, no re-timing);
- ``run_policy_reference``: the same with token statistics against a kept FP32 reference;
- ``embedder``: ``Embedder.run`` over every batch, three layers pooled, per-residue states kept.

It reads the package's entry points where either layout of the package keeps them (before and
after the modules were grouped into layers), so one script times both.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch


def first(*names: str):
    """The first of ``module:attribute`` that imports."""
    for name in names:
        module, attribute = name.split(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {names}")


def proteins(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=rng.randint(20, 60))) for _ in range(count)]


def timed(step, repeats: int) -> float:
    """The median seconds of ``repeats`` calls of ``step`` (after one untimed call)."""
    step()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sequences", type=int, default=600)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    write_checkpoint = first("fp16guard.testing:write_checkpoint")
    get_target = first("fp16guard.models:get_target", "fp16guard.targets:get_target")
    model_source = first("fp16guard.core.config:ModelSource", "fp16guard.config:ModelSource")
    prepare_batches = first("fp16guard.execution.batching:prepare_batches", "fp16guard.workflow:prepare_batches")
    run_policy = first("fp16guard.execution.runner:run_policy", "fp16guard.runner:run_policy")
    embedder_class = first("fp16guard.execution.embedder:Embedder", "fp16guard.embedding:Embedder")
    get_policy = first("fp16guard.numerics.policy:get_policy", "fp16guard.policy:get_policy")

    target = get_target("esm2")
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_checkpoint(Path(tmp) / "tiny.pt")
        loaded = target.load(model_source(weights=weights))
    texts = proteins(args.sequences)
    lengths = target.measure(loaded, texts)
    batches = prepare_batches(target, loaded, texts, lengths, args.max_tokens)
    device = torch.device("cpu")
    layer = loaded.num_layers
    results: dict = {"batches": len(batches), "tokens": sum(b.tokens_used for b in batches)}
    for name in ("fp32", "fp16+packed"):
        policy = get_policy(name)
        reference = run_policy(target, loaded, get_policy("fp32"), batches, len(texts), device, layer,
                               keep_states_bytes=1 << 30, measure=False)
        results[f"run_policy {name}"] = timed(
            lambda: run_policy(target, loaded, policy, batches, len(texts), device, layer, measure=False), args.repeats)
        results[f"run_policy_reference {name}"] = timed(
            lambda: run_policy(target, loaded, policy, batches, len(texts), device, layer, reference=reference,
                               measure=False), args.repeats)
        embedder = embedder_class(target, loaded, policy, device, layer, args.max_tokens)
        layers = (0, 1, layer)
        results[f"embedder {name}"] = timed(lambda: [embedder.run(b, layers, True) for b in batches], args.repeats)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
