#!/usr/bin/env python
"""Evaluate a TDLM checkpoint offline: likelihood on an eval file and/or downstream tasks.

Same as `tdlm-evaluate` (tdlm/cli/evaluate.py); `tdlm-evaluate --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.evaluate import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
