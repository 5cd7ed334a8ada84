"""Data pipeline benchmark (see tdlm/research/data_benchmark.py): prepare ../shared/data/python-stdlib train with
the GPT-2 tokenizer at 10% and 100% with 1 and 2 processes (tokens/s, peak RSS), then time launch -> first training
step and the loader's time per batch from the prepared 15M-token corpus.

    python scripts/benchmark_data.py --output results/data_benchmark.json
"""

import argparse
import json
import sys
from pathlib import Path

from ..research.data_benchmark import run_benchmark
from . import entry_point


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None, help="JSON file for the results")
    parser.add_argument("--workdir", default=None, help="keep prepared folders here (default: a temporary folder)")
    parser.add_argument("--fractions", default="0.1,1.0", help="fractions of the corpus to prepare")
    parser.add_argument("--num-proc", default="1,2", help="tokenising process counts to compare")
    args = parser.parse_args(argv)
    results = run_benchmark(args.workdir, tuple(float(f) for f in args.fractions.split(",")),
                            tuple(int(n) for n in args.num_proc.split(",")))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
