"""A batch that runs out of GPU memory is halved and retried; no sequence is lost."""

import pytest
import torch

from fp16guard.core.config import ModelSource
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.runner import run_policy
from fp16guard.models.esm2 import TARGET
from fp16guard.numerics.policy import get_policy

SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "MKVLAAGIVG", "ACDEFGHIKLMNPQRSTVWY", "MSTNPKPQRKTKRNTNRRPQD", "GGSGGSGGS"]


class SmallMemory:
    """The ESM-2 target on a 'device' that holds at most ``rows`` sequences at once: larger
    batches raise the out-of-memory error PyTorch raises on a GPU."""

    def __init__(self, rows: int):
        self.rows = rows
        self.calls = []

    def __getattr__(self, name):
        return getattr(TARGET, name)

    def hidden_states(self, loaded, module, tokens, layers):
        self.calls.append(tokens.shape[0])
        if tokens.shape[0] > self.rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return TARGET.hidden_states(loaded, module, tokens, layers)


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_batches_are_split_until_they_fit_and_every_sequence_is_embedded(checkpoints, rows):
    loaded = TARGET.load(ModelSource(weights=checkpoints["healthy"]))
    batches = prepare_batches(TARGET, loaded, SEQUENCES, TARGET.measure(loaded, SEQUENCES), max_tokens=10_000)
    assert len(batches) == 1 and len(batches[0].indices) == 5
    policy = get_policy("fp16")
    whole = run_policy(TARGET, loaded, policy, batches, len(SEQUENCES), torch.device("cpu"), 3, measure=False)
    target = SmallMemory(rows)
    split = run_policy(target, loaded, policy, batches, len(SEQUENCES), torch.device("cpu"), 3, measure=False)
    assert split.oom_splits > 0
    assert max(n for n in target.calls if n <= rows) <= rows
    assert split.pooled.shape == whole.pooled.shape and torch.isfinite(split.pooled).all()
    assert torch.allclose(split.pooled, whole.pooled, atol=1e-3, rtol=1e-3)
    assert split.timing.tokens == whole.timing.tokens


def test_a_single_sequence_that_does_not_fit_is_an_error(checkpoints):
    loaded = TARGET.load(ModelSource(weights=checkpoints["healthy"]))
    batches = prepare_batches(TARGET, loaded, SEQUENCES, TARGET.measure(loaded, SEQUENCES), max_tokens=10_000)
    with pytest.raises(torch.OutOfMemoryError):
        run_policy(SmallMemory(0), loaded, get_policy("fp16"), batches, len(SEQUENCES), torch.device("cpu"), 3,
                   measure=False)


def test_the_report_counts_every_input_sequence_after_splits(checkpoints, tmp_path, monkeypatch):
    from fp16guard.core.config import ValidationConfig
    from fp16guard.workflows import validate as workflow

    fasta = tmp_path / "five.fasta"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(SEQUENCES)))
    monkeypatch.setattr(workflow, "get_target", lambda name: SmallMemory(2))
    config = ValidationConfig(device="cpu", policies=("fp16",))
    report = workflow.validate("esm2", config, ModelSource(weights=checkpoints["healthy"]), sequences=fasta)
    assert report.dataset["sequences"] == len(SEQUENCES)
    for attempt in report.attempts[1:]:
        assert attempt.metrics["sequences"] == len(SEQUENCES)
        cosines = attempt.metrics["cosines"]
        assert [c["id"] for c in cosines] == [f"s{i}" for i in range(len(SEQUENCES))]
        assert None not in [c["cosine"] for c in cosines]
        assert attempt.timing["tokens"] == report.attempts[0].timing["tokens"]
    assert any("split in half; no sequence was lost" in note for note in report.notes)
