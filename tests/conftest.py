import pytest

from fp16guard.testing import write_checkpoint

SMALL_FASTA = """>alpha human-like fragment
MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ
FEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVE
>beta
mkvlaagivgllLA
>gamma selenoprotein
MSCUGKKLLQWRTPPSTUVVDEXBZ
>delta
GGSGGSGGSGGSGGSGGSGGSGGSGGSGGSQQQQQQQQQQQQQQQQQQQQ
>epsilon
MDEKRPLLWYCA
"""


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Tiny fair-esm checkpoints: healthy, a planted residual overflow, a planted MLP overflow."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "healthy": write_checkpoint(root / "tiny_healthy.pt"),
        "residual": write_checkpoint(root / "tiny_residual.pt", plant="residual"),
        "mlp": write_checkpoint(root / "tiny_mlp.pt", plant="mlp"),
    }


@pytest.fixture()
def small_fasta(tmp_path):
    path = tmp_path / "small.fasta"
    path.write_text(SMALL_FASTA)
    return path
