#!/usr/bin/env python3
"""Build data/protein_reference.fasta, the bundled protein reference set.

The set is used to compare FP16 against FP32 embeddings of protein language
models such as ESM-2.  It mixes three kinds of records:

* ``syn_*``  synthetic sequences whose residues are drawn from the
  UniProtKB/Swiss-Prot amino-acid background frequencies, with lengths spread
  roughly log-uniformly from about 10 to beyond ESM-2's 1022-residue limit;
* ``edge_*`` hand-designed edge cases (non-standard residue letters,
  low-complexity runs, boundary lengths, ...);
* ``real_*`` a handful of real UniProt sequences, embedded below as constants
  together with where they were copied from.

The output is fully deterministic: every random draw comes from one
``random.Random(SEED)`` instance and only its ``random()`` method is used
(Mersenne Twister output is stable across Python versions; the sampling and
length helpers are implemented here rather than relying on
``random.choices``/``randint`` internals).  Running the script twice gives
byte-identical output.

Usage::

    python3 tools/build_protein_reference.py            # (re)write the FASTA
    python3 tools/build_protein_reference.py --check    # exit 1 if out of date
    python3 tools/build_protein_reference.py --stats    # print a summary only

Standard library only.
"""

from __future__ import annotations

import bisect
import math
import random
import re
import statistics
import sys
from pathlib import Path

from fasta_builder import crc64, run

SEED = 16032
ESM2_MAX_RESIDUES = 1022
LINE_WIDTH = 60

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "data" / "protein_reference.fasta"

STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"
ALLOWED = set(STANDARD_AA + "XBZUO")
ID_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")

# ---------------------------------------------------------------------------
# Background amino-acid frequencies (percent) of UniProtKB/Swiss-Prot,
# release 2013_10 (16-Oct-2013; 541,561 entries, 192,480,382 residues),
# "Amino acid composition - composition in percent for the complete database"
# of the UniProtKB/Swiss-Prot release statistics
# (https://web.expasy.org/docs/relnotes/relstat.html).  Later releases differ
# by at most about 0.1 percentage point per residue.  Stored as integer
# hundredths of a percent so that the cumulative table is exact; the values
# sum to 9989 (rounding in the published table), which is used as the total.
# ---------------------------------------------------------------------------
SWISSPROT_PERCENT_X100 = {
    "A": 825, "R": 553, "N": 406, "D": 545, "C": 137,
    "E": 675, "Q": 393, "G": 707, "H": 227, "I": 595,
    "L": 966, "K": 584, "M": 242, "F": 386, "P": 470,
    "S": 657, "T": 534, "W": 108, "Y": 292, "V": 687,
}  # fmt: skip

# ---------------------------------------------------------------------------
# Real sequences.  Each was copied exactly from the named public file; nothing
# was typed from memory.  ``crc64`` is the UniProt CRC64 checksum of the
# sequence; ``crc64_source`` says where the expected value comes from.
# ---------------------------------------------------------------------------
REAL_SEQUENCES = [
    {
        # Source: github.com/rnnh/bioinfo-notebook, docs/cl_intro.md (verbatim
        # output of downloading https://www.uniprot.org/uniprot/P69905.fasta,
        # header "sp|P69905|HBA_HUMAN ... SV=2").
        "id": "real_P69905_HBA_HUMAN",
        "accession": "P69905",
        "entry_name": "HBA_HUMAN",
        "description": "Hemoglobin subunit alpha, Homo sapiens",
        "source": "rnnh/bioinfo-notebook:docs/cl_intro.md",
        "crc64": "15E13666573BBBAE",
        "crc64_source": "checksum published by UniProt for P69905",
        "sequence": (
            "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHG"
            "KKVADALTNAVAHVDDMPNALSALSDLHAHKLRVDPVNFKLLSHCLLVTLAAHLPAEFTP"
            "AVHASLDKFLASVSTVLTSKYR"
        ),
    },
    {
        # Source: github.com/facebookresearch/esm, examples/data/P62593.fasta,
        # record "0|beta-lactamase_P20P|..." (P20P is a synonymous change, so
        # the record is the wild-type precursor).  Residues 24-286 are
        # identical to the mature sequence passed as --sequence in the same
        # repository's examples/variant-prediction/README.md.
        "id": "real_P62593_BLAT_ECOLX",
        "accession": "P62593",
        "entry_name": "BLAT_ECOLX",
        "description": "Beta-lactamase TEM (TEM-1) precursor, Escherichia coli",
        "source": "facebookresearch/esm:examples/data/P62593.fasta",
        "crc64": "BB678943BB18934B",
        "crc64_source": "computed from the copied sequence",
        "sequence": (
            "MSIQHFRVALIPFFAAFCLPVFAHPETLVKVKDAEDQLGARVGYIELDLNSGKILESFRP"
            "EERFPMMSTFKVLLCGAVLSRVDAGQEQLGRRIHYSQNDLVEYSPVTEKHLTDGMTVREL"
            "CSAAITMSDNTAANLLLTTIGGPKELTAFLHNMGDHVTRLDRWEPELNEAIPNDERDTTM"
            "PAAMATTLRKLLTGELLTLASRQQLIDWMEADKVAGPLLRSALPAGWFIADKSGAGERGS"
            "RGIIAALGPDGKPSRIVVIYTTGSQATMDERNRQIAEIGASLIKHW"
        ),
    },
    {
        # Source: github.com/facebookresearch/esm,
        # examples/data/some_proteins.fasta, record ">UniRef50_A0A223SCH7".
        "id": "real_UniRef50_A0A223SCH7",
        "accession": "A0A223SCH7",
        "entry_name": "UniRef50_A0A223SCH7",
        "description": "UniRef50 cluster representative A0A223SCH7 (UniProtKB/TrEMBL)",
        "source": "facebookresearch/esm:examples/data/some_proteins.fasta",
        "crc64": "8D26A453385E8013",
        "crc64_source": "computed from the copied sequence",
        "sequence": (
            "MGPPRWWKGITGLAAVVHRADPEDKADLYAKMGLYLEYHPETRIVEARIKPRLHDVCESK"
            "VSEGGLEPPCP"
        ),
    },
    {
        # Source: github.com/biopython/biopython,
        # Tests/SwissProt/multi_ex.fasta (record sp|P00981|IVBKI_DENPO);
        # checksum from the SQ line of Tests/SwissProt/multi_ex.txt.
        "id": "real_P00981_IVBKI_DENPO",
        "accession": "P00981",
        "entry_name": "IVBKI_DENPO",
        "description": "Dendrotoxin-K (fragment, precursor), Dendroaspis polylepis polylepis",
        "source": "biopython/biopython:Tests/SwissProt/multi_ex.fasta",
        "crc64": "DCDFB9AFA07D7D46",
        "crc64_source": "SQ line of biopython Tests/SwissProt/multi_ex.txt",
        "sequence": (
            "SGHLLLLLGLLTLWAELTPVSGAAKYCKLPLRIGPCKRKIPSFYYKWKAKQCLPFDYSGC"
            "GGNANRFKTIEECRRTCVG"
        ),
    },
    {
        # Source: github.com/biopython/biopython,
        # Tests/SwissProt/multi_ex.fasta (record sp|Q51481|NIRQ_PSEAE).
        "id": "real_Q51481_NIRQ_PSEAE",
        "accession": "Q51481",
        "entry_name": "NIRQ_PSEAE",
        "description": "Denitrification regulatory protein NirQ, Pseudomonas aeruginosa",
        "source": "biopython/biopython:Tests/SwissProt/multi_ex.fasta",
        "crc64": "3FD36F19BEBA38B5",
        "crc64_source": "SQ line of biopython Tests/SwissProt/multi_ex.txt",
        "sequence": (
            "MRDATPFYEATGHEIEVFERAWRHGLPVLLKGPTGCGKTRFVQYMARRLELPLYSVACHD"
            "DLGAADLLGRHLIGADGTWWQDGPLTRAVREGGICYLDEVVEARQDTTVAIHPLADDRRE"
            "LYLERTGETLQAPPSFMLVVSYNPGYQNLLKGLKPSTRQRFVALRFDYPAAQQEARILVG"
            "ESGCAETLAQRLVQLGQALRRLEQHDLEEVASTRLLIFAARLIGDGMDPREACRVALAEP"
            "LSDDPATVAALMDIVDLHVA"
        ),
    },
    {
        # Source: github.com/biopython/biopython,
        # Tests/SwissProt/multi_ex.fasta (record sp|Q51858|CBBQ_PSEHY).
        "id": "real_Q51858_CBBQ_PSEHY",
        "accession": "Q51858",
        "entry_name": "CBBQ_PSEHY",
        "description": "Protein CbbQ, Pseudomonas hydrogenothermophila",
        "source": "biopython/biopython:Tests/SwissProt/multi_ex.fasta",
        "crc64": "EA99FE2DB05B0118",
        "crc64_source": "SQ line of biopython Tests/SwissProt/multi_ex.txt",
        "sequence": (
            "MDLRNQYLVRSEPYYHAVGDEIERFEAAYANRIPMMLKGPTGCGKSRFVEYMAWKLGKPL"
            "ITVACNEDMTAADLVGRFLLDKEGTRWQDGPLTTAARIGAICYLDEVVEARQDTTVVIHP"
            "LTDHRRILPLDKKGEVVEAHPDFQIVISYNPGYQSAMKDLKTSTKQRFAAMDFDYPAPEV"
            "ESEIVAHESGVDAATAKKLVEVAIRSRHLKGHGLDEGISTRLLVYAGSLITKGIAPLIAC"
            "EMALICPITDDPDLRYALRAAAQTLFA"
        ),
    },
    {
        # Source: github.com/biopython/biopython,
        # Tests/SwissProt/multi_ex.fasta (record sp|P00750|TPA_HUMAN).
        "id": "real_P00750_TPA_HUMAN",
        "accession": "P00750",
        "entry_name": "TPA_HUMAN",
        "description": "Tissue-type plasminogen activator precursor, Homo sapiens",
        "source": "biopython/biopython:Tests/SwissProt/multi_ex.fasta",
        "crc64": "B7EC9B1A5E3FDC4D",
        "crc64_source": "SQ line of biopython Tests/SwissProt/multi_ex.txt",
        "sequence": (
            "MDAMKRGLCCVLLLCGAVFVSPSQEIHARFRRGARSYQVICRDEKTQMIYQQHQSWLRPV"
            "LRSNRVEYCWCNSGRAQCHSVPVKSCSEPRCFNGGTCQQALYFSDFVCQCPEGFAGKCCE"
            "IDTRATCYEDQGISYRGTWSTAESGAECTNWNSSALAQKPYSGRRPDAIRLGLGNHNYCR"
            "NPDRDSKPWCYVFKAGKYSSEFCSTPACSEGNSDCYFGNGSAYRGTHSLTESGASCLPWN"
            "SMILIGKVYTAQNPSAQALGLGKHNYCRNPDGDAKPWCHVLKNRRLTWEYCDVPSCSTCG"
            "LRQYSQPQFRIKGGLFADIASHPWQAAIFAKHRRSPGERFLCGGILISSCWILSAAHCFQ"
            "ERFPPHHLTVILGRTYRVVPGEEEQKFEVEKYIVHKEFDDDTYDNDIALLQLKSDSSRCA"
            "QESSVVRTVCLPPADLQLPDWTECELSGYGKHEALSPFYSERLKEAHVRLYPSSRCTSQH"
            "LLNRTVTDNMLCAGDTRSGGPQANLHDACQGDSGGPLVCLNDGRMTLVGIISWGLGCGQK"
            "DVPGVYTKVTNYLDWIRDNMRP"
        ),
    },
    {
        # Source: github.com/biopython/biopython,
        # Tests/SwissProt/multi_ex.fasta (record sp|P28799|GRN_HUMAN).
        # Cysteine-rich (tandem granulin domains).
        "id": "real_P28799_GRN_HUMAN",
        "accession": "P28799",
        "entry_name": "GRN_HUMAN",
        "description": "Granulins (progranulin) precursor, Homo sapiens; cysteine-rich",
        "source": "biopython/biopython:Tests/SwissProt/multi_ex.fasta",
        "crc64": "4E5947F1B4EDE619",
        "crc64_source": "SQ line of biopython Tests/SwissProt/multi_ex.txt",
        "sequence": (
            "MWTLVSWVALTAGLVAGTRCPDGQFCPVACCLDPGGASYSCCRPLLDKWPTTLSRHLGGP"
            "CQVDAHCSAGHSCIFTVSGTSSCCPFPEAVACGDGHHCCPRGFHCSADGRSCFQRSGNNS"
            "VGAIQCPDSQFECPDFSTCCVMVDGSWGCCPMPQASCCEDRVHCCPHGAFCDLVHTRCIT"
            "PTGTHPLAKKLPAQRTNRAVALSSSVMCPDARSRCPDGSTCCELPSGKYGCCPMPNATCC"
            "SDHLHCCPQDTVCDLIQSKCLSKENATTDLLTKLPAHTVGDVKCDMEVSCPDGYTCCRLQ"
            "SGAWGCCPFTQAVCCEDHIHCCPAGFTCDTQKGTCEQGPHQVPWMEKAPAHLSLPDPQAL"
            "KRDVPCDNVSSCPSSDTCCQLTSGEWGCCPIPEAVCCSDHQHCCPQGYTCVAEGQCQRGS"
            "EIVAGLEKMPARRASLSHPRDIGCDQHTSCPVGQTCCPSLGGSWACCQLPHAVCCEDRQH"
            "CCPAGYTCNVKARSCEKEVVSAQPATFLARSPHVGVKDVECGEGHFCHDNQTCCRDNRQG"
            "WACCPYRQGVCCADRRHCCPAGFRCAARGTKCLRREAPRWDAPLRDPALRQLL"
        ),
    },
    {
        # Source: github.com/biopython/biopython,
        # Tests/SwissProt/multi_ex.fasta (record sp|Q8NE62|CHDH_HUMAN).
        "id": "real_Q8NE62_CHDH_HUMAN",
        "accession": "Q8NE62",
        "entry_name": "CHDH_HUMAN",
        "description": "Choline dehydrogenase, mitochondrial, Homo sapiens",
        "source": "biopython/biopython:Tests/SwissProt/multi_ex.fasta",
        "crc64": "E9764CD0F325A501",
        "crc64_source": "SQ line of biopython Tests/SwissProt/multi_ex.txt",
        "sequence": (
            "MWCLLRGLGRPGALARGALGQQQSLGARALASAGSESRDEYSYVVVGAGSAGCVLAGRLT"
            "EDPAERVLLLEAGPKDVLAGSKRLSWKIHMPAALVANLCDDRYNWCYHTEVQRGLDGRVL"
            "YWPRGRVWGGSSSLNAMVYVRGHAEDYERWQRQGARGWDYAHCLPYFRKAQGHELGASRY"
            "RGADGPLRVSRGKTNHPLHCAFLEATQQAGYPLTEDMNGFQQEGFGWMDMTIHEGKRWSA"
            "ACAYLHPALSRTNLKAEAETLVSRVLFEGTRAVGVEYVKNGQSHRAYASKEVILSGGAIN"
            "SPQLLMLSGIGNADDLKKLGIPVVCHLPGVGQNLQDHLEIYIQQACTRPITLHSAQKPLR"
            "KVCIGLEWLWKFTGEGATAHLETGGFIRSQPGVPHPDIQFHFLPSQVIDHGRVPTQQEAY"
            "QVHVGPMRGTSVGWLKLRSANPQDHPVIQPNYLSTETDIEDFRLCVKLTREIFAQEALAP"
            "FRGKELQPGSHIQSDKEIDAFVRAKADSAYHPSCTCKMGQPSDPTAVVDPQTRVLGVENL"
            "RVVDASIMPSMVSGNLNAPTIMIAEKAADIIKGQPALWDKDVPVYKPRTLATQR"
        ),
    },
]

# ---------------------------------------------------------------------------
# Synthetic length bins: (low, high inclusive, count).  Lengths are drawn
# log-uniformly within each bin, which gives a roughly log-uniform spread
# overall while guaranteeing coverage of every range of interest.
# ---------------------------------------------------------------------------
SYNTHETIC_BINS = [
    (10, 30, 6),
    (31, 50, 6),
    (51, 100, 14),
    (101, 200, 18),
    (201, 350, 16),
    (351, 500, 12),
    (501, 750, 14),
    (751, 1022, 12),
    (1023, 1400, 4),  # over ESM-2's limit, flagged in the header
]


class Sampler:
    """Deterministic sampling built only on ``random.Random.random()``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        letters = sorted(SWISSPROT_PERCENT_X100)
        self._letters = letters
        cumulative = []
        running = 0
        for aa in letters:
            running += SWISSPROT_PERCENT_X100[aa]
            cumulative.append(running)
        self._cumulative = cumulative
        self._total = running

    def below(self, n: int) -> int:
        """Uniform integer in [0, n)."""
        return min(int(self.rng.random() * n), n - 1)

    def between(self, low: int, high: int) -> int:
        """Uniform integer in [low, high]."""
        return low + self.below(high - low + 1)

    def log_uniform_int(self, low: int, high: int) -> int:
        lo, hi = math.log(low), math.log(high + 1)
        value = int(math.exp(lo + (hi - lo) * self.rng.random()))
        return max(low, min(high, value))

    def residue(self) -> str:
        r = self.below(self._total)
        return self._letters[bisect.bisect_right(self._cumulative, r)]

    def background(self, n: int) -> str:
        return "".join(self.residue() for _ in range(n))

    def protein(self, n: int) -> str:
        """Background sequence of length n starting with Met."""
        if n <= 0:
            return ""
        return "M" + self.background(n - 1)

    def choice(self, alphabet: str) -> str:
        return alphabet[self.below(len(alphabet))]

    def positions(self, length: int, k: int, margin: int = 0,
                  exclude: range = range(0)) -> list[int]:
        """k distinct sorted positions in [margin, length - margin),
        none of them inside ``exclude``."""
        chosen: set[int] = set()
        while len(chosen) < k:
            pos = self.between(margin, length - margin - 1)
            if pos not in exclude:
                chosen.add(pos)
        return sorted(chosen)


def substitute(seq: str, positions: list[int], letters: str) -> str:
    chars = list(seq)
    for i, pos in enumerate(positions):
        chars[pos] = letters[i % len(letters)]
    return "".join(chars)


def header(rec_id: str, kind: str, seq: str, text: str) -> str:
    over = len(seq) > ESM2_MAX_RESIDUES
    flag = "yes" if over else "no"
    desc = f"class={kind} len={len(seq)} over_esm2_limit={flag} {text}"
    if over:
        desc += f" [LONGER THAN ESM-2 LIMIT OF {ESM2_MAX_RESIDUES} RESIDUES]"
    return f">{rec_id} {desc}"


def build_edge_cases(s: Sampler) -> list[tuple[str, str, str]]:
    """Return (id, sequence, description text) for every edge-case record."""
    edges: list[tuple[str, str, str]] = []

    # Very short peptide (10 residues).
    edges.append(("edge_short_peptide_len10", s.protein(10),
                  "very short peptide (10 residues)"))

    # Each of the 20 standard residues exactly once.
    edges.append(("edge_all_20_standard", STANDARD_AA,
                  "each of the 20 standard amino acids once, alphabetical"))

    # Unknown residue X: scattered X plus a run of five X.
    seq = s.protein(150)
    seq = substitute(seq, s.positions(150, 6, margin=5, exclude=range(69, 76)),
                     "X")
    seq = seq[:70] + "XXXXX" + seq[75:]
    edges.append(("edge_unknown_X", seq,
                  "contains X (unknown residue): 6 scattered plus a run of 5"))

    # Ambiguity codes B (Asx) and Z (Glx).
    seq = s.protein(140)
    seq = substitute(seq, s.positions(140, 10, margin=3), "BZ")
    edges.append(("edge_ambiguous_B_Z", seq,
                  "contains B (Asx) and Z (Glx) ambiguity codes, 5 each"))

    # Selenocysteine U.
    seq = s.protein(180)
    pos = s.positions(180, 3, margin=10)
    seq = substitute(seq, pos, "U")
    edges.append(("edge_selenocysteine_U", seq,
                  "contains U (selenocysteine) at 3 positions"))

    # Pyrrolysine O.
    seq = s.protein(200)
    seq = substitute(seq, s.positions(200, 2, margin=10), "O")
    edges.append(("edge_pyrrolysine_O", seq,
                  "contains O (pyrrolysine) at 2 positions"))

    # All five non-standard letters in one short sequence.
    seq = s.protein(90)
    seq = substitute(seq, s.positions(90, 10, margin=2), "XBZUO")
    edges.append(("edge_nonstandard_mix_XBZUO", seq,
                  "contains all of X, B, Z, U, O (2 each)"))

    # Poly-Q stretch (Huntingtin-like low-complexity run).
    seq = s.protein(60) + "Q" * 40 + s.background(60)
    edges.append(("edge_polyQ_run40", seq,
                  "low complexity: 40-residue poly-Q stretch in the middle"))

    # Poly-A stretch.
    seq = s.protein(45) + "A" * 30 + s.background(45)
    edges.append(("edge_polyA_run30", seq,
                  "low complexity: 30-residue poly-A stretch in the middle"))

    # Proline-rich repeat.
    seq = s.protein(30) + "PPLPPAP" * 14 + s.background(30)
    edges.append(("edge_proline_rich_repeat", seq,
                  "low complexity: proline-rich repeat (PPLPPAP)x14"))

    # Short tandem repeat (flexible GGS linker).
    seq = s.protein(20) + "GGS" * 24 + s.background(20)
    edges.append(("edge_tandem_repeat_GGS", seq,
                  "low complexity: short tandem repeat (GGS)x24"))

    # Signal-peptide-like N-terminus: M + positive n-region + hydrophobic
    # h-region + small-residue c-region (AxA-like) + background mature part.
    n_region = "".join(s.choice("KR") for _ in range(3))
    h_region = "".join(s.choice("LLLLAAVIF") for _ in range(15))
    c_region = s.choice("STG") + s.choice("AVS") + "A" + s.choice("QES") + "A"
    seq = "M" + n_region + h_region + c_region + s.background(226)
    edges.append(("edge_signal_peptide_Nterm", seq,
                  "signal-peptide-like N-terminus (n/h/c regions, 24 residues)"))

    # Cysteine-rich: every residue is C with probability 0.3.
    chars = ["M"]
    for _ in range(109):
        chars.append("C" if s.rng.random() < 0.3 else s.residue())
    seq = "".join(chars)
    edges.append(("edge_cysteine_rich", seq,
                  f"cysteine-rich ({seq.count('C')} of {len(seq)} residues are C)"))

    # Length boundaries around the ESM-2 limit.
    edges.append((f"edge_at_limit_len{ESM2_MAX_RESIDUES}",
                  s.protein(ESM2_MAX_RESIDUES),
                  "exactly at the ESM-2 limit (fits without truncation)"))
    edges.append((f"edge_limit_plus1_len{ESM2_MAX_RESIDUES + 1}",
                  s.protein(ESM2_MAX_RESIDUES + 1),
                  "one residue over the ESM-2 limit"))
    edges.append(("edge_over_limit_len1800", s.protein(1800),
                  "the one clearly-too-long record; needs truncation or chunking"))
    return edges


def build_synthetic(s: Sampler) -> list[tuple[str, str, str]]:
    lengths: list[int] = []
    for low, high, count in SYNTHETIC_BINS:
        for _ in range(count):
            lengths.append(s.log_uniform_int(low, high))
    lengths.sort()
    records = []
    for i, n in enumerate(lengths, start=1):
        rec_id = f"syn_{i:04d}_len{n:04d}"
        records.append((rec_id, s.protein(n),
                        "synthetic; Swiss-Prot background composition"))
    return records


def build_records() -> list[tuple[str, str]]:
    """Return (header line, sequence) pairs in file order."""
    s = Sampler(SEED)
    synthetic = build_synthetic(s)
    edges = build_edge_cases(s)

    records: list[tuple[str, str]] = []
    for rec_id, seq, text in synthetic:
        records.append((header(rec_id, "synthetic", seq, text), seq))
    for rec_id, seq, text in edges:
        records.append((header(rec_id, "edge", seq, text), seq))
    for real in REAL_SEQUENCES:
        text = (f"{real['description']}; UniProt {real['accession']} "
                f"({real['entry_name']}); copied from {real['source']}")
        records.append((header(real["id"], "real", real["sequence"], text),
                        real["sequence"]))
    validate(records)
    return records


def validate(records: list[tuple[str, str]]) -> None:
    seen: set[str] = set()
    for head, seq in records:
        rec_id = head[1:].split(" ", 1)[0]
        if not ID_RE.match(rec_id):
            raise ValueError(f"bad id: {rec_id!r}")
        if rec_id in seen:
            raise ValueError(f"duplicate id: {rec_id!r}")
        seen.add(rec_id)
        bad = set(seq) - ALLOWED
        if bad or not seq:
            raise ValueError(f"{rec_id}: bad residues {sorted(bad)}")
        expect_flag = "yes" if len(seq) > ESM2_MAX_RESIDUES else "no"
        if f"over_esm2_limit={expect_flag}" not in head:
            raise ValueError(f"{rec_id}: over-limit flag inconsistent")
    for real in REAL_SEQUENCES:
        got = crc64(real["sequence"])
        if got != real["crc64"]:
            raise ValueError(f"{real['id']}: CRC64 {got} != {real['crc64']}")
    if len(records) < 100:
        raise ValueError("fewer than 100 records")


def summary(records: list[tuple[str, str]]) -> str:
    lengths = [len(seq) for _, seq in records]
    n_over = sum(1 for n in lengths if n > ESM2_MAX_RESIDUES)
    out = [
        f"records: {len(records)}",
        f"length min/median/max: {min(lengths)}/"
        f"{statistics.median(lengths):g}/{max(lengths)}",
        f"total residues: {sum(lengths)}",
        f"records over {ESM2_MAX_RESIDUES}: {n_over}",
    ]
    bins = [(1, 30), (31, 50), (51, 100), (101, 200), (201, 350),
            (351, 500), (501, 750), (751, 1022), (1023, 1500), (1501, 10**9)]
    for low, high in bins:
        count = sum(1 for n in lengths if low <= n <= high)
        label = f"{low}-{high}" if high < 10**9 else f">{low - 1}"
        out.append(f"  len {label:>10}: {count}")
    kinds: dict[str, int] = {}
    for head, _ in records:
        kind = head.split("class=", 1)[1].split(" ", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    out.append("by class: " + ", ".join(f"{k}={v}" for k, v in kinds.items()))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(run(__doc__.split("\n\n")[0], DEFAULT_OUTPUT, build_records, summary))
