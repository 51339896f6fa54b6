"""Test-only entry point: `fp16guard` with a device fault on one rank.

Run under torchrun like the real CLI. Rank ``FAULT_RANK`` raises the error a broken device
raises (a RuntimeError from inside the forward pass) on its first FP16 batch, after the FP32
reference has run on every rank. No FASTA input or checkpoint makes the forward pass of a
fair-esm model raise on one rank only, so the fault is injected here, outside the package.
"""

import os
import sys

import torch

from fp16guard.models.esm2 import Esm2Target

FAULT_RANK = 1
original = Esm2Target.hidden_states


def faulty(self, loaded, module, tokens, layers):
    if int(os.environ.get("RANK", "0")) == FAULT_RANK and next(module.parameters()).dtype == torch.float16:
        raise RuntimeError("simulated device fault in an FP16 batch")
    return original(self, loaded, module, tokens, layers)


Esm2Target.hidden_states = faulty

if __name__ == "__main__":
    from fp16guard_cli.main import run

    sys.argv[0] = "fp16guard"
    run()
