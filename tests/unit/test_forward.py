"""The one forward path (fp16guard.execution.forward): layouts, halving on out-of-memory, pooling in
FP32 and FP64, the padded view of packed outputs; and the typed per-rank part a distributed pass
gathers."""

import pickle

import pytest
import torch

from fp16guard import Embedder
from fp16guard.core.config import ModelSource
from fp16guard.execution.attention import ATTENTION_OPERATORS, attention_kernel
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.distributed import _RankPart
from fp16guard.execution.forward import LAYOUTS, PACKED, PADDED, PADDED_FLOAT64, Forward, forward_under, layout_of
from fp16guard.execution.profile import profile_batches
from fp16guard.execution.runner import run_policy
from fp16guard.models.esm2 import TARGET
from fp16guard.numerics.metrics import masked_mean
from fp16guard.numerics.policy import FP16_PACKED, FP32, Policy, get_policy

CPU = torch.device("cpu")
#: FP32 in the packed layout: on the CPU it agrees with the padded layout to FP32 rounding.
PACKED32 = Policy("fp32+packed", "float32", fast_attention=True, layout="packed")
SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "MKVLAAGIVG", "ACDEFGHIKLMNPQRSTVWY", "MSTNPKPQRKTKRNTNRRPQD", "GGSGGSGGS"]


@pytest.fixture(scope="module")
def loaded(checkpoints):
    return TARGET.load(ModelSource(weights=checkpoints["healthy"]))


def one_batch(loaded, sequences=SEQUENCES):
    (batch,) = prepare_batches(TARGET, loaded, sequences, TARGET.measure(loaded, sequences), 100_000)
    return batch


class Counting:
    """The ESM-2 target that counts its forward calls and, past ``rows`` sequences, runs out of
    memory as a GPU does."""

    def __init__(self, rows=100):
        self.rows, self.padded, self.packed = rows, [], []

    def __getattr__(self, name):
        return getattr(TARGET, name)

    def hidden_states(self, loaded, module, tokens, layers):
        self.padded.append(tokens.shape[0])
        if tokens.shape[0] > self.rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return TARGET.hidden_states(loaded, module, tokens, layers)

    def packed_hidden_states(self, loaded, module, packed, layers):
        self.packed.append(packed.sequences)
        if packed.sequences > self.rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return TARGET.packed_hidden_states(loaded, module, packed, layers)


def test_every_policy_layout_has_a_layout():
    assert set(LAYOUTS) == {"padded", "packed"}
    assert layout_of(FP32) is PADDED and layout_of(FP16_PACKED) is PACKED


@pytest.mark.parametrize("policy", ["fp32", "fp16+packed"])
def test_a_batch_that_runs_out_of_memory_is_halved_and_the_halvings_counted(loaded, policy):
    batch = one_batch(loaded)
    forward, _ = forward_under(TARGET, loaded, get_policy(policy), CPU)
    target = Counting(rows=2)
    halving = Forward(target, loaded, forward.model, CPU, forward.layout)
    with torch.inference_mode():
        whole, halves = forward.pooled(batch, 3), halving.pooled(batch, 3)
    calls = target.packed if policy.endswith("packed") else target.padded
    assert calls == [5, 2, 3, 1, 2] and halves.splits == 2 and whole.splits == 0
    assert halves.batch is batch and halves.rows.shape == whole.rows.shape
    torch.testing.assert_close(halves.rows, whole.rows, atol=1e-5, rtol=1e-5)


def test_without_split_or_with_one_row_out_of_memory_is_raised(loaded):
    batch = one_batch(loaded)
    model = forward_under(TARGET, loaded, FP32, CPU)[0].model
    target = Counting(rows=0)
    with torch.inference_mode(), pytest.raises(torch.OutOfMemoryError):
        Forward(target, loaded, model, CPU, split=False).states(batch, (3,))
    assert target.padded == [5]
    target.padded.clear()
    with torch.inference_mode(), pytest.raises(torch.OutOfMemoryError):
        Forward(target, loaded, model, CPU).states(batch.rows(slice(0, 1)), (3,))
    assert target.padded == [1]


def test_packed_outputs_as_padded_rows_match_the_padded_layout(loaded):
    batch = one_batch(loaded)
    padded = forward_under(TARGET, loaded, FP32, CPU)[0]
    packed = forward_under(TARGET, loaded, PACKED32, CPU)[0]
    assert packed.layout is PACKED
    with torch.inference_mode():
        rows, flat = padded.pooled(batch, 3), packed.pooled(batch, 3)
        view = flat.as_padded()
    assert flat.hidden.shape == (batch.tokens_used, rows.hidden.shape[-1]) and view.hidden.shape == rows.hidden.shape
    real = torch.arange(batch.tokens.shape[1])[None, :] < torch.tensor(batch.row_lengths)[:, None]
    assert torch.equal(view.mask, batch.pool_mask) and not view.hidden[~real].any()
    torch.testing.assert_close(view.hidden[real], rows.hidden[real], atol=1e-4, rtol=1e-4)
    # Per-residue states are the pooled positions, row after row, in both layouts.
    assert torch.equal(flat.residues(), view.residues())
    torch.testing.assert_close(flat.rows, rows.rows, atol=1e-4, rtol=1e-4)
    assert rows.as_padded().hidden is rows.hidden and rows.as_padded().mask is rows.mask


def test_the_fp64_layout_pools_in_fp64_over_the_pooled_positions():
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 5, dtype=torch.float64)
    mask = torch.rand(3, 7) > 0.4
    mask[2] = False  # a row with nothing pooled is zeros, not NaN
    hidden[0, ~mask[0]] = float("inf")  # padding never reaches the mean
    rows = PADDED_FLOAT64.pool(None, hidden, mask)
    keep = mask[..., None]
    expected = torch.where(keep, hidden, 0.0).sum(1) / keep.sum(1).clamp_min(1)
    assert rows.dtype == torch.float64 and torch.equal(rows, expected)
    assert torch.equal(rows[2], torch.zeros(5, dtype=torch.float64))
    finite = hidden.clone()
    finite[0, ~mask[0]] = 0.0
    torch.testing.assert_close(rows.float(), masked_mean(finite.float(), mask))


def test_each_yields_every_batch_in_order(loaded):
    batches = prepare_batches(TARGET, loaded, SEQUENCES, TARGET.measure(loaded, SEQUENCES), 64)
    assert len(batches) > 1
    forward = forward_under(TARGET, loaded, FP32, CPU)[0]
    with torch.inference_mode():
        pooled = list(forward.each(batches, 3))
    assert [p.batch for p in pooled] == batches
    result = run_policy(TARGET, loaded, FP32, batches, len(SEQUENCES), CPU, 3, measure=False)
    for p in pooled:
        assert torch.equal(p.rows, result.pooled[list(p.batch.indices)])


def test_the_profile_runs_each_model_once_per_batch_padded(loaded, monkeypatch):
    batches = prepare_batches(TARGET, loaded, SEQUENCES, TARGET.measure(loaded, SEQUENCES), 64)
    target = Counting()
    per_batch = profile_batches(target, loaded, get_policy("fp16"), batches, CPU, 3)
    assert len(per_batch) == len(batches) and target.packed == []
    assert target.padded == [n for b in batches for n in (len(b.indices),) * 2]


def test_embedder_batches_are_packed_ahead_only_for_a_packed_policy(checkpoints):
    for policy, packed in (("fp16", False), ("fp16+packed", True)):
        embedder = Embedder.load("esm2", weights=checkpoints["healthy"], policy=policy, device="cpu", max_tokens=64)
        batches = embedder.batches(SEQUENCES, [len(s) for s in SEQUENCES])
        assert len(batches) > 1 and all((b._packed is not None) == packed for b in batches)


def test_a_rank_part_survives_the_gather_s_pickling(loaded):
    batches = prepare_batches(TARGET, loaded, SEQUENCES, TARGET.measure(loaded, SEQUENCES), 64)
    result = run_policy(TARGET, loaded, FP32, batches, len(SEQUENCES), CPU, 3, measure=False)
    part = pickle.loads(pickle.dumps(_RankPart.of(result, [1], batches)))
    assert part.rows == list(batches[1].indices) and torch.equal(part.pooled, result.pooled[part.rows])
    assert part.describe(1) == {"rank": 1, "device": "cpu", "batches": 1, "sequences": len(part.rows),
                                "tokens": result.timing.tokens, "seconds": result.timing.seconds,
                                "peak_memory_bytes": None, "oom_splits": 0}


def test_attention_kernel_names_sdpa_and_unfused_attention():
    q = torch.randn(1, 2, 4, 8)
    fused = attention_kernel(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert fused in {label for _, label in ATTENTION_OPERATORS}
    unfused = attention_kernel(lambda: torch.softmax(q @ q.transpose(-1, -2), -1) @ q)
    assert unfused == "unfused (matmul + softmax)"


@pytest.mark.parametrize("policy", ["fp32", "fp16+packed"])
def test_embedder_stream_gives_each_batch_what_run_gives_in_order(checkpoints, policy):
    embedder = Embedder.load("esm2", weights=checkpoints["healthy"], policy=policy, device="cpu", max_tokens=64)
    texts = ["MKTAYIAKQRQISFVKSHFSRQ", "MSTNPKPQRKTKRNTNRRPQD", "ACDEFGHIKLMNPQRSTVWY" * 2, "MKV"]
    batches = embedder.batches(texts, [len(t) for t in texts])
    assert len(batches) > 1
    streamed = list(embedder.stream(batches, layers=(1, 2), per_residue=True))
    assert [b for b, _ in streamed] == batches
    for batch, output in streamed:
        expected = embedder.run(batch, layers=(1, 2), per_residue=True)
        assert output.counts == expected.counts
        for layer in (1, 2):
            assert torch.equal(output.pooled[layer], expected.pooled[layer])
            assert torch.equal(output.residues[layer], expected.residues[layer])
