#!/usr/bin/env python
"""When does masked diffusion beat AR? Train both (and a regularised AR) on the same unique-token budgets ...

Same as `tdlm-study` (tdlm/cli/data_constrained_study.py); `tdlm-study --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.data_constrained_study import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
