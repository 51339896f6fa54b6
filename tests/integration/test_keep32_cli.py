"""`fp16guard validate/embed --policy fp16+keep32` on models that declare no
_keep_in_fp32_modules (fair-esm ESM-2, the native DNABERT, BERT): it runs as fp16 and says so."""

from __future__ import annotations

from cli_runner import read_report, run_cli

from fp16guard.testing import write_dnabert, write_hf_bert

SAME = "'fp16+keep32' keeps nothing extra in FP32 and is the same as fp16 for this model"


def test_esm2_runs_keep32_as_fp16_and_the_report_says_so(checkpoints, small_fasta, tmp_path):
    runs = {}
    for policy in ("fp16", "fp16+keep32"):
        out = tmp_path / policy
        result, text = run_cli("validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta,
                               "--device", "cpu",
                               "-o", out, "--policy", policy)
        assert result.exit_code == 0, text
        runs[policy] = read_report(out)["attempts"][1]
    keep32, fp16 = runs["fp16+keep32"], runs["fp16"]
    assert any(f"ESM2 declares no _keep_in_fp32_modules: {SAME}" == note for note in keep32["notes"]), keep32["notes"]
    assert not any("_keep_in_fp32_modules" in note for note in fp16["notes"])
    assert keep32["metrics"]["cosines"] == fp16["metrics"]["cosines"]  # the same model, the same numbers
    assert keep32["fp32_modules"] == fp16["fp32_modules"] == []
    assert SAME in (tmp_path / "fp16+keep32" / "report.md").read_text()


def test_native_dnabert_says_keep32_is_fp16(tmp_path):
    fasta = tmp_path / "dna.fasta"
    fasta.write_text(">a\nACGTACGTTTGACNNNNACGTAGCTAGCTAGGGCGCGCATATATATTAGCG\n>b\nACGTTGCAAT\n>c\nGGGGCCCCATATATTTTAAAACACA\n")
    out = tmp_path / "out"
    result, text = run_cli("validate", "dnabert", "--model", write_dnabert(tmp_path / "dnabert"), "-s", fasta,
                           "-o", out,
                           "--device", "cpu", "--policy", "fp16+keep32")
    assert result.exit_code == 0, text
    assert any(SAME in note for note in read_report(out)["attempts"][1]["notes"])


def test_embed_esm2_says_keep32_is_fp16(checkpoints, small_fasta, tmp_path):
    result, text = run_cli("embed", "esm2", "--device", "cpu", "-w", checkpoints["healthy"], "-s", small_fasta,
                           "-o", tmp_path / "emb.h5", "--policy", "fp16+keep32", "--force")
    assert result.exit_code == 0, text
    assert SAME in " ".join(result.stdout.split())  # on the summary's precision line (wrapping aside)


def test_hf_bert_says_keep32_is_fp16(small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = run_cli("validate", "hf", "--model", write_hf_bert(tmp_path / "bert"), "-s", small_fasta, "-o", out,
                           "--device", "cpu", "--policy", "fp16+keep32")
    assert result.exit_code == 0, text
    assert any(note.endswith(SAME) for note in read_report(out)["attempts"][1]["notes"])
