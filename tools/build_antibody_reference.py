#!/usr/bin/env python3
"""Build data/antibody_reference.fasta, the bundled antibody reference set.

The set is used to compare FP16 against FP32 embeddings of antibody language
models such as AntiBERTy.  AntiBERTy's vocabulary has only the 20 standard
amino acids and its context is 512 positions, so every sequence here uses only
``ACDEFGHIKLMNPQRSTVWY`` and has at most 510 residues.  The set mixes:

* ``real_*``  real antibody chains (and three real CDR-H3 peptides), embedded
  below as constants together with the public file each was copied from;
* ``syn_*``   synthetic variants derived from the real chains: residue
  substitutions at approximate CDR positions (plus occasional CDR-H3
  insertions or deletions), made for single chains, for heavy/light pairs of
  the same antibody, for chains with part or all of their constant region,
  and for CDR-H3 junction peptides.

CDR positions are located from conserved motifs rather than a numbering tool
(see ``cdr_ranges``); they are approximate, which is all the variants need.

The output is fully deterministic: every random draw comes from one
``random.Random(SEED)`` instance and only its ``random()`` method is used.
Running the script twice gives byte-identical output.

Usage::

    python3 tools/build_antibody_reference.py            # (re)write the FASTA
    python3 tools/build_antibody_reference.py --check    # exit 1 if out of date
    python3 tools/build_antibody_reference.py --stats    # print a summary only

Standard library only.
"""

from __future__ import annotations

import random
import re
import statistics
import sys
from pathlib import Path

from fasta_builder import crc64, run

SEED = 20510
ANTIBERTY_MAX_RESIDUES = 510  # 512 positions minus the two special tokens
LINE_WIDTH = 60
MIN_RECORDS = 60

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "data" / "antibody_reference.fasta"

STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"
ALLOWED = set(STANDARD_AA)
# Replacement residues for CDR substitutions: the standard residues except
# cysteine, so that no variant gains an unpaired cysteine.
SUBSTITUTION_AA = "ADEFGHIKLMNPQRSTVWY"
CHAIN_TYPES = ("heavy", "light_kappa", "light_lambda", "fragment")
ID_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")

# ---------------------------------------------------------------------------
# Real sequences.  Each was copied exactly from the named public file; nothing
# was typed from memory.  ``crc64`` is the CRC64 (ISO 3309 polynomial, as used
# by UniProt) of the copied sequence; it guards against accidental edits.
# Sources and their licences are listed in data/README.md.
# ---------------------------------------------------------------------------

# Source: github.com/AbSciBio/unlocking-de-novo-antibody-design, README.md,
# section "Details about Trastuzumab-HER2 model system", "Heavy Chain
# Sequence" (VH, CH1 and the start of the hinge, ending ...SCDKTH).
TRASTUZUMAB_HC = (
    "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRY"
    "ADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS"
    "ASTKGPSVFPLAPSSKSTSGGTAALGCLVKDYFPEPVTVSWNSGALTSGVHTFPAVLQSS"
    "GLYSLSSVVTVPSSSLGTQTYICNVNHKPSNTKVDKKVEPKSCDKTH"
)
# Same file, "Light Chain Sequence" (VL and CL, ending ...NRGEC).
TRASTUZUMAB_LC = (
    "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPS"
    "RFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQGTKVEIKRTVAAPSVFIFPP"
    "SDEQLKSGTASVVCLLNNFYPREAKVQWKVDNALQSGNSQESVTEQDSKDSTYSLSSTLT"
    "LSKADYEKHKVYACEVTHQGLSSPVTKSFNRGEC"
)

REAL_SEQUENCES = [
    {
        # Source: github.com/jeffreyruffolo/AntiBERTy, README.md, the first
        # entry of ``sequences`` in the "Embeddings" example (the same pair
        # is the example in Graylab/IgFold's README.md).
        "id": "real_antiberty_readme_VH",
        "chain": "heavy",
        "description": "heavy-chain variable domain, AntiBERTy README example",
        "source": "jeffreyruffolo/AntiBERTy:README.md",
        "crc64": "16AD075D601A2BE4",
        "sequence": (
            "EVQLVQSGPEVKKPGTSVKVSCKASGFTFMSSAVQWVRQARGQRLEWIGWIVIGSGNTNY"
            "AQKFQERVTITRDMSTSTAYMELSSLRSEDTAVYYCAAPYCSSISCNDGFDIWGQGTMVT"
            "VS"
        ),
    },
    {
        # Source: as above, the second entry of ``sequences``.
        "id": "real_antiberty_readme_VL",
        "chain": "light_kappa",
        "description": "kappa light-chain variable domain, AntiBERTy README example",
        "source": "jeffreyruffolo/AntiBERTy:README.md",
        "crc64": "9C110864E2453A23",
        "sequence": (
            "DVVMTQTPFSLPVSLGDQASISCRSSQSLVHSNGNTYLHWYLQKPGQSPKLLIYKVSNRF"
            "SGVPDRFSGSGSGTDFTLKISRVEAEDLGVYFCSQSTHVPYTFGGGTKLEIK"
        ),
    },
    {
        # Source: github.com/brennanaba/ImmuneBuilder, README.md, the 'H'
        # entry of ``sequences`` in the ABodyBuilder2 usage example.
        "id": "real_immunebuilder_readme_VH",
        "chain": "heavy",
        "description": "heavy-chain variable domain, ImmuneBuilder README example",
        "source": "brennanaba/ImmuneBuilder:README.md",
        "crc64": "A07736CCE8C1D8C5",
        "sequence": (
            "EVQLVESGGGVVQPGGSLRLSCAASGFTFNSYGMHWVRQAPGKGLEWVAFIRYDGGNKYY"
            "ADSVKGRFTISRDNSKNTLYLQMKSLRAEDTAVYYCANLKDSRYSGSYYDYWGQGTLVTV"
            "S"
        ),
    },
    {
        # Source: as above, the 'L' entry.
        "id": "real_immunebuilder_readme_VL",
        "chain": "light_kappa",
        "description": "kappa light-chain variable domain, ImmuneBuilder README example",
        "source": "brennanaba/ImmuneBuilder:README.md",
        "crc64": "959BC9239E2D7EAA",
        "sequence": (
            "VIWMTQSPSSLSASVGDRVTITCQASQDIRFYLNWYQQKPGKAPKLLISDASNMETGVPS"
            "RFSGSGSGTDFTFTISSLQPEDIATYYCQQYDNLPFTFGPGTKVDFK"
        ),
    },
    {
        # Source: github.com/prihoda/AbNumber, README.md, ``seq`` in the
        # "Examples" section (VH followed by the first 12 residues of the
        # constant region, AKTTAPSVYPLA).
        "id": "real_abnumber_readme_VH",
        "chain": "heavy",
        "description": "heavy-chain variable domain plus 12 constant-region residues, AbNumber README example",
        "source": "prihoda/AbNumber:README.md",
        "crc64": "E3DC57900C5183B8",
        "sequence": (
            "QVQLQQSGAELARPGASVKMSCKASGYTFTRYTMHWVKQRPGQGLEWIGYINPSRGYTNY"
            "NQKFKDKATLTTDKSSSTAYMQLSSLTSEDSAVYYCARYYDDHYCLDYWGQGTTLTVSSA"
            "KTTAPSVYPLA"
        ),
    },
    {
        # Source: github.com/prihoda/AbNumber, test/test_chain.py, ``var`` in
        # test_light_chain_from_str (the test appends the tail 'RTV').
        "id": "real_abnumber_test_VL",
        "chain": "light_kappa",
        "description": "kappa light-chain variable domain, AbNumber test_light_chain_from_str",
        "source": "prihoda/AbNumber:test/test_chain.py",
        "crc64": "D2081540572F0B5E",
        "sequence": (
            "ELVMTQSPSSLSASVGDRVNIACRASQGISSALAWYQQKPGKAPRLLIYDASNLESGVPS"
            "RFSGSGSGTDFTLTISSLQPEDFAIYYCQQFNSYPLTFGGGTKVEIK"
        ),
    },
    {
        "id": "real_trastuzumab_HC_Fab",
        "chain": "heavy",
        "description": "trastuzumab heavy chain, VH + CH1 + start of hinge",
        "source": "AbSciBio/unlocking-de-novo-antibody-design:README.md",
        "crc64": "8918FC68539009A8",
        "sequence": TRASTUZUMAB_HC,
    },
    {
        "id": "real_trastuzumab_LC",
        "chain": "light_kappa",
        "description": "trastuzumab light chain, VL + CL",
        "source": "AbSciBio/unlocking-de-novo-antibody-design:README.md",
        "crc64": "C72859B2149E5A00",
        "sequence": TRASTUZUMAB_LC,
    },
    {
        # Residues 1-120 of TRASTUZUMAB_HC: the variable domain, ending WGQGTLVTVSS.
        "id": "real_trastuzumab_VH",
        "chain": "heavy",
        "description": "trastuzumab heavy-chain variable domain (residues 1-120 of the heavy chain)",
        "source": "AbSciBio/unlocking-de-novo-antibody-design:README.md",
        "crc64": "60D8E2B337F86645",
        "sequence": TRASTUZUMAB_HC[:120],
    },
    {
        # Residues 1-107 of TRASTUZUMAB_LC: the variable domain, ending FGQGTKVEIK.
        "id": "real_trastuzumab_VL",
        "chain": "light_kappa",
        "description": "trastuzumab kappa light-chain variable domain (residues 1-107 of the light chain)",
        "source": "AbSciBio/unlocking-de-novo-antibody-design:README.md",
        "crc64": "A4A37A3A31F1C2C2",
        "sequence": TRASTUZUMAB_LC[:107],
    },
    {
        # Source: same README, "HCDR3" under "Heavy Chain CDRs (IMGT Annotation)".
        "id": "real_trastuzumab_CDRH3",
        "chain": "fragment",
        "description": "trastuzumab CDR-H3 (IMGT) peptide",
        "source": "AbSciBio/unlocking-de-novo-antibody-design:README.md",
        "crc64": "98967E111786C87A",
        "sequence": "SRWGGDGFYAMDY",
    },
    {
        # Source: github.com/AbSciBio/unlocking-de-novo-antibody-design,
        # functionality-developability-cross_reactivity-data.csv, column
        # HCDR3 of Candidate 1 (a de novo designed trastuzumab HCDR3).
        "id": "real_absci_candidate1_CDRH3",
        "chain": "fragment",
        "description": "designed CDR-H3 peptide, Absci candidate 1 (HER2 binder)",
        "source": "AbSciBio/unlocking-de-novo-antibody-design:functionality-developability-cross_reactivity-data.csv",
        "crc64": "124239E191477874",
        "sequence": "TRYFFNGWYYFDV",
    },
    {
        # Same file, column HCDR3 of Candidate 4.
        "id": "real_absci_candidate4_CDRH3",
        "chain": "fragment",
        "description": "designed CDR-H3 peptide, Absci candidate 4 (HER2 binder)",
        "source": "AbSciBio/unlocking-de-novo-antibody-design:functionality-developability-cross_reactivity-data.csv",
        "crc64": "17233E221D5D66D0",
        "sequence": "ANDIYIQGYDLNR",
    },
    {
        # Source: github.com/PaulNobrega/mAbLab, tests/test_mab.py, HC_SEQ
        # (a full-length IgG1 heavy chain; the antibody is not named there).
        "id": "real_mablab_test_HC",
        "chain": "heavy",
        "description": "full-length IgG1 heavy chain (VH-CH1-hinge-CH2-CH3), mAbLab test HC_SEQ",
        "source": "PaulNobrega/mAbLab:tests/test_mab.py",
        "crc64": "D9F75B46BE5B64AB",
        "sequence": (
            "EVQLVESGGGLVQPGRSLRLSCAASGFTFDDYAMHWVRQAPGKGLEWVSAITWNSGHIDY"
            "ADSVEGRFTISRDNAKNSLYLQMNSLRAEDTAVYYCAKVSYLSTASSLDYWGQGTLVTVS"
            "SASTKGPSVFPLAPSSKSTSGGTAALGCLVKDYFPEPVTVSWNSGALTSGVHTFPAVLQS"
            "SGLYSLSSVVTVPSSSLGTQTYICNVNHKPSNTKVDKKVEPKSCDKTHTCPPCPAPELLG"
            "GPSVFLFPPKPKDTLMISRTPEVTCVVVDVSHEDPEVKFNWYVDGVEVHNAKTKPREEQY"
            "NSTYRVVSVLTVLHQDWLNGKEYKCKVSNKALPAPIEKTISKAKGQPREPQVYTLPPSRD"
            "ELTKNQVSLTCLVKGFYPSDIAVEWESNGQPENNYKTTPPVLDSDGSFFLYSKLTVDKSR"
            "WQQGNVFSCSVMHEALHNHYTQKSLSLSPGK"
        ),
    },
    {
        # Same file, LC_SEQ (the matching kappa light chain).
        "id": "real_mablab_test_LC",
        "chain": "light_kappa",
        "description": "kappa light chain, VL + CL, mAbLab test LC_SEQ",
        "source": "PaulNobrega/mAbLab:tests/test_mab.py",
        "crc64": "95AF8DE726AC5883",
        "sequence": (
            "DIQMTQSPSSLSASVGDRVTITCRASQGIRNYLAWYQQKPGKAPKLLIYAASTLQSGVPS"
            "RFSGSGSGTDFTLTISSLQPEDVATYYCQRYNRAPYTFGQGTKVEIKRTVAAPSVFIFPP"
            "SDEQLKSGTASVVCLLNNFYPREAKVQWKVDNALQSGNSQESVTEQDSKDSTYSLSSTLT"
            "LSKADYEKHKVYACEVTHQGLSSPVTKSFNRGEC"
        ),
    },
    {
        # Source: github.com/oxpig/ANARCI,
        # Example_scripts_and_sequences/antibody_sequences.fasta, record 1rei_A.
        "id": "real_pdb_1rei_A",
        "chain": "light_kappa",
        "description": "kappa light-chain variable domain, PDB 1REI chain A",
        "source": "oxpig/ANARCI:Example_scripts_and_sequences/antibody_sequences.fasta",
        "crc64": "F143E1188BCE2AA7",
        "sequence": (
            "DIQMTQSPSSLSASVGDRVTITCQASQDIIKYLNWYQQTPGKAPKLLIYEASNLQAGVPS"
            "RFSGSGSGTDYTFTISSLQPEDIATYYCQQYQSLPYTFGQGTKLQIT"
        ),
    },
    {
        # Same file, record 1t2j_A (a variable domain without a light chain).
        "id": "real_pdb_1t2j_A",
        "chain": "heavy",
        "description": "heavy-chain variable domain, PDB 1T2J chain A",
        "source": "oxpig/ANARCI:Example_scripts_and_sequences/antibody_sequences.fasta",
        "crc64": "4174FDB8175FF9DE",
        "sequence": (
            "QVQLQESGGGLVQPGGSLRLSCAASGFTFSNSAMSWVRQAPGKGLEWVSSISGSGGNTYS"
            "ADSVKGRFTISRDNAKNSLYLQMNSLRAEDTAVYYCARDWYGMDVWGQGTTVTVSS"
        ),
    },
    {
        # Same file, record 4dqo_H (Fab heavy chain with a 30-residue IMGT
        # CDR-H3; the record ends ...EPKSCGLEVLF, kept as it is).
        "id": "real_pdb_4dqo_H",
        "chain": "heavy",
        "description": "Fab heavy chain with a long CDR-H3, VH + CH1, PDB 4DQO chain H",
        "source": "oxpig/ANARCI:Example_scripts_and_sequences/antibody_sequences.fasta",
        "crc64": "0FD69E6BC9EFBBB1",
        "sequence": (
            "EEQLVESGGGVVQPGGSLRLSCLASGFTFHKYGMHWVRQAPGKGLEWVALISDDGMRKYH"
            "SDSMWGRVTISRDNSKNTLYLQFSSLKVEDTAMFFCAREAGGPIWHDDVKYYDFNDGYYN"
            "YHYMDVWGKGTTVTVSSASTKGPSVFPLAPSSKSTSGGTAALGCLVKDYFPEPVTVSWNS"
            "GALTSGVHTFPAVLQSSGLYSLSSVVTVPSSSLGTQTYICNVNHKPSNTKVDKRVEPKSC"
            "GLEVLF"
        ),
    },
    {
        # Same file, record 4dqo_L (the light chain paired with 4dqo_H).
        "id": "real_pdb_4dqo_L",
        "chain": "light_lambda",
        "description": "lambda light chain, VL + CL, PDB 4DQO chain L",
        "source": "oxpig/ANARCI:Example_scripts_and_sequences/antibody_sequences.fasta",
        "crc64": "0FFE7CBE82EF7F5B",
        "sequence": (
            "QSALTQPASVSGSPGQTITISCQGTSSDVGGFDSVSWYQQSPGKAPKVMVFDVSHRPSGI"
            "SNRFSGSKSGNTASLTISGLHIEDEGDYFCSSLTDRSHRIFGGGTKVTVLGQPKAAPSVT"
            "LFPPSSEELQANKATLVCLISDFYPGAVTVAWKADSSPVKAGVETTTPSKQSNNKYAASS"
            "YLSLTPEQWKSHKSYSCQVTHEGSTVEKTVAPTECS"
        ),
    },
    {
        # Same file, record 1mcc_A.
        "id": "real_pdb_1mcc_A",
        "chain": "light_lambda",
        "description": "lambda light chain, VL + CL, PDB 1MCC chain A",
        "source": "oxpig/ANARCI:Example_scripts_and_sequences/antibody_sequences.fasta",
        "crc64": "CB244327528C9FCA",
        "sequence": (
            "PSALTQPPSASGSLGQSVTISCTGTSSDVGGYNYVSWYQQHAGKAPKVIIYEVNKRPSGV"
            "PDRFSGSKSGNTASLTVSGLQAEDEADYYCSSYEGSDNFVFGTGTKVTVLGQPKANPTVT"
            "LFPPSSEELQANKATLVCLISDFYPGAVTVAWKADGSPVKAGVETTKPSKQSNNKYAASS"
            "YLSLTPEQWKSHRSYSCQVTHEGSTVEKTVAPTECS"
        ),
    },
    {
        # Same file, record 2fl5_A.
        "id": "real_pdb_2fl5_A",
        "chain": "light_lambda",
        "description": "lambda light chain, VL + CL, PDB 2FL5 chain A",
        "source": "oxpig/ANARCI:Example_scripts_and_sequences/antibody_sequences.fasta",
        "crc64": "5820D3994298B853",
        "sequence": (
            "SYELKQPPSVSVSPGQTARITCSGDVLPKKYAYWYQERSGQAPVLVVYEDSGRPSEIPER"
            "FSGSSSGTKATLTISGAQVEDEADYYCYSDISNGYPLFGGGTKLSVGQPKAAPSVTLFPP"
            "SSEELQANKATLVCLISDFYPGAVTVAWKADSSPIKAGVETTTPSKQSNNKYAASSYLSL"
            "TPEQWKSHRSYSCQVTHEGSTVEKTVAPT"
        ),
    },
    {
        # Same file, record 1nj9_A (a mouse lambda light chain).
        "id": "real_pdb_1nj9_A",
        "chain": "light_lambda",
        "description": "lambda light chain, VL + CL, PDB 1NJ9 chain A",
        "source": "oxpig/ANARCI:Example_scripts_and_sequences/antibody_sequences.fasta",
        "crc64": "3B1CFC5C1C687483",
        "sequence": (
            "QAVVTQESALTTSPGETVTLTCRSSTGTITSDNYANWVQEKPDHLFSGLIGVNNARPPGV"
            "PARFSGSLTGDKAVLTITGAQTEDEAIYFCALWYSNHWVFGGGTKLTVLGQPKSSPSVTL"
            "FPPSSEELETNKATLVCTITDFYPGVVTVDWKVDGTPVTQGMETTQPSKQSNNKYMASSY"
            "LTLTAREWERHSSYSCQVTHEGHTVEKSLSRA"
        ),
    },
]

REAL_BY_ID = {real["id"]: real for real in REAL_SEQUENCES}

# ---------------------------------------------------------------------------
# Synthetic plan.  Parents are real record IDs; for chains that carry a
# constant region the variable domain is cut out first (``variable_domain``).
# ---------------------------------------------------------------------------

# Heavy/light pairs of the same antibody; each pair entry yields one heavy and
# one light variant sharing a ``pair=`` tag.  (heavy parent, light parent, n)
PAIR_PLAN = [
    ("real_antiberty_readme_VH", "real_antiberty_readme_VL", 2),
    ("real_immunebuilder_readme_VH", "real_immunebuilder_readme_VL", 2),
    ("real_trastuzumab_VH", "real_trastuzumab_VL", 2),
    ("real_mablab_test_HC", "real_mablab_test_LC", 1),
    ("real_pdb_4dqo_H", "real_pdb_4dqo_L", 1),
]

# Unpaired variable-domain variants: parents are used in turn.
SINGLE_PLAN = [
    ("heavy", 10, ["real_antiberty_readme_VH", "real_immunebuilder_readme_VH",
                   "real_abnumber_readme_VH", "real_trastuzumab_VH",
                   "real_pdb_1t2j_A", "real_mablab_test_HC",
                   "real_pdb_4dqo_H"]),
    ("light_kappa", 8, ["real_antiberty_readme_VL", "real_immunebuilder_readme_VL",
                        "real_abnumber_test_VL", "real_trastuzumab_VL",
                        "real_pdb_1rei_A", "real_mablab_test_LC"]),
    ("light_lambda", 10, ["real_pdb_1mcc_A", "real_pdb_4dqo_L",
                          "real_pdb_2fl5_A", "real_pdb_1nj9_A"]),
]

# Variants that keep part or all of the constant region:
# (parent, lowest length, highest length).  The constant region is cut at a
# length drawn uniformly from [low, high]; low == high keeps the full chain.
LONG_PLAN = [
    ("real_mablab_test_HC", 451, 451),
    ("real_mablab_test_HC", 380, 440),
    ("real_mablab_test_HC", 300, 370),
    ("real_mablab_test_HC", 240, 290),
    ("real_trastuzumab_HC_Fab", 227, 227),
    ("real_pdb_4dqo_H", 246, 246),
    ("real_trastuzumab_LC", 214, 214),
    ("real_mablab_test_LC", 150, 200),
    ("real_pdb_1mcc_A", 216, 216),
    ("real_pdb_2fl5_A", 140, 190),
]

# CDR-H3 junction peptides (IMGT Cys104 to Trp118) cut from CDR-H3-only
# variants of these parents, used in turn; peptides outside
# [FRAGMENT_MIN, FRAGMENT_MAX] residues are skipped.
FRAGMENT_COUNT = 8
FRAGMENT_PARENTS = ["real_pdb_1t2j_A", "real_trastuzumab_VH",
                    "real_abnumber_readme_VH", "real_mablab_test_HC",
                    "real_immunebuilder_readme_VH", "real_antiberty_readme_VH"]
FRAGMENT_MIN, FRAGMENT_MAX = 10, 25

# Substitutions per variant: uniform in [SUB_MIN, SUB_MAX].  Heavy-chain
# variants also get a CDR-H3 insertion of 1-3 residues with probability
# H3_INSERT_P, or otherwise a 1-residue CDR-H3 deletion (overall probability
# H3_DELETE_P; only if the CDR-H3 keeps at least 4 residues).  Insertions
# and deletions are placed inside the CDR-H3, never at its first residue;
# deletions never remove a cysteine.
SUB_MIN, SUB_MAX = 1, 4
H3_INSERT_P = 0.30
H3_DELETE_P = 0.15


class Sampler:
    """Deterministic sampling built only on ``random.Random.random()``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def below(self, n: int) -> int:
        """Uniform integer in [0, n)."""
        return min(int(self.rng.random() * n), n - 1)

    def between(self, low: int, high: int) -> int:
        """Uniform integer in [low, high]."""
        return low + self.below(high - low + 1)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def choice(self, alphabet: str) -> str:
        return alphabet[self.below(len(alphabet))]

    def sample(self, pool: list[int], k: int) -> list[int]:
        """k distinct items of ``pool`` (in draw order)."""
        pool = list(pool)
        picked = []
        for _ in range(min(k, len(pool))):
            picked.append(pool.pop(self.below(len(pool))))
        return picked


# ---------------------------------------------------------------------------
# Approximate CDR location from conserved motifs.  Indices are 0-based and
# half-open.  Heavy: Cys22 is the first C in residues 19-27, Cys92 (Kabat)
# the C of the first [YF][YF]C within residues 76-110, and the CDR-H3 ends before
# the W of the J-region motif WGxG.  CDR-H1 = Kabat/Chothia 26-35
# (Cys22 + 4 .. + 13), CDR-H2 = Kabat 50-65 assuming no insertions
# (Cys22 + 28 .. + 44), CDR-H3 = Kabat 95-102 (Cys92 + 3 .. W - 1).
# Light: Cys23 and Cys88 as above (J motif FGxG), CDR-L1 = Kabat 24-34
# (Cys23 + 1 .. Trp35 - 1, Trp35 being the first W after Cys23 + 6),
# CDR-L2 = Kabat 50-56 (Trp35 + 15 .. + 21), CDR-L3 = Kabat 89-97
# (Cys88 + 1 .. F - 1).
# ---------------------------------------------------------------------------

def _landmarks(seq: str, chain: str) -> tuple[int, int, int]:
    """(first Cys, second Cys, start of the J motif WGxG/FGxG)."""
    c1 = seq.find("C", 18, 27)
    m2 = re.compile(r"[YF][YF]C").search(seq, 75, 110)
    motif = r"WG.G" if chain == "heavy" else r"FG.G"
    if c1 < 0 or m2 is None:
        raise ValueError(f"no conserved cysteines found in {seq[:30]}...")
    c2 = m2.end() - 1
    mj = re.compile(motif).search(seq, c2 + 3)
    if mj is None or mj.start() - c2 > 40:
        raise ValueError(f"no {motif} motif after Cys at {c2 + 1}")
    return c1, c2, mj.start()


def cdr_ranges(seq: str, chain: str) -> dict[str, tuple[int, int]]:
    c1, c2, j = _landmarks(seq, chain)
    if chain == "heavy":
        return {"H1": (c1 + 4, c1 + 14), "H2": (c1 + 28, c1 + 45),
                "H3": (c2 + 3, j)}
    w = seq.find("W", c1 + 6)
    return {"L1": (c1 + 1, w), "L2": (w + 15, w + 22), "L3": (c2 + 1, j)}


def variable_domain(seq: str, chain: str) -> str:
    """The chain up to the end of its J region (WGxG + 7 or FGxG + 6)."""
    _, _, j = _landmarks(seq, chain)
    return seq[:j + (11 if chain == "heavy" else 10)]


def junction(seq: str) -> str:
    """CDR-H3 junction: from Cys92 (Kabat; IMGT 104) to the W of WGxG."""
    _, c2, j = _landmarks(seq, "heavy")
    return seq[c2:j + 1]


def mutate(s: Sampler, seq: str, chain: str,
           regions: tuple[str, ...] | None = None) -> tuple[str, list[str]]:
    """Substitute residues at CDR positions (and maybe edit CDR-H3).

    ``regions`` limits the substitutions to some CDRs (default: all three).
    Cysteines are never substituted, and never introduced.  Returns the new
    sequence and a list of change labels using 1-based positions of the
    parent (e.g. ``Y33F``, ``H3+2@101``, ``H3-1@99``).
    """
    ranges = cdr_ranges(seq, chain)
    chosen = [ranges[name] for name in (regions or ranges)]
    pool = sorted({i for lo, hi in chosen for i in range(lo, hi)
                   if seq[i] != "C"})
    positions = sorted(s.sample(pool, s.between(SUB_MIN, SUB_MAX)))
    chars = list(seq)
    labels = []
    for pos in positions:
        old = chars[pos]
        new = s.choice(SUBSTITUTION_AA.replace(old, ""))
        chars[pos] = new
        labels.append(f"{old}{pos + 1}{new}")
    if chain == "heavy":
        lo, hi = ranges["H3"]
        if s.chance(H3_INSERT_P):
            at = s.between(lo + 1, hi - 1)
            ins = "".join(s.choice(SUBSTITUTION_AA) for _ in range(s.between(1, 3)))
            chars[at:at] = list(ins)
            labels.append(f"H3+{len(ins)}@{at + 1}")
        elif hi - lo > 4 and s.chance(H3_DELETE_P / (1 - H3_INSERT_P)):
            spots = [i for i in range(lo + 1, hi - 1) if chars[i] != "C"]
            at = spots[s.below(len(spots))]
            del chars[at]
            labels.append(f"H3-1@{at + 1}")
    return "".join(chars), labels


def chain_label(chain: str) -> str:
    return {"heavy": "VH", "light_kappa": "VL_kappa",
            "light_lambda": "VL_lambda", "fragment": "CDRH3"}[chain]


LONG_LABELS = {"heavy": "HC_const", "light_kappa": "LC_kappa_const",
               "light_lambda": "LC_lambda_const"}


def header(rec_id: str, chain: str, kind: str, seq: str, text: str) -> str:
    return f">{rec_id} chain={chain} class={kind} len={len(seq)} {text}"


def build_synthetic(s: Sampler) -> list[tuple[str, str, str, str]]:
    """Return (id, chain, sequence, description text) for synthetic records."""
    out: list[tuple[str, str, str, str]] = []
    seen = {real["sequence"] for real in REAL_SEQUENCES}

    def add(suffix: str, chain: str, seq: str, text: str) -> None:
        if seq in seen:
            raise ValueError(f"duplicate synthetic sequence ({text})")
        seen.add(seq)
        out.append((f"syn_{len(out) + 1:04d}_{suffix}", chain, seq, text))

    def variant(parent_id: str, chain: str, extra: str = "",
                keep: int | None = None,
                regions: tuple[str, ...] | None = None) -> tuple[str, str]:
        """A CDR variant of ``parent_id``; variable domain only unless ``keep``
        (a total length to cut the full chain at) is given."""
        parent = REAL_BY_ID[parent_id]["sequence"]
        if keep is None:
            parent = variable_domain(parent, chain)
        else:
            parent = parent[:keep]
        for _ in range(20):
            seq, labels = mutate(s, parent, chain, regions)
            if seq not in seen:
                break
        text = f"{'CDR-H3' if regions else 'CDR'} variant of {parent_id}"
        if keep is not None:
            text += f" (residues 1-{keep})"
        text += f"; changes={','.join(labels)}"
        return seq, text + extra

    pair_no = 0
    for heavy_id, light_id, n in PAIR_PLAN:
        light_chain = REAL_BY_ID[light_id]["chain"]
        for _ in range(n):
            pair_no += 1
            tag = f"pair{pair_no:02d}"
            seq, text = variant(heavy_id, "heavy", f"; pair={tag}")
            add(f"VH_{tag}", "heavy", seq, text)
            seq, text = variant(light_id, light_chain, f"; pair={tag}")
            add(f"{chain_label(light_chain)}_{tag}", light_chain, seq, text)

    for chain, count, parents in SINGLE_PLAN:
        for i in range(count):
            seq, text = variant(parents[i % len(parents)], chain)
            add(chain_label(chain), chain, seq, text)

    for parent_id, low, high in LONG_PLAN:
        chain = REAL_BY_ID[parent_id]["chain"]
        keep = s.between(low, high)
        seq, text = variant(parent_id, chain, keep=keep)
        add(LONG_LABELS[chain], chain, seq, text)

    made = 0
    attempt = 0
    while made < FRAGMENT_COUNT:
        parent_id = FRAGMENT_PARENTS[attempt % len(FRAGMENT_PARENTS)]
        attempt += 1
        seq, text = variant(parent_id, "heavy", regions=("H3",))
        pep = junction(seq)
        if not FRAGMENT_MIN <= len(pep) <= FRAGMENT_MAX or pep in seen:
            continue
        made += 1
        add("CDRH3", "fragment", pep,
            "CDR-H3 junction peptide (Cys to Trp) cut from a " + text)
    return out


def build_records() -> list[tuple[str, str]]:
    """Return (header line, sequence) pairs in file order."""
    records: list[tuple[str, str]] = []
    for real in REAL_SEQUENCES:
        text = f"{real['description']}; source={real['source']}"
        records.append((header(real["id"], real["chain"], "real",
                               real["sequence"], text), real["sequence"]))
    for rec_id, chain, seq, text in build_synthetic(Sampler(SEED)):
        records.append((header(rec_id, chain, "synthetic", seq, text), seq))
    validate(records)
    return records


HEADER_RE = re.compile(
    r"^>(\S+) chain=(heavy|light_kappa|light_lambda|fragment) "
    r"class=(real|synthetic) len=(\d+) \S")


def validate(records: list[tuple[str, str]]) -> None:
    seen: set[str] = set()
    chains: set[str] = set()
    for head, seq in records:
        m = HEADER_RE.match(head)
        if m is None:
            raise ValueError(f"bad header: {head!r}")
        rec_id, chain, _, length = m.groups()
        if not ID_RE.match(rec_id):
            raise ValueError(f"bad id: {rec_id!r}")
        if rec_id in seen:
            raise ValueError(f"duplicate id: {rec_id!r}")
        seen.add(rec_id)
        chains.add(chain)
        bad = set(seq) - ALLOWED
        if bad or not seq:
            raise ValueError(f"{rec_id}: bad residues {sorted(bad)}")
        if int(length) != len(seq):
            raise ValueError(f"{rec_id}: len= field {length} != {len(seq)}")
        if len(seq) > ANTIBERTY_MAX_RESIDUES:
            raise ValueError(f"{rec_id}: {len(seq)} residues > {ANTIBERTY_MAX_RESIDUES}")
    for real in REAL_SEQUENCES:
        got = crc64(real["sequence"])
        if got != real["crc64"]:
            raise ValueError(f"{real['id']}: CRC64 {got} != {real['crc64']}")
    if variable_domain(TRASTUZUMAB_HC, "heavy") != TRASTUZUMAB_HC[:120] or \
            variable_domain(TRASTUZUMAB_LC, "light_kappa") != TRASTUZUMAB_LC[:107]:
        raise ValueError("trastuzumab variable-domain boundaries moved")
    if chains != set(CHAIN_TYPES):
        raise ValueError(f"chain types present: {sorted(chains)}")
    if len(records) < MIN_RECORDS:
        raise ValueError(f"fewer than {MIN_RECORDS} records")


def summary(records: list[tuple[str, str]]) -> str:
    lengths = [len(seq) for _, seq in records]
    out = [
        f"records: {len(records)}",
        f"length min/median/max: {min(lengths)}/"
        f"{statistics.median(lengths):g}/{max(lengths)}",
        f"total residues: {sum(lengths)}",
    ]
    bins = [(1, 30), (31, 100), (101, 115), (116, 135), (136, 200),
            (201, 250), (251, 350), (351, 450), (451, ANTIBERTY_MAX_RESIDUES)]
    for low, high in bins:
        count = sum(1 for n in lengths if low <= n <= high)
        out.append(f"  len {f'{low}-{high}':>10}: {count}")
    table: dict[tuple[str, str], int] = {}
    for head, _ in records:
        _, chain, kind, _ = HEADER_RE.match(head).groups()
        table[(chain, kind)] = table.get((chain, kind), 0) + 1
    for chain in CHAIN_TYPES:
        real = table.get((chain, "real"), 0)
        syn = table.get((chain, "synthetic"), 0)
        out.append(f"chain={chain}: {real + syn} ({real} real, {syn} synthetic)")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(run(__doc__.split("\n\n")[0], DEFAULT_OUTPUT, build_records, summary))
