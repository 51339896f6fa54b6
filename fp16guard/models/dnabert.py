"""DNABERT-2 and DNABERT-S (the MosaicBERT architecture), implemented natively.

The published checkpoints ship their architecture as remote code that needs
trust_remote_code and an old transformers, whose Triton kernel breaks on current Triton and
whose PyTorch path fails in FP16 (its FP32 ALiBi bias meets FP16 values). This module builds
the same network from plain PyTorch, loads the same checkpoint files, and runs under any
transformers (used only for the tokenizer).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fp16guard.core.config import ModelSource
from fp16guard.errors import ModelLoadError, UnsupportedPolicyError
from fp16guard.models.base import LoadedModel, no_class_fp32_note
from fp16guard.models.batch import PackedBatch
from fp16guard.models.catalog import DNABERT_SPEC
from fp16guard.models.hf import HF, HfEncoding, HfTarget, quiet_transformers, read_tokenizer, resolve_model_dir
from fp16guard.models.loading import hash_in_background, load_failure
from fp16guard.models.varlen import packed_attention, require_packing
from fp16guard.numerics.policy import Policy
from fp16guard.numerics.precision import (
    AppliedPolicy,
    Fp32LayerNorm,
    block_islands,
    cast_except,
    layer_norm_islands,
    part_islands,
)

IUPAC_AMBIGUITY = "RYSWKMBDHV"
PADDING_BIAS = -10000.0  # what MosaicBERT adds for padded keys (not -inf)
IGNORED_PREFIXES = ("cls.", "pooler.")  # masked-LM heads and the pooler: not part of embeddings


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi head slopes (Press et al.): for n a power of two, start = 2^(-8/n) and slope_i =
    start^(i+1); otherwise the slopes for the largest power of two m below n, then every other
    slope for 2m heads, up to n."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    m = 2 ** math.floor(math.log2(heads))
    return power_of_two(m) + power_of_two(2 * m)[0::2][: heads - m]


@dataclass(frozen=True)
class DnaBertConfig:
    """The fields of a DNABERT config.json that shape the network."""

    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, data: dict) -> DnaBertConfig:
        """The config of a config.json's fields (others ignored, missing ones defaulted)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


class DnaBertEmbeddings(nn.Module):
    """Word and token-type embeddings, then LayerNorm; ALiBi replaces position embeddings."""

    def __init__(self, config: DnaBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, T, D] of token ids [B, T] (token type 0 throughout)."""
        token_types = torch.zeros_like(input_ids)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.token_type_embeddings(token_types))


class DnaBertSelfAttention(nn.Module):
    """Fused QKV projection; scores plus the ALiBi-and-padding bias; softmax; times V.

    By default through scaled_dot_product_attention with the bias as an additive mask in the
    compute dtype: the bias is built in FP32 and rounded once to FP16 (ALiBi values near 0,
    where softmax weights matter, keep 11 significant bits; -10000 on padding is exact). An
    additive bias rules out the flash kernel; on CUDA the memory-efficient kernel takes it in
    the compute dtype and accumulates the softmax in FP32. An FP32 bias with FP16 q/k/v is
    refused by the fused kernels, hence the cast. With ``fp32_scores`` the scores, bias and
    softmax are FP32 (separate matmuls) and only the probabilities are cast back.
    """

    def __init__(self, config: DnaBertConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.fp32_scores = False

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor | PackedBatch) -> torch.Tensor:
        """Attention output [B, T, D]; ``bias`` the additive bias [B or 1, H, T, T], or a pack."""
        if isinstance(bias, PackedBatch):
            return self._packed(hidden, bias)
        batch, length, width = hidden.shape
        qkv = self.Wqkv(hidden).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.fp32_scores:
            scores = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(self.head_dim) + bias
            out = torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias if bias.dtype == q.dtype else bias.to(q.dtype))
        return out.transpose(1, 2).reshape(batch, length, width)

    def _packed(self, hidden: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
        """A pack [1, N, D]: ALiBi within each sequence through the flash kernel's own slopes
        (no bias table; there is no padding, so no mask either)."""
        _, tokens, width = hidden.shape
        q, k, v = self.Wqkv(hidden[0]).view(tokens, 3, self.heads, self.head_dim).unbind(1)
        slopes = torch.tensor(alibi_slopes(self.heads), dtype=torch.float32, device=hidden.device)
        return packed_attention(q, k, v, packed, alibi_slopes=slopes).reshape(1, tokens, width)


class DnaBertSelfOutput(nn.Module):
    """Output projection, then post-LN of it plus the residual; ``fp32_residual`` adds in FP32."""

    def __init__(self, config: DnaBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fp32_residual = False

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LayerNorm(dense(hidden) + residual)."""
        out = self.dense(hidden)
        return self.LayerNorm(out.float() + residual.float() if self.fp32_residual else out + residual)


class DnaBertAttention(nn.Module):
    """Self-attention and its output projection with the post-LN residual."""
    def __init__(self, config: DnaBertConfig):
        super().__init__()
        self.self = DnaBertSelfAttention(config)
        self.output = DnaBertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The attention block's output for ``hidden`` under ``bias``."""
        return self.output(self.self(hidden, bias), hidden)


class DnaBertGatedMlp(nn.Module):
    """Gated-GELU MLP: exact GELU of the first half times the second half, projected back, then
    post-LN with the residual; ``fp32_residual`` adds in FP32."""

    def __init__(self, config: DnaBertConfig):
        super().__init__()
        self.intermediate = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fp32_residual = False

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """LayerNorm(wo(GELU(gate) * linear) + hidden)."""
        projected = self.gated_layers(hidden)
        gated, linear = projected[..., : self.intermediate], projected[..., self.intermediate :]
        out = self.wo(F.gelu(gated) * linear)
        return self.layernorm(out.float() + hidden.float() if self.fp32_residual else out + hidden)


class DnaBertLayer(nn.Module):
    """One encoder layer: attention, then the gated MLP."""
    def __init__(self, config: DnaBertConfig):
        super().__init__()
        self.attention = DnaBertAttention(config)
        self.mlp = DnaBertGatedMlp(config)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The layer's output for ``hidden`` under ``bias``."""
        return self.mlp(self.attention(hidden, bias))


class DnaBertEncoder(nn.Module):
    """The stack of layers and their ALiBi slopes."""
    def __init__(self, config: DnaBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(DnaBertLayer(config) for _ in range(config.num_hidden_layers))
        # Plain floats, not a buffer: a model-wide cast must never round the slopes.
        self.slopes = alibi_slopes(config.num_attention_heads)

    def attention_bias(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """FP32 slope_h * -|i - j|, plus -10000 on padded keys: [B, H, T, T], or [1, H, T, T]
        when no row has padding (the kernel broadcasts it over the batch).

        The last dimension is allocated padded to a multiple of 8 and sliced back, so the rows
        are 16-byte aligned in FP16 as the memory-efficient kernel wants its bias (it would
        otherwise copy it into an aligned buffer at every call)."""
        length = attention_mask.shape[-1]
        device = attention_mask.device
        positions = torch.arange(length, device=device, dtype=torch.float32)
        distance = -(positions[None, :] - positions[:, None]).abs()
        slopes = torch.tensor(self.slopes, device=device, dtype=torch.float32)
        padded = bool((attention_mask == 0).any())
        rows = attention_mask.shape[0] if padded else 1
        bias = torch.empty(rows, len(self.slopes), length, -(-length // 8) * 8, device=device)[..., :length]
        torch.mul(slopes[:, None, None], distance[None], out=bias[0])
        if padded:
            bias[1:] = bias[0]
            bias += (1.0 - attention_mask[:, None, None, :].float()) * PADDING_BIAS
        return bias

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Hidden states after the embeddings and after every layer."""
        bias = self.attention_bias(attention_mask)
        # The bias in each block's compute dtype, cast once per forward rather than per block.
        # Blocks that compute scores in FP32 (fp32_scores, or an FP32 block) get the FP32 bias.
        by_dtype = {torch.float32: bias}
        states = [hidden]
        for layer in self.layer:
            attention = layer.attention.self
            dtype = torch.float32 if attention.fp32_scores else attention.Wqkv.weight.dtype
            if dtype not in by_dtype:
                by_dtype[dtype] = _aligned_cast(bias, dtype)
            hidden = layer(hidden, by_dtype[dtype])
            states.append(hidden)
        return states


def _aligned_cast(bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``bias`` in ``dtype``, keeping its rows 16-byte aligned (see attention_bias)."""
    length = bias.shape[-1]
    out = torch.empty(*bias.shape[:-1], -(-length // 8) * 8, dtype=dtype, device=bias.device)[..., :length]
    return out.copy_(bias)


class DnaBertModel(nn.Module):
    """The DNABERT-2/DNABERT-S encoder; returns the hidden states of every layer (0 = embeddings)."""

    def __init__(self, config: DnaBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = DnaBertEmbeddings(config)
        self.encoder = DnaBertEncoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Hidden states of every layer, 0 being the embeddings; padding where ``attention_mask`` is 0."""
        return self.encoder(self.embeddings(input_ids), attention_mask)


def read_state_dict(model_dir: Path) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """Encoder weights from model.safetensors or pytorch_model.bin (weights only), with the
    ``bert.`` prefix removed and the heads and pooler dropped."""
    safetensors = sorted(model_dir.glob("*.safetensors"))
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if not safetensors and not bins:
        raise ModelLoadError(f"{model_dir}: no weights (model.safetensors or pytorch_model.bin)")
    state: dict[str, torch.Tensor] = {}
    path = (safetensors or bins)[0]
    try:
        if safetensors:
            from safetensors.torch import load_file

            for path in safetensors:
                state.update(load_file(path))
        else:
            for path in bins:
                state.update(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # gzip, corrupt or truncated file, pickled code
        raise ModelLoadError(f"{path}: {load_failure(path, exc, 'cannot read the weights')}") from None
    cleaned = {}
    for key, value in state.items():
        key = key[len("bert.") :] if key.startswith("bert.") else key
        if not key.startswith(IGNORED_PREFIXES):
            cleaned[key] = value
    return cleaned, safetensors or bins


def native_encoder(config: DnaBertConfig, state: dict[str, torch.Tensor], model_dir: Path) -> DnaBertModel:
    """The native encoder holding ``state`` in FP32, built without initialising it first;
    ModelLoadError when the weights do not fit it."""
    with torch.device("meta"):
        module = DnaBertModel(config)
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = [f"missing {', '.join(missing[:5])}" if missing else "",
                 f"unexpected {', '.join(unexpected[:5])}" if unexpected else ""]
        raise ModelLoadError(f"{model_dir}: weights do not fit the DNABERT encoder: {'; '.join(p for p in parts if p)}")
    module.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return module


class DnabertTarget(HfTarget):
    """DNABERT-2/DNABERT-S: the native encoder with the checkpoint's own tokenizer."""

    input_alphabet = "ACGTN" + IUPAC_AMBIGUITY
    ambiguity_codes = IUPAC_AMBIGUITY
    supports_packing = True
    unknown_letters = "N"  # what a byte-pair vocabulary trained on clean A/C/G/T may lack

    def load(self, source: ModelSource) -> LoadedModel:
        """Read config.json, the weights and the tokenizer; build the native encoder in FP32."""
        if source.trust_remote_code:
            # Only on request: the checkpoint's own code, through transformers' AutoModel.
            return HF.load(source)
        name = source.model or self.spec.default_model
        model_dir = resolve_model_dir(name, source.offline)
        try:
            config = DnaBertConfig.from_json(json.loads((model_dir / "config.json").read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"{model_dir}: cannot read config.json ({exc})") from None
        state, weight_files = read_state_dict(model_dir)
        digest = hash_in_background(weight_files)
        module = native_encoder(config, state, model_dir)
        with quiet_transformers():
            tokenizer = read_tokenizer(model_dir, trust_remote_code=False)
        if tokenizer.pad_token_id is None:
            raise ModelLoadError(f"{model_dir}: the tokenizer has no padding token")
        vocab_letters = "".join(sorted(t for t in tokenizer.get_vocab() if len(t) == 1 and t.isalpha() and t.isupper()))
        return LoadedModel(
            target=self.name,
            name=name,
            source=str(model_dir),
            module=module.eval(),
            num_layers=config.num_hidden_layers,
            weights_sha256=digest.result(),
            alphabet=vocab_letters or "ACGTN",
            max_length=None,  # ALiBi: no position limit, memory is the limit
            encoding=HfEncoding(tokenizer.pad_token_id, tokenizer, separator="", pooling=source.pooling),
        )

    def read_as_unknown(self, loaded: LoadedModel) -> str:
        """Those of ``unknown_letters`` outside the vocabulary that the checkpoint's own tokenizer
        reads as its unknown token (as it does when the model is used outside fp16guard)."""
        tokenizer = loaded.encoding.tokenizer
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is None:
            return ""
        return "".join(
            letter for letter in self.unknown_letters
            if letter not in loaded.alphabet and tokenizer(letter, add_special_tokens=False)["input_ids"] == [unk]
        )

    def hidden_states(self, loaded: LoadedModel, module: nn.Module, tokens: torch.Tensor,
                      layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Every layer's output of the native model, from one forward pass; the remote-code model as HF runs it."""
        if not isinstance(module, DnaBertModel):  # the remote-code model, on request
            return super().hidden_states(loaded, module, tokens, layers)
        states = module(tokens, (tokens != loaded.encoding.pad_id).long())
        return {layer: states[layer] for layer in layers}

    def packed_hidden_states(self, loaded: LoadedModel, module: nn.Module, packed: PackedBatch,
                             layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Hidden states [N, D] of each of ``layers`` for a packed batch: every layer of the
        native model, up to the deepest asked for, runs on [1, N, D], its attention confined to
        each sequence with ALiBi restarting there."""
        if not isinstance(module, DnaBertModel):
            raise UnsupportedPolicyError("the packed layout runs fp16guard's native DNABERT only, not remote code")
        hidden = module.embeddings(packed.tokens[None])
        out = {0: hidden[0]} if 0 in layers else {}
        for number, block in enumerate(module.encoder.layer[: max(layers)], start=1):
            hidden = block(hidden, packed)
            if number in layers:
                out[number] = hidden[0]
        return {layer: out[layer] for layer in layers}

    def adapts(self, module: nn.Module) -> bool:
        """Whether ``module`` is fp16guard's native DNABERT."""
        return isinstance(module, DnaBertModel)

    def block_parts(self, block: nn.Module) -> dict:
        """The native layer's attention and gated MLP; a transformers layer as HF reads it."""
        if isinstance(block, DnaBertLayer):
            return {"attention": block.attention.self, "mlp": (block.mlp.gated_layers, block.mlp.wo)}
        return super().block_parts(block)

    def apply_policy(self, module: nn.Module, policy: Policy) -> AppliedPolicy:
        """Layer norms as FP32 islands; the ALiBi-plus-mask bias and softmax in FP32; each
        post-LN residual add in FP32 inside its island."""
        if not isinstance(module, DnaBertModel):
            return super().apply_policy(module, policy)
        if policy.layout == "packed":
            require_packing()
        if policy.is_full_precision:
            module.float()
            return AppliedPolicy(policy, notes=("the ALiBi bias is built in FP32 under every policy",))
        islands: list[str] = []
        for name, sub in module.named_modules():
            if isinstance(sub, (DnaBertSelfOutput, DnaBertGatedMlp)):
                sub.fp32_residual = policy.fp32_residual
                if policy.fp32_residual:
                    islands.append(f"{name} (residual add)")
            if isinstance(sub, DnaBertSelfAttention):
                # The fused kernel takes its bias in the compute dtype: fast attention keeps the
                # FP32-built ALiBi table but not the FP32 scores.
                sub.fp32_scores = policy.fp32_positional and not policy.fast_attention
                if sub.fp32_scores:
                    islands.append(f"{name} (ALiBi bias and softmax)")
        dtype = policy.torch_dtype
        if policy.fp32_layer_norms:
            islands += layer_norm_islands(module, dtype)
        names, blocks = block_islands(module, self.blocks(module), policy.fp32_blocks, dtype)
        part_names, parts = part_islands(module, self.blocks(module), policy.fp32_parts, dtype, self.block_parts)
        islands += names + part_names
        cast_except(module, dtype, [m for m in module.modules() if isinstance(m, Fp32LayerNorm)] + blocks + parts)
        note = "the ALiBi bias is built in FP32, then cast to the compute dtype unless fp32_positional"
        if policy.layout == "packed":
            note = ("packed layout: ALiBi within each sequence computed in FP32 inside the flash kernel from the "
                    "slopes (no bias table)")
        elif policy.fast_attention:
            note = "fused attention: the ALiBi bias is built in FP32 and cast once to the compute dtype for the kernel"
        return AppliedPolicy(policy, tuple(islands), (note, *filter(None, [no_class_fp32_note(module, policy)])))


TARGET = DnabertTarget(DNABERT_SPEC)
