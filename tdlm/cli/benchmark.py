"""Training and sampling throughput of TDLM, AR vs diffusion in one run (see tdlm/research/benchmark.py); or, with
--head-grid, the LM head alone against cut-cross-entropy, liger-kernel and torch (tdlm/research/head_benchmark.py).

    python scripts/benchmark.py --config configs/example_config.yaml --output results/benchmark.json
    python scripts/benchmark.py --config configs/quick_test.yaml --steps 5 --warmup 2 training.batch_size=8
    python scripts/benchmark.py --head-grid 32768x128,65536x768,65536x2048 --output results/head_grid.json
"""

import argparse
import sys

from ..config import load_config
from ..research.benchmark import compile_variants, format_report, run_benchmark
from ..research.head_benchmark import HEADS, format_head_grid, parse_shapes, run_head_grid
from . import entry_point


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="experiment YAML (model, training precision/compile, data.block_size); "
                                         "required unless --head-grid")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--modes", default="autoregressive,diffusion",
                        help="objectives, comma-separated: autoregressive, diffusion, block_diffusion (blocks of "
                             "model.bd_block_size, default 16; its sampling rows run with and without the KV cache)")
    parser.add_argument("--compile", default="false",
                        help="torch.compile variants of the backbone to time: false, true (default mode) or a mode "
                             "name, comma-separated, e.g. false,true,reduce-overhead (CUDA graphs)")
    parser.add_argument("--head-implementations", default=None,
                        help="fused head variants to time, e.g. chunked,triton (default: the config's)")
    parser.add_argument("--sampling-steps", default="16,32,64,256", help="diffusion step counts ('' = no sampling)")
    parser.add_argument("--sampling-batch", type=int, default=8)
    parser.add_argument("--sampling-length", type=int, default=256)
    parser.add_argument("--confidence-threshold", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3, help="sampling repeats (median)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile a few bare-loop steps per head: device busy vs wall time, top kernels")
    parser.add_argument("--head-grid", default=None,
                        help="time only the LM head + cross-entropy on these ROWSxHIDDEN shapes, e.g. 65536x768")
    parser.add_argument("--heads", default=",".join(HEADS), help=f"heads of the grid, from {', '.join(HEADS)}")
    parser.add_argument("--vocab-size", type=int, default=50258, help="vocabulary of the head grid (GPT-2 + mask)")
    parser.add_argument("--output", default="results/benchmark.json")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)

    if args.head_grid:
        heads = args.heads.split(",")
        if unknown := sorted(set(heads) - set(HEADS)):
            parser.error(f"--heads: unknown {unknown}; expected some of {list(HEADS)}")
        report = run_head_grid(parse_shapes(args.head_grid), args.vocab_size, heads, device=args.device,
                               repeats=args.repeats, warmup=args.warmup, output=args.output)
        print(format_head_grid(report))
        print(f"\nwritten: {args.output}")
        return
    if not args.config:
        parser.error("--config is required (unless --head-grid)")
    config = load_config(args.config, args.overrides)
    sampling = None
    if args.sampling_steps:
        sampling = {"batch_size": args.sampling_batch, "length": args.sampling_length, "repeats": args.repeats,
                    "steps_list": tuple(int(s) for s in args.sampling_steps.split(",")),
                    "confidence_threshold": args.confidence_threshold}
    report = run_benchmark(config, device=args.device, steps=args.steps, warmup=args.warmup,
                           modes=tuple(args.modes.split(",")),
                           compile_variants=compile_variants(args.compile),
                           head_variants=args.head_implementations.split(",") if args.head_implementations else None,
                           sampling=sampling, profile=args.profile, output=args.output)
    print(format_report(report))
    print(f"\nwritten: {args.output}")


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
