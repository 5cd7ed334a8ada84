#!/usr/bin/env python
"""Tokenise a corpus once into memory-mapped token shards (+ index.json) that training reads with numpy + torch.

Same as `tdlm-prepare` (tdlm/cli/prepare_data.py); `tdlm-prepare --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.prepare_data import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
