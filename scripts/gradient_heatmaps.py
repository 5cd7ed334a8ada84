#!/usr/bin/env python
"""Four gradient heatmaps (corruption level vs time, gradient ratios, health matrix, dashboard) of a run.

Same as `tdlm-heatmaps` (tdlm/cli/gradient_heatmaps.py); `tdlm-heatmaps --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.gradient_heatmaps import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
