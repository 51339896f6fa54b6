"""Output paths checked before a run, files created with the umask's permissions, stale reports
cleared."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from test_report import make_report  # the unit tests' report builder

import fp16guard.io.outputs as outputs
from fp16guard.errors import InputError, OutputError
from fp16guard.io.embedfile import Part, merge, read_embeddings, write_shard
from fp16guard.io.files import create_temp, write_atomic
from fp16guard.io.outputs import (
    ERROR_LOG,
    REPORT_FILES,
    check_outputs,
    clear_reports,
    write_error_log,
    write_text_atomic,
)
from fp16guard.io.reference import save_reference
from fp16guard.report.writer import FORMATS, write_policy, write_report


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _part() -> Part:
    """One chunk of two sequences' pooled embeddings (layer 6), as an embed run writes a shard."""
    return Part(ids=["a", "b"], pooled={6: np.ones((2, 3), dtype=np.float32)}, attrs={"count": 2, "format": "x"})


@pytest.fixture()
def umask():
    """Set the process umask for one test, and restore it."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


# --------------------------------------------------------------------------- the check


def test_an_out_that_is_a_file_is_refused_by_name(tmp_path):
    out = tmp_path / "outfile"
    out.write_text("")
    with pytest.raises(InputError, match="--out .*outfile.* is a file, not a directory"):
        check_outputs(out=out)
    with pytest.raises(InputError, match="is a file, not a directory"):
        check_outputs(out=out / "sub")


@pytest.mark.parametrize("name", REPORT_FILES + (ERROR_LOG,))
def test_a_report_file_that_is_a_directory_is_refused(tmp_path, name):
    (tmp_path / "out" / name).mkdir(parents=True)
    with pytest.raises(InputError, match=name):
        check_outputs(out=tmp_path / "out")


def test_policy_and_reference_paths(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(InputError, match="--save-policy .* is a directory"):
        check_outputs(save_policy=tmp_path)
    with pytest.raises(InputError, match="--save-reference .*afile/ref.npz: .*afile is a file"):
        check_outputs(save_reference=tmp_path / "afile" / "ref.npz")
    check_outputs(tmp_path / "new" / "out", tmp_path / "new" / "p.json", tmp_path / "deeper" / "r.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # the check creates nothing


def test_a_directory_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    """Whatever the user (root ignores modes), a directory that access() calls read-only."""
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match="--out .* not writable"):
        check_outputs(out=tmp_path / "out")
    with pytest.raises(InputError, match="--save-policy .* not writable"):
        check_outputs(save_policy=tmp_path / "p.json")


def test_a_directory_where_a_file_cannot_be_created_is_refused(tmp_path, monkeypatch):
    """access() may say yes where a write fails (root on /proc, network file systems)."""

    def refuse(path, flags, mode=0o777):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.os, "open", refuse)
    with pytest.raises(InputError, match="not writable .*Permission denied"):
        check_outputs(out=tmp_path / "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for kwargs in ({"out": ro / "out"}, {"save_policy": ro / "p.json"}, {"save_reference": ro / "r.npz"}):
            with pytest.raises(InputError, match="not writable"):
                check_outputs(**kwargs)
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------- permissions


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_files_are_created_with_the_umask(tmp_path, umask, mask):
    umask(mask)
    expected = 0o666 & ~mask
    write_text_atomic(tmp_path / "report.json", "{}\n")
    assert _mode(tmp_path / "report.json") == expected
    save_reference(tmp_path / "ref.npz", torch.ones(2, 3), ["a", "b"], {"target": "esm2"})
    assert _mode(tmp_path / "ref.npz") == expected
    fd, tmp = create_temp(tmp_path / "x")
    os.close(fd)
    assert _mode(tmp) == expected
    assert write_error_log(tmp_path / "out", "trace\n") is not None
    assert _mode(tmp_path / "out" / ERROR_LOG) == expected
    write_shard(tmp_path / "shard.h5", _part(), [6], per_residue=False)  # h5py reopens the temporary by name
    assert _mode(tmp_path / "shard.h5") == expected


def test_the_report_and_policy_files_follow_the_umask(tmp_path, umask):
    umask(0o022)
    report = make_report(passed=True)
    paths = write_report(report, tmp_path / "out")
    assert {p.name for p in paths} >= {f.filename for f in FORMATS}
    assert all(_mode(p) == 0o644 for p in paths)
    assert _mode(write_policy(report, tmp_path / "policy.json")) == 0o644


def test_every_report_format_is_a_known_report_file():
    assert {f.filename for f in FORMATS} <= set(REPORT_FILES)


# --------------------------------------------------------------------------- stale reports


def test_clear_reports_removes_only_the_report_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in (*REPORT_FILES, ERROR_LOG, "mine.txt"):
        (out / name).write_text("old")
    removed = clear_reports(out)
    assert sorted(p.name for p in removed) == sorted((*REPORT_FILES, ERROR_LOG))
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert clear_reports(tmp_path / "missing") == []


def test_a_write_that_fails_after_the_check_is_an_output_error(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", full)
    with pytest.raises(OutputError, match="report.json: No space left on device"):
        write_report(make_report(), tmp_path / "out")
    assert OutputError.exit_code == 3


# --------------------------------------------------------------------------- the one atomic write


def test_write_atomic_hands_an_open_file_or_a_path(tmp_path):
    target = tmp_path / "f.bin"
    write_atomic(target, lambda handle: handle.write(b"\x00bytes"), mode="wb")
    assert target.read_bytes() == b"\x00bytes"
    seen = []

    def by_name(tmp):
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.name.startswith(".f.bin.") and tmp.read_bytes() == b""
        tmp.write_text("by name")

    write_atomic(target, by_name)
    assert target.read_text() == "by name" and not seen[0].exists()
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


@pytest.mark.parametrize("mode", ["wb", None])
@pytest.mark.parametrize("error", [ValueError("bad data"), OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, mode, error):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def fail(handle_or_path):
        if mode is None:
            handle_or_path.write_bytes(b"half")
        else:
            handle_or_path.write(b"half")
        raise error

    with pytest.raises(type(error)):
        write_atomic(target, fail, mode=mode)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_write_atomic_needs_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "f.bin", lambda handle: handle.write(b""), mode="wb")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path: save_reference(path, torch.ones(2, 3), ["a", "b"], {"target": "esm2"}),
         "cannot write the FP32 reference to {path}: No space left on device"),
        (lambda path: write_shard(path, _part(), [6], per_residue=False),
         "cannot write shard {path}: No space left on device"),
        (lambda path: write_policy(make_report(passed=True), path),
         "cannot write the policy to {path}: No space left on device"),
    ],
)
def test_every_writer_reports_a_failed_rename_by_name_and_cleans_up(tmp_path, monkeypatch, write, message):
    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", full)
    path = tmp_path / "file"
    with pytest.raises(OutputError) as caught:
        write(path)
    assert str(caught.value) == message.format(path=path)
    assert list(tmp_path.iterdir()) == []


def test_a_merged_embeddings_file_is_written_atomically(tmp_path, monkeypatch):
    shard = tmp_path / "shard.h5"
    write_shard(shard, _part(), [6], per_residue=False)
    out = tmp_path / "emb.h5"
    attrs = {"format": "fp16guard-embeddings", "layers": [6], "count": 2}
    merge([shard], out, [6], per_residue=False, attrs=attrs)
    assert read_embeddings(out).ids == ["a", "b"]
    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", full)
    with pytest.raises(OutputError, match=f"^cannot write {out}: No space left on device$"):
        merge([shard], out, [6], per_residue=False, attrs=attrs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.h5", "shard.h5"]
    assert read_embeddings(out).ids == ["a", "b"]
