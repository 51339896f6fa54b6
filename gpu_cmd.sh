# one-off GPU check (not committed): T5 embed with --pooling residues, and where embed's start-up goes
W=$(mktemp -d)
python3 -c "
import time; t=time.perf_counter(); import torch; a=time.perf_counter()-t; torch.zeros(1, device='cuda'); b=time.perf_counter()-t-a
import fp16guard.embed, esm, transformers; c=time.perf_counter()-t-a-b
print(f'import torch {a:.2f} s; CUDA init {b:.2f} s; fp16guard.embed, esm, transformers {c:.2f} s')" > $OUT/startup-probe.txt 2>&1
python3 -c "
import sys; sys.path.insert(0, 'bench')
from pathlib import Path
from _common import write_proteins
from fp16guard.testing import write_hf_t5
write_hf_t5(Path('$W/t5'), arch='prot_t5_xl'); write_proteins(Path('$W/p.fa'), 4000)" > /dev/null 2>&1
python3 -m fp16guard_cli validate hf --model $W/t5 --device cuda --pooling residues --careful-timing -o $OUT/t5v --save-policy $OUT/t5v/policy.json > $OUT/t5v.log 2>&1; echo validate=$?
python3 -m fp16guard_cli embed hf --model $W/t5 --device cuda --pooling residues -s $W/p.fa -o $W/e.h5 --policy $OUT/t5v/policy.json > $OUT/t5e.log 2>&1; echo embed=$?
rm -rf $W/t5
timeout 200 python3 bench/embed.py --out $OUT/esm-startup --steps embed --sequences 20000 > /dev/null 2> $OUT/esm-startup.err; echo esm=$?
