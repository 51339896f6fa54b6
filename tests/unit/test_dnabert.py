"""The native DNABERT encoder against the published formulas and a deliberately plain
re-computation of the architecture; and its checkpoint loading."""

import math

import pytest
import torch

from fp16guard.errors import ModelLoadError
from fp16guard.models.dnabert import DnaBertConfig, DnaBertModel, alibi_slopes, read_state_dict


@pytest.mark.parametrize("heads", [8, 12, 16])
def test_alibi_slopes_follow_the_published_formula(heads):
    # Press et al.: a geometric sequence starting at 2^(-8/n) with that ratio, for n a power
    # of two; otherwise the closest power of two's slopes, then every other slope of twice it.
    def geometric(n):
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    m = 2 ** math.floor(math.log2(heads))
    expected = geometric(m) + geometric(2 * m)[0::2][: heads - m]
    assert alibi_slopes(heads) == pytest.approx(expected, rel=1e-12)
    if heads == 8:
        assert alibi_slopes(8) == pytest.approx([1 / 2 ** k for k in range(1, 9)])
    if heads == 12:
        assert alibi_slopes(12)[8:] == pytest.approx([2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5])


def plain_dnabert(model: DnaBertModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The architecture written out with explicit matmuls over the padded batch, float64."""
    cfg = model.config
    p = {k: v.double() for k, v in model.state_dict().items()}

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + cfg.layer_norm_eps) * p[prefix + ".weight"] + p[prefix + ".bias"]

    def gelu(x):
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    x = p["embeddings.word_embeddings.weight"][ids] + p["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, "embeddings.LayerNorm")
    batch, length, width = x.shape
    heads, dh = cfg.num_attention_heads, width // cfg.num_attention_heads
    slopes = torch.tensor(alibi_slopes(heads), dtype=torch.float64)
    bias = torch.empty(batch, heads, length, length, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                for j in range(length):
                    bias[b, h, i, j] = -slopes[h] * abs(i - j) + (0.0 if mask[b, j] else -10000.0)
    for n in range(cfg.num_hidden_layers):
        pre = f"encoder.layer.{n}."
        qkv = x @ p[pre + "attention.self.Wqkv.weight"].T + p[pre + "attention.self.Wqkv.bias"]
        q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]
        q = q.view(batch, length, heads, dh).transpose(1, 2)
        k = k.view(batch, length, heads, dh).transpose(1, 2)
        v = v.view(batch, length, heads, dh).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh) + bias
        context = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(batch, length, width)
        dense = context @ p[pre + "attention.output.dense.weight"].T + p[pre + "attention.output.dense.bias"]
        attended = layer_norm(dense + x, pre + "attention.output.LayerNorm")
        gated = attended @ p[pre + "mlp.gated_layers.weight"].T
        inner = gelu(gated[..., : cfg.intermediate_size]) * gated[..., cfg.intermediate_size :]
        out = inner @ p[pre + "mlp.wo.weight"].T + p[pre + "mlp.wo.bias"]
        x = layer_norm(out + attended, pre + "mlp.layernorm")
    return x


def test_native_model_equals_a_plain_recomputation_with_padding():
    torch.manual_seed(0)
    config = DnaBertConfig(
        vocab_size=40, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=40
    )
    model = DnaBertModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    ids = torch.tensor([[1, 7, 9, 12, 30, 2], [1, 5, 6, 2, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        native = model(ids, mask)[-1].double()
    plain = plain_dnabert(model, ids, mask)
    real = mask.bool()
    relative = (native[real] - plain[real]).norm() / plain[real].norm()
    assert relative < 1e-5
    assert torch.allclose(native[real], plain[real], rtol=1e-5, atol=1e-5)


def test_checkpoint_keys_with_or_without_prefix_and_heads_ignored(tmp_path):
    from fp16guard.testing import write_dnabert

    with_prefix = write_dnabert(tmp_path / "a")
    without = write_dnabert(tmp_path / "b", prefix="")
    state_a, _ = read_state_dict(with_prefix)
    state_b, _ = read_state_dict(without)
    assert set(state_a) == set(state_b)
    assert not any(k.startswith(("cls.", "bert.")) for k in state_a)


@pytest.mark.parametrize("with_n, unknown", [(True, ""), (False, "N")])
def test_n_is_read_as_unknown_only_when_the_vocabulary_lacks_it(tmp_path, with_n, unknown):
    from fp16guard.core.config import ModelSource
    from fp16guard.models.dnabert import TARGET
    from fp16guard.testing import write_dnabert

    loaded = TARGET.load(ModelSource(model=str(write_dnabert(tmp_path / "m", with_n=with_n))))
    assert ("N" in loaded.alphabet) == with_n
    assert TARGET.read_as_unknown(loaded) == unknown
    tokenizer = loaded.encoding.tokenizer
    ids = tokenizer("ACGTNNACGT", add_special_tokens=False)["input_ids"]
    assert (tokenizer.unk_token_id in ids) == (not with_n)


@pytest.mark.parametrize("damage", ["gzip", "pickled"])
def test_unreadable_weights_never_suggest_weights_only_false(tmp_path, damage):
    import argparse
    import gzip

    from fp16guard.core.config import ModelSource
    from fp16guard.models.dnabert import TARGET
    from fp16guard.testing import write_dnabert

    directory = write_dnabert(tmp_path / "m")
    weights = directory / "pytorch_model.bin"
    if damage == "gzip":
        weights.write_bytes(gzip.compress(weights.read_bytes()))
    else:
        torch.save({"parser": argparse.ArgumentParser}, weights)
    with pytest.raises(ModelLoadError) as info:
        TARGET.load(ModelSource(model=str(directory)))
    message = str(info.value)
    assert "weights_only" not in message and "safe_globals" not in message
    assert ("is gzip-compressed: decompress it first" in message) == (damage == "gzip")


def test_missing_or_unexpected_encoder_keys_are_named(tmp_path):
    from fp16guard.core.config import ModelSource
    from fp16guard.models.dnabert import TARGET
    from fp16guard.testing import write_dnabert

    directory = write_dnabert(tmp_path / "m")
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    del state["bert.encoder.layer.1.mlp.wo.bias"]
    state["bert.encoder.layer.1.mlp.extra"] = torch.zeros(2)
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as info:
        TARGET.load(ModelSource(model=str(directory)))
    assert "encoder.layer.1.mlp.wo.bias" in str(info.value)
    assert "encoder.layer.1.mlp.extra" in str(info.value)


def test_policies_set_the_fp32_parts(tmp_path):
    from fp16guard import apply_policy

    config = DnaBertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32
    )
    model = DnaBertModel(config)
    applied = apply_policy(model, "fp16+res32")
    names = applied.fp32_modules
    assert "encoder.layer.0.attention.self (ALiBi bias and softmax)" in names
    assert "encoder.layer.1.mlp (residual add)" in names
    assert "embeddings.LayerNorm" in names and "encoder.layer.1.mlp.layernorm" in names
    assert model.encoder.layer[0].attention.self.Wqkv.weight.dtype == torch.float16
    ids = torch.tensor([[1, 5, 6, 2]])
    assert model(ids, torch.ones_like(ids))[-1].dtype == torch.float16
