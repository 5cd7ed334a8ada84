"""When does masked diffusion beat AR? Train both (and a regularised AR) on the same unique-token budgets for
many epochs and compare held-out loss curves (see tdlm/study.py).

    python scripts/data_constrained_study.py --config configs/study_gpu.yaml --epochs 200 \
        --unique-tokens 25%,50%,100% --eval-every 10 --modes ar,diffusion,ar_regularized
"""

import argparse
import sys
from pathlib import Path

from ..config import load_config
from ..research.study import parse_budgets, run_study
from ..runs import default_experiment_id
from . import entry_point


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML: model, training, data (train/eval)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--unique-tokens", default="25%,50%,100%", help="fractions of the training blocks")
    parser.add_argument("--eval-every", type=int, default=10, help="score held-out data every K epochs")
    parser.add_argument("--modes", default="ar,diffusion,ar_regularized")
    parser.add_argument("--nelbo-samples", type=int, default=8, help="stratified t draws per held-out block")
    parser.add_argument("--max-eval-blocks", type=int, default=64)
    parser.add_argument("--ar-dropout", type=float, default=0.1)
    parser.add_argument("--ar-weight-decay", type=float, default=0.5)
    parser.add_argument("--output-dir", default=None, help="default experiments/study_<timestamp>")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.overrides)
    output = args.output_dir or str(Path("experiments") / f"study_{default_experiment_id()}")
    result = run_study(config, args.epochs, parse_budgets(args.unique_tokens), args.eval_every,
                       [m.strip() for m in args.modes.split(",")], output, num_samples=args.nelbo_samples,
                       max_eval_blocks=args.max_eval_blocks, ar_dropout=args.ar_dropout,
                       ar_weight_decay=args.ar_weight_decay)
    print((Path(output) / "study.md").read_text())
    print(f"written: {output}/study.json, study.md, study.png ({len(result['arms'])} arms)")


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
