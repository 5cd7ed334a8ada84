#!/usr/bin/env python
"""Compare the cosine and linear sampling step schedules of a diffusion checkpoint on held-out text ...

Same as `tdlm-validate-schedule` (tdlm/cli/validate_schedule.py); `tdlm-validate-schedule --help` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tdlm.cli.validate_schedule import cli, main  # noqa: E402, F401  (main: for tests and notebooks)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
