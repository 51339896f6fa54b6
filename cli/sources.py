"""Where each target's model comes from: the model-source options of its validate and embed
commands, turned into the ModelSource the library loads."""

from __future__ import annotations

from fp16guard.core.config import ModelSource
from fp16guard_cli.options import (
    DnabertModelOption,
    DnabertRemoteCodeOption,
    Esm2ModelOption,
    HfModelOption,
    OfflineOption,
    Pooling,
    PoolingOption,
    TrustRemoteCodeOption,
    WeightsOption,
)


def esm2(
    model: Esm2ModelOption = "esm2_t33_650M_UR50D",
    weights: WeightsOption = None,
    offline: OfflineOption = False,
) -> ModelSource:
    """An ESM-2 checkpoint (fair-esm) by name, or a local .pt file."""
    return ModelSource(model=model, weights=weights, offline=offline)


def hf(
    model: HfModelOption,
    pooling: PoolingOption = Pooling.mean,
    trust_remote_code: TrustRemoteCodeOption = False,
    offline: OfflineOption = False,
) -> ModelSource:
    """A Hugging Face encoder: a model directory or a hub id."""
    return ModelSource(model=model, offline=offline, trust_remote_code=trust_remote_code, pooling=pooling.value)


def dnabert(
    model: DnabertModelOption = "zhihan1996/DNABERT-S",
    trust_remote_code: DnabertRemoteCodeOption = False,
    offline: OfflineOption = False,
) -> ModelSource:
    """DNABERT-S or DNABERT-2: a model directory or a hub id."""
    return ModelSource(model=model, offline=offline, trust_remote_code=trust_remote_code)


def antiberty(pooling: PoolingOption = Pooling.mean) -> ModelSource:
    """AntiBERTy, whose weights ship in the antiberty package (never downloaded)."""
    return ModelSource(offline=True, pooling=pooling.value)
