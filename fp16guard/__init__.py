"""fp16guard: prove that a biological language model is safe to run in FP16.

The heavy parts (torch, fair-esm) load on first use, so ``import fp16guard`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module

from fp16guard.errors import (
    Fp16GuardError,
    InputError,
    ModelLoadError,
    NonFiniteReferenceError,
)

_LAZY = {
    "apply_policy": "fp16guard.models",
    "Embedder": "fp16guard.execution.embedder",
    "embed_sequences": "fp16guard.execution.embedder",
    "read_embeddings": "fp16guard.io.embedfile",
    "Embeddings": "fp16guard.io.embedfile",
    "get_policy": "fp16guard.numerics.policy",
    "Policy": "fp16guard.numerics.policy",
    "LADDER": "fp16guard.numerics.policy",
    "validate": "fp16guard.workflows.validate",
    "compare": "fp16guard.numerics.compare",
    "Comparison": "fp16guard.numerics.compare",
    "Report": "fp16guard.report.document",
    "write_report": "fp16guard.report.writer",
    "read_report": "fp16guard.report.document",
    "Thresholds": "fp16guard.core.config",
    "ValidationConfig": "fp16guard.core.config",
}

__all__ = ["Fp16GuardError", "InputError", "ModelLoadError", "NonFiniteReferenceError", *_LAZY]


def __getattr__(name: str):
    if name == "__version__":  # the installed distribution's version
        from fp16guard.core.versions import fp16guard_version

        return fp16guard_version()
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fp16guard' has no attribute {name!r}")
