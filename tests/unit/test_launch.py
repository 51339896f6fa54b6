"""The ``--gpus`` launcher: the ranks' environment, exit codes, and stopping the others."""

import os
import sys
import time

from fp16guard.execution.launch import EXIT_CODE_FILE_ENV, launch, worker_environments

# A worker is any command; these ones are plain Python, no torch, and behave by rank.
WORKER = [sys.executable, "-c"]


def _worker(body: str) -> list[str]:
    return [*WORKER, "import os, sys, time, signal, pathlib\nrank = int(os.environ['RANK'])\n" + body]


def test_every_rank_gets_torchruns_variables(tmp_path):
    envs = worker_environments(3, tmp_path / "code", 29512)
    assert [e["RANK"] for e in envs] == [e["LOCAL_RANK"] for e in envs] == ["0", "1", "2"]
    assert {e["WORLD_SIZE"] for e in envs} == {e["LOCAL_WORLD_SIZE"] for e in envs} == {"3"}
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs} == {("127.0.0.1", "29512")}
    assert {e[EXIT_CODE_FILE_ENV] for e in envs} == {str(tmp_path / "code")}
    assert all(int(e["OMP_NUM_THREADS"]) >= 1 for e in envs)


def test_the_agreed_code_comes_from_the_file_rank_0_writes():
    body = "if rank == 0:\n    pathlib.Path(os.environ['FP16GUARD_EXIT_CODE_FILE']).write_text('1\\n')\nsys.exit(0)"
    assert launch(["validate"], 2, worker=_worker(body)) == 1


def test_the_arguments_reach_every_rank_without_gpus(tmp_path):
    body = f"pathlib.Path(r'{tmp_path}', str(rank)).write_text(' '.join(sys.argv[1:]))"
    launch(["validate", "esm2", "--gpus", "2", "-o", "out"], 2, worker=_worker(body))
    assert [(tmp_path / r).read_text() for r in "01"] == ["validate esm2 -o out"] * 2


def test_a_rank_that_fails_alone_stops_the_others_and_keeps_its_code():
    # Rank 1 fails at once; rank 0 would otherwise wait a minute for it at a gather.
    body = "if rank == 1:\n    sys.exit(2)\ntime.sleep(60)"
    start = time.monotonic()
    assert launch(["validate"], 2, worker=_worker(body)) == 2
    assert time.monotonic() - start < 30


def test_a_crash_is_an_error_never_a_verdict():
    # A traceback exits 1, which would read as an accuracy failure; a signal is negative.
    assert launch(["validate"], 2, worker=_worker("if rank == 1:\n    raise RuntimeError('boom')\ntime.sleep(60)")) == 3
    assert launch(["validate"], 2, worker=_worker("if rank == 0:\n    os.kill(os.getpid(), "
                                                  "signal.SIGKILL)\ntime.sleep(60)")) == 3


def test_a_workers_internal_error_keeps_its_code():
    """A worker reports its own internal error in one line and exits 4; the launcher keeps it."""
    assert launch(["validate"], 2, worker=_worker("if rank == 1:\n    sys.exit(4)\ntime.sleep(60)")) == 4


def test_ranks_that_end_without_an_agreed_code_are_an_error():
    assert launch(["validate"], 2, worker=_worker("sys.exit(0)")) == 3


def test_a_worker_that_ignores_sigterm_is_killed(monkeypatch):
    import fp16guard.execution.launch as launch_module

    monkeypatch.setattr(launch_module, "STOP_GRACE_SECONDS", 1.0)
    body = (
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if rank == 1:\n    time.sleep(0.5)\n    sys.exit(3)\n"
        "time.sleep(60)"
    )
    start = time.monotonic()
    assert launch(["validate"], 2, worker=_worker(body)) == 3
    assert time.monotonic() - start < 30
    assert os.environ.get(EXIT_CODE_FILE_ENV) is None  # the parent's own environment is untouched


def test_a_sigterm_to_the_launcher_stops_its_workers(tmp_path):
    """A cancelled job must not leave ranks behind, holding their GPUs."""
    import signal
    import subprocess

    body = f"pathlib.Path(r'{tmp_path}', str(rank)).write_text(str(os.getpid()))\ntime.sleep(60)"
    script = (
        "import sys\nfrom fp16guard.execution.launch import launch\n"
        f"sys.exit(launch(['validate'], 2, worker={_worker(body)!r}))\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int(f.read_text()) for f in tmp_path.iterdir()]
    assert len(pids) == 2
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 128 + signal.SIGTERM
    for pid in pids:  # reaped by the launcher: no such process any more
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"worker {pid} outlived the launcher")
