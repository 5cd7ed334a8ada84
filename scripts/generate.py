#!/usr/bin/env python
"""Print samples from a TDLM checkpoint: diffusion (`diffusion_generate`) or AR (`generate()`), as the ...

Same as `tdlm-generate` (tdlm/cli/generate.py); `tdlm-generate --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.generate import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
