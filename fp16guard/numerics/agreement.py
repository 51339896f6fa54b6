"""Does FP16 change the science? Agreement of what users do with embeddings, FP32 vs an attempt.

A per-sequence cosine of 0.99 is a proxy. These metrics ask the downstream questions directly,
from the pooled embeddings already in hand (no extra forward pass):

- neighbour agreement: overlap of each sequence's k nearest neighbours (cosine) under FP32 and
  under the attempt (mean and minimum overlap@k);
- ranking agreement: Spearman correlation of every pairwise cosine similarity, FP32 vs attempt;
- a user's linear probe (W, b): the share of sequences whose predicted class is unchanged, and
  the largest logit change;
- labels: leave-one-out nearest-centroid accuracy under FP32 and under the attempt;
- the FP64 floor: each attempt's relative error against an FP64 pass, next to FP32's own.

Pure numbers (torch, float64) plus the readers of the probe and labels files; nothing here
knows about models.
"""

from __future__ import annotations

import math
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fp16guard.errors import InputError

#: Neighbours compared per sequence: 10, or fewer on a small set (see ``neighbour_count``).
DEFAULT_K = 10
#: The pairwise metrics (kNN, ranking) look at n x n similarities: beyond this many sequences they
#: run on an evenly spaced sample of this size (2,000 sequences: 2 million pairs, well under a
#: second), and the report says so.
MAX_PAIRWISE_SEQUENCES = 2000
#: What the report says each metric would have decided when the user set no gate for it: a mean
#: neighbour overlap of 0.9 (one neighbour in ten swapped, on average) and a rank correlation of
#: 0.99. Only --min-knn-overlap and --min-rank-correlation gate; these are advisory.
ADVISORY_KNN_OVERLAP = 0.9
ADVISORY_RANK_CORRELATION = 0.99
#: What neighbour metrics can mean on each bundled set (data/README.md, "Neighbour structure"),
#: for the report's notes: a neighbour is only informative where related sequences exist.
BUNDLED_NEIGHBOURS = {
    "antibody_reference.fasta": (
        "the bundled antibody set has families: 62 CDR variants of 19 of its 22 real chains (1 to 7 per chain) and "
        "chains of the same type, so neighbour agreement asks whether FP16 keeps variants of one antibody together"
    ),
    "protein_reference.fasta": (
        "the bundled protein set has no families (102 independent synthetic sequences, 16 edge cases, 9 unrelated "
        "real proteins): its neighbours reflect length and composition, so neighbour agreement here is a weak check; "
        "validate on your own sequences (--sequences, with --labels) for search or clustering questions"
    ),
    "dna_reference.fasta": (
        "the bundled DNA set has few related records (21 real records cut from 9 GenBank records, some nested, e.g. "
        "genes inside their plasmid or cluster) and 101 independent synthetic or edge records: its neighbours mostly "
        "reflect GC content and length, so neighbour agreement here is a weak check of binning; validate on your own "
        "genomes (--sequences, with --labels) for that"
    ),
}
#: Sequences shown by name where a probe's decision flipped.
FLIPS_SHOWN = 5


def neighbour_count(n: int) -> int:
    """k for n sequences: 10, but at most half of the other sequences, so that the neighbour
    set is a real choice (k = n - 1 would always overlap fully); 0 when n < 3."""
    return max(0, min(DEFAULT_K, (n - 1) // 2))


def sample_indices(n: int, limit: int = MAX_PAIRWISE_SEQUENCES) -> torch.Tensor:
    """All of 0..n-1, or ``limit`` of them evenly spaced (deterministic)."""
    if n <= limit:
        return torch.arange(n)
    return torch.linspace(0, n - 1, limit).round().long().unique()


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """All pairwise cosine similarities of the rows of ``x``, in float64 (a zero row: 0)."""
    x = x.double()
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return unit @ unit.T


def nearest(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [n, k] of each row's k most similar other rows. Ties go to the lower index
    (a stable sort), so that identical sequences order the same way in both precisions."""
    sim = similarity.clone()
    sim.fill_diagonal_(-math.inf)
    return torch.argsort(sim, dim=1, descending=True, stable=True)[:, :k]


def knn_overlap(reference_sim: torch.Tensor, candidate_sim: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the share of its k FP32 nearest neighbours that are also among its k nearest
    under the candidate: [n] in [0, 1]."""
    n = reference_sim.shape[0]
    ref = nearest(reference_sim, k)
    cand = nearest(candidate_sim, k)
    member = torch.zeros(n, n, dtype=torch.bool).scatter_(1, ref, True)
    return member.gather(1, cand).sum(1).double() / k


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties sharing their average rank (as Spearman needs)."""
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    # Runs of equal values: each element gets the mean of the positions its run covers.
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (NaN when either is constant)."""
    ra, rb = average_ranks(a.double()), average_ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else math.nan


# --- the user's probe and labels --------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A linear head: logits = embedding @ weight.T + bias; ``weight`` [classes, dim]."""

    path: str
    weight: torch.Tensor  # float64 [C, D]
    bias: torch.Tensor  # float64 [C]

    @property
    def classes(self) -> int:
        return self.weight.shape[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() @ self.weight.T + self.bias

    def decide(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted class per row: argmax, or for one output logit > 0."""
        logits = self.logits(x)
        return (logits[:, 0] > 0).long() if self.classes == 1 else logits.argmax(1)


WEIGHT_KEYS = ("W", "weight", "w")
BIAS_KEYS = ("b", "bias")


def _read_arrays(path: Path) -> dict:
    """Arrays of an .npz (never unpickled) or a .safetensors file, as numpy arrays."""
    import numpy as np

    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path)))
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise InputError(f"--probe {path}: no such file") from None
    except ImportError:
        raise InputError(
            f"--probe {path}: reading .safetensors needs the safetensors package (pip install safetensors)"
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        # allow_pickle=False refuses object arrays with a ValueError: say why, in one line.
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"--probe {path}: cannot read it as .npz or .safetensors ({text})") from None
    except Exception as exc:  # safetensors raises its own error type for a malformed header
        raise InputError(f"--probe {path}: cannot read it as .safetensors ({type(exc).__name__}: {exc})") from None


def load_probe(path: str | Path, dim: int | None) -> Probe:
    """Read a linear head from ``path`` (.npz or .safetensors, no pickles): a weight named W
    (or weight) of shape [classes, dim] (or [dim, classes]) and an optional bias b [classes].
    InputError (exit 2) for a missing file, a missing weight or a shape that does not fit.
    ``dim`` None checks everything but the embedding size (to fail early, before any pass)."""
    path = Path(path)
    arrays = _read_arrays(path)
    key = next((k for k in WEIGHT_KEYS if k in arrays), None)
    if key is None:
        raise InputError(f"--probe {path}: no weight array (named W or weight) among {sorted(arrays) or 'no arrays'}")
    weight = torch.as_tensor(arrays[key]).double()
    if weight.dim() == 1:
        weight = weight[None]
    if dim is None:  # the orientation is settled once the embedding size is known
        bias_key = next((k for k in BIAS_KEYS if k in arrays), None)
        if weight.dim() != 2 or (bias_key is not None and arrays[bias_key].size not in weight.shape):
            shapes = f"{tuple(weight.shape)}" + (f" and {tuple(arrays[bias_key].shape)}" if bias_key else "")
            raise InputError(f"--probe {path}: expected a weight [classes, dim] and a bias [classes], got {shapes}")
        dim = weight.shape[1]
    if weight.dim() != 2 or dim not in weight.shape:
        raise InputError(
            f"--probe {path}: weight {key} has shape {tuple(weight.shape)}, but the embeddings have {dim} dimensions "
            f"(expected [classes, {dim}])"
        )
    if weight.shape[1] != dim:  # stored as [dim, classes]
        weight = weight.T.contiguous()
    bias_key = next((k for k in BIAS_KEYS if k in arrays), None)
    bias = torch.zeros(weight.shape[0], dtype=torch.float64)
    if bias_key is not None:
        bias = torch.as_tensor(arrays[bias_key]).double().reshape(-1)
        if bias.shape[0] != weight.shape[0]:
            raise InputError(f"--probe {path}: bias {bias_key} has {bias.shape[0]} entries, the weight "
                             f"{weight.shape[0]} classes")
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise InputError(f"--probe {path}: the weights hold NaN or Inf")
    return Probe(str(path), weight, bias)


def read_labels(path: str | Path, ids: Sequence[str]) -> list[str | None]:
    """Labels from a two-column TSV (sequence id, label), aligned to ``ids`` (None: unlabelled).
    Blank lines and lines starting with # are skipped; a first line ``id<TAB>label`` whose id is
    not a sequence is a header. InputError (exit 2) naming unknown ids, duplicates or bad lines."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"--labels {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise InputError(f"--labels {path}: not a text file") from None
    position = {sid: i for i, sid in enumerate(ids)}
    labels: list[str | None] = [None] * len(ids)
    unknown: list[str] = []
    first = True
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.rstrip("\r").split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise InputError(f"--labels {path}, line {number}: expected two tab-separated columns (id, label)")
        sid, label = parts[0].strip(), parts[1].strip()
        if first and sid not in position and sid.lower() in ("id", "sequence", "sequence_id", "name"):
            first = False
            continue  # a header
        first = False
        if sid not in position:
            unknown.append(sid)
        elif labels[position[sid]] is not None:
            raise InputError(f"--labels {path}, line {number}: {sid} is labelled twice")
        else:
            labels[position[sid]] = label
    if unknown:
        raise InputError(
            f"--labels {path}: {len(unknown)} id(s) not among the sequences: {', '.join(unknown[:5])}"
            + (" ..." if len(unknown) > 5 else "")
        )
    if len({label for label in labels if label is not None}) < 2:
        raise InputError(f"--labels {path}: needs at least two classes among the sequences")
    return labels


def nearest_centroid(x: torch.Tensor, classes: torch.Tensor, count: int) -> torch.Tensor:
    """Leave-one-out nearest-centroid predictions (cosine to each class's mean unit vector, the
    sequence itself left out of its own class's mean): [n] class numbers; -1 where no centroid
    is left (a class of one, alone)."""
    unit = x.double() / x.double().norm(dim=-1, keepdim=True).clamp_min(1e-300)
    sums = torch.zeros(count, unit.shape[1], dtype=torch.float64).index_add_(0, classes, unit)
    sizes = torch.bincount(classes, minlength=count).double()
    centroids = sums / sizes.clamp_min(1)[:, None]
    scores = unit @ (centroids / centroids.norm(dim=-1, keepdim=True).clamp_min(1e-300)).T
    # Each sequence's own class without it: (sum - self) / (size - 1).
    own = sums[classes] - unit
    own_score = (unit * own).sum(1) / own.norm(dim=-1).clamp_min(1e-300)
    alone = sizes[classes] <= 1
    scores[torch.arange(len(classes)), classes] = torch.where(alone, torch.full_like(own_score, -math.inf), own_score)
    scores[:, sizes == 0] = -math.inf
    best = scores.argmax(1)
    return torch.where(torch.isfinite(scores.max(1).values), best, torch.full_like(best, -1))


# --- the FP64 floor -------------------------------------------------------------------------


@dataclass(frozen=True)
class Fp64Floor:
    """An FP64 pass over a sample of the sequences: ``rows`` (positions in the input order),
    their FP64 pooled embeddings, and FP32's relative error against them."""

    rows: tuple[int, ...]
    exact: torch.Tensor  # float64 [S, D]
    fp32_error: float  # ||FP32 - FP64|| / ||FP64|| over the sample
    fp32_min_cosine: float
    device: str
    seconds: float

    @classmethod
    def of(cls, rows: Sequence[int], exact: torch.Tensor, reference: torch.Tensor, device: str,
           seconds: float) -> Fp64Floor:
        exact = exact.double()
        fp32 = reference[list(rows)].double()
        return cls(tuple(rows), exact, relative_error(fp32, exact), _min_cosine(fp32, exact), device, seconds)


def relative_error(x: torch.Tensor, exact: torch.Tensor) -> float:
    """||x - exact|| / ||exact|| (Frobenius, float64); NaN when x is not finite."""
    if not torch.isfinite(x).all():
        return math.nan
    norm = float(exact.norm())
    return float((x.double() - exact).norm()) / norm if norm > 0 else math.nan


def _min_cosine(x: torch.Tensor, exact: torch.Tensor) -> float:
    from fp16guard.numerics.metrics import cosine_rows

    return float(cosine_rows(exact, x).min())


# --- everything for one attempt -------------------------------------------------------------


@dataclass(frozen=True)
class AgreementInputs:
    """What the agreement metrics need beyond the two sets of embeddings: the user's probe and
    labels, the FP64 floor; computed once per validation."""

    probe: Probe | None = None
    labels: tuple[str | None, ...] | None = None
    fp64: Fp64Floor | None = None
    extras: dict = field(default_factory=dict)


def measure(reference: torch.Tensor, candidate: torch.Tensor, ids: Sequence[str],
            inputs: AgreementInputs | None = None) -> dict:
    """The agreement of ``candidate`` with the FP32 ``reference`` (pooled [N, D]) as plain data:
    ``neighbours`` (k, mean, min overlap, sample size), ``ranking`` (Spearman of pairwise cosines,
    pairs), and where given ``probe``, ``centroid`` and ``fp64``. Every figure is NaN when the
    candidate has a non-finite row (so that none can read as agreement)."""
    started = time.perf_counter()
    inputs = inputs or AgreementInputs()
    n = len(ids)
    finite = bool(torch.isfinite(candidate).all())
    out: dict = {}
    rows = sample_indices(n)
    k = neighbour_count(len(rows))
    if k and finite:
        ref_sim = cosine_matrix(reference[rows])
        cand_sim = cosine_matrix(candidate[rows])
        overlap = knn_overlap(ref_sim, cand_sim, k)
        worst = int(torch.argmin(overlap))
        upper = torch.triu_indices(len(rows), len(rows), offset=1)
        rho = spearman(ref_sim[upper[0], upper[1]], cand_sim[upper[0], upper[1]])
        out["neighbours"] = {
            "k": k, "sequences": len(rows), "of": n, "mean_overlap": float(overlap.mean()),
            "min_overlap": float(overlap.min()), "worst": ids[int(rows[worst])], "changed": int((overlap < 1).sum()),
        }
        out["ranking"] = {"spearman": rho, "pairs": upper.shape[1], "sequences": len(rows), "of": n}
    elif k:
        out["neighbours"] = {"k": k, "sequences": len(rows), "of": n, "mean_overlap": math.nan, "min_overlap": math.nan,
                             "worst": None, "changed": None}
        pairs = len(rows) * (len(rows) - 1) // 2
        out["ranking"] = {"spearman": math.nan, "pairs": pairs, "sequences": len(rows), "of": n}
    if inputs.probe is not None:
        out["probe"] = probe_agreement(inputs.probe, reference, candidate, ids)
    if inputs.labels is not None:
        out["centroid"] = centroid_agreement(inputs.labels, reference, candidate)
    if inputs.fp64 is not None:
        floor = inputs.fp64
        error = relative_error(candidate[list(floor.rows)], floor.exact)
        out["fp64"] = {
            "sequences": len(floor.rows), "device": floor.device, "fp32_relative_error": floor.fp32_error,
            "relative_error": error,
            "ratio": error / floor.fp32_error if floor.fp32_error > 0 and math.isfinite(error) else math.nan,
            "min_cosine": _min_cosine(candidate[list(floor.rows)], floor.exact) if finite else math.nan,
            "fp32_min_cosine": floor.fp32_min_cosine,
        }
    out["seconds"] = time.perf_counter() - started  # the metrics' own cost (the FP64 pass excluded)
    return out


def probe_agreement(probe: Probe, reference: torch.Tensor, candidate: torch.Tensor, ids: Sequence[str]) -> dict:
    """Whether the user's linear head decides the same under FP32 and the candidate."""
    if not torch.isfinite(candidate).all():
        return {"path": probe.path, "classes": probe.classes, "same_decision": math.nan, "flipped": None,
                "flipped_ids": [], "max_logit_change": math.nan, "logit_scale": math.nan}
    ref_logits, cand_logits = probe.logits(reference), probe.logits(candidate)
    ref_class, cand_class = probe.decide(reference), probe.decide(candidate)
    flipped = (ref_class != cand_class).nonzero().flatten().tolist()
    return {
        "path": probe.path,
        "classes": probe.classes,
        "same_decision": 1.0 - len(flipped) / len(ids),
        "flipped": len(flipped),
        "flipped_ids": [ids[i] for i in flipped[:FLIPS_SHOWN]],
        "max_logit_change": float((cand_logits - ref_logits).abs().max()),
        # The spread of the FP32 logits, to read the change against.
        "logit_scale": float(ref_logits.std()) if ref_logits.numel() > 1 else math.nan,
    }


def centroid_agreement(labels: Sequence[str | None], reference: torch.Tensor, candidate: torch.Tensor) -> dict:
    """Leave-one-out nearest-centroid accuracy on the labelled sequences, under FP32 and under
    the candidate, and how many predictions differ between the two."""
    known = [i for i, label in enumerate(labels) if label is not None]
    names = sorted({labels[i] for i in known})
    classes = torch.tensor([names.index(labels[i]) for i in known])
    data = {"labelled": len(known), "classes": len(names)}
    if not torch.isfinite(candidate[known]).all():
        return {**data, "fp32_accuracy": math.nan, "accuracy": math.nan, "changed_predictions": None}
    ref_pred = nearest_centroid(reference[known], classes, len(names))
    cand_pred = nearest_centroid(candidate[known], classes, len(names))
    return {
        **data,
        "fp32_accuracy": float((ref_pred == classes).double().mean()),
        "accuracy": float((cand_pred == classes).double().mean()),
        "changed_predictions": int((ref_pred != cand_pred).sum()),
    }


def decisions(agreement: dict, knn_gate: float | None, rank_gate: float | None) -> list[dict]:
    """What each agreement metric decides: against the user's gate when set (``gated``), else
    against the advisory level (what it would have decided). Missing or NaN figures fail."""
    out = []
    neighbours, ranking = agreement.get("neighbours"), agreement.get("ranking")
    if neighbours:
        threshold = ADVISORY_KNN_OVERLAP if knn_gate is None else knn_gate
        value = neighbours["mean_overlap"]
        out.append({"metric": f"mean kNN overlap@{neighbours['k']}", "option": "--min-knn-overlap", "value": value,
                    "threshold": threshold, "gated": knn_gate is not None, "passed": _at_least(value, threshold)})
    if ranking:
        threshold = ADVISORY_RANK_CORRELATION if rank_gate is None else rank_gate
        value = ranking["spearman"]
        out.append({"metric": "rank correlation (Spearman)", "option": "--min-rank-correlation", "value": value,
                    "threshold": threshold, "gated": rank_gate is not None, "passed": _at_least(value, threshold)})
    return out


def _at_least(value: float | None, threshold: float) -> bool:
    return value is not None and math.isfinite(value) and value >= threshold
