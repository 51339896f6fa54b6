"""Helpers every loader shares: fast module construction, weight hashing, readable load errors."""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from fp16guard.io.files import is_gzip


@contextmanager
def skipped_init():
    """Build modules without their random initialisation, for weights that a checkpoint then
    overwrites: drawing random numbers for every parameter is most of the time a large model
    takes to load on the host (about two thirds for ESM-2 650M). Parameters that the checkpoint
    does not fill hold arbitrary values: initialise those afterwards."""
    names = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
             "xavier_uniform_", "xavier_normal_", "constant_", "zeros_", "ones_", "orthogonal_")
    saved = {name: getattr(nn.init, name) for name in names if hasattr(nn.init, name)}
    try:
        for name in saved:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def hash_in_background(paths: Sequence[Path]) -> Future[str]:
    """``files_sha256`` in a thread (hashlib releases the GIL on large reads), so that hashing
    overlaps reading and building the model; call ``.result()`` for the digest."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fp16guard-sha256")
    future = executor.submit(files_sha256, list(paths))
    executor.shutdown(wait=False)
    return future


def files_sha256(paths: Sequence[Path], chunk: int = 1 << 24) -> str:
    """SHA-256 over the contents of ``paths``, in the order given (one file: its plain hash)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


#: Sentences of torch's errors that advise turning off weights-only loading (or allowlisting
#: globals): fp16guard never runs pickled code, so it never passes that advice on.
_UNSAFE_ADVICE = re.compile(r"weights_only|safe_globals|allowlist|arbitrary code|still be loaded|trust", re.IGNORECASE)


def load_failure(path: Path, exc: BaseException, failed: str = "cannot read as a PyTorch checkpoint",
                 limit: int = 200) -> str:
    """Why the weights file ``path`` could not be read, for "PATH: <this>": "is gzip-compressed"
    for a compressed file; otherwise the first line of ``exc`` without torch's advice to turn
    weights-only loading off or to allowlist globals (fp16guard never runs pickled code)."""
    if is_gzip(path):
        return f"is gzip-compressed: decompress it first (gunzip {path.name})"
    text = str(exc).strip()
    detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text, re.DOTALL)
    if detail:
        text = detail.group(1)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    kept = " ".join(s for s in re.split(r"(?<=[.!?])\s+", first) if s and not _UNSAFE_ADVICE.search(s))
    if not kept or " " not in kept:  # a bare key or code (KeyError: '101') says little on its own
        kept = f"{type(exc).__name__}: {kept}" if kept else type(exc).__name__
    if detail or isinstance(exc, pickle.UnpicklingError):
        return f"refused by weights-only loading (fp16guard never runs pickled code): {kept}"[:limit]
    return f"{failed} ({kept[:limit]})"
