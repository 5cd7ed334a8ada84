"""When does masked diffusion beat AR? Train AR and diffusion (each also with dropout) on the same unique-token
budgets for many epochs and compare held-out loss curves, best losses and samples (see tdlm/research/study.py).

    python scripts/data_constrained_study.py --config configs/study_stdlib_gpu.yaml --epochs 100 \\
        --unique-tokens 0.25M,1M,4M,15M --eval-every 5
"""

import argparse
import sys
from pathlib import Path

from ..config import load_config
from ..research.study import ARMS, run_study
from ..runs import default_experiment_id
from . import entry_point


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment YAML: model, training, data (train/eval)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--unique-tokens", default="25%,50%,100%",
                        help="budgets: token counts (0.25M, 250k) or fractions of the training split (25%%, 0.25)")
    parser.add_argument("--eval-every", type=int, default=5, help="score held-out data every K epochs")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--nelbo-samples", type=int, default=8, help="stratified t draws per held-out block")
    parser.add_argument("--max-eval-blocks", type=int, default=None, help="default: the whole held-out split")
    parser.add_argument("--dropout", type=float, default=0.1, help="of the _regularized arms")
    parser.add_argument("--gen-samples", type=int, default=64, help="samples per arm for gen-PPL (0: skip)")
    parser.add_argument("--gen-length", type=int, default=256, help="tokens per sample (at most data.block_size)")
    parser.add_argument("--gen-steps", default="32,64,256", help="diffusion sampling steps, one row each")
    parser.add_argument("--output-dir", default=None, help="default experiments/study_<timestamp>")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.overrides)
    output = args.output_dir or str(Path("experiments") / f"study_{default_experiment_id()}")
    gen = {"num_samples": args.gen_samples, "length": args.gen_length,
           "steps": [int(s) for s in args.gen_steps.split(",")]}
    result = run_study(config, args.epochs, args.unique_tokens, args.eval_every,
                       [a.strip() for a in args.arms.split(",")], output, num_samples=args.nelbo_samples,
                       max_eval_blocks=args.max_eval_blocks, dropout=args.dropout, gen=gen)
    print((Path(output) / "study.md").read_text())
    print(f"written: {output}/study.json, study.md, study.png, best_vs_budget.png, reuse_fits.png "
          f"({len(result['arms'])} arms)")


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
