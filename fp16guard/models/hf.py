"""Any Hugging Face encoder (AutoModel + AutoTokenizer), and presets such as AntiBERTy.

No remote code runs unless the user asks for it; weights load weights-only (safetensors, or
pickle restricted to tensors).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fp16guard.core.config import ModelSource
from fp16guard.errors import InputError, ModelLoadError, UnsupportedPolicyError
from fp16guard.io.files import is_gzip
from fp16guard.models import t5
from fp16guard.models.base import Encoding, LoadedModel, Target, no_class_fp32_note
from fp16guard.models.catalog import ANTIBERTY_SPEC, HF_SPEC
from fp16guard.models.loading import hash_in_background, load_failure
from fp16guard.numerics.policy import Policy
from fp16guard.numerics.precision import (
    AppliedPolicy,
    Fp32LayerNorm,
    block_islands,
    cast_except,
    layer_norm_islands,
    make_fp32_island,
    part_islands,
    replace_module,
)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Selenocysteine, pyrrolysine and the ambiguity codes Asx, Glx, Xle
RARE_RESIDUES = "UOBZJ"
FP32_SOFTMAX = "fp16guard_fp32_softmax"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
#: --pooling: mean over every token the attention mask holds (special tokens included), mean over
#: the residues' tokens alone (special tokens excluded, as esm2 pools and as ProtT5's per-protein
#: embeddings are made), or the first token.
POOLINGS = ("mean", "residues", "cls")
#: Tokens that a model's tokenizer carries to mark amino-acid input, put before every sequence
#: when the vocabulary has them (ProstT5: "<AA2fold>" for amino acids, "<fold2AA>" for 3Di).
INPUT_MARKERS = ("<AA2fold>",)


def fp32_softmax_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_bias=None,
                           **_):
    """Eager attention whose scores and softmax are FP32 (transformers' eager attention runs its
    softmax in the input dtype); the probabilities are cast back before multiplying the values.
    ``position_bias`` (T5's relative position bias) is added to the FP32 scores."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling
    if position_bias is not None:
        scores = scores + position_bias.float()
    if attention_mask is not None:
        scores = scores + attention_mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def register_fp32_softmax() -> bool:
    """Make FP32_SOFTMAX an attention implementation transformers can use; False if it cannot."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError:
        return False
    AttentionInterface.register(FP32_SOFTMAX, fp32_softmax_attention)
    # Custom attention names get no padding mask unless a mask builder is registered too.
    AttentionMaskInterface.register(FP32_SOFTMAX, eager_mask)
    return True


class Fp32ResidualOutput(nn.Module):
    """A transformers ``*Output`` block (dense, dropout, residual add, and for post-LN models a
    LayerNorm) whose residual add runs in FP32.

    Post-LN (BERT): the FP32 sum goes straight into the layer-norm island. Pre-LN (ESM): the FP32
    sum is returned, so the residual stream between blocks stays FP32 and the next layer-norm
    island reads it. Child names are kept, so module names and state-dict keys do not change.
    """

    def __init__(self, source: nn.Module):
        super().__init__()
        for name, child in source.named_children():
            setattr(self, name, child)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """The block's output with its residual add (and LayerNorm, if any) in FP32."""
        summed = self.dropout(self.dense(hidden_states)).float() + input_tensor.float()
        norm = getattr(self, "LayerNorm", None)
        return norm(summed) if norm is not None else summed


def is_residual_output(module: nn.Module) -> bool:
    """transformers' BertOutput/BertSelfOutput/EsmOutput pattern: forward(hidden_states, input_tensor)."""
    if not type(module).__name__.endswith("Output") or not hasattr(module, "dense") or not hasattr(module, "dropout"):
        return False
    return "input_tensor" in inspect.signature(type(module).forward).parameters


@contextmanager
def quiet_transformers():
    """Silence transformers' load-time chatter (unused heads, and the like) for one block."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        hf_logging.enable_progress_bar()


def resolve_model_dir(model: str, offline: bool) -> Path:
    """A local directory as is; otherwise a hub id through the Hugging Face cache (downloaded
    unless ``offline``)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.suffix or model.startswith((".", "/", "~")):
        raise ModelLoadError(f"--model {model}: no such directory")
    from huggingface_hub import snapshot_download

    from fp16guard.models.catalog import hf_hub_cache

    patterns = ["*.json", "*.txt", "*.model", *WEIGHT_PATTERNS]
    try:
        # The cache is resolved here, from the environment now (huggingface_hub reads it once,
        # at import), so `fp16guard list` and loading always agree.
        return Path(
            snapshot_download(model, allow_patterns=patterns, local_files_only=offline, cache_dir=hf_hub_cache())
        )
    except Exception as exc:  # not cached, no network, unknown repository
        how = "pass a local directory with --model, or run once with network access"
        where = f"not in the Hugging Face cache ({hf_hub_cache()})"
        reason = "offline" if offline else f"and the download failed: {str(exc).splitlines()[0][:200]}"
        raise ModelLoadError(f"model {model!r} {where} {reason}; {how}") from None


@dataclass(frozen=True)
class HfEncoding(Encoding):
    """A transformers tokenizer and how fp16guard feeds it sequences."""

    tokenizer: Any  # a transformers tokenizer (fast, or T5Tokenizer for a bare SentencePiece model)
    separator: str  # put between residues: "" (read as written) or " " (residues as words)
    pooling: str  # one of POOLINGS
    #: Rows of the model's embedding table that every batch's ids are checked against; None: not checked.
    embedding_rows: int | None = None
    marker: str = ""  # a token put before every sequence (ProstT5's <AA2fold>); "" for none


def read_tokenizer(model_dir: Path, trust_remote_code: bool):
    """The tokenizer saved in ``model_dir`` (AutoTokenizer); ModelLoadError when it cannot be read."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"{model_dir}: cannot load its tokenizer ({str(exc).splitlines()[0][:200]})") from None


class HfTarget(Target):
    """Encoders that transformers' AutoModel loads; a registry entry with a preset pins a packaged model."""

    special_tokens_per_row = 2
    input_alphabet = LETTERS

    def _locate(self, source: ModelSource) -> tuple[str, Path, Any]:
        """The model's name, its directory, and its tokenizer."""
        from transformers import BertTokenizerFast

        preset = self.spec.preset
        if preset is None:
            if not source.model:
                raise InputError("--model is required: a local directory or a Hugging Face model id")
            model_dir = resolve_model_dir(source.model, source.offline)
            check_tokenizer_packages(model_dir)
            return source.model, model_dir, read_tokenizer(model_dir, source.trust_remote_code)
        root = preset.package_dir()
        if root is None or not preset.available():
            raise ModelLoadError(
                f"{preset.name} is not installed; install it with: pip install '{preset.requirement.split()[0]}'"
            )
        vocab = root / preset.vocab_file
        # from_pretrained on the vocabulary's directory reads vocab.txt the same way across
        # transformers 4 and 5 (whose constructors name the argument differently).
        tokenizer = BertTokenizerFast.from_pretrained(vocab.parent, do_lower_case=False, local_files_only=True)
        return preset.name, root / preset.model_dir, tokenizer

    def load(self, source: ModelSource) -> LoadedModel:
        """Load the encoder in FP32 and its tokenizer; nothing but weights is unpickled. T5
        configs build ``T5EncoderModel`` (a full encoder-decoder checkpoint's decoder weights are
        ignored, and the load notes say so); others build what AutoModel builds."""
        if source.pooling not in POOLINGS:
            raise InputError(f"--pooling must be one of {', '.join(POOLINGS)}, not {source.pooling!r}")
        name, model_dir, tokenizer = self._locate(source)
        weight_files = sorted(p for pattern in WEIGHT_PATTERNS for p in model_dir.glob(pattern))
        if not weight_files:
            raise ModelLoadError(f"{model_dir}: no weights (model.safetensors or pytorch_model.bin)")
        digest = hash_in_background(weight_files)
        module, config = _read_encoder(model_dir, weight_files, source.trust_remote_code)
        notes = _checkpoint_notes(model_dir, config, weight_files)
        if tokenizer.pad_token_id is None:
            raise ModelLoadError(f"{model_dir}: the tokenizer has no padding token")
        vocab = tokenizer.get_vocab()
        alphabet, read_as = _residues(vocab)
        separator = _separator(tokenizer, alphabet.translate(str.maketrans(read_as)))
        marker = next((token for token in INPUT_MARKERS if token in vocab), "")
        if marker:
            notes.append(
                f"{model_dir.name}: its tokenizer has {marker}, the token that marks amino-acid input (ProstT5's "
                f"convention): it is put before every sequence, and --pooling residues leaves it out of the mean"
            )
        max_length = _input_limit(config, tokenizer)
        rows = module.get_input_embeddings().num_embeddings
        check_token_ids(tokenizer(separator.join(alphabet))["input_ids"], rows, tokenizer, model_dir)
        return LoadedModel(
            target=self.name,
            name=name,
            source=str(model_dir),
            module=module.eval(),
            num_layers=int(config.num_hidden_layers),
            weights_sha256=digest.result(),
            alphabet=alphabet,
            max_length=max_length,
            encoding=HfEncoding(tokenizer.pad_token_id, tokenizer, separator, source.pooling, rows, marker),
            notes=tuple(notes),
            keep_in_fp32_modules=tuple(sorted(getattr(module, "_keep_in_fp32_modules", None) or ())),
            read_as=read_as,
        )

    @staticmethod
    def _texts(loaded: LoadedModel, sequences: Sequence[str]) -> list[str]:
        """The sequences as the tokenizer reads them: rare residues replaced, residues separated."""
        separator = loaded.encoding.separator
        table = str.maketrans(loaded.read_as)
        sequences = [s.translate(table) for s in sequences]
        return [separator.join(s) if separator else s for s in sequences]

    def measure(self, loaded: LoadedModel, sequences: Sequence[str]) -> list[int]:
        """Tokens per sequence as the tokenizer splits it (byte-pair encodings merge residues)."""
        encoded = loaded.encoding.tokenizer(self._texts(loaded, sequences), add_special_tokens=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def truncate(self, loaded: LoadedModel, sequence: str, limit: int) -> str:
        """Cut at the end of token ``limit``, from the fast tokenizer's character offsets."""
        encoding: HfEncoding = loaded.encoding
        if encoding.separator:
            return sequence[:limit]  # one token per residue
        encoded = encoding.tokenizer(sequence, add_special_tokens=False, return_offsets_mapping=True)
        return sequence[: encoded["offset_mapping"][limit - 1][1]]

    def tokenize(self, loaded: LoadedModel, sequences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token ids with the tokenizer's special tokens; pooled positions follow --pooling."""
        encoding: HfEncoding = loaded.encoding
        tokenizer, marker = encoding.tokenizer, encoding.marker
        residues = encoding.pooling == "residues"
        texts = self._texts(loaded, sequences)
        if marker:  # an added token: it splits off as written
            texts = [marker + encoding.separator + text for text in texts]
        encoded = tokenizer(
            texts, padding=True, return_tensors="pt", add_special_tokens=True, return_special_tokens_mask=residues,
        )
        if encoding.embedding_rows is not None:  # byte-pair merges can reach ids the alphabet did not
            check_token_ids(encoded["input_ids"], encoding.embedding_rows, tokenizer, loaded.source)
        attention = encoded["attention_mask"].bool()
        if encoding.pooling == "cls":
            mask = torch.zeros_like(attention)
            mask[:, 0] = True
        elif residues:
            mask = attention & ~encoded["special_tokens_mask"].bool()
            if marker:
                mask &= encoded["input_ids"] != tokenizer.convert_tokens_to_ids(marker)
        else:
            mask = attention
        return encoded["input_ids"], mask, int(attention.sum())

    def hidden_states(self, loaded: LoadedModel, module: nn.Module, tokens: torch.Tensor,
                      layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """The last hidden state for the last layer, hidden_states[layer] for an earlier one
        (asked of the model only when an earlier layer is wanted)."""
        attention = (tokens != loaded.encoding.pad_id).long()
        last = loaded.num_layers
        earlier = any(layer != last for layer in layers)
        out = module(input_ids=tokens, attention_mask=attention, output_hidden_states=earlier)
        return {layer: out.last_hidden_state if layer == last else out.hidden_states[layer] for layer in layers}

    def blocks(self, module: nn.Module) -> list[nn.Module]:
        """encoder.layer (BERT, ESM, DNABERT), or the longest ModuleList of the model."""
        encoder = getattr(module, "encoder", None)
        for name in ("layer", "block"):  # BERT family; T5
            if encoder is not None and isinstance(getattr(encoder, name, None), nn.ModuleList):
                return list(getattr(encoder, name))
        lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
        return list(max(lists, key=len)) if lists else []

    def block_parts(self, block: nn.Module) -> dict:
        """BERT-style layers (BERT, ESM, DNABERT): ``attention.self``, and the MLP from
        ``intermediate.dense`` to ``output.dense``; T5 blocks: ``SelfAttention`` and the
        feed-forward module; other layouts have no known parts."""
        if type(block).__name__ == "T5Block":
            return t5.block_parts(block)
        parts = {}
        attention = getattr(getattr(block, "attention", None), "self", None)
        if isinstance(attention, nn.Module):
            parts["attention"] = attention
        first = getattr(getattr(block, "intermediate", None), "dense", None)
        last = getattr(getattr(block, "output", None), "dense", None)
        if isinstance(first, nn.Linear) and isinstance(last, nn.Linear):
            parts["mlp"] = (first, last)
        return parts

    def adapts(self, module: nn.Module) -> bool:
        """Whether ``module`` is a transformers model."""
        return any(cls.__name__ == "PreTrainedModel" for cls in type(module).__mro__)

    def apply_policy(self, module: nn.Module, policy: Policy) -> AppliedPolicy:
        """Convert a transformers model in place: layer-norm islands, FP32 positional tables and
        softmax, FP32 residual adds; fast attention is transformers' own "sdpa" attention."""
        if policy.layout == "packed":
            raise UnsupportedPolicyError(
                f"the packed layout is built for ESM-2 (fair-esm) and DNABERT, not for {type(module).__name__} through "
                "transformers; use fused attention on padded batches (fp16+sdpa)"
            )
        notes = _use_sdpa(module) if policy.fast_attention else []
        if policy.is_full_precision:
            module.float()
            return AppliedPolicy(policy, notes=tuple(notes))
        keep, islands, declared_notes = _declared_fp32(module, policy)
        notes += declared_notes
        if t5.is_t5(module):
            return self._apply_t5(module, policy, keep, islands, notes)
        dtype = policy.torch_dtype
        if policy.fp32_residual:
            for name, sub in list(module.named_modules()):
                if is_residual_output(sub):
                    replace_module(module, name, Fp32ResidualOutput(sub))
                    islands.append(f"{name} (residual add)")
            if not islands:
                notes.append("no residual blocks of a known shape were found: the residual stream stays in FP16")
        if policy.fp32_layer_norms:
            islands += layer_norm_islands(module, dtype)
        if policy.fp32_positional:
            for name, sub in module.named_modules():
                is_table = name.endswith("embeddings") and hasattr(sub, "position_embeddings")
                if is_table or type(sub).__name__.endswith("RotaryEmbedding"):
                    keep.append(make_fp32_island(sub, dtype))
                    islands.append(name)
            if policy.fast_attention:
                pass  # the fused kernel's softmax, not the FP32 eager one
            elif register_fp32_softmax():
                _set_attention(module, FP32_SOFTMAX)
                islands.append("attention softmax (every layer)")
            else:
                notes.append(
                    "this transformers version cannot swap the attention function: softmax stays in the compute dtype"
                )
        names, blocks = block_islands(module, self.blocks(module), policy.fp32_blocks, dtype)
        part_names, parts = part_islands(module, self.blocks(module), policy.fp32_parts, dtype, self.block_parts)
        islands += names + part_names
        keep += [m for m in module.modules() if isinstance(m, Fp32LayerNorm)] + blocks + parts
        cast_except(module, dtype, keep)
        return AppliedPolicy(policy, tuple(islands), tuple(notes))

    def _apply_t5(self, module: nn.Module, policy: Policy, keep: list[nn.Module], islands: list[str],
                  notes: list[str]) -> AppliedPolicy:
        """apply_policy's islands on a T5 encoder (see t5.py), after the class's own FP32 modules
        (``keep``, ``islands``) and the notes so far."""
        dtype = policy.torch_dtype
        fp32_bias = False
        if policy.fp32_positional and not policy.fast_attention:
            fp32_bias = register_fp32_softmax() and t5.uses_attention_interface(module)
            if fp32_bias:
                _set_attention(module, FP32_SOFTMAX)
                islands.append("attention scores, position bias and softmax (every layer)")
            else:
                notes.append(
                    "this transformers version cannot swap T5's attention function: softmax stays in the compute dtype"
                )
        names, kept_t5, t5_notes = t5.apply_islands(module, self.blocks(module), policy, dtype, fp32_bias)
        if dtype == torch.float16:
            t5_notes.append(t5.CLAMP_NOTE)
        cast_except(module, dtype, keep + kept_t5)
        return AppliedPolicy(policy, tuple(islands + names), tuple(notes + t5_notes))


#: SentencePiece model files that transformers converts into a tokenizer when a directory has no
#: tokenizer.json (ProtT5 ships spiece.model only); the conversion needs both packages.
SENTENCEPIECE_FILES = ("spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
SENTENCEPIECE_PACKAGES = {"sentencepiece": "sentencepiece", "google.protobuf": "protobuf"}


def check_tokenizer_packages(model_dir: Path) -> None:
    """Raise ModelLoadError, with the pip command, when ``model_dir``'s tokenizer is a bare
    SentencePiece model and the packages that read it are missing (transformers would otherwise
    fall back to other readers and fail with an unrelated message)."""
    import importlib.util

    if (model_dir / "tokenizer.json").is_file():
        return
    found = next((name for name in SENTENCEPIECE_FILES if (model_dir / name).is_file()), None)
    if found is None:
        return
    missing = []
    for module, package in SENTENCEPIECE_PACKAGES.items():
        try:
            present = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # google itself is absent
            present = False
        if not present:
            missing.append(package)
    if missing:
        raise ModelLoadError(
            f"{model_dir}: its tokenizer is a SentencePiece model ({found}, as ProtT5 ships it), which transformers "
            f"reads with the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
            "pip install 'fp16guard[t5]' (or pip install sentencepiece protobuf)"
        )


def check_token_ids(ids, rows: int, tokenizer, where) -> None:
    """Raise ModelLoadError when the tokenizer gives an id beyond the model's embedding table:
    the tokenizer files belong to another model (the forward pass would fail on an index)."""
    largest = int(torch.as_tensor(ids).max()) if len(ids) else -1
    if largest >= rows:
        token = tokenizer.convert_ids_to_tokens(largest)
        raise ModelLoadError(
            f"{where}: the tokenizer gives token id {largest} ({token!r}) but the model's embedding table has {rows} "
            "rows: the tokenizer files do not belong to these weights"
        )


def _read_encoder(model_dir: Path, weight_files: Sequence[Path], trust_remote_code: bool) -> tuple[nn.Module, Any]:
    """The encoder in FP32, weights only, and its config: ``T5EncoderModel`` for a T5 config,
    what AutoModel builds otherwise. ModelLoadError when the weights cannot be read or leave
    parameters unset."""
    import transformers
    from transformers import AutoConfig, AutoModel, PreTrainedModel

    options = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    if "weights_only" in inspect.signature(PreTrainedModel.from_pretrained).parameters:
        weights = {**options, "weights_only": True}
    else:
        weights = options
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(model_dir, **options)
            encoder_only = t5.encoder_class(config)
            builder = getattr(transformers, encoder_only) if encoder_only else AutoModel
            module, info = builder.from_pretrained(
                model_dir, config=config, dtype=torch.float32, output_loading_info=True, **weights
            )
    except Exception as exc:  # torch's own advice to drop weights_only is not passed on
        culprit = next((p for p in weight_files if is_gzip(p)), model_dir)
        raise ModelLoadError(f"{culprit}: {load_failure(culprit, exc, 'cannot load the model', 300)}") from None
    # Heads in the checkpoint (cls.*) are ignored; parameters that are missing would be
    # silently random, so they are an error that names what is missing and what is extra.
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    if missing:
        unexpected = sorted(info.get("unexpected_keys", ()))
        built = type(module).__name__
        mismatch = t5.describe_mismatch(built, missing, unexpected)
        raise ModelLoadError(f"{model_dir}: the weights do not fit {built}: {mismatch}")
    return module, config


def _checkpoint_notes(model_dir: Path, config, weight_files: Sequence[Path]) -> list[str]:
    """What the load notes say about the checkpoint: a full encoder-decoder's ignored decoder,
    weights stored in half precision."""
    notes = []
    encoder_only = t5.encoder_class(config)
    decoder = [k for k in t5.checkpoint_keys(weight_files) if k.startswith("decoder.")] if encoder_only else []
    if decoder:
        saved_as = ", ".join(config.architectures or [config.model_type])
        notes.append(
            f"{model_dir.name}: the checkpoint holds a full encoder-decoder ({saved_as}); its {len(decoder)} "
            f"decoder tensors are ignored and only the encoder ({encoder_only}) is validated"
        )
    # transformers >= 4.56 names it dtype (torch_dtype is then a deprecated alias that logs a warning).
    stored = getattr(config, "dtype" if hasattr(config, "dtype") else "torch_dtype", None)
    stored = str(stored or "").removeprefix("torch.")
    if stored in ("float16", "bfloat16"):  # ProtT5's half-precision encoder release, for one
        notes.append(
            f"{model_dir.name}: the checkpoint stores its weights in {stored}; the FP32 reference computes in FP32 "
            "from those weights, so the comparison measures reduced-precision compute, not the rounding of the "
            "weights, which both sides share"
        )
    return notes


def _residues(vocab: dict[str, int]) -> tuple[str, dict[str, str]]:
    """The upper-case letters that ``vocab`` reads as residues (with the rare residues it reads as
    X), and those rare residues: letter -> "X"."""
    # Sentencepiece vocabularies (T5: ProtT5, Ankh) write a word-initial residue as "▁A".
    alphabet = "".join(sorted({t.lstrip("▁") for t in vocab} & set(LETTERS))) or LETTERS
    read_as = _rare_to_x(alphabet)
    return "".join(sorted(set(alphabet) | set(read_as))), read_as


def _rare_to_x(alphabet: str) -> dict[str, str]:
    """Rare and ambiguous residues (U, O, B, Z, J) that the vocabulary lacks, read as X when it
    has X: ProtT5's and Ankh's convention, decided by the tokenizer's vocabulary, not by the
    model's name. A vocabulary with its own U keeps reading U."""
    if "X" not in alphabet:
        return {}
    return {letter: "X" for letter in RARE_RESIDUES if letter not in alphabet}


def _separator(tokenizer, alphabet: str) -> str:
    """'' if the tokenizer reads residues as written, ' ' if it wants them space-separated
    (BERT word-piece vocabularies of single letters, such as AntiBERTy and ProtBERT;
    SentencePiece vocabularies with a word-start piece for every standard residue, "▁A" to
    "▁Y", such as ProtT5's: those were trained on residues fed as words, as ProtT5 and Ankh
    feed them, even where bare letters would also tokenise). A tokenizer that turns
    residues into unknown tokens either way is refused."""
    vocab = tokenizer.get_vocab()
    word_start = all("\u2581" + letter in vocab for letter in STANDARD_RESIDUES)
    for separator in (" ", "") if word_start else ("", " "):
        ids = tokenizer(separator.join(alphabet), add_special_tokens=False)["input_ids"]
        if tokenizer.unk_token_id not in ids:
            return separator
    raise ModelLoadError(f"the tokenizer maps residues ({alphabet}) to its unknown token")


def _input_limit(config, tokenizer) -> int | None:
    """The longest input in tokens, special tokens excluded; None: no limit."""
    specials = len(tokenizer("A")["input_ids"]) - len(tokenizer("A", add_special_tokens=False)["input_ids"])
    positions = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
    # T5 has no position table (relative buckets), and a tokenizer without a limit reports 1e30.
    return int(positions) - specials if positions and positions < 10**7 else None


def _use_sdpa(module: nn.Module) -> list[str]:
    """Switch ``module`` to transformers' "sdpa" attention; the notes that say so.
    UnsupportedPolicyError when its class has no such implementation."""
    if not getattr(module, "_supports_sdpa", False):
        raise UnsupportedPolicyError(
            f"fast attention: {type(module).__name__} has no scaled_dot_product_attention "
            "implementation in this transformers version"
        )
    _set_attention(module, "sdpa")
    notes = ["attention: transformers' sdpa implementation (fused kernels accumulate the softmax in FP32)"]
    if t5.is_t5(module) and t5.contiguous_position_bias(module):
        notes.append(
            "T5's relative position bias is laid out contiguously, so that the fused SDPA kernels accept it as a "
            "mask (as transformers builds it, its last stride is the head count and CUDA falls back to the math kernel)"
        )
    return notes


def _declared_fp32(module: nn.Module, policy: Policy) -> tuple[list[nn.Module], list[str], list[str]]:
    """What the class's ``_keep_in_fp32_modules`` keep in FP32 under ``policy``: (the modules,
    their names for the report, notes)."""
    declared = sorted(getattr(module, "_keep_in_fp32_modules", None) or ())
    if declared and policy.torch_dtype == torch.float16:
        kept, note = _class_fp32_modules(module, declared, policy.keep_in_fp32_modules)
        islands = [f"{name} (_keep_in_fp32_modules, FP32 output)" for name in kept]
        return [module.get_submodule(name) for name in kept], islands, [note]
    if declared and policy.keep_in_fp32_modules:
        return [], [], [
            f"{type(module).__name__} keeps its _keep_in_fp32_modules in FP32 for float16 only: nothing extra is kept "
            f"in FP32 for {policy.dtype}"
        ]
    note = no_class_fp32_note(module, policy)
    return [], [], [note] if note else []


def _class_fp32_modules(module: nn.Module, declared: list[str], keep: bool) -> tuple[list[str], str]:
    """The modules that ``from_pretrained(..., dtype=torch.float16)`` leaves in FP32 (those whose
    dotted name has a component in the class's ``_keep_in_fp32_modules``) when ``keep``, and a
    note that says which of the two FP16 models this attempt is."""
    cls = type(module).__name__
    names = [n for n, _ in module.named_modules() if n and any(part in declared for part in n.split("."))]
    # Only the outermost matches: their children come along.
    names = [n for n in names if not any(n.startswith(m + ".") for m in names)]
    listed = ", ".join(declared)
    if not keep:
        return [], (
            f"{listed} in FP16, as model.half() (or .to(torch.float16)) leaves {cls}; from_pretrained(..., "
            f"dtype=torch.float16) would keep its _keep_in_fp32_modules ({listed}) in FP32: policy fp16+keep32"
        )
    for name in names:
        # What from_pretrained does and no more: FP32 weights, no casts around them. The
        # model's own code casts their input (T5's wo does) and its output stays FP32.
        module.get_submodule(name).float()
    return names, (
        f"as from_pretrained(..., dtype=torch.float16) loads {cls}: its _keep_in_fp32_modules ({listed}) keep FP32 "
        f"weights in {len(names)} module(s), the rest is FP16"
    )


def _set_attention(module: nn.Module, implementation: str) -> None:
    if hasattr(module, "set_attn_implementation"):
        module.set_attn_implementation(implementation)
    else:
        module.config._attn_implementation = implementation


HF = HfTarget(HF_SPEC)
ANTIBERTY = HfTarget(ANTIBERTY_SPEC)
