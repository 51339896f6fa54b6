"""Policy pieces for transformers models: FP32-softmax attention, hook islands, residual adds."""

import pytest
import torch
from torch import nn

from fp16guard import apply_policy
from fp16guard.models.hf import Fp32ResidualOutput, fp32_softmax_attention, is_residual_output
from fp16guard.numerics.precision import make_fp32_island


def test_fp32_softmax_attention_matches_eager_attention_in_fp32():
    from transformers.models.bert.modeling_bert import eager_attention_forward

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    mask = torch.zeros(2, 1, 6, 6)
    mask[1, :, :, 4:] = torch.finfo(torch.float32).min  # padding in the second row
    module = nn.Module().eval()
    expected, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.3)
    got, probs = fp32_softmax_attention(module, q, k, v, mask, scaling=0.3)
    assert torch.allclose(got, expected, atol=1e-6)
    assert probs[1, :, :, 4:].abs().max() == 0


def test_fp32_softmax_keeps_fp16_scores_from_saturating_the_softmax():
    """Scores summed in FP16 round to 11 bits; the FP32 softmax of them is what the island adds."""
    q = torch.full((1, 1, 2, 64), 3.0).half()
    k = torch.full((1, 1, 2, 64), 3.0).half()
    v = torch.eye(2).view(1, 1, 2, 2).half()
    out, probs = fp32_softmax_attention(nn.Module().eval(), q, k, v, None, scaling=1.0)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert torch.allclose(probs.float().sum(-1), torch.ones(1, 1, 2), atol=1e-3)


def test_hook_island_runs_fp32_inside_and_returns_the_compute_dtype():
    seen = []
    linear = nn.Linear(4, 4)
    linear.register_forward_hook(lambda m, a, o: seen.append((a[0].dtype, o.dtype)))
    make_fp32_island(linear, torch.float16)
    out = linear(torch.randn(2, 4).half())
    assert out.dtype == torch.float16
    assert seen == [(torch.float32, torch.float32)]
    assert linear.weight.dtype == torch.float32


def test_residual_output_adds_in_fp32():
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertOutput
    from transformers.models.esm.modeling_esm import EsmConfig, EsmOutput

    bert = BertOutput(BertConfig(hidden_size=8, intermediate_size=16)).eval()
    esm = EsmOutput(EsmConfig(hidden_size=8, intermediate_size=16, vocab_size=33)).eval()
    assert is_residual_output(bert) and is_residual_output(esm)
    assert not is_residual_output(nn.Linear(2, 2))
    wrapped = Fp32ResidualOutput(esm.half())
    residual = torch.full((1, 2, 8), 60000.0).half()
    with torch.no_grad():
        wrapped.dense.bias.fill_(10000.0)
        wrapped.dense.weight.zero_()
        out = wrapped(torch.zeros(1, 2, 16).half(), residual)
    # 70000 is beyond FP16: the FP32 add keeps it, and hands the FP32 stream on.
    assert out.dtype == torch.float32 and torch.allclose(out, torch.full_like(out, 70000.0))
    assert set(dict(wrapped.named_children())) == {"dense", "dropout"}


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_apply_policy_dispatches_transformers_models(tmp_path, device):
    from transformers import AutoModel

    from fp16guard.testing import write_hf_esm

    model = AutoModel.from_pretrained(write_hf_esm(tmp_path / "esm")).to(device)
    applied = apply_policy(model, "fp16+res32")
    assert "attention softmax (every layer)" in applied.fp32_modules
    assert model.config._attn_implementation == "fp16guard_fp32_softmax"
    assert any(n.endswith("rotary_embeddings") for n in applied.fp32_modules)
    ids = torch.tensor([[0, 5, 6, 7, 2]], device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
