"""FP32 islands: the pieces targets turn a policy (fp16guard.numerics.policy) into a model with.

``apply_policy``, which picks the target for a model, lives with the target registry
(fp16guard.models), so that this module needs nothing above it.

Islands never rely on ``module.float()``: on CUDA an FP32 layer norm fed an FP16 tensor
raises, so every island casts its inputs up and its output back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fp16guard.errors import UnsupportedPolicyError
from fp16guard.numerics.policy import Policy


@dataclass(frozen=True)
class AppliedPolicy:
    """The outcome of applying a policy: which modules were kept in FP32, and notes."""

    policy: Policy
    fp32_modules: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def is_layer_norm(module: nn.Module) -> bool:
    """True for torch's LayerNorm and look-alikes (apex FusedLayerNorm, *LayerNorm classes)."""
    if isinstance(module, nn.LayerNorm):
        return True
    return (
        type(module).__name__.endswith("LayerNorm")
        and hasattr(module, "normalized_shape")
        and hasattr(module, "eps")
    )


class Fp32LayerNorm(nn.Module):
    """A layer norm computed in FP32 whatever its input dtype, returning ``output_dtype``.

    The input is cast up, normalised with FP32 weights, and cast to ``output_dtype``: the
    compute dtype, so that the next FP16 matmul receives what it expects.
    """

    def __init__(self, source: nn.Module, output_dtype: torch.dtype):
        super().__init__()
        self.normalized_shape = tuple(source.normalized_shape)
        self.eps = float(source.eps)
        weight = getattr(source, "weight", None)
        bias = getattr(source, "bias", None)
        self.weight = None if weight is None else nn.Parameter(weight.detach().float().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())
        self.output_dtype = output_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return out.to(self.output_dtype)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, FP32 island -> {self.output_dtype}"


def _cast_floats(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_cast_floats(v, dtype) for v in value)
    if isinstance(value, list):
        return [_cast_floats(v, dtype) for v in value]
    return value


def make_fp32_island(module: nn.Module, output_dtype: torch.dtype) -> nn.Module:
    """Turn ``module`` into an FP32 island in place: FP32 weights, floating inputs cast to FP32,
    floating outputs cast to ``output_dtype``. Hooks keep the module's name and state-dict keys.
    Leave it out of the model's cast (``cast_except(..., keep=[module])``)."""
    module.float()

    def inputs_to_fp32(_module, args, kwargs):
        return _cast_floats(args, torch.float32), {k: _cast_floats(v, torch.float32) for k, v in kwargs.items()}

    def output_to_compute(_module, _args, _kwargs, output):
        return _cast_floats(output, output_dtype)

    module.register_forward_pre_hook(inputs_to_fp32, with_kwargs=True)
    module.register_forward_hook(output_to_compute, with_kwargs=True)
    return module


def block_islands(
    model: nn.Module, blocks: list[nn.Module], numbers: tuple[int, ...], output_dtype: torch.dtype
) -> tuple[list[str], list[nn.Module]]:
    """Make the blocks numbered ``numbers`` (from 1) whole FP32 islands; returns their names
    (for the report) and the modules (for ``cast_except``)."""
    if numbers and max(numbers) > len(blocks):
        raise UnsupportedPolicyError(f"the policy keeps block {max(numbers)} in FP32, but the model has "
                                     f"{len(blocks)} blocks")
    names = {id(m): name for name, m in model.named_modules()}
    chosen = [make_fp32_island(blocks[n - 1], output_dtype) for n in numbers]
    return [f"{names[id(m)]} (whole block)" for m in chosen], chosen


def located_parts(model: nn.Module, blocks: list[nn.Module], parts: tuple[tuple[str, int], ...], block_parts):
    """Each (kind, block number) of ``Policy.fp32_parts`` as (kind, block, block's dotted name,
    the part): ``block_parts(block)[kind]``, or None for ``layer_norm`` (a block's norms are
    found by the caller). Raises UnsupportedPolicyError for a block the model lacks or a part
    that ``block_parts`` does not know."""
    if parts and max(block for _, block in parts) > len(blocks):
        raise UnsupportedPolicyError(
            f"the policy keeps parts of block {max(block for _, block in parts)} in FP32, but the model has "
            f"{len(blocks)} blocks"
        )
    names = {id(m): name for name, m in model.named_modules()}
    for kind, number in parts:
        block = blocks[number - 1]
        located = None if kind == "layer_norm" else block_parts(block).get(kind)
        if kind != "layer_norm" and located is None:
            raise UnsupportedPolicyError(f"block {number} ({type(block).__name__}) has no {kind} that "
                                         "fp16guard can keep in FP32")
        yield kind, block, names[id(block)], located


def part_islands(
    model: nn.Module,
    blocks: list[nn.Module],
    parts: tuple[tuple[str, int], ...],
    output_dtype: torch.dtype,
    block_parts,
) -> tuple[list[str], list[nn.Module]]:
    """Keep parts of single blocks in FP32 (``Policy.fp32_parts``); returns the islands' names
    (for the report) and modules (for ``cast_except``).

    ``block_parts(block)`` is the target's map of a block: ``{"attention": module, "mlp":
    (first_linear, last_linear)}``. The MLP's first linear hands its FP32 output on, so that the
    activation between the two linears is FP32 too: an FP16 cast there would overflow exactly
    where a large pre-activation made the MLP fail.
    """
    names = {id(m): name for name, m in model.named_modules()}
    labels: list[str] = []
    kept: list[nn.Module] = []
    for kind, block, block_name, located in located_parts(model, blocks, parts, block_parts):
        if kind == "layer_norm":
            norms = [name for name, m in block.named_modules() if name and is_layer_norm(m)]
            for name in norms:
                replace_module(block, name, Fp32LayerNorm(block.get_submodule(name), output_dtype))
                kept.append(block.get_submodule(name))
                labels.append(f"{block_name}.{name}")
        elif kind == "mlp":
            first, last = located
            kept += [make_fp32_island(first, torch.float32), make_fp32_island(last, output_dtype)]
            labels.append(f"{names[id(first)]} .. {names[id(last)]} (MLP)")
        else:
            kept.append(make_fp32_island(located, output_dtype))
            labels.append(f"{names[id(located)]} ({kind})")
    return labels, kept


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (dotted path) sits."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def layer_norm_islands(model: nn.Module, output_dtype: torch.dtype) -> list[str]:
    """Replace every layer norm in ``model`` by an FP32 island; returns their names."""
    names = [name for name, module in model.named_modules() if name and is_layer_norm(module)]
    for name in names:
        replace_module(model, name, Fp32LayerNorm(model.get_submodule(name), output_dtype))
    return names


def cast_except(model: nn.Module, dtype: torch.dtype, keep: Iterable[nn.Module]) -> None:
    """Cast floating parameters and buffers to ``dtype``, leaving ``keep`` (and below) alone.

    Parameters are converted in place (``param.data``), so tied weights stay tied.
    """
    kept = {id(m) for island in keep for m in island.modules()}

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    for module in model.modules():
        if id(module) not in kept:
            module._apply(cast, recurse=False)


def apply_generic(model: nn.Module, policy: Policy) -> AppliedPolicy:
    """Apply a policy to any model: only layer-norm islands are architecture-independent."""
    architecture_specific = policy.fp32_positional or policy.fp32_residual or policy.fp32_blocks or policy.fp32_parts
    if architecture_specific or policy.layout != "padded":
        raise UnsupportedPolicyError(
            f"policy {policy.name!r} needs architecture-specific support, and fp16guard does not "
            f"know {type(model).__name__}; layer-norm islands ('fp16+ln32') work on any model"
        )
    if policy.is_full_precision:
        model.float()
        return AppliedPolicy(policy)
    names = layer_norm_islands(model, policy.torch_dtype) if policy.fp32_layer_norms else []
    cast_except(model, policy.torch_dtype, [model.get_submodule(n) for n in names])
    return AppliedPolicy(policy, tuple(names))
