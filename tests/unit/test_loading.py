"""Loading skips the random initialisation the checkpoint overwrites: the loaded model must hold
exactly the saved weights, and nothing left unfilled may hold arbitrary values."""

import hashlib

import torch
from torch import nn

from fp16guard.core.config import ModelSource
from fp16guard.models import get_target
from fp16guard.models.loading import skipped_init
from fp16guard.testing import build_model, save_checkpoint


def test_esm2_load_gives_exactly_the_saved_weights_and_hash(tmp_path):
    model = build_model(layers=2, seed=3)
    path = save_checkpoint(model, tmp_path / "m.pt")
    loaded = get_target("esm2").load(ModelSource(weights=path))
    saved = model.state_dict()
    got = loaded.module.state_dict()
    compared = [k for k in saved if not k.startswith("contact_head.regression")]
    assert compared and all(torch.equal(saved[k], got[k]) for k in compared)
    # Not in the checkpoint, so initialised afresh rather than left as arbitrary memory.
    regression = loaded.module.contact_head.regression.weight
    assert torch.isfinite(regression).all() and regression.abs().max() < 1
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_skipped_init_restores_torch_init_functions():
    before = nn.init.kaiming_uniform_
    with skipped_init():
        assert nn.init.kaiming_uniform_ is not before
        layer = nn.Linear(4, 4)
    assert nn.init.kaiming_uniform_ is before
    torch.manual_seed(0)
    assert nn.Linear(4, 4).weight.abs().max() > 0
    assert layer.weight.shape == (4, 4)


def test_esm2_tokens_equal_fair_esms_batch_converter(tmp_path):
    import random

    from fp16guard.models.esm2 import ALPHABET

    loaded = get_target("esm2").load(ModelSource(weights=save_checkpoint(build_model(layers=1), tmp_path / "m.pt")))
    rng = random.Random(1)
    sequences = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 60))) for _ in range(25)]
    sequences += [ALPHABET, ALPHABET[::-1], "X", "O" * 70]  # every letter, rare ones alone and in runs
    tokens, mask, used = get_target("esm2").tokenize(loaded, sequences)
    _, _, expected = loaded.encoding.alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(sequences)])
    assert torch.equal(tokens, expected)
    assert mask.sum().item() == sum(map(len, sequences)) and used == mask.sum().item() + 2 * len(sequences)


def test_esm2_tokens_equal_fair_esms_batch_converter_on_the_bundled_set(tmp_path):
    from fp16guard.io.sequences import bundled_path, read_fasta
    from fp16guard.models.esm2 import ALPHABET

    target = get_target("esm2")
    loaded = target.load(ModelSource(weights=save_checkpoint(build_model(layers=1), tmp_path / "m.pt")))
    records = read_fasta(bundled_path(target.default_sequences), ALPHABET).records
    sequences = [r.sequence[:1022] for r in records]
    converter = loaded.encoding.alphabet.get_batch_converter()
    for start in range(0, len(sequences), 16):  # batches of mixed lengths, as validate forms them
        batch = sequences[start : start + 16]
        tokens, mask, _ = target.tokenize(loaded, batch)
        _, _, expected = converter([(str(i), s) for i, s in enumerate(batch)])
        assert torch.equal(tokens, expected)
        assert mask.tolist() == [[0 < j <= len(s) for j in range(tokens.shape[1])] for s in batch]


def test_load_failure_never_passes_on_advice_to_load_unsafely(tmp_path):
    """torch's errors advise weights_only=False or allowlisting globals; fp16guard never does."""
    import argparse
    import gzip

    from fp16guard.models.loading import load_failure

    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    compressed = tmp_path / "compressed.pt"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    pickled = tmp_path / "pickled.pt"
    torch.save({"parser": argparse.ArgumentParser}, pickled)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(plain.read_bytes()[:200])
    messages = {}
    for path in (compressed, pickled, truncated):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            messages[path.name] = load_failure(path, exc)
    assert set(messages) == {"compressed.pt", "pickled.pt", "truncated.pt"}
    assert messages["compressed.pt"].startswith("is gzip-compressed: decompress it first")
    assert "argparse.ArgumentParser" in messages["pickled.pt"] and "weights-only" in messages["pickled.pt"]
    assert messages["truncated.pt"].startswith("cannot read as a PyTorch checkpoint (")
    for message in messages.values():
        assert "weights_only" not in message and "safe_globals" not in message and "\n" not in message
