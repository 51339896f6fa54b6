"""The one registry of targets (fp16guard.models.catalog.REGISTRY): every entry resolves to a
Target that takes its name from it, it stays light, and the families use the Target base class's
defaults without restating them. Each family's load leaves its tokenizer state as a typed
Encoding."""

import subprocess
import sys

import pytest
import torch

from fp16guard.core.config import ModelSource
from fp16guard.errors import InputError
from fp16guard.models import REGISTRY, adapter_for, get_target
from fp16guard.models.base import Encoding, Target
from fp16guard.models.catalog import catalog
from fp16guard.numerics.precision import apply_generic
from fp16guard.testing import build_model, save_checkpoint, write_dnabert, write_hf_bert

CAPABILITIES = ("ambiguity_codes", "supports_packing", "supports_compile", "packed_hidden_states", "compile_packed",
                "read_as_unknown", "block_orientation")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_target_resolves_to_a_target_named_by_its_entry(name):
    target = get_target(name)
    assert isinstance(target, Target) and target.spec is REGISTRY[name]
    assert target.name == name and target.description == REGISTRY[name].description
    assert target.default_sequences == REGISTRY[name].default_sequences


def test_an_unknown_target_names_the_registered_ones():
    with pytest.raises(InputError, match="unknown target 'esm3'; known: esm2, hf, antiberty, dnabert"):
        get_target("esm3")


def test_the_registry_and_the_catalog_import_no_torch():
    code = ("import sys\nimport fp16guard.models, fp16guard.models.catalog\nfp16guard.models.catalog.catalog()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_catalog_rows_name_registered_targets():
    assert {row.target for row in catalog()} <= set(REGISTRY)


def test_adapter_for_finds_each_family_and_falls_back_to_the_generic_converter(tmp_path):
    from fp16guard.models.dnabert import DnaBertConfig, DnaBertModel

    assert adapter_for(build_model(layers=1)) == get_target("esm2").apply_policy
    assert adapter_for(DnaBertModel(DnaBertConfig(num_hidden_layers=1))) == get_target("dnabert").apply_policy
    bert = get_target("hf").load(ModelSource(model=str(write_hf_bert(tmp_path / "bert")))).module
    assert adapter_for(bert) == get_target("hf").apply_policy
    assert adapter_for(torch.nn.Linear(2, 2)) is apply_generic


@pytest.mark.parametrize("name", list(REGISTRY))
def test_no_family_restates_a_default_it_keeps(name):
    """A capability a family's class defines itself differs from what it would inherit."""
    cls = type(get_target(name))
    for klass in cls.__mro__[: cls.__mro__.index(Target)]:
        parent = klass.__mro__[1]
        for capability in CAPABILITIES:
            if capability in vars(klass):
                assert vars(klass)[capability] != getattr(parent, capability, None), (klass, capability)


def test_esm2_encoding_holds_fair_esms_alphabet(tmp_path):
    from fp16guard.models.esm2 import EsmEncoding

    loaded = get_target("esm2").load(ModelSource(weights=save_checkpoint(build_model(layers=1), tmp_path / "m.pt")))
    encoding = loaded.encoding
    assert isinstance(encoding, EsmEncoding) and isinstance(encoding, Encoding)
    assert encoding.pad_id == encoding.alphabet.padding_idx


def test_hf_encoding_checks_ids_against_the_embedding_table(tmp_path):
    from fp16guard.models.hf import HfEncoding

    loaded = get_target("hf").load(ModelSource(model=str(write_hf_bert(tmp_path / "bert")), pooling="residues"))
    encoding = loaded.encoding
    assert isinstance(encoding, HfEncoding)
    assert encoding.pad_id == encoding.tokenizer.pad_token_id and encoding.separator == " "
    assert encoding.pooling == "residues" and encoding.marker == ""
    assert encoding.embedding_rows == loaded.module.get_input_embeddings().num_embeddings


def test_native_dnabert_encoding_reads_bases_as_written(tmp_path):
    from fp16guard.models.hf import HfEncoding

    loaded = get_target("dnabert").load(ModelSource(model=str(write_dnabert(tmp_path / "dna"))))
    encoding = loaded.encoding
    assert isinstance(encoding, HfEncoding) and loaded.target == "dnabert"
    assert encoding.separator == "" and encoding.pooling == "mean" and encoding.marker == ""
    assert encoding.embedding_rows is None and encoding.pad_id == encoding.tokenizer.pad_token_id
