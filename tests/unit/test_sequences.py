"""FASTA parsing/validation, SequenceSet hashing and stats, bundled sets, and batching."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from fp16guard.errors import InputError
from fp16guard.execution.batching import Batch, make_batches
from fp16guard.io.sequences import Record, SequenceSet, bundled_path, parse_fasta, read_fasta

ESM2_ALPHABET = "ACDEFGHIKLMNPQRSTVWYXBUZO"
REPO_ROOT = Path(__file__).resolve().parents[2]


def parse(text: str, source: str = "input.fasta", what: str = "protein sequence") -> SequenceSet:
    return parse_fasta(text, source, ESM2_ALPHABET, what)


def parse_error(text: str, source: str = "input.fasta") -> InputError:
    with pytest.raises(InputError) as info:
        parse(text, source)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert source in message, message
    return info.value


# --------------------------------------------------------------------------- bad input


def test_input_error_exit_code_is_2():
    assert InputError.exit_code == 2
    assert InputError("x").exit_code == 2


@pytest.mark.parametrize("text", ["", "\n", "\n\n\n", "   \t \n  \r\n \n"])
def test_empty_or_whitespace_only_file(text):
    err = parse_error(text, "empty.fasta")
    assert "empty" in str(err)


def test_text_without_any_header():
    err = parse_error("MKTAYIAKQR\nGGSGGS\n", "noheader.fasta")
    # Line 1 is where it goes wrong.
    assert "noheader.fasta:1:" in str(err)
    assert ">" in str(err)


def test_text_before_first_header_names_the_line():
    text = "\n\nstray words\n>a\nMKT\n"
    err = parse_error(text, "stray.fasta")
    assert "stray.fasta:3:" in str(err)
    assert "before the first" in str(err)


@pytest.mark.parametrize("header", [">", ">   ", ">\t"])
def test_header_without_id(header):
    text = f">ok\nMKT\n{header}\nMKT\n"
    err = parse_error(text, "noid.fasta")
    assert "noid.fasta:3:" in str(err)
    assert "no id" in str(err)


def test_duplicate_ids_name_both_lines():
    text = ">a first\nMKT\n>b\nGGS\n>a again\nLLL\n"
    err = parse_error(text, "dup.fasta")
    message = str(err)
    assert "dup.fasta:5:" in message
    assert "'a'" in message
    assert "line 1" in message


def test_duplicate_id_with_different_description_still_duplicate():
    with pytest.raises(InputError):
        parse(">x one\nMK\n>x two\nMK\n")


@pytest.mark.parametrize(
    "text, rid, line",
    [
        (">a\n>b\nMKT\n", "a", 1),  # header followed directly by another header
        (">a\nMKT\n>b\n", "b", 3),  # header at end of file
        (">a\nMKT\n>b\n\n\n>c\nGG\n", "b", 3),  # only blank lines
        (">a\nMKT\n>b\n*\n", "b", 3),  # only a stop codon
    ],
)
def test_empty_sequence_names_the_record(text, rid, line):
    err = parse_error(text, "hollow.fasta")
    message = str(err)
    assert f"'{rid}'" in message
    assert f"hollow.fasta:{line}:" in message
    assert "empty" in message


@pytest.mark.parametrize(
    "seq_line, bad, column",
    [
        ("MKT-AV", "-", 4),  # a gap
        ("MKTA3V", "3", 5),  # a digit
        ("JMKT", "J", 1),  # a letter that is not in the alphabet
        ("MK.T", ".", 3),
        ("MK*T", "*", 3),  # a stop codon that is not terminal
        ("MKT**", "*", 4),  # two stops: only the very last may go
    ],
)
def test_invalid_character_names_record_line_column_and_char(seq_line, bad, column):
    text = f">first\nMKTAYIAKQR\n>second desc\nMKTAYIAKQR\n{seq_line}\n"
    err = parse_error(text, "bad.fasta")
    message = str(err)
    assert "bad.fasta:5:" in message
    assert "'second'" in message
    assert f"column {column}" in message
    assert repr(bad) in message


def test_invalid_character_column_counts_whitespace_in_the_line():
    err = parse_error(">a\nMK LV-\n")
    assert "column 6" in str(err)


def test_invalid_lowercase_character_is_reported():
    err = parse_error(">a\nmkjt\n")
    assert "'J'" in str(err) or "'j'" in str(err)
    assert "column 3" in str(err)


def test_read_fasta_missing_path(tmp_path):
    missing = tmp_path / "does_not_exist.fasta"
    with pytest.raises(InputError) as info:
        read_fasta(missing, ESM2_ALPHABET)
    assert info.value.exit_code == 2
    assert "does_not_exist.fasta" in str(info.value)


def test_read_fasta_directory_is_input_error(tmp_path):
    with pytest.raises(InputError):
        read_fasta(tmp_path, ESM2_ALPHABET)


def test_read_fasta_binary_file_is_input_error(tmp_path):
    path = tmp_path / "binary.fasta"
    path.write_bytes(b">a\n\xff\xfe\x80\x81\n")
    with pytest.raises(InputError):
        read_fasta(path, ESM2_ALPHABET)


@pytest.mark.parametrize("name", ["seqs.fasta.gz", "seqs.fa"])  # detected by content, not by name
def test_read_fasta_reads_gzip_transparently(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(gzip.compress(b">a desc\nmkt\r\nAYI\n>b\nGG\n"))
    seqs = read_fasta(path, ESM2_ALPHABET)
    assert [(r.id, r.sequence) for r in seqs.records] == [("a", "MKTAYI"), ("b", "GG")]
    plain = tmp_path / "plain.fasta"
    plain.write_text(">a desc\nMKTAYI\n>b\nGG\n")
    assert seqs.sha256 == read_fasta(plain, ESM2_ALPHABET).sha256


@pytest.mark.parametrize(
    "data",
    [
        gzip.compress(b">a\nMKT\n", mtime=0)[:-6],  # truncated
        b"\x1f\x8b" + b"\x00" * 30,  # the magic bytes, then no valid header
        gzip.compress(b">a\nMKT\n", mtime=0)[:12] + b"\xff" * 10 + gzip.compress(b">a\nMKT\n", mtime=0)[22:],  # corrupt
    ],
    ids=["truncated", "bad-header", "corrupt-stream"],
)
def test_read_fasta_corrupt_gzip_says_gzip(tmp_path, data):
    path = tmp_path / "bad.fasta.gz"
    path.write_bytes(data)
    with pytest.raises(InputError) as info:
        read_fasta(path, ESM2_ALPHABET)
    assert str(path) in str(info.value)
    assert "gzip" in str(info.value).replace(str(path), "")  # not only in the path (tmp_path has the test's name)


def test_read_fasta_gzip_of_binary_says_gzip(tmp_path):
    path = tmp_path / "binary.gz"
    path.write_bytes(gzip.compress(b">a\n\xff\xfe\x80\n"))
    with pytest.raises(InputError) as info:
        read_fasta(path, ESM2_ALPHABET)
    assert "gzip" in str(info.value).replace(str(path), "")


def test_read_fasta_reads_a_file(tmp_path):
    path = tmp_path / "ok.fasta"
    path.write_text(">a desc words\nMKT\nAYI\n>b\nGG\n")
    seqs = read_fasta(path, ESM2_ALPHABET)
    assert seqs.name == "ok.fasta"
    assert [r.id for r in seqs.records] == ["a", "b"]
    assert seqs.records[0] == Record("a", "MKTAYI", "desc words", 1)
    assert seqs.records[1] == Record("b", "GG", "", 4)


def test_read_fasta_errors_name_the_path(tmp_path):
    path = tmp_path / "gap.fasta"
    path.write_text(">a\nMK-T\n")
    with pytest.raises(InputError) as info:
        read_fasta(path, ESM2_ALPHABET)
    assert str(path) in str(info.value)
    assert ":2:" in str(info.value)


# --------------------------------------------------------------------------- accepted input


def test_lowercase_is_upper_cased():
    seqs = parse(">a\nmkTaYi\n")
    assert seqs.records[0].sequence == "MKTAYI"


def test_every_alphabet_letter_accepted_in_both_cases():
    seqs = parse(f">up\n{ESM2_ALPHABET}\n>low\n{ESM2_ALPHABET.lower()}\n")
    assert seqs.records[0].sequence == ESM2_ALPHABET
    assert seqs.records[1].sequence == ESM2_ALPHABET


def test_single_terminal_stop_is_dropped():
    seqs = parse(">a\nMKT*\n>b\nMKT\nAV*\n")
    assert seqs.records[0].sequence == "MKT"
    assert seqs.records[1].sequence == "MKTAV"


def test_stop_at_end_of_inner_line_is_rejected():
    with pytest.raises(InputError):
        parse(">a\nMK*\nLV\n")


def test_two_stops_on_separate_lines_are_rejected():
    with pytest.raises(InputError):
        parse(">a\nMK*\n*\n")


def test_multiline_sequences_are_joined_and_blank_lines_skipped():
    text = ">a the description\nMKTAY\n\nIAKQR\n  QISF  \n>b\nGG\nSS\n"
    seqs = parse(text)
    assert [r.sequence for r in seqs.records] == ["MKTAYIAKQRQISF", "GGSS"]
    assert seqs.records[0].description == "the description"
    assert seqs.records[0].line == 1
    assert seqs.records[1].line == 6


def test_crlf_line_endings():
    seqs = parse(">a\r\nMKT\r\nAYI\r\n>b\r\nGG\r\n")
    assert [(r.id, r.sequence) for r in seqs.records] == [("a", "MKTAYI"), ("b", "GG")]


def test_records_keep_file_order_and_source_name():
    seqs = parse(">z\nM\n>a\nK\n>m\nT\n", source="/some/dir/set.fasta")
    assert [r.id for r in seqs.records] == ["z", "a", "m"]
    assert seqs.name == "set.fasta"
    assert len(seqs) == 3


# --------------------------------------------------------------------------- hashing, stats


def test_sha256_ignores_line_wrapping():
    seqs = {"a": "MKTAYIAKQRQISFVKSHFSRQ", "b": "GGSGGSGGSQQQ", "c": "M"}

    def wrapped(width: int, blank_lines: bool = False) -> str:
        out = []
        for rid, seq in seqs.items():
            out.append(f">{rid}")
            out += [seq[i : i + width] for i in range(0, len(seq), width)]
            if blank_lines:
                out.append("")
        return "\n".join(out) + "\n"

    hashes = {parse(wrapped(w, blank)).sha256 for w in (1, 3, 7, 60) for blank in (False, True)}
    assert len(hashes) == 1
    # Case and a terminal stop do not change the content either.
    lower = parse(wrapped(5).lower().replace("\n>b", "*\n>b"))
    assert [r.id for r in lower.records] == ["a", "b", "c"]
    assert lower.sha256 == hashes.pop()


def test_sha256_changes_with_a_residue():
    base = parse(">a\nMKTAYI\n>b\nGG\n")
    changed = parse(">a\nMKTAYV\n>b\nGG\n")
    assert len(base.sha256) == 64
    assert base.sha256 != changed.sha256


def test_sha256_changes_with_id_and_order():
    base = parse(">a\nMKT\n>b\nGG\n")
    assert base.sha256 != parse(">a\nMKT\n>c\nGG\n").sha256
    assert base.sha256 != parse(">b\nGG\n>a\nMKT\n").sha256
    # Moving a residue across the record boundary is a different set.
    assert base.sha256 != parse(">a\nMK\n>b\nTGG\n").sha256


def test_length_stats():
    seqs = parse(">a\nMKT\n>b\nMKTAYIAKQR\n>c\nM\n>d\nMKTAY\n")
    stats = seqs.length_stats()
    assert stats == {"count": 4, "min": 1, "median": 4.0, "mean": 4.75, "max": 10, "total": 19}


def test_length_stats_odd_count_and_rounding():
    seqs = parse(">a\nMK\n>b\nMKT\n>c\nMKTAYIA\n")
    stats = seqs.length_stats()
    assert stats["median"] == 3
    assert stats["mean"] == 4.0
    seqs = parse(">a\nM\n>b\nMK\n>c\nMK\n")
    assert seqs.length_stats()["mean"] == 1.67
    assert seqs.length_stats()["count"] == 3


# --------------------------------------------------------------------------- bundled sets


def test_bundled_reference_exists():
    if not (REPO_ROOT / "data" / "protein_reference.fasta").exists():
        pytest.skip("data/protein_reference.fasta is not in the repository yet")
    path = bundled_path("protein_reference.fasta")
    assert path.is_file()
    assert path.name == "protein_reference.fasta"
    # And it is a valid protein FASTA.
    seqs = read_fasta(path, ESM2_ALPHABET)
    assert len(seqs) > 0


def test_bundled_missing_name():
    from fp16guard.errors import Fp16GuardError

    with pytest.raises(Fp16GuardError) as info:
        bundled_path("nope.fasta")
    assert info.value.exit_code == 3  # a broken installation, not bad input
    assert "nope.fasta" in str(info.value)


# --------------------------------------------------------------------------- batching


def _check_batches(lengths, max_tokens, overhead, batches):
    seen = [i for b in batches for i in b.indices]
    assert sorted(seen) == list(range(len(lengths))), "every index exactly once"
    # Longest first, within and across batches.
    flat_lengths = [lengths[i] for i in seen]
    assert flat_lengths == sorted(flat_lengths, reverse=True)
    for batch in batches:
        assert isinstance(batch, Batch)
        assert len(batch.indices) >= 1
        longest = max(lengths[i] for i in batch.indices)
        assert lengths[batch.indices[0]] == longest
        assert batch.padded_tokens == len(batch.indices) * (longest + overhead)
        if batch.padded_tokens > max_tokens:
            assert len(batch.indices) == 1, "only a lone over-long sequence may exceed the budget"
            assert longest + overhead > max_tokens


@pytest.mark.parametrize("seed", range(200))
def test_make_batches_properties(seed):
    rng = random.Random(seed)
    n = rng.randint(0, 120)
    lengths = [rng.randint(1, 3000) for _ in range(n)]
    max_tokens = rng.randint(64, 20000)
    overhead = rng.choice([0, 1, 2, 2, 2, 3])
    batches = make_batches(lengths, max_tokens, overhead)
    _check_batches(lengths, max_tokens, overhead, batches)
    if not lengths:
        assert batches == []


@pytest.mark.parametrize("seed", range(20))
def test_make_batches_default_overhead_is_two(seed):
    rng = random.Random(1000 + seed)
    lengths = [rng.randint(1, 3000) for _ in range(rng.randint(1, 60))]
    max_tokens = rng.randint(64, 20000)
    batches = make_batches(lengths, max_tokens)
    _check_batches(lengths, max_tokens, 2, batches)
    assert batches == make_batches(lengths, max_tokens, 2)


def test_make_batches_greedy_packing_known_answer():
    # Rows of width 10 + 2 = 12 under a budget of 48: four per batch.
    batches = make_batches([10] * 9, 48)
    assert [len(b.indices) for b in batches] == [4, 4, 1]
    assert [b.padded_tokens for b in batches] == [48, 48, 12]
    # Equal lengths keep input order (stable).
    assert [i for b in batches for i in b.indices] == list(range(9))


def test_make_batches_too_long_sequence_gets_own_batch():
    batches = make_batches([5, 500, 6], 100)
    assert batches[0] == Batch((1,), 502)
    assert sum(len(b.indices) for b in batches) == 3
    assert batches[1] == Batch((2, 0), 16)


@pytest.mark.parametrize("max_tokens", [0, -1, -100])
def test_make_batches_rejects_non_positive_budget(max_tokens):
    with pytest.raises(InputError) as info:
        make_batches([3, 4], max_tokens)
    assert info.value.exit_code == 2
    assert str(max_tokens) in str(info.value)
