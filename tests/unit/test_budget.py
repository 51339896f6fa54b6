"""The default token budget: a pure estimate from free memory and the model's dimensions."""

import pytest
import torch

from fp16guard.execution.budget import (
    CPU_MAX_TOKENS,
    MAX_TOKENS,
    MIN_TOKENS,
    ROUND_TO,
    ModelDims,
    activation_bytes_per_token,
    auto_max_tokens,
    estimate_max_tokens,
    model_dims,
)

GiB = 1024**3
ESM2_650M = ModelDims(hidden=1280, heads=20, ffn=5120)
ESM2_15B = ModelDims(hidden=5120, heads=40, ffn=20480)


def test_a_large_gpu_is_capped_where_larger_batches_stop_paying():
    budget, reason = estimate_max_tokens(130 * GiB, 650_000_000 * 4, ESM2_650M, 1024)
    assert budget == MAX_TOKENS
    assert "capped" in reason and "130.0 GiB free" in reason and "hidden 1280, 20 heads, FFN 5120" in reason


def test_a_tight_fit_follows_the_estimate_rounded_down():
    free, weights = 80 * GiB, 15_000_000_000 * 4
    budget, reason = estimate_max_tokens(free, weights, ESM2_15B, 1024)
    room = int((0.8 * free - weights) // activation_bytes_per_token(ESM2_15B, 1024))
    assert MIN_TOKENS < budget < MAX_TOKENS
    assert budget == room // ROUND_TO * ROUND_TO
    assert f"room for {room:,}" in reason


def test_less_free_memory_or_longer_sequences_never_raise_the_budget():
    free = [4 * GiB, 8 * GiB, 16 * GiB, 32 * GiB]
    budgets = [estimate_max_tokens(f, 2 * GiB, ESM2_650M, 1024)[0] for f in free]
    assert budgets == sorted(budgets) and budgets[0] < budgets[-1]
    by_length = [estimate_max_tokens(12 * GiB, 2 * GiB, ESM2_650M, n)[0] for n in (128, 512, 1024, 4096)]
    assert by_length == sorted(by_length, reverse=True) and by_length[0] > by_length[-1]


def test_weights_larger_than_free_memory_give_the_floor():
    budget, reason = estimate_max_tokens(10 * GiB, 12 * GiB, ESM2_650M, 1024)
    assert budget == MIN_TOKENS
    assert "no room" in reason


def test_the_attention_term_is_quadratic_in_length():
    short, long = (activation_bytes_per_token(ESM2_650M, n) for n in (1000, 2000))
    linear = activation_bytes_per_token(ModelDims(1280, 0, 5120), 1000)
    assert long - short == short - linear  # per token linear in length: per batch quadratic


def test_model_dims_of_each_family():
    from transformers import BertConfig, BertModel

    from fp16guard.models.dnabert import DnaBertConfig, DnaBertModel
    from fp16guard.testing import build_model

    assert model_dims(build_model(layers=2, dim=32, heads=4)) == ModelDims(32, 4, 128)
    bert = BertModel(BertConfig(hidden_size=48, num_attention_heads=6, intermediate_size=96, num_hidden_layers=1))
    assert model_dims(bert) == ModelDims(48, 6, 96)
    dnabert = DnaBertModel(DnaBertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                         num_hidden_layers=1))
    assert model_dims(dnabert) == ModelDims(32, 4, 64)
    assert model_dims(torch.nn.Sequential(torch.nn.Embedding(10, 256))) == ModelDims(256, 4, 1024)


def test_cpu_gets_the_fixed_default():
    budget, reason = auto_max_tokens(torch.nn.Linear(2, 2), 6, torch.device("cpu"), 1024)
    assert budget == CPU_MAX_TOKENS and "cpu" in reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_budget_comes_from_free_memory():
    from fp16guard.testing import build_model

    model = build_model(layers=2, dim=32, heads=4)
    budget, reason = auto_max_tokens(model, sum(p.numel() for p in model.parameters()), torch.device("cuda"), 1024)
    assert MIN_TOKENS <= budget <= MAX_TOKENS and budget % ROUND_TO == 0
    assert "GiB free" in reason
