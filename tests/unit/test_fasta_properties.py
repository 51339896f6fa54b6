"""Property-based tests of the FASTA reader: no input crashes it, and valid records round-trip."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fp16guard.errors import InputError
from fp16guard.io.sequences import read_fasta, stream_fasta

ALPHABET = "ACDEFGHIKLMNPQRSTVWYXBUZO"
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# FASTA-looking bytes reach deeper into the parser than uniform noise does.
fasta_like = st.lists(
    st.sampled_from([b">", b"\n", b"\r\n", b"\r", b" ", b"\t", b"*", b"A", b"c", b"m", b"-", b"\xef\xbb\xbf", b"\x00"])
    | st.binary(max_size=8),
    max_size=40,
).map(b"".join)


def read_bytes(tmp_path, data: bytes, name: str = "input.fasta"):
    path = tmp_path / name
    path.write_bytes(data)
    return read_fasta(path, ALPHABET)


@SETTINGS
@given(data=st.binary(max_size=400) | fasta_like, compress=st.booleans())
def test_arbitrary_bytes_never_crash(tmp_path, data, compress):
    """Plain or gzip-wrapped, any bytes are either read or refused with an InputError."""
    payload = gzip.compress(data, mtime=0) if compress else data
    try:
        records = read_bytes(tmp_path, payload)
    except InputError as exc:
        assert exc.exit_code == 2 and "input.fasta" in str(exc)
        return
    for record in records.records:
        assert record.id and record.sequence and set(record.sequence) <= set(ALPHABET)


@SETTINGS
@given(data=st.binary(min_size=1, max_size=200), cut=st.integers(min_value=1, max_value=30))
def test_damaged_gzip_is_an_input_error(tmp_path, data, cut):
    """A gzip stream cut short is refused with a message that says gzip."""
    payload = gzip.compress(data, mtime=0)
    with pytest.raises(InputError) as info:
        read_bytes(tmp_path, payload[: max(2, len(payload) - cut)], "cut.bin")
    assert "gzip" in str(info.value).replace(str(tmp_path), "")


ids = st.text(
    alphabet=st.characters(blacklist_categories=("Z", "C"), blacklist_characters="\u0085"), min_size=1, max_size=12
)
record = st.tuples(
    ids,
    st.text(alphabet=ALPHABET + ALPHABET.lower(), min_size=1, max_size=120),
    st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=6),  # line widths, cycled
)


@SETTINGS
@given(
    records=st.lists(record, min_size=1, max_size=6, unique_by=lambda r: r[0]),
    newline=st.sampled_from(["\n", "\r\n"]),
    compress=st.booleans(),
)
def test_valid_records_round_trip(tmp_path, records, newline, compress):
    """Records written with any line wrapping, LF or CRLF, either case, plain or gzip, read back
    with the same ids and upper-cased sequences."""
    lines = []
    for rid, sequence, widths in records:
        lines.append(f">{rid} description words")
        start, i = 0, 0
        while start < len(sequence):
            width = widths[i % len(widths)]
            lines.append(sequence[start : start + width])
            start, i = start + width, i + 1
    data = (newline.join(lines) + newline).encode()
    read = read_bytes(tmp_path, gzip.compress(data) if compress else data)
    assert [(r.id, r.sequence) for r in read.records] == [(rid, seq.upper()) for rid, seq, _ in records]


def stream_bytes(tmp_path, data: bytes):
    path = tmp_path / "input.fasta"
    path.write_bytes(data)
    records, digest = stream_fasta(path, ALPHABET)
    return list(records), digest()


@SETTINGS
@given(data=st.binary(max_size=400) | fasta_like, compress=st.booleans())
def test_streaming_never_crashes_and_agrees_on_valid_files(tmp_path, data, compress):
    """The streaming reader (fp16guard embed) refuses with an InputError or reads records; where
    both readers read a file, they read the same records, and the digest is the file's sha256."""
    import hashlib

    payload = gzip.compress(data, mtime=0) if compress else data
    try:
        streamed, digest = stream_bytes(tmp_path, payload)
    except InputError as exc:
        assert exc.exit_code == 2 and "input.fasta" in str(exc)
        return
    assert digest == hashlib.sha256(payload).hexdigest()
    try:
        whole = read_bytes(tmp_path, payload)
    except InputError:
        return  # splitlines() also splits on form feeds and the like; the streaming reader does not
    if not any(c in data.decode("utf-8", "replace") for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
        assert [(r.id, r.sequence) for r in streamed] == [(r.id, r.sequence) for r in whole.records]
