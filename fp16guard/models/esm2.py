"""ESM-2 through fair-esm: named checkpoints, local ``.pt`` files, and its precision policies."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fp16guard.core.config import ModelSource
from fp16guard.errors import InputError, ModelLoadError, UnsupportedPolicyError
from fp16guard.models.base import Encoding, LoadedModel, Target, no_class_fp32_note
from fp16guard.models.batch import PackedBatch
from fp16guard.models.catalog import ESM2_CHECKPOINTS as CHECKPOINTS
from fp16guard.models.catalog import ESM2_SPEC, esm2_checkpoint_path
from fp16guard.models.loading import hash_in_background, load_failure, skipped_init
from fp16guard.models.varlen import keep_loops_out_of_compiled_graphs, packed_attention, require_packing, rotate_half
from fp16guard.numerics.policy import Policy
from fp16guard.numerics.precision import (
    AppliedPolicy,
    Fp32LayerNorm,
    block_islands,
    cast_except,
    layer_norm_islands,
    part_islands,
    replace_module,
)

ALPHABET = "ACDEFGHIKLMNPQRSTVWYXBUZO"
MAX_RESIDUES = 1022  # 1024 positions including BOS and EOS
DOWNLOAD_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"


def _read_checkpoint(path: Path) -> dict:
    # weights_only=True refuses any pickled code; fair-esm's cfg holds an argparse.Namespace,
    # which is plain data and allowed explicitly.
    # mmap: the tensors stay in the page cache until the model copies them, instead of a second
    # full copy in this process's memory (2.6 GB for 650M); a file in torch's legacy (non-zip)
    # format cannot be mapped and is read whole.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such checkpoint file") from None
    except Exception as exc:  # gzip, corrupt zip, truncated download, not a torch file, pickled code
        raise ModelLoadError(f"{path}: {load_failure(path, exc)}") from None
    cfg = data.get("cfg") if isinstance(data, dict) else None
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    if "model" not in data or not hasattr(model_cfg, "encoder_layers"):
        raise ModelLoadError(
            f"{path}: not a fair-esm ESM-2 checkpoint (expected 'model' weights and a 'cfg' "
            "with the encoder's settings)"
        )
    return data


class Fp32Rotary(nn.Module):
    """Rotary embedding whose angles and cos/sin tables are computed in FP32.

    In FP16, the angle p * inv_freq keeps 11 significant bits, so at position 1000 it is off by
    up to ~0.4 rad. Here the tables are exact to FP32 and only then cast to the input's dtype.
    """

    def __init__(self, source: nn.Module):
        super().__init__()
        self.register_buffer("inv_freq", source.inv_freq.detach().float().clone())
        self._cache: tuple[int, torch.device, torch.dtype, torch.Tensor, torch.Tensor] | None = None

    def _tables(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = k.shape[-2]
        cache = self._cache
        if cache is None or cache[:3] != (length, k.device, k.dtype):
            positions = torch.arange(length, device=k.device, dtype=torch.float32)
            angles = torch.outer(positions, self.inv_freq.to(k.device))
            angles = torch.cat((angles, angles), dim=-1)
            cache = (length, k.device, k.dtype, angles.cos()[None].to(k.dtype), angles.sin()[None].to(k.dtype))
            self._cache = cache
        return cache[3], cache[4]

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k rotated by their positions, with FP32-computed tables."""
        from esm.rotary_embedding import apply_rotary_pos_emb

        cos, sin = self._tables(k)
        return apply_rotary_pos_emb(q, cos, sin), apply_rotary_pos_emb(k, cos, sin)


class SdpaAttention(nn.Module):
    """fair-esm's self-attention computed by torch's scaled_dot_product_attention.

    fair-esm multiplies q and k with bmm, adds -inf on padded keys, takes an FP32 softmax and
    always materialises head-averaged attention weights; here one fused kernel (flash or
    memory-efficient on CUDA) does it all, its softmax accumulating in FP32. The projections are
    one matmul over the concatenated q/k/v weights (concatenated per call: a few MB, negligible
    next to the matmul, and no second copy of the weights to keep in step). The children keep
    fair-esm's names (q_proj, k_proj, v_proj, out_proj, rot_emb), so state-dict keys, module
    names and policy files are unchanged.
    """

    def __init__(self, source: nn.Module):
        super().__init__()
        if getattr(source, "bias_k", None) is not None or getattr(source, "add_zero_attn", False):
            raise UnsupportedPolicyError("fast attention supports ESM-2's attention (no bias_kv, no zero attention)")
        self.embed_dim = source.embed_dim
        self.num_heads = source.num_heads
        self.head_dim = source.head_dim
        # fair-esm's order, so that state-dict keys come in the same order too
        self.k_proj = source.k_proj
        self.v_proj = source.v_proj
        self.q_proj = source.q_proj
        self.out_proj = source.out_proj
        self.rot_emb = source.rot_emb

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=True, attn_mask=None,
                need_head_weights=False, **_unused):
        """[T, B, D] in, ([T, B, D], None) out; ``key_padding_mask`` [B, T] is True on padding."""
        if need_head_weights:
            raise UnsupportedPolicyError(
                "fast attention computes no attention maps (need_head_weights, return_contacts); "
                "use a policy without fast_attention for contacts"
            )
        if attn_mask is not None or (key is not None and key is not query):
            raise UnsupportedPolicyError("fast attention supports ESM-2's self-attention without an attn_mask only")
        length, batch, _ = query.shape
        weight = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        biases = (self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)
        bias = None if biases[0] is None else torch.cat(biases)
        qkv = F.linear(query, weight, bias).view(length, batch, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 1, 3, 0, 4).unbind(0)  # each [B, H, T, Dh]
        # fair-esm scales q before the rotation; rotation is linear, so scaling inside the
        # kernel (its default 1/sqrt(head_dim), applied to FP32 scores) is the same product.
        if self.rot_emb is not None:
            q, k = self.rot_emb(q, k)
        mask = None
        if key_padding_mask is not None:
            # Boolean, True where attention is allowed; ESM2 passes None for a batch without
            # padding, and no mask is what lets the flash kernel run.
            mask = ~key_padding_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.permute(2, 0, 1, 3).reshape(length, batch, self.embed_dim)
        return self.out_proj(out), None


class PackState:
    """The packed batch a model is running, shared by its attention modules (set by
    ``Esm2Target.packed_hidden_states`` for one forward), and the rotary tables of that pack,
    computed once per pack rather than once per layer.

    ``compiled_max_seqlen`` is set when the blocks run under torch.compile
    (``Esm2Target.compile_packed``): the attention kernel is then told one fixed bound on the
    sequence length instead of each pack's longest, so that one compiled graph serves every pack.
    The bound only sizes the kernel's launch grid (surplus tiles have no rows and exit); each
    sequence's extent comes from ``cu_seqlens``."""

    def __init__(self) -> None:
        self.batch: PackedBatch | None = None
        self.max_seqlen = 0
        self.compiled_max_seqlen: int | None = None
        self._tables: dict = {}

    def start(self, batch: PackedBatch) -> None:
        """Begin a forward pass over ``batch``."""
        self.batch, self._tables = batch, {}
        self.max_seqlen = max(batch.max_seqlen, self.compiled_max_seqlen or 0)

    def finish(self) -> None:
        """End the forward pass: the pack and its tables are dropped."""
        self.batch, self._tables = None, {}

    def rotary_tables(self, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [N, 1, head_dim] at each token's position within its own sequence.

        Computed in ``inv_freq``'s dtype, as fair-esm computes them: FP16 angles in a model
        cast whole to FP16, FP32 angles under an FP32 rotary island (``fp32_positional``); then
        cast to the attention's dtype."""
        assert self.batch is not None
        if torch.compiler.is_compiling():
            # Inside a compiled block the tables are recomputed: the compiler fuses them into
            # the rotation (no extra pass over memory), where a cache would be a side effect.
            return _rotary_tables(self.batch.positions, inv_freq, dtype)
        key = (inv_freq.dtype, dtype, inv_freq.device)
        if key not in self._tables:
            self._tables[key] = _rotary_tables(self.batch.positions, inv_freq, dtype)
        return self._tables[key]


def _rotary_tables(positions: torch.Tensor, inv_freq: torch.Tensor,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [N, 1, head_dim] at ``positions``, computed in ``inv_freq``'s dtype and cast to ``dtype``."""
    angles = positions.to(inv_freq.dtype)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)[:, None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


class PackedAttention(SdpaAttention):
    """fair-esm's self-attention on a packed batch: one fused QKV projection, rotary positions
    restarting at each sequence, and variable-length attention confined to each sequence.

    The model runs on [N, 1, D] (fair-esm's [T, B, D] with all N tokens of the pack as one
    row), so fair-esm's layers, layer norms and every FP32 island work unchanged around it.
    Called without a pack (``model(tokens)`` on padded rows), it is SdpaAttention, so a model
    converted by ``apply_policy`` under a packed policy still runs padded batches.
    """

    def __init__(self, source: nn.Module, state: PackState):
        super().__init__(source)
        self.state = state

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=True, attn_mask=None,
                need_head_weights=False, **unused):
        """fair-esm's attention interface; [N, 1, D] in and out while a pack runs."""
        packed = self.state.batch
        if packed is None:
            return super().forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, need_head_weights, **unused
            )
        if need_head_weights or attn_mask is not None or key_padding_mask is not None:
            raise UnsupportedPolicyError("the packed layout computes no attention maps and takes no masks")
        tokens = query.shape[0]
        weight = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        biases = (self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)
        bias = None if biases[0] is None else torch.cat(biases)
        q, k, v = F.linear(query[:, 0], weight, bias).view(tokens, 3, self.num_heads, self.head_dim).unbind(1)
        out = self._attend(q, k, v)
        return self.out_proj(out.reshape(tokens, 1, self.embed_dim)), None

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Rotary positions and attention within each sequence of the current pack."""
        if self.rot_emb is not None:
            # As SdpaAttention: the kernel's own 1/sqrt(head_dim) scaling stands for fair-esm's
            # scaling of q before the rotation (the rotation is linear).
            cos, sin = self.state.rotary_tables(self.rot_emb.inv_freq, q.dtype)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        return packed_attention(q, k, v, self.state.batch, max_seqlen=self.state.max_seqlen)


class _LayerForward(nn.Module):
    """A fair-esm TransformerLayer's modules under a forward of fp16guard's own: the children
    keep their names, so state-dict keys, module names and islands are unchanged."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.self_attn_layer_norm = layer.self_attn_layer_norm
        self.self_attn = layer.self_attn
        self.final_layer_norm = layer.final_layer_norm
        self.fc1 = layer.fc1
        self.fc2 = layer.fc2


class FusedGeluLayer(_LayerForward):
    """fair-esm's TransformerLayer with its GELU as one kernel (``F.gelu``, exact erf form).

    fair-esm writes GELU as four element-wise operations, each a pass over the FFN's
    activations (4 x width per token): on ESM-2 650M that traffic costs about a third of the
    block's matmul time. ``F.gelu`` computes the same function in one pass, internally in FP32
    (so its FP16 result is rounded once, not four times). Used with the packed layout.
    """

    def forward(self, x, self_attn_mask=None, self_attn_padding_mask=None, need_head_weights=False):
        """fair-esm's TransformerLayer.forward, with one GELU kernel."""
        h, attn = self.self_attn(
            query=(h := self.self_attn_layer_norm(x)), key=h, value=h, key_padding_mask=self_attn_padding_mask,
            need_weights=True, need_head_weights=need_head_weights, attn_mask=self_attn_mask,
        )
        x = x + h
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x)))), attn


class Fp32ResidualLayer(_LayerForward):
    """fair-esm's TransformerLayer with the residual stream carried and summed in FP32.

    Attention and MLP run in the compute dtype on the output of layer-norm islands that read
    the FP32 residual; their outputs are added in FP32, so a residual that outgrows FP16's
    65504 stays finite (the idea of Megatron-LM's fp32-residual-connection).
    """

    def forward(self, x, self_attn_mask=None, self_attn_padding_mask=None, need_head_weights=False):
        """fair-esm's TransformerLayer.forward with an FP32 residual stream."""
        from esm.modules import gelu

        residual = x.float()
        h = self.self_attn_layer_norm(residual)
        h, attn = self.self_attn(
            query=h,
            key=h,
            value=h,
            key_padding_mask=self_attn_padding_mask,
            need_weights=True,
            need_head_weights=need_head_weights,
            attn_mask=self_attn_mask,
        )
        residual = residual + h.float()
        h = self.fc2(gelu(self.fc1(self.final_layer_norm(residual))))
        return residual + h.float(), attn


@dataclass(frozen=True)
class EsmEncoding(Encoding):
    """fair-esm's tokenizer state: its Alphabet (``pad_id`` is the alphabet's padding index)."""

    alphabet: Any  # esm.data.Alphabet


class Esm2Target(Target):
    """ESM-2 models as fair-esm builds them."""

    input_alphabet = ALPHABET
    special_tokens_per_row = 2
    supports_packing = True
    supports_compile = True

    def load(self, source: ModelSource) -> LoadedModel:
        """Load FP32 weights from ``source.weights`` (a local .pt) or a named checkpoint."""
        weights, model, offline = source.weights, source.model, source.offline
        if weights is not None:
            path = Path(weights)
            if path.is_dir():
                raise ModelLoadError(f"--weights {path}: is a directory; expected a fair-esm checkpoint file (.pt)")
            if not path.is_file():
                raise ModelLoadError(f"--weights {path}: no such file")
            name = path.stem
        else:
            name = model or self.spec.default_model
            if name not in CHECKPOINTS:
                raise InputError(
                    f"unknown ESM-2 checkpoint {name!r}; known: {', '.join(CHECKPOINTS)} "
                    "(or pass --weights PATH.pt)"
                )
            path = esm2_checkpoint_path(name)
            if not path.is_file():
                self._download(name, path, offline)
        data = _read_checkpoint(path)
        digest = hash_in_background([path])
        model_cfg = data["cfg"]["model"]
        has_regression = any(k.endswith("contact_head.regression.weight") for k in data["model"])
        import esm.pretrained

        try:
            with warnings.catch_warnings(), skipped_init():
                # Contact-regression weights are not needed for embeddings.
                warnings.filterwarnings("ignore", message="Regression weights not found")
                module, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2", data, None)
        except RuntimeError as exc:
            summary = str(exc).strip().splitlines()
            raise ModelLoadError(f"{path}: weights do not fit ESM-2 ({' '.join(summary)[:300]})") from None
        if not has_regression:  # the one part a checkpoint may lack; unused for embeddings
            module.contact_head.regression.reset_parameters()
        return LoadedModel(
            target=self.name,
            name=name,
            source=str(path),
            module=module.eval(),
            num_layers=int(model_cfg.encoder_layers),
            weights_sha256=digest.result(),
            alphabet=ALPHABET,
            max_length=MAX_RESIDUES,
            encoding=EsmEncoding(pad_id=alphabet.padding_idx, alphabet=alphabet),
        )

    @staticmethod
    def _download(name: str, path: Path, offline: bool) -> None:
        url = DOWNLOAD_URL.format(name=name)
        how = f"download {url} to that path, or pass --weights PATH.pt"
        if offline:
            raise ModelLoadError(f"ESM-2 weights {name!r} not found at {path} (offline); {how}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as exc:
            raise ModelLoadError(
                f"ESM-2 weights {name!r} not found at {path} and the download failed ({exc}); {how}"
            ) from None

    def measure(self, loaded: LoadedModel, sequences: Sequence[str]) -> list[int]:
        """One token per residue."""
        return [len(s) for s in sequences]

    def truncate(self, loaded: LoadedModel, sequence: str, limit: int) -> str:
        """The first ``limit`` residues (one token each)."""
        return sequence[:limit]

    def tokenize(self, loaded: LoadedModel, sequences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token ids [B, T] with BOS/EOS, the mask of residue positions, and the tokens read.

        The ids are those of fair-esm's batch converter (tests check it on the bundled set and
        on random input with every letter of the alphabet), looked up for the whole batch at
        once in numpy: the converter splits text character by character in Python (about 0.2M
        tokens/s on one CPU core, below what one GPU embeds); this runs at tens of millions. The
        input is validated upper-case residues, so no special-token syntax needs parsing."""
        alphabet = loaded.encoding.alphabet
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        codes = np.frombuffer("".join(sequences).encode("ascii"), dtype=np.uint8)
        width = int(lengths.max()) + 2
        tokens = np.full((len(sequences), width), alphabet.padding_idx, dtype=np.int64)
        columns = np.arange(width)[None, :]
        residues = (columns >= 1) & (columns <= lengths[:, None])
        tokens[residues] = _id_table(alphabet)[codes]  # row-major: the sequences' residues in order
        tokens[:, 0] = alphabet.cls_idx
        tokens[np.arange(len(sequences)), lengths + 1] = alphabet.eos_idx
        used = int(lengths.sum()) + self.special_tokens_per_row * len(sequences)
        return torch.from_numpy(tokens), torch.from_numpy(residues), used

    def hidden_states(self, loaded: LoadedModel, module: nn.Module, tokens: torch.Tensor,
                      layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Representation of each of ``layers``; the last one has ``emb_layer_norm_after`` applied."""
        representations = module(tokens, repr_layers=list(layers))["representations"]
        return {layer: representations[layer] for layer in layers}

    def packed_hidden_states(self, loaded: LoadedModel, module: nn.Module, packed: PackedBatch,
                             layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Representation [N, D] of each of ``layers`` for a packed batch, computed as fair-esm's
        ``ESM2.forward`` computes it for each sequence alone (token dropout scaling per
        sequence, the last layer through ``emb_layer_norm_after``); the language-model head,
        unused for embeddings, is skipped, and so are the blocks after the deepest layer asked
        for. ``module`` must have been built under a packed policy."""
        state = getattr(module, "fp16guard_pack", None)
        if state is None:
            raise UnsupportedPolicyError("this model was not built under a packed policy")
        wanted = tuple(sorted(set(layers)))
        state.start(packed)
        try:
            outputs = packed_stack(module, packed.tokens, packed.cu_seqlens, packed.segments, wanted)
        finally:
            state.finish()
        by_layer = dict(zip(wanted, outputs))
        return {layer: by_layer[layer] for layer in layers}

    def compile_packed(self, loaded: LoadedModel, module: nn.Module) -> None:
        """Put each block of ``module`` (built under a packed policy) under torch.compile.

        The blocks share their code, so one compiled graph serves them all; the pack's sizes
        are symbolic and the attention kernel gets a fixed length bound (see PackState), so
        packs of any composition reuse it. Block by block rather than the whole stack as one
        graph: measured on an H100 (docs/benchmarks.md), the two ran at the same steady rate
        (293k and 290k tokens/s on ESM-2 650M), and one block traces and compiles in a fraction
        of the time of 33. Compiled kernels fuse element-wise work (rotary tables, GELU,
        residual adds) and so round differently from the eager policy in the last bits: embed's
        spot checks compare the compiled run with FP32."""
        state = getattr(module, "fp16guard_pack", None)
        if state is None:
            raise UnsupportedPolicyError("only a model built under a packed policy can be compiled")
        state.compiled_max_seqlen = (loaded.max_length or 1024) + self.special_tokens_per_row
        keep_loops_out_of_compiled_graphs()
        for block in module.layers:
            block.compile(dynamic=True)

    def uncompile_packed(self, module: nn.Module) -> None:
        """Run ``module``'s blocks eagerly again (after a failed compilation)."""
        for block in module.layers:
            block._compiled_call_impl = None  # undoes nn.Module.compile()
        state = getattr(module, "fp16guard_pack", None)
        if state is not None:
            state.compiled_max_seqlen = None

    def blocks(self, module: nn.Module) -> list[nn.Module]:
        """fair-esm's transformer layers."""
        return list(module.layers)

    def block_orientation(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, B, D], as fair-esm's blocks work, turned to [B, T, D]."""
        return hidden.transpose(0, 1)

    def block_parts(self, block: nn.Module) -> dict:
        """The attention (with its rotary tables) and the MLP's two linears of one layer."""
        return {"attention": block.self_attn, "mlp": (block.fc1, block.fc2)}

    def adapts(self, module: nn.Module) -> bool:
        """Whether ``module`` is fair-esm's ESM2."""
        return type(module).__name__ == "ESM2" and type(module).__module__.startswith("esm.")

    def apply_policy(self, module: nn.Module, policy: Policy) -> AppliedPolicy:
        """Convert a fair-esm ESM2 in place; islands per DESIGN: layer norms, rotary, residual."""
        for rotary in _rotary_modules(module):
            # The cos/sin cache is keyed on length and device, not dtype: reset it so that a
            # model that already ran in FP32 does not hand FP32 tables to FP16 attention.
            if hasattr(rotary, "_seq_len_cached"):
                rotary._seq_len_cached = None
        softmax = "attention softmax is FP32 in fair-esm under every policy"
        if policy.layout == "packed":
            require_packing()
            state = PackState()
            module.fp16guard_pack = state
            if not policy.fp32_residual:
                for i, layer in enumerate(module.layers):
                    if type(layer).__name__ == "TransformerLayer":
                        module.layers[i] = FusedGeluLayer(layer)
            for name, sub in list(module.named_modules()):
                if name.endswith("self_attn") and not isinstance(sub, PackedAttention):
                    replace_module(module, name, PackedAttention(sub, state))
            softmax = (
                "packed layout: variable-length fused attention within each sequence (softmax accumulated in FP32), "
                "rotary positions restarting at each sequence; no attention maps"
            )
        elif policy.fast_attention:
            for name, sub in list(module.named_modules()):
                if name.endswith("self_attn") and not isinstance(sub, SdpaAttention):
                    replace_module(module, name, SdpaAttention(sub))
            softmax = ("attention through scaled_dot_product_attention (fused kernels accumulate the softmax in FP32); "
                       "no attention maps")
        if policy.is_full_precision:
            module.float()
            return AppliedPolicy(policy, notes=(softmax,))
        dtype = policy.torch_dtype
        islands: list[str] = []
        notes = [softmax, *filter(None, [no_class_fp32_note(module, policy)])]
        if policy.fp32_residual:
            for i, layer in enumerate(module.layers):
                if not isinstance(layer, Fp32ResidualLayer):
                    module.layers[i] = Fp32ResidualLayer(layer)
            islands += [f"layers.{i} (residual adds)" for i in range(len(module.layers))]
        if policy.fp32_layer_norms:
            islands += layer_norm_islands(module, dtype)
        if policy.fp32_positional:
            for name, rotary in list(module.named_modules()):
                if name.endswith("rot_emb") and not isinstance(rotary, Fp32Rotary):
                    replace_module(module, name, Fp32Rotary(rotary))
                    islands.append(name)
        names, blocks = block_islands(module, self.blocks(module), policy.fp32_blocks, dtype)
        part_names, parts = part_islands(module, self.blocks(module), policy.fp32_parts, dtype, self.block_parts)
        islands += names + part_names
        kept = [m for m in module.modules() if isinstance(m, (Fp32LayerNorm, Fp32Rotary))]
        cast_except(module, dtype, kept + blocks + parts)
        return AppliedPolicy(policy, tuple(islands), tuple(notes))


def packed_stack(module: nn.Module, tokens: torch.Tensor, cu_seqlens: torch.Tensor, segments: torch.Tensor,
                 layers: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """fair-esm's ESM2 forward over one pack (its PackState already started): the hidden states
    [N, D] of each of ``layers`` (ascending), the last through ``emb_layer_norm_after``.

    A function of tensors and the module only (what torch.compile can take whole; bench/packed.py
    times it so against the blocks compiled one by one)."""
    x = module.embed_scale * module.embed_tokens(tokens)
    if module.token_dropout:
        # fair-esm rescales by the share of <mask> tokens in each sequence (none in validated
        # input, but the arithmetic is kept exact): per sequence, not per pack.
        is_mask = tokens == module.mask_idx
        x = x.masked_fill(is_mask[:, None], 0.0)
        lengths = torch.diff(cu_seqlens).to(x.dtype)
        masked = torch.zeros(lengths.shape[0], dtype=x.dtype, device=x.device)
        masked.index_add_(0, segments, is_mask.to(x.dtype))
        observed = (masked / lengths)[segments]
        x = x * (1 - 0.15 * 0.8) / (1 - observed)[:, None]
    out = {0: x} if 0 in layers else {}
    last = len(module.layers)
    x = x[:, None, :]
    for number, block in enumerate(module.layers[: max(layers)], start=1):
        x, _ = block(x, self_attn_padding_mask=None, need_head_weights=False)
        if number in layers:
            out[number] = module.emb_layer_norm_after(x)[:, 0] if number == last else x[:, 0]
    return tuple(out[layer] for layer in layers)


def _id_table(alphabet) -> np.ndarray:
    """Token id of every byte: residues as fair-esm's alphabet numbers them, anything else unk."""
    table = np.full(256, alphabet.unk_idx, dtype=np.int64)
    for token, index in alphabet.tok_to_idx.items():
        if len(token) == 1:
            table[ord(token)] = index
    return table


def _rotary_modules(module: nn.Module) -> list[nn.Module]:
    return [m for name, m in module.named_modules() if name.endswith("rot_emb")]


TARGET = Esm2Target(ESM2_SPEC)
