#!/usr/bin/env python
"""Train, resume or evaluate a TDLM experiment from a YAML config.

Same as `tdlm-train` (tdlm/cli/train.py); `tdlm-train --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.train import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
