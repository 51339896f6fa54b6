"""`fp16guard embed` end to end on tiny checkpoints in their real formats: the file's contents
(read with plain h5py), the policy's enforcement, spot checks, bad input, resuming."""

import gzip
import hashlib
import json
import random

import h5py
import numpy as np
import pytest
import torch
from cli_runner import run_cli

from fp16guard import Embedder, read_embeddings
from fp16guard.models.catalog import PRESETS
from fp16guard.testing import synthetic_dna, write_dnabert, write_hf_bert

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def fasta(path, count=25, seed=1, letters=RESIDUES, lengths=(5, 60)):
    rng = random.Random(seed)
    sequences = ("".join(rng.choices(letters, k=rng.randint(*lengths))) for _ in range(count))
    path.write_text("".join(f">p{i} some description\n{sequence}\n" for i, sequence in enumerate(sequences)))
    return path


def records(path):
    ids, seqs = [], []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            ids.append(line[1:].split()[0])
        else:
            seqs.append(line)
    return ids, seqs


def embed(target, *args):
    return run_cli("embed", target, "--device", "cpu", *args)


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def proteins(tmp_path):
    return fasta(tmp_path / "proteins.fasta")


def test_fp32_output_equals_the_embedder_and_plain_h5py_reads_it(checkpoints, proteins, tmp_path):
    out = tmp_path / "emb.h5"
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", out, "--chunk-size", "7")
    assert result.exit_code == 0, text
    assert "FP32" in result.stdout and "no --policy" in result.stdout
    assert not (tmp_path / "emb.h5.parts").exists()
    ids, seqs = records(proteins)
    expected = Embedder.load("esm2", weights=checkpoints["healthy"], device="cpu").embed(seqs).numpy()
    with h5py.File(out, "r") as handle:  # a reader from outside fp16guard
        assert [s.decode() for s in handle["ids"][:]] == ids
        assert handle["embeddings"].dtype == np.float32 and handle["embeddings"].shape == (25, 32)
        np.testing.assert_allclose(handle["embeddings"][:], expected, rtol=1e-5, atol=1e-6)
        assert handle.attrs["weights_sha256"] == json.loads(json.dumps(str(handle.attrs["weights_sha256"])))
        assert json.loads(handle.attrs["policy"])["name"] == "fp32"
        assert json.loads(handle.attrs["layers"]) == [3]
        assert "created" not in handle.attrs
    back = read_embeddings(out)
    assert back.ids == ids and back.metadata["pooling"] == "mean" and back.metadata["target"] == "esm2"
    assert back.metadata["torch"] == torch.__version__ and back.metadata["fp16guard"]


def test_layers_and_per_residue(checkpoints, proteins, tmp_path):
    out = tmp_path / "emb.h5"
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", out, "--layers", "3,1",
                         "--per-residue",
                         "--chunk-size", "10")
    assert result.exit_code == 0, text
    ids, seqs = records(proteins)
    embedder = Embedder.load("esm2", weights=checkpoints["healthy"], device="cpu", layer=1)
    with h5py.File(out, "r") as handle:
        assert {"embeddings", "layer_3", "layer_1", "residues", "residues_layer_3", "residues_layer_1",
                "residue_offsets"} <= set(handle)
        np.testing.assert_array_equal(handle["embeddings"][:], handle["layer_3"][:])
        np.testing.assert_allclose(handle["layer_1"][:], embedder.embed(seqs).numpy(), rtol=1e-5, atol=1e-6)
        offsets = handle["residue_offsets"][:]
        assert offsets[0] == 0 and list(np.diff(offsets)) == [len(s) for s in seqs]
        # The mean of a sequence's per-residue states is its pooled embedding.
        for i in (0, 7, 24):
            rows = handle["residues_layer_1"][offsets[i] : offsets[i + 1]]
            np.testing.assert_allclose(rows.mean(0), handle["layer_1"][i], rtol=1e-4, atol=1e-5)


def test_gzip_input_gives_the_same_file(checkpoints, proteins, tmp_path):
    packed = tmp_path / "proteins.fa.gz"
    packed.write_bytes(gzip.compress(proteins.read_bytes()))
    plain, zipped = tmp_path / "a.h5", tmp_path / "b.h5"
    assert embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", plain)[0].exit_code == 0
    assert embed("esm2", "-w", checkpoints["healthy"], "-s", packed, "-o", zipped)[0].exit_code == 0
    a, b = read_embeddings(plain), read_embeddings(zipped)
    assert a.ids == b.ids and np.array_equal(a.embeddings, b.embeddings)


def _saved_policy(checkpoint, fasta_path, tmp_path, **override):
    policy = tmp_path / "policy.json"
    result, text = run_cli("validate", "esm2", "--weights", checkpoint, "-s", fasta_path, "-o", tmp_path / "report",
                           "--device", "cpu", "--save-policy", policy)
    assert result.exit_code == 0, text
    if override:
        document = json.loads(policy.read_text())
        document["validated"].update(override)
        policy.write_text(json.dumps(document))
    return policy


def test_validate_then_embed_with_spot_checks(checkpoints, proteins, tmp_path):
    policy = _saved_policy(checkpoints["healthy"], proteins, tmp_path)
    out = tmp_path / "emb.h5"
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", out, "--policy", policy,
                         "--spot-check-every", "10", "--chunk-size", "8")
    assert result.exit_code == 0, text
    meta = read_embeddings(out).metadata
    assert meta["policy"]["dtype"] == "float16"
    # Positions 0, 1, 2 (the first three), 10 and 20.
    assert meta["spot_checks"]["count"] == 5 and meta["spot_checks"]["min_cosine"] > 0.999
    assert "spot checks against FP32: 5 sequence(s)" in result.stdout


def test_policy_for_other_weights_is_refused_naming_both_checksums(checkpoints, proteins, tmp_path):
    policy = _saved_policy(checkpoints["healthy"], proteins, tmp_path)
    out = tmp_path / "emb.h5"
    result, text = embed("esm2", "-w", checkpoints["residual"], "-s", proteins, "-o", out, "--policy", policy)
    assert result.exit_code == 2
    validated = json.loads(policy.read_text())["validated"]["weights_sha256"]
    error = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and validated in error[0] and sha(checkpoints["residual"]) in error[0]
    assert "Traceback" not in text and not out.exists() and not (tmp_path / "emb.h5.parts").exists()
    forced, text = embed("esm2", "-w", checkpoints["residual"], "-s", proteins, "-o", out, "--policy", policy,
                         "--force")
    assert forced.exit_code in (0, 1), text  # forced: it runs, and the spot checks judge it


def test_builtin_policy_needs_force(checkpoints, proteins, tmp_path):
    out = tmp_path / "emb.h5"
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", out, "--policy", "fp16")
    assert result.exit_code == 2 and "validate first" in text and "--save-policy" in text
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", out, "--policy", "fp16", "--force")
    assert result.exit_code == 0, text
    assert "NOT validated" in result.stdout


def test_planted_fp16_failure_ends_the_run_with_exit_1_keeping_the_shards(checkpoints, proteins, tmp_path):
    out = tmp_path / "emb.h5"
    result, text = embed("esm2", "-w", checkpoints["mlp"], "-s", proteins, "-o", out, "--policy", "fp16", "--force",
                         "--chunk-size", "5")
    assert result.exit_code == 1, text
    assert "NaN/Inf" in text and "Traceback" not in text
    assert not out.exists() and (tmp_path / "emb.h5.parts" / "manifest.json").is_file()


def test_spot_check_below_the_threshold_ends_the_run(checkpoints, proteins, tmp_path):
    policy = _saved_policy(checkpoints["healthy"], proteins, tmp_path, threshold=1.5)  # no cosine reaches it
    out = tmp_path / "emb.h5"
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", out, "--policy", policy)
    assert result.exit_code == 1
    assert "spot check failed: sequence 'p" in text and "threshold 1.5" in text and not out.exists()


@pytest.mark.parametrize("content, needle", [
    (">a\nMKV1Q\n", "'1'"),
    (">a\nMKV\n>a\nMKQ\n", "duplicate id"),
    ("", "empty"),
    ("MKV\n", "before the first"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(checkpoints, tmp_path, content, needle):
    bad = tmp_path / "bad.fasta"
    bad.write_text(content)
    out = tmp_path / "emb.h5"
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", bad, "-o", out)
    assert result.exit_code == 2, text
    assert needle in text and "Traceback" not in text
    assert [line for line in text.splitlines() if line.startswith("error:")] and not out.exists()
    assert not (tmp_path / "emb.h5.parts").exists()


def test_foreign_outputs_are_refused(checkpoints, proteins, tmp_path):
    out = tmp_path / "emb.h5"
    out.write_text("someone else's file")
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", out)
    assert result.exit_code == 2 and "not an embeddings file" in text and out.read_text() == "someone else's file"
    out.unlink()
    (tmp_path / "emb.h5.parts").mkdir()
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", out)
    assert result.exit_code == 2 and "manifest" in text


def test_parts_of_a_run_with_other_arguments_are_refused(checkpoints, proteins, tmp_path):
    out = tmp_path / "emb.h5"
    args = ("esm2", "-w", checkpoints["mlp"], "-s", proteins, "-o", out, "--policy", "fp16",
            "--force", "--chunk-size", "5")
    assert embed(*args)[0].exit_code == 1  # leaves OUT.parts
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", out)
    assert result.exit_code == 2 and "other arguments" in text and "weights_sha256" in text and "policy" in text


class _Stop(Exception):
    pass


def _stopped_run(checkpoint, proteins, out, shards, **options):
    """A run of the library's embed stopped after ``shards`` shards' worth of batches (the
    shards already handed to the writer are written, as after a kill)."""
    from fp16guard.core.config import ModelSource
    from fp16guard.core.progress import Progress
    from fp16guard.workflows.embed import EmbedConfig
    from fp16guard.workflows.embed import embed as run

    class StopAfter(Progress):
        calls = 0

        def advance(self, tokens):
            self.calls += 1
            if self.calls > shards:  # one batch per shard at these sizes
                raise _Stop

    config = EmbedConfig(sequences=proteins, out=out, device="cpu", **options)
    with pytest.raises(_Stop):
        run("esm2", ModelSource(weights=checkpoint), config, StopAfter())


def test_resume_skips_complete_shards_and_redoes_a_corrupt_last_one(checkpoints, proteins, tmp_path):
    whole, resumed = tmp_path / "whole.h5", tmp_path / "resumed.h5"
    common = ("-w", checkpoints["healthy"], "-s", proteins, "--chunk-size", "2",
              "--per-residue", "--max-tokens", "1000")
    assert embed("esm2", *common, "-o", whole)[0].exit_code == 0
    _stopped_run(checkpoints["healthy"], proteins, resumed, 4, chunk_size=2, per_residue=True, max_tokens=1000)
    parts = tmp_path / "resumed.h5.parts"
    shards = sorted(parts.glob("shard-*.h5"))
    assert len(shards) == 4 and not resumed.exists()
    shards[-1].write_bytes(shards[-1].read_bytes()[:100])  # the last shard damaged
    result, text = embed("esm2", *common, "-o", resumed)
    assert result.exit_code == 0, text
    assert "3 of 13 shard(s) resumed" in result.stdout
    assert resumed.read_bytes() == whole.read_bytes() and not parts.exists()


def test_a_corrupt_shard_before_the_last_is_refused(checkpoints, proteins, tmp_path):
    out = tmp_path / "emb.h5"
    _stopped_run(checkpoints["healthy"], proteins, out, 4, chunk_size=2, max_tokens=1000)
    shards = sorted((tmp_path / "emb.h5.parts").glob("shard-*.h5"))
    shards[1].write_bytes(b"garbage")
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", out, "--chunk-size", "2",
                         "--max-tokens", "1000")
    assert result.exit_code == 2 and "corrupt" in text and shards[1].name in text


def test_a_failing_writer_thread_ends_the_run_with_its_error(checkpoints, proteins, tmp_path, monkeypatch):
    from fp16guard.errors import OutputError
    from fp16guard.workflows.embed import shards

    def broken(path, part, layers, per_residue):
        raise OutputError(f"cannot write shard {path}: disk full")

    monkeypatch.setattr(shards, "write_shard", broken)
    result, text = embed("esm2", "-w", checkpoints["healthy"], "-s", proteins, "-o", tmp_path / "emb.h5",
                         "--chunk-size", "3")
    assert result.exit_code == 3 and "disk full" in text and "Traceback" not in text


def test_library_reader_and_errors(tmp_path):
    from fp16guard.errors import InputError

    bogus = tmp_path / "x.h5"
    bogus.write_bytes(b"nope")
    with pytest.raises(InputError):
        read_embeddings(bogus)


def test_hf_encoder_fp32_equals_the_embedder(tmp_path, proteins):
    model = write_hf_bert(tmp_path / "bert")
    out = tmp_path / "emb.h5"
    result, text = embed("hf", "--model", model, "-s", proteins, "-o", out, "--per-residue")
    assert result.exit_code == 0, text
    _, seqs = records(proteins)
    expected = Embedder.load("hf", model=str(model), device="cpu").embed(seqs).numpy()
    np.testing.assert_allclose(read_embeddings(out).embeddings, expected, rtol=1e-5, atol=1e-6)
    result, text = embed("hf", "--model", model, "-s", proteins, "-o", out, "--per-residue", "--pooling", "cls")
    assert result.exit_code == 2 and "--pooling mean" in text


def test_dnabert_fp16_with_spot_checks(tmp_path):
    model = write_dnabert(tmp_path / "dnabert")
    dna = tmp_path / "dna.fasta"
    dna.write_text("".join(f">d{i}\n{s}\n" for i, s in enumerate(synthetic_dna(12, 80, seed=3))))
    out = tmp_path / "emb.h5"
    result, text = embed("dnabert", "--model", model, "-s", dna, "-o", out, "--policy", "fp16", "--force",
                         "--spot-check-every", "2")
    assert result.exit_code == 0, text
    meta = read_embeddings(out).metadata
    assert meta["target"] == "dnabert"
    assert meta["spot_checks"]["count"] == 7 and meta["spot_checks"]["min_cosine"] > 0.99


@pytest.mark.skipif(not PRESETS["antiberty"].available(), reason="pip install '.[antiberty]'")
def test_antiberty(tmp_path):
    chains = tmp_path / "ab.fasta"
    chains.write_text(">h\nEVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVS\n>l\nDIQMTQSPSSLSASVGDRVTITCRASQSISSYLN\n")
    out = tmp_path / "emb.h5"
    result, text = embed("antiberty", "-s", chains, "-o", out, "--policy", "fp16", "--force")
    assert result.exit_code == 0, text
    back = read_embeddings(out)
    assert back.ids == ["h", "l"] and back.embeddings.shape == (2, 512)
    assert back.metadata["spot_checks"]["min_cosine"] > 0.999
