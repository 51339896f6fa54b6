"""`fp16guard validate hf` on T5 encoders (ProtT5, Ankh layout): tiny directories written by
transformers' save_pretrained, encoder-only and full encoder-decoder, healthy and with a planted
`wo` overflow, loaded through the same path as a user's checkpoint."""

import json

import pytest
from cli_runner import ladder, read_report, run_cli

from fp16guard.io.sequences import read_fasta
from fp16guard.testing import write_hf_t5


@pytest.fixture(scope="module")
def t5_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5")
    return {
        "encoder": write_hf_t5(root / "encoder"),
        "full": write_hf_t5(root / "full", layout="full"),
        "wo": write_hf_t5(root / "wo", plant="wo"),
        "wo-full-gated": write_hf_t5(root / "wo-full-gated", plant="wo", layout="full", arch="t5_tiny_gated",
                                     spaced=False),
    }


@pytest.mark.parametrize("layout", ["encoder", "full"])
def test_healthy_t5_encoder_passes_in_both_layouts(t5_models, small_fasta, tmp_path, layout):
    out = tmp_path / "out"
    result, text = run_cli("validate", "hf", "--model", t5_models[layout], "-s", small_fasta, "-o", out,
                           "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passing_policy"] == "fp16"
    assert report["model"]["num_layers"] == 3
    # Both FP16 models users get are tested and told apart: .half() and from_pretrained's.
    fp16, keep32 = ladder(report)[1:3]
    assert (fp16["policy"]["name"], keep32["policy"]["name"]) == ("fp16", "fp16+keep32")
    assert fp16["passed"] and keep32["passed"]
    assert any("model.half()" in n for n in fp16["notes"]) and not fp16["fp32_modules"]
    assert any("from_pretrained(..., dtype=torch.float16)" in n for n in keep32["notes"])
    expected = [f"encoder.block.{i}.layer.1.DenseReluDense.wo" for i in range(3)]
    assert [m.split()[0] for m in keep32["fp32_modules"]] == expected
    decoder_notes = [n for n in report["notes"] if "decoder tensors are ignored" in n]
    assert bool(decoder_notes) == (layout == "full"), report["notes"]
    # One token per residue plus </s>: nothing became <unk>; U, Z, B became X (gamma has them).
    residues = sum(len(r.sequence) for r in read_fasta(small_fasta, "ABCDEFGHIJKLMNOPQRSTUVWXYZ").records)
    assert report["attempts"][0]["timing"]["tokens"] == residues + 5
    assert any("read as X" in n and "gamma" in n for n in report["notes"])


@pytest.mark.parametrize("kind", ["wo", "wo-full-gated"])
def test_planted_wo_overflow_fails_fp16_and_the_ladder_keeps_wo_in_fp32(t5_models, small_fasta, tmp_path, kind):
    out = tmp_path / "out"
    result, text = run_cli("validate", "hf", "--model", t5_models[kind], "-s", small_fasta, "-o", out,
                           "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    fp16, keep32 = ladder(report)[1:]
    assert not fp16["passed"] and fp16["metrics"]["min_cosine"] < 0.99
    # T5 clamps the Inf in FP16: the failure is drift, not NaN, and the report says why.
    assert fp16["metrics"]["nan_count"] == 0
    assert any("clamp" in n for n in fp16["notes"])
    assert keep32["passed"] and keep32["metrics"]["min_cosine"] > 0.9999
    assert report["passing_policy"] == "fp16+keep32"
    assert "encoder.block.1.layer.1.DenseReluDense.wo (_keep_in_fp32_modules, FP32 output)" in keep32["fp32_modules"]
    assert "fp16+keep32" in report["summary"]


def test_wo_overflow_search_names_the_blocks_mlp(t5_models, small_fasta, tmp_path):
    """--search finds the same rescue on its own, as an FP32 MLP island of the planted block."""
    out = tmp_path / "out"
    result, text = run_cli(
        "validate", "hf", "--model", t5_models["wo"], "-s", small_fasta, "-o", out, "--device", "cpu",
        "--policy", "fp16", "--search",
    )
    assert result.exit_code == 0, text
    report = read_report(out)
    searched = [a for a in report["attempts"] if a["policy"]["name"] == "fp16+islands32"]
    assert len(searched) == 1 and searched[0]["passed"]
    assert searched[0]["policy"]["fp32_parts"] == {"mlp": [2]} and searched[0]["policy"]["fp32_blocks"] == []
    assert searched[0]["fp32_modules"] == ["encoder.block.1.layer.1.DenseReluDense (MLP: wi .. wo, FP32 output)"]


def test_full_ladder_on_t5_runs_every_rung(t5_models, small_fasta, tmp_path):
    """Every rung builds and runs on a T5: layer norms are T5's RMS norms, the positional rung
    keeps the relative position bias and the softmax in FP32, the residual rung makes the stream
    FP32 (which cannot undo an FP16 wo output beyond 65504: NaN instead of T5's clamp)."""
    out = tmp_path / "out"
    result, text = run_cli(
        "validate", "hf", "--model", t5_models["wo"], "-s", small_fasta, "-o", out, "--device", "cpu", "--full-ladder"
    )
    assert result.exit_code == 0, text
    attempts = {a["policy"]["name"]: a for a in ladder(read_report(out))}
    assert list(attempts) == ["fp32", "fp16", "fp16+keep32", "fp16+ln32", "fp16+pos32", "fp16+res32"]
    assert "encoder.final_layer_norm" in attempts["fp16+ln32"]["fp32_modules"]
    pos32 = attempts["fp16+pos32"]["fp32_modules"]
    assert any(m.startswith("encoder.block.0.layer.0.SelfAttention.relative_attention_bias") for m in pos32)
    assert "attention scores, position bias and softmax (every layer)" in pos32
    assert any("residual stream" in m for m in attempts["fp16+res32"]["fp32_modules"])
    assert attempts["fp16+res32"]["metrics"]["nan_count"] > 0
    assert [attempts[n]["passed"] for n in attempts if n != "fp32"] == [False, True, False, False, False]


def test_rare_residues_and_lower_case_follow_the_tokenizer(t5_models, tmp_path):
    """U, Z, O, B go to X because this vocabulary has X and lacks them; lower case is read as
    upper case; the ids are the tokenizer's own for the spaced residues."""
    from fp16guard.core.config import ModelSource
    from fp16guard.models import get_target

    target = get_target("hf")
    loaded = target.load(ModelSource(model=str(t5_models["encoder"])))
    assert loaded.encoding.separator == " "
    assert loaded.max_length is None  # relative positions: no table to run past
    tokenizer = loaded.encoding.tokenizer
    tokens, mask, used = target.tokenize(loaded, ["MKUZOB", "MKXXXX"])
    assert tokens[0].tolist() == tokens[1].tolist() == tokenizer("M K X X X X")["input_ids"]
    assert tokens[0, -1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in tokens.tolist()[0]
    path = tmp_path / "lower.fasta"
    path.write_text(">upper\nMKVLAAGU\n>lower\nmkvlaagu\n")
    out = tmp_path / "out"
    result, text = run_cli("validate", "hf", "--model", t5_models["encoder"], "-s", path, "-o", out, "--device", "cpu",
                           "--no-fallback")
    assert result.exit_code == 0, text
    metrics = read_report(out)["attempts"][1]["metrics"]
    assert metrics["min_cosine"] > 0.999


def test_character_tokenizer_reads_residues_unspaced(t5_models):
    from fp16guard.core.config import ModelSource
    from fp16guard.models import get_target

    loaded = get_target("hf").load(ModelSource(model=str(t5_models["wo-full-gated"])))
    assert loaded.encoding.separator == ""
    assert loaded.read_as["U"] == "X"


def test_checkpoint_that_does_not_fit_names_missing_encoder_keys(t5_models, small_fasta, tmp_path):
    """An encoder checkpoint with blocks missing: the error names missing encoder parameters,
    not decoder ones, and exits 3."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(t5_models["encoder"], broken)
    state = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in state.items() if ".block.2." not in k}, broken / "model.safetensors",
              metadata={"format": "pt"})
    result, text = run_cli("validate", "hf", "--model", broken, "-s", small_fasta, "-o", tmp_path / "out")
    assert result.exit_code == 3, text
    flat = " ".join(text.split())
    assert "do not fit T5EncoderModel" in flat and "encoder parameter(s) that T5EncoderModel needs are missing" in flat
    assert "encoder.block.2." in flat and "decoder" not in flat
    assert "lack encoder parameters" not in flat


def test_encoder_decoder_other_than_t5_names_the_decoder_keys(t5_models, small_fasta, tmp_path):
    """A model type fp16guard has no encoder class for goes through AutoModel: an encoder-only
    checkpoint of an encoder-decoder is reported as missing decoder parameters."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(t5_models["encoder"], other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "mt5"
    config["architectures"] = ["MT5EncoderModel"]
    (other / "config.json").write_text(json.dumps(config))
    result, text = run_cli("validate", "hf", "--model", other, "-s", small_fasta, "-o", tmp_path / "out")
    assert result.exit_code == 3, text
    flat = " ".join(text.split())
    assert "decoder parameter(s) that MT5Model needs are missing" in flat
    assert "holds its encoder only" in flat


def test_list_recognises_prot_t5_and_ankh_in_the_hf_cache(tmp_path):
    env = {"TORCH_HOME": str(tmp_path / "th"), "HF_HOME": str(tmp_path / "hf"), "COLUMNS": "250"}
    for repo in ("models--Rostlab--prot_t5_xl_uniref50", "models--ElnaggarLab--ankh-base"):
        snapshot = tmp_path / "hf" / "hub" / repo / "snapshots" / "abc"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
        (snapshot / "model.safetensors").write_bytes(b"x")
    result, text = run_cli("list", env=env)
    assert result.exit_code == 0, text
    rows = {line.split("│")[2].strip(): line for line in text.splitlines() if line.count("│") > 4}
    assert "ProtT5" in rows["Rostlab/prot_t5_xl_uniref50"] and "T5 encoder" in rows["Rostlab/prot_t5_xl_uniref50"]
    assert "Ankh" in rows["ElnaggarLab/ankh-base"]


@pytest.fixture(scope="module")
def prot_t5_layout(tmp_path_factory):
    """ProtT5's own tokenizer files: spiece.model and tokenizer_config.json, no tokenizer.json."""
    pytest.importorskip("sentencepiece", reason="the t5 extra (sentencepiece, protobuf) writes and reads spiece.model")
    pytest.importorskip("google.protobuf",
                        reason="the t5 extra (sentencepiece, protobuf) writes and reads spiece.model")
    return write_hf_t5(tmp_path_factory.mktemp("prot_t5") / "prot_t5", plant="wo", tokenizer="sentencepiece")


def test_sentencepiece_tokenizer_as_prot_t5_ships_it(prot_t5_layout, small_fasta, tmp_path):
    """A directory with spiece.model as its only tokenizer file: residues are read spaced, one
    "▁A"-style piece each, U, Z, O and B as themselves (this vocabulary has them, J it lacks); the planted
    wo overflow fails fp16 and the ladder keeps wo in FP32."""
    from fp16guard.core.config import ModelSource
    from fp16guard.models import get_target

    assert not (prot_t5_layout / "tokenizer.json").exists() and (prot_t5_layout / "spiece.model").is_file()
    target = get_target("hf")
    loaded = target.load(ModelSource(model=str(prot_t5_layout)))
    assert loaded.encoding.separator == " " and loaded.read_as == {"J": "X"}  # the one it lacks
    tokenizer = loaded.encoding.tokenizer
    assert len(tokenizer) == 128 and type(tokenizer).__name__ == "T5Tokenizer"
    tokens, _, used = target.tokenize(loaded, ["MKUZOB"])
    assert tokenizer.convert_ids_to_tokens(tokens[0].tolist()) == ["▁M", "▁K", "▁U", "▁Z", "▁O", "▁B", "</s>"]
    out = tmp_path / "out"
    result, text = run_cli("validate", "hf", "--model", prot_t5_layout, "-s", small_fasta, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passing_policy"] == "fp16+keep32"
    residues = sum(len(r.sequence) for r in read_fasta(small_fasta, "ABCDEFGHIJKLMNOPQRSTUVWXYZ").records)
    assert report["attempts"][0]["timing"]["tokens"] == residues + 5  # nothing merged, nothing unknown


def test_sentencepiece_tokenizer_without_its_packages_says_what_to_install(prot_t5_layout, small_fasta, tmp_path,
                                                                           monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name,
                        *a: None if name == "sentencepiece" else real(name, *a))
    result, text = run_cli("validate", "hf", "--model", prot_t5_layout, "-s", small_fasta, "-o", tmp_path / "out",
                           "--device", "cpu")
    assert result.exit_code == 3, text
    flat = " ".join(text.split())
    assert "spiece.model" in flat and "sentencepiece package" in flat and "pip install 'fp16guard[t5]'" in flat
    assert "tiktoken" not in flat


def test_tokenizer_of_another_model_is_refused_by_name(t5_models, small_fasta, tmp_path):
    """Tokenizer files whose ids run past the model's embedding table: exit 3 with the id and
    the table's size, not an internal IndexError from the forward pass."""
    import shutil

    from safetensors.torch import load_file, save_file

    small = tmp_path / "small-vocab"
    shutil.copytree(t5_models["encoder"], small)
    state = load_file(small / "model.safetensors")
    state = {k: (v[:10].clone() if k in ("shared.weight",
                                         "encoder.embed_tokens.weight") else v) for k, v in state.items()}
    save_file(state, small / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] = 10
    (small / "config.json").write_text(json.dumps(config))
    result, text = run_cli("validate", "hf", "--model", small, "-s", small_fasta, "-o", tmp_path / "out",
                           "--device", "cpu")
    assert result.exit_code == 3, text
    flat = " ".join(text.split())
    assert "embedding table has 10 rows" in flat and "do not belong to these weights" in flat
    assert "internal error" not in flat


def test_half_precision_checkpoint_is_said_to_share_its_weight_rounding(t5_models, small_fasta, tmp_path):
    """A checkpoint stored in FP16 (ProtT5's half-precision encoder release): the FP32 reference
    runs those weights in FP32, and the report says the comparison is of compute only."""
    import shutil

    from transformers import T5EncoderModel

    half = tmp_path / "half"
    T5EncoderModel.from_pretrained(t5_models["encoder"]).half().save_pretrained(half)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(t5_models["encoder"] / name, half / name)
    out = tmp_path / "out"
    result, text = run_cli("validate", "hf", "--model", half, "-s", small_fasta, "-o", out, "--device", "cpu",
                           "--no-fallback")
    assert result.exit_code == 0, text
    assert any("stores its weights in float16" in n for n in read_report(out)["notes"])
    out = tmp_path / "out-fp32"
    result, text = run_cli("validate", "hf", "--model", t5_models["encoder"], "-s", small_fasta, "-o", out,
                           "--device", "cpu", "--no-fallback")
    assert not any("stores its weights" in n for n in read_report(out)["notes"])


def test_sentencepiece_vocabulary_with_word_start_residues_reads_them_spaced(tmp_path):
    """A SentencePiece vocabulary with "▁A" .. "▁Y" and bare letters too: unspaced text would
    tokenise without unknowns (first residue "▁M", then bare "K", "T"), but the word-start pieces
    say residues were fed as words (ProtT5's " ".join, Ankh's is_split_into_words), so they are
    read spaced: every residue a "▁" piece."""
    pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    from fp16guard.core.config import ModelSource
    from fp16guard.models import get_target

    directory = write_hf_t5(tmp_path / "both", tokenizer="sentencepiece+bare")
    target = get_target("hf")
    loaded = target.load(ModelSource(model=str(directory)))
    tokenizer = loaded.encoding.tokenizer
    assert tokenizer.convert_ids_to_tokens(tokenizer("MKT", add_special_tokens=False)["input_ids"]) == ["▁M", "K", "T"]
    assert loaded.encoding.separator == " "
    tokens, _, _ = target.tokenize(loaded, ["MKT"])
    assert tokenizer.convert_ids_to_tokens(tokens[0].tolist()) == ["▁M", "▁K", "▁T", "</s>"]


@pytest.mark.parametrize("islands_pay", [True, False])
def test_search_result_is_recommended_over_the_ladders_when_faster(t5_models, small_fasta, tmp_path, monkeypatch,
                                                                   islands_pay):
    """The ladder passes at fp16+keep32 (every wo in FP32) and --search finds one FP32 MLP: the
    searched policy's fast variant is recommended and saved when it beats both the ladder's
    policy and the ladder's fast variant. Timings are a GPU's business: here fused attention is
    made faster than eager, and then (``islands_pay``) fewer FP32 modules faster than more;
    without that, the ladder's fast variant stays recommended."""
    from fp16guard.workflows.validate import ladder as workflow

    def speed(attempt):
        return attempt.policy["fast_attention"], -len(attempt.fp32_modules) if islands_pay else 0

    def by_rule(attempt, base, device):
        faster = attempt.passed and speed(attempt) > speed(base)
        attempt.notes.append("faster than " + base.name if faster else "not recommended")
        return faster

    monkeypatch.setattr(workflow, "_recommendable", by_rule)
    out, saved = tmp_path / "out", tmp_path / "policy.json"
    result, text = run_cli("validate", "hf", "--model", t5_models["wo"], "-s", small_fasta, "-o", out,
                           "--device", "cpu",
                           "--search", "--save-policy", saved)
    assert result.exit_code == 0, text
    report = read_report(out)
    names = [a["policy"]["name"] for a in report["attempts"]]
    assert names == ["fp32", "fp16", "fp16+keep32", "fp16+islands32", "fp16+keep32+sdpa", "fp16+islands32+sdpa"]
    assert report["passing_policy"] == "fp16+keep32"
    if not islands_pay:
        assert report["recommended_policy"] == json.loads(saved.read_text())["policy"]["name"] == "fp16+keep32+sdpa"
        return
    assert report["recommended_policy"] == "fp16+islands32+sdpa"
    assert "Recommended: 'fp16+islands32+sdpa'" in report["summary"] and "faster than fp16+keep32" in report["summary"]
    document = json.loads(saved.read_text())
    assert document["policy"]["name"] == "fp16+islands32+sdpa" and document["policy"]["fp32_parts"] == {"mlp": [2]}
    assert document["policy"]["fast_attention"]
    recommended = report["attempts"][-1]
    assert recommended["passed"] and recommended["composition"]["passed"]


def test_residues_pooling_leaves_out_the_end_token(t5_models):
    """ProtT5's per-protein embedding is the mean over residues, </s> left out: --pooling residues."""
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    from fp16guard import Embedder

    sequences = ["MKTAYIAKQR", "MKVLAAG"]
    tokenizer = AutoTokenizer.from_pretrained(t5_models["encoder"])
    model = T5EncoderModel.from_pretrained(t5_models["encoder"]).eval()
    with torch.no_grad():
        expected = []
        for sequence in sequences:
            ids = tokenizer(" ".join(sequence), return_tensors="pt")["input_ids"]
            assert ids[0, -1] == tokenizer.eos_token_id and ids.shape[1] == len(sequence) + 1
            expected.append(model(input_ids=ids).last_hidden_state[0, :-1].mean(0))
    embedder = Embedder.load("hf", model=str(t5_models["encoder"]), policy="fp32", device="cpu", pooling="residues")
    torch.testing.assert_close(embedder.embed(sequences), torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_amino_acid_marker_goes_before_every_sequence(tmp_path, small_fasta):
    """A tokenizer with ProstT5's <AA2fold> token: it is put before every sequence as its own
    token, --pooling residues leaves it (and </s>) out of the mean, and the report says so."""
    import torch
    from transformers import T5EncoderModel

    from fp16guard import Embedder
    from fp16guard.core.config import ModelSource
    from fp16guard.models import get_target

    directory = write_hf_t5(tmp_path / "prost", added_tokens=("<AA2fold>", "<fold2AA>"))
    target = get_target("hf")
    loaded = target.load(ModelSource(model=str(directory), pooling="residues"))
    tokenizer = loaded.encoding.tokenizer
    tokens, mask, _ = target.tokenize(loaded, ["MKT", "MK"])
    assert tokenizer.convert_ids_to_tokens(tokens[0].tolist()) == ["<AA2fold>", "M", "K", "T", "</s>"]
    assert mask.tolist() == [[False, True, True, True, False], [False, True, True, False, False]]
    model = T5EncoderModel.from_pretrained(directory).eval()
    with torch.no_grad():
        ids = tokenizer("<AA2fold> M K T", return_tensors="pt")["input_ids"]
        expected = model(input_ids=ids).last_hidden_state[0, 1:-1].mean(0)
    embedder = Embedder.load("hf", model=str(directory), policy="fp32", device="cpu", pooling="residues")
    torch.testing.assert_close(embedder.embed(["MKT"])[0], expected, rtol=1e-5, atol=1e-5)
    out = tmp_path / "out"
    result, text = run_cli("validate", "hf", "--model", directory, "-s", small_fasta, "-o", out, "--device", "cpu",
                           "--no-fallback")
    assert result.exit_code == 0, text
    assert any("<AA2fold>" in note and "put before every sequence" in note for note in read_report(out)["notes"])
