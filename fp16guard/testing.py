"""ESM-2 checkpoints in fair-esm's on-disk format, healthy or with planted FP16 failures.

For tests and benchmarks of fp16guard, and for anyone who wants to see a gate fail on purpose.
Random-weight models never show FP16 problems, so the failures are planted: genuine FP16
numerics (values beyond FP16's largest finite number, 65504, inside the network) while the same
weights stay finite in FP32.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

LAYERS, DIM, HEADS = 3, 32, 4


def build_model(layers: int = LAYERS, dim: int = DIM, heads: int = HEADS, seed: int = 0):
    """A random-weight fair-esm ESM2 (FP32)."""
    from esm.model.esm2 import ESM2

    torch.manual_seed(seed)
    return ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads, alphabet="ESM-1b", token_dropout=True)


def plant_residual_overflow(model, channel: int = 3) -> None:
    """Two MLP biases of 4e4 (exact in FP16) push one residual channel to ~8e4 after layer 1:
    Inf in an FP16 residual stream, fine in an FP32 one."""
    with torch.no_grad():
        for layer in model.layers[:2]:
            layer.fc2.bias[channel] = 40000.0


def plant_mlp_overflow(model, layer: int = 1, unit: int = 5) -> None:
    """An fc1 unit whose pre-activation is ~2.5x FP16's largest value on every token: the FP16
    matmul output is Inf whatever stays in FP32 around it, while FP32 computes it fine."""
    with torch.no_grad():
        block = model.layers[layer]
        block.final_layer_norm.bias.fill_(1.0)
        # The layer norm's output averages ~1 per channel, so the dot product is ~weight x dim.
        block.fc1.weight[unit].fill_(2.5 * 65504 / model.embed_dim)


def plant_neighbour_collapse(model, offset: float = 5000.0, seed: int = 1) -> None:
    """A large common offset in the residual stream: the last block's fc2 bias becomes a fixed
    pattern of +-``offset`` per channel, added to every token of every sequence.

    Trained transformers carry such shared components ("massive activations", an anisotropic
    embedding space); what tells sequences apart is a small remainder on top of them (about 1.2
    per channel in the tiny model). FP16 has 11 significant bits: between 4096 and 8192 its
    spacing is 4, so the FP16 residual add rounds each token's remainder to a grid coarser than
    the remainder itself; and the final layer norm's FP16 output (about 1 per channel, spacing
    1e-3) is rounded again at the size of the normalised remainder (1.2 / 5000). Related
    sequences, whose remainders differ by less than that, collapse onto the same values or jump
    apart at random: their neighbours change. The shared part dominates every embedding, so
    each still has cosine > 0.99999 to its FP32 self and a cosine gate passes. FP32 (24 bits,
    spacing 5e-4 next to 5000) keeps the remainder."""
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (model.embed_dim,), generator=generator).float() * 2 - 1
    with torch.no_grad():
        model.layers[-1].fc2.bias.copy_(offset * signs)


def related_sequences(families: int = 3, size: int = 20, length: int = 90, seed: int = 0) -> list[tuple[str, str]]:
    """(id, sequence) pairs in ``families`` families of ``size`` close relatives: a random parent
    and point mutants of it (1 to 4 substitutions each), so that every sequence has near
    neighbours whose order is decided by small differences. Deterministic in ``seed``."""
    import random

    rng = random.Random(seed)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    out = []
    for family in range(families):
        parent = "M" + "".join(rng.choice(letters) for _ in range(length - 1))
        out.append((f"fam{family}_parent", parent))
        for member in range(1, size):
            residues = list(parent)
            for position in rng.sample(range(1, length), rng.randint(1, 4)):
                residues[position] = rng.choice(letters.replace(residues[position], ""))
            out.append((f"fam{family}_variant{member:02d}", "".join(residues)))
    return out


def write_fasta(records: list[tuple[str, str]], path: Path) -> Path:
    """Write (id, sequence) pairs as a FASTA file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in records))
    return path


def save_checkpoint(model, path: Path) -> Path:
    """Write ``model`` as fair-esm's released ESM-2 files are laid out: prefixed keys and a cfg
    holding an argparse.Namespace; no contact-regression weights."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("contact_head.regression"):
            continue
        prefix = "encoder." if key.startswith("lm_head") else "encoder.sentence_encoder."
        state[prefix + key] = value.clone()
    cfg = argparse.Namespace(
        encoder_layers=model.num_layers,
        encoder_embed_dim=model.embed_dim,
        encoder_attention_heads=model.attention_heads,
        token_dropout=model.token_dropout,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    return path


#: architecture name -> (layers, embedding dim, attention heads) for random-weight stand-ins
ARCHITECTURES = {
    "tiny": (LAYERS, DIM, HEADS),
    "8M": (6, 320, 20),
    "35M": (12, 480, 20),
    "117M": (12, 768, 12),  # DNABERT-2 / DNABERT-S
    "650M": (33, 1280, 20),
    "3B": (36, 2560, 40),
}


def write_checkpoint(path: Path, plant: str | None = None, plant_layer: int = 1, **shape) -> Path:
    """Healthy (``plant=None``), ``"residual"`` (fixed by fp16+res32), ``"mlp"`` (in layer
    ``plant_layer``, counted from 0: no rung fixes it, an FP32 block does) or ``"collapse"``
    (every cosine passes, neighbours change: see plant_neighbour_collapse)."""
    model = build_model(**shape)
    if plant == "residual":
        plant_residual_overflow(model)
    elif plant == "mlp":
        plant_mlp_overflow(model, layer=plant_layer)
    elif plant == "collapse":
        plant_neighbour_collapse(model)
    elif plant is not None:
        raise ValueError(plant)
    return save_checkpoint(model, path)


# --- Hugging Face encoders (save_pretrained directories with their tokenizers) ----------------

PROTEIN_LETTERS = "ACDEFGHIKLMNPQRSTVWYXBUZO"


def _write_vocab(directory: Path, tokens: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


def _save_pretrained(directory: Path, model, tokenizer) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_hf_bert(directory: Path, plant: str | None = None, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A ProtBERT-style BertModel directory: config.json, model.safetensors, and a word-piece
    tokenizer of single residues (space-separated input), written with save_pretrained.

    ``plant="residual"``: a post-LN residual add in layer 0 that reaches ~7e4 (beyond FP16)
    while each of its operands stays representable; an FP32 residual add rescues it."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(seed)
    _write_vocab(directory, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PROTEIN_LETTERS])
    tokenizer = BertTokenizerFast.from_pretrained(directory, do_lower_case=False)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=4 * hidden, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
    )
    model = BertModel(config).eval()
    if plant == "residual":
        with torch.no_grad():
            block = model.encoder.layer[0]
            block.attention.output.LayerNorm.bias[3] = 30000.0
            block.output.dense.bias[3] = 40000.0
    elif plant is not None:
        raise ValueError(plant)
    return _save_pretrained(directory, model, tokenizer)


def write_hf_esm(
    directory: Path, plant: str | None = None, layers: int = 3, hidden: int = 32, heads: int = 4, seed: int = 0
) -> Path:
    """A transformers EsmModel directory (rotary, pre-LN) with its tokenizer.

    ``plant="residual"``: two MLP output biases of 4e4 push the residual stream to ~8e4."""
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    torch.manual_seed(seed)
    tokens = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-", "<null_1>", "<mask>"]
    _write_vocab(directory, tokens)
    tokenizer = EsmTokenizer.from_pretrained(directory)
    config = EsmConfig(
        vocab_size=len(tokens), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=1026, position_embedding_type="rotary",
        pad_token_id=tokenizer.pad_token_id, mask_token_id=tokenizer.mask_token_id, token_dropout=True,
        emb_layer_norm_before=False,
    )
    model = EsmModel(config, add_pooling_layer=False).eval()
    if plant == "residual":
        with torch.no_grad():
            for block in model.encoder.layer[:2]:
                block.output.dense.bias[3] = 40000.0
    elif plant is not None:
        raise ValueError(plant)
    return _save_pretrained(directory, model, tokenizer)


# --- DNABERT-S layout: config.json with auto_map, pytorch_model.bin, a byte-pair tokenizer -----

DNABERT_SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def synthetic_dna(count: int, length: int, seed: int = 0, with_n: bool = True) -> list[str]:
    """Random DNA with varied GC content and (``with_n``) occasional N, for training a tiny tokenizer."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        gc = rng.uniform(0.3, 0.7)
        weights = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2, 0.002 if with_n else 0.0]
        out.append("".join(rng.choices("ACGTN", weights=weights, k=length)))
    return out


def write_dnabert(
    directory: Path, plant: str | None = None, layers: int = 2, hidden: int = 32, heads: int = 4,
    intermediate: int = 64, vocab_size: int = 128, seed: int = 0, prefix: str = "bert.", corpus: int = 200,
    with_n: bool = True,
) -> Path:
    """A directory laid out as zhihan1996/DNABERT-S is: config.json (with the auto_map of its
    remote code), pytorch_model.bin saved from the masked-LM class (``bert.`` prefix plus
    ``cls.*`` head weights), and a byte-pair tokenizer trained on synthetic DNA.

    ``plant="residual"``: a post-LN residual add beyond FP16 in layer 0 (fixed by FP32 residual
    adds); ``plant="mlp"``: a gated-MLP unit whose pre-activation overflows FP16 (unfixable).
    ``with_n=False``: the tokenizer is trained on clean A/C/G/T, so its vocabulary has no N (it
    reads N as its unknown token)."""
    from fp16guard.models.dnabert import DnaBertConfig, DnaBertModel

    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = _dnabert_tokenizer(directory, vocab_size, seed, corpus, with_n)
    config = DnaBertConfig(
        vocab_size=vocabulary, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate,
    )
    torch.manual_seed(seed)
    model = DnaBertModel(config)
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=0.02)
    _plant_dnabert(model, plant)
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    state["cls.predictions.transform.dense.weight"] = torch.zeros(hidden, hidden)
    state["cls.predictions.decoder.bias"] = torch.zeros(config.vocab_size)
    torch.save(state, directory / "pytorch_model.bin")
    (directory / "config.json").write_text(json.dumps(_dnabert_settings(config), indent=2) + "\n")
    return directory


def _dnabert_tokenizer(directory: Path, vocab_size: int, seed: int, corpus: int, with_n: bool) -> int:
    """Train DNABERT's byte-pair tokenizer on synthetic DNA and save it in ``directory``; its
    vocabulary size."""
    from tokenizers import Tokenizer, models, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    letters = "ACGTN" if with_n else "ACGT"
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=DNABERT_SPECIALS, initial_alphabet=list(letters)
    )
    bpe.train_from_iterator(synthetic_dna(corpus, 300, seed, with_n), trainer)
    cls_id, sep_id = bpe.token_to_id("[CLS]"), bpe.token_to_id("[SEP]")
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
        mask_token="[MASK]",
    )
    tokenizer.save_pretrained(directory)
    return bpe.get_vocab_size()


def _plant_dnabert(model, plant: str | None) -> None:
    """Plant write_dnabert's ``plant`` failure in layer 0 of ``model``."""
    if plant is None:
        return
    block = model.encoder.layer[0]
    with torch.no_grad():
        if plant == "residual":
            block.attention.output.LayerNorm.bias[3] = 30000.0
            block.mlp.gated_layers.weight[:, 3] = 0.0  # the gated product would square it
            block.mlp.wo.bias[3] = 40000.0
        elif plant == "mlp":
            block.attention.output.LayerNorm.bias.fill_(1.0)
            block.mlp.gated_layers.weight[5].fill_(2500.0)
        else:
            raise ValueError(plant)


def _dnabert_settings(config) -> dict:
    """DNABERT-S's config.json for a model of ``config``'s shape."""
    return {
        "_name_or_path": "zhihan1996/DNABERT-S",
        "alibi_starting_size": 512,
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_bert.BertConfig",
            "AutoModel": "bert_layers.BertModel",
            "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
        },
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.intermediate_size,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": 2,
        "vocab_size": config.vocab_size,
    }


# --- T5 encoders (ProtT5, Ankh layout): save_pretrained directories with a residue tokenizer ----

#: ProtT5's residues: the 20 standard amino acids and X; U, Z, O and B are not in this vocabulary
#: (ProtT5's users map them to X before tokenizing).
T5_RESIDUES = "ALGVSREDTIPKFQNYMHWCX"

#: name -> (layers, d_model, d_ff, heads, d_kv, gated) of random-weight T5 encoders. ProtT5-XL-U50
#: is T5 v1 style (ReLU feed-forward, ``feed_forward_proj="relu"``); Ankh is T5 v1.1 style
#: (gated GELU). ProtT5-XL's sizes as its config.json gives them. Ankh's layers, widths and heads
#: as the model card of a public re-implementation lists them (Synthyra/ANKH_base on the Hugging
#: Face hub: base 48 x 768, 12 heads; large 48 x 1536, 16 heads, gelu_new). The feed-forward
#: widths are not read from Ankh's config files, but the encoders they give have the parameter
#: counts that model card lists (453.2M for base against its 453.3M, 1151.7M for large against
#: 1.15B; the vocabulary adds only about 0.1M), so the widths fit: another width by 64 would move
#: the count by 7M (base) to 14M (large).
T5_ARCHITECTURES = {
    "t5_tiny": (3, 32, 64, 4, 8, False),
    "t5_tiny_gated": (3, 32, 64, 4, 8, True),
    "prot_t5_xl": (24, 1024, 16384, 32, 128, False),
    "ankh_base": (48, 768, 3072, 12, 64, True),
    "ankh_large": (48, 1536, 3840, 16, 64, True),
}


def _residue_tokenizer(directory: Path, spaced: bool):
    """A word-level tokenizer of single residues with T5's special tokens (<pad> 0, </s> 1,
    <unk> 2) and </s> after each sequence. ``spaced``: residues are read only when separated by
    spaces (ProtT5's convention); otherwise each character is a token."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(T5_RESIDUES)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    if spaced:
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


#: ProtT5's residue pieces, in the order of its vocabulary (ids 3 to 27), each with
#: SentencePiece's word-start mark: residues are read only when separated by spaces.
PROT_T5_PIECES = "ALGVSREDTIPKFQNYMHWCXBOUZ"


def _sentencepiece_tokenizer(directory: Path, bare: bool = False):
    """A tokenizer laid out as ProtT5's: a SentencePiece model (``spiece.model``, no
    tokenizer.json) of <pad> 0, </s> 1, <unk> 2 and one piece per residue ("▁A", ...), 100 extra
    ids, ``T5Tokenizer`` in tokenizer_config.json; 128 tokens in all. ``bare``: bare residue
    pieces ("A", ...) as well, after the word-start ones, so that unspaced text also tokenises
    without unknowns. Needs the sentencepiece and protobuf packages (the ``t5`` extra), as the
    real files do."""
    from sentencepiece import sentencepiece_model_pb2 as proto
    from transformers import AutoTokenizer

    model = proto.ModelProto()
    model.trainer_spec.model_type = proto.TrainerSpec.UNIGRAM
    model.trainer_spec.vocab_size = 3 + len(PROT_T5_PIECES) * (2 if bare else 1)
    trainer = model.trainer_spec
    trainer.pad_id, trainer.eos_id, trainer.unk_id, trainer.bos_id = 0, 1, 2, -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = True
    model.normalizer_spec.escape_whitespaces = True
    kinds = proto.ModelProto.SentencePiece
    for piece, kind in (("<pad>", kinds.CONTROL), ("</s>", kinds.CONTROL), ("<unk>", kinds.UNKNOWN)):
        entry = model.pieces.add()
        entry.piece, entry.score, entry.type = piece, 0.0, kind
    for rank, residue in enumerate(PROT_T5_PIECES):
        entry = model.pieces.add()
        entry.piece, entry.score, entry.type = "\u2581" + residue, -float(rank + 1), kinds.NORMAL
    for rank, residue in enumerate(PROT_T5_PIECES if bare else ""):
        entry = model.pieces.add()
        entry.piece, entry.score, entry.type = residue, -float(len(PROT_T5_PIECES) + rank + 1), kinds.NORMAL
    (directory / "spiece.model").write_bytes(model.SerializeToString())
    settings = {"tokenizer_class": "T5Tokenizer", "do_lower_case": False, "extra_ids": 100,
                "model_max_length": 1000000000, "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return AutoTokenizer.from_pretrained(directory)


def plant_wo_overflow(model, block: int = 1, channel: int = 3, unit: int = 5, seed: int = 0) -> None:
    """One feed-forward unit of ``block`` that fires on every token and a ``wo`` column that turns
    it into an output beyond FP16's 65504 in one channel (about 3x) and a large but finite value
    in another (about 0.5x): Inf under ``.half()`` (clamped by T5 to 64504, which distorts the
    ratio of the two channels), exact with FP32 ``wo``.

    The unit reads a channel that the input embeddings hold at 30 for every residue (real T5s
    have such outlier channels), so it fires on real sequences: random blocks before it spread
    a channel by a standard deviation of about 2 at depth 20, far from turning it negative. The
    weights are calibrated on the FP32 model so that every token lands in range."""
    config = model.config
    ffn = model.encoder.block[block].layer[-1]
    dense = ffn.DenseReluDense
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.shared.weight.normal_(0.0, 1.0, generator=generator)
        model.shared.weight[:, channel] = 30.0
        seen = []
        hook = ffn.layer_norm.register_forward_hook(lambda _m, _a, out: seen.append(out[..., channel].flatten()))
        tokens = torch.randint(3, 3 + len(T5_RESIDUES), (8, 64), generator=generator)
        model.encoder(input_ids=tokens)
        hook.remove()
        x = torch.cat(seen)
        if bool((x <= 0).any()):
            raise RuntimeError(
                f"plant_wo_overflow: channel {channel} is not positive on every token before block {block}"
            )
        # Pre-activations of about 20 (gated: both halves, so the product stays near 400 and far
        # below 65504 before wo).
        scale = 20.0 / float(x.median())
        first = [dense.wi_0, dense.wi_1] if config.is_gated_act else [dense.wi]
        for linear in first:
            linear.weight[unit].zero_()
            linear.weight[unit, channel] = scale
        pre = x * scale
        act = torch.nn.functional.gelu(pre, approximate="tanh") * pre if config.is_gated_act else torch.relu(pre)
        dense.wo.weight[:, unit].zero_()
        dense.wo.weight[channel, unit] = 3.0 * 65504 / float(act.min())
        dense.wo.weight[channel + 1, unit] = 0.5 * 65504 / float(act.max())


def write_hf_t5(
    directory: Path, plant: str | None = None, layout: str = "encoder", arch: str = "t5_tiny", spaced: bool = True,
    plant_block: int = 1, seed: int = 0, tokenizer: str = "word", added_tokens: Sequence[str] = (),
) -> Path:
    """A T5 encoder directory written by transformers: ``layout="encoder"`` saves
    ``T5EncoderModel`` (as ProtT5's encoder-only half-precision release is laid out),
    ``layout="full"`` a ``T5ForConditionalGeneration`` whose encoder is the same (as ProtT5-XL-U50
    and Ankh ship). ``arch`` is a key of ``T5_ARCHITECTURES``; ``spaced`` picks ProtT5's
    space-separated residues or a character-level tokenizer. ``tokenizer="sentencepiece"``
    writes ProtT5's own layout instead (``spiece.model`` only; see _sentencepiece_tokenizer),
    ``"sentencepiece+bare"`` the same with bare residue pieces too. ``added_tokens`` become
    special tokens of the tokenizer (ProstT5: ``("<AA2fold>", "<fold2AA>")``).

    ``plant="wo"``: a feed-forward output beyond FP16 in block ``plant_block`` (from 0), see
    ``plant_wo_overflow``; fixed by FP32 ``wo`` (``fp16+keep32``) or an FP32 MLP island."""
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    layers, d_model, d_ff, heads, d_kv, gated = T5_ARCHITECTURES[arch]
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer in ("sentencepiece", "sentencepiece+bare"):
        tokenizer = _sentencepiece_tokenizer(directory, bare=tokenizer.endswith("+bare"))
    elif tokenizer == "word":
        tokenizer = _residue_tokenizer(directory, spaced)
    else:
        raise ValueError(tokenizer)
    if added_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(added_tokens)})
        tokenizer.save_pretrained(directory)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers, num_decoder_layers=layers,
        num_heads=heads, feed_forward_proj="gated-gelu" if gated else "relu", dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    encoder = T5EncoderModel(config).eval()
    if plant == "wo":
        plant_wo_overflow(encoder, block=plant_block, seed=seed)
    elif plant is not None:
        raise ValueError(plant)
    if layout == "encoder":
        encoder.save_pretrained(directory)
    elif layout == "full":
        full = T5ForConditionalGeneration(config).eval()
        full.load_state_dict(encoder.state_dict(), strict=False)
        full.save_pretrained(directory)
    else:
        raise ValueError(layout)
    return directory
