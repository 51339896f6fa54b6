"""The embeddings file of ``fp16guard embed`` (HDF5 through h5py) and its shards.

One layout serves the shards of a run in progress (``OUT.parts/shard-NNNNNN.h5``, one chunk
of input each) and the final file (every shard merged in input order):

    ids                 [N] UTF-8 strings, input order
    embeddings          [N, D] float32: pooled, the first (default: the last) layer asked for
    layer_<n>           [N, D] float32 for each layer, when --layers names several
    residues            [R, D] float32 (--per-residue): every pooled position, sequence after sequence
    residues_layer_<n>  [R, D] float32 for each layer, when --layers names several
    residue_offsets     [N + 1] int64: sequence i is residues[offsets[i]:offsets[i + 1]]

Attributes hold the metadata (model, weights checksum, policy as JSON, layers, pooling,
versions, spot-check summary). Nothing in a file depends on when or where it was written (no
timestamps: h5py's object times are off), so a resumed run writes the same bytes as an
uninterrupted one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from fp16guard.errors import InputError, OutputError
from fp16guard.io.files import write_atomic

FORMAT = "fp16guard-embeddings"
FORMAT_VERSION = 1
#: h5py's defaults would store creation times in every dataset, and the newest file-format
#: features the library knows: fixed, so that equal contents give equal bytes.
_LIBVER = ("earliest", "v110")


def _dataset_names(layers: Sequence[int], per_residue: bool) -> dict[int, tuple[str, str | None]]:
    """Layer -> (pooled dataset, per-residue dataset or None)."""
    several = len(layers) > 1
    names = {}
    for number, layer in enumerate(layers):
        pooled = f"layer_{layer}" if several else "embeddings"
        residues = (f"residues_layer_{layer}" if several else "residues") if per_residue else None
        names[layer] = (pooled, residues)
    return names


def _create(group: h5py.File, name: str, data) -> None:
    group.create_dataset(name, data=data, track_times=False)


@dataclass
class Part:
    """One chunk's outputs, as written to a shard and merged into the file."""

    ids: list[str]
    pooled: dict[int, np.ndarray]  # layer -> [n, D] float32
    residues: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> [r, D] float32
    counts: list[int] = field(default_factory=list)  # residues per sequence
    attrs: dict = field(default_factory=dict)


def _write_arrays(handle: h5py.File, part: Part, layers: Sequence[int], per_residue: bool) -> None:
    _create(handle, "ids", np.array(part.ids, dtype=h5py.string_dtype("utf-8")))
    names = _dataset_names(layers, per_residue)
    for layer in layers:
        pooled, residues = names[layer]
        _create(handle, pooled, part.pooled[layer].astype(np.float32, copy=False))
        if residues:
            _create(handle, residues, part.residues[layer].astype(np.float32, copy=False))
    if len(layers) > 1:
        handle["embeddings"] = handle[names[layers[0]][0]]  # a hard link: the first layer, no copy
        if per_residue:
            handle["residues"] = handle[names[layers[0]][1]]
    if per_residue:
        offsets = np.concatenate([[0], np.cumsum(part.counts, dtype=np.int64)]).astype(np.int64)
        _create(handle, "residue_offsets", offsets)


def _set_attrs(handle: h5py.File, attrs: dict) -> None:
    for key in sorted(attrs):
        value = attrs[key]
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, str):
            value = str(value)  # a str subclass (torch.__version__) has no HDF5 type
        handle.attrs[key] = value


def _atomic(path: Path, write) -> None:
    """Write an HDF5 file through a temporary file beside ``path``, synced, then renamed."""

    def fill(tmp: Path) -> None:
        with h5py.File(tmp, "w", libver=_LIBVER, track_order=False) as handle:
            write(handle)
        with open(tmp, "rb+") as raw:
            os.fsync(raw.fileno())

    write_atomic(path, fill)


def write_shard(path: Path, part: Part, layers: Sequence[int], per_residue: bool) -> None:
    """Write one chunk's shard atomically (a shard that exists is complete)."""
    try:
        _atomic(path, lambda handle: (_write_arrays(handle, part, layers, per_residue), _set_attrs(handle, part.attrs)))
    except OSError as exc:
        raise OutputError(f"cannot write shard {path}: {exc.strerror or exc}") from None


def read_shard_attrs(path: Path) -> dict | None:
    """A shard's attributes, or None when it cannot be read as a complete shard."""
    try:
        with h5py.File(path, "r") as handle:
            if "ids" not in handle or "embeddings" not in handle:
                return None
            attrs = {key: _plain(value) for key, value in handle.attrs.items()}
            if len(handle["ids"]) != attrs.get("count") or len(handle["embeddings"]) != attrs.get("count"):
                return None
            return attrs
    except (OSError, KeyError, ValueError):
        return None


def merge(shards: Sequence[Path], out: Path, layers: Sequence[int], per_residue: bool, attrs: dict) -> None:
    """Merge ``shards`` (in input order) into ``out`` atomically, one shard in memory at a time."""
    names = _dataset_names(layers, per_residue)
    sizes = []
    for shard in shards:
        with h5py.File(shard, "r") as handle:
            residues = int(handle["residue_offsets"][-1]) if per_residue else 0
            sizes.append((len(handle["ids"]), residues, handle["embeddings"].shape[1]))
    total = sum(n for n, _, _ in sizes)
    residues_total = sum(r for _, r, _ in sizes)
    width = sizes[0][2]

    def write(handle: h5py.File) -> None:
        ids = handle.create_dataset("ids", (total,), dtype=h5py.string_dtype("utf-8"), track_times=False)
        def dataset(name: str, rows: int):
            return handle.create_dataset(name, (rows, width), dtype=np.float32, track_times=False)

        pooled = {layer: dataset(names[layer][0], total) for layer in layers}
        residues = {layer: dataset(names[layer][1], residues_total) for layer in layers} if per_residue else {}
        offsets = np.zeros(total + 1, dtype=np.int64)
        row = residue = 0
        for shard, (count, rcount, _) in zip(shards, sizes):
            with h5py.File(shard, "r") as source:
                ids[row : row + count] = source["ids"][:]
                for layer in layers:
                    pooled[layer][row : row + count] = source[names[layer][0]][:]
                    if per_residue:
                        residues[layer][residue : residue + rcount] = source[names[layer][1]][:]
                if per_residue:
                    offsets[row + 1 : row + count + 1] = source["residue_offsets"][1:] + residue
            row, residue = row + count, residue + rcount
        if len(layers) > 1:
            handle["embeddings"] = handle[names[layers[0]][0]]
            if per_residue:
                handle["residues"] = handle[names[layers[0]][1]]
        if per_residue:
            _create(handle, "residue_offsets", offsets)
        _set_attrs(handle, attrs)

    try:
        _atomic(out, write)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None


def is_ours(path: Path) -> bool:
    """Whether ``path`` is an embeddings file written by fp16guard (one a rerun may replace)."""
    try:
        with h5py.File(path, "r") as handle:
            return _plain(handle.attrs.get("format")) == FORMAT
    except (OSError, ValueError):
        return False


@dataclass
class Embeddings:
    """An embeddings file read back: ids in input order, the pooled ``embeddings`` [N, D] (the
    first layer asked for), ``layers`` (layer -> [N, D]), per-residue ``residues`` (layer ->
    [R, D]) with ``residue_offsets`` [N + 1], and the file's ``metadata``."""

    ids: list[str]
    embeddings: np.ndarray
    layers: dict[int, np.ndarray]
    residues: dict[int, np.ndarray]
    residue_offsets: np.ndarray | None
    metadata: dict

    def residues_of(self, index: int, layer: int | None = None) -> np.ndarray:
        """Per-residue states of sequence ``index`` (of the first layer by default)."""
        if self.residue_offsets is None:
            raise InputError("this file has no per-residue embeddings (written without --per-residue)")
        layer = self.metadata["layers"][0] if layer is None else layer
        return self.residues[layer][self.residue_offsets[index] : self.residue_offsets[index + 1]]


def read_embeddings(path: str | Path) -> Embeddings:
    """Read a file written by ``fp16guard embed`` into memory (InputError if it is not one)."""
    path = Path(path)
    if not is_ours(path):
        raise InputError(f"{path}: not an embeddings file written by fp16guard embed")
    with h5py.File(path, "r") as handle:
        metadata = {key: _plain(value) for key, value in handle.attrs.items()}
        for key in ("policy", "layers", "spot_checks"):
            if isinstance(metadata.get(key), str):
                metadata[key] = json.loads(metadata[key])
        layers = list(metadata["layers"])
        per_residue = "residue_offsets" in handle
        names = _dataset_names(layers, per_residue)
        return Embeddings(
            ids=[s.decode("utf-8") if isinstance(s, bytes) else s for s in handle["ids"][:]],
            embeddings=handle["embeddings"][:],
            layers={layer: handle[names[layer][0]][:] for layer in layers},
            residues={layer: handle[names[layer][1]][:] for layer in layers} if per_residue else {},
            residue_offsets=handle["residue_offsets"][:] if per_residue else None,
            metadata=metadata,
        )


def _plain(value):
    """An HDF5 attribute as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
