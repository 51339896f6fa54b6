"""A fresh model for one attempt: the loaded weights copied, the policy applied, placed."""

from __future__ import annotations

import copy

import torch
from torch import nn

from fp16guard.models.base import LoadedModel, Target
from fp16guard.numerics.policy import Policy
from fp16guard.numerics.precision import AppliedPolicy


def build(
    target: Target, loaded: LoadedModel, policy: Policy, device: torch.device, spread: bool = False
) -> tuple[nn.Module, AppliedPolicy]:
    """A fresh model from the loaded weights with ``policy`` applied, in eval mode on ``device``
    (with ``spread``: its blocks spread over every visible GPU, inputs and outputs on the first).

    A fresh copy per attempt means no state (such as a rotary cos/sin cache) leaks between
    precisions. The cast happens on the host, so FP16 attempts move half the bytes.
    """
    module = copy.deepcopy(loaded.module)
    applied = target.apply_policy(module, policy)
    if spread:
        from fp16guard.execution.placement import spread as spread_over_gpus

        return spread_over_gpus(module, {type(b).__name__ for b in target.blocks(module)})[0], applied
    return module.to(device).eval(), applied
