"""Which attention kernel a forward pass actually runs, read from the operators PyTorch dispatches."""

from __future__ import annotations

from collections.abc import Callable

import torch

#: aten operators that name the attention kernel a pass ran, most specific first.
ATTENTION_OPERATORS = (
    ("varlen", "flash, variable-length (packed)"),
    ("_flash_attention_forward", "flash, variable-length (packed)"),
    ("_scaled_dot_product_cudnn_attention", "cuDNN (SDPA)"),
    ("_scaled_dot_product_flash_attention_for_cpu", "SDPA, CPU kernel"),
    ("_scaled_dot_product_flash_attention", "flash (SDPA)"),
    ("_scaled_dot_product_efficient_attention", "memory-efficient (SDPA)"),
    ("_scaled_dot_product_attention_math", "math (SDPA)"),
    ("aten.scaled_dot_product_attention.", "SDPA (kernel choice not reported by this torch)"),
)


def _sdpa_choice(args, kwargs) -> str:
    """The backend scaled_dot_product_attention chooses for these arguments, as an operator-like
    name that ATTENTION_OPERATORS knows ("" when torch cannot say)."""
    try:
        from torch.nn.attention import SDPBackend

        choice = SDPBackend(int(torch._fused_sdp_choice(*args, **kwargs))).name
    except Exception:  # a private chooser: absent or different in some torch versions
        return ""
    if choice == "FLASH_ATTENTION" and not args[0].is_cuda:
        return "_scaled_dot_product_flash_attention_for_cpu"
    return {
        "FLASH_ATTENTION": "_scaled_dot_product_flash_attention",
        "EFFICIENT_ATTENTION": "_scaled_dot_product_efficient_attention",
        "CUDNN_ATTENTION": "_scaled_dot_product_cudnn_attention",
        "MATH": "_scaled_dot_product_attention_math",
    }.get(choice, "")


def attention_kernel(run: Callable[[], object]) -> str:
    """The attention kernel that ``run()`` (one small forward) actually executes, read from the
    operators PyTorch dispatches: flash, memory-efficient, cuDNN, the CPU kernel, math, or
    unfused matmuls and softmax (fair-esm's own attention)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names: set[str] = set()

    class Recorder(TorchDispatchMode):
        """Notes the name of every operator dispatched (and SDPA's kernel choice)."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.add(str(func))
            if func is torch.ops.aten.scaled_dot_product_attention.default:
                # SDPA picks its kernel inside one operator: ask the same chooser it asks.
                names.add(_sdpa_choice(args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    with Recorder():
        run()
    found = [next((label for key, label in ATTENTION_OPERATORS if key in name), None) for name in sorted(names)]
    found = [label for label in found if label]
    if len(set(found)) > 1:  # the chooser's answer makes the generic SDPA entry redundant
        found = [label for label in found if label != ATTENTION_OPERATORS[-1][1]]
    if found:
        return " + ".join(dict.fromkeys(found))
    if any("softmax" in name for name in names) and any(op in name for name in names for op in ("bmm", "matmul")):
        return "unfused (matmul + softmax)"
    return "unknown"
