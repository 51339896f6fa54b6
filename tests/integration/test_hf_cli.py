"""`fp16guard validate hf` and `validate antiberty` end to end on real on-disk formats:
save_pretrained directories with their tokenizers, and the trained AntiBERTy package."""


import pytest
from cli_runner import ladder, read_report, run_cli

from fp16guard.io.sequences import read_fasta
from fp16guard.models.catalog import PRESETS
from fp16guard.testing import write_hf_bert, write_hf_esm


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "bert": write_hf_bert(root / "bert"),
        "bert-residual": write_hf_bert(root / "bert-residual", plant="residual"),
        "esm": write_hf_esm(root / "esm"),
        "esm-residual": write_hf_esm(root / "esm-residual", plant="residual"),
    }


@pytest.mark.parametrize("kind", ["bert", "esm"])
def test_healthy_encoder_passes(hf_models, small_fasta, tmp_path, kind):
    out = tmp_path / "out"
    result, text = run_cli("validate", "hf", "--model", hf_models[kind], "-s", small_fasta, "-o", out,
                           "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passing_policy"] == "fp16"
    assert report["model"]["target"] == "hf" and report["model"]["num_layers"] >= 2
    # Every residue is one token plus two special tokens per sequence: nothing became [UNK].
    lengths = [len(r.sequence) for r in read_fasta(small_fasta, "ACDEFGHIKLMNPQRSTVWYXBUZO").records]
    residues = sum(min(n, report["dataset"]["max_length"]) for n in lengths)
    assert report["attempts"][0]["timing"]["tokens"] == residues + 2 * 5


@pytest.mark.parametrize("kind", ["bert-residual", "esm-residual"])
def test_planted_residual_overflow_climbs_to_fp32_residual_adds(hf_models, small_fasta, tmp_path, kind):
    out = tmp_path / "out"
    result, text = run_cli("validate", "hf", "--model", hf_models[kind], "-s", small_fasta, "-o", out,
                           "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passing_policy"] == "fp16+res32"
    assert [a["passed"] for a in ladder(report)[1:]] == [False, False, False, True]
    pos32 = report["attempts"][3]["fp32_modules"]
    assert "attention softmax (every layer)" in pos32
    assert any(name.endswith("rotary_embeddings") for name in pos32) or "embeddings" in pos32
    assert any("(residual add)" in name for name in report["attempts"][4]["fp32_modules"])


def test_cls_pooling_and_no_fallback(hf_models, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = run_cli(
        "validate", "hf", "--model", hf_models["bert-residual"], "-s", small_fasta, "-o", out, "--pooling", "cls",
        "--no-fallback", "--device", "cpu",
    )
    assert result.exit_code == 1, text
    assert [a["policy"]["name"] for a in read_report(out)["attempts"]] == ["fp32", "fp16"]


def test_letters_outside_the_vocabulary_exit_2(hf_models, tmp_path):
    from fp16guard.testing import write_hf_bert

    narrow = write_hf_bert(tmp_path / "narrow")
    vocab = (narrow / "vocab.txt").read_text().replace("\nX\n", "\n").replace("\nB\n", "\n")
    (narrow / "vocab.txt").write_text(vocab)
    (narrow / "tokenizer.json").unlink()
    path = tmp_path / "x.fasta"
    path.write_text(">ok\nMKV\n>withx\nMKXV\n")
    result, text = run_cli("validate", "hf", "--model", narrow, "-s", path, "-o", tmp_path / "out")
    assert result.exit_code == 2, text
    assert "record 'withx' has 'X' at residue 3" in text


def test_missing_model_exits_3_without_network(tmp_path, small_fasta):
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    result, text = run_cli("validate", "hf", "--model", "someone/nothing-here", "--offline", "-s", small_fasta, env=env)
    assert result.exit_code == 3, text
    assert "not in the Hugging Face cache" in text and "offline" in text
    result, text = run_cli("validate", "hf", "--model", tmp_path / "missing-dir", "-s", small_fasta)
    assert result.exit_code == 3 and "no such directory" in text


def test_directory_without_weights_exits_3(hf_models, small_fasta, tmp_path):
    import shutil

    broken = tmp_path / "noweights"
    shutil.copytree(hf_models["bert"], broken)
    (broken / "model.safetensors").unlink()
    result, text = run_cli("validate", "hf", "--model", broken, "-s", small_fasta)
    assert result.exit_code == 3 and "no weights" in text


@pytest.mark.parametrize("damage", ["gzip", "pickled"])
def test_unreadable_pytorch_bin_never_suggests_weights_only_false(hf_models, small_fasta, tmp_path, damage):
    """transformers passes torch's advice (re-run with weights_only=False) through: not fp16guard."""
    import argparse
    import gzip
    import shutil

    import torch
    from safetensors.torch import load_file

    broken = tmp_path / "bin"
    shutil.copytree(hf_models["bert"], broken)
    state = load_file(broken / "model.safetensors")
    (broken / "model.safetensors").unlink()
    weights = broken / "pytorch_model.bin"
    if damage == "gzip":
        torch.save(state, weights)
        weights.write_bytes(gzip.compress(weights.read_bytes()))
    else:
        torch.save({**state, "parser": argparse.ArgumentParser}, weights)
    result, text = run_cli("validate", "hf", "--model", broken, "-s", small_fasta, "-o", tmp_path / "out")
    assert result.exit_code == 3, text
    flat = " ".join(text.split())
    assert "weights_only" not in flat and "safe_globals" not in flat
    assert ("is gzip-compressed: decompress it first" in flat) == (damage == "gzip")


def test_list_shows_targets_and_availability(tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "th"), "HF_HOME": str(tmp_path / "hf"), "COLUMNS": "250"}
    (tmp_path / "th" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "th" / "hub" / "checkpoints" / "esm2_t12_35M_UR50D.pt").write_bytes(b"x")
    result, text = run_cli("list", env=env)
    assert result.exit_code == 0, text
    rows = {line.split("│")[2].strip(): line for line in text.splitlines() if line.count("│") > 4}
    assert "yes" in rows["esm2_t12_35M_UR50D"] and " no " in rows["esm2_t6_8M_UR50D"]
    assert "antiberty" in rows
    assert "fp16+res32" in text


def test_list_shows_dnabert_with_hf_cache_availability(tmp_path):
    """DNABERT-S (the default of validate dnabert) and DNABERT-2 are listed, available only when
    a cached snapshot holds a config and weights; a cached DNABERT is not listed twice."""
    env = {"TORCH_HOME": str(tmp_path / "th"), "HF_HOME": str(tmp_path / "hf"), "COLUMNS": "250"}
    snapshot = tmp_path / "hf" / "hub" / "models--zhihan1996--DNABERT-S" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "pytorch_model.bin").write_bytes(b"x")
    partial = tmp_path / "hf" / "hub" / "models--zhihan1996--DNABERT-2-117M" / "snapshots" / "def456"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")  # no weights: not usable offline
    result, text = run_cli("list", env=env)
    assert result.exit_code == 0, text
    rows = [line for line in text.splitlines() if line.count("│") > 4]
    dnabert_s = [r for r in rows if "zhihan1996/DNABERT-S" in r]
    dnabert_2 = [r for r in rows if "zhihan1996/DNABERT-2-117M" in r]
    assert len(dnabert_s) == 1 and len(dnabert_2) == 1, text
    assert dnabert_s[0].split("│")[1].strip() == "dnabert" and dnabert_s[0].split("│")[3].strip() == "yes"
    assert dnabert_2[0].split("│")[3].strip() == "no"


antiberty_installed = pytest.mark.skipif(not PRESETS["antiberty"].available(), reason="pip install '.[antiberty]'")


@pytest.mark.slow
@antiberty_installed
def test_antiberty_real_trained_model_on_the_bundled_antibody_set(tmp_path):
    """The real 26M-parameter AntiBERTy, offline, on CPU: FP16 agrees with FP32. (FP16 matmuls
    are slow on CPUs without FP16 units, so this takes minutes, not seconds.)"""
    out = tmp_path / "out"
    result, text = run_cli("validate", "antiberty", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["model"]["name"] == "antiberty"
    assert 25_000_000 < report["model"]["parameters"] < 27_000_000
    assert report["dataset"]["source"] == "bundled:antibody_reference.fasta"
    assert report["dataset"]["sequences"] >= 50
    assert report["passing_policy"] == "fp16"
    for attempt in report["attempts"][1:]:
        assert attempt["passed"] and attempt["metrics"]["min_cosine"] > 0.999
        assert attempt["metrics"]["nan_count"] == 0
    # Real weights: FP16 is close to FP32 but not identical.
    assert report["attempts"][1]["metrics"]["max_abs_error"] > 0


@pytest.mark.parametrize("kind", ["esm", "bert"])
def test_residues_pooling_is_the_mean_over_residue_tokens_only(hf_models, tmp_path, kind):
    """--pooling residues averages the residues' hidden states, leaving out the tokenizer's
    special tokens (CLS/EOS, [CLS]/[SEP]); --pooling mean keeps them. Checked against the
    transformers model run directly, and through embed's file."""
    import h5py
    import torch
    from transformers import AutoModel, AutoTokenizer

    from fp16guard import Embedder

    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "MKVLAAGIVG"]
    tokenizer = AutoTokenizer.from_pretrained(hf_models[kind])
    model = AutoModel.from_pretrained(hf_models[kind]).eval()
    separator = " " if kind == "bert" else ""
    expected = {"residues": [], "mean": []}
    with torch.no_grad():
        for sequence in sequences:
            ids = tokenizer(separator.join(sequence), return_tensors="pt")["input_ids"]
            hidden = model(input_ids=ids).last_hidden_state[0]
            assert hidden.shape[0] == len(sequence) + 2
            expected["residues"].append(hidden[1:-1].mean(0))
            expected["mean"].append(hidden.mean(0))
    for pooling in ("residues", "mean"):
        embedder = Embedder.load("hf", model=str(hf_models[kind]), policy="fp32", device="cpu", pooling=pooling)
        torch.testing.assert_close(embedder.embed(sequences), torch.stack(expected[pooling]), rtol=1e-5, atol=1e-5)
    fasta = tmp_path / "two.fasta"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(sequences)))
    out = tmp_path / "e.h5"
    result, text = run_cli("embed", "hf", "--model", hf_models[kind], "-s", fasta, "-o", out, "--device", "cpu",
                           "--policy", "fp32", "--pooling", "residues", "--per-residue")
    assert result.exit_code == 0, text
    with h5py.File(out, "r") as handle:
        assert handle.attrs["pooling"] == "residues"
        pooled = torch.from_numpy(handle["embeddings"][:])
        offsets = handle["residue_offsets"][:].tolist()
        states = torch.from_numpy(handle["residues"][:])
    torch.testing.assert_close(pooled, torch.stack(expected["residues"]), rtol=1e-5, atol=1e-5)
    # --per-residue keeps the pooled positions: one state per residue, no special tokens.
    assert offsets == [0, len(sequences[0]), len(sequences[0]) + len(sequences[1])]
    torch.testing.assert_close(states[: offsets[1]].mean(0), expected["residues"][0], rtol=1e-5, atol=1e-5)
