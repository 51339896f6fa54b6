"""The FP64 floor: embed a sample of the sequences in FP64 to measure how far FP32 itself is from
exact, so that an attempt's error can be read against FP32's own (PyTorch's compiler judges
accuracy the same way: a result is compared with an FP64 run, next to the FP32 result's error).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
from torch.overrides import TorchFunctionMode

from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.forward import PADDED_FLOAT64, Forward
from fp16guard.models.base import LoadedModel, Target
from fp16guard.models.batch import TokenBatch
from fp16guard.numerics.agreement import Fp64Floor


class KeepFloat64(TorchFunctionMode):
    """Inside it, model code that casts to FP32 (``.float()``, ``.to(torch.float32)``,
    ``type_as`` an FP32 tensor, ``softmax(..., dtype=torch.float32)``) keeps FP64 tensors in FP64.
    Models upcast their fragile steps to FP32 on purpose (fair-esm's and transformers' softmax,
    fp16guard's own targets); in an FP64 pass such a cast would round the "exact" answer to FP32
    precision and hide the very error being measured."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        wide = any(isinstance(a, torch.Tensor) and a.dtype == torch.float64 for a in args)
        if wide:
            if func is torch.Tensor.float and args[0].dtype == torch.float64:
                return args[0]
            if func is torch.Tensor.type_as and args[0].dtype == torch.float64 and args[1].dtype == torch.float32:
                return args[0]
            if func is torch.Tensor.to and args[0].dtype == torch.float64:
                args = tuple(torch.float64 if a is torch.float32 else a for a in args)
                if len(args) > 1 and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.float32:
                    args = (args[0], args[1].device, *args[2:])
            if kwargs.get("dtype") is torch.float32:
                kwargs["dtype"] = torch.float64
        return func(*args, **kwargs)


def sample_rows(lengths: Sequence[int], count: int) -> list[int]:
    """``count`` sequences spread evenly over the length range (positions in input order,
    sorted), so that short and long inputs are both represented."""
    by_length = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if count >= len(by_length):
        return sorted(by_length)
    step = (len(by_length) - 1) / max(1, count - 1)
    return sorted({by_length[round(i * step)] for i in range(count)})


def fp64_floor(target: Target, loaded: LoadedModel, texts: Sequence[str], lengths: Sequence[int], rows: Sequence[int],
               reference: torch.Tensor, device: torch.device, layer: int, max_tokens: int) -> Fp64Floor:
    """Embed ``rows`` of ``texts`` in FP64 (on ``device``; on the CPU when it runs out of GPU
    memory there) and measure the FP32 ``reference``'s error against it. The model is the loaded
    weights cast to FP64 as they are (no policy); pooling is over the same positions, in FP64."""
    start = time.perf_counter()
    sample_texts = [texts[i] for i in rows]
    sample_lengths = [lengths[i] for i in rows]
    # FP64 activations take twice FP32's bytes: half the token budget keeps the memory the same.
    batches = prepare_batches(target, loaded, sample_texts, sample_lengths, max(1, max_tokens // 2))
    try:
        exact, where = _embed64(target, loaded, batches, len(rows), device, layer), str(device)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        cpu = torch.device("cpu")
        exact, where = _embed64(target, loaded, batches, len(rows), cpu, layer), "cpu (out of GPU memory)"
    return Fp64Floor.of(rows, exact, reference, where, time.perf_counter() - start)


def _embed64(target: Target, loaded: LoadedModel, batches: list[TokenBatch], count: int, device: torch.device,
             layer: int) -> torch.Tensor:
    """Pooled FP64 embeddings [count, D] on the host, rows in the order of the batches' indices:
    the loaded weights cast to FP64, run padded, one batch at a time (out of GPU memory is the
    caller's to handle: no batch is halved)."""
    model = copy.deepcopy(loaded.module).double().to(device).eval()
    out = torch.empty(count, 0, dtype=torch.float64)
    try:
        with torch.inference_mode(), KeepFloat64():
            for pooled in Forward(target, loaded, model, device, PADDED_FLOAT64, split=False).each(batches, layer):
                if out.shape[1] == 0:
                    out = torch.empty(count, pooled.rows.shape[-1], dtype=torch.float64)
                out[list(pooled.batch.indices)] = pooled.rows.cpu()
    finally:
        del model
    return out
