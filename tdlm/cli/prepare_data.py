"""Tokenise a corpus once into memory-mapped token shards (+ index.json) that training reads with numpy + torch.

    tdlm-prepare --tokenizer ../shared/data/gpt2-tokenizer --train ../shared/data/python-stdlib/train.jsonl.gz \
        --eval ../shared/data/python-stdlib/test.jsonl.gz --num-proc 2 --output data/python-stdlib-gpt2
    tdlm-prepare --tokenizer gpt2 --hub Salesforce/wikitext --hub-config wikitext-2-raw-v1 --eval-split validation \
        --output data/wikitext2-gpt2
    tdlm-prepare --config configs/quick_test.yaml     # what a training config names, into its data.cache_dir

Then train with `data.prepared=<output>` (the folder can be copied to a machine without `datasets`).
"""

import argparse
import json
import sys

from . import entry_point

APPEND_EOS = {"auto": None, "yes": True, "no": False}


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a training YAML: prepare its data section with its tokenizer")
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub name (a <|mask|> token is added, as in training)")
    parser.add_argument("--train", nargs="+", metavar="FILE", help="files, globs or folders of training text")
    parser.add_argument("--eval", nargs="+", metavar="FILE", help="files, globs or folders of evaluation text")
    parser.add_argument("--hub", help="Hub dataset name instead of --train files")
    parser.add_argument("--hub-config", help="Hub dataset configuration, e.g. wikitext-2-raw-v1")
    parser.add_argument("--split", default="train", help="Hub split to train on")
    parser.add_argument("--eval-split", help="Hub split to evaluate on")
    parser.add_argument("--revision", help="Hub dataset branch, tag or commit")
    parser.add_argument("--streaming", action="store_true", help="stream the Hub dataset instead of downloading it")
    parser.add_argument("--text-field", default="text", help="the column (JSON/Parquet/CSV field) holding the text")
    parser.add_argument("--eval-fraction", type=float, default=0.0, help="documents to hold out when there is no "
                                                                        "eval source")
    parser.add_argument("--seed", type=int, default=0, help="which documents --eval-fraction holds out")
    parser.add_argument("--append-eos", choices=tuple(APPEND_EOS), default="auto",
                        help="EOS after each document (auto: yes, except between the lines of text files)")
    parser.add_argument("--num-proc", type=int, default=1, help="tokenising processes")
    parser.add_argument("--output", help="folder to write (written whole or not at all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides of the --config")
    return parser


def _prepare_config(args):
    from ..config import load_config
    from ..data import prepared_folder
    from ..training import build_tokenizer

    config = load_config(args.config, args.overrides)
    return prepared_folder(config["data"], build_tokenizer(config))


def _prepare_sources(args, parser):
    from ..data import prepare_dataset
    from ..data.sources import HubSource
    from ..tokenization import load_tokenizer

    if not args.tokenizer or not args.output or (args.train is None) == (args.hub is None):
        parser.error("pass --tokenizer, --output and one of --train FILES or --hub NAME (or --config YAML)")
    train, evaluation = args.train, args.eval
    if args.hub:
        hub = {"name": args.hub, "config": args.hub_config, "revision": args.revision, "streaming": args.streaming,
               "text_field": args.text_field}
        train = HubSource(split=args.split, **hub)
        if args.eval_split:
            evaluation = HubSource(split=args.eval_split, **hub)
    return prepare_dataset(train, args.output, load_tokenizer(args.tokenizer), eval_source=evaluation,
                           eval_fraction=args.eval_fraction, seed=args.seed, text_field=args.text_field,
                           append_eos=APPEND_EOS[args.append_eos], num_proc=args.num_proc, overwrite=args.overwrite)


def main(argv=None):
    parser = _arguments()
    args = parser.parse_args(argv)
    folder = _prepare_config(args) if args.config else _prepare_sources(args, parser)
    from ..data import read_index

    index = read_index(folder)
    splits = {name: {k: split[k] for k in ("num_documents", "num_tokens")} for name, split in index["splits"].items()}
    print(f"{folder}: {index['dtype']} tokens, {json.dumps(splits)}")
    return folder


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
