"""Models too big for one GPU: the layers spread over every visible GPU by accelerate.

accelerate's big-model inference (infer_auto_device_map + dispatch_model) works on any
nn.Module: whole transformer blocks go to one GPU each (they are never split), hooks move the
hidden states from GPU to GPU, and the outputs come back to the first GPU. It is an optional
dependency: ``pip install "fp16guard[multigpu]"``.
"""

from __future__ import annotations

import torch
from torch import nn

from fp16guard.errors import Fp16GuardError

#: Share of each GPU's free memory the weights may take; the rest is for activations.
WEIGHT_SHARE = 0.8

NEEDS_ACCELERATE = 'spreading a model over GPUs needs accelerate: pip install "fp16guard[multigpu]" (or accelerate)'


def device_map(module: nn.Module, block_classes: set[str], free_bytes: list[int]) -> dict[str, int]:
    """Which GPU (by index) each part of ``module`` goes to, for GPUs with ``free_bytes`` free:
    weights balanced over them within WEIGHT_SHARE of that memory, no module whose class is in
    ``block_classes`` split. Raises Fp16GuardError when the model does not fit."""
    try:
        from accelerate import infer_auto_device_map
        from accelerate.utils import get_balanced_memory
    except ImportError:
        raise Fp16GuardError(NEEDS_ACCELERATE) from None
    max_memory = {i: int(free * WEIGHT_SHARE) for i, free in enumerate(free_bytes)}
    classes = sorted(block_classes)
    if len(free_bytes) > 1:
        max_memory = get_balanced_memory(module, max_memory=max_memory, no_split_module_classes=classes)
    plan = infer_auto_device_map(module, max_memory=max_memory, no_split_module_classes=classes)
    outside = sorted({str(d) for d in plan.values() if not isinstance(d, int)})
    if outside:
        raise Fp16GuardError(
            f"the model does not fit in {len(free_bytes)} GPU(s) at {WEIGHT_SHARE:.0%} of their free memory "
            f"(accelerate would put part of it on {', '.join(outside)})"
        )
    return dict(plan)


def spread(module: nn.Module, block_classes: set[str], gpus: int | None = None) -> tuple[nn.Module, str]:
    """Dispatch ``module`` (already cast to its policy's dtypes, on the host) over ``gpus`` GPUs
    (default: every visible one), balancing the weights and never splitting a module whose class
    is in ``block_classes``. Returns the module and a description of where its parameters went."""
    try:
        from accelerate import dispatch_model
    except ImportError:
        raise Fp16GuardError(NEEDS_ACCELERATE) from None
    visible = torch.cuda.device_count()
    gpus = visible if gpus is None else gpus
    if gpus < 1 or visible < gpus:
        raise Fp16GuardError(f"spreading a model over GPUs: {visible} CUDA device(s) visible")
    plan = device_map(module, block_classes, [torch.cuda.mem_get_info(i)[0] for i in range(gpus)])
    module = dispatch_model(module, device_map=plan, main_device=torch.device("cuda", 0), force_hooks=True)
    return module.eval(), describe(module)


def describe(module: nn.Module) -> str:
    """Where the parameters are: 'cuda:0 (1.31 GB), cuda:1 (1.29 GB)' or 'cpu (2.60 GB)'."""
    sizes: dict[str, int] = {}
    seen: set[int] = set()
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        sizes[str(p.device)] = sizes.get(str(p.device), 0) + p.numel() * p.element_size()
    return ", ".join(f"{d} ({n / 1e9:.2f} GB)" for d, n in sorted(sizes.items()))
