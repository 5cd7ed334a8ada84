#!/usr/bin/env python
"""Training and sampling throughput of TDLM, AR vs diffusion in one run (see tdlm/research/benchmark.py).

Same as `tdlm-benchmark` (tdlm/cli/benchmark.py); `tdlm-benchmark --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.benchmark import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
