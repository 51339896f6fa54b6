"""`fp16guard validate dnabert` end to end on directories in the exact DNABERT-S layout."""


import pytest
from cli_runner import ladder, read_report, run_cli

from fp16guard.testing import write_dnabert

DNA = """>gc_mid
ACGTACGTTTGACNNNNACGTAGCTAGCTAGGGCGCGCATATATATTAGCGATCGACTAGCTAGCATCGATCGACTGACTAGCTAGCAT
>soft_masked
acgtagctagctagtcgatgcaattgcaACGTTGCA
>repeats
GGGGGGGGGGCCCCCCCCCCCCATATATTATATTTTTAAAAAAAAAAAACACACACACACACACACACA
>short
ACGTTGCAAT
"""


def invoke(*args, env=None):
    return run_cli("validate", "dnabert", *args, env=env)


@pytest.fixture(scope="module")
def dnabert_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dnabert")
    return {plant or "healthy": write_dnabert(root / (plant or "healthy"), plant) for plant in (None, "residual",
                                                                                                "mlp")}


@pytest.fixture()
def dna_fasta(tmp_path):
    path = tmp_path / "dna.fasta"
    path.write_text(DNA)
    return path


def test_healthy_model_passes_without_remote_code(dnabert_dirs, dna_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = invoke("--model", dnabert_dirs["healthy"], "-s", dna_fasta, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, text
    data = read_report(out)
    assert data["passing_policy"] == "fp16" and data["model"]["target"] == "dnabert"
    assert data["dataset"]["max_length"] is None
    # Byte-pair tokens: fewer tokens than bases.
    assert data["attempts"][0]["timing"]["tokens"] < sum(len(s) for s in DNA.split() if not s.startswith(">"))


def test_planted_residual_overflow_is_fixed_by_fp32_residual_adds(dnabert_dirs, dna_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = invoke("--model", dnabert_dirs["residual"], "-s", dna_fasta, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, text
    data = read_report(out)
    assert data["passing_policy"] == "fp16+res32"
    assert [a["passed"] for a in ladder(data)[1:]] == [False, False, False, True]
    assert any("(ALiBi bias and softmax)" in n for n in data["attempts"][3]["fp32_modules"])


def test_unfixable_overflow_exits_1(dnabert_dirs, dna_fasta, tmp_path):
    result, text = invoke("--model", dnabert_dirs["mlp"], "-s", dna_fasta, "-o", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 1, text
    assert read_report(tmp_path / "out")["passing_policy"] is None


def test_token_truncation_and_ambiguity_codes(dnabert_dirs, tmp_path):
    path = tmp_path / "iupac.fasta"
    path.write_text(DNA + ">ambiguous\nACGTRYKMACGT\n")
    out = tmp_path / "out"
    result, text = invoke("--model", dnabert_dirs["healthy"], "-s", path, "-o", out, "--max-length", "8",
                          "--device", "cpu")
    assert result.exit_code == 0, text
    data = read_report(out)
    assert "gc_mid" in data["dataset"]["truncated"] and "short" not in data["dataset"]["truncated"]
    assert "replaced by N in 1 sequence(s): ambiguous" in " ".join(text.split())


@pytest.mark.parametrize("fasta, message", [(">p\nMKVLA\n", "'L' at column 4"), (">u\nACGU\n", "'U' at column 4")])
def test_non_dna_input_exits_2(dnabert_dirs, tmp_path, fasta, message):
    path = tmp_path / "bad.fasta"
    path.write_text(fasta)
    result, text = invoke("--model", dnabert_dirs["healthy"], "-s", path, "-o", tmp_path / "out")
    assert result.exit_code == 2, text
    assert message in text


def test_nothing_cached_offline_exits_3(dna_fasta, tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result, text = invoke("-s", dna_fasta, "--offline", env=env)
    assert result.exit_code == 3, text
    assert "zhihan1996/DNABERT-S" in text and "not in the Hugging Face cache" in text


def test_default_model_found_offline_in_the_hugging_face_cache(tmp_path, dna_fasta):
    """HF_HOME conventions: hub/models--ORG--NAME/snapshots/REVISION with refs/main naming it."""
    repo = tmp_path / "hf-home" / "hub" / "models--zhihan1996--DNABERT-S"
    write_dnabert(repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    result, text = invoke("-s", dna_fasta, "--offline", "-o", out, "--device", "cpu", env=env)
    assert result.exit_code == 0, text
    data = read_report(out)
    assert data["model"]["name"] == "zhihan1996/DNABERT-S"
    assert "snapshots" in data["model"]["source"]


def test_vocabulary_without_n_reads_n_as_unknown_on_the_bundled_set(tmp_path):
    """A tokenizer trained on clean A/C/G/T has no N: the model's own tokenizer reads N as its
    unknown token, and so does fp16guard, with a warning that counts and names the sequences."""
    model = write_dnabert(tmp_path / "no_n", with_n=False)
    out = tmp_path / "out"
    result, text = invoke("--model", model, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, text
    data = read_report(out)
    note = next(n for n in data["notes"] if "unknown token" in n)
    assert "edge_N_run20_middle" in note and "sequence(s)" in note
    assert "unknown token" in " ".join(text.split())
