"""Merge a LoRA adapter folder (e.g. experiments/<id>/checkpoints/checkpoint-N of a peft run) into its
base TDLM and save a full, self-sufficient model folder (weights, remote code, tokenizer).

    python scripts/merge_lora.py ADAPTER_DIR OUTPUT_DIR [--base-model BASE]

The base model is the one adapter_config.json names (a local folder relative to the adapter folder, or a Hub id);
--base-model names it instead (the base was moved, or the adapter came without it).
"""

import argparse
import sys

from ..peft_utils import merge_adapter
from . import entry_point


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter_dir", help="folder with adapter_config.json and adapter_model.safetensors")
    parser.add_argument("output_dir", help="where the merged model is written")
    parser.add_argument("--base-model", help="the base model folder or Hub id (default: adapter_config.json's)")
    args = parser.parse_args(argv)
    output = merge_adapter(args.adapter_dir, args.output_dir, base_model=args.base_model)
    print(f"merged {args.adapter_dir} into its base model: {output}")


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
