"""Several layers from one forward pass: each layer equals its single-layer run bit for bit, for
every target and both layouts, and the model runs once per batch however many layers are asked."""

import random

import h5py
import numpy as np
import pytest
import torch
from cli_runner import run_cli

from fp16guard import Embedder
from fp16guard.core.config import ModelSource
from fp16guard.execution.forward import Forward, layout_of
from fp16guard.models import get_target
from fp16guard.numerics.policy import fast_variant, get_policy
from fp16guard.testing import synthetic_dna, write_dnabert, write_hf_bert, write_hf_t5

CPU = torch.device("cpu")


def proteins(count=9, seed=3):
    rng = random.Random(seed)
    return ["".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=rng.randint(4, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def models(tmp_path_factory, checkpoints):
    """target name, how to load it, and sequences of its kind, per model family."""
    root = tmp_path_factory.mktemp("multi_layer")
    return {
        "esm2": ("esm2", ModelSource(weights=checkpoints["healthy"]), proteins()),
        "dnabert": ("dnabert", ModelSource(model=str(write_dnabert(root / "dnabert"))),
                    synthetic_dna(9, 60, seed=2, with_n=False)),
        "bert": ("hf", ModelSource(model=str(write_hf_bert(root / "bert"))), proteins()),
        "t5": ("hf", ModelSource(model=str(write_hf_t5(root / "t5"))), proteins()),
    }


CASES = [
    ("esm2", "fp32"), ("esm2", "fp16+res32"), ("esm2", "fp16+packed"), ("esm2", "fp16+res32+packed"),
    ("dnabert", "fp32"), ("dnabert", "fp16"), ("dnabert", "fp16+packed"),
    ("bert", "fp32"), ("bert", "fp16"),
    ("t5", "fp32"), ("t5", "fp16"),
]


def policy_named(name):
    """A built-in policy, or the packed variant of one (``fp16+res32+packed``)."""
    if name.endswith("+packed") and name != "fp16+packed":
        return fast_variant(get_policy(name.removesuffix("+packed")), packed=True)
    return get_policy(name)


@pytest.mark.parametrize("model, policy", CASES)
def test_each_layer_of_one_pass_equals_its_own_pass(models, model, policy):
    name, source, texts = models[model]
    target = get_target(name)
    loaded = target.load(source)
    last = loaded.num_layers
    embedder = Embedder(target, loaded, policy_named(policy), CPU, max_tokens=120)
    batches = embedder.batches(texts, target.measure(loaded, texts))
    assert len(batches) > 1
    forwards = []
    hook = target.blocks(embedder.model)[0].register_forward_hook(lambda *_: forwards.append(1))
    try:
        # Every layer out of order; then the early layers alone (the blocks after them may stop).
        for layers in (sorted(range(last + 1), key=lambda n: (n % 2, -n)), [last - 1, 0]):
            forwards.clear()
            together = [embedder.run(batch, layers, per_residue=True) for batch in batches]
            assert len(forwards) == len(batches)
            for layer in layers:
                for batch, both in zip(batches, together):
                    alone = embedder.run(batch, [layer], per_residue=True)
                    assert list(both.pooled) == layers and both.counts == alone.counts
                    assert torch.equal(both.pooled[layer], alone.pooled[layer]), (layer, batch.indices)
                    assert torch.equal(both.residues[layer], alone.residues[layer]), (layer, batch.indices)
            # The layers are distinct results, not one of them repeated.
            assert not torch.equal(together[0].pooled[layers[0]], together[0].pooled[layers[1]])
    finally:
        hook.remove()


class SmallMemory:
    """A target on a 'device' that holds at most ``rows`` sequences at once, in either layout."""

    def __init__(self, target, rows):
        self.target, self.rows = target, rows

    def __getattr__(self, name):
        return getattr(self.target, name)

    def hidden_states(self, loaded, module, tokens, layers):
        if tokens.shape[0] > self.rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.target.hidden_states(loaded, module, tokens, layers)

    def packed_hidden_states(self, loaded, module, packed, layers):
        if packed.sequences > self.rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.target.packed_hidden_states(loaded, module, packed, layers)


@pytest.mark.parametrize("policy", ["fp32", "fp16+packed"])
def test_a_halved_batch_keeps_every_layer(models, policy):
    name, source, texts = models["esm2"]
    target = get_target(name)
    loaded = target.load(source)
    embedder = Embedder(target, loaded, get_policy(policy), CPU, max_tokens=10_000)
    (batch,) = embedder.batches(texts, target.measure(loaded, texts))
    layout, layers = layout_of(get_policy(policy)), (3, 1)
    with torch.inference_mode():
        whole = Forward(target, loaded, embedder.model, CPU, layout).states(batch, layers)
        halves = Forward(SmallMemory(target, 3), loaded, embedder.model, CPU, layout).states(batch, layers)
    assert whole.splits == 0 and halves.splits >= 2 and list(halves.hidden) == list(layers)
    for layer in layers:
        assert halves.hidden[layer].shape == whole.hidden[layer].shape
        torch.testing.assert_close(halves.hidden[layer], whole.hidden[layer], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("policy", [None, "fp16+packed"])
def test_cli_layers_equal_separate_single_layer_runs(checkpoints, tmp_path, policy):
    fasta = tmp_path / "p.fasta"
    fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(proteins(12, seed=5))))
    options = ["--policy", policy, "--force"] if policy else []

    def embed(out, layers):
        result, text = run_cli("embed", "esm2", "-w", checkpoints["healthy"], "-s", fasta, "-o", out, "--device", "cpu",
                               "--layers", layers, "--per-residue", "--max-tokens", "150", *options)
        assert result.exit_code == 0, text
        return h5py.File(out, "r")

    with embed(tmp_path / "both.h5", "1,3") as both:
        for layer in (1, 3):
            with embed(tmp_path / f"layer{layer}.h5", str(layer)) as alone:
                np.testing.assert_array_equal(both[f"layer_{layer}"][:], alone["embeddings"][:])
                np.testing.assert_array_equal(both[f"residues_layer_{layer}"][:], alone["residues"][:])
        assert not np.array_equal(both["layer_1"][:], both["layer_3"][:])
