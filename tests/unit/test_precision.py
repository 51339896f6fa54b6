"""Policy conversion on fair-esm models and generic ones: which modules stay FP32, and that the
converted model still runs and gives what the policy promises."""

import json
import math

import pytest
import torch
from torch import nn

from fp16guard import apply_policy, get_policy
from fp16guard.errors import InputError, UnsupportedPolicyError
from fp16guard.models.esm2 import Fp32ResidualLayer, Fp32Rotary
from fp16guard.numerics.policy import FP16, FP16_LN32, FP16_POS32, FP16_RES32, FP32, LADDER, Policy
from fp16guard.numerics.precision import Fp32LayerNorm
from fp16guard.testing import LAYERS, build_model, plant_residual_overflow


def tokens_for(model, sequences):
    _, _, tokens = model.alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(sequences)])
    return tokens


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]

SEQS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MKVLAAGIVG", "ACDEFGHIKLMNPQRSTVWY" * 3]


def representation(model, tokens, layer=LAYERS):
    with torch.no_grad():
        return model(tokens, repr_layers=[layer])["representations"][layer]


def dtypes_outside(model, island_types):
    kept = {id(p) for m in model.modules() if isinstance(m, island_types) for p in m.parameters()}
    return {p.dtype for p in model.parameters() if id(p) not in kept}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", LADDER, ids=lambda p: p.name)
def test_each_rung_keeps_the_promised_modules_in_fp32_and_runs(policy, device):
    model = build_model().to(device)
    applied = apply_policy(model, policy)
    islands = [m for m in model.modules() if isinstance(m, Fp32LayerNorm)]
    rotaries = [m for m in model.modules() if isinstance(m, Fp32Rotary)]
    residual_layers = [m for m in model.layers if isinstance(m, Fp32ResidualLayer)]
    # 2 layer norms per block, emb_layer_norm_after and the LM head's.
    assert len(islands) == (2 * LAYERS + 2 if policy.fp32_layer_norms else 0)
    assert len(rotaries) == (LAYERS if policy.fp32_positional else 0)
    assert len(residual_layers) == (LAYERS if policy.fp32_residual else 0)
    assert all(p.dtype == torch.float32 for m in islands + rotaries for p in [*m.parameters(), *m.buffers()])
    assert dtypes_outside(model, (Fp32LayerNorm,)) == {torch.float16}
    assert len(applied.fp32_modules) == len(islands) + len(rotaries) + len(residual_layers)
    # The tied LM-head weight stays tied after the cast.
    assert model.lm_head.weight is model.embed_tokens.weight
    out = representation(model, tokens_for(model, SEQS).to(device))
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()


def test_fp32_policy_leaves_everything_fp32():
    model = build_model()
    applied = apply_policy(model, "fp32")
    assert applied.fp32_modules == ()
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_layer_norm_island_casts_in_and_out():
    island = Fp32LayerNorm(nn.LayerNorm(8), torch.float16)
    x16 = torch.randn(3, 8).half()
    assert island(x16).dtype == torch.float16
    assert island(x16.float()).dtype == torch.float16
    reference = nn.functional.layer_norm(x16.float(), (8,))
    assert torch.allclose(island(x16).float(), reference, atol=2e-3)


def test_fp32_rotary_tables_are_far_more_accurate_than_fp16_tables():
    """At long positions FP16 angles lose ~0.4 rad; the FP32 tables are exact before the cast."""
    from esm.rotary_embedding import RotaryEmbedding

    dim, length = 64, 1026
    exact = RotaryEmbedding(dim)
    q = torch.randn(1, length, dim)
    reference_q, _ = exact(q, q)
    stock = RotaryEmbedding(dim).half()  # what model.half() does to the inv_freq buffer
    fp16_q, _ = stock(q.half(), q.half())
    island = Fp32Rotary(RotaryEmbedding(dim))
    island_q, _ = island(q.half(), q.half())
    assert island_q.dtype == torch.float16
    stock_error = (fp16_q.float() - reference_q).abs().max().item()
    island_error = (island_q.float() - reference_q).abs().max().item()
    assert stock_error > 0.1
    assert island_error < 0.02
    assert island_error * 10 < stock_error


@pytest.mark.parametrize("device", DEVICES)
def test_residual_stream_in_fp32_rescues_a_planted_overflow(device):
    tokens = None
    outputs = {}
    for policy in (FP32, FP16, FP16_LN32, FP16_POS32, FP16_RES32):
        model = build_model()
        plant_residual_overflow(model)
        tokens = tokens_for(model, SEQS).to(device) if tokens is None else tokens
        model.to(device)
        apply_policy(model, policy)
        outputs[policy.name] = representation(model, tokens).float()
    assert torch.isfinite(outputs["fp32"]).all()
    for name in ("fp16", "fp16+ln32", "fp16+pos32"):
        assert not torch.isfinite(outputs[name]).all(), name
    rescued = outputs["fp16+res32"]
    assert torch.isfinite(rescued).all()
    cos = nn.functional.cosine_similarity(rescued.flatten(0, 1), outputs["fp32"].flatten(0, 1), dim=-1)
    assert cos.min() > 0.999


@pytest.mark.parametrize("device", DEVICES)
def test_stale_rotary_cache_from_an_fp32_run_is_reset(device):
    """fair-esm keys its cos/sin cache on length and device only; converting a model that already
    ran in FP32 must not hand FP32 tables to FP16 attention."""
    model = build_model().to(device)
    tokens = tokens_for(model, SEQS).to(device)
    representation(model, tokens)  # fills the cache with FP32 tables
    apply_policy(model, FP16)
    out = representation(model, tokens)
    assert out.dtype == torch.float16


def test_policies_are_data_and_round_trip_through_json(tmp_path):
    for policy in (FP32, *LADDER):
        path = tmp_path / f"{policy.name}.json"
        path.write_text(json.dumps(policy.to_dict()))
        assert get_policy(str(path)) == policy
        assert get_policy(policy.to_dict()) == policy
        assert get_policy(policy.name) is policy
    custom = Policy("mine", dtype="bfloat16", fp32_layer_norms=True)
    assert Policy.from_dict(custom.to_dict()) == custom


@pytest.mark.parametrize(
    "spec",
    ["fp8", {"name": "x", "dtype": "float8"}, {"name": "x", "fp32_residual": True}, {"name": "x", "colour": "red"}],
)
def test_bad_policies_are_input_errors(spec):
    with pytest.raises(InputError) as info:
        get_policy(spec)
    assert info.value.exit_code == 2


def test_generic_models_get_layer_norm_islands_but_refuse_architecture_specific_rungs():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    applied = apply_policy(model, FP16_LN32)
    assert applied.fp32_modules == ("1",)
    assert model[0].weight.dtype == torch.float16 and model[1].weight.dtype == torch.float32
    out = model(torch.randn(2, 4).half())
    assert out.dtype == torch.float16 and not math.isnan(out.sum().item())
    with pytest.raises(UnsupportedPolicyError):
        apply_policy(nn.Sequential(nn.Linear(4, 4)), FP16_RES32)


def test_policy_naming_blocks_the_model_lacks_is_a_clear_error():
    model = build_model()
    with pytest.raises(UnsupportedPolicyError) as info:
        apply_policy(model, {"name": "mine", "fp32_blocks": [2, LAYERS + 1]})
    assert f"block {LAYERS + 1}" in str(info.value) and f"{LAYERS} blocks" in str(info.value)
    with pytest.raises(InputError):
        get_policy({"name": "mine", "fp32_blocks": [0]})
