"""Shared by the bench scripts: random-weight checkpoints in each format, and the CLI run as a
subprocess with every output line time-stamped."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fp16guard.testing import (
    ARCHITECTURES,
    write_checkpoint,
    write_dnabert,
    write_hf_esm,
    write_hf_t5,
)

#: DNABERT-S's real sizes besides layers, width and heads (its config.json): the gated MLP's
#: width, the byte-pair vocabulary, and enough synthetic DNA to train a tokenizer of that size.
DNABERT_INTERMEDIATE_PER_DIM = 4
DNABERT_VOCAB = 4096
DNABERT_CORPUS = 20000

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def write_weights(fmt: str, arch: str, path: Path, plant: str | None = None, plant_layer: int = 1) -> list[str]:
    """Write random weights of ``arch`` (a key of fp16guard.testing.ARCHITECTURES, or of
    T5_ARCHITECTURES for ``t5``) in ``fmt`` (fair-esm, hf, dnabert or t5) at ``path``; return the
    CLI arguments that select them."""
    if fmt == "t5":  # T5EncoderModel.save_pretrained directory; plant "wo" in block plant_layer
        return ["hf", "--model", str(write_hf_t5(path, plant, arch=arch, plant_block=plant_layer))]
    layers, dim, heads = ARCHITECTURES[arch]
    if fmt == "dnabert":
        directory = write_dnabert(
            path, plant, layers=layers, hidden=dim, heads=heads, intermediate=DNABERT_INTERMEDIATE_PER_DIM * dim,
            vocab_size=DNABERT_VOCAB, corpus=DNABERT_CORPUS,
        )
        return ["dnabert", "--model", str(directory)]
    if fmt == "hf":
        return ["hf", "--model", str(write_hf_esm(path, plant, layers=layers, hidden=dim, heads=heads))]
    if fmt == "fair-esm":
        weights = write_checkpoint(path, plant, plant_layer=plant_layer, layers=layers, dim=dim, heads=heads)
        return ["esm2", "--weights", str(weights)]
    raise ValueError(fmt)


def write_proteins(path: Path, count: int, seed: int = 0, median: int = 330, fixed: int | None = None) -> Path:
    """``count`` proteins of log-normal lengths (or all ``fixed`` long), written streaming."""
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for i in range(count):
            length = fixed or min(1022, max(30, round(rng.lognormvariate(math.log(median), 0.55))))
            handle.write(f">p{i}\n{''.join(rng.choices(RESIDUES, k=length))}\n")
    return path


@dataclass
class CliRun:
    """One CLI invocation: exit code, wall seconds, and (seconds since start, line) pairs of its
    merged stdout and stderr."""

    returncode: int
    seconds: float
    lines: list[tuple[float, str]] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines) + "\n"

    def first(self, prefix: str) -> int | None:
        """Index of the first line starting with ``prefix``, or None."""
        return next((i for i, (_, line) in enumerate(self.lines) if line.lstrip().startswith(prefix)), None)


def run_cli(args: list[str], log: Path | None = None) -> CliRun:
    """Run ``python -m fp16guard_cli ARGS``; each output line is stamped as it arrives, so the
    stages the CLI announces (loading weights, building each model) can be timed from outside."""
    command = [sys.executable, "-m", "fp16guard_cli", *args]
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))
        returncode = proc.wait()
    result = CliRun(returncode, time.perf_counter() - start, lines)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(" ".join(command) + "\n" + result.output)
    return result
