"""How validate and embed read sequences for a model: one set of rules for both.

DNA ambiguity codes are read as N (the one ambiguity symbol DNA tokenizers know); a letter is
accepted when the model's vocabulary has it, or when the checkpoint's own tokenizer reads it as
its unknown token (then with a warning); residues the vocabulary lacks but maps to another
(ProtT5's U -> X) are read as that one, with a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from fp16guard.io.sequences import (
    Record,
    SequenceSet,
    check_alphabet,
    ids_with,
    replace_letters,
    some_ids,
    stream_fasta,
)
from fp16guard.models.base import LoadedModel, Target


def accepted_letters(target: Target, loaded: LoadedModel) -> str:
    """The letters a sequence may hold for ``loaded``: its vocabulary's and those read as unknown."""
    return loaded.alphabet + target.read_as_unknown(loaded)


def vocabulary(loaded: LoadedModel) -> str:
    """How error messages name the letters ``loaded`` accepts."""
    return f"{loaded.name}'s vocabulary"


def with_ambiguity_as_n(target: Target, records: SequenceSet) -> tuple[SequenceSet, str | None]:
    """``records`` with the target's ambiguity codes read as N, and a note naming the sequences
    changed (None when none was)."""
    if not target.ambiguity_codes:
        return records, None
    records, changed = replace_letters(records, target.ambiguity_codes, "N")
    if not changed:
        return records, None
    return records, (f"IUPAC ambiguity codes ({target.ambiguity_codes}) replaced by N in {len(changed)} sequence(s): "
                     f"{', '.join(changed[:5])}")


def vocabulary_notes(target: Target, loaded: LoadedModel, records: SequenceSet) -> list[str]:
    """Check every record against ``loaded``'s vocabulary (InputError naming the first that does
    not fit); the warnings for letters read as unknown or as another residue."""
    unknown = target.read_as_unknown(loaded)
    check_alphabet(records, loaded.alphabet + unknown, vocabulary(loaded))
    notes = []
    affected = ids_with(records, unknown) if unknown else []
    if affected:
        notes.append(
            f"{' and '.join(unknown)} is not in {loaded.name}'s vocabulary: read as its unknown token, as the model's "
            f"own tokenizer does, in {len(affected)} sequence(s): {some_ids(affected)}"
        )
    read_as = loaded.read_as
    rare = ids_with(records, "".join(read_as)) if read_as else []
    if rare:
        notes.append(
            f"{', '.join(read_as)} are not in {loaded.name}'s vocabulary: read as "
            f"{'/'.join(sorted(set(read_as.values())))}, "
            f"which it has (the ProtT5/Ankh convention), in {len(rare)} sequence(s): {some_ids(rare)}"
        )
    return notes


def stream_records(target: Target, loaded: LoadedModel, path: Path) -> tuple[Iterator[Record], Callable[[], str]]:
    """The records of ``path`` one at a time, ambiguity codes read as N and each checked against
    ``loaded``'s vocabulary as it is read; and the SHA-256 of the file's bytes once they are all read."""
    records, digest = stream_fasta(path, target.input_alphabet, "sequence")
    table = str.maketrans({letter: "N" for letter in target.ambiguity_codes})
    accepted, name = accepted_letters(target, loaded), vocabulary(loaded)

    def checked() -> Iterator[Record]:
        for record in records:
            if target.ambiguity_codes:
                record = Record(record.id, record.sequence.translate(table), record.description, record.line)
            check_alphabet(SequenceSet(path.name, (record,)), accepted, name)
            yield record

    return checked(), digest
