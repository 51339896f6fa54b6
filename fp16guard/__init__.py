"""fp16guard: prove that a biological language model is safe to run in FP16.

The heavy parts (torch, fair-esm) load on first use, so ``import fp16guard`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module

from .errors import Fp16GuardError, InputError, ModelLoadError, NonFiniteReferenceError

_LAZY = {
    "apply_policy": "fp16guard.targets",
    "Embedder": "fp16guard.embedding",
    "embed_sequences": "fp16guard.embedding",
    "read_embeddings": "fp16guard.embedfile",
    "Embeddings": "fp16guard.embedfile",
    "get_policy": "fp16guard.policy",
    "Policy": "fp16guard.policy",
    "LADDER": "fp16guard.policy",
    "validate": "fp16guard.workflow",
    "compare": "fp16guard.compare",
    "Comparison": "fp16guard.compare",
    "Report": "fp16guard.report",
    "write_report": "fp16guard.report",
    "read_report": "fp16guard.report",
    "Thresholds": "fp16guard.config",
    "ValidationConfig": "fp16guard.config",
}

__all__ = ["Fp16GuardError", "InputError", "ModelLoadError", "NonFiniteReferenceError", *_LAZY]


def __getattr__(name: str):
    if name == "__version__":  # the installed distribution's version
        from importlib import metadata

        try:
            return metadata.version("fp16guard")
        except metadata.PackageNotFoundError:
            return "unknown"
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fp16guard' has no attribute {name!r}")
