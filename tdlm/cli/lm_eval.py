"""`tdlm-lm-eval`: lm-eval's own command line with the "tdlm" model registered.

    tdlm-evaluate --write-lm-eval-tasks /tmp/tdlm_tasks --tasks hellaswag,mmlu     # local task YAMLs (offline)
    tdlm-lm-eval --model tdlm --model_args pretrained=experiments/<id>/checkpoints/checkpoint-300,mc_num=128 \
        --tasks tdlm_hellaswag --include_path /tmp/tdlm_tasks --limit 100 --output_path results/
    accelerate launch -m tdlm.cli.lm_eval --model tdlm ...        # data parallel: each process scores a shard

Every argument goes to lm-eval's CLI unchanged (`tdlm-lm-eval --help` is lm-eval's help, subcommands such as
`tdlm-lm-eval ls tasks` included); the only difference from the stock `lm_eval` command is that `--model tdlm` is
known, since lm-eval sees a registered model only after its module has been imported.
"""

import sys
from unittest import mock

from . import entry_point


def main(argv=None):
    import lm_eval.__main__

    from ..evaluation import lm_eval_adapter  # noqa: F401  (registers the "tdlm" model)

    argv = sys.argv[1:] if argv is None else list(argv)
    # lm-eval's CLI reads sys.argv itself (and inserts its default `run` subcommand there)
    with mock.patch.object(sys, "argv", ["tdlm-lm-eval", *argv]):
        lm_eval.__main__.cli_evaluate()


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
