"""Any Hugging Face encoder (AutoModel + AutoTokenizer), and presets such as AntiBERTy.

No remote code runs unless the user asks for it; weights load weights-only (safetensors, or
pickle restricted to tensors).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..catalog import PRESETS, Preset
from ..errors import InputError, ModelLoadError, UnsupportedPolicyError
from ..policy import Policy
from ..precision import (
    AppliedPolicy,
    Fp32LayerNorm,
    block_islands,
    cast_except,
    layer_norm_islands,
    make_fp32_island,
    part_islands,
    replace_module,
)
from .base import LoadedModel, ModelSource, hash_in_background, is_gzip, load_failure

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FP32_SOFTMAX = "fp16guard_fp32_softmax"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def fp32_softmax_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    """Eager attention whose scores and softmax are FP32 (transformers' eager attention runs its
    softmax in the input dtype); the probabilities are cast back before multiplying the values."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling
    if attention_mask is not None:
        scores = scores + attention_mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def register_fp32_softmax() -> bool:
    """Make FP32_SOFTMAX an attention implementation transformers can use; False if it cannot."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError:
        return False
    AttentionInterface.register(FP32_SOFTMAX, fp32_softmax_attention)
    # Custom attention names get no padding mask unless a mask builder is registered too.
    AttentionMaskInterface.register(FP32_SOFTMAX, eager_mask)
    return True


class Fp32ResidualOutput(nn.Module):
    """A transformers ``*Output`` block (dense, dropout, residual add, and for post-LN models a
    LayerNorm) whose residual add runs in FP32.

    Post-LN (BERT): the FP32 sum goes straight into the layer-norm island. Pre-LN (ESM): the FP32
    sum is returned, so the residual stream between blocks stays FP32 and the next layer-norm
    island reads it. Child names are kept, so module names and state-dict keys do not change.
    """

    def __init__(self, source: nn.Module):
        super().__init__()
        for name, child in source.named_children():
            setattr(self, name, child)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        summed = self.dropout(self.dense(hidden_states)).float() + input_tensor.float()
        norm = getattr(self, "LayerNorm", None)
        return norm(summed) if norm is not None else summed


def is_residual_output(module: nn.Module) -> bool:
    """transformers' BertOutput/BertSelfOutput/EsmOutput pattern: forward(hidden_states, input_tensor)."""
    if not type(module).__name__.endswith("Output") or not hasattr(module, "dense") or not hasattr(module, "dropout"):
        return False
    return "input_tensor" in inspect.signature(type(module).forward).parameters


@contextmanager
def quiet_transformers():
    """Silence transformers' load-time chatter (unused heads, and the like) for one block."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        hf_logging.enable_progress_bar()


def resolve_model_dir(model: str, offline: bool) -> Path:
    """A local directory as is; otherwise a hub id through the Hugging Face cache (downloaded
    unless ``offline``)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.suffix or model.startswith((".", "/", "~")):
        raise ModelLoadError(f"--model {model}: no such directory")
    from huggingface_hub import snapshot_download

    from ..catalog import hf_hub_cache

    patterns = ["*.json", "*.txt", "*.model", *WEIGHT_PATTERNS]
    try:
        # The cache is resolved here, from the environment now (huggingface_hub reads it once,
        # at import), so `fp16guard list` and loading always agree.
        return Path(snapshot_download(model, allow_patterns=patterns, local_files_only=offline, cache_dir=hf_hub_cache()))
    except Exception as exc:  # not cached, no network, unknown repository
        how = "pass a local directory with --model, or run once with network access"
        where = f"not in the Hugging Face cache ({hf_hub_cache()})"
        reason = "offline" if offline else f"and the download failed: {str(exc).splitlines()[0][:200]}"
        raise ModelLoadError(f"model {model!r} {where} {reason}; {how}") from None


class HfTarget:
    """Encoders that transformers' AutoModel loads; ``preset`` pins a packaged model."""

    special_tokens_per_row = 2
    supports_packing = False  # DNABERT, built on this target, packs
    input_alphabet = LETTERS

    def __init__(self, name: str, description: str, preset: Preset | None = None):
        self.name = name
        self.description = description
        self.preset = preset
        self.default_sequences = preset.default_sequences if preset else "protein_reference.fasta"

    def _locate(self, source: ModelSource):
        from transformers import AutoTokenizer, BertTokenizerFast

        if self.preset is None:
            if not source.model:
                raise InputError("--model is required: a local directory or a Hugging Face model id")
            model_dir = resolve_model_dir(source.model, source.offline)
            try:
                tokenizer = AutoTokenizer.from_pretrained(
                    model_dir, local_files_only=True, trust_remote_code=source.trust_remote_code
                )
            except Exception as exc:
                raise ModelLoadError(f"{model_dir}: cannot load its tokenizer ({str(exc).splitlines()[0][:200]})") from None
            return source.model, model_dir, tokenizer
        root = self.preset.package_dir()
        if root is None or not self.preset.available():
            raise ModelLoadError(
                f"{self.preset.name} is not installed; install it with: pip install '{self.preset.requirement.split()[0]}'"
            )
        vocab = root / self.preset.vocab_file
        # from_pretrained on the vocabulary's directory reads vocab.txt the same way across
        # transformers 4 and 5 (whose constructors name the argument differently).
        tokenizer = BertTokenizerFast.from_pretrained(vocab.parent, do_lower_case=False, local_files_only=True)
        return self.preset.name, root / self.preset.model_dir, tokenizer

    def load(self, source: ModelSource) -> LoadedModel:
        """Load the encoder in FP32 and its tokenizer; nothing but weights is unpickled."""
        from transformers import AutoConfig, AutoModel, PreTrainedModel

        if source.pooling not in ("mean", "cls"):
            raise InputError(f"--pooling must be mean or cls, not {source.pooling!r}")
        name, model_dir, tokenizer = self._locate(source)
        weight_files = sorted(p for pattern in WEIGHT_PATTERNS for p in model_dir.glob(pattern))
        if not weight_files:
            raise ModelLoadError(f"{model_dir}: no weights (model.safetensors or pytorch_model.bin)")
        digest = hash_in_background(weight_files)
        kwargs = {"local_files_only": True, "trust_remote_code": source.trust_remote_code}
        if "weights_only" in inspect.signature(PreTrainedModel.from_pretrained).parameters:
            kwargs["weights_only"] = True
        try:
            with quiet_transformers():
                config = AutoConfig.from_pretrained(model_dir, **{k: v for k, v in kwargs.items() if k != "weights_only"})
                module, info = AutoModel.from_pretrained(
                    model_dir, config=config, dtype=torch.float32, output_loading_info=True, **kwargs
                )
        except Exception as exc:  # torch's own advice to drop weights_only is not passed on
            culprit = next((p for p in weight_files if is_gzip(p)), model_dir)
            raise ModelLoadError(f"{culprit}: {load_failure(culprit, exc, 'cannot load the model', 300)}") from None
        # Heads in the checkpoint (cls.*) are ignored; encoder weights that are missing would be
        # silently random, so they are an error.
        missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ModelLoadError(f"{model_dir}: the weights lack encoder parameters: {shown}")
        if tokenizer.pad_token_id is None:
            raise ModelLoadError(f"{model_dir}: the tokenizer has no padding token")
        vocab = tokenizer.get_vocab()
        alphabet = "".join(sorted(t for t in vocab if len(t) == 1 and t in LETTERS)) or LETTERS
        separator = self._separator(tokenizer, alphabet)
        specials = len(tokenizer("A")["input_ids"]) - len(tokenizer("A", add_special_tokens=False)["input_ids"])
        positions = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
        return LoadedModel(
            target=self.name,
            name=name,
            source=str(model_dir),
            module=module.eval(),
            num_layers=int(config.num_hidden_layers),
            weights_sha256=digest.result(),
            alphabet=alphabet,
            max_length=int(positions) - specials,
            extra={"tokenizer": tokenizer, "separator": separator, "pooling": source.pooling, "pad_id": tokenizer.pad_token_id},
        )

    @staticmethod
    def _separator(tokenizer, alphabet: str) -> str:
        """'' if the tokenizer reads residues as written, ' ' if it wants them space-separated
        (BERT word-piece vocabularies of single letters, such as AntiBERTy and ProtBERT).
        A tokenizer that turns residues into unknown tokens either way is refused."""
        for separator in ("", " "):
            ids = tokenizer(separator.join(alphabet), add_special_tokens=False)["input_ids"]
            if tokenizer.unk_token_id not in ids:
                return separator
        raise ModelLoadError(f"the tokenizer maps residues ({alphabet}) to its unknown token")

    @staticmethod
    def _texts(loaded: LoadedModel, sequences: Sequence[str]) -> list[str]:
        separator = loaded.extra["separator"]
        return [separator.join(s) if separator else s for s in sequences]

    def measure(self, loaded: LoadedModel, sequences: Sequence[str]) -> list[int]:
        """Tokens per sequence as the tokenizer splits it (byte-pair encodings merge residues)."""
        encoded = loaded.extra["tokenizer"](self._texts(loaded, sequences), add_special_tokens=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def truncate(self, loaded: LoadedModel, sequence: str, limit: int) -> str:
        """Cut at the end of token ``limit``, from the fast tokenizer's character offsets."""
        if loaded.extra["separator"]:
            return sequence[:limit]  # one token per residue
        encoded = loaded.extra["tokenizer"](sequence, add_special_tokens=False, return_offsets_mapping=True)
        return sequence[: encoded["offset_mapping"][limit - 1][1]]

    def tokenize(self, loaded: LoadedModel, sequences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token ids with the tokenizer's special tokens; pooled positions follow --pooling."""
        encoded = loaded.extra["tokenizer"](
            self._texts(loaded, sequences), padding=True, return_tensors="pt", add_special_tokens=True
        )
        attention = encoded["attention_mask"].bool()
        if loaded.extra["pooling"] == "cls":
            mask = torch.zeros_like(attention)
            mask[:, 0] = True
        else:
            mask = attention
        return encoded["input_ids"], mask, int(attention.sum())

    def hidden_states(self, loaded: LoadedModel, module: nn.Module, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """The last hidden state, or hidden_states[layer] for an earlier layer."""
        attention = (tokens != loaded.extra["pad_id"]).long()
        last = layer == loaded.num_layers
        out = module(input_ids=tokens, attention_mask=attention, output_hidden_states=not last)
        return out.last_hidden_state if last else out.hidden_states[layer]

    def blocks(self, module: nn.Module) -> list[nn.Module]:
        """encoder.layer (BERT, ESM, DNABERT), or the longest ModuleList of the model."""
        encoder = getattr(module, "encoder", None)
        if encoder is not None and isinstance(getattr(encoder, "layer", None), nn.ModuleList):
            return list(encoder.layer)
        lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
        return list(max(lists, key=len)) if lists else []

    @staticmethod
    def block_orientation(hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    @staticmethod
    def block_parts(block: nn.Module) -> dict:
        """BERT-style layers (BERT, ESM, DNABERT): ``attention.self``, and the MLP from
        ``intermediate.dense`` to ``output.dense``; other layouts have no known parts."""
        parts = {}
        attention = getattr(getattr(block, "attention", None), "self", None)
        if isinstance(attention, nn.Module):
            parts["attention"] = attention
        first = getattr(getattr(block, "intermediate", None), "dense", None)
        last = getattr(getattr(block, "output", None), "dense", None)
        if isinstance(first, nn.Linear) and isinstance(last, nn.Linear):
            parts["mlp"] = (first, last)
        return parts

    def adapts(self, module: nn.Module) -> bool:
        return any(cls.__name__ == "PreTrainedModel" for cls in type(module).__mro__)

    def apply_policy(self, module: nn.Module, policy: Policy) -> AppliedPolicy:
        """Convert a transformers model in place: layer-norm islands, FP32 positional tables and
        softmax, FP32 residual adds; fast attention is transformers' own "sdpa" attention."""
        notes: list[str] = []
        if policy.layout == "packed":
            raise UnsupportedPolicyError(
                f"the packed layout is built for ESM-2 (fair-esm) and DNABERT, not for {type(module).__name__} through "
                "transformers; use fused attention on padded batches (fp16+sdpa)"
            )
        if policy.fast_attention:
            if not getattr(module, "_supports_sdpa", False):
                raise UnsupportedPolicyError(
                    f"fast attention: {type(module).__name__} has no scaled_dot_product_attention "
                    "implementation in this transformers version"
                )
            _set_attention(module, "sdpa")
            notes.append("attention: transformers' sdpa implementation (fused kernels accumulate the softmax in FP32)")
        if policy.is_full_precision:
            module.float()
            return AppliedPolicy(policy, notes=tuple(notes))
        dtype = policy.torch_dtype
        islands: list[str] = []
        keep: list[nn.Module] = []
        if policy.fp32_residual:
            for name, sub in list(module.named_modules()):
                if is_residual_output(sub):
                    replace_module(module, name, Fp32ResidualOutput(sub))
                    islands.append(f"{name} (residual add)")
            if not islands:
                notes.append("no residual blocks of a known shape were found: the residual stream stays in FP16")
        if policy.fp32_layer_norms:
            islands += layer_norm_islands(module, dtype)
        if policy.fp32_positional:
            for name, sub in module.named_modules():
                is_table = name.endswith("embeddings") and hasattr(sub, "position_embeddings")
                if is_table or type(sub).__name__.endswith("RotaryEmbedding"):
                    keep.append(make_fp32_island(sub, dtype))
                    islands.append(name)
            if policy.fast_attention:
                pass  # the fused kernel's softmax, not the FP32 eager one
            elif register_fp32_softmax():
                _set_attention(module, FP32_SOFTMAX)
                islands.append("attention softmax (every layer)")
            else:
                notes.append("this transformers version cannot swap the attention function: softmax stays in the compute dtype")
        names, blocks = block_islands(module, self.blocks(module), policy.fp32_blocks, dtype)
        part_names, parts = part_islands(module, self.blocks(module), policy.fp32_parts, dtype, self.block_parts)
        islands += names + part_names
        keep += [m for m in module.modules() if isinstance(m, Fp32LayerNorm)] + blocks + parts
        cast_except(module, dtype, keep)
        return AppliedPolicy(policy, tuple(islands), tuple(notes))


def _set_attention(module: nn.Module, implementation: str) -> None:
    if hasattr(module, "set_attn_implementation"):
        module.set_attn_implementation(implementation)
    else:
        module.config._attn_implementation = implementation


HF = HfTarget("hf", "any Hugging Face encoder (AutoModel) from a local directory or the hub cache")
ANTIBERTY = HfTarget("antiberty", PRESETS["antiberty"].description, PRESETS["antiberty"])
