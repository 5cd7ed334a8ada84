"""Training and sampling throughput of TDLM, AR vs diffusion in one run (see tdlm/research/benchmark.py); or, with
--head-grid, the LM head alone against cut-cross-entropy, liger-kernel and torch (tdlm/research/head_benchmark.py).

    python scripts/benchmark.py --config configs/example_config.yaml --output results/benchmark.json
    python scripts/benchmark.py --config configs/quick_test.yaml --steps 5 --warmup 2 training.batch_size=8
    python scripts/benchmark.py --head-grid 32768x128,65536x768,65536x2048 --output results/head_grid.json
    python scripts/benchmark.py --sampling-frontier --frontier-checkpoints diffusion=RUN,autoregressive=RUN \
        --scorer RUN --reference-text held_out.txt --sampling-batch 16 --sampling-length 127 --output frontier.json
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
    parser.add_argument("--sampling-frontier", action="store_true",
                        help="tokens/s against gen-PPL and unigram entropy per sampler of trained checkpoints "
                             "(tdlm/research/sampling_frontier.py); writes --output and a PNG beside it")
    parser.add_argument("--frontier-checkpoints", default=None,
                        help="objective=run-or-checkpoint pairs, comma-separated, e.g. "
                             "diffusion=experiments/a,autoregressive=experiments/b,block_diffusion=experiments/c")
    parser.add_argument("--scorer", default=None, help="AR run or checkpoint that scores the samples (gen-PPL)")
    parser.add_argument("--reference-text", default=None,
                        help="held-out text file: the samplers' prompts and the real-text reference row")
    parser.add_argument("--prompt-tokens", type=int, default=1,
                        help="real tokens each frontier sample starts from (0: unconditional, AR after a BOS)")
    parser.add_argument("--frontier-steps", default="8,16,32,64,128,256",
                        help="diffusion step counts of ancestral (random-order) sampling")
    parser.add_argument("--cache-steps", default="16,32,64,128",
                        help="step counts of the semi-AR block rows (uncached, prefix and dual cache)")
    parser.add_argument("--block-length", type=int, default=32, help="semi-AR block length of the cached rows")
    parser.add_argument("--block-diffusion-steps", default="2,4,8,16",
                        help="steps per block of the block-diffusion rows (with a block_diffusion= checkpoint)")
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
    if args.sampling_frontier:
        return _sampling_frontier(parser, args)
    if not args.config:
        parser.error("--config is required (unless --head-grid or --sampling-frontier)")
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


def _sampling_frontier(parser, args):
    from pathlib import Path

    import torch

    from ..research.sampling_frontier import (
        default_methods,
        format_frontier,
        frontier_summary,
        plot_frontier,
        run_frontier,
    )
    from ..runs import load_checkpoint, model_folder, write_json

    if not args.frontier_checkpoints or not args.scorer:
        parser.error("--sampling-frontier needs --frontier-checkpoints objective=path,... and --scorer")
    device = args.device or "cpu"
    models = {}
    for pair in args.frontier_checkpoints.split(","):
        objective, _, path = pair.partition("=")
        if not path:
            parser.error(f"--frontier-checkpoints: {pair!r} is not objective=path")
        models[objective] = load_checkpoint(model_folder(path), device)
        if models[objective][0].config.training_mode != objective:
            parser.error(f"--frontier-checkpoints: {path} is a {models[objective][0].config.training_mode} "
                         f"checkpoint, not {objective}")
    scorer, scorer_tokenizer = load_checkpoint(model_folder(args.scorer), device)
    if scorer.config.is_diffusion:
        parser.error(f"--scorer: {args.scorer} is a diffusion checkpoint; gen-PPL needs an autoregressive scorer")
    methods = default_methods(tuple(int(s) for s in args.frontier_steps.split(",")), args.confidence_threshold,
                              args.block_length, tuple(int(s) for s in args.cache_steps.split(",")),
                              tuple(int(s) for s in args.block_diffusion_steps.split(",")))
    report = run_frontier(models, scorer, scorer_tokenizer, methods, batch_size=args.sampling_batch,
                          length=args.sampling_length, repeats=args.repeats, reference_text=args.reference_text,
                          prompt_tokens=args.prompt_tokens,
                          on_round=lambda r: print(f"round {r}/{args.repeats} done", flush=True))
    report.update(summary=frontier_summary(report), device=device, threads=torch.get_num_threads(),
                  checkpoints={k: str(model_folder(v)) for k, v in
                               (p.split("=", 1) for p in args.frontier_checkpoints.split(","))},
                  scorer=str(model_folder(args.scorer)))
    write_json(report, args.output)
    plot = plot_frontier(report, Path(args.output).with_suffix(".png"))
    print(format_frontier(report))
    ratio = report.get("baseline_ratio", float("nan"))
    print(f"\nbaseline ratio (diffusion 16 greedy / AR greedy tokens/s): {ratio:.2f}")
    print(f"summary: {report['summary']}")
    print(f"written: {args.output}, {plot}")


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
