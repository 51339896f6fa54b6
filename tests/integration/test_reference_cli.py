"""--save-reference, then --reference: the rerun skips the FP32 pass and reaches the same verdict
with the same cosines; a reference saved for other weights, sequences, layer, truncation or
library versions is refused, and so is a file that is not a reference."""

import json
import shutil

import numpy as np
import pytest
from cli_runner import read_report, run_cli
from conftest import SMALL_FASTA


def validate(*args):
    return run_cli("validate", "esm2", *args, "--device", "cpu")


@pytest.fixture(scope="module")
def saved(checkpoints, tmp_path_factory):
    """A full run on the planted residual overflow (the ladder climbs to fp16+res32) that saves
    its FP32 reference."""
    root = tmp_path_factory.mktemp("saved")
    fasta = root / "small.fasta"
    fasta.write_text(SMALL_FASTA)
    ref = root / "ref.npz"
    result, text = validate("--weights", checkpoints["residual"], "-s", fasta, "-o", root / "full",
                            "--save-reference", ref)
    assert result.exit_code == 0, text
    assert "fp32: building the model" in text
    return {"fasta": fasta, "ref": ref, "report": read_report(root / "full")}


def test_rerun_with_the_saved_reference_matches_the_full_run(checkpoints, saved, tmp_path):
    out = tmp_path / "rerun"
    result, text = validate("--weights", checkpoints["residual"], "-s", saved["fasta"], "-o", out,
                            "--reference", saved["ref"])
    assert result.exit_code == 0, text
    assert "fp32: building the model" not in text  # the FP32 pass did not run
    full, rerun = saved["report"], read_report(out)
    assert rerun["passing_policy"] == full["passing_policy"] == "fp16+res32"
    assert [a["policy"]["name"] for a in rerun["attempts"]] == [a["policy"]["name"] for a in full["attempts"]]
    for before, after in zip(full["attempts"][1:], rerun["attempts"][1:]):
        assert after["passed"] == before["passed"]
        assert after["metrics"]["cosines"] == before["metrics"]["cosines"]  # bit-identical on the same device
        assert after["metrics"]["nan_count"] == before["metrics"]["nan_count"]
        assert after["metrics"]["tokens"] is None and before["metrics"]["tokens"] is not None
        assert after["speedup_vs_fp32"] is not None  # same device: against the saved timing
    reference = rerun["attempts"][0]
    assert reference["role"] == "reference" and reference["source"] == str(saved["ref"])
    assert str(saved["ref"]) in reference["reason"]
    assert reference["timing"]["seconds"] == full["attempts"][0]["timing"]["seconds"]
    assert any("per-token metrics are skipped" in note for note in rerun["notes"])
    assert rerun["dataset"]["max_tokens"] == full["dataset"]["max_tokens"]
    assert "saved reference" in rerun["dataset"]["max_tokens_reason"]
    assert "saved ref" in (out / "report.md").read_text()


def _tampered(saved, tmp_path, **changes):
    """A copy of the saved reference whose metadata has ``changes``."""
    with np.load(saved["ref"], allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["metadata"][()]))
    meta.update(changes)
    arrays["metadata"] = np.array(json.dumps(meta))
    path = tmp_path / "tampered.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("weights", "weights (sha256)"),
        ("fasta", "sequences (dataset sha256)"),
        ("layer", "layer 3 there, 1 here"),
        ("max-length", "max length 1022 there, 20 here"),
        ("version", "torch 1.0.0 there"),
        ("target", "target 'hf' there, 'esm2' here"),
    ],
)
def test_a_reference_for_another_run_is_refused(checkpoints, saved, tmp_path, case, message):
    weights, fasta, ref, extra = checkpoints["residual"], saved["fasta"], saved["ref"], []
    if case == "weights":
        weights = checkpoints["healthy"]
    elif case == "fasta":
        fasta = tmp_path / "other.fasta"
        fasta.write_text(SMALL_FASTA.replace("MDEKRPLLWYCA", "MDEKRPLLWYCV"))
    elif case == "layer":
        extra = ["--layer", "1"]
    elif case == "max-length":
        extra = ["--max-length", "20"]
    elif case == "version":
        with np.load(ref, allow_pickle=False) as data:
            versions = json.loads(str(data["metadata"][()]))["versions"]
        ref = _tampered(saved, tmp_path, versions={**versions, "torch": "1.0.0"})
    elif case == "target":
        ref = _tampered(saved, tmp_path, target="hf")
    out = tmp_path / "out"
    result, text = validate("--weights", weights, "-s", fasta, "-o", out, "--reference", ref, *extra)
    assert result.exit_code == 2, text
    assert message in text and "--save-reference" in text
    assert "Traceback" not in text
    assert not (out / "report.json").exists()


def _pickled(path):
    np.savez(path, embeddings=np.zeros((5, 32), np.float32), ids=np.array(["a"] * 5, dtype=object),
             metadata=np.array("{}"))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("not a zip file\n"), "not a readable fp16guard reference file"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 64), "not a readable fp16guard reference file"),
        (lambda p: np.savez(p, embeddings=np.zeros((5, 32), np.float32)), "not a readable fp16guard reference file"),
        (_pickled, "not a readable fp16guard reference file"),
        (lambda p: None, "no such file"),
    ],
    ids=["text", "corrupt-zip", "no-metadata", "pickled-ids", "missing"],
)
def test_a_file_that_is_not_a_reference_is_a_clear_error(checkpoints, saved, tmp_path, make, message):
    ref = tmp_path / "ref.npz"
    make(ref)
    result, text = validate("--weights", checkpoints["residual"], "-s", saved["fasta"], "-o", tmp_path / "out",
                            "--reference", ref)
    assert result.exit_code == 2, text
    assert message in text and "Traceback" not in text


def test_a_truncated_reference_file_is_a_clear_error(checkpoints, saved, tmp_path):
    ref = tmp_path / "ref.npz"
    data = saved["ref"].read_bytes()
    ref.write_bytes(data[: len(data) // 2])
    result, text = validate("--weights", checkpoints["residual"], "-s", saved["fasta"], "-o", tmp_path / "out",
                            "--reference", ref)
    assert result.exit_code == 2, text
    assert "not a readable fp16guard reference file" in text and "Traceback" not in text


def test_reference_and_save_reference_together_is_a_usage_error(checkpoints, saved, tmp_path):
    copy = shutil.copy(saved["ref"], tmp_path / "copy.npz")
    result, text = validate(
        "--weights", checkpoints["residual"], "-s", saved["fasta"], "-o", tmp_path / "out", "--reference", saved["ref"],
        "--save-reference", copy,
    )
    assert result.exit_code == 2, text
    assert "either --reference or --save-reference" in text


def test_a_reference_from_another_device_is_used_without_speed_ups(checkpoints, saved, tmp_path):
    ref = _tampered(saved, tmp_path, device="cuda:0", device_name="NVIDIA H100 80GB HBM3")
    out = tmp_path / "out"
    result, text = validate("--weights", checkpoints["residual"], "-s", saved["fasta"], "-o", out, "--reference", ref)
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passing_policy"] == "fp16+res32"
    assert all(a["speedup_vs_fp32"] is None and a["memory_ratio_vs_fp32"] is None for a in report["attempts"][1:])
    assert any("NVIDIA H100 80GB HBM3 (cuda:0)" in note and "not reported" in note for note in report["notes"])
