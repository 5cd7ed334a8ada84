"""Publish a TDLM experiment (its best checkpoint) or a checkpoint folder to the Hugging Face Hub.

    python scripts/push_to_hub.py experiments/<id> --repo-id user/name [--private] [--revision BRANCH]
    python scripts/push_to_hub.py experiments/<id> --output-dir hub_upload   # write the upload set only

The token comes from HF_TOKEN or `huggingface-cli login`; it is never printed.
"""

import argparse
import sys

from ..hub import DEFAULT_LICENSE, prepare_hub_folder, push_to_hub
from ..runs import model_folder
from . import entry_point


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="EXPERIMENT_OR_CHECKPOINT")
    parser.add_argument("--repo-id", help="Hub repository, user/name (required unless --output-dir)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to commit to (created when missing)")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help="license in the model card metadata")
    parser.add_argument("--commit-message", default="Upload TDLM model")
    parser.add_argument("--output-dir", help="write the upload set (with README.md) here instead of pushing")
    args = parser.parse_args(argv)

    checkpoint = model_folder(args.path)
    if args.output_dir:
        folder = prepare_hub_folder(checkpoint, args.output_dir, repo_id=args.repo_id, license=args.license)
        print(f"wrote the upload set of {checkpoint} to {folder}")
        return
    if not args.repo_id:
        parser.error("--repo-id is required to push (or pass --output-dir)")
    push_to_hub(checkpoint, args.repo_id, private=args.private, revision=args.revision,
                commit_message=args.commit_message, license=args.license)
    branch = f" (branch {args.revision})" if args.revision else ""
    print(f"pushed {checkpoint} to https://huggingface.co/{args.repo_id}{branch}")


cli = entry_point(main)

if __name__ == "__main__":
    if status := cli():
        sys.exit(status)
