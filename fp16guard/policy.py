"""Precision policies as data: a compute dtype and which fragile parts stay in FP32.

Light on purpose (no torch import), so that listing and saving policies stays fast; applying
one to a model is fp16guard.precision's job.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .errors import InputError

DTYPES = ("float32", "float16", "bfloat16")
#: Parts of one block that can be kept in FP32 on their own, cheapest first (what ``--search``
#: tries before keeping the whole block): its layer norms; its attention (projections,
#: positional tables and softmax); its feed-forward (both linears and the activation between).
PART_KINDS = ("layer_norm", "attention", "mlp")
#: How a batch reaches the model: ``padded`` rows of equal width with an attention mask, or
#: ``packed``: the sequences concatenated without padding, attention confined to each sequence
#: by cumulative offsets (variable-length fused attention), positions restarting per sequence.
LAYOUTS = ("padded", "packed")


@dataclass(frozen=True)
class Policy:
    """Where a model computes in reduced precision and what it keeps in FP32.

    ``fp32_layer_norms``: every layer norm is an FP32 island.
    ``fp32_positional``: positional tables (rotary cos/sin, ALiBi) computed in FP32, and attention
    softmax in FP32 (under ``fast_attention`` the fused kernel's softmax, which accumulates in FP32).
    ``fp32_residual``: the residual stream is carried and summed in FP32; it reads through
    layer-norm islands, so it requires ``fp32_layer_norms``.
    ``fp32_blocks``: transformer blocks (numbered from 1) computed wholly in FP32, their input
    cast up and their output cast back.
    ``fp32_parts``: parts of single blocks in FP32, as (kind, block) pairs with kinds from
    ``PART_KINDS``; written ``{"mlp": [3]}`` in JSON. ``--search`` finds blocks, then parts.
    ``fast_attention``: attention through torch's scaled_dot_product_attention, so that fused
    (flash or memory-efficient) kernels run instead of separate matmuls and softmax.
    ``layout``: ``padded`` (rows of equal width) or ``packed`` (no padding; needs
    ``fast_attention``: the packed path's attention is a fused variable-length kernel).
    """

    name: str
    dtype: str = "float16"
    fp32_layer_norms: bool = False
    fp32_positional: bool = False
    fp32_residual: bool = False
    fp32_blocks: tuple[int, ...] = ()
    fp32_parts: tuple[tuple[str, int], ...] = ()
    fast_attention: bool = False
    layout: str = "padded"

    def __post_init__(self) -> None:
        # JSON gives lists; a frozen policy keeps an ordered, duplicate-free tuple.
        object.__setattr__(self, "fp32_blocks", tuple(sorted({int(b) for b in self.fp32_blocks})))
        if any(b < 1 for b in self.fp32_blocks):
            raise InputError(f"policy {self.name!r}: fp32_blocks are numbered from 1")
        parts = self.fp32_parts
        if isinstance(parts, dict):
            if not all(isinstance(v, (list, tuple)) for v in parts.values()):
                raise InputError(f'policy {self.name!r}: fp32_parts maps a kind to block numbers, as {{"mlp": [3]}}')
            parts = [(kind, block) for kind, blocks in parts.items() for block in blocks]
        try:
            pairs = {(str(kind), int(block)) for kind, block in parts}
        except (TypeError, ValueError):
            raise InputError(f'policy {self.name!r}: fp32_parts maps a kind to block numbers, as {{"mlp": [3]}}') from None
        unknown = sorted({kind for kind, _ in pairs} - set(PART_KINDS))
        if unknown:
            raise InputError(f"policy {self.name!r}: unknown fp32_parts kind {unknown[0]!r} ({', '.join(PART_KINDS)})")
        if any(block < 1 for _, block in pairs):
            raise InputError(f"policy {self.name!r}: fp32_parts blocks are numbered from 1")
        order = {kind: i for i, kind in enumerate(PART_KINDS)}
        object.__setattr__(self, "fp32_parts", tuple(sorted(pairs, key=lambda p: (p[1], order[p[0]]))))
        if self.dtype not in DTYPES:
            raise InputError(f"policy {self.name!r}: unknown dtype {self.dtype!r} ({', '.join(DTYPES)})")
        if self.layout not in LAYOUTS:
            raise InputError(f"policy {self.name!r}: unknown layout {self.layout!r} ({', '.join(LAYOUTS)})")
        if self.layout == "packed" and not self.fast_attention:
            raise InputError(f"policy {self.name!r}: the packed layout runs fused attention only; set fast_attention")
        if self.fp32_residual and not self.fp32_layer_norms:
            raise InputError(
                f"policy {self.name!r}: fp32_residual needs fp32_layer_norms (the layer norms read "
                "the FP32 residual stream)"
            )

    @property
    def torch_dtype(self):
        """The torch dtype of the compute precision."""
        import torch

        return getattr(torch, self.dtype)

    @property
    def is_full_precision(self) -> bool:
        return self.dtype == "float32"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fp32_blocks"] = list(self.fp32_blocks)
        data["fp32_parts"] = self.parts_by_kind()
        return data

    def parts_by_kind(self) -> dict[str, list[int]]:
        """``fp32_parts`` as JSON writes it: kind -> block numbers."""
        grouped: dict[str, list[int]] = {}
        for kind, block in self.fp32_parts:
            grouped.setdefault(kind, []).append(block)
        return {kind: sorted(grouped[kind]) for kind in PART_KINDS if kind in grouped}

    @classmethod
    def from_dict(cls, data: dict) -> Policy:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"policy has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    def describe(self) -> str:
        """One line for humans: what runs in which precision."""
        if self.is_full_precision:
            return "everything in FP32"
        parts = [f"{self.dtype} compute"]
        if self.fp32_layer_norms:
            parts.append("FP32 layer norms")
        if self.fp32_positional:
            parts.append("FP32 positional tables" if self.fast_attention else "FP32 positional tables and softmax")
        if self.fp32_residual:
            parts.append("FP32 residual stream")
        if self.fp32_blocks:
            parts.append(f"block{'s' if len(self.fp32_blocks) > 1 else ''} {', '.join(map(str, self.fp32_blocks))} in FP32")
        for kind, blocks in self.parts_by_kind().items():
            label = {"layer_norm": "layer norms", "attention": "attention", "mlp": "MLP"}[kind]
            parts.append(f"{label} of block{'s' if len(blocks) > 1 else ''} {', '.join(map(str, blocks))} in FP32")
        if self.layout == "packed":
            parts.append("packed without padding (variable-length fused attention)")
        elif self.fast_attention:
            parts.append("fused attention (SDPA)")
        return ", ".join(parts)


FP32 = Policy("fp32", "float32")
FP16 = Policy("fp16")
FP16_LN32 = Policy("fp16+ln32", fp32_layer_norms=True)
FP16_POS32 = Policy("fp16+pos32", fp32_layer_norms=True, fp32_positional=True)
FP16_RES32 = Policy("fp16+res32", fp32_layer_norms=True, fp32_positional=True, fp32_residual=True)

#: Not a rung: BF16 keeps FP32's exponent range (no overflow) with 3 fewer significant bits than
#: FP16; ``--try bf16`` reports it beside the ladder so users can choose on evidence.
BF16 = Policy("bf16", "bfloat16")

#: Not a rung: full FP16 with fused attention and FP32 positional tables (fast_variant of fp16).
#: No layer-norm islands: CUDA's FP16 layer norm already accumulates in FP32, and islands cost
#: two casts per norm. The workflow offers it (or the fast variant of the rung that passed).
FP16_SDPA = Policy("fp16+sdpa", fp32_positional=True, fast_attention=True)

#: Not a rung: ``fp16+sdpa`` on packed batches, the layout production pipelines deploy (see
#: ``fast_variant``): no padding, one variable-length attention kernel per layer.
FP16_PACKED = Policy("fp16+packed", fp32_positional=True, fast_attention=True, layout="packed")

#: The fallback ladder, tried in order after the FP32 reference; each rung adds to the one before.
LADDER: tuple[Policy, ...] = (FP16, FP16_LN32, FP16_POS32, FP16_RES32)
POLICIES: dict[str, Policy] = {p.name: p for p in (FP32, *LADDER, BF16, FP16_SDPA, FP16_PACKED)}


def fast_variant(policy: Policy, packed: bool = False) -> Policy:
    """``policy`` with fused attention and FP32 positional tables (free at run time, and the
    fused path should not inherit FP16 rotary angles), on packed batches with ``packed``; named
    as the built-in it equals, or ``NAME+sdpa`` / ``NAME+packed``."""
    suffix, layout = ("packed", "packed") if packed else ("sdpa", "padded")
    fast = replace(policy, name=f"{policy.name}+{suffix}", fast_attention=True, fp32_positional=True, layout=layout)
    same = {**fast.to_dict(), "name": None}
    return next((p for p in POLICIES.values() if {**p.to_dict(), "name": None} == same), fast)


def get_policy(spec: str | Path | Policy | dict) -> Policy:
    """A policy from a built-in name, a JSON file, a dict or a Policy."""
    if isinstance(spec, Policy):
        return spec
    if isinstance(spec, dict):
        return Policy.from_dict(spec)
    if isinstance(spec, str) and spec in POLICIES:
        return POLICIES[spec]
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a readable policy file ({exc})") from None
        return Policy.from_dict(data.get("policy", data))
    raise InputError(f"unknown policy {str(spec)!r}; choose from {', '.join(POLICIES)} or a .json file")


