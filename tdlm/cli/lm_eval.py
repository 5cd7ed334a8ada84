"""`tdlm-lm-eval`: lm-eval's own command line with the "tdlm" model registered.

    tdlm-evaluate --write-lm-eval-tasks /tmp/tdlm_tasks --tasks hellaswag,mmlu     # local task YAMLs (offline)
    tdlm-lm-eval --model tdlm --model_args pretrained=experiments/<id>/checkpoints/checkpoint-300,mc_num=128 \
        --tasks tdlm_hellaswag --include_path /tmp/tdlm_tasks --limit 100 --output_path results/
    torchrun --nproc_per_node 2 -m tdlm.cli.lm_eval --model tdlm ...              # data parallel: a shard each
    accelerate launch --multi_gpu --num_processes 2 -m tdlm.cli.lm_eval ...       # the same (also on CPUs)

Every argument goes to lm-eval's CLI unchanged (`tdlm-lm-eval --help` is lm-eval's help, subcommands such as
`tdlm-lm-eval ls tasks` included); the only difference from the stock `lm_eval` command is that `--model tdlm` is
known, since lm-eval sees a registered model only after its module has been imported, and that `--device`
defaults to the device this machine has (lm-eval's default is cuda:0).
"""

import sys
from unittest import mock

from . import entry_point, require_launched_processes

SUBCOMMANDS = ("run", "ls", "validate")  # lm-eval's; anything else is `run`'s flags (lm-eval inserts `run`)


def with_default_device(argv: list[str]) -> list[str]:
    """`argv` with `--device` set to the machine's device when a run names none: lm-eval's default is cuda:0,
    which a CPU-only machine cannot use (lm-eval's own `hf` model falls back; a `--config` file may set it)."""
    import torch

    if argv and argv[0] in SUBCOMMANDS[1:]:
        return argv
    if any(arg.split("=")[0] in ("--device", "--config", "-C") for arg in argv) or "--model" not in argv:
        return argv
    return [*argv, "--device", "cuda" if torch.cuda.is_available() else "cpu"]


def main(argv=None):
    require_launched_processes()
    import lm_eval.__main__

    from ..evaluation import lm_eval_adapter  # noqa: F401  (registers the "tdlm" model)

    argv = with_default_device(sys.argv[1:] if argv is None else list(argv))
    # lm-eval's CLI reads sys.argv itself (and inserts its default `run` subcommand there)
    with mock.patch.object(sys, "argv", ["tdlm-lm-eval", *argv]):
        lm_eval.__main__.cli_evaluate()


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
