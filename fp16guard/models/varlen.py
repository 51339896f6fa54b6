"""Attention over packed batches: each sequence attends only to itself.

On CUDA in FP16/BF16 this is one call of torch's variable-length flash attention
(``torch.nn.attention.varlen.varlen_attn``, in PyTorch since 2.10). Elsewhere (the CPU, an FP32
island, a dtype the kernel does not take) the same function is computed sequence by sequence
with ``scaled_dot_product_attention``: slower, the same mathematics, so that the layout's logic
(offsets, positions, pooling) is testable anywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fp16guard.errors import UnsupportedPolicyError


def varlen_kernel():
    """torch's variable-length attention function, or None on a torch without it (< 2.10)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def require_packing() -> None:
    """Raise UnsupportedPolicyError when this torch cannot run the packed layout."""
    if varlen_kernel() is None:
        raise UnsupportedPolicyError(
            "the packed layout needs torch >= 2.10 (torch.nn.attention.varlen), and this is torch "
            f"{torch.__version__}; use a padded policy such as fp16+sdpa"
        )


def uses_varlen_kernel(q: torch.Tensor) -> bool:
    """Whether ``packed_attention`` runs the fused variable-length kernel for ``q``."""
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and varlen_kernel() is not None


_ALIBI_SUPPORT: dict[torch.device, bool] = {}


def flash_alibi_supported(device: torch.device) -> bool:
    """Whether this PyTorch's flash-attention build adds ALiBi from slopes on ``device``
    (probed once per device with a tiny call). PyTorch 2.11's CUDA build does not: "This flash
    attention build does not support alibi" (measured on an H200)."""
    if device not in _ALIBI_SUPPORT:
        q = torch.zeros(2, 1, 8, dtype=torch.float16, device=device)
        cu = torch.tensor([0, 2], dtype=torch.int32, device=device)
        slopes = torch.ones(1, dtype=torch.float32, device=device)
        try:
            torch.ops.aten._flash_attention_forward(q, q, q, cu, cu, 2, 2, 0.0, False, False, alibi_slopes=slopes)
            _ALIBI_SUPPORT[device] = True
        except (RuntimeError, TypeError):
            _ALIBI_SUPPORT[device] = False
    return _ALIBI_SUPPORT[device]


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed,
                     alibi_slopes: torch.Tensor | None = None, max_seqlen: int | None = None) -> torch.Tensor:
    """Softmax(q k^T / sqrt(head_dim) + bias) v within each sequence of ``packed`` (a
    PackedBatch on q's device); q, k, v and the result are [N, heads, head_dim].

    ``alibi_slopes`` [heads] (FP32) add the symmetric ALiBi bias -slope * |i - j| within each
    sequence. Where the flash build supports it, the kernel computes the bias in FP32 from the
    slopes alone (the varlen operator ``varlen_attn`` calls takes them), so no [heads, T, T]
    table is built; where it does not (PyTorch 2.11 on CUDA), UnsupportedPolicyError: the
    sequence-by-sequence path would be correct but slower than padding, and packing is only
    worth offering where it is fast.

    ``max_seqlen`` (default: the pack's longest sequence) may be any upper bound on the
    sequence lengths: the fused kernel sizes its grid by it and takes each sequence's extent from
    ``cu_seqlens``; a fixed bound lets one compiled graph serve packs of every length."""
    if uses_varlen_kernel(q):
        cu = packed.cu_seqlens
        longest = packed.max_seqlen if max_seqlen is None else max_seqlen
        if alibi_slopes is None:
            return varlen_kernel()(q, k, v, cu, cu, longest, longest)
        if not flash_alibi_supported(q.device):
            raise UnsupportedPolicyError(
                "this PyTorch's flash-attention build has no ALiBi support, so DNABERT cannot run packed on this GPU; "
                "its padded fused attention (fp16+sdpa) is the fast path here"
            )
        return torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, longest, longest, 0.0, False, False, alibi_slopes=alibi_slopes
        )[0]
    return _by_sequence(q, k, v, packed, alibi_slopes)


def keep_loops_out_of_compiled_graphs() -> None:
    """Keep the per-sequence attention loop out of compiled graphs (which would otherwise unroll
    one loop per pack). Called when a model is compiled, rather than decorating the function at
    import: ``torch.compiler.disable`` imports the compiler, about a second of start-up for a run
    that never compiles (measured on a CPU machine with torch 2.13)."""
    global _by_sequence
    _by_sequence = torch.compiler.disable(_attention_by_sequence)


def _attention_by_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed,
                           alibi_slopes: torch.Tensor | None) -> torch.Tensor:
    """packed_attention without the fused kernel: SDPA on each sequence in turn (the pack is
    handed over whole, so that a compiler does not specialise on its number of sequences)."""
    bounds = packed.offsets
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        # [L, H, Dh] -> [1, H, L, Dh] for SDPA, and back
        part = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]
        bias = None
        if alibi_slopes is not None:
            positions = torch.arange(end - start, device=q.device, dtype=torch.float32)
            distance = -(positions[None, :] - positions[:, None]).abs()
            bias = (alibi_slopes.float()[:, None, None] * distance[None])[None].to(q.dtype)
        out[start:end] = F.scaled_dot_product_attention(*part, attn_mask=bias)[0].transpose(0, 1)
    return out


_by_sequence = _attention_by_sequence


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dimension, as rotary embeddings use it."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)
