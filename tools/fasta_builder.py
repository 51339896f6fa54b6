"""What the reference-set build scripts share: FASTA rendering, UniProt's CRC64, and the
command line (write, --check, --stats). Standard library only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

Records = list[tuple[str, str]]  # (header line, sequence)


def crc64(seq: str) -> str:
    """UniProt/SWISS-PROT CRC64 (ISO 3309 polynomial) as upper-case hex."""
    poly = 0xD800000000000000
    table = []
    for i in range(256):
        part = i
        for _ in range(8):
            part = (part >> 1) ^ poly if part & 1 else part >> 1
        table.append(part)
    crc = 0
    for byte in seq.encode("ascii"):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return f"{crc:016X}"


def render(records: Records, width: int = 60) -> str:
    """FASTA text: each header, then its sequence wrapped at ``width``."""
    lines = []
    for head, seq in records:
        lines.append(head)
        for i in range(0, len(seq), width):
            lines.append(seq[i : i + width])
    return "\n".join(lines) + "\n"


def run(
    description: str,
    default_output: Path,
    build_records: Callable[[], Records],
    summary: Callable[[Records], str],
    argv: list[str] | None = None,
) -> int:
    """Write the set, or with --check exit 1 when the file is out of date, or --stats."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output", type=Path, default=default_output, help="where to write the FASTA "
                                                                            "(default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the file differs")
    parser.add_argument("--stats", action="store_true", help="print a summary of the set and exit")
    args = parser.parse_args(argv)

    records = build_records()
    text = render(records)
    if args.stats:
        print(summary(records))
        return 0
    if args.check:
        current = args.output.read_bytes() if args.output.exists() else None
        if current != text.encode("ascii"):
            print(f"{args.output} is out of date; rerun this script", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_bytes(text.encode("ascii"))
    print(f"wrote {args.output}")
    print(summary(records))
    return 0
