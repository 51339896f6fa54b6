"""Starting a data-parallel run: the ranks' environment and the ``--gpus N`` launcher.

``--gpus N`` starts the N worker processes itself, with the environment torchrun would give
them, instead of going through ``python -m torch.distributed.run``: that saves the agent's
interpreter and torch import before the workers even start (two processes reached their first
stage after 3.9 s this way, 6.4 s under plain torchrun, on an H200 host; docs/scaling.md). Kept
apart from fp16guard.execution.distributed so that launching imports no torch in the parent process; the
workers check the GPU count.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fp16guard.errors import InputError

#: Set by ``launch``: rank 0 writes its exit code to this file once every rank has agreed on
#: how the run ends, and every rank then exits 0. A worker that exits non-zero has therefore
#: crashed or failed on its own, and the launcher stops the others instead of letting them
#: wait for it at the next gather.
EXIT_CODE_FILE_ENV = "FP16GUARD_EXIT_CODE_FILE"

#: Exit codes a worker ends with on its own that keep their meaning (4: an internal error,
#: reported by the worker in one line); anything else (a Python traceback's 1, a signal) is
#: reported as 3, an environment failure, never as a verdict.
OWN_CODES = (2, 3, 4, 130)

#: Seconds the other ranks get to exit after a SIGTERM before they are killed.
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one run."""

    rank: int
    size: int
    local_rank: int
    local_size: int = 0  # ranks on this host; 0: not known

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> World | None:
    """The rank layout a launcher gives this process (RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE, as torchrun and ``--gpus`` set them), or None."""
    try:
        size = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None
    local_size = os.environ.get("LOCAL_WORLD_SIZE", "")
    return World(rank, size, int(os.environ.get("LOCAL_RANK", rank)), int(local_size) if local_size.isdigit() else 0)


def strip_option(args: list[str], name: str) -> list[str]:
    """``args`` without ``name VALUE`` or ``name=VALUE``."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def free_port() -> int:
    """A TCP port on the loopback interface that is free now, for rank 0's rendezvous store."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_environments(processes: int, code_file: Path, port: int) -> list[dict[str, str]]:
    """Each worker's environment: what torchrun's standalone mode sets, plus the exit-code file."""
    base = {
        **os.environ,
        EXIT_CODE_FILE_ENV: str(code_file),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(processes),
        "LOCAL_WORLD_SIZE": str(processes),
        "GROUP_RANK": "0",
    }
    # torchrun would give each process 1 thread; share the cores instead (the CPU work between
    # passes, tokenising and comparing, is not negligible).
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return [{**base, "RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in range(processes)]


def _stop(workers: list[subprocess.Popen], sig: int = signal.SIGTERM, wait: float = 0.0) -> None:
    """Stop every worker still running: wait up to ``wait`` seconds for them to leave on their
    own, then send ``sig``, then kill those still there after the grace time."""
    deadline = time.monotonic() + wait
    for proc in workers:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(sig)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in workers:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Terminated(Exception):
    """The launcher itself was sent SIGTERM (a cancelled CI job, a batch system's time limit)."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def supervise(workers: list[subprocess.Popen], poll_seconds: float = 0.05) -> int:
    """Wait for every worker; returns 0 when all exit 0, else the first non-zero exit status
    seen, after stopping the others (they would otherwise wait at the next gather)."""
    while True:
        codes = [proc.poll() for proc in workers]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            _stop(workers)
            return failed[0]
        if all(code == 0 for code in codes):
            return 0
        time.sleep(poll_seconds)


def launch(args: list[str], processes: int, worker: list[str] | None = None) -> int:
    """Run ``fp16guard ARGS`` (without ``--gpus``) as ``processes`` ranks on this host and
    return the exit code the run ended with: the one the ranks agreed on, or, when a rank
    failed on its own (before joining the others, or by crashing), that rank's code.
    ``worker``: the command that starts one rank (default: this interpreter's fp16guard)."""
    if processes < 1:
        raise InputError(f"--gpus must be at least 1, got {processes}")
    worker = worker or [sys.executable, "-m", "fp16guard_cli"]
    command = [*worker, *strip_option(args, "--gpus")]
    with tempfile.TemporaryDirectory(prefix="fp16guard-") as tmp:
        code_file = Path(tmp) / "exit-code"
        workers: list[subprocess.Popen] = []
        # Without this, a SIGTERM would end the launcher alone and leave its workers holding GPUs.
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if _main_thread() else None
        try:
            for env in worker_environments(processes, code_file, free_port()):
                workers.append(subprocess.Popen(command, env=env))
            status = supervise(workers)
        except KeyboardInterrupt:
            # A Ctrl-C in the terminal reached the workers too: let them leave on their own first.
            _stop(workers, signal.SIGINT, wait=5.0)
            return 130
        except _Terminated:
            _stop(workers)
            return 128 + signal.SIGTERM
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if code_file.is_file():
            return int(code_file.read_text().strip())
        if status == 0:  # every rank exited 0 without an agreed code: nothing was decided
            return 3
        return status if status in OWN_CODES else 3


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
