#!/usr/bin/env python
"""Publish a TDLM experiment (its best checkpoint) or a checkpoint folder to the Hugging Face Hub.

Same as `tdlm-push` (tdlm/cli/push_to_hub.py); `tdlm-push --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.push_to_hub import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
