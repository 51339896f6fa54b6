"""Where a run writes: the output paths checked before any model loads, its text files written
atomically (fp16guard.io.files.write_atomic), and the reports of an earlier run cleared so that
none looks current.

No torch here: the CLI calls these before the heavy imports and before ``--gpus`` starts its
workers.
"""

from __future__ import annotations

import os
from pathlib import Path

from fp16guard.errors import InputError, OutputError
from fp16guard.io.files import create_temp, write_atomic

#: Every file a run writes into ``--out``: the reports (fp16guard.report.document's formats), the profile
#: plot, and the log of an internal error. A run clears them before it starts (``clear_reports``).
REPORT_FILES = ("report.json", "report.md", "junit.xml", "report.html", "profile.png")
ERROR_LOG = "fp16guard-error.log"


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the directory a mkdir would start in)."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_directory(directory: Path, option: str, given: Path) -> None:
    """``directory`` is, or can be created as, a directory this process can write in;
    ``option`` and ``given`` (the path as the user gave it) name it in the error."""
    existing = _nearest_existing(directory.absolute())
    if not existing.is_dir():
        raise InputError(f"{option} {given}: {_relative(existing)} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {given}: directory {_relative(existing)} is not writable")
    # access() can say yes where a write fails (root on /proc, some network file systems): try one.
    try:
        fd, probe = create_temp(existing / ".fp16guard-write-check")
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or exc
        raise InputError(f"{option} {given}: directory {_relative(existing)} is not writable ({why})") from None


def _relative(path: Path) -> Path:
    """``path`` relative to the working directory when it lies under it (as the user wrote it)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def check_output_file(path: str | Path, option: str) -> None:
    """InputError unless ``path`` can be written as a file: not a directory, in a directory that
    exists or can be created and is writable (the file is replaced by a rename)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a directory, not a file")
    _check_directory(path.parent, option, path)


def check_outputs(out: str | Path | None = None, save_policy: str | Path | None = None,
                  save_reference: str | Path | None = None) -> None:
    """Check every path a run will write, before any model loads: the ``--out`` directory and
    the report files in it, ``--save-policy`` and ``--save-reference``. InputError (exit 2)
    naming the first path that cannot be written; nothing is created."""
    if out is not None:
        out = Path(out)
        _check_directory(out, "--out", out)
        for name in (*REPORT_FILES, ERROR_LOG):
            if (out / name).is_dir():
                raise InputError(f"--out {out}: {out / name} is a directory, so the report cannot be written there")
    if save_policy is not None:
        check_output_file(save_policy, "--save-policy")
    if save_reference is not None:
        check_output_file(save_reference, "--save-reference")


def clear_reports(out: str | Path) -> list[Path]:
    """Remove the files an earlier run wrote into ``out`` (report.json, report.md, junit.xml,
    report.html, profile.png, an error log), so that a run that ends without a verdict leaves none that
    looks like its own. Returns the paths removed; OutputError if one cannot be removed."""
    out = Path(out)
    removed = []
    for name in (*REPORT_FILES, ERROR_LOG):
        path = out / name
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot remove the earlier run's {path}: {exc.strerror or exc}") from None
        removed.append(path)
    return removed


def write_error_log(out: str | Path, text: str, name: str = ERROR_LOG) -> Path | None:
    """Write ``text`` (an internal error's traceback) to ``out/name``; None if it cannot be
    written (the error being reported may be that very directory)."""
    path = Path(out) / name
    try:
        write_text_atomic(path, text)
    except OSError:
        return None
    return path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, creating its directory, through a temporary file and a
    rename (OSError if it fails; the old file, if any, is left as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda handle: handle.write(text), mode="w", encoding="utf-8")
