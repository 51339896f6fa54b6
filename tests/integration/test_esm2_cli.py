"""`fp16guard validate esm2` end to end on tiny fair-esm checkpoints written in the real format.

Nothing is mocked: the checkpoints load through the same code path as a released one, and
the planted failures are genuine FP16 overflows.
"""

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from cli_runner import ladder, read_report, run_cli

from fp16guard.core.formatting import format_cosine


def validate(*args, env=None):
    return run_cli("validate", "esm2", *args, env=env)


def test_healthy_model_passes_in_full_fp16(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = validate("--weights", checkpoints["healthy"], "--sequences", small_fasta, "--out", out,
                            "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passed"] and report["passing_policy"] == "fp16"
    assert [a["policy"]["name"] for a in ladder(report)] == ["fp32", "fp16"]
    fp16 = report["attempts"][1]
    assert fp16["metrics"]["min_cosine"] > 0.999
    assert fp16["metrics"]["tokens"]["sequences"] == 5
    assert len(fp16["metrics"]["cosines"]) == 5
    assert report["model"]["parameters"] > 0 and len(report["model"]["weights_sha256"]) == 64
    assert report["dataset"]["sequences"] == 5 and len(report["dataset"]["sha256"]) == 64
    assert {"torch", "cuda", "device_name"} <= set(report["environment"])
    assert (out / "report.md").is_file() and (out / "junit.xml").is_file()
    assert "fp16" in text and "PASS" in text


def test_a_cpu_run_with_a_cuda_build_of_torch_claims_no_cuda(checkpoints, small_fasta, tmp_path, monkeypatch):
    """A CUDA build of torch on a machine without a GPU: the device line must not say CUDA 13.0."""
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    out = tmp_path / "out"
    result, text = validate("--weights", checkpoints["healthy"], "-s", small_fasta, "-o", out, "--device", "cpu",
                            "--policy", "fp16")
    assert result.exit_code == 0, text
    environment = read_report(out)["environment"]
    assert environment["cuda"] is None and environment["torch_cuda_build"] == "13.0"
    assert "CUDA 13.0" not in (out / "report.md").read_text() and "CUDA 13.0" not in text


def test_planted_residual_overflow_is_fixed_by_the_fp32_residual_rung(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = validate("--weights", checkpoints["residual"], "--sequences", small_fasta, "--out", out,
                            "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passing_policy"] == "fp16+res32"
    assert "fp16+res32" in text
    names = [a["policy"]["name"] for a in ladder(report)]
    assert names == ["fp32", "fp16", "fp16+ln32", "fp16+pos32", "fp16+res32"]
    for failed in report["attempts"][1:4]:
        assert failed["passed"] is False and failed["metrics"]["nan_count"] > 0
    rescued = report["attempts"][4]
    assert rescued["passed"] and rescued["metrics"]["min_cosine"] > 0.999
    # The report names what each rung kept in FP32.
    counts = [a["fp32_modules"] for a in ladder(report)[1:]]
    assert counts[0] == [] and len(counts[1]) < len(counts[2]) < len(counts[3])
    assert "layers.0.self_attn_layer_norm" in counts[1]
    assert "layers.0.self_attn.rot_emb" in counts[2]


def test_unfixable_failure_exits_1_and_still_writes_the_report(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = validate("--weights", checkpoints["mlp"], "--sequences", small_fasta, "--out", out,
                            "--device", "cpu")
    assert result.exit_code == 1, text
    report = read_report(out)
    assert not report["passed"] and report["passing_policy"] is None
    assert len(report["attempts"]) == 5
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "4"
    assert "FAIL" in (out / "report.md").read_text()


def test_nan_in_some_sequences_makes_min_cosine_null_and_they_come_first(small_fasta, tmp_path):
    """Issue 12: NaN in some sequences only (like a model whose every sequence with leucine is
    NaN) showed the min cosine of the finite ones, a pass to a script gating on it."""
    import torch

    from fp16guard.testing import build_model, save_checkpoint

    model = build_model()
    with torch.no_grad():  # beyond FP16: Inf in every sequence with a W, fine in FP32
        model.embed_tokens.weight[model.alphabet.get_idx("W"), 0] = 1e5
    weights = save_checkpoint(model, tmp_path / "w_overflow.pt")
    out = tmp_path / "out"
    result, text = validate("--weights", weights, "-s", small_fasta, "-o", out, "--device", "cpu", "--no-fallback")
    assert result.exit_code == 1, text
    metrics = read_report(out)["attempts"][1]["metrics"]
    with_w = ["alpha", "gamma", "epsilon"]
    assert metrics["nonfinite_sequences"] == 3 and metrics["sequences"] == 5
    assert metrics["min_cosine"] is None and metrics["mean_cosine"] is None
    assert [i for i, c in metrics["worst"][:3]] == with_w and all(c is None for _, c in metrics["worst"][:3])
    assert [c["id"] for c in metrics["cosines"] if c["cosine"] is None] == with_w
    assert all(c["cosine"] > 0.99 for c in metrics["cosines"] if c["id"] not in with_w)
    # The table says NaN, not the finite sequences' minimum.
    row = next(line for line in result.stdout.splitlines() if line.startswith("│ fp16 "))
    assert row.split("│")[2].strip() == "NaN", row
    assert "- Pooled: min NaN, mean NaN" in (out / "report.md").read_text()


def test_the_result_goes_to_stdout_and_progress_to_stderr(checkpoints, small_fasta, tmp_path):
    """Issue 12: `fp16guard validate ... > log.txt` captured nothing."""
    out = tmp_path / "out"
    result, text = validate("--weights", checkpoints["healthy"], "-s", small_fasta, "-o", out, "--device", "cpu",
                            "--no-fallback")
    assert result.exit_code == 0, text
    stdout, stderr = result.stdout, result.stderr
    summary = read_report(out)["summary"]
    assert summary in stdout and summary not in stderr
    assert "│ fp16 " in stdout and "│ fp16 " not in stderr  # the table
    assert f"report: {out / 'report.json'}" in stdout
    assert "fp32: building the model" in stderr and "building the model" not in stdout  # stage messages


def test_no_fallback_and_single_policy(checkpoints, small_fasta, tmp_path):
    result, _ = validate("--weights", checkpoints["residual"], "-s", small_fasta, "-o", tmp_path / "a",
                         "--no-fallback", "--device", "cpu")
    assert result.exit_code == 1
    assert [a["policy"]["name"] for a in ladder(read_report(tmp_path / "a"))] == ["fp32", "fp16"]
    result, _ = validate("--weights", checkpoints["residual"], "-s", small_fasta, "-o", tmp_path / "b",
                         "--policy", "fp16+res32", "--device", "cpu")
    assert result.exit_code == 0
    assert [a["policy"]["name"] for a in read_report(tmp_path / "b")["attempts"]] == ["fp32", "fp16+res32"]


def test_careful_timing_re_times_every_batch_and_a_cpu_run_times_its_first_pass_only(checkpoints, small_fasta,
                                                                                     tmp_path):
    timings = {}
    for flag in ([], ["--careful-timing"]):
        out = tmp_path / ("careful" if flag else "default")
        result, text = run_cli("validate", "esm2", "--weights", checkpoints["healthy"], "-s", small_fasta, "-o", out,
                               "--device", "cpu", "--no-fallback", *flag)
        assert result.exit_code == 0, text
        timings[bool(flag)] = [a["timing"] for a in read_report(out)["attempts"]]
    # On a CPU nothing is re-timed by default: the figure is the first pass, and says so.
    assert all(t["passes"] == 0 and t["seconds"] == t["first_pass_seconds"] for t in timings[False])
    # --careful-timing: every batch re-timed at least three times (at most MAX_REPEATS), the
    # median kept, beside the first pass.
    assert all(3 <= t["passes"] <= 5 and t["steady_fraction"] == 1.0 for t in timings[True])
    assert all(t["first_pass_seconds"] > 0 for t in timings[True])
    assert all(t["spread"] is not None and t["first_pass_tokens_per_second"] > 0 for t in timings[True])


def test_full_ladder_runs_every_rung_after_a_pass(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = validate("--weights", checkpoints["healthy"], "-s", small_fasta, "-o", out,
                            "--full-ladder", "--device", "cpu")
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["passing_policy"] == "fp16"
    assert [a["passed"] for a in ladder(report)] == [None, True, True, True, True]


def test_layer_and_truncation_options(checkpoints, small_fasta, tmp_path):
    out = tmp_path / "out"
    result, text = validate(
        "--weights", checkpoints["healthy"], "-s", small_fasta, "-o", out, "--layer", "1", "--max-length", "20",
        "--max-tokens", "64", "--device", "cpu",
    )
    assert result.exit_code == 0, text
    report = read_report(out)
    assert report["model"]["layer"] == 1
    assert sorted(report["dataset"]["truncated"]) == ["alpha", "delta", "gamma"]
    assert "3 sequence(s) longer than 20 tokens were truncated: alpha, gamma, delta" in " ".join(text.split())
    assert report["dataset"]["batches"] > 1


@pytest.mark.parametrize(
    "fasta, message",
    [
        ("", "empty"),
        (">a\nMKV\n>a\nMKV\n", "duplicate id 'a'"),
        (">a\n\n>b\nMKV\n", "record 'a' has an empty"),
        (">a\nMKV\n>b\nMKJV\n", "record 'b' has 'J' at column 3"),
        ("MKV\n", "before the first '>'"),
    ],
)
def test_bad_fasta_exits_2_with_one_clear_line(checkpoints, tmp_path, fasta, message):
    path = tmp_path / "bad.fasta"
    path.write_text(fasta)
    result, text = validate("--weights", checkpoints["healthy"], "-s", path, "-o", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 2, text
    assert message in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-cosine", "1.5"], "--min-cosine"),
        (["--policy", "fp8"], "unknown policy"),
        (["--layer", "99"], "--layer"),
        (["--max-length", "5000"], "--max-length"),
        (["--policy", "fp16", "--no-fallback"], "either --policy or --no-fallback"),
        (["--device", "tpu"], "tpu"),
    ],
)
def test_bad_options_exit_2(checkpoints, small_fasta, tmp_path, args, message):
    result, text = validate("--weights", checkpoints["healthy"], "-s", small_fasta, "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, text
    assert message in text


def test_missing_weights_exit_3(small_fasta, tmp_path):
    result, text = validate("--weights", tmp_path / "nope.pt", "-s", small_fasta, "-o", tmp_path / "out")
    assert result.exit_code == 3 and "no such file" in text
    env = {"TORCH_HOME": str(tmp_path / "torch-home")}
    result, text = validate("--model", "esm2_t6_8M_UR50D", "--offline", "-s", small_fasta, "-o", tmp_path / "out",
                            env=env)
    assert result.exit_code == 3, text
    expected = os.path.join(tmp_path, "torch-home", "hub", "checkpoints", "esm2_t6_8M_UR50D.pt")
    assert expected in text.replace("\n", "") and "--weights" in text
    assert not (tmp_path / "out").exists()


def test_named_checkpoint_loads_offline_from_the_torch_hub_cache(checkpoints, small_fasta, tmp_path):
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    shutil.copy(checkpoints["healthy"], cache / "esm2_t6_8M_UR50D.pt")
    env = {"TORCH_HOME": str(tmp_path / "torch-home")}
    out = tmp_path / "out"
    result, text = validate("--model", "esm2_t6_8M_UR50D", "--offline", "-s", small_fasta, "-o", out, "--device", "cpu",
                            env=env)
    assert result.exit_code == 0, text
    assert read_report(out)["model"]["name"] == "esm2_t6_8M_UR50D"


def test_unknown_checkpoint_name_is_a_usage_error(small_fasta, tmp_path):
    result, text = validate("--model", "esm3_huge", "-s", small_fasta, "-o", tmp_path / "out", "--offline")
    assert result.exit_code == 2 and "esm2_t33_650M_UR50D" in text


def test_checkpoint_that_needs_pickled_code_is_refused(small_fasta, tmp_path):
    import torch

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": {"model": PickledThing()}}, path)
    result, text = validate("--weights", path, "-s", small_fasta, "-o", tmp_path / "out")
    assert result.exit_code == 3, text
    assert "weights-only" in text
    assert "weights_only" not in text and "safe_globals" not in text  # never advise loading unsafely


def test_weights_that_is_a_directory_says_so(small_fasta, tmp_path):
    result, text = validate("--weights", tmp_path, "-s", small_fasta, "-o", tmp_path / "out")
    assert result.exit_code == 3, text
    flat = " ".join(text.split())
    assert "is a directory" in flat and ".pt" in flat and "no such file" not in flat


def test_gzip_checkpoint_says_decompress_never_weights_only(checkpoints, small_fasta, tmp_path):
    import gzip

    path = tmp_path / "tiny.pt.gz"
    path.write_bytes(gzip.compress(checkpoints["healthy"].read_bytes()))
    result, text = validate("--weights", path, "-s", small_fasta, "-o", tmp_path / "out")
    assert result.exit_code == 3, text
    flat = " ".join(text.split())
    assert "is gzip-compressed: decompress it first" in flat
    assert "weights_only" not in flat


def test_not_an_esm2_checkpoint(small_fasta, tmp_path):
    import torch

    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    result, text = validate("--weights", path, "-s", small_fasta, "-o", tmp_path / "out")
    assert result.exit_code == 3 and "not a fair-esm ESM-2 checkpoint" in text


def test_non_finite_fp32_reference_is_an_error_not_a_pass(small_fasta, tmp_path):
    import torch

    from fp16guard.testing import build_model, save_checkpoint

    model = build_model()
    with torch.no_grad():
        model.layers[0].fc2.bias[0] = float("nan")
    path = save_checkpoint(model, tmp_path / "broken.pt")
    result, text = validate("--weights", path, "-s", small_fasta, "-o", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 3, text
    assert "FP32 reference has NaN/Inf" in text
    assert not (tmp_path / "out" / "report.json").exists()


class PickledThing:
    """A class that unpickling would have to import: weights-only loading must refuse it."""


@pytest.mark.slow
def test_console_script_on_the_bundled_set(checkpoints, tmp_path):
    """The installed entry point, as a user runs it, over the bundled reference set."""
    exe = shutil.which("fp16guard") or pytest.skip("console script not on PATH")
    out = tmp_path / "out"
    proc = subprocess.run(
        [exe, "validate", "esm2", "--weights", str(checkpoints["healthy"]), "--out", str(out),
         "--device", "cpu", "--max-length", "400"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = read_report(out)
    assert report["dataset"]["source"] == "bundled:protein_reference.fasta"
    assert report["dataset"]["sequences"] >= 100
    assert report["dataset"]["truncated"], "the bundled set holds sequences longer than 400"
    assert "PASS" in proc.stdout and "PASS" not in proc.stderr  # the result on stdout, progress on stderr
    # Output to a pipe (a CI log) keeps the table whole: every figure, no cell cut short.
    fp16 = report["attempts"][1]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("│ fp16 "))
    assert format_cosine(fp16["metrics"]["min_cosine"]) in row and fp16["metrics"]["worst"][0][0] in row
    assert "…" not in proc.stdout


@pytest.mark.parametrize("command", ["--help", "list"])
def test_help_and_list_do_not_import_torch(command):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['fp16guard', '{command}']\n"
        "try:\n    runpy.run_module('fp16guard_cli', run_name='__main__')\n"
        "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_the_gpus_launcher_starts_its_workers_without_importing_torch(tmp_path):
    # Importing torch costs seconds on a CUDA host, and every worker imports it anyway.
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"")
    code = (
        "import sys, runpy\n"
        "import fp16guard.execution.launch\n"
        "def launch(args, processes):\n"
        "    assert 'torch' not in sys.modules, 'torch was imported before the launch'\n"
        "    assert processes == 2 and '--gpus' in args\n"
        "    return 0\n"
        "fp16guard.execution.launch.launch = launch\n"
        f"sys.argv = ['fp16guard', 'validate', 'esm2', '--weights', {str(weights)!r}, '--gpus', '2']\n"
        "try:\n    runpy.run_module('fp16guard_cli', run_name='__main__')\n"
        "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_validate_option_reaches_the_workflow():
    # A command's option that is neither a source option nor shared would be silently dropped
    # (as --careful-timing once was).
    import inspect
    from dataclasses import fields

    from fp16guard.core.config import ValidationConfig
    from fp16guard_cli import sources, validate
    from fp16guard_cli.main import validate_app

    SOURCE_OPTIONS = {name for f in (sources.esm2, sources.hf, sources.dnabert, sources.antiberty)
                      for name in inspect.signature(f).parameters}
    # The keywords the validate run names on its way to the library, and the ValidationConfig
    # fields its remaining options fill.
    runners = (validate.run_validation, validate._validate, validate._validation_config)
    keywords = {p.name for f in runners for p in inspect.signature(f).parameters.values() if p.kind is p.KEYWORD_ONLY}
    shared = keywords | {f.name for f in fields(ValidationConfig)}
    for command in validate_app.registered_commands:
        options = set(inspect.signature(command.callback).parameters) - {"ctx"}  # the typer.Context, not an option
        assert options - SOURCE_OPTIONS <= shared, (command.name, options - SOURCE_OPTIONS - shared)
        assert "careful_timing" in options and "careful_timing" in shared


def test_brackets_in_ids_paths_and_errors_are_printed_as_written(checkpoints, tmp_path):
    """Terminal output treats what it prints as text: a sequence id like "odd[bold]x", an output
    path with brackets, and an error naming such a path keep their brackets."""
    fasta = tmp_path / "odd.fasta"
    fasta.write_text(">odd[bold]x\nMKTAYIAKQRQISFVKSHFSRQLEER\n>odd[bold]y\nMKVLAAGIVG\n")
    out = tmp_path / "out[1]"
    result, text = run_cli("validate", "esm2", "--weights", checkpoints["healthy"], "-s", fasta, "-o", out,
                           "--device", "cpu")
    assert result.exit_code == 0, text
    flat = "".join(text.split())
    assert "odd[bold]" in flat and "out[1]/report.json" in flat  # the worst sequence's id, in the table
    missing = tmp_path / "no[such]file.fasta"
    result, text = run_cli("validate", "esm2", "--weights", checkpoints["healthy"], "-s", missing,
                           "-o", tmp_path / "o2", "--device", "cpu")
    assert result.exit_code == 2, text
    assert "no[such]file.fasta" in "".join(text.split())


def test_checkpoint_in_torchs_legacy_format_loads_like_the_zip_one(checkpoints, tmp_path):
    """Checkpoints are memory-mapped; one saved in torch's legacy (non-zip) format cannot be, and
    is read whole instead: the same weights either way."""
    import argparse

    import torch

    from fp16guard.core.config import ModelSource
    from fp16guard.models.esm2 import TARGET

    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(checkpoints["healthy"], map_location="cpu", weights_only=True)
    legacy = tmp_path / "legacy.pt"
    torch.save(data, legacy, _use_new_zipfile_serialization=False)
    mapped = TARGET.load(ModelSource(weights=str(checkpoints["healthy"]))).module.state_dict()
    read = TARGET.load(ModelSource(weights=str(legacy))).module.state_dict()
    assert mapped.keys() == read.keys()
    # contact_head.regression is not in these checkpoints and is drawn at random on each load
    assert all(torch.equal(mapped[k], read[k]) for k in mapped if not k.startswith("contact_head."))
