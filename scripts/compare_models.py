#!/usr/bin/env python
"""Compare a diffusion and an AR experiment side by side (best checkpoints, same eval data and tasks).

Same as `tdlm-compare` (tdlm/cli/compare_models.py); `tdlm-compare --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.compare_models import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
