"""Agreement metrics end to end: tiny fair-esm checkpoints written in the real format, families of
related sequences, nothing mocked. The planted failure is a genuine FP16 rounding effect (see
fp16guard.testing.plant_neighbour_collapse): every cosine passes, the neighbours change."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from cli_runner import read_report, run_cli

from fp16guard.testing import related_sequences, write_checkpoint, write_fasta


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Three families of 20 close relatives (point mutants of one parent each)."""
    return write_fasta(related_sequences(families=3, size=20), tmp_path_factory.mktemp("families") / "families.fasta")


@pytest.fixture(scope="module")
def collapse(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("collapse") / "collapse.pt", plant="collapse")


@pytest.fixture(scope="module")
def labels(tmp_path_factory, families):
    path = tmp_path_factory.mktemp("labels") / "labels.tsv"
    ids = [line[1:].split()[0] for line in families.read_text().splitlines() if line.startswith(">")]
    path.write_text("id\tlabel\n" + "".join(f"{i}\t{i.split('_')[0]}\n" for i in ids))
    return path


def validate(weights, fasta, out, *extra):
    return run_cli("validate", "esm2", "--weights", weights, "--sequences", fasta, "--out", out, "--device", "cpu",
                   "--policy", "fp16", *extra)


def agreement(report):
    return report["attempts"][1]["metrics"]["agreement"]


def test_uniformly_small_error_agrees_everywhere(checkpoints, families, labels, tmp_path):
    out = tmp_path / "out"
    result, text = validate(checkpoints["healthy"], families, out, "--labels", labels, "--min-knn-overlap", "0.95",
                            "--min-rank-correlation", "0.999")
    assert result.exit_code == 0, text
    report = read_report(out)
    data = agreement(report)
    print("healthy:", json.dumps({k: data[k] for k in ("neighbours", "ranking", "centroid")}))
    assert report["attempts"][1]["metrics"]["min_cosine"] > 0.9999
    assert data["neighbours"]["k"] == 10 and data["neighbours"]["sequences"] == 60
    assert data["neighbours"]["mean_overlap"] >= 0.98 and data["neighbours"]["min_overlap"] >= 0.8
    assert data["ranking"]["spearman"] > 0.9999
    assert data["centroid"]["fp32_accuracy"] == data["centroid"]["accuracy"] == 1.0
    assert data["centroid"]["changed_predictions"] == 0
    assert all(d["passed"] and d["gated"] for d in data["decisions"])
    assert report["thresholds"]["min_knn_overlap"] == 0.95
    assert "kNN overlap" in text  # the summary table's column


def test_neighbour_collapse_passes_cosine_and_fails_the_knn_gate(checkpoints, collapse, families, tmp_path):
    out = tmp_path / "plain"
    result, text = validate(collapse, families, out)
    assert result.exit_code == 0, text  # the default gate (cosine, NaN/Inf) keeps its meaning
    report = read_report(out)
    fp16 = report["attempts"][1]
    data = agreement(report)
    print("collapse: min cosine", fp16["metrics"]["min_cosine"],
          json.dumps({k: data[k] for k in ("neighbours", "ranking")}))
    # Measured: min cosine 1-2.5e-09, mean overlap@10 0.78 (min 0.5), Spearman 0.89.
    assert fp16["metrics"]["min_cosine"] > 0.99999
    assert data["neighbours"]["mean_overlap"] < 0.85 and data["neighbours"]["min_overlap"] <= 0.6
    assert data["ranking"]["spearman"] < 0.95
    knn = next(d for d in data["decisions"] if d["option"] == "--min-knn-overlap")
    assert not knn["passed"] and not knn["gated"]  # what it would have decided
    markdown = (out / "report.md").read_text()
    assert "mean kNN overlap@10 >= 0.9: fail (would have; not gated" in markdown

    gated = tmp_path / "gated"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md")}
    result, text = run_cli("validate", "esm2", "--weights", collapse, "--sequences", families, "--out", gated,
                           "--device", "cpu",
                           "--policy", "fp16", "--min-knn-overlap", "0.9", env=env)
    assert result.exit_code == 1, text
    annotation = next(line for line in text.splitlines() if line.startswith("::error"))
    assert "below --min-knn-overlap 0.9" in annotation and "Worst sequence" not in annotation
    report = read_report(gated)
    reason = report["attempts"][1]["reason"]
    assert reason.startswith("mean kNN overlap@10 0.7") and "below --min-knn-overlap 0.9" in reason
    assert "cosine passed" in reason
    case = ET.parse(gated / "junit.xml").getroot().find("testcase")
    assert "kNN overlap" in case.find("failure").get("message")
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert float(properties["knn_overlap_mean"]) < 0.85 and properties["knn_k"] == "10"
    assert float(properties["min_cosine"]) > 0.99999


def test_a_probe_whose_decision_flips_under_fp16_is_reported(collapse, families, tmp_path):
    """A two-class head along the FP32 embeddings' main direction of variation, its boundary at
    the median: trained on FP32 (here: fitted), the collapse moves sequences across it."""
    reference = tmp_path / "ref.npz"
    result, text = validate(collapse, families, tmp_path / "first", "--save-reference", reference)
    assert result.exit_code == 0, text
    with np.load(reference, allow_pickle=False) as saved:
        embeddings = saved["embeddings"].astype(np.float64)
    centred = embeddings - embeddings.mean(0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    score = embeddings @ direction
    threshold = np.median(score)
    np.savez(tmp_path / "head.npz", W=np.stack([direction, -direction]), b=np.array([-threshold, threshold]))
    out = tmp_path / "out"
    result, text = validate(collapse, families, out, "--reference", reference, "--probe", tmp_path / "head.npz")
    assert result.exit_code == 0, text
    probe = agreement(read_report(out))["probe"]
    print("probe:", probe)
    assert probe["classes"] == 2 and probe["flipped"] >= 1 and probe["same_decision"] < 1
    assert probe["flipped_ids"] and probe["max_logit_change"] > 0
    markdown = (out / "report.md").read_text()
    assert f"({probe['flipped']} flipped)" in markdown and probe["flipped_ids"][0] in markdown


def test_fp64_floor_on_cpu(checkpoints, families, tmp_path):
    out = tmp_path / "out"
    result, text = validate(checkpoints["healthy"], families, out, "--fp64-floor")
    assert result.exit_code == 0, text
    floor = agreement(read_report(out))["fp64"]
    print("fp64 floor:", floor)
    assert floor["sequences"] == 32 and floor["device"] == "cpu"
    assert 0 < floor["fp32_relative_error"] < 1e-5  # FP32 is close to exact, and not exactly so
    assert floor["relative_error"] > 100 * floor["fp32_relative_error"]  # FP16: 11 bits against 24
    assert floor["ratio"] == pytest.approx(floor["relative_error"] / floor["fp32_relative_error"])
    markdown = (out / "report.md").read_text()
    assert "FP64 floor (32 sequences)" in markdown and "x FP32's error" in markdown
    assert "FP64 floor: 32 sequences embedded in FP64 on cpu" in markdown


def test_a_probe_that_does_not_fit_is_exit_2(checkpoints, families, tmp_path):
    np.savez(tmp_path / "head.npz", W=np.ones((3, 7)))
    result, text = validate(checkpoints["healthy"], families, tmp_path / "out", "--probe", tmp_path / "head.npz")
    assert result.exit_code == 2, text
    assert "weight W has shape (3, 7), but the embeddings have 32 dimensions" in text
    assert "Traceback" not in text and not (tmp_path / "out" / "report.json").exists()


def test_labels_naming_unknown_ids_are_exit_2(checkpoints, families, tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("fam0_parent\ta\nnot_a_sequence\tb\n")
    result, text = validate(checkpoints["healthy"], families, tmp_path / "out", "--labels", path)
    assert result.exit_code == 2, text
    assert "not among the sequences: not_a_sequence" in text and "Traceback" not in text


def test_gates_from_the_config_file(checkpoints, collapse, families, tmp_path, monkeypatch):
    (tmp_path / "fp16guard.toml").write_text('target = "esm2"\nmin-knn-overlap = 0.9\n')
    monkeypatch.chdir(tmp_path)
    result, text = validate(collapse, families, tmp_path / "out")
    assert result.exit_code == 1, text
    report = read_report(tmp_path / "out")
    assert report["settings"]["min-knn-overlap"]["value"] == 0.9
    assert report["settings"]["min-knn-overlap"]["source"].startswith("config:")


def test_the_report_says_what_neighbours_mean_on_a_bundled_set(checkpoints, tmp_path):
    out = tmp_path / "out"
    result, text = run_cli("validate", "esm2", "--weights", checkpoints["healthy"], "--out", out, "--device", "cpu",
                           "--policy", "fp16", "--max-length", "200")
    assert result.exit_code == 0, text
    report = read_report(out)
    note = next(n for n in report["notes"] if n.startswith("Neighbour metrics:"))
    assert "protein set has no families" in note
    data = agreement(report)
    assert data["neighbours"]["sequences"] == 127 and data["ranking"]["pairs"] == 127 * 126 // 2
    html = (out / "report.html").read_text()
    assert "Neighbours: mean overlap of the 10 nearest" in html and "kNN overlap" in html
