"""Saved FP32 references: exact round trip, atomic write, and refusals that name what differs."""

import numpy as np
import pytest
import torch

from fp16guard.errors import InputError, OutputError
from fp16guard.io.reference import library_versions, load_reference, save_reference
from fp16guard.workflows.validate import saved_reference_result

META = {
    "target": "esm2", "weights_sha256": "a" * 64, "dataset_sha256": "b" * 64, "layer": 3, "pooling": "mean",
    "max_length": 1022, "max_tokens": 8192, "versions": {"fp16guard": "0.1.0", "torch": "2.13.0", "fair-esm": "2.0.0"},
    "timing": {"build_seconds": 0.1, "warmup_seconds": 0.2, "seconds": 1.5, "tokens": 40, "padded_tokens": 48,
               "passes": 1},
    "peak_memory_bytes": 123,
}


def test_round_trip_is_exact_and_leaves_no_temporary_file(tmp_path):
    embeddings = torch.randn(4, 16) * 1e3
    embeddings[0, 0] = 1e-30  # subnormal-adjacent values survive too
    path = save_reference(tmp_path / "ref", embeddings, ["w", "x", "y", "z"], META)
    assert path == tmp_path / "ref" and sorted(p.name for p in tmp_path.iterdir()) == ["ref"]
    saved = load_reference(path)
    assert torch.equal(saved.embeddings, embeddings) and saved.embeddings.dtype == torch.float32
    assert saved.ids == ("w", "x", "y", "z")
    assert saved.meta["layer"] == 3 and saved.meta["sequences"] == 4
    result = saved_reference_result(saved, batches=2)
    assert result.timing.seconds == 1.5 and result.peak_memory_bytes == 123 and result.token_states == [None, None]
    saved.check(**{k: META[k] for k in ("target", "weights_sha256", "layer", "versions")}, ids=["w", "x", "y", "z"])


def test_every_difference_is_named_in_one_line(tmp_path):
    saved = load_reference(save_reference(tmp_path / "ref.npz", torch.zeros(2, 3), ["a", "b"], META))
    with pytest.raises(InputError) as caught:
        saved.check(
            weights_sha256="c" * 64, layer=5, versions={**META["versions"], "torch": "2.14.0"}, pooling="mean",
            ids=["b", "a"]
        )
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 2
    assert "weights (sha256) aaaaaaaaaaaa there, cccccccccccc here" in message
    assert "layer 3 there, 5 here" in message
    assert "torch 2.13.0 there, 2.14.0 here" in message
    assert "sequence ids or their order" in message
    assert "pooling" not in message


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_reference(tmp_path / "ref.npz", torch.ones(2, 3), ["a", "b"], META)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OutputError, match="disk full"):  # one line, exit 3: not a traceback
        save_reference(path, torch.zeros(2, 3), ["a", "b"], META)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ref.npz"]


def test_versions_name_the_model_library_of_the_target():
    assert set(library_versions("esm2")) == {"fp16guard", "torch", "fair-esm"}
    assert set(library_versions("hf")) == {"fp16guard", "torch", "transformers"}
    assert library_versions("esm2")["torch"] == torch.__version__
