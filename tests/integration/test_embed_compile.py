"""torch.compile in embed: the rules of --compile, a compiled packed ESM-2 agreeing with the
eager one (one graph for every block and pack), and the fall-back when compiling fails."""

import dataclasses
import random
import re

import pytest
import torch
from cli_runner import run_cli

from fp16guard import Embedder
from fp16guard.errors import InputError
from fp16guard.execution.embedder import Compilation
from fp16guard.models import get_target
from fp16guard.numerics.policy import get_policy
from fp16guard.workflows.embed.plan import COMPILE_MIN_TOKENS, decide_compile

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
PACKED32 = dataclasses.replace(get_policy("fp16+packed"), dtype="float32", name="fp32+packed")


def proteins(count, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choices(RESIDUES, k=rng.randint(5, 120))) for _ in range(count)]


def test_compile_rules():
    esm2, hf = get_target("esm2"), get_target("hf")
    packed, padded = get_policy("fp16+packed"), get_policy("fp16+sdpa")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert decide_compile("auto", esm2, packed, cuda, COMPILE_MIN_TOKENS)[0]
    small = decide_compile("auto", esm2, packed, cuda, COMPILE_MIN_TOKENS - 1)
    assert not small[0] and "pay for compiling" in small[1]
    assert not decide_compile("auto", esm2, packed, cpu, 10 * COMPILE_MIN_TOKENS)[0]
    assert not decide_compile("auto", esm2, padded, cuda, 10 * COMPILE_MIN_TOKENS)[0]
    assert not decide_compile("off", esm2, packed, cuda, 10 * COMPILE_MIN_TOKENS)[0]
    assert decide_compile("on", esm2, packed, cpu, 10)[0]
    for target, policy in ((esm2, padded), (hf, packed)):
        with pytest.raises(InputError, match="--compile on"):
            decide_compile("on", target, policy, cpu, 10)


def test_compiled_blocks_agree_with_eager_and_share_one_graph_per_shape(checkpoints):
    from torch._dynamo.utils import counters

    eager = Embedder.load("esm2", weights=checkpoints["healthy"], policy=PACKED32, device="cpu", max_tokens=1500)
    compiled = Embedder.load("esm2", weights=checkpoints["healthy"], policy=PACKED32, device="cpu", max_tokens=1500,
                             compile=True)
    assert compiled.compiled
    torch._dynamo.reset()
    counters.clear()
    texts = proteins(90)
    expected, got = eager.embed(texts), compiled.embed(texts)
    assert compiled.compiled and not compiled.notes
    assert torch.nn.functional.cosine_similarity(expected, got).min() > 0.99999
    graphs = counters["stats"]["unique_graphs"]
    blocks = len(compiled.target.blocks(compiled.model))
    batches = len(compiled.batches(texts, [len(t) for t in texts]))
    assert blocks > 1 and batches > 2
    # Shared code and symbolic pack sizes: far fewer graphs than blocks x batches (on the CPU
    # the attention is a graph break, so each block is two graphs).
    assert 0 < graphs < blocks * batches


def test_a_failing_compile_falls_back_to_eager_with_a_note(checkpoints):
    eager = Embedder.load("esm2", weights=checkpoints["healthy"], policy=PACKED32, device="cpu")
    broken = Embedder.load("esm2", weights=checkpoints["healthy"], policy=PACKED32, device="cpu", compile=True)

    def fails(*args, **kwargs):
        raise RuntimeError("Compiler: cc not found\nmore detail")

    for block in broken.target.blocks(broken.model):
        block._compiled_call_impl = fails
    texts = proteins(12)
    assert torch.equal(broken.embed(texts), eager.embed(texts))
    assert not broken.compiled
    assert broken.notes == ["torch.compile failed (RuntimeError: Compiler: cc not found); running uncompiled"]


def test_embed_cli_compile_on_the_cpu(checkpoints, tmp_path):
    fasta = tmp_path / "p.fasta"
    fasta.write_text("".join(f">p{i}\n{t}\n" for i, t in enumerate(proteins(20))))
    result, text = run_cli("embed", "esm2", "--device", "cpu", "-w", checkpoints["healthy"], "-s", fasta,
                           "-o", tmp_path / "e.h5", "--policy", "fp16+packed", "--force", "--compile", "on")
    assert result.exit_code == 0, text
    assert "execution: compiled with torch.compile (--compile on)" in result.stdout
    assert re.search(r"first batch compiled in [0-9.]+ s, compile cache (hit|miss|partial)", result.stdout)
    result, text = run_cli("embed", "esm2", "--device", "cpu", "-w", checkpoints["healthy"], "-s", fasta,
                           "-o", tmp_path / "f.h5", "--policy", "fp16+sdpa", "--force", "--compile", "on")
    assert result.exit_code == 2 and "--compile on needs a packed policy" in text


def test_a_stopped_compiled_run_is_not_resumed_uncompiled(checkpoints, tmp_path):
    """Compiled and eager kernels round differently: one file never mixes them."""
    fasta = tmp_path / "p.fasta"
    fasta.write_text("".join(f">p{i}\n{t}\n" for i, t in enumerate(proteins(12))))
    common = ("embed", "esm2", "--device", "cpu", "-w", checkpoints["mlp"], "-s", fasta, "-o", tmp_path / "e.h5",
              "--policy", "fp16+packed", "--force", "--chunk-size", "4")
    assert run_cli(*common, "--compile", "on")[0].exit_code == 1  # the planted failure stops it; parts stay
    result, text = run_cli(*common, "--compile", "off")
    assert result.exit_code == 2 and "other arguments" in text and "compiled" in text


def test_the_first_compiled_batch_says_whether_the_compile_cache_served_it():
    assert Compilation.measured(2.0, (3, 1), (5, 1)).cache == "hit"
    assert Compilation.measured(2.0, (3, 1), (3, 4)).cache == "miss"
    assert Compilation.measured(2.0, (0, 0), (1, 1)).cache == "partial"
    assert Compilation.measured(2.0, (3, 1), (3, 1)).cache == "unknown"
    assert Compilation(12.34, "hit").describe() == "first batch compiled in 12.3 s, compile cache hit"
