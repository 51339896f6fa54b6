"""Files: what one is, read from its first bytes (not its name), and the one atomic write every
writer of the package goes through (reports, policies, saved references, embeddings files)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes (False when it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == GZIP_MAGIC
    except OSError:
        return False


def create_temp(path: str | Path) -> tuple[int, Path]:
    """Create a new, empty temporary file beside ``path`` for an atomic write; returns its file
    descriptor and name. Unlike tempfile.mkstemp (always 0600), its mode is 0666 less the
    umask (and the directory's default ACL), as for any file the user creates, so that a
    report renamed into place is as readable as the user's other files."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_atomic(path: str | Path, write: Callable[[Any], object], mode: str | None = None,
                 encoding: str | None = None) -> None:
    """Replace ``path`` with what ``write`` puts into a new temporary file beside it (created by
    ``create_temp``, so with the umask's permissions), renamed into place once ``write`` returns.
    With a ``mode`` ("w", "wb"), ``write`` gets the temporary file open in that mode; without
    one, its path (for a library that opens files itself, such as h5py). On any failure, an
    interrupt included, the temporary file is removed and the error raised: ``path`` is left as
    it was. Its directory must exist."""
    path = Path(path)
    fd, tmp = create_temp(path)
    try:
        if mode is None:
            os.close(fd)
            write(tmp)
        else:
            with os.fdopen(fd, mode, encoding=encoding) as handle:
                write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
