"""T5 encoders (ProtT5, Ankh) inside the ``hf`` target: which class to build, what a
checkpoint's keys say, and how the precision policies map onto T5's layout.

T5 differs from the BERT family in the places that matter for FP16:

- The residual adds sit inside ``T5LayerSelfAttention`` / ``T5LayerFF`` (no ``*Output``
  modules), and type promotion decides their dtype: an FP32 operand makes the sum FP32. So an
  FP32 input embedding (``fp16+res32``) makes the whole residual stream FP32, and so does any
  FP32 feed-forward output (transformers' FP32 ``wo``, or an FP32 MLP island).
- ``T5LayerNorm`` is an RMS norm without ``normalized_shape``; it already accumulates its
  variance in FP32 and casts to its weight's dtype, so an FP32 island on it changes only the
  rounding of the scale.
- Positions enter as a relative position bias: a learned table (``relative_attention_bias``, in
  the first block only) looked up per (query, key) bucket and added to the attention scores of
  every block. It is a positional table, so ``fp32_positional`` keeps it FP32 and adds it to
  FP32 scores before an FP32 softmax.
- ``compute_bias`` returns the table's lookup permuted to (1, heads, L, L) without copying, so
  the last dimension has a stride of ``heads``. Added to the padding mask, that layout reaches
  ``scaled_dot_product_attention`` as its ``attn_mask``, and every fused CUDA kernel refuses a
  mask whose last stride is not 1: transformers 5.17 runs T5's "sdpa" attention on the math
  backend (measured on an H200, bench/t5_attention_kernel.py). The fast-attention policies lay
  the lookup out so that the permuted bias is contiguous (``contiguous_position_bias``).
- In FP16, every ``T5Block`` clamps its hidden states to +-(65504 - 1000) once an Inf appears
  (transformers' workaround for FP16 training): an overflow shows up as drift, not as NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fp16guard.errors import UnsupportedPolicyError
from fp16guard.numerics.policy import Policy
from fp16guard.numerics.precision import located_parts, make_fp32_island

#: config.model_type -> the transformers class that builds its encoder alone
ENCODER_CLASSES = {"t5": "T5EncoderModel"}

CLAMP_NOTE = (
    "T5 blocks clamp FP16 hidden states to +-64504 once an Inf appears (transformers' FP16 training "
    "workaround): an overflow shows up as drifted embeddings rather than NaN"
)


def encoder_class(config) -> str | None:
    """The encoder-only class for ``config`` (T5: ``T5EncoderModel``), None for other models."""
    return ENCODER_CLASSES.get(getattr(config, "model_type", None))


def is_t5(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers T5 model (encoder-only or encoder-decoder)."""
    config = getattr(module, "config", None)
    return getattr(config, "model_type", None) in ENCODER_CLASSES and isinstance(
        getattr(getattr(module, "encoder", None), "block", None), nn.ModuleList
    )


def uses_attention_interface(module: nn.Module) -> bool:
    """Whether this transformers version's T5 attention calls the swappable attention function
    (transformers 5 does; 4.x computes scores, bias and softmax inline)."""
    import sys

    block = module.encoder.block[0]
    return hasattr(sys.modules[type(block).__module__], "eager_attention_forward")


def contiguous_position_bias(module: nn.Module) -> int:
    """Make every ``relative_attention_bias`` lookup come out with (heads, query, key) as its
    memory order, so that T5's ``permute([2, 0, 1])`` of it is contiguous and the fused SDPA
    kernels accept the mask built from it. The values are unchanged. Returns the tables hooked."""

    def heads_major(_module, _args, out: torch.Tensor) -> torch.Tensor:
        # (q, k, h) values stored as (h, q, k): permuting to (h, q, k) then needs no copy.
        return out.permute(2, 0, 1).contiguous().permute(1, 2, 0) if out.dim() == 3 else out

    tables = [m for n, m in module.named_modules() if n.endswith("relative_attention_bias")]
    for table in tables:
        table.register_forward_hook(heads_major)
    return len(tables)


def checkpoint_keys(weight_files: Sequence) -> list[str]:
    """Tensor names in the weight files, read from the safetensors headers or, for
    ``pytorch_model*.bin``, a weights-only memory-mapped load (no tensor data is read)."""
    keys: list[str] = []
    for path in weight_files:
        if str(path).endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                keys += list(handle.keys())
        else:
            keys += list(torch.load(path, map_location="cpu", weights_only=True, mmap=True).keys())
    return keys


def _shown(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _stack(key: str) -> str:
    return "decoder" if key.startswith("decoder.") or ".decoder." in key else "encoder"


def describe_mismatch(class_name: str, missing: list[str], unexpected: list[str]) -> str:
    """Why a checkpoint does not fit the model built for it, with missing and unexpected keys
    named apart and split into encoder and decoder parameters."""
    parts = []
    for stack in ("encoder", "decoder"):
        lacking = [k for k in missing if _stack(k) == stack]
        if lacking:
            parts.append(
                f"{len(lacking)} {stack} parameter(s) that {class_name} needs are missing from the checkpoint "
                f"({_shown(lacking)})"
            )
    if unexpected:
        parts.append(
            f"{len(unexpected)} parameter(s) in the checkpoint fit no part of {class_name} ({_shown(unexpected)})"
        )
    text = "; ".join(parts)
    if missing and all(_stack(k) == "decoder" for k in missing):
        text += (
            f". {class_name} is an encoder-decoder and the checkpoint holds its encoder only: fp16guard runs the "
            "encoders of T5 models alone (T5EncoderModel), not other encoder-decoders"
        )
    return text


# --- policies --------------------------------------------------------------------------------


def _island(module: nn.Module, first_dtype: torch.dtype, rest_dtype: torch.dtype) -> nn.Module:
    """An FP32 island for a T5 block or attention module, whose outputs are a tuple: the first
    (hidden states) is cast to ``first_dtype``, the position biases after it to ``rest_dtype``."""
    module.float()

    def inputs_to_fp32(_module, args, kwargs):
        up = lambda v: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v  # noqa: E731
        return tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}

    def outputs(_module, _args, _kwargs, output):
        if not isinstance(output, tuple):
            return output.to(first_dtype)
        cast = [first_dtype] + [rest_dtype] * (len(output) - 1)
        return tuple(
            o.to(d) if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o, d in zip(output, cast)
        )

    module.register_forward_pre_hook(inputs_to_fp32, with_kwargs=True)
    module.register_forward_hook(outputs, with_kwargs=True)
    return module


def _norms(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """T5's RMS norms under ``root`` (``T5LayerNorm``: a LayerNorm by name, with ``variance_epsilon``), named."""
    return [
        (n, m) for n, m in root.named_modules()
        if type(m).__name__.endswith("LayerNorm") and hasattr(m, "variance_epsilon")
    ]


def block_parts(block: nn.Module) -> dict:
    """A T5Block's self-attention and its feed-forward (``DenseReluDense``: wi or wi_0/wi_1,
    the activation, wo)."""
    parts = {}
    attention = getattr(block.layer[0], "SelfAttention", None)
    if attention is not None:
        parts["attention"] = attention
    feed_forward = getattr(block.layer[-1], "DenseReluDense", None)
    if feed_forward is not None:
        parts["mlp"] = feed_forward
    return parts


def apply_islands(
    module: nn.Module, blocks: list[nn.Module], policy: Policy, dtype: torch.dtype, fp32_bias: bool
) -> tuple[list[str], list[nn.Module], list[str]]:
    """The FP32 islands of ``policy`` on a T5 model: (names for the report, modules to keep out
    of the cast, notes). ``fp32_bias``: the attention function accepts an FP32 position bias
    (the FP32-softmax eager function); otherwise the bias is handed on in ``dtype``."""
    names = {id(m): n for n, m in module.named_modules()}
    islands: list[str] = []
    keep: list[nn.Module] = []
    notes: list[str] = []
    bias_dtype = torch.float32 if fp32_bias else dtype
    if policy.fp32_residual:
        # One FP32 operand is enough: every residual add after the embedding promotes to FP32,
        # and every T5LayerNorm reads FP32 and hands its weight's dtype on.
        # The stack's own embedding: transformers 5 builds it apart from `shared` (tied weights).
        embedding = module.encoder.embed_tokens
        embedding.register_forward_hook(lambda _m, _a, out: out.float())
        name = names.get(id(embedding), "encoder.embed_tokens")
        islands.append(f"{name} output: the residual stream (every residual add in FP32)")
    if policy.fp32_layer_norms:
        for name, norm in _norms(module):
            keep.append(make_fp32_island(norm, dtype))
            islands.append(name)
    if policy.fp32_positional:
        tables = [(n, m) for n, m in module.named_modules() if n.endswith("relative_attention_bias")]
        # The table sits in the first block's attention. When that attention computes in FP32
        # (a whole-block or attention island), the bias it builds must be FP32 too: fused SDPA
        # refuses a mask of another dtype than the query's, and an FP32 island should not see
        # an FP16-rounded bias.
        owner_fp32 = bool(blocks) and (1 in policy.fp32_blocks or ("attention", 1) in policy.fp32_parts)
        first_block = {id(m) for m in blocks[0].modules()} if blocks else set()
        for name, table in tables:
            inside_fp32 = owner_fp32 and id(table) in first_block
            keep.append(make_fp32_island(table, torch.float32 if inside_fp32 else bias_dtype))
            islands.append(f"{name} (relative position bias{', FP32 into FP32 scores' if fp32_bias else ''})")
        if tables and not fp32_bias:
            notes.append(
                "T5's relative position bias is a learned table: it enters the attention in the compute dtype "
                "(a fused kernel's mask has the query's dtype), so keeping the table in FP32 changes nothing"
            )
    if policy.fp32_blocks and max(policy.fp32_blocks) > len(blocks):
        raise UnsupportedPolicyError(
            f"the policy keeps block {max(policy.fp32_blocks)} in FP32, but the model has {len(blocks)} blocks"
        )
    for number in policy.fp32_blocks:
        # The block's hidden states leave it in FP32: cast back to FP16, a value beyond 65504
        # that the FP32 block computed (a wo overflow) would be Inf again. The next blocks then
        # add in FP32 by promotion, as they do after transformers' FP32 wo.
        keep.append(_island(blocks[number - 1], torch.float32, bias_dtype))
        islands.append(f"{names[id(blocks[number - 1])]} (whole block, FP32 output)")
    # The shapes of precision.part_islands, with T5's islands: RMS norms as hook islands, the
    # attention handing on a bias in ``bias_dtype``, and the feed-forward as one FP32 module.
    for kind, block, block_name, part in located_parts(module, blocks, policy.fp32_parts, block_parts):
        if kind == "layer_norm":
            for name, norm in _norms(block):
                keep.append(make_fp32_island(norm, dtype))
                islands.append(f"{block_name}.{name}")
        elif kind == "attention":
            keep.append(_island(part, dtype, bias_dtype))
            islands.append(f"{names[id(part)]} (attention)")
        else:
            # The feed-forward's output stays FP32 for the residual add, as with FP32 wo.
            keep.append(make_fp32_island(part, torch.float32))
            islands.append(f"{names[id(part)]} (MLP: wi .. wo, FP32 output)")
    return islands, keep, notes
