"""The registered targets, the models known to them, and where those live on disk. Light: no
torch, no transformers, nothing downloaded.

``fp16guard list`` and the CLI read this; the targets take their names and resolve their paths
through it, so they all agree.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

#: ESM-2 checkpoint name -> (layers, embedding dim, attention heads), as published with fair-esm.
ESM2_CHECKPOINTS: dict[str, tuple[int, int, int]] = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}
ESM2_DEFAULT = "esm2_t33_650M_UR50D"  # the default of validate esm2


#: DNABERT checkpoints on the Hugging Face hub that ``validate dnabert`` runs natively; the first
#: is its default.
DNABERT_MODELS: dict[str, str] = {
    "zhihan1996/DNABERT-S": "DNABERT-S: species-aware DNA embeddings (12 layers, 768 dims); "
    "default of validate dnabert",
    "zhihan1996/DNABERT-2-117M": "DNABERT-2: multi-species genome model (12 layers, 768 dims)",
}
DNABERT_DEFAULT = next(iter(DNABERT_MODELS))


#: Hub id prefixes (case-insensitive) of model families that ``validate hf`` runs, for the
#: description of a cached snapshot in ``fp16guard list``. No preset: no PyPI package ships them.
HF_FAMILIES: dict[str, str] = {
    "Rostlab/prot_t5": "ProtT5: T5 encoder (T5EncoderModel), space-separated residues",
    "Rostlab/ProstT5": "ProstT5: T5 encoder (T5EncoderModel), space-separated residues after <AA2fold>",
    "ElnaggarLab/ankh": "Ankh: T5 encoder (T5EncoderModel)",
}


def hf_family(model_id: str) -> str | None:
    """The known family of a hub id (ProtT5, Ankh), or None."""
    lowered = model_id.lower()
    return next((d for prefix, d in HF_FAMILIES.items() if lowered.startswith(prefix.lower())), None)


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.getenv("TORCH_HOME", os.path.join(cache, "torch"))
    return Path(os.path.expanduser(home)) / "hub"


def esm2_checkpoint_path(name: str) -> Path:
    """Where fair-esm's hub loading keeps a named checkpoint."""
    return torch_hub_dir() / "checkpoints" / f"{name}.pt"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.getenv("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    home = os.getenv("HF_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache")), "huggingface"))
    return Path(os.path.expanduser(home)) / "hub"


def hf_cached_snapshot(model_id: str) -> Path | None:
    """A snapshot of ``model_id`` in the Hugging Face cache holding config.json and weights, or None."""
    snapshots = hf_hub_cache() / ("models--" + model_id.replace("/", "--")) / "snapshots"
    for snapshot in sorted(snapshots.glob("*")):
        weights = any(snapshot.glob("*.safetensors")) or any(snapshot.glob("pytorch_model*.bin"))
        if (snapshot / "config.json").is_file() and weights:
            return snapshot
    return None


def hf_cached_models() -> list[str]:
    """Model ids with a snapshot in the Hugging Face cache."""
    cache = hf_hub_cache()
    if not cache.is_dir():
        return []
    ids = []
    for entry in sorted(cache.glob("models--*")):
        if any((entry / "snapshots").glob("*")):
            ids.append(entry.name[len("models--") :].replace("--", "/"))
    return ids


@dataclass(frozen=True)
class Preset:
    """A trained model that a PyPI package ships inside itself, so it works offline."""

    name: str
    description: str
    package: str  # import name of the package that ships the weights
    requirement: str  # what to pip install
    model_dir: str  # relative to the package directory: config.json + weights
    vocab_file: str  # relative to the package directory
    default_sequences: str
    licence: str

    def package_dir(self) -> Path | None:
        """The installed package's directory, found without importing (running) it."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])

    def available(self) -> bool:
        """Whether the package and its model's config.json are installed."""
        root = self.package_dir()
        return root is not None and (root / self.model_dir / "config.json").is_file()


PRESETS: dict[str, Preset] = {
    "antiberty": Preset(
        name="antiberty",
        description="AntiBERTy: a 26M-parameter BERT trained on antibody sequences (8 layers, 512 hidden)",
        package="antiberty",
        requirement="fp16guard[antiberty]  (antiberty==0.1.3)",
        model_dir="trained_models/AntiBERTy_md_smooth",
        vocab_file="trained_models/vocab.txt",
        default_sequences="antibody_reference.fasta",
        licence="MIT",
    )
}


@dataclass(frozen=True)
class CatalogEntry:
    """One row of ``fp16guard list``."""

    target: str
    name: str
    description: str
    available: bool
    where: str


@dataclass(frozen=True)
class TargetSpec:
    """One registered model family, known without importing it (no torch): its Target instance
    is imported on first use, from ``location``."""

    name: str  # `fp16guard validate NAME`, `fp16guard embed NAME`, the report's target
    description: str
    location: str  # "module:attribute" of its Target instance
    default_sequences: str  # the bundled reference set validate reads without --sequences
    default_model: str | None = None  # what --model defaults to; None: the user names one, or a preset pins it
    preset: Preset | None = None  # the packaged model the target is pinned to

    @property
    def converts_user_models(self) -> bool:
        """Whether ``apply_policy`` offers this target's converter for a user's model (a preset
        converts as the family it is an instance of)."""
        return self.preset is None


ESM2_SPEC = TargetSpec(
    "esm2", "ESM-2 protein models through fair-esm (named checkpoints or a local .pt)", "fp16guard.models.esm2:TARGET",
    "protein_reference.fasta", default_model=ESM2_DEFAULT,
)
HF_SPEC = TargetSpec(
    "hf", "any Hugging Face encoder (AutoModel) from a local directory or the hub cache", "fp16guard.models.hf:HF",
    "protein_reference.fasta",
)
ANTIBERTY_SPEC = TargetSpec(
    "antiberty", PRESETS["antiberty"].description, "fp16guard.models.hf:ANTIBERTY",
    PRESETS["antiberty"].default_sequences, preset=PRESETS["antiberty"],
)
DNABERT_SPEC = TargetSpec(
    "dnabert", "DNABERT-2 / DNABERT-S, native implementation (no remote code)", "fp16guard.models.dnabert:TARGET",
    "dna_reference.fasta", default_model=DNABERT_DEFAULT,
)
#: Every target by name, in the order messages list them.
REGISTRY: dict[str, TargetSpec] = {spec.name: spec for spec in (ESM2_SPEC, HF_SPEC, ANTIBERTY_SPEC, DNABERT_SPEC)}


def catalog() -> list[CatalogEntry]:
    """Every known model with whether it is on this machine; checks paths only."""
    rows = []
    for name, (layers, dim, heads) in ESM2_CHECKPOINTS.items():
        path = esm2_checkpoint_path(name)
        shape = f"{layers} layers, {dim} dims, {heads} heads"
        rows.append(CatalogEntry(ESM2_SPEC.name, name, shape, path.is_file(), str(path)))
    for spec in REGISTRY.values():
        if (preset := spec.preset) is not None:
            root = preset.package_dir()
            where = str(root / preset.model_dir) if root else f"pip install '{preset.requirement.split()[0]}'"
            rows.append(CatalogEntry(spec.name, preset.name, preset.description, preset.available(), where))
    for model_id, description in DNABERT_MODELS.items():
        snapshot = hf_cached_snapshot(model_id)
        where = str(snapshot) if snapshot else f"downloaded on first use into {hf_hub_cache()}"
        rows.append(CatalogEntry(DNABERT_SPEC.name, model_id, description, snapshot is not None, where))
    for model_id in hf_cached_models():
        if model_id not in DNABERT_MODELS:
            family = hf_family(model_id)
            description = f"{family}; in the Hugging Face cache" if family else "in the Hugging Face cache"
            rows.append(CatalogEntry(HF_SPEC.name, model_id, description, True, str(hf_hub_cache())))
    return rows
