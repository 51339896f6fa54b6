"""Installed versions of fp16guard and the libraries that shape its numbers (no heavy imports)."""

from __future__ import annotations

from importlib import metadata


def package_version(name: str = "fp16guard") -> str | None:
    """The installed version of distribution ``name``; None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def fp16guard_version() -> str:
    """fp16guard's own version, "unknown" when run from a tree that was never installed."""
    return package_version("fp16guard") or "unknown"
