"""Starting a data-parallel run: torchrun's environment and the ``--gpus N`` launcher.

Kept apart from fp16guard.distributed so that launching imports no torch in the parent process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import Fp16GuardError, InputError

#: Set by ``launch``: rank 0 writes its exit code to this file, so that the launcher returns
#: fp16guard's own codes (torchrun turns any failure into exit code 1).
EXIT_CODE_FILE_ENV = "FP16GUARD_EXIT_CODE_FILE"


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one run."""

    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> World | None:
    """The rank layout torchrun gives this process (RANK, WORLD_SIZE, LOCAL_RANK), or None."""
    try:
        size = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None
    return World(rank, size, int(os.environ.get("LOCAL_RANK", rank)))


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


def launch(args: list[str], processes: int, device: str) -> int:
    """Run ``fp16guard ARGS`` as ``processes`` ranks under torchrun (standalone rendezvous on
    this host) and return the exit code rank 0 ended with. ``device``: auto, cuda or cpu."""
    if processes < 1:
        raise InputError(f"--gpus must be at least 1, got {processes}")
    if device != "cpu":
        import torch

        visible = torch.cuda.device_count()
        if visible < processes:
            raise Fp16GuardError(
                f"--gpus {processes}: {visible} CUDA device(s) visible"
                + ("" if visible else " (--device cpu runs the processes on the CPU, for testing)")
            )
    with tempfile.TemporaryDirectory(prefix="fp16guard-") as tmp:
        code_file = Path(tmp) / "exit-code"
        env = {**os.environ, EXIT_CODE_FILE_ENV: str(code_file)}
        # torchrun would set 1 thread per process; share the cores instead.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "-m", "fp16guard_cli", *strip_option(args, "--gpus"),
        ]
        returncode = subprocess.run(command, env=env).returncode
        if code_file.is_file():
            return int(code_file.read_text().strip())
        # No rank reached the end: whatever failed, it is not a verdict.
        return returncode if returncode not in (0, 1) else 3
