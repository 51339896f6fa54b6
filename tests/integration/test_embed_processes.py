"""`fp16guard embed` in real processes: killed with SIGKILL and resumed; two ranks (--gpus 2
on the CPU, gloo) and two "nodes" of two ranks (torchrun's c10d rendezvous on one machine).
Every finished file must be byte-identical to one uninterrupted single process's."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fp16guard.execution.launch import free_port

pytestmark = pytest.mark.slow

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def _fasta(path: Path, count: int) -> Path:
    rng = random.Random(7)
    path.write_text("".join(f">s{i}\n{''.join(rng.choices(RESIDUES, k=rng.randint(5, 120)))}\n" for i in range(count)))
    return path


def _env() -> dict:
    # One thread per process in every run, so CPU kernels reduce in the same order.
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _command(checkpoint, fasta, out, *extra, launcher=("-m", "fp16guard_cli")):
    return [sys.executable, *launcher, "embed", "esm2", "-w", str(checkpoint), "-s", str(fasta), "-o", str(out),
            "--device", "cpu", "--policy", "fp16", "--force", "--chunk-size", "3", "--spot-check-every", "4",
            "--per-residue", *map(str, extra)]


def _run(command) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)


@pytest.fixture(scope="module")
def single(checkpoints, tmp_path_factory):
    """One uninterrupted process's file."""
    root = tmp_path_factory.mktemp("single")
    fasta = _fasta(root / "in.fasta", 60)
    done = _run(_command(checkpoints["healthy"], fasta, root / "one.h5"))
    assert done.returncode == 0, done.stderr[-2000:]
    return fasta, root / "one.h5"


def test_sigkill_at_a_random_shard_then_rerun_gives_the_same_bytes(checkpoints, single, tmp_path):
    fasta, one = single
    out = tmp_path / "killed.h5"
    parts = tmp_path / "killed.h5.parts"
    wanted = random.Random().randint(2, 12)
    proc = subprocess.Popen(_command(checkpoints["healthy"], fasta, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(parts.glob("shard-*.h5"))) < wanted:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists() and len(list(parts.glob("shard-*.h5"))) >= wanted
    resumed = _run(_command(checkpoints["healthy"], fasta, out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from an earlier run" in resumed.stdout
    assert out.read_bytes() == one.read_bytes() and not parts.exists()


def test_two_processes_write_the_single_process_file(checkpoints, single, tmp_path):
    fasta, one = single
    out = tmp_path / "two.h5"
    done = _run(_command(checkpoints["healthy"], fasta, out, "--gpus", "2"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_bytes() == one.read_bytes()
    assert done.stdout.count("embedded 60 sequence(s)") == 1  # rank 0 alone prints


def test_two_nodes_of_two_processes_write_the_single_process_file(checkpoints, single, tmp_path):
    fasta, one = single
    out = tmp_path / "nodes.h5"
    port = free_port()
    nodes = []
    try:
        for node in (0, 1):
            nodes.append(subprocess.Popen(
                _command(checkpoints["healthy"], fasta, out, launcher=(
                    "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2", "--node-rank", str(node),
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "embed-test",
                    "--rdzv-conf", "join_timeout=90", "-m", "fp16guard_cli")),
                env=_env(), stdout=open(tmp_path / f"node{node}.log", "w"), stderr=subprocess.STDOUT,
            ))
            # Both agents match the endpoint's host, so both would try to serve the rendezvous
            # store: node 0 starts it first, node 1 joins it as a client.
            time.sleep(3 if node == 0 else 0)
        for node in nodes:
            node.wait(timeout=120)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    logs = [(tmp_path / f"node{node}.log").read_text() for node in (0, 1)]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert sum("embedded 60 sequence(s)" in log for log in logs) == 1  # global rank 0 alone prints
    assert out.read_bytes() == one.read_bytes()


def test_a_failing_rank_ends_every_rank_with_one_error_and_keeps_the_shards(checkpoints, tmp_path):
    fasta = _fasta(tmp_path / "in.fasta", 30)
    out = tmp_path / "bad.h5"
    done = _run(_command(checkpoints["mlp"], fasta, out, "--gpus", "2"))
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.count("error:") == 1 and "NaN/Inf" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and (tmp_path / "bad.h5.parts" / "manifest.json").is_file()
