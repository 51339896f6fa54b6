"""FASTA reading and validation, bundled reference sets, and token-budget batching."""

from __future__ import annotations

import gzip
import hashlib
import io
import statistics
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fp16guard.errors import Fp16GuardError, InputError
from fp16guard.io.files import GZIP_MAGIC


@dataclass(frozen=True)
class Record:
    """One FASTA record: ``id`` is the header's first word, ``line`` the header's line number."""

    id: str
    sequence: str
    description: str = ""
    line: int = 0


@dataclass(frozen=True)
class SequenceSet:
    """Validated records in file order, with a content hash that ignores line wrapping."""

    name: str
    records: tuple[Record, ...]

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for record in self.records:
            digest.update(f"{record.id}\t{record.sequence}\n".encode())
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.records)

    def length_stats(self) -> dict[str, float]:
        """Min, median, mean and max residue count, plus the total."""
        lengths = [len(r.sequence) for r in self.records]
        return {
            "count": len(lengths),
            "min": min(lengths),
            "median": statistics.median(lengths),
            "mean": round(statistics.fmean(lengths), 2),
            "max": max(lengths),
            "total": sum(lengths),
        }


def _open(path: Path):
    """``path`` opened for binary reading; InputError saying why it cannot be."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory; expected a FASTA file (plain or gzip-compressed)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def read_fasta(path: str | Path, alphabet: str, what: str = "sequence") -> SequenceSet:
    """Read and validate a FASTA file against ``alphabet`` (upper-case letters allowed).

    A gzip-compressed file (recognised by its magic bytes, whatever its name) is decompressed
    transparently. Lower case is accepted and upper-cased; one terminal ``*`` (a translated stop
    codon) is dropped. Every problem raises :class:`InputError` naming the file, line and record.
    """
    path = Path(path)
    with _open(path) as handle:
        try:
            data = handle.read()
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc})") from None
    compressed = data.startswith(GZIP_MAGIC)
    if compressed:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise InputError(f"{path}: looks gzip-compressed but cannot be decompressed as gzip ({exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        inside = "the gzip-compressed file's content " if compressed else ""
        raise InputError(f"{path}: {inside}cannot be read as text ({exc}); expected FASTA") from None
    return parse_fasta(text, str(path), alphabet, what)


def parse_fasta(text: str, source: str, alphabet: str, what: str = "sequence") -> SequenceSet:
    """Parse FASTA ``text``; ``source`` names it in error messages."""
    if not text.strip():
        raise InputError(f"{source}: the file is empty; expected FASTA records ('>id' lines)")
    return SequenceSet(Path(source).name, tuple(iter_records(text.splitlines(), source, alphabet, what)))


def iter_records(lines: Iterable[str], source: str, alphabet: str, what: str = "sequence") -> Iterator[Record]:
    """Records of FASTA ``lines`` one at a time, validated as ``parse_fasta`` validates them
    (InputError naming ``source``, the line and the record). Memory grows with the ids seen
    (for the duplicate check), not with the sequences."""
    allowed = set(alphabet.upper())
    # Characters that need no closer look; any other sends the line through the per-character
    # check below, which names the bad one (a set test is ~50x faster than that loop).
    plainly_fine = allowed | {c.lower() for c in allowed} | set(" \t\r\n\v\f")
    first_seen: dict[str, int] = {}
    header: tuple[str, str, int] | None = None
    chunks: list[str] = []

    def finish() -> Record | None:
        if header is None:
            return None
        rid, desc, line = header
        seq = "".join(chunks)
        if seq.endswith("*"):
            seq = seq[:-1]
        if not seq:
            raise InputError(f"{source}:{line}: record '{rid}' has an empty {what}")
        return Record(rid, seq, desc, line)

    for number, raw in enumerate(lines, start=1):
        raw = raw.rstrip("\r\n")
        line = raw.strip()
        if not line:
            continue
        if line.startswith(">"):
            done = finish()
            if done is not None:
                yield done
            fields = line[1:].split(maxsplit=1)
            if not fields:
                raise InputError(f"{source}:{number}: header line has no id after '>'")
            rid = fields[0]
            if rid in first_seen:
                raise InputError(
                    f"{source}:{number}: duplicate id '{rid}' (first seen on line {first_seen[rid]})"
                )
            first_seen[rid] = number
            header = (rid, fields[1] if len(fields) > 1 else "", number)
            chunks = []
            continue
        if header is None:
            raise InputError(
                f"{source}:{number}: text before the first '>' header; is this a FASTA file?"
            )
        if chunks and chunks[-1].endswith("*"):
            raise InputError(f"{source}:{number - 1}: record '{header[0]}' has '*' before its end")
        last = len(raw.rstrip())
        for column, char in enumerate(raw if not plainly_fine.issuperset(raw) else "", start=1):
            if char.isspace():
                continue
            if char.upper() not in allowed and not (char == "*" and column == last):
                raise InputError(
                    f"{source}:{number}: record '{header[0]}' has {char!r} at column {column}, "
                    f"which is not a valid {what} character (allowed: {''.join(sorted(allowed))})"
                )
        chunks.append("".join(line.split()).upper())
    done = finish()
    if done is not None:
        yield done


class _HashingReader(io.RawIOBase):
    """A binary file whose bytes are hashed (SHA-256) as they are read."""

    def __init__(self, handle):
        self.handle, self.digest = handle, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.handle.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)


def stream_fasta(path: str | Path, alphabet: str, what: str = "sequence") -> tuple[Iterator[Record], Callable[[], str]]:
    """Records of a FASTA file (plain or gzip, by its magic bytes) one at a time, validated as
    ``read_fasta`` validates them, in bounded memory; and a function that returns the SHA-256 of
    the file's bytes once the records are exhausted."""
    path = Path(path)
    handle = _open(path)
    compressed = handle.read(2) == GZIP_MAGIC
    handle.seek(0)
    hashing = _HashingReader(handle)

    def records() -> Iterator[Record]:
        binary = gzip.GzipFile(fileobj=io.BufferedReader(hashing)) if compressed else io.BufferedReader(hashing)
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline=None)
        empty = True
        try:
            for record in iter_records(text, str(path), alphabet, what):
                empty = False
                yield record
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InputError(f"{path}: looks gzip-compressed but cannot be decompressed as gzip ({exc})") from None
        except UnicodeDecodeError as exc:
            inside = "the gzip-compressed file's content " if compressed else ""
            raise InputError(f"{path}: {inside}cannot be read as text ({exc}); expected FASTA") from None
        finally:
            handle.close()
        if empty:
            raise InputError(f"{path}: the file is empty; expected FASTA records ('>id' lines)")

    return records(), lambda: hashing.digest.hexdigest()


def replace_letters(records: SequenceSet, letters: str, replacement: str) -> tuple[SequenceSet, list[str]]:
    """Replace every one of ``letters`` by ``replacement``; returns the new set and the ids changed.

    For DNA: IUPAC ambiguity codes (R, Y, S, W, K, M, B, D, H, V) become N, the one ambiguity
    symbol DNA tokenizers know."""
    table = str.maketrans({letter: replacement for letter in letters})
    changed: list[str] = []
    out = []
    for record in records.records:
        sequence = record.sequence.translate(table)
        if sequence != record.sequence:
            changed.append(record.id)
            record = Record(record.id, sequence, record.description, record.line)
        out.append(record)
    return SequenceSet(records.name, tuple(out)), changed


def check_alphabet(records: SequenceSet, alphabet: str, vocabulary: str) -> None:
    """Raise InputError naming the first record with a letter outside ``alphabet``."""
    allowed = set(alphabet)
    for record in records.records:
        if allowed.issuperset(record.sequence):
            continue
        for position, char in enumerate(record.sequence, start=1):
            if char not in allowed:
                raise InputError(
                    f"{records.name}:{record.line}: record '{record.id}' has {char!r} at residue {position}, "
                    f"which is not in {vocabulary} ({''.join(sorted(allowed))})"
                )


def ids_with(records: SequenceSet, letters: str) -> list[str]:
    """Ids of the records that contain any of ``letters``, in file order."""
    return [r.id for r in records.records if any(letter in r.sequence for letter in letters)]


def some_ids(ids: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` ids, comma-separated, then "and N more" for the rest."""
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def bundled_path(name: str) -> Path:
    """Path of a reference set shipped with the package (editable or not)."""
    ref = resources.files("fp16guard.data").joinpath(name)
    if not ref.is_file():
        raise Fp16GuardError(f"bundled reference set {name!r} is missing from this installation; reinstall fp16guard")
    return Path(str(ref))


