#!/usr/bin/env python
"""lm-eval's command line with the "tdlm" model registered.

Same as `tdlm-lm-eval` (tdlm/cli/lm_eval.py); every lm-eval flag is passed through (`--help` is lm-eval's).
"""

import sys
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent
# `python scripts/lm_eval.py` puts this folder first on sys.path, where this file would shadow the `lm_eval`
# package: drop it, and add the checkout's root instead (run from a checkout without installing)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != SCRIPTS_DIR]
sys.path.insert(0, str(SCRIPTS_DIR.parent))

from tdlm.cli.lm_eval import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
