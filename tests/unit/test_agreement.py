"""Agreement metrics: neighbours, ranking, probe, labels, FP64 floor, and their gates."""

import math

import numpy as np
import pytest
import torch

from fp16guard.core.config import Thresholds
from fp16guard.errors import InputError
from fp16guard.execution.floor import KeepFloat64, sample_rows
from fp16guard.numerics.agreement import (
    AgreementInputs,
    Fp64Floor,
    average_ranks,
    cosine_matrix,
    knn_overlap,
    load_probe,
    measure,
    nearest_centroid,
    neighbour_count,
    read_labels,
    sample_indices,
    spearman,
)
from fp16guard.numerics.compare import compare
from fp16guard.numerics.metrics import TokenStats, gap_histogram, histogram_percentile


def clustered(n_per=8, clusters=4, dim=16, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    return torch.cat([c + spread * torch.randn(n_per, dim, generator=g) for c in centres])


def test_neighbour_count_is_ten_or_half_the_others():
    assert [neighbour_count(n) for n in (1, 2, 3, 5, 11, 21, 22, 500)] == [0, 0, 1, 2, 5, 10, 10, 10]


def test_identical_embeddings_agree_fully():
    x = clustered()
    data = measure(x, x.clone(), [str(i) for i in range(len(x))])
    assert data["neighbours"]["mean_overlap"] == 1.0 and data["neighbours"]["min_overlap"] == 1.0
    assert data["ranking"]["spearman"] == pytest.approx(1.0)
    assert data["neighbours"]["k"] == 10 and data["ranking"]["pairs"] == 32 * 31 // 2


def test_noise_within_clusters_swaps_neighbours_but_keeps_cosine():
    x = clustered(spread=0.01)
    g = torch.Generator().manual_seed(1)
    noisy = x + 0.02 * torch.randn(x.shape, generator=g)  # larger than the within-cluster spread
    k = 4  # within one cluster of 8: which 4 are nearest depends on the fine differences
    overlap = knn_overlap(cosine_matrix(x), cosine_matrix(noisy), k)
    assert overlap.mean() < 0.8
    # Each row is still almost the same vector.
    assert torch.nn.functional.cosine_similarity(x, noisy).min() > 0.99


def test_knn_overlap_counts_shared_neighbours():
    # Points on a line: each one's nearest neighbour is known exactly.
    angles = torch.tensor([0.0, 0.1, 0.3, 0.7, 1.5])
    x = torch.stack([angles.cos(), angles.sin()], 1)
    swapped = x[[0, 1, 2, 3, 4]].clone()
    swapped[2] = torch.tensor([math.cos(0.04), math.sin(0.04)])  # 2 moves between 0 and 1
    overlap = knn_overlap(cosine_matrix(x.double()), cosine_matrix(swapped.double()), 1)
    # Nearest before: 0->1, 1->0, 2->1, 3->2, 4->3; after: 0->2, 1->2, 2->0, 3->1, 4->3.
    assert overlap.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_spearman_matches_a_hand_computation_with_ties():
    a = torch.tensor([1.0, 2.0, 2.0, 3.0, 5.0])
    b = torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0])
    assert average_ranks(a).tolist() == [1.0, 2.5, 2.5, 4.0, 5.0]
    ra, rb = np.array([1, 2.5, 2.5, 4, 5]), np.array([2, 1, 4, 3, 5.0])
    expected = np.corrcoef(ra, rb)[0, 1]
    assert spearman(a, b) == pytest.approx(expected)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.ones(4), a[:4]))


def test_nonfinite_candidate_gives_nan_agreement():
    x = clustered()
    bad = x.clone()
    bad[3, 0] = math.nan
    data = measure(x, bad, [str(i) for i in range(len(x))])
    assert math.isnan(data["neighbours"]["mean_overlap"]) and math.isnan(data["ranking"]["spearman"])


def test_sample_indices_cap_the_pairwise_metrics():
    rows = sample_indices(5000, 2000)
    assert len(rows) == 2000 and rows[0] == 0 and rows[-1] == 4999
    assert len(sample_indices(10)) == 10


def test_knn_gate_fails_with_a_reason_naming_the_metric():
    x = clustered(spread=0.01)
    g = torch.Generator().manual_seed(1)
    noisy = x + 0.02 * torch.randn(x.shape, generator=g)
    ids = [f"s{i}" for i in range(len(x))]
    plain = compare(x, noisy, ids, Thresholds(min_cosine=0.99))
    assert plain.passed
    decision = next(d for d in plain.agreement["decisions"] if d["option"] == "--min-knn-overlap")
    assert not decision["gated"] and decision["threshold"] == 0.9
    gated = compare(x, noisy, ids, Thresholds(min_cosine=0.99, min_knn_overlap=0.99))
    assert not gated.passed
    assert "kNN overlap" in gated.reason and "--min-knn-overlap 0.99" in gated.reason
    assert "cosine passed" in gated.reason
    ranked = compare(x, noisy, ids, Thresholds(min_cosine=0.99, min_rank_correlation=0.99999))
    assert not ranked.passed and "--min-rank-correlation" in ranked.reason


def test_a_knn_gate_on_two_sequences_cannot_pass():
    x = torch.randn(2, 4)
    result = compare(x, x, ["a", "b"], Thresholds(min_knn_overlap=0.5))
    assert not result.passed and "fewer than 3 sequences" in result.reason


def test_thresholds_reject_out_of_range_gates():
    with pytest.raises(InputError, match="--min-knn-overlap"):
        Thresholds(min_knn_overlap=1.5)
    with pytest.raises(InputError, match="--min-rank-correlation"):
        Thresholds(min_rank_correlation=-2)


# --- probe ------------------------------------------------------------------------------------


def test_probe_reads_npz_in_either_orientation_and_flags_flips(tmp_path):
    w = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    np.savez(tmp_path / "head.npz", W=w, b=np.array([0.0, 0.0]))
    np.savez(tmp_path / "head_t.npz", weight=w.T)
    ref = torch.tensor([[1.0, 0.5, 0.0], [0.2, 1.0, 0.0], [1.0, 0.999, 0.0]])
    cand = torch.tensor([[1.0, 0.5, 0.0], [0.2, 1.0, 0.0], [1.0, 1.001, 0.0]])  # the last one flips
    for name in ("head.npz", "head_t.npz"):
        probe = load_probe(tmp_path / name, 3)
        assert probe.weight.shape == (2, 3)
        data = measure(ref, cand, ["a", "b", "c"], AgreementInputs(probe=probe))["probe"]
        assert data["flipped"] == 1 and data["flipped_ids"] == ["c"]
        assert data["same_decision"] == pytest.approx(2 / 3)
        assert data["max_logit_change"] == pytest.approx(0.002, rel=1e-4)


def test_probe_reads_safetensors(tmp_path):
    from safetensors.numpy import save_file

    save_file({"W": np.ones((1, 4), dtype=np.float32), "b": np.array([-2.0], dtype=np.float32)},
              str(tmp_path / "h.safetensors"))
    probe = load_probe(tmp_path / "h.safetensors", 4)
    # One output: the decision is logit > 0.
    assert probe.decide(torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])).tolist() == [0, 1]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"W": np.ones((2, 5))}, "has shape \\(2, 5\\), but the embeddings have 3 dimensions"),
        ({"W": np.ones((2, 3)), "b": np.ones(3)}, "bias b has 3 entries"),
        ({"x": np.ones((2, 3))}, "no weight array"),
        ({"W": np.array([[np.nan, 1, 1]])}, "NaN or Inf"),
    ],
)
def test_bad_probes_are_input_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "p.npz", **arrays)
    with pytest.raises(InputError, match=message):
        load_probe(tmp_path / "p.npz", 3)


def test_a_pickled_probe_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"W": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "obj.npz").write_bytes((tmp_path / "obj.npy").read_bytes())
    with pytest.raises(InputError, match="cannot read"):
        load_probe(tmp_path / "obj.npz", 3)
    np.savez(tmp_path / "objects.npz", W=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="--probe"):
        load_probe(tmp_path / "objects.npz", 3)


# --- labels and nearest centroid --------------------------------------------------------------


def test_labels_tsv_with_header_comments_and_gaps(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("id\tlabel\n# a comment\na\tx\n\nb\ty\nc\tx\n")
    assert read_labels(path, ["a", "b", "c", "d"]) == ["x", "y", "x", None]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a\tx\nzz\ty\n", "1 id\\(s\\) not among the sequences: zz"),
        ("a\tx\na\ty\n", "labelled twice"),
        ("a x\n", "two tab-separated columns"),
        ("a\tx\nb\tx\n", "at least two classes"),
    ],
)
def test_bad_labels_are_input_errors(tmp_path, text, message):
    path = tmp_path / "labels.tsv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_labels(path, ["a", "b", "c"])


def test_nearest_centroid_leaves_each_sequence_out():
    x = clustered(n_per=5, clusters=3)
    classes = torch.arange(3).repeat_interleave(5)
    assert (nearest_centroid(x, classes, 3) == classes).all()
    # A class of one has no centroid without its only member: it cannot be predicted right.
    lonely = classes[:11]  # five of class 0, five of class 1, one of class 2
    predictions = nearest_centroid(x[:11], lonely, 3)
    assert predictions[-1] != 2


# --- FP64 floor and token percentiles ---------------------------------------------------------


def test_fp64_floor_ratio():
    exact = torch.randn(6, 8, dtype=torch.float64)
    fp32 = exact.float()
    fp16 = exact.half().float()
    floor = Fp64Floor.of(range(6), exact, fp32, "cpu", 0.0)
    assert 0 < floor.fp32_error < 1e-7
    data = measure(fp32, fp16, list("abcdef"), AgreementInputs(fp64=floor))["fp64"]
    assert data["relative_error"] > 1e-5 and data["ratio"] > 100


def test_keep_float64_stops_casts_down_to_fp32():
    x = torch.randn(3, 4, dtype=torch.float64)
    with KeepFloat64():
        assert x.float().dtype == torch.float64
        assert x.to(torch.float32).dtype == torch.float64
        assert torch.softmax(x, -1, dtype=torch.float32).dtype == torch.float64
        assert x.type_as(torch.ones(1)).dtype == torch.float64
        assert torch.ones(2).float().dtype == torch.float32  # FP32 tensors are left alone
    assert x.float().dtype == torch.float32


def test_sample_rows_spread_over_lengths():
    lengths = [5, 100, 7, 300, 50, 1000, 20]
    assert sample_rows(lengths, 3) == [0, 4, 5]  # the shortest (5), the median (50), the longest
    assert sample_rows(lengths, 10) == list(range(7))


def test_token_percentile_from_the_histogram():
    cos = torch.tensor([0.5] + [1 - 1e-6] * 99)
    counts = gap_histogram(cos)
    assert sum(counts) == 100
    assert histogram_percentile(counts, 1.0) <= 0.5 and histogram_percentile(counts, 1.0) > 0.4
    assert 1 - 1.2e-6 < histogram_percentile(counts, 50.0) <= 1 - 1e-6
    merged = TokenStats(tokens=100, gap_counts=counts) + TokenStats(tokens=100, gap_counts=counts)
    assert merged.gap_counts == tuple(2 * c for c in counts)
    assert TokenStats(gap_counts=counts).to_dict()["p1_cosine"] == histogram_percentile(counts, 1.0)
