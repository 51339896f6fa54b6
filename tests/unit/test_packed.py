"""The packed layout: offsets, positions and pooling; packed and padded agree where the math
path runs (CPU); the batch-composition check catches a planted layout bug."""

import dataclasses
import json

import pytest
import torch

from fp16guard import Embedder
from fp16guard.core.config import ModelSource
from fp16guard.errors import InputError, UnsupportedPolicyError
from fp16guard.execution import composition
from fp16guard.execution.batching import prepare_batches
from fp16guard.execution.build import build
from fp16guard.execution.runner import run_policy
from fp16guard.models import varlen
from fp16guard.models.batch import TokenBatch
from fp16guard.models.esm2 import MAX_RESIDUES, TARGET
from fp16guard.numerics.metrics import cosine_rows, masked_mean, segment_mean
from fp16guard.numerics.policy import FP16_PACKED, Policy, fast_variant, get_policy

CPU = torch.device("cpu")
#: FP32 with the packed layout: on the CPU both layouts run the same mathematics, so they must
#: agree to FP32 rounding.
PACKED32 = Policy("fp32+packed", "float32", fast_attention=True, layout="packed")
PADDED32 = dataclasses.replace(PACKED32, name="fp32+sdpa", layout="padded")


@pytest.fixture(scope="module")
def loaded(checkpoints):
    return TARGET.load(ModelSource(weights=checkpoints["healthy"]))


def batches_of(loaded, sequences, max_tokens=100_000):
    return prepare_batches(TARGET, loaded, sequences, TARGET.measure(loaded, sequences), max_tokens)


def test_pack_concatenates_rows_without_padding(loaded):
    sequences = ["MKTAYIAKQR", "M", "ACDEFG"]
    (batch,) = batches_of(loaded, sequences)
    packed = batch.pack()
    pad = loaded.encoding.pad_id
    assert batch.row_lengths == tuple(int(n) for n in (batch.tokens != pad).sum(1))  # right padding, specials counted
    assert packed.offsets == (0, 12, 20, 23) and packed.cu_seqlens.tolist() == [0, 12, 20, 23]
    assert packed.cu_seqlens.dtype == torch.int32 and packed.max_seqlen == 12 and packed.sequences == 3
    assert torch.equal(packed.tokens, batch.tokens[batch.tokens != pad])
    assert packed.positions.tolist() == [*range(12), *range(8), *range(3)]
    assert packed.segments.tolist() == [0] * 12 + [1] * 8 + [2] * 3
    # Pooled positions: residues only (BOS and EOS of each sequence excluded).
    assert packed.pool_mask.sum().item() == 10 + 6 + 1 and not packed.pool_mask[[0, 11, 12, 19, 20, 22]].any()
    hidden = torch.randn(*batch.tokens.shape, 5)
    flat = hidden[batch.tokens != pad]
    assert torch.equal(batch.unpack(flat)[batch.tokens != pad], flat)
    assert torch.allclose(segment_mean(flat, packed.pool_mask, packed.segments, 3),
                          masked_mean(hidden, batch.pool_mask))


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_packed_and_padded_agree_on_the_cpu(loaded, layer):
    # Lengths 1 and the model's limit included; several packs and padded rows of mixed widths.
    sequences = ["M", "MKTAYIAKQRQISFVKSHFSRQ", "AC" * 40, "W" * MAX_RESIDUES, "MKVLAAGIVG", "GGSGGSGGSQ"]
    batches = batches_of(loaded, sequences, max_tokens=2_048)
    assert len(batches) > 1
    stock = run_policy(TARGET, loaded, get_policy("fp32"), batches, len(sequences), CPU, layer, measure=False)
    padded = run_policy(TARGET, loaded, PADDED32, batches, len(sequences), CPU, layer, measure=False)
    packed = run_policy(TARGET, loaded, PACKED32, batches, len(sequences), CPU, layer, measure=False)
    assert cosine_rows(stock.pooled, packed.pooled).min() > 0.99999
    assert cosine_rows(padded.pooled, packed.pooled).min() > 0.99999
    assert torch.allclose(packed.pooled, stock.pooled, atol=1e-4, rtol=1e-4)
    assert packed.timing.padded_tokens == packed.timing.tokens < stock.timing.padded_tokens


def test_packed_fp16_token_statistics_compare_with_a_padded_reference(loaded):
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "MKVLAAGIVG", "ACDEFGHIKLMNPQRSTVWY"]
    batches = batches_of(loaded, sequences)
    reference = run_policy(TARGET, loaded, get_policy("fp32"), batches, 3, CPU, 3, keep_states_bytes=1 << 30,
                           measure=False)
    packed = run_policy(TARGET, loaded, FP16_PACKED, batches, 3, CPU, 3, reference=reference, measure=False)
    assert packed.token_stats.tokens == sum(len(s) for s in sequences)
    assert packed.token_stats.min_cosine > 0.999 and packed.token_nonfinite == (0, 0)


def test_packed_policy_names_and_files_round_trip(tmp_path):
    assert fast_variant(get_policy("fp16"), packed=True) == FP16_PACKED
    assert fast_variant(get_policy("fp16+res32"), packed=True).name == "fp16+res32+packed"
    assert "packed without padding" in FP16_PACKED.describe()
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"policy": FP16_PACKED.to_dict()}))
    assert get_policy(path) == FP16_PACKED and get_policy(path).to_dict() == FP16_PACKED.to_dict()
    # An older policy file without the field is padded; packed needs fused attention.
    assert Policy.from_dict({"name": "old"}).layout == "padded"
    with pytest.raises(InputError, match="layout"):
        Policy("x", layout="sideways")
    with pytest.raises(InputError, match="fused attention"):
        Policy("x", layout="packed")


def test_a_torch_without_varlen_attention_refuses_the_packed_layout(loaded, monkeypatch):
    monkeypatch.setattr(varlen, "varlen_kernel", lambda: None)
    with pytest.raises(UnsupportedPolicyError, match="torch >= 2.10"):
        build(TARGET, loaded, FP16_PACKED, CPU)


def test_composition_check_passes_on_the_real_layout_and_names_a_planted_offset(loaded, monkeypatch):
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "MKVLAAGIVG", "ACDEFGHIKLMNPQRSTVWY", "GGSGGS", "W" * 60]
    ids = [f"s{i}" for i in range(len(sequences))]
    lengths = TARGET.measure(loaded, sequences)
    check = composition.check_composition(TARGET, loaded, PACKED32, sequences, lengths, ids, CPU, 3)
    assert check["passed"] and check["sequences"] == ["s3", "s1", "s2", "s0", "s4"]
    assert check["pairs"]["alone vs packed"]["min_cosine"] > 0.99999

    real_pack = TokenBatch.pack

    def off_by_one(self):
        packed = real_pack(self)
        # The planted bug: every sequence boundary after the first one token late.
        bounds = [0, *(b + 1 for b in packed.offsets[1:-1]), packed.offsets[-1]]
        return dataclasses.replace(
            packed, offsets=tuple(bounds), cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
            segments=torch.repeat_interleave(torch.arange(packed.sequences), torch.diff(torch.tensor(bounds))),
        )

    monkeypatch.setattr(TokenBatch, "pack", off_by_one)
    check = composition.check_composition(TARGET, loaded, PACKED32, sequences, lengths, ids, CPU, 3)
    assert not check["passed"] and check["pairs"]["alone vs padded"]["min_cosine"] > 0.99999
    # The first sequence of the pack (the shortest, s3) gains a token of the next one.
    assert any(defect.startswith("s3: alone vs packed") for defect in check["defects"]), check["defects"]


def test_composition_sample_is_deterministic_and_spans_the_lengths():
    lengths = [50, 3, 900, 7, 120, 33, 64, 10, 400, 5, 77]
    chosen = composition.sample_indices(lengths, size=4)
    assert chosen[0] == 1 and chosen[-1] == 2 and len(chosen) == 4
    assert chosen == composition.sample_indices(lengths, size=4)


def test_embedder_embeds_like_the_validated_runner(checkpoints, loaded):
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "mkvlaagivg", "ACDEFGHIKLMNPQRSTVWY"]
    embedder = Embedder.load("esm2", weights=checkpoints["healthy"], policy="fp16+packed", device="cpu", max_tokens=64)
    batches = batches_of(loaded, [s.upper() for s in sequences], max_tokens=64)
    validated = run_policy(TARGET, loaded, FP16_PACKED, batches, 3, CPU, 3, measure=False)
    assert torch.equal(embedder.embed(sequences), validated.pooled)
    with pytest.raises(InputError, match="vocabulary"):
        embedder.embed(["MK1"])
    with pytest.raises(InputError, match="more than"):
        embedder.embed(["M" * (MAX_RESIDUES + 1)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_varlen_kernel_runs_on_cuda_and_agrees_with_padded(loaded):
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "M", "AC" * 200, "MKVLAAGIVG"]
    batches = batches_of(loaded, sequences)
    gpu = torch.device("cuda")
    padded = run_policy(TARGET, loaded, get_policy("fp16+sdpa"), batches, 4, gpu, 3)
    packed = run_policy(TARGET, loaded, FP16_PACKED, batches, 4, gpu, 3)
    assert packed.timing.attention.startswith("flash, variable-length"), packed.timing.attention
    assert cosine_rows(padded.pooled, packed.pooled).min() > 0.9999


@pytest.fixture(scope="module")
def dnabert(tmp_path_factory):
    from fp16guard.models.dnabert import TARGET as DNABERT
    from fp16guard.testing import write_dnabert

    return DNABERT, DNABERT.load(ModelSource(model=str(write_dnabert(tmp_path_factory.mktemp("dnabert") / "m"))))


DNA = ["ACGTACGTTTGACNNNNACGTAGCTAGCTAGGGCGCGCATATATATTAGCG", "ACG", "GGGGCCCCATATATTTTAAAACACA", "ACGT" * 60]


def test_dnabert_packed_agrees_with_padded_alibi_and_passes_the_composition_check(dnabert):
    target, loaded = dnabert
    lengths = target.measure(loaded, DNA)
    batches = prepare_batches(target, loaded, DNA, lengths, 100_000)
    pad = loaded.encoding.pad_id
    assert all(b.row_lengths == tuple(int(n) for n in (b.tokens != pad).sum(1)) for b in batches)
    layer = loaded.num_layers
    stock = run_policy(target, loaded, get_policy("fp32"), batches, len(DNA), CPU, layer, measure=False)
    packed = run_policy(target, loaded, PACKED32, batches, len(DNA), CPU, layer, measure=False)
    # ALiBi restarts at each sequence of the pack: FP32 agrees with the padded model's bias table.
    assert torch.allclose(packed.pooled, stock.pooled, atol=1e-4, rtol=1e-4)
    fp16 = run_policy(target, loaded, FP16_PACKED, batches, len(DNA), CPU, layer, measure=False)
    assert cosine_rows(stock.pooled, fp16.pooled).min() > 0.999
    ids = [f"d{i}" for i in range(len(DNA))]
    check = composition.check_composition(target, loaded, FP16_PACKED, DNA, lengths, ids, CPU, layer)
    assert check["passed"] and "alone vs packed" in check["pairs"], check["defects"]


def test_hf_encoders_refuse_the_packed_layout_with_a_clear_error(tmp_path):
    from fp16guard.models.hf import HF
    from fp16guard.testing import write_hf_bert

    loaded = HF.load(ModelSource(model=str(write_hf_bert(tmp_path / "bert"))))
    with pytest.raises(UnsupportedPolicyError, match="fp16\\+sdpa"):
        build(HF, loaded, FP16_PACKED, CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dnabert_packed_on_cuda_runs_the_flash_kernel_or_says_the_build_lacks_alibi(dnabert):
    target, loaded = dnabert
    lengths = target.measure(loaded, DNA)
    batches = prepare_batches(target, loaded, DNA, lengths, 100_000)
    gpu = torch.device("cuda")
    if not varlen.flash_alibi_supported(gpu):  # PyTorch 2.11's CUDA build (H200, measured)
        with pytest.raises(UnsupportedPolicyError, match="no ALiBi support"):
            run_policy(target, loaded, FP16_PACKED, batches, len(DNA), gpu, loaded.num_layers)
        return
    padded = run_policy(target, loaded, get_policy("fp16+sdpa"), batches, len(DNA), gpu, loaded.num_layers)
    packed = run_policy(target, loaded, FP16_PACKED, batches, len(DNA), gpu, loaded.num_layers)
    assert packed.timing.attention.startswith("flash, variable-length"), packed.timing.attention
    assert cosine_rows(padded.pooled, packed.pooled).min() > 0.9999


def test_an_eager_padded_run_leaves_the_compiler_unimported(checkpoints):
    """torch.compile's machinery costs about a second to import: fp16guard loads it only to
    compile (torch's own variable-length attention module imports it, so packed runs do)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from fp16guard import Embedder\n"
        f"e = Embedder.load('esm2', weights={str(checkpoints['healthy'])!r}, policy='fp16', device='cpu')\n"
        "assert e.embed(['MKTAYIAKQR', 'MSTNPK']).shape[0] == 2\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
