"""T5 policies as a library user applies them, on transformers' own T5EncoderModel."""

import pytest
import torch

from fp16guard import apply_policy
from fp16guard.models.t5 import describe_mismatch
from fp16guard.numerics.policy import FP16, FP16_KEEP32, FP16_LN32, LADDER, Policy, get_policy, with_class_fp32


def tiny_t5(gated=False, seed=0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=30, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
        feed_forward_proj="gated-gelu" if gated else "relu",
    )
    return T5EncoderModel(config).eval()


def embed(model, tokens):
    mask = torch.ones_like(tokens)
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=mask).last_hidden_state.float().mean(1)


def test_keep32_is_what_from_pretrained_loads(tmp_path):
    """fp16+keep32 leaves exactly the parameters in FP32 that from_pretrained(dtype=float16)
    leaves there; fp16 is .half()."""
    from transformers import T5EncoderModel

    model = tiny_t5()
    model.save_pretrained(tmp_path)
    loaded = T5EncoderModel.from_pretrained(tmp_path, dtype=torch.float16)
    expected = {n: p.dtype for n, p in loaded.named_parameters()}
    ours = T5EncoderModel.from_pretrained(tmp_path, dtype=torch.float32)
    applied = apply_policy(ours, FP16_KEEP32)
    assert {n: p.dtype for n, p in ours.named_parameters()} == expected
    assert sum(d == torch.float32 for d in expected.values()) == 2  # wo of each block
    wo = [f"encoder.block.{i}.layer.1.DenseReluDense.wo" for i in range(2)]
    assert [m.split()[0] for m in applied.fp32_modules] == wo
    half = T5EncoderModel.from_pretrained(tmp_path, dtype=torch.float32)
    apply_policy(half, FP16)
    assert {p.dtype for p in half.parameters()} == {torch.float16}


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("name", ["fp16", "fp16+keep32", "fp16+ln32", "fp16+pos32", "fp16+res32", "fp16+sdpa"])
def test_every_policy_runs_a_t5_close_to_fp32(name, gated):
    tokens = torch.randint(0, 30, (2, 40))
    reference = embed(tiny_t5(gated), tokens)
    model = tiny_t5(gated)
    apply_policy(model, name)
    out = embed(model, tokens)
    assert torch.isfinite(out).all()
    assert torch.nn.functional.cosine_similarity(out, reference).min() > 0.999


def test_pos32_adds_the_fp32_bias_to_fp32_scores():
    """Under fp16+pos32 the relative position bias table is FP32, and the attention that reads
    it gives what the FP32 model gives to within FP16 rounding of the projections."""
    model = tiny_t5()
    applied = apply_policy(model, "fp16+pos32")
    table = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
    assert table.weight.dtype == torch.float32
    assert "attention scores, position bias and softmax (every layer)" in applied.fp32_modules
    assert model.config._attn_implementation == "fp16guard_fp32_softmax"


def test_fp32_softmax_attention_matches_eager_with_position_bias():
    from transformers.models.t5.modeling_t5 import eager_attention_forward

    from fp16guard.models.hf import fp32_softmax_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8) for _ in range(3))
    bias = torch.randn(1, 4, 7, 7) * 3
    mask = torch.zeros(2, 1, 1, 7)
    mask[1, ..., 5:] = torch.finfo(torch.float32).min
    module = torch.nn.Module().eval()
    ours, _ = fp32_softmax_attention(module, q, k, v, mask, scaling=1.0, position_bias=bias)
    theirs, _ = eager_attention_forward(module, q, k, v, mask, scaling=1.0, position_bias=bias)
    torch.testing.assert_close(ours, theirs)
    without, _ = fp32_softmax_attention(module, q, k, v, mask, scaling=1.0)
    assert not torch.allclose(without, theirs)


def test_block_islands_keep_their_hidden_output_in_fp32():
    model = tiny_t5()
    applied = apply_policy(model, Policy("blocks", fp32_blocks=(1,)))
    assert applied.fp32_modules == ("encoder.block.0 (whole block, FP32 output)",)
    seen = {}
    model.encoder.block[1].register_forward_pre_hook(lambda _m, args: seen.update(dtype=args[0].dtype))
    embed(model, torch.randint(0, 30, (1, 9)))
    assert seen["dtype"] == torch.float32


def test_ladder_gets_keep32_right_after_fp16():
    names = [p.name for p in with_class_fp32(list(LADDER))]
    assert names == ["fp16", "fp16+keep32", "fp16+ln32", "fp16+pos32", "fp16+res32"]
    assert with_class_fp32([FP16_LN32]) == [FP16_LN32]
    assert get_policy("fp16+keep32").keep_in_fp32_modules
    round_trip = Policy.from_dict(FP16_KEEP32.to_dict())
    assert round_trip == FP16_KEEP32


def test_mismatch_names_missing_and_unexpected_keys_by_stack():
    text = describe_mismatch("T5Model", ["decoder.block.0.layer.0.SelfAttention.q.weight"], [])
    assert "1 decoder parameter(s) that T5Model needs are missing" in text and "encoder only" in text
    text = describe_mismatch("T5EncoderModel", ["encoder.block.1.layer.0.layer_norm.weight"], ["head.weight"])
    assert "1 encoder parameter(s)" in text and "1 parameter(s) in the checkpoint fit no part" in text
    assert "decoder" not in text


def test_fast_attention_hands_sdpa_a_mask_with_unit_last_stride(monkeypatch):
    """Fused CUDA kernels refuse an attn_mask whose last stride is not 1; T5's permuted bias
    lookup has a last stride of the head count. Under fp16+sdpa the bias and the mask that
    reaches SDPA are contiguous, and the embeddings are the same as the default layout's."""
    tokens = torch.randint(0, 30, (3, 21))
    plain = tiny_t5().float()
    assert not plain.encoder.block[0].layer[0].SelfAttention.compute_bias(21, 21).is_contiguous()
    model = tiny_t5()
    applied = apply_policy(model, Policy("fp32+sdpa", "float32", fast_attention=True))
    bias = model.encoder.block[0].layer[0].SelfAttention.compute_bias(21, 21)
    assert bias.is_contiguous()
    assert torch.equal(bias, plain.encoder.block[0].layer[0].SelfAttention.compute_bias(21, 21))
    assert any("laid out contiguously" in note for note in applied.notes)
    masks = []
    original = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    mask = torch.ones_like(tokens)
    mask[1:, 15:] = 0
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=mask).last_hidden_state
    assert masks and all(m is not None and m.stride(-1) == 1 for m in masks)
    monkeypatch.undo()
    apply_policy(plain, Policy("fp32+sdpa", "float32"))
    with torch.no_grad():
        expected = plain(input_ids=tokens, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("parts", [(("mlp", 3),), (("layer_norm", 1), ("attention", 5))])
def test_parts_of_a_block_the_model_lacks_are_refused(parts):
    from fp16guard.errors import UnsupportedPolicyError

    with pytest.raises(UnsupportedPolicyError, match=r"keeps parts of block \d in FP32, but the model has 2 blocks"):
        apply_policy(tiny_t5(), Policy("fp16+parts", fp32_parts=parts))


def test_parts_islands_name_each_part_of_the_block():
    policy = Policy("fp16+parts", fp32_parts=(("layer_norm", 1), ("attention", 2), ("mlp", 2)))
    applied = apply_policy(tiny_t5(), policy)
    assert applied.fp32_modules == (
        "encoder.block.0.layer.0.layer_norm", "encoder.block.0.layer.1.layer_norm",
        "encoder.block.1.layer.0.SelfAttention (attention)",
        "encoder.block.1.layer.1.DenseReluDense (MLP: wi .. wo, FP32 output)",
    )


@pytest.mark.parametrize("blocks, parts", [
    ((), (("attention", 1),)), ((), (("mlp", 2),)), ((), (("layer_norm", 2), ("attention", 2))), ((1,), ()), ((2,), ()),
])
def test_islands_under_fused_attention_stay_close_to_fp32(blocks, parts):
    """Search results with fused attention (the recommended fp16+islands32+sdpa): the contiguous
    bias layout and the islands' casts work together. An FP32 first block (whole, or its
    attention) builds the position bias in FP32 for its FP32 queries: fused SDPA takes a mask of
    the query's dtype only."""
    tokens = torch.randint(0, 30, (2, 33))
    reference = embed(tiny_t5(), tokens)
    model = tiny_t5()
    policy = Policy(
        "fp16+islands32+sdpa", fp32_positional=True, fast_attention=True, fp32_blocks=blocks, fp32_parts=parts
    )
    applied = apply_policy(model, policy)
    assert any("laid out contiguously" in note for note in applied.notes)
    out = embed(model, tokens)
    assert torch.isfinite(out).all()
    assert torch.nn.functional.cosine_similarity(out, reference).min() > 0.999
