"""Command-line entry points (`tdlm-train`, `tdlm-generate`, ...; scripts/*.py call the same functions).

Each module's `main(argv)` parses its arguments and makes one call into the package, returning what that call
returned (tests and notebooks use it); its `cli` is `main` behind `entry_point`, which turns a user mistake into
a one-line `error: ...` on stderr and exit code 1 (2 for bad usage, from argparse; returned, not raised, so that
tests and notebooks can call `cli([...])`). `TDLM_DEBUG=1` shows the traceback instead.
"""

import functools
import os
import sys

from ..config import ConfigError

# mistakes a user can make and fix: a bad value, a missing file, a run that diverged
USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, FloatingPointError)


def entry_point(main):
    @functools.wraps(main)
    def cli(argv=None) -> int:
        try:
            result = main(argv)
        except SystemExit as exit_:  # argparse: --help (0) or bad usage (2)
            return exit_.code or 0
        except USER_ERRORS as error:
            if os.environ.get("TDLM_DEBUG") == "1":
                raise
            print(f"error: {error}", file=sys.stderr)
            return 1
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    return cli


def require_launched_processes() -> None:
    """Refuse a multi-process launch that started one process: without GPUs, `accelerate launch --num_processes N`
    (no config file) uses its simple launcher, which starts ONE process and says nothing; it leaves MASTER_ADDR set
    and no WORLD_SIZE, unlike a launch that starts its processes (torchrun, `--multi_gpu`)."""
    if "ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        raise ValueError("accelerate launch started 1 process, not the --num_processes asked for (without GPUs it "
                         "starts several only through torchrun): add --multi_gpu, which also runs CPU processes, "
                         "or use torchrun --nproc_per_node N")
