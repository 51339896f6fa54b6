"""Library exceptions. Each carries the exit code the CLI turns it into."""

from __future__ import annotations

#: The exit code of an unexpected internal error (a bug in fp16guard or a library under it), kept
#: apart from the verdicts (0, 1) and the expected failures (2, 3).
INTERNAL_ERROR_EXIT_CODE = 4


class Fp16GuardError(Exception):
    """Base class for every expected failure; ``exit_code`` follows the documented codes."""

    exit_code = 3


class AccuracyError(Fp16GuardError):
    """Embeddings that fail the accuracy gate while embedding: a spot check below the threshold,
    or NaN/Inf in an output (exit 1, the code of an accuracy failure)."""

    exit_code = 1


class InputError(Fp16GuardError):
    """Bad user input: a FASTA file, an option value, an unknown policy name (exit 2)."""

    exit_code = 2


class ModelLoadError(Fp16GuardError):
    """Weights missing, unreadable or of the wrong architecture (exit 3)."""

    exit_code = 3


class OutputError(Fp16GuardError):
    """A report, policy or reference file could not be written after the output paths were
    checked (a full disk, a directory removed meanwhile) (exit 3)."""

    exit_code = 3


class NonFiniteReferenceError(Fp16GuardError):
    """The FP32 reference itself is not finite, so nothing can be compared against it (exit 3)."""

    exit_code = 3


class UnsupportedPolicyError(Fp16GuardError):
    """A precision policy asks for something this model's architecture cannot do (exit 2)."""

    exit_code = 2
