#!/usr/bin/env python
"""Data pipeline benchmark: preparation tokens/s and peak RSS, launch -> first step, loader time per batch.

Same as `tdlm-benchmark-data` (tdlm/cli/benchmark_data.py); `tdlm-benchmark-data --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.benchmark_data import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
