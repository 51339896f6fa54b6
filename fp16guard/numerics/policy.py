"""Precision policies as data: a compute dtype and which fragile parts stay in FP32.

Light on purpose (no torch import), so that listing and saving policies stays fast; applying
one to a model is fp16guard.numerics.precision's job.
"""

from __future__ import annotations

import json
import typing
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import get_type_hints

from fp16guard.errors import InputError

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
    ``keep_in_fp32_modules``: the modules that the model class itself lists in transformers'
    ``_keep_in_fp32_modules`` (T5: ``wo``) keep FP32 weights, as ``from_pretrained(...,
    dtype=torch.float16)`` loads them; without it FP16 means every weight, as ``.half()`` gives.
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
    keep_in_fp32_modules: bool = False

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
            raise InputError(
                f'policy {self.name!r}: fp32_parts maps a kind to block numbers, as {{"mlp": [3]}}'
            ) from None
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
        """A policy from its JSON form, checked against the schema: InputError naming the field
        for anything else (a list, a missing ``name``, a string where a boolean belongs)."""
        if not isinstance(data, dict):
            raise InputError(f"a policy is a JSON object, not {_json_type(data)}")
        specs = {f.name: f for f in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in specs)
        if unknown:
            raise InputError(f"policy has unknown fields: {', '.join(unknown)}")
        hints = get_type_hints(cls)
        for name, spec in specs.items():
            if name not in data:
                if spec.default is MISSING and spec.default_factory is MISSING:
                    raise InputError(f"policy lacks the required field {name!r}")
                continue
            value = data[name]
            expected = _describe(hints[name])
            if name == "fp32_parts":  # written in JSON as kind -> blocks
                expected = 'an object that maps a kind to a list of block numbers, as {"mlp": [3]}'
                if isinstance(value, dict) and all(isinstance(v, (list, tuple)) for v in value.values()):
                    value = [[kind, block] for kind, blocks in value.items() for block in blocks]
            if not _matches(value, hints[name]):
                raise InputError(f"policy field {name!r} must be {expected}, not {_json_type(data[name])} "
                                 f"{_short(data[name])}")
        return cls(**data)

    def describe(self) -> str:
        """One line for humans: what runs in which precision."""
        if self.is_full_precision:
            return "everything in FP32"
        parts = [f"{self.dtype} compute"]
        if self.keep_in_fp32_modules:
            parts.append("the model class's _keep_in_fp32_modules in FP32 (as from_pretrained loads it)")
        if self.fp32_layer_norms:
            parts.append("FP32 layer norms")
        if self.fp32_positional:
            parts.append("FP32 positional tables" if self.fast_attention else "FP32 positional tables and softmax")
        if self.fp32_residual:
            parts.append("FP32 residual stream")
        if self.fp32_blocks:
            parts.append(f"block{'s' if len(self.fp32_blocks) > 1 else ''} "
                         f"{', '.join(map(str, self.fp32_blocks))} in FP32")
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

#: FP16 as transformers' ``from_pretrained(..., dtype=torch.float16)`` gives it: the modules the
#: model class keeps in FP32 (T5 keeps ``wo``, whose output overflows FP16 in trained T5s) stay
#: FP32. Tried right after ``fp16`` (which is ``.half()``) for models whose class declares such
#: modules, so that the report says what each of the two ways of loading in FP16 gives.
FP16_KEEP32 = Policy("fp16+keep32", keep_in_fp32_modules=True)

#: The fallback ladder, tried in order after the FP32 reference; each rung adds to the one before.
LADDER: tuple[Policy, ...] = (FP16, FP16_LN32, FP16_POS32, FP16_RES32)
POLICIES: dict[str, Policy] = {p.name: p for p in (FP32, *LADDER, FP16_KEEP32, BF16, FP16_SDPA, FP16_PACKED)}


def with_class_fp32(policies: list[Policy]) -> list[Policy]:
    """``policies`` with ``fp16+keep32`` right after ``fp16`` (for a model class that declares
    ``_keep_in_fp32_modules``); unchanged when ``fp16`` is not among them."""
    out: list[Policy] = []
    for policy in policies:
        out.append(policy)
        if policy == FP16 and FP16_KEEP32 not in policies:
            out.append(FP16_KEEP32)
    return out


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
    if not isinstance(spec, (str, Path)):
        raise InputError(f"a policy is a name, a .json file, a dict or a Policy, not {type(spec).__name__}")
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return read_policy_file(path)
    raise InputError(f"unknown policy {str(spec)!r}; choose from {', '.join(POLICIES)} or a .json file")




def read_policy_file(path: str | Path) -> Policy:
    """The policy in a JSON file: a policy object, or a file written by ``--save-policy`` (the
    policy under its ``policy`` key). InputError naming the file and the field otherwise."""
    return read_policy_record(path)[0]


def read_policy_record(path: str | Path) -> tuple[Policy, dict | None]:
    """``read_policy_file``'s policy and the file's ``validated`` record (what ``--save-policy``
    says it was validated on: weights_sha256, threshold, min_cosine, ...), None when the file
    holds a bare policy object."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise InputError(f"policy file {path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"policy file {path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"policy file {path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"policy file {path}: JSON nested too deeply") from None
    validated = None
    if isinstance(data, dict) and "policy" in data:
        validated = data.get("validated")
        if validated is not None and not isinstance(validated, dict):
            raise InputError(
                f"policy file {path}: field 'validated' must be a JSON object, not {_json_type(validated)}"
            )
        data = data["policy"]
        if not isinstance(data, dict):
            raise InputError(f"policy file {path}: field 'policy' must be a JSON object, not {_json_type(data)}")
    try:
        return Policy.from_dict(data), validated
    except InputError as exc:
        raise InputError(f"policy file {path}: {exc}") from None


# Schema checks for from_dict, driven by the dataclass's type hints, so that a new field with a
# str, bool, int or tuple type is checked without edits here.

def _matches(value, hint) -> bool:
    """Whether a JSON value fits the type hint ``hint`` (JSON arrays stand for tuples)."""
    origin = typing.get_origin(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint) -> str:
    """A type hint in the words of JSON."""
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list, each {_describe(args[0])}"
        return f"a list of {len(args)}: " + ", ".join(_describe(a) for a in args)
    if args:
        return " or ".join(_describe(a) for a in args)
    return getattr(hint, "__name__", str(hint))


def _json_type(value) -> str:
    """A Python value by its JSON name."""
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", tuple: "a list", str: "a string", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def _short(value) -> str:
    """``value`` as JSON, cut to a readable length."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return f"({text if len(text) <= 40 else text[:37] + '...'})"
