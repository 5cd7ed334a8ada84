#!/usr/bin/env python
"""lm-eval's command line with the "tdlm" model registered.

Same as `tdlm-lm-eval` (tdlm/cli/lm_eval.py); every lm-eval flag is passed through (`--help` is lm-eval's).
"""

import sys
from pathlib import Path

# named run_lm_eval.py: a scripts/lm_eval.py would shadow the `lm_eval` package for every script run from here
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.lm_eval import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
