"""The model families, resolved from the one registry (``REGISTRY``, defined with the catalog so
that it stays light). Each target module is imported only when it is used."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from fp16guard.errors import InputError
from fp16guard.models.catalog import REGISTRY, TargetSpec

if TYPE_CHECKING:
    from torch import nn

    from fp16guard.models.base import Target
    from fp16guard.numerics.policy import Policy
    from fp16guard.numerics.precision import AppliedPolicy

__all__ = ["REGISTRY", "TargetSpec", "adapter_for", "apply_policy", "get_target"]


def get_target(name: str) -> Target:
    """The target registered as ``name``."""
    try:
        module_name, attribute = REGISTRY[name].location.split(":")
    except KeyError:
        raise InputError(f"unknown target {name!r}; known: {', '.join(REGISTRY)}") from None
    return getattr(import_module(module_name), attribute)


def adapter_for(model: nn.Module) -> Callable[[nn.Module, Policy], AppliedPolicy]:
    """The policy converter for ``model``: its target's, or the generic one."""
    from fp16guard.numerics.precision import apply_generic

    for spec in REGISTRY.values():
        if spec.converts_user_models:
            target = get_target(spec.name)
            if target.adapts(model):
                return target.apply_policy
    return apply_generic


def apply_policy(model: nn.Module, policy: str | Path | Policy | dict) -> AppliedPolicy:
    """Convert ``model`` in place to ``policy`` (a name, a JSON file, a dict or a Policy).

    Use it on an FP32 model, on the device it will run on, and do not cast the model
    afterwards (``.half()`` would round the FP32 islands). Returns the modules kept in FP32.
    A model converted under a packed policy still runs padded batches through its own
    ``forward``; ``fp16guard.Embedder`` runs it packed.
    """
    from fp16guard.numerics.policy import get_policy

    return adapter_for(model)(model, get_policy(policy))
