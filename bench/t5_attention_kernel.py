"""Which SDPA kernel a T5 encoder's attention gets, and why the fused ones are refused.

transformers' T5 passes its relative position bias (plus the padding mask) to
``scaled_dot_product_attention`` as a float ``attn_mask`` of shape (batch, heads, L, L). This
records the arguments of that call in a ProtT5-XL-shaped encoder (2 layers, d_model 1024,
32 heads of 128, random weights) and asks each fused backend alone to run them, keeping
PyTorch's own reason for each refusal, once with transformers' layout of the bias and once
with fp16guard's (``fp16guard.models.t5.contiguous_position_bias``, applied by the
fast-attention policies). ``--time`` then times a whole ProtT5-XL-shaped encoder (24 layers,
random weights, FP16) on padded batches of realistic lengths with both layouts, interleaved in
one process, warmed first, and compares the two outputs.

    python bench/t5_attention_kernel.py --out t5-attention.json --time
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import T5Config, T5EncoderModel

from fp16guard.models.t5 import contiguous_position_bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--time", action="store_true", help="time a 24-layer encoder with both layouts")
    args = parser.parse_args()
    config = T5Config(vocab_size=128, d_model=1024, d_kv=128, d_ff=4096, num_layers=2, num_heads=32,
                      feed_forward_proj="relu", attn_implementation="sdpa")
    results: dict = {"torch": torch.__version__,
                     "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    for layout, dtype in [(layout, dtype) for layout in ("transformers", "fp16guard") for dtype in (torch.float32,
                                                                                                    torch.float16)]:
        model = T5EncoderModel(config).to(args.device, dtype).eval()
        if layout == "fp16guard":
            contiguous_position_bias(model)
        calls: list = []
        original = F.scaled_dot_product_attention

        def recording(*a, **k):
            if not calls:
                calls.append((a, k))
            return original(*a, **k)

        ids = torch.randint(3, 128, (4, 301), device=args.device)
        mask = torch.ones_like(ids)
        mask[1:, 250:] = 0
        F.scaled_dot_product_attention = recording
        try:
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask)
        finally:
            F.scaled_dot_product_attention = original
        (a, k), = calls[:1]
        tensors = {name: t for name, t in zip(("query", "key", "value"), a[:3])}
        if isinstance(k.get("attn_mask"), torch.Tensor):
            tensors["attn_mask"] = k["attn_mask"]
        entry = {
            "arguments": {name: {"shape": list(t.shape), "stride": list(t.stride()), "dtype": str(t.dtype),
                                 "requires_grad": t.requires_grad} for name, t in tensors.items()},
            "other": {key: value for key, value in k.items() if not isinstance(value, torch.Tensor)},
        }
        try:
            entry["chosen"] = SDPBackend(int(torch._fused_sdp_choice(*a, **k))).name
        except Exception as exc:  # noqa: BLE001 - a private chooser
            entry["chosen"] = f"unknown ({exc})"
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    with sdpa_kernel([backend]), torch.inference_mode():
                        original(*a, **k)
                    outcome = "ran"
                except RuntimeError as exc:
                    outcome = f"refused: {str(exc).splitlines()[0]}"
            entry[backend.name] = {"outcome": outcome, "warnings": [str(w.message) for w in caught]}
        results[f"{layout} layout, {dtype}"] = entry
    if args.time:
        results["timing"] = time_layouts(args.device)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


def time_layouts(device: str, repeats: int = 5) -> dict:
    """Seconds per pass of a ProtT5-XL-shaped FP16 encoder over the same padded batches, with
    transformers' bias layout and with fp16guard's, interleaved; and how far the outputs differ."""
    import copy
    import math
    import random
    import time

    config = T5Config(vocab_size=128, d_model=1024, d_kv=128, d_ff=16384, num_layers=24, num_heads=32,
                      feed_forward_proj="relu", attn_implementation="sdpa")
    with torch.device(device):
        stock = T5EncoderModel(config).half().eval()
    ours = copy.deepcopy(stock)
    contiguous_position_bias(ours)
    rng = random.Random(0)
    lengths = sorted(min(1022, max(30, round(rng.lognormvariate(math.log(330), 0.55)))) for _ in range(256))
    batches = []
    for start in range(0, len(lengths), 16):  # 16 sequences a batch, length-sorted: little padding
        group = lengths[start:start + 16]
        ids = torch.randint(3, 128, (len(group), max(group)), device=device)
        mask = (torch.arange(max(group), device=device)[None, :] < torch.tensor(group, device=device)[:, None]).long()
        batches.append((ids, mask))

    def one_pass(model) -> tuple[float, list]:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            outs = [model(input_ids=ids, attention_mask=mask).last_hidden_state for ids, mask in batches]
        torch.cuda.synchronize()
        return time.perf_counter() - start, outs

    first = {"transformers": one_pass(stock)[0], "fp16guard": one_pass(ours)[0]}  # warms every shape
    seconds: dict = {"transformers": [], "fp16guard": []}
    for _ in range(repeats):
        seconds["transformers"].append(one_pass(stock)[0])
        seconds["fp16guard"].append(one_pass(ours)[0])
    _, a = one_pass(stock)
    _, b = one_pass(ours)
    cosines = []
    for (ids, mask), x, y in zip(batches, a, b):
        keep = mask.bool()
        cosines.append(torch.nn.functional.cosine_similarity(x[keep].float(), y[keep].float(), dim=-1).min().item())
    tokens = sum(lengths)
    best = {k: min(v) for k, v in seconds.items()}
    return {"sequences": len(lengths), "tokens": tokens, "first_pass_seconds": first, "seconds": seconds,
            "tokens_per_second": {k: tokens / v for k, v in best.items()},
            "speedup_fp16guard_layout": best["transformers"] / best["fp16guard"],
            "min_token_cosine_between_layouts": min(cosines)}


if __name__ == "__main__":
    main()
