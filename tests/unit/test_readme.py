"""The README's set-up section: the two commands a new user runs, and the CPU-only torch first."""

from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SETUP = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]


def test_setup_keeps_its_two_commands():
    assert 'pip install -e ".[antiberty]" && fp16guard validate antiberty' in SETUP
    assert 'pip install -e ".[test,antiberty]" && python -m pytest' in SETUP


def test_setup_says_how_to_install_the_cpu_only_torch_first():
    """Without it, pip pulls the multi-gigabyte CUDA build of torch onto a machine without a GPU."""
    cpu = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in SETUP
    assert SETUP.index(cpu) < SETUP.index('pip install -e ".[antiberty]"')
    assert "CUDA build of torch that you already use" in SETUP
