"""Library exceptions. Each carries the exit code the CLI turns it into."""

from __future__ import annotations


class Fp16GuardError(Exception):
    """Base class for every expected failure; ``exit_code`` follows the documented codes."""

    exit_code = 3


class InputError(Fp16GuardError):
    """Bad user input: a FASTA file, an option value, an unknown policy name (exit 2)."""

    exit_code = 2


class ModelLoadError(Fp16GuardError):
    """Weights missing, unreadable or of the wrong architecture (exit 3)."""

    exit_code = 3


class NonFiniteReferenceError(Fp16GuardError):
    """The FP32 reference itself is not finite, so nothing can be compared against it (exit 3)."""

    exit_code = 3


class UnsupportedPolicyError(Fp16GuardError):
    """A precision policy asks for something this model's architecture cannot do (exit 2)."""

    exit_code = 2
