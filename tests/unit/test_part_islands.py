"""Per-block parts in FP32 (Policy.fp32_parts) on every target's architecture: the named parts
hold FP32 weights, everything else the compute dtype, and the model still runs."""

import json

import pytest
import torch

from fp16guard import apply_policy, get_policy
from fp16guard.errors import InputError, UnsupportedPolicyError
from fp16guard.models.dnabert import DnaBertConfig, DnaBertModel
from fp16guard.numerics.policy import Policy
from fp16guard.testing import build_model, plant_mlp_overflow

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
PARTS = Policy("parts", fp32_parts={"layer_norm": [1], "attention": [2], "mlp": [2]})


def fp32_parameters(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.dtype == torch.float32}


def test_parts_serialise_as_kind_to_blocks_and_round_trip(tmp_path):
    assert PARTS.to_dict()["fp32_parts"] == {"layer_norm": [1], "attention": [2], "mlp": [2]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PARTS.to_dict()))
    assert get_policy(str(path)) == PARTS
    assert "MLP of block 2 in FP32" in PARTS.describe() and "layer norms of block 1" in PARTS.describe()


@pytest.mark.parametrize(
    "parts", [{"softmax": [1]}, {"mlp": [0]}, {"mlp": 3}, [["mlp"]]], ids=["kind", "zero", "not-a-list", "pair"]
)
def test_bad_parts_are_input_errors(parts):
    with pytest.raises(InputError):
        Policy("x", fp32_parts=parts)


@pytest.mark.parametrize("device", DEVICES)
def test_esm2_parts_stay_fp32_and_the_rest_is_fp16(device):
    model = build_model(layers=3).to(device)
    applied = apply_policy(model, PARTS)
    assert fp32_parameters(model) == {
        "layers.0.self_attn_layer_norm.weight", "layers.0.self_attn_layer_norm.bias",
        "layers.0.final_layer_norm.weight", "layers.0.final_layer_norm.bias",
        *(f"layers.1.self_attn.{proj}.{kind}"
          for proj in ("q_proj", "k_proj", "v_proj", "out_proj") for kind in ("weight", "bias")),
        "layers.1.fc1.weight", "layers.1.fc1.bias", "layers.1.fc2.weight", "layers.1.fc2.bias",
    }
    assert "layers.1.fc1 .. layers.1.fc2 (MLP)" in applied.fp32_modules
    _, _, tokens = model.alphabet.get_batch_converter()([("a", "MKTAYIAKQRQ"), ("b", "MKV")])
    with torch.no_grad():
        out = model(tokens.to(device), repr_layers=[3])["representations"][3]
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


@pytest.mark.parametrize("device", DEVICES)
def test_an_fp32_mlp_rescues_an_overflow_inside_it_that_an_fp16_mlp_cannot(device):
    model_tokens = None
    results = {}
    for name, policy in (("fp16", "fp16"), ("mlp", Policy("mlp", fp32_parts={"mlp": [2]}))):
        model = build_model(layers=3)
        plant_mlp_overflow(model, layer=1)
        model = model.to(device)
        apply_policy(model, policy)
        if model_tokens is None:
            _, _, model_tokens = model.alphabet.get_batch_converter()([("a", "MKTAYIAKQRQ")])
        with torch.no_grad():
            results[name] = model(model_tokens.to(device), repr_layers=[3])["representations"][3]
    assert not torch.isfinite(results["fp16"]).all()
    assert torch.isfinite(results["mlp"]).all()


def test_naming_parts_of_a_block_the_model_lacks_is_a_clear_error():
    with pytest.raises(UnsupportedPolicyError) as info:
        apply_policy(build_model(layers=2), Policy("x", fp32_parts={"mlp": [3]}))
    assert "block 3" in str(info.value) and "2 blocks" in str(info.value)


def test_hf_parts(tmp_path):
    from transformers import AutoModel

    from fp16guard.testing import write_hf_bert

    model = AutoModel.from_pretrained(write_hf_bert(tmp_path / "bert"))
    applied = apply_policy(model, PARTS)
    kept = fp32_parameters(model)
    assert {"encoder.layer.1.intermediate.dense.weight", "encoder.layer.1.output.dense.weight",
            "encoder.layer.1.attention.self.query.weight", "encoder.layer.0.attention.output.LayerNorm.weight",
            "encoder.layer.0.output.LayerNorm.weight"} <= kept
    assert not any(name.startswith("encoder.layer.0.attention.self") or "embeddings" in name for name in kept)
    assert "encoder.layer.1.attention.self (attention)" in applied.fp32_modules
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_dnabert_parts():
    config = DnaBertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32
    )
    model = DnaBertModel(config)
    apply_policy(model, PARTS)
    kept = fp32_parameters(model)
    assert {"encoder.layer.1.attention.self.Wqkv.weight", "encoder.layer.1.mlp.gated_layers.weight",
            "encoder.layer.1.mlp.wo.weight", "encoder.layer.0.mlp.layernorm.weight"} <= kept
    assert "encoder.layer.0.attention.self.Wqkv.weight" not in kept
    ids = torch.tensor([[1, 5, 6, 2]])
    out = model(ids, torch.ones_like(ids))[-1]
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
