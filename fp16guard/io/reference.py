"""A saved FP32 reference (.npz): the pooled FP32 embeddings and what they were computed from.

A rerun with a saved reference skips the FP32 pass. It is refused when anything that shapes the
embeddings differs: the weights, the sequences, the layer, the pooling, the truncation, or the
versions of fp16guard, torch and the model library. The device is not checked: FP32 on another
GPU or on a CPU differs from this one by rounding (cosine within about 1e-6 of 1), far below
any useful threshold; the report says where the reference was computed, and speed-ups against
it are given only when that was the same kind of device.
"""

from __future__ import annotations

import datetime as _dt
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fp16guard.core.versions import package_version
from fp16guard.errors import InputError, OutputError
from fp16guard.io.files import write_atomic

FORMAT_VERSION = 1
FORMAT_KEY = "fp16guard_reference"

#: What must match for a saved reference to stand in for the FP32 pass, and how to name it.
CHECKED = {
    "target": "target",
    "weights_sha256": "weights (sha256)",
    "dataset_sha256": "sequences (dataset sha256)",
    "layer": "layer",
    "pooling": "pooling",
    "max_length": "max length",
    "versions": "versions",
}


def library_versions(target: str) -> dict[str, str | None]:
    """fp16guard, torch and the library that defines the model's forward pass."""
    names = ["fp16guard", "torch", "fair-esm" if target == "esm2" else "transformers"]
    return {name: torch.__version__ if name == "torch" else package_version(name) for name in names}


@dataclass(frozen=True)
class SavedReference:
    """A loaded reference file: embeddings [N, D] float32 in input order, their ids, metadata."""

    path: Path
    embeddings: torch.Tensor
    ids: tuple[str, ...]
    meta: dict

    def check(self, **expected) -> None:
        """Raise InputError naming every field of ``expected`` that differs from the saved one."""
        differences = []
        for key, now in expected.items():
            saved = self.meta.get(key)
            if key == "ids":
                if list(self.ids) != list(now):
                    differences.append("sequence ids or their order")
            elif key == "versions":
                differences += [
                    f"{name} {saved.get(name) if isinstance(saved, dict) else None} there, {version} here"
                    for name, version in now.items()
                    if not isinstance(saved, dict) or saved.get(name) != version
                ]
            elif saved != now:
                differences.append(f"{CHECKED.get(key, key)} {_short(saved)} there, {_short(now)} here")
        if differences:
            raise InputError(
                f"--reference {self.path} was computed for another run: {'; '.join(differences)} "
                "(compute it again with --save-reference)"
            )


def reference_metadata(*, timing: dict, peak_memory_bytes: int | None, environment: dict, **run) -> dict:
    """What a saved reference records about its FP32 pass: the fields of ``run`` (target,
    weights and dataset hashes, layer, pooling, max_length, max_tokens...), the library
    versions, the device, and the pass's ``timing`` (the runner's Timing as a dict) and peak
    memory."""
    return {
        **run,
        "versions": library_versions(run["target"]),
        "device": environment.get("device"),
        "device_name": environment.get("device_name"),
        "timing": timing,
        "peak_memory_bytes": peak_memory_bytes,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _short(value) -> str:
    """Hashes shortened to 12 characters, so that the message stays one readable line."""
    if isinstance(value, str) and len(value) == 64:
        return value[:12]
    return repr(value) if isinstance(value, str) else str(value)


def save_reference(path: str | Path, embeddings: torch.Tensor, ids: Sequence[str], meta: dict) -> Path:
    """Write the reference atomically (a temporary file, then a rename): ``embeddings`` float32
    [N, D] in the order of ``ids``, ``meta`` as a JSON string (no pickles). OutputError (exit 3)
    if it cannot be written."""
    path = Path(path)
    if embeddings.shape[0] != len(ids):
        raise ValueError(f"{embeddings.shape[0]} embeddings for {len(ids)} ids")
    document = {FORMAT_KEY: FORMAT_VERSION, **meta, "sequences": len(ids)}

    def write(handle) -> None:
        # A file object, not a name: np.savez would append ".npz" to a name without it.
        np.savez(
            handle,
            embeddings=embeddings.detach().to(torch.float32).cpu().numpy(),
            ids=np.array(list(ids), dtype=str),
            metadata=np.array(json.dumps(document, allow_nan=False)),
        )

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, write, mode="wb")  # the umask's permissions: a reference is meant to be shared
    except OSError as exc:
        raise OutputError(f"cannot write the FP32 reference to {path}: {exc.strerror or exc}") from None
    return path


def load_reference(path: str | Path) -> SavedReference:
    """Read a file written by save_reference; InputError for anything else (pickled arrays are
    never loaded)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--reference {path}: no such file")
    try:
        meta, embeddings, ids = _read(path)
    except _Unreadable as exc:
        raise InputError(
            f"--reference {path} is not a readable fp16guard reference file ({exc}); write one with --save-reference"
        ) from None
    return SavedReference(path, torch.from_numpy(embeddings), ids, meta)


class _Unreadable(Exception):
    """Why a file is not a reference."""


def _read(path: Path) -> tuple[dict, np.ndarray, tuple[str, ...]]:
    if not zipfile.is_zipfile(path):
        raise _Unreadable("not an .npz (zip) archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["metadata"][()]))
            embeddings = np.array(data["embeddings"])
            ids = tuple(str(i) for i in data["ids"].tolist())
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # JSONDecodeError is a ValueError
        if "pickle" in str(exc):
            raise _Unreadable("it holds pickled (object) arrays, which fp16guard never loads") from None
        raise _Unreadable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if not isinstance(meta, dict) or meta.get(FORMAT_KEY) != FORMAT_VERSION:
        raise _Unreadable(f"no {FORMAT_KEY} = {FORMAT_VERSION} in its metadata")
    if embeddings.dtype != np.float32 or embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
        raise _Unreadable(f"embeddings of {embeddings.dtype} {embeddings.shape} for {len(ids)} ids")
    if not isinstance(meta.get("timing"), dict):
        raise _Unreadable("no timing in its metadata")
    return meta, embeddings, ids
