#!/usr/bin/env python
"""Merge a LoRA adapter folder into its base model and save a full model folder.

Same as `tdlm-merge-lora` (tdlm/cli/merge_lora.py); `tdlm-merge-lora --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.merge_lora import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
