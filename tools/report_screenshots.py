#!/usr/bin/env python3
"""Regenerate docs/img/report-pass.png and docs/img/report-fail.png: report.html of two real CLI
runs on tiny ESM-2 checkpoints (healthy, and a planted MLP overflow, profiled) over the bundled
protein set, screenshotted by headless Chromium. Takes a few minutes on a CPU.

    python tools/report_screenshots.py [--chromium chromium]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from fp16guard.testing import write_checkpoint

DOCS = Path(__file__).resolve().parent.parent / "docs" / "img"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, plant, code, extra in (("pass", None, 0, []), ("fail", "mlp", 1, ["--profile"])):
            weights = write_checkpoint(root / f"{plant or 'healthy'}.pt", plant=plant)
            out = root / name
            run = subprocess.run([sys.executable, "-m", "fp16guard_cli", "validate", "esm2", "--weights", str(weights),
                                  "--device", "cpu", "-o", str(out), *extra], capture_output=True, text=True)
            if run.returncode != code:
                sys.exit(f"{name}: exit {run.returncode}, expected {code}\n{run.stderr[-2000:]}")
            png = DOCS / f"report-{name}.png"
            subprocess.run([args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--screenshot={png}", "--window-size=1200,1600", (out / "report.html").as_uri()],
                           check=True, capture_output=True)
            print(f"{png} ({png.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
