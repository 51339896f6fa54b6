"""Fast attention (scaled_dot_product_attention) against each model's own attention, in FP32."""

import copy

import pytest
import torch
from test_dnabert import plain_dnabert

from fp16guard import apply_policy
from fp16guard.errors import UnsupportedPolicyError
from fp16guard.models.dnabert import DnaBertConfig, DnaBertModel
from fp16guard.models.esm2 import Fp32Rotary, SdpaAttention
from fp16guard.numerics.policy import FP16, FP16_RES32, FP16_SDPA, Policy, fast_variant, get_policy
from fp16guard.testing import build_model, plant_residual_overflow

FP32_FAST = Policy("fp32+sdpa", "float32", fast_attention=True)


def esm_tokens(padded: bool) -> torch.Tensor:
    # cls=0, eos=2, pad=1 in fair-esm's ESM-1b alphabet; residues are ids 4..28.
    rows = [[0, 5, 6, 7, 8, 9, 10, 11, 12, 2], [0, 13, 14, 15, 16, 17, 18, 19, 20, 2]]
    if padded:
        rows[1] = [0, 13, 14, 15, 2, 1, 1, 1, 1, 1]
    return torch.tensor(rows)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("positional", [False, True])
def test_esm2_sdpa_equals_fair_esm_attention_in_fp32(padded, positional):
    model = build_model(layers=4, dim=64, heads=4).eval()
    with torch.no_grad():  # larger weights than the init, so attention depends on the inputs
        for layer in model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.mul_(4.0)
    fast = copy.deepcopy(model)
    applied = apply_policy(fast, FP32_FAST)
    assert all(isinstance(layer.self_attn, SdpaAttention) for layer in fast.layers)
    if positional:  # the rotary of FP32-table policies (a no-op in FP32, but its own code path)
        for layer in fast.layers:
            layer.self_attn.rot_emb = Fp32Rotary(layer.self_attn.rot_emb)
    assert list(fast.state_dict()) == list(model.state_dict())
    assert "no attention maps" in applied.notes[0]
    tokens = esm_tokens(padded)
    layers = list(range(5))
    with torch.inference_mode():
        expected = model(tokens, repr_layers=layers)["representations"]
        got = fast(tokens, repr_layers=layers)["representations"]
        other = model(esm_tokens(not padded), repr_layers=[4])["representations"][4]
    real = tokens != 1
    for n in layers:
        assert torch.allclose(got[n][real], expected[n][real], atol=1e-5, rtol=1e-5), n
    # Not vacuous: the second row's first residues see different keys with and without padding.
    assert not torch.allclose(expected[4][1, :4], other[1, :4], atol=1e-3)


def test_esm2_fast_attention_refuses_attention_maps():
    model = build_model()
    apply_policy(model, FP32_FAST)
    with pytest.raises(UnsupportedPolicyError, match="attention maps"):
        model(esm_tokens(False), return_contacts=True)


def test_esm2_fast_attention_combines_with_the_fp32_residual_stream():
    """fp16+res32+sdpa rescues the planted residual overflow as fp16+res32 does (CPU FP16)."""
    model = build_model()
    plant_residual_overflow(model)
    tokens = esm_tokens(True)
    with torch.inference_mode():
        expected = model(tokens, repr_layers=[3])["representations"][3]
        fast = copy.deepcopy(model)
        applied = apply_policy(fast, fast_variant(FP16_RES32))
        got = fast(tokens, repr_layers=[3])["representations"][3].float()
    assert applied.policy.name == "fp16+res32+sdpa" and applied.policy.fast_attention
    assert "layers.0 (residual adds)" in applied.fp32_modules
    assert isinstance(fast.layers[0].self_attn, SdpaAttention)
    real = tokens != 1
    assert torch.isfinite(got).all()
    assert torch.nn.functional.cosine_similarity(got[real], expected[real], dim=-1).min() > 0.999


def test_fast_variant_names_and_round_trip():
    assert fast_variant(FP16) == FP16_SDPA == get_policy("fp16+sdpa")
    assert FP16_SDPA.fp32_positional and not FP16_SDPA.fp32_layer_norms
    variant = fast_variant(FP16_RES32)
    assert variant.name == "fp16+res32+sdpa" and variant.fp32_residual and variant.fast_attention
    assert Policy.from_dict(variant.to_dict()) == variant
    assert "fused attention (SDPA)" in variant.describe()
    old = {k: v for k, v in FP16.to_dict().items() if k != "fast_attention"}  # a file from before the field
    assert Policy.from_dict(old) == FP16


def dnabert(heads: int = 3) -> DnaBertModel:
    torch.manual_seed(0)
    config = DnaBertConfig(
        vocab_size=40, hidden_size=24, num_hidden_layers=2, num_attention_heads=heads, intermediate_size=40
    )
    model = DnaBertModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("padded", [False, True])
def test_dnabert_fast_policy_equals_the_plain_recomputation_in_fp32(padded):
    model = dnabert()
    ids = torch.tensor([[1, 7, 9, 12, 30, 2, 4], [1, 5, 6, 2, 3, 3, 3]])
    mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0] if padded else [1] * 7])
    bias = model.encoder.attention_bias(mask)
    assert bias.shape[0] == (2 if padded else 1)  # no padding: one table broadcast over the batch
    assert bias.stride(-2) % 8 == 0  # rows aligned for the memory-efficient kernel
    applied = apply_policy(model, Policy("fp32+pos32+sdpa", "float32", fp32_positional=True, fast_attention=True))
    assert not any(layer.attention.self.fp32_scores for layer in model.encoder.layer)
    with torch.no_grad():
        got = model(ids, mask)[-1]
    expected = plain_dnabert(model, ids, mask)
    real = mask.bool()
    assert torch.allclose(got[real].double(), expected[real], atol=1e-4)
    assert applied.policy.fast_attention


def test_dnabert_fast_variant_drops_the_fp32_scores_but_keeps_fp32_scores_otherwise():
    slow, fast = dnabert(4), dnabert(4)
    assert any("ALiBi bias and softmax" in n for n in apply_policy(slow, "fp16+pos32").fp32_modules)
    applied = apply_policy(fast, fast_variant(get_policy("fp16+pos32")))
    assert not any("ALiBi" in n for n in applied.fp32_modules)
    assert "cast once" in applied.notes[0]
    # Mixed: an FP32 block island gets the FP32 bias, FP16 blocks the FP16 one.
    mixed = dnabert(4)
    apply_policy(mixed, Policy("mixed", fast_attention=True, fp32_blocks=(1,)))
    seen = []
    for layer in mixed.encoder.layer:
        layer.register_forward_pre_hook(lambda module, args: seen.append(args[1].dtype))
    ids = torch.tensor([[1, 7, 9, 12, 2]])
    with torch.no_grad():
        out = mixed(ids, torch.ones_like(ids))[-1]
    assert seen == [torch.float32, torch.float16] and torch.isfinite(out).all()


def test_hf_fast_attention_is_transformers_sdpa(tmp_path):
    from transformers import AutoModel

    from fp16guard.testing import write_hf_esm

    directory = write_hf_esm(tmp_path / "esm")
    model = AutoModel.from_pretrained(directory, attn_implementation="eager")
    applied = apply_policy(model, fast_variant(get_policy("fp16+pos32")))
    assert model.config._attn_implementation == "sdpa"
    assert "attention softmax (every layer)" not in applied.fp32_modules
    assert any("sdpa" in note for note in applied.notes)

    class NoSdpa(torch.nn.Module):
        _supports_sdpa = False

    from fp16guard.models.hf import HF

    with pytest.raises(UnsupportedPolicyError, match="scaled_dot_product_attention"):
        HF.apply_policy(NoSdpa(), FP16_SDPA)
