"""The default token budget per batch: from free GPU memory and the model's size."""

from __future__ import annotations

from dataclasses import dataclass

#: On a CPU the budget only bounds host memory per batch; it does not buy speed.
CPU_MAX_TOKENS = 8192
#: Batches beyond this many tokens were measured slower, not faster, with stock fair-esm on an
#: H200 (16,384 tokens was the best of the budgets tried for ESM-2 650M); below MIN, kernels are
#: too small to use a GPU well, and an out-of-memory batch is split anyway.
MAX_TOKENS, MIN_TOKENS = 16384, 1024
#: Budgets are multiples of this, so that a few MiB more or less free memory gives the same batches.
ROUND_TO = 1024
#: Share of the free memory the estimate may plan for: the caching allocator fragments, and
#: cuBLAS keeps workspaces.
USABLE_FRACTION = 0.8
#: FP32 activations alive at the peak of one block, in multiples of the hidden size per token:
#: the residual stream, the layer norm's output, q, k and v, rotated q and k, the attention
#: output and its projection, layout copies, and the representation kept for pooling.
HIDDEN_COPIES = 12
#: The FFN's activations (its input projection and the GELU's output).
FFN_COPIES = 2
#: Attention matrices of heads x length per token: the scores and their FP32 softmax, which
#: fair-esm's bmm attention materialises (quadratic in the padded length).
SCORE_COPIES = 2


@dataclass(frozen=True)
class ModelDims:
    """What the per-token activation estimate needs to know about a model."""

    hidden: int
    heads: int
    ffn: int


def model_dims(module) -> ModelDims:
    """Hidden size, attention heads and FFN width of a fair-esm ESM2, a transformers model or
    the native DNABERT (all keep them in a ``config``, or fair-esm in attributes)."""
    config = getattr(module, "config", None)
    if config is not None and getattr(config, "hidden_size", None):
        hidden = int(config.hidden_size)
        heads = int(getattr(config, "num_attention_heads", 1) or 1)
        return ModelDims(hidden, heads, int(getattr(config, "intermediate_size", 0) or 4 * hidden))
    if hasattr(module, "embed_dim") and hasattr(module, "attention_heads"):
        hidden = int(module.embed_dim)
        fc1 = getattr(module.layers[0], "fc1", None) if len(getattr(module, "layers", ())) else None
        return ModelDims(hidden, int(module.attention_heads), int(fc1.out_features) if fc1 is not None else 4 * hidden)
    # Anything else: the widest embedding table as the hidden size, a standard 4x FFN.
    widths = [m.embedding_dim for m in module.modules() if hasattr(m, "embedding_dim")]
    hidden = max(widths, default=1024)
    return ModelDims(hidden, max(1, hidden // 64), 4 * hidden)


def activation_bytes_per_token(dims: ModelDims, length: int) -> int:
    """Estimated FP32 activation bytes per token at the peak of a forward pass, for batches
    padded to ``length`` tokens (the attention term grows with it)."""
    return 4 * (HIDDEN_COPIES * dims.hidden + FFN_COPIES * dims.ffn + SCORE_COPIES * dims.heads * length)


def estimate_max_tokens(free_bytes: int, weight_bytes: int, dims: ModelDims, length: int) -> tuple[int, str]:
    """Token budget for the FP32 reference pass on a GPU with ``free_bytes`` free, the FP32
    weights (``weight_bytes``) resident, sequences padded to at most ``length`` tokens; with
    the reason, for the report. Pure: no device is queried."""
    per_token = activation_bytes_per_token(dims, length)
    room = USABLE_FRACTION * free_bytes - weight_bytes
    raw = int(room // per_token) if room > 0 else 0
    budget = min(MAX_TOKENS, max(MIN_TOKENS, raw // ROUND_TO * ROUND_TO))
    derivation = (
        f"{free_bytes / 1024**3:.1f} GiB free, {weight_bytes / 1024**3:.2f} GiB FP32 weights, "
        f"~{per_token / 1024:.0f} KiB of activations per token at {length} tokens "
        f"(hidden {dims.hidden}, {dims.heads} heads, FFN {dims.ffn})"
    )
    if room <= 0:
        outcome = f"the weights leave no room in {USABLE_FRACTION:.0%} of free memory: the floor, {MIN_TOKENS}"
    elif raw > MAX_TOKENS:
        outcome = f"room for {raw:,}, capped at {MAX_TOKENS:,} (larger batches are not faster)"
    elif raw < MIN_TOKENS:
        outcome = f"room for {raw:,}, raised to the floor of {MIN_TOKENS:,}"
    else:
        outcome = f"room for {raw:,} -> {budget:,}"
    return budget, f"auto: {derivation}: {outcome}"


def auto_max_tokens(module, num_parameters: int, device, length: int, resident_factor: float = 1.0) -> tuple[int, str]:
    """The default budget on ``device`` (a torch.device): derived from free memory on CUDA, a
    fixed one on CPU. ``resident_factor`` scales the FP32 weights that stay on the GPU (1.5
    when an FP16 copy runs beside the FP32 model)."""
    if device.type != "cuda":
        return CPU_MAX_TOKENS, f"auto: the fixed default on {device.type}"
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return estimate_max_tokens(free, int(4 * num_parameters * resident_factor), model_dims(module), length)
