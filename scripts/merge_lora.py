"""Merge a LoRA adapter folder (e.g. experiments/<id>/checkpoints/checkpoint-N of a peft run) into its
base TDLM and save a full, self-sufficient model folder (weights, remote code, tokenizer).

    python scripts/merge_lora.py ADAPTER_DIR OUTPUT_DIR
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdlm.peft_utils import merge_adapter  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter_dir", help="folder with adapter_config.json and adapter_model.safetensors")
    parser.add_argument("output_dir", help="where the merged model is written")
    args = parser.parse_args(argv)
    output = merge_adapter(args.adapter_dir, args.output_dir)
    print(f"merged {args.adapter_dir} into its base model: {output}")


if __name__ == "__main__":
    main()
