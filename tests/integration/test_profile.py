"""--profile: per-layer agreement with FP32, naming the first block that diverges."""

import pytest
import torch
from cli_runner import ladder, read_report, run_cli

from fp16guard.core.config import ModelSource
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.build import build
from fp16guard.execution.profile import _capture, first_divergent_layer, profile_policy
from fp16guard.models.esm2 import TARGET
from fp16guard.numerics.policy import get_policy
from fp16guard.testing import build_model, plant_mlp_overflow, save_checkpoint

SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MKVLAAGIVG", "ACDEFGHIKLMNPQRSTVWY"]


def batches_for(loaded):
    return prepare_batches(TARGET, loaded, SEQUENCES, TARGET.measure(loaded, SEQUENCES), 128)


@pytest.mark.parametrize("planted_layer", [0, 2])
def test_profile_names_the_planted_layer_as_the_first_non_finite_block(tmp_path, planted_layer):
    model = build_model()
    plant_mlp_overflow(model, layer=planted_layer)
    loaded = TARGET.load(ModelSource(weights=save_checkpoint(model, tmp_path / "m.pt")))
    layers = profile_policy(TARGET, loaded, get_policy("fp16"), batches_for(loaded), torch.device("cpu"), 3)
    assert len(layers) == 3
    first = first_divergent_layer(layers, 0.99)
    assert first is not None and first["layer"] == planted_layer + 1  # blocks are numbered from 1
    assert first["nonfinite_tokens"] > 0
    assert all(e["nonfinite_tokens"] == 0 for e in layers[:planted_layer])


def test_hooks_do_not_change_the_numbers(checkpoints):
    loaded = TARGET.load(ModelSource(weights=checkpoints["residual"]))
    model, _ = build(TARGET, loaded, get_policy("fp16+res32"), torch.device("cpu"))
    tokens = batches_for(loaded)[0].tokens
    with torch.inference_mode():
        plain = TARGET.hidden_states(loaded, model, tokens, (3,))[3]
        sink = [None] * 3
        handles = _capture(TARGET.blocks(model), TARGET.block_orientation, sink)
        hooked = TARGET.hidden_states(loaded, model, tokens, (3,))[3]
        for handle in handles:
            handle.remove()
    assert torch.equal(plain, hooked)
    assert all(s is not None and s.shape[:2] == tokens.shape for s in sink)


def test_cli_profile_writes_the_per_layer_table_and_plot(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = run_cli(
        "validate", "esm2", "--weights", checkpoints["residual"], "-s", small_fasta, "-o", out, "--device", "cpu",
        "--profile"
    )
    assert result.exit_code == 0, text
    report = read_report(out)
    fp16 = report["attempts"][1]
    assert [e["layer"] for e in fp16["layers"]] == [1, 2, 3]
    # The residual overflow (two biases of 4e4 in blocks 1 and 2) shows as no FP16 headroom.
    assert fp16["layers"][0]["fp16_headroom"] < 2 and fp16["layers"][1]["nonfinite_tokens"] > 0
    assert ladder(report)[-1]["layers"][-1]["min_cosine"] > 0.999
    assert report["attempts"][0]["layers"] is None
    assert "first divergent block: 2" in (out / "report.md").read_text()
    pytest.importorskip("matplotlib")
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
