"""The registry of model families. Each target module is imported only when it is used."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from torch import nn

    from ..policy import Policy
    from ..precision import AppliedPolicy
    from .base import Target

#: target name -> "module:attribute" of its Target instance
REGISTRY: dict[str, str] = {
    "esm2": "fp16guard.targets.esm2:TARGET",
    "hf": "fp16guard.targets.hf:HF",
    "antiberty": "fp16guard.targets.hf:ANTIBERTY",
    "dnabert": "fp16guard.targets.dnabert:TARGET",
}


def get_target(name: str) -> Target:
    """The target registered as ``name``."""
    try:
        module_name, attribute = REGISTRY[name].split(":")
    except KeyError:
        raise InputError(f"unknown target {name!r}; known: {', '.join(REGISTRY)}") from None
    return getattr(import_module(module_name), attribute)


def adapter_for(model: nn.Module) -> Callable[[nn.Module, Policy], AppliedPolicy]:
    """The policy converter for ``model``: its target's, or the generic one."""
    from ..precision import apply_generic

    for name in ("esm2", "dnabert", "hf"):
        target = get_target(name)
        if target.adapts(model):
            return target.apply_policy
    return apply_generic
